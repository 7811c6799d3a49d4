//! The `exact` role's request path: before routing, and again as the forward-proxy
//! cluster's upstream filter.

use super::{apply_request_edits, refuse, Flow};
use crate::counters::exact::*;
use crate::exact::{decide, decide_resolved, refuse_unjudged, ExactConfig};
use crate::headers::AUTHORITY;
use crate::host::{HeaderMap, Host};
use crate::request::{parse_peer_address, Decision, RequestHead};

const ROLE: &str = "exact";
/// Left by the pre-routing pass on a request it let through: the cluster's upstream
/// pass, which sees it, knows it runs after routing, where an upstream it cannot
/// judge is refused rather than judged by name again.
pub const JUDGED_MARK: &str = "wsgiproxy_exact_judged";

/// Lets the request go to the server its Host names when `allow_hosts` allows it.
pub fn on_request_headers<H: Host>(config: &ExactConfig, host: &mut H) -> Flow {
    // The role judges the Host alone: one header read, not the whole map.
    let authority = host.header(HeaderMap::Request, AUTHORITY);
    let head = RequestHead::new(authority.map(|value| (AUTHORITY.to_string(), value)).into_iter().collect());
    // As an upstream filter of the forward-proxy cluster, the address the request goes
    // to is known: check it (and refuse what is not an IP address). Before routing
    // there is none, and the Host is checked by name.
    let upstream = host.upstream_address().filter(|address| !address.is_empty());
    let resolved = upstream.is_some();
    let decision = match upstream {
        Some(address) => {
            host.count(RESOLVED_CHECKS, 1);
            match parse_peer_address(&address) {
                Some(ip) => decide_resolved(config, &head, ip),
                None => refuse_unjudged(&head, &address),
            }
        }
        // After routing (the pre-routing pass marked it) with no upstream address:
        // where it goes cannot be told, so it does not go.
        None if host.stream_marked(JUDGED_MARK) => {
            host.count(RESOLVED_CHECKS, 1);
            refuse_unjudged(&head, b"")
        }
        None => {
            host.count(REQUESTS, 1);
            decide(config, &head)
        }
    };
    match decision {
        Decision::Forward(edits) => {
            // `head` holds the Host only: every set replaces, whatever else the request has.
            apply_request_edits(host, &edits, |_| true);
            if !resolved {
                host.mark_stream(JUDGED_MARK);
                host.count(FORWARDED, 1);
            }
            Flow::Continue
        }
        Decision::Reply(reply) => refuse(host, ROLE, &reply),
    }
}
