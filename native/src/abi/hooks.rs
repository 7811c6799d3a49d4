//! The event hooks Envoy looks up in the module, and the traits the roles implement.
//! Each hook catches panics so that none crosses into Envoy.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::handles::*;
use super::raw::*;
use super::slot::{Entered, FilterSlot};
use super::traits::{FilterFactory, HttpFilter};
use super::ABI_VERSION;

// -------------------------------------------------------------- event hooks

/// Runs a hook's body, turning a panic into `fallback` and one critical log line
/// (a panic must not unwind into Envoy). Shared by the HTTP and network hooks.
pub(super) fn guarded<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
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
        FilterSlot::into_raw(factory.new_filter())
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    guarded("on_http_filter_destroy", (), || {
        // SAFETY: `filter` came from `..._filter_new` and is destroyed once, on its
        // stream's worker thread.
        unsafe { FilterSlot::destroy(filter) }
    })
}

/// Answers a request in Envoy's place when the filter could not judge it: fails closed.
fn internal_error(stream: &Stream) {
    guarded("internal_error", (), || {
        stream.send_response(500, &[("x-wsgiproxy-error", "internal_error")], b"internal error\n", "wsgiproxy_internal_error")
    });
}

/// Runs a stream hook on its filter (see `slot` for the rules).
fn enter<T>(filter: *const c_void, stream: &Stream, hook: &str, body: impl FnOnce(&mut dyn HttpFilter) -> T) -> Option<Entered<T>> {
    // SAFETY: Envoy passes the pointer `..._filter_new` returned, until its destroy
    // hook, and calls the stream's hooks on the stream's worker thread.
    unsafe { FilterSlot::enter(filter, stream, hook, body) }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> HeadersStatus {
    let stream = Stream(filter_envoy);
    match enter(filter, &stream, "on_http_filter_request_headers", |f| f.on_request_headers(&stream, end_of_stream)) {
        Some(Entered::Ran(status)) => status,
        // Not a request this filter may let through.
        Some(Entered::Busy | Entered::Poisoned | Entered::Destroyed) => HeadersStatus::StopIteration,
        Some(Entered::Panicked) | None => {
            // Fail closed: a request the filter could not judge is not forwarded.
            internal_error(&stream);
            HeadersStatus::StopIteration
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> BodyStatus {
    let stream = Stream(filter_envoy);
    match enter(filter, &stream, "on_http_filter_request_body", |f| f.on_request_body(&stream, end_of_stream)) {
        Some(Entered::Ran(status)) => status,
        // Envoy hands over the body it held from inside `continue_decoding`: the filter
        // has just let the request go on.
        Some(Entered::Busy) => BodyStatus::Continue,
        // The request was answered (500) or the stream is gone: nothing more goes on.
        Some(Entered::Poisoned | Entered::Destroyed) => BodyStatus::StopIterationAndWatermark,
        Some(Entered::Panicked) | None => {
            internal_error(&stream);
            BodyStatus::StopIterationAndWatermark
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(filter_envoy: *mut c_void, filter: *const c_void) -> TrailersStatus {
    let stream = Stream(filter_envoy);
    match enter(filter, &stream, "on_http_filter_request_trailers", |f| f.on_request_trailers(&stream)) {
        Some(Entered::Ran(status)) => status,
        Some(Entered::Busy) => TrailersStatus::Continue,
        Some(Entered::Poisoned | Entered::Destroyed) => TrailersStatus::StopIteration,
        Some(Entered::Panicked) | None => {
            internal_error(&stream);
            TrailersStatus::StopIteration
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> HeadersStatus {
    let stream = Stream(filter_envoy);
    match enter(filter, &stream, "on_http_filter_response_headers", |f| f.on_response_headers(&stream, end_of_stream)) {
        Some(Entered::Ran(status)) => status,
        // A local reply made from inside one of the filter's own hooks (its own refusal,
        // or Envoy's answer further down the chain), or the filter's own 500 after a
        // panic on the request path: it goes out as it is.
        Some(Entered::Busy | Entered::Poisoned) | None => HeadersStatus::Continue,
        Some(Entered::Destroyed) => HeadersStatus::StopIteration,
        Some(Entered::Panicked) => {
            // The response was not judged: the stream is reset, the response never passed on.
            guarded("reset", (), || stream.reset("wsgiproxy_internal_error"));
            HeadersStatus::StopIteration
        }
    }
}

// Hooks Envoy 1.40 requires every HTTP module to export, in which the roles do
// nothing: response bodies and trailers pass, no per-stream stream callout or event
// is started. Each returns the "continue" value of its status enum. They run no code
// that could panic, so, like `on_program_init`, they need no `guarded`.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(_: *mut c_void, _: *const c_void, _: bool) -> BodyStatus {
    BodyStatus::Continue
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_: *mut c_void, _: *const c_void) -> TrailersStatus {
    TrailersStatus::Continue
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
    let Some(response) =
        guarded("on_http_filter_http_callout_done", None, || Some(callout_response(result, headers, headers_size, body, body_size)))
    else {
        return internal_error(&stream);
    };
    let mut answer = Some(response);
    match enter(filter, &stream, "on_http_filter_http_callout_done", |f| {
        if let Some(response) = answer.take() {
            f.on_callout_done(&stream, callout_id, response)
        }
    }) {
        Some(Entered::Ran(()) | Entered::Poisoned | Entered::Destroyed) | None => {}
        // Answered inside the hook that made the call (a callout that failed at once):
        // the filter gets it once that hook has returned.
        Some(Entered::Busy) => {
            if let Some(response) = answer.take() {
                // SAFETY: as in `enter`.
                unsafe { FilterSlot::defer_callout_answer(filter, callout_id, response) }
            }
        }
        // The request waits for this answer: fail closed rather than leave it hanging.
        Some(Entered::Panicked) => internal_error(&stream),
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
// The stream-callout hooks the roles do not use (they start no stream callout), each
// declared as abi.h has it.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _stream_handle: u64,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _stream_handle: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _stream_handle: u64,
    _trailers: *const EnvoyHttpHeader,
    _trailers_size: usize,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _stream_handle: u64,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _stream_handle: u64,
    _reason: u32,
) {
}
/// An event a module thread committed to the stream's scheduler (the middleware role
/// wakes a request held for a key directory's fetch).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(filter_envoy: *mut c_void, filter: *const c_void, event_id: u64) {
    let stream = Stream(filter_envoy);
    // Busy (inside another of its hooks) cannot happen: Envoy runs the event from its
    // dispatcher, never from inside a hook.
    let _ = enter(filter, &stream, "on_http_filter_scheduled", |f| f.on_scheduled(&stream, event_id));
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
) {
}
/// Envoy tells every filter of a stream about a local reply (ours included) before it
/// is sent: it is sent (`Continue`, 0), never turned into a reset.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    0
}
