//! Each role's request path, written once against [`Host`]: read what the role
//! needs, ask the protocol's `decide`, apply its edits or send its reply, count,
//! and warn once. The loaders implement only [`Host`] and call these from their hooks
//! (and, for the `spawn` role, keep its lease and send its reports: [`spawn`]).
//!
//! The drivers are generic over the host, so each loader gets its own copy
//! compiled against its host calls, with no dynamic dispatch per request.

pub mod app;
pub mod exact;
pub mod key_directory;
pub mod middleware;
pub mod spawn;

use crate::counters;
use crate::host::{HeaderMap, Host};
use crate::request::{parse_peer_address, Edits, LocalReply};
use crate::trust::{Downstream, Needs};

/// What the loader's hook does next.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The request goes on (edited or not).
    Continue,
    /// The driver answered it: the loader stops it here.
    Replied,
}

/// What the role needs to know about the downstream connection: one host read per
/// value it uses.
fn downstream<H: Host>(host: &mut H, needs: Needs) -> Downstream {
    let address = |raw: Option<Vec<u8>>| parse_peer_address(&raw?);
    let text = |raw: Option<Vec<u8>>| raw.filter(|v| !v.is_empty()).and_then(|v| String::from_utf8(v).ok());
    Downstream {
        tcp_peer: if needs.tcp_peer { address(host.tcp_peer()) } else { None },
        envoy_client: if needs.envoy_client { address(host.envoy_client()) } else { None },
        uri_san: if needs.principals { text(host.peer_uri_san()) } else { None },
        dns_san: if needs.principals { text(host.peer_dns_san()) } else { None },
    }
}

/// Applies header edits to the request: removals, then sets (a set replaces every
/// value of a name). A header the request does not have (`present` says) is added,
/// which spares Envoy the search-and-remove of a replace.
fn apply_request_edits<H: Host>(host: &mut H, edits: &Edits<'_>, present: impl Fn(&str) -> bool) {
    for name in &edits.remove {
        host.remove_header(HeaderMap::Request, name);
    }
    for (name, value) in &edits.set {
        if present(name) {
            host.set_header(HeaderMap::Request, name, value);
        } else {
            host.add_header(HeaderMap::Request, name, value);
        }
    }
}

/// Answers in the request's place: counts the reason, says why at debug level, and
/// sends the reply.
fn refuse<H: Host>(host: &mut H, role: &str, reply: &LocalReply) -> Flow {
    host.count(&counters::refused(role, reply.reason), 1);
    host.debug(format_args!("wsgiproxy {role}: replied {} ({}): {}", reply.status, reply.reason, reply.detail));
    host.send_reply(reply);
    Flow::Replied
}

#[cfg(test)]
mod tests;
