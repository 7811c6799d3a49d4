//! A test double of [`Host`] (and of [`ReportHost`]): a request and a response held
//! in memory and edited in place, with every read, callout, count, log line and
//! reply recorded, so that the drivers are tested natively and fast. Also a callout's
//! answer ([`FakeAnswer`]) and the spawn role's lease holder ([`FakeLease`]). Built
//! for this crate's tests, and for other crates' with the `testing` feature.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::counters;
use crate::driver::spawn::LeaseHolder;
use crate::host::{CalloutAnswer, HeaderMap, Host, ReportHost, Warned, Warning};
use crate::replay::Verdict;
use crate::request::{LocalReply, RequestHead};
use crate::signature::Nonce;
use crate::spawn::{CallHealth, LeaseState};

/// A callout the driver asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub cluster: String,
    /// In the order given (pseudo-headers first).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

impl Callout {
    /// A header's value, or `None`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub struct FakeHost {
    /// The request's headers, in order (names lowercase).
    pub request: Vec<(String, Vec<u8>)>,
    pub response: Vec<(String, Vec<u8>)>,
    /// The connection's facts, as Envoy writes them (`ip:port`, SANs).
    pub tcp_peer: Option<String>,
    pub envoy_client: Option<String>,
    pub uri_san: Option<String>,
    pub dns_san: Option<String>,
    pub tls: bool,
    pub upstream_address: Option<String>,
    pub local_address: Option<String>,
    /// Attributes by path, as the Wasm host encodes them.
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
    /// The marks earlier filters of the stream left ([`Host::mark_stream`]).
    pub marks: Vec<String>,
    /// The filter-state objects set ([`Host::set_envoy_filter_state`]), in order.
    pub filter_state: Vec<(String, String)>,
    /// Whether Envoy takes them.
    pub filter_state_refused: bool,
    /// The values left with [`Host::set_stream_state`], in order.
    pub stream_state: Vec<(String, String)>,
    /// Whether Envoy takes those.
    pub stream_state_refused: bool,
    pub now: SystemTime,
    /// What the random source gives; `None`: it has none.
    pub random: Option<Nonce>,
    /// The nonces remembered; `Err`: the memory fails with this message.
    pub nonces: Result<HashSet<Nonce>, String>,
    /// Set: the host refuses every callout, saying this.
    pub callout_refusal: Option<String>,

    /// What the driver asked of the host, in order (`request_head`, `header :authority`, `now`...).
    pub reads: Vec<String>,
    /// Every counter counted, even by 0, with its total.
    pub counts: BTreeMap<String, u64>,
    pub replies: Vec<LocalReply>,
    /// The documents sent in a request's place (`Host::send_document`), as replies.
    pub documents: Vec<LocalReply>,
    /// The callouts sent, in order: the first has id 1.
    pub callouts: Vec<Callout>,
    /// How many times a held request was let go on.
    pub resumed: usize,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
    pub debug_lines: Vec<String>,
    warned: Warned,
}

impl Default for FakeHost {
    /// A plain-text connection from 203.0.113.7, at a fixed time, with randomness
    /// and a working nonce memory.
    fn default() -> Self {
        FakeHost {
            request: Vec::new(),
            response: Vec::new(),
            tcp_peer: Some("203.0.113.7:5555".into()),
            envoy_client: None,
            uri_san: None,
            dns_san: None,
            tls: false,
            upstream_address: None,
            local_address: None,
            properties: Vec::new(),
            marks: Vec::new(),
            filter_state: Vec::new(),
            filter_state_refused: false,
            stream_state: Vec::new(),
            stream_state_refused: false,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_485_600),
            random: Some([5; 16]),
            nonces: Ok(HashSet::new()),
            callout_refusal: None,
            reads: Vec::new(),
            counts: BTreeMap::new(),
            replies: Vec::new(),
            documents: Vec::new(),
            callouts: Vec::new(),
            resumed: 0,
            warnings: Vec::new(),
            infos: Vec::new(),
            debug_lines: Vec::new(),
            warned: Warned::default(),
        }
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs.iter().map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())).collect()
}

impl FakeHost {
    /// A host whose request has these headers.
    pub fn with_request(pairs: &[(&str, &str)]) -> Self {
        FakeHost { request: owned(pairs), ..FakeHost::default() }
    }

    /// The same host (its warnings, nonces and counts), with a new request and
    /// response: the next stream of the same configuration.
    pub fn next_request(&mut self, pairs: &[(&str, &str)]) {
        self.request = owned(pairs);
        self.response.clear();
        self.reads.clear();
    }

    pub fn set_response(&mut self, pairs: &[(&str, &str)]) {
        self.response = owned(pairs);
    }

    fn map(&self, map: HeaderMap) -> &Vec<(String, Vec<u8>)> {
        match map {
            HeaderMap::Request => &self.request,
            HeaderMap::Response => &self.response,
        }
    }

    fn map_mut(&mut self, map: HeaderMap) -> &mut Vec<(String, Vec<u8>)> {
        match map {
            HeaderMap::Request => &mut self.request,
            HeaderMap::Response => &mut self.response,
        }
    }

    /// Every value of a header, as text.
    pub fn values(&self, map: HeaderMap, name: &str) -> Vec<String> {
        self.map(map).iter().filter(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect()
    }

    /// The request header's one value, as text; `None` when absent.
    pub fn request_value(&self, name: &str) -> Option<String> {
        self.values(HeaderMap::Request, name).into_iter().next()
    }

    /// A counter's total (0 when never counted).
    pub fn count_of(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or_default()
    }

    /// Counters counted that `role` does not declare: a loader that defines only
    /// declared counters (the native module) would lose them.
    pub fn undeclared_counts(&self, role: &str) -> Vec<String> {
        let declared = counters::declared(role);
        self.counts.keys().filter(|name| !declared.contains(name)).cloned().collect()
    }

    fn read(&mut self, what: impl Into<String>) {
        self.reads.push(what.into());
    }

    fn callout(&mut self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u64, String> {
        if let Some(refusal) = &self.callout_refusal {
            return Err(refusal.clone());
        }
        let headers = headers.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        self.callouts.push(Callout { cluster: cluster.to_string(), headers, timeout });
        Ok(self.callouts.len() as u64)
    }

    fn add_count(&mut self, name: &str, by: u64) {
        *self.counts.entry(name.to_string()).or_default() += by;
    }

    fn clock(&mut self) -> SystemTime {
        self.read("now");
        self.now
    }
}

impl Host for FakeHost {
    fn request_head(&mut self) -> RequestHead {
        self.read("request_head");
        RequestHead::new(self.request.clone())
    }

    fn header(&mut self, map: HeaderMap, name: &str) -> Option<Vec<u8>> {
        self.read(format!("header {name}"));
        self.map(map).iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    fn header_values(&mut self, map: HeaderMap, name: &str, found: &mut Vec<(String, Vec<u8>)>) {
        self.read(format!("header_values {name}"));
        found.extend(self.map(map).iter().filter(|(n, _)| n == name).cloned());
    }

    fn set_header(&mut self, map: HeaderMap, name: &str, value: &[u8]) {
        let headers = self.map_mut(map);
        headers.retain(|(n, _)| n != name);
        headers.push((name.to_string(), value.to_vec()));
    }

    fn add_header(&mut self, map: HeaderMap, name: &str, value: &[u8]) {
        self.map_mut(map).push((name.to_string(), value.to_vec()));
    }

    fn remove_header(&mut self, map: HeaderMap, name: &str) {
        self.map_mut(map).retain(|(n, _)| n != name);
    }

    fn send_reply(&mut self, reply: &LocalReply) {
        self.replies.push(reply.clone());
    }

    fn send_document(&mut self, headers: &[(&str, &str)], body: &[u8]) {
        let mut reply = LocalReply::new(200, crate::reason::Reason::NoPath, String::from_utf8_lossy(body));
        reply.headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.documents.push(reply);
    }

    fn http_callout(&mut self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u64, String> {
        self.callout(cluster, headers, timeout)
    }

    fn resume_request(&mut self) {
        self.resumed += 1;
    }

    fn tcp_peer(&mut self) -> Option<Vec<u8>> {
        self.read("tcp_peer");
        self.tcp_peer.clone().map(String::into_bytes)
    }

    fn envoy_client(&mut self) -> Option<Vec<u8>> {
        self.read("envoy_client");
        self.envoy_client.clone().map(String::into_bytes)
    }

    fn peer_uri_san(&mut self) -> Option<Vec<u8>> {
        self.read("peer_uri_san");
        self.uri_san.clone().map(String::into_bytes)
    }

    fn peer_dns_san(&mut self) -> Option<Vec<u8>> {
        self.read("peer_dns_san");
        self.dns_san.clone().map(String::into_bytes)
    }

    fn connection_is_tls(&mut self) -> bool {
        self.read("connection_is_tls");
        self.tls
    }

    fn local_address(&mut self) -> Option<Vec<u8>> {
        self.read("local_address");
        self.local_address.clone().map(String::into_bytes)
    }

    fn upstream_address(&mut self) -> Option<Vec<u8>> {
        self.read("upstream_address");
        self.upstream_address.clone().map(String::into_bytes)
    }

    fn mark_stream(&mut self, mark: &str) {
        self.marks.push(mark.to_string());
    }

    fn set_envoy_filter_state(&mut self, key: &str, value: &str) -> bool {
        if self.filter_state_refused {
            return false;
        }
        self.filter_state.push((key.to_string(), value.to_string()));
        true
    }

    fn set_stream_state(&mut self, key: &str, value: &str) -> bool {
        if self.stream_state_refused {
            return false;
        }
        self.stream_state.push((key.to_string(), value.to_string()));
        true
    }

    fn stream_marked(&mut self, mark: &str) -> bool {
        self.read(format!("mark {mark}"));
        self.marks.iter().any(|m| m == mark)
    }

    fn property(&mut self, path: &[String]) -> Option<Vec<u8>> {
        self.read(format!("property {}", path.join(".")));
        self.properties.iter().find(|(p, _)| p == path).map(|(_, v)| v.clone())
    }

    fn count(&mut self, name: &str, by: u64) {
        self.add_count(name, by);
    }

    fn first_time(&mut self, warning: Warning) -> bool {
        self.warned.first_time(warning)
    }

    fn warn(&mut self, message: fmt::Arguments<'_>) {
        self.warnings.push(message.to_string());
    }

    fn info(&mut self, message: fmt::Arguments<'_>) {
        self.infos.push(message.to_string());
    }

    fn debug(&mut self, message: fmt::Arguments<'_>) {
        self.debug_lines.push(message.to_string());
    }

    fn remember_nonce(&mut self, nonce: &Nonce, _signed_at: u64, _now: u64) -> Result<Verdict, String> {
        match &mut self.nonces {
            Ok(seen) => Ok(if seen.insert(*nonce) { Verdict::Fresh } else { Verdict::Replayed }),
            Err(failure) => Err(failure.clone()),
        }
    }

    fn now(&mut self) -> SystemTime {
        self.clock()
    }

    fn random_nonce(&mut self) -> Option<Nonce> {
        self.read("random_nonce");
        self.random
    }
}

/// The configuration's own context, recorded alike: its callouts, counts and logs
/// land in the same lists as a stream's.
impl ReportHost for FakeHost {
    fn http_callout(&mut self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u64, String> {
        self.callout(cluster, headers, timeout)
    }

    fn count(&mut self, name: &str, by: u64) {
        self.add_count(name, by);
    }

    fn warn(&mut self, message: fmt::Arguments<'_>) {
        self.warnings.push(message.to_string());
    }

    fn info(&mut self, message: fmt::Arguments<'_>) {
        self.infos.push(message.to_string());
    }

    fn debug(&mut self, message: fmt::Arguments<'_>) {
        self.debug_lines.push(message.to_string());
    }

    fn now(&mut self) -> SystemTime {
        self.clock()
    }
}

/// A callout's answer: its headers (`:status` included) and body.
#[derive(Debug, Clone, Default)]
pub struct FakeAnswer {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl FakeAnswer {
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        FakeAnswer { headers: owned(pairs), body: Vec::new() }
    }

    pub fn with_body(self, body: &str) -> Self {
        FakeAnswer { body: body.as_bytes().to_vec(), ..self }
    }
}

impl CalloutAnswer for FakeAnswer {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    fn body(&self) -> Vec<u8> {
        self.body.clone()
    }
}

/// The spawn role's lease holder, as the Wasm filter keeps it (one per worker VM).
pub struct FakeLease {
    pub lease: RefCell<LeaseState>,
    pub health: RefCell<CallHealth>,
    pub reporter: String,
}

impl FakeLease {
    /// No lease yet, with reports sent from a timer of period `tick`.
    pub fn new(tick: Duration) -> Self {
        FakeLease { lease: RefCell::new(LeaseState::new(tick)), health: RefCell::default(), reporter: "r1".into() }
    }
}

impl LeaseHolder for FakeLease {
    fn with_lease<R>(&self, f: impl FnOnce(&mut LeaseState) -> R) -> R {
        f(&mut self.lease.borrow_mut())
    }

    fn with_health<R>(&self, f: impl FnOnce(&mut CallHealth) -> R) -> R {
        f(&mut self.health.borrow_mut())
    }

    fn reporter(&self) -> &str {
        &self.reporter
    }
}
