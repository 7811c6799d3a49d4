//! What a role's driver ([`crate::driver`]) asks of the loader it runs in: the
//! request's headers, the connection, Envoy's attributes, header edits, local
//! replies, callouts, counters, logs, the nonce memory, time and randomness. The
//! Wasm filter and the native module each implement it over their own host calls;
//! the drivers are written once against it, and tested against `testing::FakeHost`.
//! [`ReportHost`] is the smaller set a configuration's own context offers, outside
//! any request (the spawn role's activity reports go from there).
//!
//! Reads are shaped so that each loader can serve them the cheap way: the whole
//! request head in one read (the Wasm filter's one host call), or one header by
//! name (the native module reads it in place). Methods take `&mut self` so that a
//! test double can record what it is asked.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime};

use crate::replay::Verdict;
use crate::request::{LocalReply, RequestHead};
use crate::signature::Nonce;

/// Which of the stream's header maps a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMap {
    Request,
    Response,
}

pub trait Host {
    /// Every request header, read once, as bytes (names lowercase; values may not be UTF-8).
    fn request_head(&mut self) -> RequestHead;

    /// The first value of one header, or `None`.
    fn header(&mut self, map: HeaderMap, name: &str) -> Option<Vec<u8>>;

    /// Every value of a header that may repeat, in order, appended to `found` as (name, value).
    fn header_values(&mut self, map: HeaderMap, name: &str, found: &mut Vec<(String, Vec<u8>)>);

    /// The first value of each header of `names`, but every value of the one named
    /// `repeated`, appended to `found` as (name, value), grouped in the order of `names`.
    /// By default one read per name; a loader that can scan the map in place does it
    /// in one.
    fn headers_named(&mut self, map: HeaderMap, names: &[&str], repeated: &str, found: &mut Vec<(String, Vec<u8>)>) {
        for name in names {
            if *name == repeated {
                self.header_values(map, name, found);
            } else if let Some(value) = self.header(map, name) {
                found.push(((*name).to_string(), value));
            }
        }
    }

    /// Replaces every value of `name` (adds it when absent).
    fn set_header(&mut self, map: HeaderMap, name: &str, value: &[u8]);

    /// Adds one more value of `name`.
    fn add_header(&mut self, map: HeaderMap, name: &str, value: &[u8]);

    /// Removes every value of `name`.
    fn remove_header(&mut self, map: HeaderMap, name: &str);

    /// Answers in the request's place; the request goes no further.
    fn send_reply(&mut self, reply: &LocalReply);

    /// Answers in the request's place with a 200 document (not a refusal: no
    /// `x-wsgiproxy-error`), such as the `app` role's key directory.
    fn send_document(&mut self, headers: &[(&str, &str)], body: &[u8]);

    /// Sends a request to `cluster` on the stream's behalf; its answer comes to the
    /// loader's callout hook with the id returned. `Err` says why the host did not send it.
    fn http_callout(&mut self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u64, String>;

    /// Lets a request held in its request-headers hook go on (its body and trailers with it).
    fn resume_request(&mut self);

    /// The connection's TCP peer, as Envoy writes an address (`ip:port`): never an
    /// X-Forwarded-For entry. `None` when the loader cannot know it.
    fn tcp_peer(&mut self) -> Option<Vec<u8>>;

    /// Envoy's computed client address (`source.address`): the TCP peer or an
    /// X-Forwarded-For entry, as the connection manager's settings say.
    fn envoy_client(&mut self) -> Option<Vec<u8>>;

    /// The mTLS peer certificate's first URI SAN, when there is one.
    fn peer_uri_san(&mut self) -> Option<Vec<u8>>;

    /// The mTLS peer certificate's first DNS SAN, when there is one.
    fn peer_dns_san(&mut self) -> Option<Vec<u8>>;

    /// Whether the downstream connection is TLS.
    fn connection_is_tls(&mut self) -> bool;

    /// The address the downstream connection arrived on (`destination.address`,
    /// `ip:port`).
    fn local_address(&mut self) -> Option<Vec<u8>>;

    /// The address the upstream host resolved to (`upstream.address`): known only
    /// to a filter of the cluster, after DNS.
    fn upstream_address(&mut self) -> Option<Vec<u8>>;

    /// Leaves `mark` on this stream for a later filter of it (Envoy's filter state,
    /// which no client can write, and which a cluster's upstream filters see).
    fn mark_stream(&mut self, mark: &str);

    /// Whether an earlier filter of this stream left `mark` ([`Host::mark_stream`]).
    fn stream_marked(&mut self, mark: &str) -> bool;

    /// Sets the stream's filter-state object `key`, of the type Envoy registers under
    /// that name, made from `value` (as Envoy's `set_filter_state` filter does). False
    /// when Envoy has no such type, refuses `value`, or cannot be asked.
    fn set_envoy_filter_state(&mut self, key: &str, value: &str) -> bool;

    /// Leaves `value` in the stream's filter state under the role's own `key` (Wasm:
    /// `wasm.{key}`), for Envoy's filters after this one to read (no client can write
    /// it). False when Envoy could not.
    fn set_stream_state(&mut self, key: &str, value: &str) -> bool;

    /// An Envoy attribute by its path (`["request", "protocol"]`), encoded as the
    /// proxy-wasm host gives it: numbers as 8 little-endian bytes, booleans as one byte.
    fn property(&mut self, path: &[String]) -> Option<Vec<u8>>;

    /// Adds `by` to the counter `wsgiproxy.{name}` (see [`crate::counters`]).
    fn count(&mut self, name: &str, by: u64);

    /// True the first time `warning` is asked about, for this configuration.
    fn first_time(&mut self, warning: Warning) -> bool;

    /// Logs a warning.
    fn warn(&mut self, message: fmt::Arguments<'_>);

    /// Logs at info level.
    fn info(&mut self, message: fmt::Arguments<'_>);

    /// Logs at debug level, formatting only when the host would print it.
    fn debug(&mut self, message: fmt::Arguments<'_>);

    /// Remembers a verified signature's nonce, dated `signed_at`, at `now` (seconds
    /// since the epoch), for every worker (see [`crate::replay`]). `Err`: the memory
    /// is past its bound or failing.
    fn remember_nonce(&mut self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, String>;

    fn now(&mut self) -> SystemTime;

    /// Fresh random bytes, or `None` when the host has no random source.
    fn random_nonce(&mut self) -> Option<Nonce>;
}

/// What a configuration's own context offers, outside any request: the Wasm filter's
/// root context (one per worker VM), the native module's configuration on Envoy's
/// main thread. The spawn role sends its activity reports from there.
pub trait ReportHost {
    /// Sends a request to `cluster`; its answer comes to the configuration's callout
    /// hook with the id returned. `Err` says why the host did not send it.
    fn http_callout(&mut self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u64, String>;

    /// Adds `by` to the counter `wsgiproxy.{name}`.
    fn count(&mut self, name: &str, by: u64);

    fn warn(&mut self, message: fmt::Arguments<'_>);

    fn info(&mut self, message: fmt::Arguments<'_>);

    /// Logs at debug level, formatting only when the host would print it.
    fn debug(&mut self, message: fmt::Arguments<'_>);

    fn now(&mut self) -> SystemTime;
}

/// The answer to a callout, as the loader reads it when it comes.
pub trait CalloutAnswer {
    /// The first value of one of its headers (`:status` included), or `None`.
    fn header(&self, name: &str) -> Option<Vec<u8>>;

    /// Its body (a reader needs no more than its first 1024 bytes).
    fn body(&self) -> Vec<u8>;
}

/// Conditions worth one warning per configuration, not one per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warning {
    /// A role needs the TCP peer and the host does not know it.
    PeerUnknown = 1,
    /// The Wasm filter's `peer` network filter could not record a connection's peer.
    PeerUnrecorded = 2,
    /// `trust_principals` is configured on a connection with no TLS.
    PrincipalsWithoutTls = 4,
    /// The replay memory is past [`crate::replay::WARN_PERCENT`] (logged again after it
    /// falls below and rises again: see [`Warned::rearm`]).
    ReplayMemoryFilling = 8,
    /// The `app` role's upstream filter got a request its pre-routing pass never saw.
    Unprepared = 16,
    /// The `spawn` role could not tell Envoy where to send a request.
    UpstreamUnset = 32,
}

/// The warnings already logged for a configuration. Atomic, so that the native
/// module's workers share it; in the single-threaded Wasm VM it costs a plain load
/// and store.
#[derive(Debug, Default)]
pub struct Warned(AtomicU8);

impl Warned {
    /// True the first time `warning` is asked about.
    pub fn first_time(&self, warning: Warning) -> bool {
        let bit = warning as u8;
        self.0.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    /// Forgets a warning, so that it is logged again when its condition returns.
    pub fn rearm(&self, warning: Warning) {
        self.0.fetch_and(!(warning as u8), Ordering::Relaxed);
    }
}

/// The argument of the Wasm host's `set_envoy_filter_state` foreign function: the
/// protobuf `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments`
/// (`path` = 1, `value` = 2; `span` = 3 left at its default, the filter chain: the
/// stream's own filter state, where a cluster's load balancer looks).
pub fn set_envoy_filter_state_arguments(key: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + value.len() + 8);
    for (tag, field) in [(0x0a, key), (0x12, value)] {
        out.push(tag);
        let mut len = field.len();
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(field.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_state_arguments_are_the_protobuf_envoy_parses() {
        let encoded = set_envoy_filter_state_arguments("k", "127.0.0.1:8000");
        assert_eq!(encoded, b"\x0a\x01k\x12\x0e127.0.0.1:8000");
        // A length past one varint byte.
        let long = "a".repeat(300);
        let encoded = set_envoy_filter_state_arguments(&long, "");
        assert_eq!(&encoded[..3], b"\x0a\xac\x02");
        assert_eq!(&encoded[303..], b"\x12\x00");
    }

    #[test]
    fn each_warning_is_first_once() {
        let warned = Warned::default();
        assert!(warned.first_time(Warning::PeerUnknown));
        assert!(!warned.first_time(Warning::PeerUnknown));
        assert!(warned.first_time(Warning::PrincipalsWithoutTls));
        assert!(warned.first_time(Warning::PeerUnrecorded));
        assert!(!warned.first_time(Warning::PrincipalsWithoutTls));
    }
}
