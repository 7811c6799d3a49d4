//! The event hooks Envoy looks up in the module, and the traits the roles implement.
//! Each hook catches panics so that none crosses into Envoy.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::handles::*;
use super::raw::*;
use super::ABI_VERSION;

// -------------------------------------------------------------- event hooks

/// A filter configuration: makes the per-stream filters. Shared by every worker.
pub trait FilterFactory: Send + Sync {
    fn new_filter(&self) -> Box<dyn HttpFilter>;
    /// A [`Scheduler`] event, on the main thread.
    fn on_scheduled(&self, _config: &ConfigHandle, _event: u64) {}
    /// The answer to [`ConfigHandle::http_callout`] (`None`: it failed).
    fn on_callout_done(&self, _config: &ConfigHandle, _id: u64, _response: Option<CalloutResponse>) {}
}

/// One HTTP stream's filter. Envoy calls it from one worker thread, one hook at a time.
pub trait HttpFilter {
    fn on_request_headers(&mut self, stream: &Stream, end_of_stream: bool) -> HeadersStatus;
    fn on_response_headers(&mut self, _stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        HeadersStatus::Continue
    }
    /// The answer to [`Stream::http_callout`] (`None`: it failed).
    fn on_callout_done(&mut self, _stream: &Stream, _id: u64, _response: Option<CalloutResponse>) {}
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
        // which Envoy calls after every filter it made.
        let Some(factory) = (unsafe { factory_at(config) }) else {
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
// them: bodies and trailers pass, no stream callout or per-stream event is started.
// Each takes only the leading arguments it reads (the C calling convention lets the
// caller pass more) and returns the "continue" value of its status enum. They run
// no code that could panic, so, like `on_program_init`, they need no `guarded`.

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
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    let stream = Stream(filter_envoy);
    let done = guarded("on_http_filter_http_callout_done", false, || {
        let response = callout_response(result, headers, headers_size, body, body_size);
        // SAFETY: as in the request hook.
        if let Some(f) = unsafe { filter_at(filter) } {
            f.on_callout_done(&stream, callout_id, response);
        }
        true
    });
    if !done {
        // The request waits for this answer: fail closed rather than leave it hanging.
        guarded("on_http_filter_http_callout_done", (), || {
            stream.send_response(500, &[("x-wsgiproxy-error", "internal_error")], b"internal error\n", "wsgiproxy_internal_error")
        });
    }
}

/// The factory behind a config pointer Envoy hands back.
///
/// # Safety
/// `ptr` must come from [`envoy_dynamic_module_on_http_filter_config_new`] and not yet
/// be destroyed; only shared references are made (`FilterFactory: Sync`).
unsafe fn factory_at<'a>(ptr: *const c_void) -> Option<&'a dyn FilterFactory> {
    // SAFETY: per the function's contract; null is handled by `as_ref`.
    unsafe { (ptr as *const Box<dyn FilterFactory>).as_ref() }.map(|b| b.as_ref())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(config_envoy: *mut c_void, config: *const c_void, event: u64) {
    guarded("on_http_filter_config_scheduled", (), || {
        // SAFETY: Envoy passes the live config pointer `..._config_new` returned.
        if let Some(factory) = unsafe { factory_at(config) } {
            factory.on_scheduled(&ConfigHandle(config_envoy), event);
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: *mut c_void,
    config: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    guarded("on_http_filter_config_http_callout_done", (), || {
        let response = callout_response(result, headers, headers_size, body, body_size);
        // SAFETY: Envoy passes the live config pointer `..._config_new` returned.
        if let Some(factory) = unsafe { factory_at(config) } {
            factory.on_callout_done(&ConfigHandle(config_envoy), callout_id, response);
        }
    })
}
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
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(_: *mut c_void, _: *const c_void) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(_: *mut c_void, _: *const c_void) {}
