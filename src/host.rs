//! The Wasm filter's side of the drivers' [`Host`]: proxy-wasm host calls; and of
//! [`ReportHost`], for the root context's activity reports.

use std::fmt;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType, Status};
use wsgiproxy_protocol::driver::spawn::SpawnFlow;
use wsgiproxy_protocol::driver::Flow;
use wsgiproxy_protocol::host::{CalloutAnswer, HeaderMap, Host, ReportHost, Warning};
use wsgiproxy_protocol::middleware::NonceMemory;
use wsgiproxy_protocol::replay::Verdict;
use wsgiproxy_protocol::request::{LocalReply, RequestHead};
use wsgiproxy_protocol::signature::Nonce;
use wsgiproxy_protocol::trust::PEER_RECORD;

use crate::metrics::Metrics;
use crate::replay::SharedNonces;
use crate::shared::Shared;

/// One hook's view of the host, for a driver.
pub struct WasmHost<'a> {
    shared: &'a Shared,
}

impl<'a> WasmHost<'a> {
    pub fn new(shared: &'a Shared) -> Self {
        WasmHost { shared }
    }
}

/// What the hook returns once the driver is done.
pub fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Replied => Action::Pause,
    }
}

/// What the spawn role's request-headers hook returns: a held request pauses (the
/// host turns that into "stop all iteration" under flow control: the body and
/// trailers wait with the headers), and so does one answered here.
pub fn spawn_action(flow: SpawnFlow) -> Action {
    match flow {
        SpawnFlow::Continue => Action::Continue,
        SpawnFlow::Held | SpawnFlow::Replied => Action::Pause,
    }
}

fn map_type(map: HeaderMap) -> MapType {
    match map {
        HeaderMap::Request => MapType::HttpRequestHeaders,
        HeaderMap::Response => MapType::HttpResponseHeaders,
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: MapType, return_map_data: *mut *mut u8, return_map_size: *mut usize) -> Status;
    // The status as a number: the SDK's own wrapper panics on one it does not know.
    fn proxy_call_foreign_function(
        function_name: *const u8,
        function_name_size: usize,
        arguments: *const u8,
        arguments_size: usize,
        results: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
}

/// Envoy's `set_envoy_filter_state` foreign function: true when Envoy set the object.
fn set_envoy_filter_state(key: &str, value: &str) -> bool {
    const NAME: &str = "set_envoy_filter_state";
    let arguments = wsgiproxy_protocol::host::set_envoy_filter_state_arguments(key, value);
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the name and arguments are alive for the call; the host writes a pointer
    // and a size to the two locals, a buffer it allocated in the guest (as for
    // `serialized_map`) when not null, owned and dropped here.
    unsafe {
        let status = proxy_call_foreign_function(NAME.as_ptr(), NAME.len(), arguments.as_ptr(), arguments.len(), &mut data, &mut size);
        if !data.is_null() {
            drop(Vec::from_raw_parts(data, size, size));
        }
        status == Status::Ok as u32
    }
}

/// A header map as the host serialises it, in the buffer the host filled (allocated
/// through the SDK's `proxy_on_memory_allocate`, as the SDK's own reader does); empty
/// on any failure.
fn serialized_map(map: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size to the two locals. The pointer,
    // when not null, is a buffer of `size` bytes the host allocated in the guest with
    // `proxy_on_memory_allocate` (a `Vec<u8>` of that capacity, leaked): owning it
    // as that `Vec` is what the SDK's `get_map_bytes` does too.
    unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    }
}

fn attribute(path: Vec<&str>) -> Option<Vec<u8>> {
    hostcalls::get_property(path).ok().flatten()
}

impl Host for WasmHost<'_> {
    /// One host call for the whole map, parsed in place: the host's serialised map is
    /// the head's buffer (the SDK's reader would copy each name and value out).
    fn request_head(&mut self) -> RequestHead {
        RequestHead::from_serialized_map(serialized_map(MapType::HttpRequestHeaders))
    }

    fn header(&mut self, map: HeaderMap, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(map_type(map), name).ok().flatten()
    }

    /// A single-value read gives only the first value: when the name is there, the
    /// whole map is read for the others.
    fn header_values(&mut self, map: HeaderMap, name: &str, found: &mut Vec<(String, Vec<u8>)>) {
        if let Ok(Some(_)) = hostcalls::get_map_value_bytes(map_type(map), name) {
            let all = hostcalls::get_map_bytes(map_type(map)).unwrap_or_default();
            found.extend(all.into_iter().filter(|(n, _)| n == name));
        }
    }

    /// One call per changed header: measured cheaper than rewriting the whole map in
    /// one call (`set_map_bytes` makes Envoy drop and re-add every header).
    fn set_header(&mut self, map: HeaderMap, name: &str, value: &[u8]) {
        let _ = hostcalls::set_map_value_bytes(map_type(map), name, Some(value));
    }

    fn add_header(&mut self, map: HeaderMap, name: &str, value: &[u8]) {
        let _ = hostcalls::add_map_value_bytes(map_type(map), name, value);
    }

    fn remove_header(&mut self, map: HeaderMap, name: &str) {
        let _ = hostcalls::remove_map_value(map_type(map), name);
    }

    fn send_reply(&mut self, reply: &LocalReply) {
        send_reply(reply);
    }

    fn send_document(&mut self, headers: &[(&str, &str)], body: &[u8]) {
        let _ = hostcalls::send_http_response(200, headers.to_vec(), Some(body));
    }

    fn http_callout(&mut self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u64, String> {
        http_callout(cluster, headers, timeout)
    }

    fn resume_request(&mut self) {
        let _ = hostcalls::resume_http_request();
    }

    /// Written by the `peer` network filter; a client cannot set filter state.
    fn tcp_peer(&mut self) -> Option<Vec<u8>> {
        attribute(vec![PEER_RECORD])
    }

    fn envoy_client(&mut self) -> Option<Vec<u8>> {
        attribute(vec!["source", "address"])
    }

    fn peer_uri_san(&mut self) -> Option<Vec<u8>> {
        attribute(vec!["connection", "uri_san_peer_certificate"])
    }

    fn peer_dns_san(&mut self) -> Option<Vec<u8>> {
        attribute(vec!["connection", "dns_san_peer_certificate"])
    }

    fn connection_is_tls(&mut self) -> bool {
        attribute(vec!["connection", "tls_version"]).is_some_and(|v| !v.is_empty())
    }

    fn local_address(&mut self) -> Option<Vec<u8>> {
        attribute(vec!["destination", "address"])
    }

    fn upstream_address(&mut self) -> Option<Vec<u8>> {
        attribute(vec!["upstream", "address"])
    }

    /// The stream's filter state (`wasm.{mark}`), which an upstream filter of the
    /// same stream reads too.
    fn mark_stream(&mut self, mark: &str) {
        // A mark that cannot be written is a mark not found: the upstream pass refuses.
        let _ = hostcalls::set_property(vec![mark], Some(b"1"));
    }

    fn set_envoy_filter_state(&mut self, key: &str, value: &str) -> bool {
        set_envoy_filter_state(key, value)
    }

    /// Filter state `wasm.{key}` (what `%FILTER_STATE(wasm.{key}:PLAIN)%` reads).
    fn set_stream_state(&mut self, key: &str, value: &str) -> bool {
        hostcalls::set_property(vec![key], Some(value.as_bytes())).is_ok()
    }

    fn stream_marked(&mut self, mark: &str) -> bool {
        attribute(vec![mark]).is_some()
    }

    fn property(&mut self, path: &[String]) -> Option<Vec<u8>> {
        attribute(path.iter().map(String::as_str).collect())
    }

    /// Kept in the VM; the root context's tick sends the counts to Envoy.
    fn count(&mut self, name: &str, by: u64) {
        self.shared.metrics.add(name, by);
    }

    fn first_time(&mut self, warning: Warning) -> bool {
        self.shared.warn_once(warning)
    }

    fn warn(&mut self, message: fmt::Arguments<'_>) {
        log::warn!("{message}");
    }

    fn info(&mut self, message: fmt::Arguments<'_>) {
        log::info!("{message}");
    }

    /// `log` drops it unformatted unless Envoy's `wasm` log level lets it through
    /// (see [`follow_host_log_level`]).
    fn debug(&mut self, message: fmt::Arguments<'_>) {
        log::debug!("{message}");
    }

    fn remember_nonce(&mut self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, String> {
        SharedNonces { memory: self.shared.replay.as_ref(), fullest: &self.shared.replay_fullest }.remember(nonce, signed_at, now)
    }

    fn now(&mut self) -> std::time::SystemTime {
        now()
    }

    fn random_nonce(&mut self) -> Option<Nonce> {
        random_nonce()
    }
}

/// The root context's view of the host, for the spawn role's activity reports.
pub struct WasmReportHost<'a> {
    metrics: &'a Metrics,
}

impl<'a> WasmReportHost<'a> {
    pub fn new(metrics: &'a Metrics) -> Self {
        WasmReportHost { metrics }
    }
}

impl ReportHost for WasmReportHost<'_> {
    fn http_callout(&mut self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u64, String> {
        http_callout(cluster, headers, timeout)
    }

    fn count(&mut self, name: &str, by: u64) {
        self.metrics.add(name, by);
    }

    fn warn(&mut self, message: fmt::Arguments<'_>) {
        log::warn!("{message}");
    }

    fn info(&mut self, message: fmt::Arguments<'_>) {
        log::info!("{message}");
    }

    fn debug(&mut self, message: fmt::Arguments<'_>) {
        log::debug!("{message}");
    }

    fn now(&mut self) -> std::time::SystemTime {
        now()
    }
}

/// The answer to a call, read from the host while its callback runs.
pub struct WasmCallAnswer {
    /// The body's size, as the callback gives it.
    pub body_size: usize,
}

impl CalloutAnswer for WasmCallAnswer {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name).ok().flatten()
    }

    /// Its first 1024 bytes at most: all a reader uses.
    fn body(&self) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, self.body_size.min(1024)).ok().flatten().unwrap_or_default()
    }
}

/// Sends a request to `cluster` (no body); the token comes back in the context's
/// `on_http_call_response`.
fn http_callout(cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u64, String> {
    hostcalls::dispatch_http_call(cluster, headers.to_vec(), None, vec![], timeout).map(u64::from).map_err(|status| format!("{status:?}"))
}

/// Logs at debug level only when Envoy's `wasm` log level lets it through, so that
/// no message is formatted for nothing on every request.
pub fn follow_host_log_level() {
    use proxy_wasm::types::LogLevel;
    let level = match hostcalls::get_log_level() {
        Ok(LogLevel::Trace) => log::LevelFilter::Trace,
        Ok(LogLevel::Debug) => log::LevelFilter::Debug,
        Ok(LogLevel::Info) => log::LevelFilter::Info,
        Ok(LogLevel::Warn) => log::LevelFilter::Warn,
        Ok(LogLevel::Error) => log::LevelFilter::Error,
        Ok(LogLevel::Critical) | Err(_) => log::LevelFilter::Error,
    };
    log::set_max_level(level);
}

/// Sends a short plain-text reply instead of forwarding the request.
pub fn send_reply(reply: &LocalReply) {
    let body = reply.body();
    let _ = hostcalls::send_http_response(reply.status as u32, reply.response_headers(), Some(body.as_bytes()));
}

/// Fresh random bytes from the host (WASI `random_get`).
pub fn random_nonce() -> Option<[u8; 16]> {
    let mut nonce = [0u8; 16];
    getrandom::getrandom(&mut nonce).ok()?;
    Some(nonce)
}

pub fn now() -> std::time::SystemTime {
    hostcalls::get_current_time().unwrap_or(std::time::UNIX_EPOCH)
}
