//! The binding to Envoy's dynamic-module ABI, and the only module with `unsafe`.
//!
//! Written from Envoy 1.40.0's `source/extensions/dynamic_modules/abi/abi.h` (no file
//! of Envoy's is vendored): the few callbacks the roles use, declared as Envoy
//! exports them, behind safe wrappers; and the event hooks Envoy looks up, each of
//! which catches panics so that none crosses into Envoy.
//!
//! Envoy only promises compatibility with a module built for its exact ABI: this one
//! reports [`ABI_VERSION`], the string Envoy 1.40.0 expects, and is pinned to it.

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION` of Envoy 1.40.0.
pub const ABI_VERSION: &CStr = c"v0.2.0";

// ------------------------------------------------------------------ C types

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        ModuleBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }
    /// A null buffer: what `set_header` takes to remove a header.
    fn null() -> Self {
        ModuleBuffer { ptr: std::ptr::null(), length: 0 }
    }
}

/// `envoy_dynamic_module_type_envoy_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyHttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
struct ModuleHttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HeaderMap {
    Request = 0,
    Response = 2,
}

/// `envoy_dynamic_module_type_log_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// `envoy_dynamic_module_type_attribute_id`: the attributes the roles read. The
/// numbers are the enum's positions in 1.40's abi.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Attribute {
    RequestPath = 0,
    RequestUrlPath = 1,
    RequestHost = 2,
    RequestScheme = 3,
    RequestMethod = 4,
    RequestReferer = 6,
    RequestUserAgent = 7,
    RequestId = 9,
    RequestProtocol = 10,
    RequestQuery = 11,
    RequestSize = 13,
    RequestTotalSize = 14,
    ResponseCode = 15,
    ResponseCodeDetails = 16,
    ResponseSize = 21,
    ResponseTotalSize = 22,
    SourceAddress = 24,
    SourcePort = 25,
    DestinationAddress = 26,
    DestinationPort = 27,
    ConnectionId = 28,
    ConnectionMtls = 29,
    ConnectionRequestedServerName = 30,
    ConnectionTlsVersion = 31,
    ConnectionSubjectLocalCertificate = 32,
    ConnectionSubjectPeerCertificate = 33,
    ConnectionDnsSanLocalCertificate = 34,
    ConnectionDnsSanPeerCertificate = 35,
    ConnectionUriSanLocalCertificate = 36,
    ConnectionUriSanPeerCertificate = 37,
    ConnectionSha256PeerCertificateDigest = 38,
    UpstreamAddress = 41,
    UpstreamPort = 42,
}

/// The status a request- or response-headers hook returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HeadersStatus {
    Continue = 0,
    StopIteration = 1,
}

// ---------------------------------------------------------------- callbacks

// Envoy's exports, resolved when Envoy loads the module (the binary exports them).
// Tests link stand-ins instead (`tests` below).
extern "C" {
    fn envoy_dynamic_module_callback_log(level: LogLevel, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: LogLevel) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, map: HeaderMap) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        map: HeaderMap,
        result: *mut EnvoyHttpHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        map: HeaderMap,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        map: HeaderMap,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        id: Attribute,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: *mut c_void,
        id: Attribute,
        result: *mut u64,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_bool(
        filter: *mut c_void,
        id: Attribute,
        result: *mut bool,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_downstream_direct_remote_address(
        filter: *mut c_void,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

/// Copies bytes Envoy lent for the current hook.
fn copy_envoy_bytes(ptr: *const u8, length: usize) -> Vec<u8> {
    if ptr.is_null() || length == 0 {
        return Vec::new();
    }
    // SAFETY: Envoy hands out (pointer, length) pairs of live memory it owns, valid
    // until the current hook returns or a header setter is called; this copies them
    // at once, before either happens. Null and empty are handled above.
    unsafe { std::slice::from_raw_parts(ptr, length) }.to_vec()
}

/// Writes a message to Envoy's log (its `dynamic_modules` logger).
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer borrows `message`, alive for the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

/// Whether Envoy would print a message at `level` (to skip formatting it).
pub fn log_enabled(level: LogLevel) -> bool {
    // SAFETY: a plain value in, a plain value out.
    unsafe { envoy_dynamic_module_callback_log_enabled(level) }
}

/// Envoy's side of one filter configuration, during `on_http_filter_config_new`.
pub struct ConfigHandle(*mut c_void);

impl ConfigHandle {
    /// Defines the counter `name` (under the filter's metrics namespace); only while
    /// the configuration is being made. Returns its id.
    pub fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: `self.0` is the live config pointer of the current
        // `on_http_filter_config_new`; the name buffer and `id` outlive the call; no
        // labels (null, 0).
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == 0).then_some(id)
    }
}

/// Envoy's side of one HTTP stream, lent to the module for the duration of a hook.
pub struct Stream(*mut c_void);

impl Stream {
    /// Every header of a map, in order, as (lowercase name, value bytes).
    pub fn headers(&self, map: HeaderMap) -> Vec<(String, Vec<u8>)> {
        // SAFETY: `self.0` is the live filter pointer of the current hook.
        let count = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, map) };
        if count == 0 {
            return Vec::new();
        }
        let empty = EnvoyHttpHeader { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 };
        let mut raw = vec![empty; count];
        // SAFETY: `raw` has room for the `count` headers Envoy just reported, and
        // nothing changes the map between the two calls (same thread, same hook).
        if !unsafe { envoy_dynamic_module_callback_http_get_headers(self.0, map, raw.as_mut_ptr()) } {
            return Vec::new();
        }
        raw.iter()
            .map(|h| {
                let name = copy_envoy_bytes(h.key_ptr, h.key_length);
                (String::from_utf8_lossy(&name).into_owned(), copy_envoy_bytes(h.value_ptr, h.value_length))
            })
            .collect()
    }

    /// Replaces every value of `name` with `value` (adds it when absent).
    pub fn set_header(&self, map: HeaderMap, name: &str, value: &[u8]) -> bool {
        // A null value pointer would mean "remove": an empty value must not become that.
        let value = if value.is_empty() { ModuleBuffer { ptr: b"".as_ptr(), length: 0 } } else { ModuleBuffer::of(value) };
        // SAFETY: live filter pointer; both buffers borrow memory alive for the call,
        // which Envoy copies into its header map.
        unsafe { envoy_dynamic_module_callback_http_set_header(self.0, map, ModuleBuffer::of(name.as_bytes()), value) }
    }

    /// Adds one more value of `name`.
    pub fn add_header(&self, map: HeaderMap, name: &str, value: &[u8]) -> bool {
        // SAFETY: as in `set_header`.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                map,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer { ptr: value.as_ptr(), length: value.len() },
            )
        }
    }

    /// Removes every value of `name`.
    pub fn remove_header(&self, map: HeaderMap, name: &str) -> bool {
        // SAFETY: live filter pointer; the key borrows `name`; a null value buffer is
        // the ABI's way to ask for removal.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(self.0, map, ModuleBuffer::of(name.as_bytes()), ModuleBuffer::null())
        }
    }

    /// Answers the request in Envoy's place.
    pub fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let mut raw: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(n, v)| ModuleHttpHeader {
                key_ptr: n.as_ptr(),
                key_length: n.len(),
                value_ptr: v.as_ptr(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: live filter pointer; `raw` and every buffer it points into borrow
        // `headers`, `body` and `details`, all alive for the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(status),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            )
        }
    }

    /// A string attribute (`source.address`, `connection.tls_version`, ...).
    pub fn attribute_bytes(&self, id: Attribute) -> Option<Vec<u8>> {
        let mut out = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };
        // SAFETY: live filter pointer; `out` outlives the call; the bytes it points
        // to are copied before anything else is asked of Envoy.
        let found = unsafe { envoy_dynamic_module_callback_http_filter_get_attribute_string(self.0, id, &mut out) };
        found.then(|| copy_envoy_bytes(out.ptr, out.length))
    }

    /// A number attribute (`source.port`, `response.code`, ...).
    pub fn attribute_int(&self, id: Attribute) -> Option<u64> {
        let mut out = 0u64;
        // SAFETY: live filter pointer; `out` outlives the call.
        unsafe { envoy_dynamic_module_callback_http_filter_get_attribute_int(self.0, id, &mut out) }.then_some(out)
    }

    /// A boolean attribute (`connection.mtls`).
    pub fn attribute_bool(&self, id: Attribute) -> Option<bool> {
        let mut out = false;
        // SAFETY: live filter pointer; `out` outlives the call.
        unsafe { envoy_dynamic_module_callback_http_filter_get_attribute_bool(self.0, id, &mut out) }.then_some(out)
    }

    /// The connection's own peer, `ip:port`: the TCP peer, which the connection
    /// manager never rewrites from X-Forwarded-For (unlike `source.address`).
    pub fn direct_remote_address(&self) -> Option<Vec<u8>> {
        let mut out = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };
        // SAFETY: live filter pointer; `out` outlives the call; copied at once.
        let found = unsafe { envoy_dynamic_module_callback_http_get_downstream_direct_remote_address(self.0, &mut out) };
        found.then(|| copy_envoy_bytes(out.ptr, out.length))
    }

    /// Adds `by` to a counter defined with [`ConfigHandle::define_counter`].
    pub fn increment_counter(&self, id: usize, by: u64) {
        // SAFETY: live filter pointer, made from the config that defined `id`; no labels.
        unsafe { envoy_dynamic_module_callback_http_filter_increment_counter(self.0, id, std::ptr::null_mut(), 0, by) };
    }
}

// -------------------------------------------------------------- event hooks

/// A filter configuration: makes the per-stream filters. Shared by every worker.
pub trait FilterFactory: Send + Sync {
    fn new_filter(&self) -> Box<dyn HttpFilter>;
}

/// One HTTP stream's filter. Envoy calls it from one worker thread, one hook at a time.
pub trait HttpFilter {
    fn on_request_headers(&mut self, stream: &Stream, end_of_stream: bool) -> HeadersStatus;
    fn on_response_headers(&mut self, _stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        HeadersStatus::Continue
    }
}

/// Runs a hook's body, turning a panic into `fallback` (and a log line).
fn guarded<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            // Logging may itself fail; it must not unwind either.
            let _ = catch_unwind(|| log(LogLevel::Critical, &format!("wsgiproxy: panic caught in {hook}")));
            fallback
        }
    }
}

/// Copies a buffer Envoy lent to a hook.
fn lent_bytes(buffer: EnvoyBuffer) -> Vec<u8> {
    copy_envoy_bytes(buffer.ptr, buffer.length)
}

/// The filter behind a module pointer Envoy hands back.
///
/// # Safety
/// `ptr` must come from [`envoy_dynamic_module_on_http_filter_new`] and not yet be
/// destroyed, and no other reference to it may be live (Envoy calls one hook of a
/// stream at a time, on its worker thread).
unsafe fn filter_at<'a>(ptr: *const c_void) -> Option<&'a mut Box<dyn HttpFilter>> {
    // SAFETY: per the function's contract; null is handled by `as_mut`.
    unsafe { (ptr as *mut Box<dyn HttpFilter>).as_mut() }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guarded("on_http_filter_config_new", std::ptr::null(), || {
        let handle = ConfigHandle(config_envoy);
        match crate::filter::new_factory(&handle, &lent_bytes(name), &lent_bytes(config)) {
            Some(factory) => Box::into_raw(Box::new(factory)) as *const c_void,
            // Null refuses the configuration: Envoy does not start, or rejects the update.
            None => std::ptr::null(),
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guarded("on_http_filter_config_destroy", (), || {
        if !config.is_null() {
            // SAFETY: `config` came from `Box::into_raw` in `..._config_new` and Envoy
            // destroys it once, after its last filter.
            drop(unsafe { Box::from_raw(config as *mut Box<dyn FilterFactory>) });
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(config: *const c_void, _filter_envoy: *mut c_void) -> *const c_void {
    guarded("on_http_filter_new", std::ptr::null(), || {
        // SAFETY: `config` came from `..._config_new` and lives until its destroy hook,
        // which Envoy calls after every filter it made; shared reads only (`Sync`).
        let Some(factory) = (unsafe { (config as *const Box<dyn FilterFactory>).as_ref() }) else {
            return std::ptr::null();
        };
        Box::into_raw(Box::new(factory.new_filter())) as *const c_void
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    guarded("on_http_filter_destroy", (), || {
        if !filter.is_null() {
            // SAFETY: `filter` came from `Box::into_raw` in `..._filter_new`, destroyed once.
            drop(unsafe { Box::from_raw(filter as *mut Box<dyn HttpFilter>) });
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> HeadersStatus {
    let stream = Stream(filter_envoy);
    let status = guarded("on_http_filter_request_headers", None, || {
        // SAFETY: a live filter of this stream; Envoy calls its hooks one at a time.
        unsafe { filter_at(filter) }.map(|f| f.on_request_headers(&stream, end_of_stream))
    });
    status.unwrap_or_else(|| {
        // Fail closed: a request the filter could not judge is not forwarded.
        guarded("on_http_filter_request_headers", (), || {
            stream.send_response(500, &[("x-wsgiproxy-error", "internal_error")], b"internal error\n", "wsgiproxy_internal_error")
        });
        HeadersStatus::StopIteration
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> HeadersStatus {
    let stream = Stream(filter_envoy);
    guarded("on_http_filter_response_headers", HeadersStatus::Continue, || {
        // SAFETY: as in the request hook.
        unsafe { filter_at(filter) }.map_or(HeadersStatus::Continue, |f| f.on_response_headers(&stream, end_of_stream))
    })
}

// Hooks Envoy 1.40 requires every HTTP module to export. The roles do nothing in
// them: bodies and trailers pass, no callout or scheduled event is ever started.
// Each takes only the leading arguments it reads (the C calling convention lets the
// caller pass more) and returns the "continue" value of its status enum.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(_: *mut c_void, _: *const c_void, _: bool) -> u32 {
    0
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(_: *mut c_void, _: *const c_void) -> u32 {
    0
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(_: *mut c_void, _: *const c_void, _: bool) -> u32 {
    0
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_: *mut c_void, _: *const c_void) -> u32 {
    0
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(_: *mut c_void, _: *const c_void) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(_: *mut c_void, _: *const c_void) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(_: *mut c_void, _: *const c_void) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(_: *mut c_void, _: *const c_void) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(_: *mut c_void, _: *const c_void) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(_: *mut c_void, _: *const c_void) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(_: *mut c_void, _: *const c_void) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_: *mut c_void, _: *const c_void) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}
