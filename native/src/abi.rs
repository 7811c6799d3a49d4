//! The binding to Envoy's dynamic-module ABI, and the only module with `unsafe`.
//!
//! Written from Envoy 1.40.0's `source/extensions/dynamic_modules/abi/abi.h` (no file
//! of Envoy's is vendored): the few callbacks the roles use, declared as Envoy
//! exports them, behind safe wrappers; and the event hooks Envoy looks up, each of
//! which catches panics so that none crosses into Envoy.
//!
//! Envoy only promises compatibility with a module built for its exact ABI: this one
//! reports [`ABI_VERSION`], the string Envoy 1.40.0 expects, and is pinned to it.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION` of Envoy 1.40.0.
pub const ABI_VERSION: &CStr = c"v0.2.0";

// ------------------------------------------------------------------ C types

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
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
pub struct EnvoyHttpHeader {
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
    fn envoy_dynamic_module_callback_http_get_headers(filter: *mut c_void, map: HeaderMap, result: *mut EnvoyHttpHeader) -> bool;
    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        map: HeaderMap,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        count: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(filter: *mut c_void, map: HeaderMap, key: ModuleBuffer, value: ModuleBuffer) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(filter: *mut c_void, map: HeaderMap, key: ModuleBuffer, value: ModuleBuffer) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(filter: *mut c_void, id: Attribute, result: *mut EnvoyBuffer)
        -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(filter: *mut c_void, id: Attribute, result: *mut u64) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_bool(filter: *mut c_void, id: Attribute, result: *mut bool) -> bool;
    fn envoy_dynamic_module_callback_http_get_downstream_direct_remote_address(filter: *mut c_void, result: *mut EnvoyBuffer) -> bool;
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
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: *mut c_void,
        callout_id: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: *mut c_void, event_id: u64);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
}

/// Borrows headers as the ABI's array of (key, value) buffers, for the duration of a call.
fn module_headers(headers: &[(&str, &str)]) -> Vec<ModuleHttpHeader> {
    headers
        .iter()
        .map(|(n, v)| ModuleHttpHeader { key_ptr: n.as_ptr(), key_length: n.len(), value_ptr: v.as_ptr(), value_length: v.len() })
        .collect()
}

/// Why Envoy did not start a callout (`envoy_dynamic_module_type_http_callout_init_result`).
pub fn callout_refusal(code: u32) -> &'static str {
    match code {
        1 => "missing required headers",
        2 => "cluster not found",
        3 => "duplicate callout id",
        4 => "cannot create the request (no healthy host?)",
        _ => "refused",
    }
}

/// The answer to a callout: headers (`:status` included) and body.
pub struct CalloutResponse {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl CalloutResponse {
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }
}

/// Copies the answer Envoy lent to a callout-done hook; `None` when the callout failed.
fn callout_response(
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) -> Option<CalloutResponse> {
    if result != 0 {
        return None;
    }
    let headers = if headers.is_null() || headers_size == 0 {
        Vec::new()
    } else {
        // SAFETY: Envoy passes an array of `headers_size` headers, valid for this hook.
        unsafe { std::slice::from_raw_parts(headers, headers_size) }
            .iter()
            .map(|h| (header_name(copy_envoy_bytes(h.key_ptr, h.key_length)), copy_envoy_bytes(h.value_ptr, h.value_length)))
            .collect()
    };
    let body = if body.is_null() || body_size == 0 {
        Vec::new()
    } else {
        // SAFETY: Envoy passes an array of `body_size` chunks, valid for this hook.
        unsafe { std::slice::from_raw_parts(body, body_size) }.iter().flat_map(|c| copy_envoy_bytes(c.ptr, c.length)).collect()
    };
    Some(CalloutResponse { headers, body })
}

/// Lets a module thread wake the configuration on Envoy's main thread
/// ([`FilterFactory::on_scheduled`]). Deleted when dropped.
pub struct Scheduler(*mut c_void);

// SAFETY: Envoy's config scheduler is made to be committed from any thread, the
// module's own included (abi.h); deletion happens once, from `Drop`.
unsafe impl Send for Scheduler {}
// SAFETY: as above: `commit` is the only shared operation, and it is thread-safe.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    pub fn commit(&self, event: u64) {
        // SAFETY: a live scheduler (deleted only in Drop, after every user is gone).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: made by scheduler_new, deleted once.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// Copies bytes Envoy lent for the current hook.
/// A header name as text, keeping the copy's buffer when it is UTF-8 (Envoy's names
/// are lowercase ASCII; anything else is replaced, never trusted as a protocol name).
fn header_name(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

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

    /// Adds `by` to a counter from the configuration's own context (the main thread).
    pub fn increment_counter(&self, id: usize, by: u64) {
        // SAFETY: the live config pointer of the current config hook; no labels.
        unsafe { envoy_dynamic_module_callback_http_filter_config_increment_counter(self.0, id, std::ptr::null_mut(), 0, by) };
    }

    /// A scheduler that wakes this configuration on the main thread.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: the live config pointer of the current config hook.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(Scheduler(ptr))
    }

    /// Sends a request to `cluster` from the configuration's context; the answer comes
    /// to [`FilterFactory::on_callout_done`]. `Err` says why Envoy did not send it.
    pub fn http_callout(&self, cluster: &str, headers: &[(&str, &str)], timeout: std::time::Duration) -> Result<u64, &'static str> {
        let mut raw = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: live config pointer; `raw` and the buffers it points into borrow
        // `headers` and `cluster`, alive for the call (Envoy copies them); `id` too.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(b""),
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            )
        };
        if result == 0 {
            Ok(id)
        } else {
            Err(callout_refusal(result))
        }
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
            .map(|h| (header_name(copy_envoy_bytes(h.key_ptr, h.key_length)), copy_envoy_bytes(h.value_ptr, h.value_length)))
            .collect()
    }

    /// Every value of one header, in order: cheaper than [`Stream::headers`] when a
    /// filter needs a few names (no copy of the rest of the map).
    pub fn header_values(&self, map: HeaderMap, name: &str) -> Vec<Vec<u8>> {
        let mut first = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };
        let mut count = 0usize;
        // SAFETY: live filter pointer; the key borrows `name` for the call; `first`
        // and `count` are the module's own, written by Envoy (index 0 also reports
        // how many values the name has).
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(self.0, map, ModuleBuffer::of(name.as_bytes()), &mut first, 0, &mut count)
        };
        if !found || count == 0 {
            return Vec::new();
        }
        let mut values = Vec::with_capacity(count);
        values.push(copy_envoy_bytes(first.ptr, first.length));
        for index in 1..count {
            let mut value = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };
            // SAFETY: as above; nothing changes the map between these calls.
            if unsafe {
                envoy_dynamic_module_callback_http_get_header(
                    self.0,
                    map,
                    ModuleBuffer::of(name.as_bytes()),
                    &mut value,
                    index,
                    std::ptr::null_mut(),
                )
            } {
                values.push(copy_envoy_bytes(value.ptr, value.length));
            }
        }
        values
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
        unsafe { envoy_dynamic_module_callback_http_set_header(self.0, map, ModuleBuffer::of(name.as_bytes()), ModuleBuffer::null()) }
    }

    /// Answers the request in Envoy's place.
    pub fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let mut raw = module_headers(headers);
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

    /// Sends a request to `cluster`; the answer comes to [`HttpFilter::on_callout_done`].
    /// `Err` says why Envoy did not send it.
    pub fn http_callout(&self, cluster: &str, headers: &[(&str, &str)], timeout: std::time::Duration) -> Result<u64, &'static str> {
        let mut raw = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: live filter pointer; `raw` and the buffers it points into borrow
        // `headers` and `cluster`, alive for the call (Envoy copies them); `id` too.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(b""),
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            )
        };
        if result == 0 {
            Ok(id)
        } else {
            Err(callout_refusal(result))
        }
    }

    /// Lets a request stopped in its request-headers hook go on.
    pub fn continue_decoding(&self) {
        // SAFETY: live filter pointer.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
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

/// The binding against a stand-in for Envoy: the callbacks above are defined here
/// over a plain Rust header map, so that every pointer the wrappers pass and read is
/// exercised (scripts/test.sh runs these under AddressSanitizer, or valgrind).
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A local reply: status, headers, body, details.
    type Reply = (u32, Vec<(String, String)>, Vec<u8>, String);

    /// What Envoy would hold for one stream.
    #[derive(Default)]
    struct FakeStream {
        request: Vec<(Vec<u8>, Vec<u8>)>,
        response: Vec<(Vec<u8>, Vec<u8>)>,
        reply: Option<Reply>,
        source_address: Option<Vec<u8>>,
        direct_address: Option<Vec<u8>>,
        counters: Vec<(usize, u64)>,
    }

    thread_local! {
        static LOG: RefCell<Vec<(LogLevel, String)>> = const { RefCell::new(Vec::new()) };
        static DEFINED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    fn bytes(ptr: *const u8, len: usize) -> Vec<u8> {
        if ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: the module passes (pointer, length) of live memory for the call.
        unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()
    }

    fn fake<'a>(filter: *mut c_void) -> &'a mut FakeStream {
        // SAFETY: every test passes a pointer to a FakeStream it owns for the call.
        unsafe { &mut *(filter as *mut FakeStream) }
    }

    fn map(stream: &mut FakeStream, map: HeaderMap) -> &mut Vec<(Vec<u8>, Vec<u8>)> {
        match map {
            HeaderMap::Request => &mut stream.request,
            HeaderMap::Response => &mut stream.response,
        }
    }

    fn lend(out: *mut EnvoyBuffer, value: &[u8]) {
        // SAFETY: `out` points to the module's buffer for the call; `value` lives in
        // the FakeStream, which outlives the copy the module makes.
        unsafe { *out = EnvoyBuffer { ptr: value.as_ptr(), length: value.len() } }
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_log(level: LogLevel, message: ModuleBuffer) {
        let text = String::from_utf8(bytes(message.ptr, message.length)).unwrap();
        LOG.with(|l| l.borrow_mut().push((level, text)));
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_log_enabled(_level: LogLevel) -> bool {
        true
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, m: HeaderMap) -> usize {
        map(fake(filter), m).len()
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_get_headers(filter: *mut c_void, m: HeaderMap, out: *mut EnvoyHttpHeader) -> bool {
        for (i, (k, v)) in map(fake(filter), m).iter().enumerate() {
            let h = EnvoyHttpHeader { key_ptr: k.as_ptr(), key_length: k.len(), value_ptr: v.as_ptr(), value_length: v.len() };
            // SAFETY: the module sized `out` with get_headers_size.
            unsafe { out.add(i).write(h) };
        }
        true
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        m: HeaderMap,
        key: ModuleBuffer,
        out: *mut EnvoyBuffer,
        index: usize,
        count: *mut usize,
    ) -> bool {
        let name = bytes(key.ptr, key.length);
        let values: Vec<&Vec<u8>> = map(fake(filter), m).iter().filter(|(k, _)| *k == name).map(|(_, v)| v).collect();
        if index == 0 && !count.is_null() {
            // SAFETY: the module passes its own counter for the call.
            unsafe { *count = values.len() };
        }
        match values.get(index) {
            Some(v) => {
                lend(out, v);
                true
            }
            None => false,
        }
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        m: HeaderMap,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool {
        let headers = map(fake(filter), m);
        let name = bytes(key.ptr, key.length);
        headers.retain(|(k, _)| *k != name);
        if !value.ptr.is_null() {
            headers.push((name, bytes(value.ptr, value.length)));
        }
        true
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        m: HeaderMap,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool {
        map(fake(filter), m).push((bytes(key.ptr, key.length), bytes(value.ptr, value.length)));
        true
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    ) {
        let text = |p, l| String::from_utf8(bytes(p, l)).unwrap();
        let list = (0..headers_size)
            .map(|i| {
                // SAFETY: the module passes an array of `headers_size` entries.
                let h = unsafe { &*headers.add(i) };
                (text(h.key_ptr, h.key_length), text(h.value_ptr, h.value_length))
            })
            .collect();
        fake(filter).reply = Some((status, list, bytes(body.ptr, body.length), text(details.ptr, details.length)));
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        id: Attribute,
        out: *mut EnvoyBuffer,
    ) -> bool {
        match (id, &fake(filter).source_address) {
            (Attribute::SourceAddress, Some(a)) => {
                lend(out, a);
                true
            }
            (Attribute::RequestProtocol, _) => {
                lend(out, b"HTTP/1.1");
                true
            }
            _ => false,
        }
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_int(_: *mut c_void, id: Attribute, out: *mut u64) -> bool {
        // SAFETY: `out` is the module's u64 for the call.
        (id == Attribute::SourcePort).then(|| unsafe { *out = 40_000 }).is_some()
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_bool(_: *mut c_void, _: Attribute, _: *mut bool) -> bool {
        false
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_get_downstream_direct_remote_address(
        filter: *mut c_void,
        out: *mut EnvoyBuffer,
    ) -> bool {
        match &fake(filter).direct_address {
            Some(a) => {
                lend(out, a);
                true
            }
            None => false,
        }
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        _: *mut c_void,
        name: ModuleBuffer,
        _: *mut ModuleBuffer,
        labels: usize,
        id: *mut usize,
    ) -> u32 {
        assert_eq!(labels, 0);
        DEFINED.with(|d| {
            let mut d = d.borrow_mut();
            d.push(String::from_utf8(bytes(name.ptr, name.length)).unwrap());
            // SAFETY: `id` is the module's usize for the call.
            unsafe { *id = d.len() - 1 };
        });
        0
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        _: *mut ModuleBuffer,
        _: usize,
        by: u64,
    ) -> u32 {
        fake(filter).counters.push((id, by));
        0
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        _: *mut c_void,
        _: usize,
        _: *mut ModuleBuffer,
        _: usize,
        _: u64,
    ) -> u32 {
        0
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: *mut c_void,
        id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        _body: ModuleBuffer,
        _timeout: u64,
    ) -> u32 {
        // Records the call as a request header map of its own, then "cluster not found"
        // unless the cluster is "sidecar".
        let f = fake(filter);
        f.response = (0..headers_size)
            .map(|i| {
                // SAFETY: the module passes an array of `headers_size` entries.
                let h = unsafe { &*headers.add(i) };
                (bytes(h.key_ptr, h.key_length), bytes(h.value_ptr, h.value_length))
            })
            .collect();
        if bytes(cluster.ptr, cluster.length) != b"sidecar" {
            return 2;
        }
        // SAFETY: `id` is the module's u64 for the call.
        unsafe { *id = 7 };
        0
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void) {
        fake(filter).counters.push((usize::MAX, 0));
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        _: *mut c_void,
        _: *mut u64,
        _: ModuleBuffer,
        _: *mut ModuleHttpHeader,
        _: usize,
        _: ModuleBuffer,
        _: u64,
    ) -> u32 {
        2
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(_: *mut c_void) -> *mut c_void {
        Box::into_raw(Box::new(std::sync::atomic::AtomicU64::new(0))) as *mut c_void
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: *mut c_void, _: u64) {
        // SAFETY: made by the stand-in scheduler_new, alive until delete.
        unsafe { &*(scheduler as *const std::sync::atomic::AtomicU64) }.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void) {
        // SAFETY: made by the stand-in scheduler_new, deleted once.
        drop(unsafe { Box::from_raw(scheduler as *mut std::sync::atomic::AtomicU64) });
    }

    fn stream_of(fake: &mut FakeStream) -> Stream {
        Stream(fake as *mut FakeStream as *mut c_void)
    }

    fn envoy_buffer(bytes: &[u8]) -> EnvoyBuffer {
        EnvoyBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }

    #[test]
    fn the_abi_version_is_envoy_1_40s() {
        // SAFETY: the hook returns a pointer to a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(envoy_dynamic_module_on_program_init()) };
        assert_eq!(version.to_str(), Ok("v0.2.0"));
    }

    #[test]
    fn headers_are_copied_out_and_edited_in_place() {
        let mut f = FakeStream {
            request: vec![(b"x-a".to_vec(), b"1".to_vec()), (b"x-bin".to_vec(), vec![0xff, 0x00, b'z']), (b"x-empty".to_vec(), vec![])],
            ..FakeStream::default()
        };
        let s = stream_of(&mut f);
        let got = s.headers(HeaderMap::Request);
        assert_eq!(got, [("x-a".into(), b"1".to_vec()), ("x-bin".into(), vec![0xff, 0, b'z']), ("x-empty".into(), vec![])]);
        assert!(s.headers(HeaderMap::Response).is_empty());
        s.set_header(HeaderMap::Request, "x-a", b"2");
        s.set_header(HeaderMap::Request, "x-set-empty", b"");
        s.add_header(HeaderMap::Request, "x-a", b"3");
        s.remove_header(HeaderMap::Request, "x-bin");
        s.add_header(HeaderMap::Response, "set-cookie", b"a=1");
        assert_eq!(
            f.request,
            [
                (b"x-empty".to_vec(), vec![]),
                (b"x-a".to_vec(), b"2".to_vec()),
                (b"x-set-empty".to_vec(), vec![]),
                (b"x-a".to_vec(), b"3".to_vec())
            ],
            "an empty value is set, not taken for a removal"
        );
        assert_eq!(f.response, [(b"set-cookie".to_vec(), b"a=1".to_vec())]);
    }

    #[test]
    fn one_header_is_read_by_name_with_every_value() {
        let mut f = FakeStream {
            response: vec![
                (b"set-cookie".to_vec(), b"a=1".to_vec()),
                (b"location".to_vec(), b"/x".to_vec()),
                (b"set-cookie".to_vec(), vec![0xff, b'b']),
                (b"set-cookie".to_vec(), vec![]),
            ],
            ..FakeStream::default()
        };
        let s = stream_of(&mut f);
        assert_eq!(s.header_values(HeaderMap::Response, "set-cookie"), [b"a=1".to_vec(), vec![0xff, b'b'], vec![]]);
        assert_eq!(s.header_values(HeaderMap::Response, "location"), [b"/x".to_vec()]);
        assert!(s.header_values(HeaderMap::Response, "content-location").is_empty());
        assert!(s.header_values(HeaderMap::Request, "location").is_empty());
    }

    #[test]
    fn replies_attributes_and_the_peer() {
        let mut f = FakeStream { direct_address: Some(b"[::1]:5555".to_vec()), ..FakeStream::default() };
        let s = stream_of(&mut f);
        assert_eq!(s.direct_remote_address().as_deref(), Some(&b"[::1]:5555"[..]));
        assert_eq!(s.attribute_bytes(Attribute::SourceAddress), None);
        assert_eq!(s.attribute_bytes(Attribute::RequestProtocol).as_deref(), Some(&b"HTTP/1.1"[..]));
        assert_eq!(s.attribute_int(Attribute::SourcePort), Some(40_000));
        assert_eq!(s.attribute_int(Attribute::DestinationPort), None);
        assert_eq!(s.attribute_bool(Attribute::ConnectionMtls), None);
        s.send_response(
            403,
            &[("x-wsgiproxy-error", "untrusted_peer"), ("content-type", "text/plain")],
            b"no\n",
            "wsgiproxy_untrusted_peer",
        );
        s.increment_counter(3, 2);
        let (status, headers, body, details) = f.reply.take().unwrap();
        assert_eq!((status, body.as_slice(), details.as_str()), (403, &b"no\n"[..], "wsgiproxy_untrusted_peer"));
        assert_eq!(headers, [("x-wsgiproxy-error".into(), "untrusted_peer".into()), ("content-type".into(), "text/plain".into())]);
        assert_eq!(f.counters, [(3, 2)]);
    }

    /// Runs one request through the hooks, as Envoy would: config, filter, headers, destroy.
    fn through_hooks(config: &str, f: &mut FakeStream) -> HeadersStatus {
        let name = b"wsgiproxy";
        let factory =
            envoy_dynamic_module_on_http_filter_config_new(std::ptr::null_mut(), envoy_buffer(name), envoy_buffer(config.as_bytes()));
        assert!(!factory.is_null(), "{:?}", LOG.with(|l| l.borrow().clone()));
        let filter = envoy_dynamic_module_on_http_filter_new(factory, std::ptr::null_mut());
        let envoy_side = f as *mut FakeStream as *mut c_void;
        let status = envoy_dynamic_module_on_http_filter_request_headers(envoy_side, filter, true);
        assert_eq!(envoy_dynamic_module_on_http_filter_response_headers(envoy_side, filter, true), HeadersStatus::Continue);
        envoy_dynamic_module_on_http_filter_stream_complete(envoy_side, filter);
        envoy_dynamic_module_on_http_filter_destroy(filter);
        envoy_dynamic_module_on_http_filter_config_destroy(factory);
        status
    }

    #[test]
    fn a_request_through_every_hook() {
        let mut f = FakeStream {
            request: vec![
                (b":authority".to_vec(), b"www.example.com".to_vec()),
                (b":path".to_vec(), b"/blog/x?q=1".to_vec()),
                (b":method".to_vec(), b"GET".to_vec()),
                (b"x-script-name".to_vec(), b"/evil".to_vec()),
            ],
            direct_address: Some(b"10.1.2.3:4444".to_vec()),
            ..FakeStream::default()
        };
        let config = r#"{"role": "app", "href": "http://backend:8080/app", "script_name": "/blog",
                         "string_keys": [{"key": "PROTO", "from_property": ["request", "protocol"]}]}"#;
        assert_eq!(through_hooks(config, &mut f), HeadersStatus::Continue);
        let get =
            |n: &[u8]| f.request.iter().filter(|(k, _)| k == n).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect::<Vec<_>>();
        assert_eq!(get(b":path"), ["/app/x?q=1"]);
        assert_eq!(get(b"x-script-name"), ["/blog"]);
        assert_eq!(get(b"x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(get(b"x-wsgiproxy-str-0"), ["PROTO HTTP/1.1"]);
        assert!(f.counters.iter().any(|&(_, by)| by == 1));
        assert!(DEFINED.with(|d| d.borrow().iter().any(|n| n == "wsgiproxy.app.rejected.outside_mount")));

        let mut outside = FakeStream {
            request: vec![(b":path".to_vec(), b"/other".to_vec())],
            direct_address: Some(b"10.1.2.3:4444".to_vec()),
            ..FakeStream::default()
        };
        assert_eq!(through_hooks(config, &mut outside), HeadersStatus::StopIteration);
        let (status, headers, _, _) = outside.reply.unwrap();
        assert_eq!(status, 404);
        assert!(headers.contains(&("x-wsgiproxy-error".into(), "outside_mount".into())));

        // No TCP peer to send as the client address: refused, never a guess.
        let mut unknown = FakeStream { request: vec![(b":path".to_vec(), b"/blog/x".to_vec())], ..FakeStream::default() };
        assert_eq!(through_hooks(config, &mut unknown), HeadersStatus::StopIteration);
        let (status, headers, _, _) = unknown.reply.unwrap();
        assert_eq!(status, 500);
        assert!(headers.contains(&("x-wsgiproxy-error".into(), "peer_unknown".into())));
    }

    #[test]
    fn a_bad_configuration_is_refused_with_the_field_named() {
        for (config, expected) in [
            (&b"{\"role\": \"app\", \"href\": \"http://x/\", \"script_name\": \"blog\"}"[..], "field `script_name`: must start with /"),
            (b"\xff\xfe", "not valid JSON"),
            (b"{\"role\": \"spawn\", \"app\": \"a\"}", "field `sidecar_cluster`"),
        ] {
            let made =
                envoy_dynamic_module_on_http_filter_config_new(std::ptr::null_mut(), envoy_buffer(b"wsgiproxy"), envoy_buffer(config));
            assert!(made.is_null());
            let logged = LOG.with(|l| l.borrow().last().cloned()).unwrap();
            assert_eq!(logged.0, LogLevel::Error);
            assert!(logged.1.contains(expected), "{logged:?}");
        }
        // Envoy never passes null, but a null destroy must not crash either.
        envoy_dynamic_module_on_http_filter_config_destroy(std::ptr::null());
        envoy_dynamic_module_on_http_filter_destroy(std::ptr::null());
    }

    #[test]
    fn a_callout_and_its_answer() {
        // The spawn role asks the sidecar, pauses, and goes on with the upstream it got.
        let config = r#"{"role": "spawn", "app": "blog", "sidecar_cluster": "sidecar"}"#;
        let factory =
            envoy_dynamic_module_on_http_filter_config_new(std::ptr::null_mut(), envoy_buffer(b"s"), envoy_buffer(config.as_bytes()));
        assert!(!factory.is_null(), "{:?}", LOG.with(|l| l.borrow().clone()));
        let filter = envoy_dynamic_module_on_http_filter_new(factory, std::ptr::null_mut());
        let mut f = FakeStream { request: vec![(b":path".to_vec(), b"/".to_vec())], ..FakeStream::default() };
        let envoy_side = &mut f as *mut FakeStream as *mut c_void;
        assert_eq!(envoy_dynamic_module_on_http_filter_request_headers(envoy_side, filter, true), HeadersStatus::StopIteration);
        let sent: Vec<(Vec<u8>, Vec<u8>)> = std::mem::take(&mut f.response);
        assert!(sent.contains(&(b":path".to_vec(), b"/v1/ensure/blog".to_vec())), "{sent:?}");
        let answer = [
            (&b":status"[..], &b"200"[..]),
            (b"x-wsgiproxy-sidecar", b"1"),
            (b"x-wsgiproxy-upstream", b"127.0.0.1:4321"),
            (b"x-wsgiproxy-lease-ms", b"5000"),
        ];
        let raw: Vec<EnvoyHttpHeader> = answer
            .iter()
            .map(|(k, v)| EnvoyHttpHeader { key_ptr: k.as_ptr(), key_length: k.len(), value_ptr: v.as_ptr(), value_length: v.len() })
            .collect();
        let body = [envoy_buffer(b"ok")];
        envoy_dynamic_module_on_http_filter_http_callout_done(envoy_side, filter, 7, 0, raw.as_ptr(), raw.len(), body.as_ptr(), body.len());
        assert!(f.request.contains(&(b"x-envoy-original-dst-host".to_vec(), b"127.0.0.1:4321".to_vec())), "{:?}", f.request);
        assert!(f.counters.contains(&(usize::MAX, 0)), "the request went on");
        // A failed callout: a 503 saying the sidecar did not answer.
        let second = envoy_dynamic_module_on_http_filter_new(factory, std::ptr::null_mut());
        let mut g = FakeStream::default();
        let envoy_side = &mut g as *mut FakeStream as *mut c_void;
        envoy_dynamic_module_on_http_filter_http_callout_done(envoy_side, second, 7, 1, std::ptr::null(), 0, std::ptr::null(), 0);
        assert_eq!(g.reply.as_ref().map(|r| r.0), Some(503));
        // Scheduled events and a failed report callout on the configuration.
        envoy_dynamic_module_on_http_filter_config_scheduled(std::ptr::null_mut(), factory, 0);
        envoy_dynamic_module_on_http_filter_config_http_callout_done(
            std::ptr::null_mut(),
            factory,
            9,
            1,
            std::ptr::null(),
            0,
            std::ptr::null(),
            0,
        );
        for made in [filter, second] {
            envoy_dynamic_module_on_http_filter_destroy(made);
        }
        envoy_dynamic_module_on_http_filter_config_destroy(factory);
    }

    struct Panicking;
    impl HttpFilter for Panicking {
        fn on_request_headers(&mut self, _: &Stream, _: bool) -> HeadersStatus {
            panic!("a bug")
        }
        fn on_response_headers(&mut self, _: &Stream, _: bool) -> HeadersStatus {
            panic!("another bug")
        }
        fn on_callout_done(&mut self, _: &Stream, _: u64, _: Option<CalloutResponse>) {
            panic!("a third bug")
        }
    }

    #[test]
    fn a_panic_never_crosses_into_envoy_and_fails_closed() {
        let filter: *const c_void = Box::into_raw(Box::new(Box::new(Panicking) as Box<dyn HttpFilter>)) as *const c_void;
        let mut f = FakeStream::default();
        let envoy_side = &mut f as *mut FakeStream as *mut c_void;
        assert_eq!(envoy_dynamic_module_on_http_filter_request_headers(envoy_side, filter, true), HeadersStatus::StopIteration);
        assert_eq!(envoy_dynamic_module_on_http_filter_response_headers(envoy_side, filter, true), HeadersStatus::Continue);
        let (status, headers, _, _) = f.reply.take().unwrap();
        assert_eq!(status, 500);
        assert!(headers.contains(&("x-wsgiproxy-error".into(), "internal_error".into())));
        // A request waiting for a callout's answer is answered, not left hanging.
        envoy_dynamic_module_on_http_filter_http_callout_done(envoy_side, filter, 1, 1, std::ptr::null(), 0, std::ptr::null(), 0);
        assert_eq!(f.reply.take().map(|r| r.0), Some(500));
        envoy_dynamic_module_on_http_filter_destroy(filter);
        assert!(LOG.with(|l| l.borrow().iter().any(|(level, m)| *level == LogLevel::Critical && m.contains("panic caught"))));
    }
}
