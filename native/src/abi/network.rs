//! The network-filter side of Envoy 1.40's dynamic-module ABI, for the `peer` role
//! (`envoy.extensions.filters.network.dynamic_modules.v3.DynamicModuleNetworkFilter`),
//! and the HTTP filter's read of what it records. Kept apart from `raw.rs` and
//! `handles.rs` (the HTTP filter's binding): the declarations here are checked against
//! 1.40.0's exports (their argument registers), as `raw.rs`'s are against abi.h.
//!
//! The connection's remote address a network filter reads is the one the listener
//! filters left (a PROXY protocol header's source, for one): the HTTP filter's
//! `http_get_downstream_direct_remote_address` is the socket's peer (the balancer)
//! and its `source.address` the connection manager's X-Forwarded-For choice, so the
//! HTTP roles read the network filter's record instead.

use std::ffi::c_void;

use super::handles::copy_envoy_bytes;
use super::hooks::guarded;
use super::raw::{EnvoyBuffer, ModuleBuffer};

extern "C" {
    fn envoy_dynamic_module_callback_network_filter_get_remote_address(
        filter: *mut c_void,
        address: *mut EnvoyBuffer,
        port: *mut u32,
    ) -> bool;
    fn envoy_dynamic_module_callback_network_set_filter_state_bytes(filter: *mut c_void, key: ModuleBuffer, value: ModuleBuffer) -> bool;
    fn envoy_dynamic_module_callback_network_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        counter_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_network_filter_increment_counter(filter: *mut c_void, id: usize, value: u64) -> u32;
}

/// `envoy_dynamic_module_type_on_network_filter_data_status_Continue`.
const DATA_CONTINUE: u32 = 0;

/// A network filter's configuration, while Envoy makes it.
pub struct NetworkConfigHandle(*mut c_void);

impl NetworkConfigHandle {
    /// Defines a counter (no labels); `None` if Envoy refused.
    pub fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: `self.0` is the live config pointer of the current
        // `on_network_filter_config_new`; the name buffer and `id` outlive the call.
        let result = unsafe {
            envoy_dynamic_module_callback_network_filter_config_define_counter(self.0, ModuleBuffer::of(name.as_bytes()), &mut id)
        };
        (result == 0).then_some(id)
    }
}

/// One downstream connection, inside a network filter's hook.
pub struct Connection(*mut c_void);

impl Connection {
    /// The connection's remote address as the listener filters left it (`ip`, port);
    /// `None` when it is not an IP address (an internal listener, a Unix socket).
    pub fn remote_address(&self) -> Option<(Vec<u8>, u32)> {
        let mut out = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };
        let mut port = 0u32;
        // SAFETY: live filter pointer for the hook; `out` and `port` outlive the call;
        // the address is copied at once.
        let found = unsafe { envoy_dynamic_module_callback_network_filter_get_remote_address(self.0, &mut out, &mut port) };
        found.then(|| (copy_envoy_bytes(out.ptr, out.length), port))
    }

    /// Stores `value` under `key` in the connection's filter state (connection
    /// lifespan: every HTTP stream of the connection reads it).
    pub fn set_filter_state(&self, key: &str, value: &[u8]) -> bool {
        // SAFETY: live filter pointer; both buffers outlive the call (Envoy copies them).
        unsafe {
            envoy_dynamic_module_callback_network_set_filter_state_bytes(self.0, ModuleBuffer::of(key.as_bytes()), ModuleBuffer::of(value))
        }
    }

    pub fn increment_counter(&self, id: usize, by: u64) {
        // SAFETY: live filter pointer; `id` came from `define_counter` on its config.
        unsafe { envoy_dynamic_module_callback_network_filter_increment_counter(self.0, id, by) };
    }
}

/// A network filter configuration: what it does when a connection opens. It keeps no
/// state per connection.
pub trait ConnectionFilterFactory: Send + Sync {
    fn on_new_connection(&self, connection: &Connection);
}

// -------------------------------------------------------------- event hooks

/// The factory behind a config (or filter) pointer Envoy hands back.
///
/// # Safety
/// `ptr` must come from [`envoy_dynamic_module_on_network_filter_config_new`] and not
/// yet be destroyed.
unsafe fn factory_at<'a>(ptr: *const c_void) -> Option<&'a dyn ConnectionFilterFactory> {
    // SAFETY: per the function's contract; null is handled by `as_ref`.
    unsafe { (ptr as *const Box<dyn ConnectionFilterFactory>).as_ref() }.map(|b| b.as_ref())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_config_new(
    config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guarded("on_network_filter_config_new", std::ptr::null(), || {
        let handle = NetworkConfigHandle(config_envoy);
        let (name, config) = (copy_envoy_bytes(name.ptr, name.length), copy_envoy_bytes(config.ptr, config.length));
        match crate::peer::new_factory(&handle, &name, &config) {
            Some(factory) => Box::into_raw(Box::new(factory)) as *const c_void,
            // Null refuses the configuration: Envoy does not start, or rejects the update.
            None => std::ptr::null(),
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_config_destroy(config: *const c_void) {
    guarded("on_network_filter_config_destroy", (), || {
        if !config.is_null() {
            // SAFETY: `config` came from `Box::into_raw` in `..._config_new`; Envoy
            // destroys it once, after its last filter (each filter holds the config).
            drop(unsafe { Box::from_raw(config as *mut Box<dyn ConnectionFilterFactory>) });
        }
    })
}

/// The filter of a connection is its configuration itself (nothing is kept per
/// connection): the pointer is the config's, never freed by the filter's destroy hook.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_new(config: *const c_void, _filter_envoy: *mut c_void) -> *const c_void {
    config
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_new_connection(filter_envoy: *mut c_void, filter: *const c_void) -> u32 {
    guarded("on_network_filter_new_connection", (), || {
        // SAFETY: `filter` is the config pointer (see `..._filter_new`), alive while
        // any of its filters is.
        if let Some(factory) = unsafe { factory_at(filter) } {
            factory.on_new_connection(&Connection(filter_envoy));
        }
    });
    DATA_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_destroy(_filter: *const c_void) {}

// Hooks Envoy 1.40 looks up in every module with a network filter, in which the
// `peer` role does nothing: bytes pass, no callout or event is started.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_read(_: *mut c_void, _: *const c_void, _: usize, _: bool) -> u32 {
    DATA_CONTINUE
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_write(_: *mut c_void, _: *const c_void, _: usize, _: bool) -> u32 {
    DATA_CONTINUE
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_event(_: *mut c_void, _: *const c_void, _: u32) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_http_callout_done(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const c_void,
    _headers_size: usize,
    _body: *const EnvoyBuffer,
    _body_size: usize,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_scheduled(_: *mut c_void, _: *const c_void, _: u64) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_config_scheduled(_: *mut c_void, _: *const c_void, _: u64) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_above_write_buffer_high_watermark(_: *mut c_void, _: *const c_void) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_below_write_buffer_low_watermark(_: *mut c_void, _: *const c_void) {}

/// Stand-ins for the network callbacks above, for the unit tests' link (Envoy is not
/// there); the HTTP filter's read is `tests.rs`'s, over its fake stream.
#[cfg(test)]
mod stand_ins {
    use super::*;

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_network_filter_get_remote_address(
        _: *mut c_void,
        _: *mut EnvoyBuffer,
        _: *mut u32,
    ) -> bool {
        false
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_network_set_filter_state_bytes(_: *mut c_void, _: ModuleBuffer, _: ModuleBuffer) -> bool {
        false
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_network_filter_config_define_counter(
        _: *mut c_void,
        _: ModuleBuffer,
        _: *mut usize,
    ) -> u32 {
        1
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_network_filter_increment_counter(_: *mut c_void, _: usize, _: u64) -> u32 {
        0
    }
}
