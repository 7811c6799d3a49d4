//! Safe handles over the raw callbacks: a stream, a configuration, a scheduler, the log.

use std::ffi::c_void;

use super::raw::*;

/// Borrows headers as the ABI's array of (key, value) buffers, for the duration of a call.
pub(crate) fn module_headers(headers: &[(&str, &str)]) -> Vec<ModuleHttpHeader> {
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
pub(crate) fn callout_response(
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

/// Lets any thread wake one stream's filter on its worker thread
/// ([`HttpFilter::on_scheduled`]). Envoy's scheduler holds the filter weakly: a commit
/// after the stream ended is dropped. Deleted when dropped.
pub struct StreamScheduler(*mut c_void);

// SAFETY: Envoy's per-filter scheduler is made to be committed from any thread (abi.h:
// "dispatch HTTP filter operations from any thread"); it posts to the worker's
// dispatcher and holds the filter weakly; deletion happens once, from `Drop`.
unsafe impl Send for StreamScheduler {}
// SAFETY: as above: `commit` is the only shared operation, and it is thread-safe.
unsafe impl Sync for StreamScheduler {}

impl StreamScheduler {
    pub fn commit(&self, event: u64) {
        // SAFETY: a live scheduler (deleted only in Drop, after every user is gone).
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event) }
    }
}

impl Drop for StreamScheduler {
    fn drop(&mut self) {
        // SAFETY: made by scheduler_new, deleted once.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// Copies bytes Envoy lent for the current hook.
/// A header name as text, keeping the copy's buffer when it is UTF-8 (Envoy's names
/// are lowercase ASCII; anything else is replaced, never trusted as a protocol name).
pub(crate) fn header_name(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Envoy's (pointer, length) pair as a slice, borrowed for the current hook.
fn envoy_bytes<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        return &[];
    }
    // SAFETY: Envoy hands out (pointer, length) pairs of live memory it owns, valid
    // until the current hook returns or a header setter is called; the caller
    // (`Stream::read_headers`) uses them within its call, before either can happen.
    unsafe { std::slice::from_raw_parts(ptr, length) }
}

pub(crate) fn copy_envoy_bytes(ptr: *const u8, length: usize) -> Vec<u8> {
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
pub struct ConfigHandle(pub(crate) *mut c_void);

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

    /// Defines the gauge `name`, like [`ConfigHandle::define_counter`]; its id.
    pub fn define_gauge(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: as in `define_counter`: the live config pointer of the current
        // `on_http_filter_config_new`; the name buffer and `id` outlive the call; no labels.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_gauge(
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
pub struct Stream(pub(crate) *mut c_void);

impl Stream {
    /// Every header of a map, in order, as (lowercase name, value bytes), copied.
    #[cfg(test)]
    pub fn headers(&self, map: HeaderMap) -> Vec<(String, Vec<u8>)> {
        self.read_headers(
            map,
            |count, _, _| Vec::with_capacity(count),
            |all, name, value| all.push((header_name(name.to_vec()), value.to_vec())),
        )
    }

    /// Every header of a map, in order, read in place: `make(count, names, values)` is
    /// told how many headers and how many bytes of names and of values there are, then `push`
    /// is given each (name, value) borrowed from Envoy's map, without a copy here.
    /// `T::default()` when the map is empty or unreadable.
    pub fn read_headers<T: Default>(
        &self,
        map: HeaderMap,
        make: impl FnOnce(usize, usize, usize) -> T,
        mut push: impl FnMut(&mut T, &[u8], &[u8]),
    ) -> T {
        // SAFETY: `self.0` is the live filter pointer of the current hook.
        let count = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, map) };
        if count == 0 {
            return T::default();
        }
        let empty = EnvoyHttpHeader { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 };
        // Envoy's default limit is 100 headers: on the stack up to 32, else on the heap.
        let mut on_stack = [empty; 32];
        let mut on_heap = Vec::new();
        let raw: &mut [EnvoyHttpHeader] = if count <= on_stack.len() {
            &mut on_stack[..count]
        } else {
            on_heap.resize(count, empty);
            &mut on_heap
        };
        // SAFETY: `raw` has room for the `count` headers Envoy just reported, and
        // nothing changes the map between the two calls (same thread, same hook).
        if !unsafe { envoy_dynamic_module_callback_http_get_headers(self.0, map, raw.as_mut_ptr()) } {
            return T::default();
        }
        let mut out = make(count, raw.iter().map(|h| h.key_length).sum(), raw.iter().map(|h| h.value_length).sum());
        for h in raw.iter() {
            push(&mut out, envoy_bytes(h.key_ptr, h.key_length), envoy_bytes(h.value_ptr, h.value_length));
        }
        out
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

    /// Sets the stream's filter state `key` to `value` (bytes); false when Envoy
    /// could not.
    pub fn set_filter_state(&self, key: &str, value: &[u8]) -> bool {
        // SAFETY: live filter pointer; both buffers borrow data alive for the call
        // (Envoy copies them).
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(self.0, ModuleBuffer::of(key.as_bytes()), ModuleBuffer::of(value))
        }
    }

    /// Sets the stream's filter-state object `key`, of the type Envoy registers under
    /// that name, made from `value`; false when Envoy has no such type or refused it.
    pub fn set_filter_state_typed(&self, key: &str, value: &str) -> bool {
        // SAFETY: live filter pointer; both buffers borrow data alive for the call
        // (Envoy copies them).
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_typed(
                self.0,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    /// The stream's filter state `key`, when it holds bytes.
    pub fn filter_state(&self, key: &str) -> Option<Vec<u8>> {
        let mut out = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };
        // SAFETY: live filter pointer; `key` alive for the call; `out` outlives it
        // and its bytes are copied at once.
        let found =
            unsafe { envoy_dynamic_module_callback_http_get_filter_state_bytes(self.0, ModuleBuffer::of(key.as_bytes()), &mut out) };
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

    /// Resets the stream (a local reset): what is under way is cut, not passed on.
    pub fn reset(&self, details: &str) {
        // SAFETY: live filter pointer; the details buffer borrows `details` for the call.
        unsafe { envoy_dynamic_module_callback_http_filter_reset_stream(self.0, 0, ModuleBuffer::of(details.as_bytes())) }
    }

    /// A scheduler that wakes this stream's filter on its worker thread.
    pub fn scheduler(&self) -> Option<StreamScheduler> {
        // SAFETY: live filter pointer, in one of its hooks (on its worker thread).
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(StreamScheduler(ptr))
    }

    /// Lets a request stopped in its request-headers hook go on.
    pub fn continue_decoding(&self) {
        // SAFETY: live filter pointer.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// Sets a gauge defined with [`ConfigHandle::define_gauge`].
    pub fn set_gauge(&self, id: usize, value: u64) {
        // SAFETY: live filter pointer, made from the config that defined `id`; no labels.
        unsafe { envoy_dynamic_module_callback_http_filter_set_gauge(self.0, id, std::ptr::null_mut(), 0, value) };
    }

    /// Adds `by` to a counter defined with [`ConfigHandle::define_counter`].
    pub fn increment_counter(&self, id: usize, by: u64) {
        // SAFETY: live filter pointer, made from the config that defined `id`; no labels.
        unsafe { envoy_dynamic_module_callback_http_filter_increment_counter(self.0, id, std::ptr::null_mut(), 0, by) };
    }
}
