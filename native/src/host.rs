//! The native module's side of the drivers' [`Host`]: Envoy's dynamic-module ABI
//! over the binding; and of [`ReportHost`], for the configuration's activity reports.

use std::fmt;
use std::time::{Duration, SystemTime};

use wsgiproxy_protocol::driver::spawn::SpawnFlow;
use wsgiproxy_protocol::driver::Flow;
use wsgiproxy_protocol::host::{CalloutAnswer, HeaderMap, Host, ReportHost, Warning};
use wsgiproxy_protocol::replay::Verdict;
use wsgiproxy_protocol::request::{LocalReply, RawHead, RequestHead};
use wsgiproxy_protocol::signature::Nonce;
use wsgiproxy_protocol::trust::PEER_RECORD;

use crate::abi::{self, log, log_enabled, Attribute, CalloutResponse, ConfigHandle, HeadersStatus, LogLevel, Stream};
use crate::attributes::{connection_is_tls, property};
use crate::shared::Shared;

/// One hook's view of Envoy, for a driver.
pub struct NativeHost<'a> {
    stream: &'a Stream,
    shared: &'a Shared,
}

impl<'a> NativeHost<'a> {
    pub fn new(stream: &'a Stream, shared: &'a Shared) -> Self {
        NativeHost { stream, shared }
    }
}

/// What the hook returns once the driver is done.
pub fn status(flow: Flow) -> HeadersStatus {
    match flow {
        Flow::Continue => HeadersStatus::Continue,
        Flow::Replied => HeadersStatus::StopIteration,
    }
}

/// What the spawn role's request-headers hook returns. A held request stops all
/// iteration: Envoy holds its body and trailers too (under flow control), so that
/// nothing reaches the router before the sidecar answers.
pub fn spawn_status(flow: SpawnFlow) -> HeadersStatus {
    match flow {
        SpawnFlow::Continue => HeadersStatus::Continue,
        SpawnFlow::Held => HeadersStatus::StopAllIterationAndWatermark,
        SpawnFlow::Replied => HeadersStatus::StopIteration,
    }
}

fn abi_map(map: HeaderMap) -> abi::HeaderMap {
    match map {
        HeaderMap::Request => abi::HeaderMap::Request,
        HeaderMap::Response => abi::HeaderMap::Response,
    }
}

impl Host for NativeHost<'_> {
    fn request_head(&mut self) -> RequestHead {
        // One buffer for the whole head, filled from Envoy's map in place.
        self.stream.read_headers(abi::HeaderMap::Request, RawHead::with_capacity, |head, name, value| head.push(name, value)).finish()
    }

    /// Read in place by name: no copy of the rest of the map.
    fn header(&mut self, map: HeaderMap, name: &str) -> Option<Vec<u8>> {
        self.stream.header_values(abi_map(map), name).into_iter().next()
    }

    fn header_values(&mut self, map: HeaderMap, name: &str, found: &mut Vec<(String, Vec<u8>)>) {
        found.extend(self.stream.header_values(abi_map(map), name).into_iter().map(|value| (name.to_string(), value)));
    }

    /// One pass over Envoy's map, in place, copying only what is asked for (Envoy's
    /// by-name read costs about as much as reading the whole map once).
    fn headers_named(&mut self, map: HeaderMap, names: &[&str], repeated: &str, found: &mut Vec<(String, Vec<u8>)>) {
        let start = found.len();
        let mut taken = 0u64;
        self.stream.read_headers(
            abi_map(map),
            |_, _, _| (),
            |(), name, value| {
                let Some(index) = names.iter().position(|n| n.as_bytes() == name) else { return };
                let bit = 1u64 << index.min(63);
                if names[index] == repeated || taken & bit == 0 {
                    taken |= bit;
                    found.push((names[index].to_string(), value.to_vec()));
                }
            },
        );
        // Grouped in the order of `names`, each name's values in the map's order.
        found[start..].sort_by_key(|(name, _)| names.iter().position(|n| n == name));
    }

    fn set_header(&mut self, map: HeaderMap, name: &str, value: &[u8]) {
        self.stream.set_header(abi_map(map), name, value);
    }

    fn add_header(&mut self, map: HeaderMap, name: &str, value: &[u8]) {
        self.stream.add_header(abi_map(map), name, value);
    }

    fn remove_header(&mut self, map: HeaderMap, name: &str) {
        self.stream.remove_header(abi_map(map), name);
    }

    fn send_reply(&mut self, reply: &LocalReply) {
        send_reply(self.stream, reply);
    }

    fn send_document(&mut self, headers: &[(&str, &str)], body: &[u8]) {
        self.stream.send_response(200, headers, body, "wsgiproxy_document");
    }

    fn http_callout(&mut self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u64, String> {
        self.stream.http_callout(cluster, headers, timeout).map_err(str::to_string)
    }

    fn resume_request(&mut self) {
        self.stream.continue_decoding();
    }

    /// The `peer` network filter's record of the connection's remote address (after
    /// the listener filters: a PROXY header's source). Not the ABI's direct remote
    /// address, the socket's peer, which behind a PROXY-protocol balancer is the
    /// balancer. No record: `None`, and nothing is trusted by address.
    fn tcp_peer(&mut self) -> Option<Vec<u8>> {
        self.stream.filter_state(PEER_RECORD)
    }

    fn envoy_client(&mut self) -> Option<Vec<u8>> {
        self.stream.attribute_bytes(Attribute::SourceAddress)
    }

    fn peer_uri_san(&mut self) -> Option<Vec<u8>> {
        self.stream.attribute_bytes(Attribute::ConnectionUriSanPeerCertificate)
    }

    fn peer_dns_san(&mut self) -> Option<Vec<u8>> {
        self.stream.attribute_bytes(Attribute::ConnectionDnsSanPeerCertificate)
    }

    fn connection_is_tls(&mut self) -> bool {
        connection_is_tls(self.stream)
    }

    fn local_address(&mut self) -> Option<Vec<u8>> {
        self.stream.attribute_bytes(Attribute::DestinationAddress)
    }

    fn upstream_address(&mut self) -> Option<Vec<u8>> {
        self.stream.attribute_bytes(Attribute::UpstreamAddress)
    }

    /// The stream's filter state, which an upstream filter of the same stream reads too.
    fn mark_stream(&mut self, mark: &str) {
        // A mark that cannot be written is a mark not found: the upstream pass refuses.
        let _ = self.stream.set_filter_state(mark, b"1");
    }

    fn set_envoy_filter_state(&mut self, key: &str, value: &str) -> bool {
        self.stream.set_filter_state_typed(key, value)
    }

    fn set_stream_state(&mut self, key: &str, value: &str) -> bool {
        self.stream.set_filter_state(key, value.as_bytes())
    }

    fn stream_marked(&mut self, mark: &str) -> bool {
        self.stream.filter_state(mark).is_some()
    }

    fn property(&mut self, path: &[String]) -> Option<Vec<u8>> {
        property(self.stream, path)
    }

    fn count(&mut self, name: &str, by: u64) {
        self.shared.metrics.add(self.stream, name, by);
    }

    fn first_time(&mut self, warning: Warning) -> bool {
        self.shared.warn_once(warning)
    }

    fn warn(&mut self, message: fmt::Arguments<'_>) {
        log(LogLevel::Warn, &message.to_string());
    }

    fn info(&mut self, message: fmt::Arguments<'_>) {
        log(LogLevel::Info, &message.to_string());
    }

    fn debug(&mut self, message: fmt::Arguments<'_>) {
        debug(|| message.to_string());
    }

    fn remember_nonce(&mut self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, String> {
        let memory = self.shared.replay.ok_or("the replay memory is not prepared")?;
        let verdict = memory.remember(nonce, signed_at, now);
        self.shared.metrics.set_replay_percent(self.stream, memory.fullness().percent());
        verdict
    }

    fn now(&mut self) -> SystemTime {
        SystemTime::now()
    }

    fn random_nonce(&mut self) -> Option<Nonce> {
        random_nonce()
    }
}

/// The configuration's own context (Envoy's main thread), for the spawn role's
/// activity reports.
pub struct NativeReportHost<'a> {
    config: &'a ConfigHandle,
    shared: &'a Shared,
}

impl<'a> NativeReportHost<'a> {
    pub fn new(config: &'a ConfigHandle, shared: &'a Shared) -> Self {
        NativeReportHost { config, shared }
    }
}

impl ReportHost for NativeReportHost<'_> {
    fn http_callout(&mut self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u64, String> {
        self.config.http_callout(cluster, headers, timeout).map_err(str::to_string)
    }

    fn count(&mut self, name: &str, by: u64) {
        for _ in 0..by {
            self.shared.metrics.inc_config(self.config, name);
        }
    }

    fn warn(&mut self, message: fmt::Arguments<'_>) {
        log(LogLevel::Warn, &message.to_string());
    }

    fn info(&mut self, message: fmt::Arguments<'_>) {
        log(LogLevel::Info, &message.to_string());
    }

    fn debug(&mut self, message: fmt::Arguments<'_>) {
        debug(|| message.to_string());
    }

    fn now(&mut self) -> SystemTime {
        SystemTime::now()
    }
}

/// A callout's answer, as Envoy lent it to the callout-done hook (copied).
impl CalloutAnswer for CalloutResponse {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        CalloutResponse::header(self, name)
    }

    fn body(&self) -> Vec<u8> {
        self.body.clone()
    }
}

/// Logs at debug level, formatting only when Envoy would print it.
pub fn debug(message: impl FnOnce() -> String) {
    if log_enabled(LogLevel::Debug) {
        log(LogLevel::Debug, &message());
    }
}

/// Sends a short plain-text reply instead of forwarding the request.
pub fn send_reply(stream: &Stream, reply: &LocalReply) {
    stream.send_response(reply.status, &reply.response_headers(), reply.body().as_bytes(), &format!("wsgiproxy_{}", reply.reason));
}

/// Fresh random bytes from the operating system.
pub fn random_nonce() -> Option<[u8; 16]> {
    let mut nonce = [0u8; 16];
    getrandom::getrandom(&mut nonce).ok()?;
    Some(nonce)
}
