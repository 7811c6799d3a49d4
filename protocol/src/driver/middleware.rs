//! The `middleware` role's request path.

use std::time::UNIX_EPOCH;

use super::{apply_request_edits, downstream, refuse, Flow};
use crate::config::MiddlewareConfig;
use crate::counters::middleware::*;
use crate::host::{HeaderMap, Host, Warning};
use crate::key_directory::{signature_key_id, Followed};
use crate::middleware::{decide_following, MiddlewareOutcome, MiddlewareRequest, NonceMemory};
use crate::replay::Verdict;
use crate::request::Decision;
use crate::rfc9421::SIGNATURE_INPUT;
use crate::signature::Nonce;
use crate::trust::PEER_UNKNOWN_DETAIL;

const ROLE: &str = "middleware";

/// Decides whether to believe the request's protocol headers, turns them into the
/// headers the backend reads, or refuses the request.
pub fn on_request_headers<H: Host>(config: &MiddlewareConfig, host: &mut H) -> Flow {
    on_request_headers_following(config, host, None)
}

/// The key id of the request's signature when it is one that neither the
/// configuration's keys nor `followed` (its key directories' keys) hold: the loader
/// then asks its directories for a refetch and holds the request until it is answered
/// (see [`crate::key_directory::Follower::unknown_key`]). `None` when there is nothing
/// to wait for. One header read.
pub fn unknown_key_id<H: Host>(config: &MiddlewareConfig, host: &mut H, followed: &Followed) -> Option<String> {
    let own = config.verify.as_ref()?;
    let mut lines = Vec::new();
    host.header_values(HeaderMap::Request, SIGNATURE_INPUT, &mut lines);
    let lines: Vec<Vec<u8>> = lines.into_iter().map(|(_, v)| v).collect();
    let id = signature_key_id(&lines)?;
    (own.ring().key(&id).is_none() && followed.key(&id).is_none()).then_some(id)
}

/// [`on_request_headers`] for a receiver that follows key directories: `followed`
/// holds their keys as they are now.
pub fn on_request_headers_following<H: Host>(config: &MiddlewareConfig, host: &mut H, followed: Option<&Followed>) -> Flow {
    host.count(REQUESTS, 1);
    let head = host.request_head();
    let request = MiddlewareRequest {
        head: &head,
        downstream: downstream(host, config.needs()),
        https: host.connection_is_tls(),
        // Only when verifying needs the time (a host call in the Wasm filter).
        now: if config.verify.is_some() { host.now() } else { UNIX_EPOCH },
        local_address: match &config.bind_endpoint {
            Some(binding) if binding.own_addresses.is_empty() => {
                host.local_address().and_then(|a| std::str::from_utf8(&a).ok()?.parse().ok())
            }
            _ => None,
        },
    };
    let mut outcome = MiddlewareOutcome::default();
    let decision = decide_following(config, &request, &mut HostNonces(host), &mut outcome, followed);
    host.count(if outcome.trusted { TRUSTED } else { UNTRUSTED }, 1);
    if outcome.verified {
        host.count(VERIFIED, 1);
    }
    host.count(STRIPPED_HEADERS, outcome.stripped as u64);
    host.count(DROPPED_KEYS, outcome.dropped_keys as u64);
    if outcome.unsigned {
        host.count(SIGNATURE_MISSING, 1);
    }
    if outcome.peer_unknown {
        host.count(PEER_UNKNOWN, 1);
        if host.first_time(Warning::PeerUnknown) {
            host.warn(format_args!(
                "wsgiproxy middleware: trust_ips is configured but the TCP peer is unknown, so no request is trusted by address: {PEER_UNKNOWN_DETAIL}"
            ));
        }
    }
    if config.trust_principals.is_some() && !request.https && host.first_time(Warning::PrincipalsWithoutTls) {
        host.warn(format_args!(
            "wsgiproxy middleware: trust_principals is configured but this connection has no TLS: principals match only mTLS peers, so nothing on this listener is trusted by identity"
        ));
    }
    match decision {
        Decision::Forward(edits) => {
            apply_request_edits(host, &edits, |name| head.contains(name));
            host.debug(format_args!(
                "wsgiproxy middleware: forwarded (trusted {}, verified {}, stripped {}, dropped keys {})",
                outcome.trusted, outcome.verified, outcome.stripped, outcome.dropped_keys
            ));
            Flow::Continue
        }
        Decision::Reply(reply) => refuse(host, ROLE, &reply),
    }
}

/// The host's nonce memory, as the protocol's `decide` asks for it.
struct HostNonces<'h, H>(&'h mut H);

impl<H: Host> NonceMemory for HostNonces<'_, H> {
    fn remember(&mut self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, String> {
        self.0.remember_nonce(nonce, signed_at, now)
    }
}
