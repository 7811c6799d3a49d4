//! Who is on the other end of the downstream connection, and the rules that trust
//! it: the TCP peer's address (never an X-Forwarded-For entry) and the mTLS peer
//! certificate's identity.
//!
//! Envoy's `source.address` attribute is the stream's *downstream remote address*:
//! the HTTP connection manager replaces it with an X-Forwarded-For entry under its
//! defaults (`use_remote_address: false`) or with `xff_num_trusted_hops` above 0,
//! before any HTTP filter runs. So the TCP peer comes from a record the filter
//! itself writes as a network filter (the `peer` role), where the connection's own
//! address is still the socket's; without that record it is unknown, and nothing
//! is trusted by address.

use std::net::IpAddr;

/// The name under which the `peer` network filter records the TCP peer in the
/// connection's filter state (the Wasm filter's is stored as `wasm.wsgiproxy_peer`,
/// the native module's as `wsgiproxy_peer`). Only a filter the operator installed
/// can write it; a client cannot.
pub const PEER_RECORD: &str = "wsgiproxy_peer";

/// What the `peer` network filter records for a connection whose remote address (as
/// the listener filters left it: a PROXY header's source, for one) is `address`
/// (`ip:port`, `[ip6]:port` or a bare IP, as Envoy writes it) and `port`: the
/// canonical `ip:port`, which the HTTP roles parse back. `None` when it is not an IP
/// address (an internal listener's `envoy://…`, a Unix socket's path): then nothing
/// is recorded, and nothing is trusted by address.
pub fn peer_record(address: &[u8], port: Option<u16>) -> Option<String> {
    let ip = crate::request::parse_peer_address(address)?;
    let port = port.or_else(|| std::str::from_utf8(address).ok()?.parse::<std::net::SocketAddr>().ok().map(|s| s.port())).unwrap_or(0);
    Some(std::net::SocketAddr::new(ip, port).to_string())
}

/// The detail given (with [`crate::reason::Reason::PeerUnknown`]) when a role needs
/// the TCP peer and no network filter recorded it.
pub const PEER_UNKNOWN_DETAIL: &str = "the TCP peer of this connection is unknown: load the filter as a network filter \
     with {\"role\": \"peer\"} before the HTTP connection manager, or set \"client_address\": \"envoy\"";

/// What the host knows about the downstream connection, read only as the
/// configuration needs it (see [`Needs`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Downstream {
    /// The TCP peer, from the network filter's record; `None` when not recorded.
    pub tcp_peer: Option<IpAddr>,
    /// Envoy's computed client address (`source.address`): the TCP peer or an
    /// X-Forwarded-For entry, as the connection manager's settings say.
    pub envoy_client: Option<IpAddr>,
    /// The peer certificate's first URI SAN (a SPIFFE ID in a mesh), when mTLS.
    pub uri_san: Option<String>,
    /// The peer certificate's first DNS SAN, when mTLS.
    pub dns_san: Option<String>,
}

/// Which of [`Downstream`]'s values a configuration uses (each is a host call).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub tcp_peer: bool,
    pub envoy_client: bool,
    pub principals: bool,
}

/// Which address is the client's, for X-Forwarded-For.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddress {
    /// The TCP peer (the network filter's record): what the client cannot choose.
    #[default]
    Peer,
    /// Envoy's computed client address, under the operator's `use_remote_address`
    /// and `xff_num_trusted_hops` (an X-Forwarded-For entry when those say so).
    Envoy,
}

impl ClientAddress {
    pub fn parse(value: &str) -> Option<ClientAddress> {
        match value {
            "peer" => Some(ClientAddress::Peer),
            "envoy" => Some(ClientAddress::Envoy),
            _ => None,
        }
    }

    pub fn pick(self, downstream: &Downstream) -> Option<IpAddr> {
        match self {
            ClientAddress::Peer => downstream.tcp_peer,
            ClientAddress::Envoy => downstream.envoy_client,
        }
    }

    pub fn needs(self) -> Needs {
        Needs { tcp_peer: self == ClientAddress::Peer, envoy_client: self == ClientAddress::Envoy, principals: false }
    }
}

impl Needs {
    pub fn union(self, other: Needs) -> Needs {
        Needs {
            tcp_peer: self.tcp_peer || other.tcp_peer,
            envoy_client: self.envoy_client || other.envoy_client,
            principals: self.principals || other.principals,
        }
    }
}

/// A `trust_principals` entry: a URI SAN (`spiffe://td/ns/edge/sa/gateway`) or a DNS
/// SAN (`gateway.edge.svc`), exact, or with `*` standing for one whole last path
/// segment (`spiffe://td/ns/edge/sa/*`) or one whole first DNS label (`*.edge.svc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Uri(Pattern),
    Dns(Pattern),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    /// Everything before the `*`; the `*` matches one non-empty segment or label.
    Wildcard(String),
}

impl Principal {
    pub fn parse(text: &str) -> Result<Principal, String> {
        if text.is_empty() || text.len() > 2048 || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("{text:?} must be a URI or DNS name in printable ASCII, without spaces"));
        }
        let stars = text.matches('*').count();
        if let Some(scheme_end) = text.find("://") {
            if scheme_end == 0 || !text[..scheme_end].bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
                return Err(format!("{text:?} is not a URI"));
            }
            let pattern = match text.strip_suffix("/*") {
                Some(prefix) if stars == 1 && prefix.len() > scheme_end + 3 => Pattern::Wildcard(format!("{prefix}/")),
                _ if stars == 0 => Pattern::Exact(text.to_string()),
                _ => return Err(format!("{text:?}: a URI may hold one `*`, as its whole last path segment (spiffe://td/ns/NS/sa/*)")),
            };
            Ok(Principal::Uri(pattern))
        } else {
            let name = text.to_ascii_lowercase();
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.*".contains(&b)) {
                return Err(format!("{text:?} is not a DNS name (a URI needs its scheme, such as spiffe://)"));
            }
            let pattern = match name.strip_prefix("*.") {
                Some(rest) if stars == 1 && rest.contains('.') => Pattern::Wildcard(format!(".{rest}")),
                _ if stars == 0 => Pattern::Exact(name),
                _ => return Err(format!("{text:?}: a DNS name may hold one `*`, as its whole first label of at least three (*.ns.svc)")),
            };
            Ok(Principal::Dns(pattern))
        }
    }

    /// Whether the connection's peer certificate is this principal.
    pub fn matches(&self, downstream: &Downstream) -> bool {
        match self {
            Principal::Uri(p) => downstream.uri_san.as_deref().is_some_and(|san| p.matches(san, '/')),
            Principal::Dns(p) => downstream.dns_san.as_deref().is_some_and(|san| p.matches(&san.to_ascii_lowercase(), '.')),
        }
    }
}

impl Pattern {
    fn matches(&self, value: &str, separator: char) -> bool {
        match self {
            Pattern::Exact(exact) => value == exact,
            Pattern::Wildcard(fixed) if separator == '/' => {
                value.strip_prefix(fixed.as_str()).is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#']))
            }
            Pattern::Wildcard(fixed) => value.strip_suffix(fixed.as_str()).is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_uri(san: &str) -> Downstream {
        Downstream { uri_san: Some(san.into()), ..Default::default() }
    }

    fn with_dns(san: &str) -> Downstream {
        Downstream { dns_san: Some(san.into()), ..Default::default() }
    }

    #[test]
    fn spiffe_patterns() {
        let exact = Principal::parse("spiffe://cluster.local/ns/edge/sa/gateway").unwrap();
        assert!(exact.matches(&with_uri("spiffe://cluster.local/ns/edge/sa/gateway")));
        assert!(!exact.matches(&with_uri("spiffe://cluster.local/ns/edge/sa/gateway2")));
        assert!(!exact.matches(&with_dns("spiffe://cluster.local/ns/edge/sa/gateway")));
        assert!(!exact.matches(&Downstream::default()));

        let any_sa = Principal::parse("spiffe://cluster.local/ns/edge/sa/*").unwrap();
        assert!(any_sa.matches(&with_uri("spiffe://cluster.local/ns/edge/sa/gateway")));
        assert!(!any_sa.matches(&with_uri("spiffe://cluster.local/ns/edge/sa/")));
        assert!(!any_sa.matches(&with_uri("spiffe://cluster.local/ns/edge/sa/a/b")));
        assert!(!any_sa.matches(&with_uri("spiffe://cluster.local/ns/edge/sa/a?x")));
        assert!(!any_sa.matches(&with_uri("spiffe://cluster.local/ns/other/sa/gateway")));
        assert!(!any_sa.matches(&with_uri("spiffe://cluster.local/ns/edge/sax/gateway")));
        assert!(!any_sa.matches(&with_uri("spiffe://evil/cluster.local/ns/edge/sa/gateway")));
    }

    #[test]
    fn dns_patterns() {
        let exact = Principal::parse("Gateway.Edge.svc").unwrap();
        assert!(exact.matches(&with_dns("gateway.edge.svc")));
        assert!(exact.matches(&with_dns("GATEWAY.edge.svc")));
        assert!(!exact.matches(&with_uri("gateway.edge.svc")));
        let any = Principal::parse("*.edge.svc").unwrap();
        assert!(any.matches(&with_dns("gateway.edge.svc")));
        assert!(!any.matches(&with_dns("a.gateway.edge.svc")));
        assert!(!any.matches(&with_dns(".edge.svc")));
        assert!(!any.matches(&with_dns("edge.svc")));
        assert!(!any.matches(&with_dns("xedge.svc")));
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "",
            "spiffe://td/ns/*/sa/x",
            "spiffe://*",
            "spiffe://td/ns/edge/sa/x*",
            "spiffe://td/*/*",
            "*.svc",
            "a.*.svc",
            "**.edge.svc",
            "with space",
            "://x",
            "bad_name!",
            "spi ffe://x",
        ] {
            assert!(Principal::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn client_address_picks() {
        let d = Downstream { tcp_peer: "10.0.0.1".parse().ok(), envoy_client: "203.0.113.7".parse().ok(), ..Default::default() };
        assert_eq!(ClientAddress::Peer.pick(&d), "10.0.0.1".parse().ok());
        assert_eq!(ClientAddress::Envoy.pick(&d), "203.0.113.7".parse().ok());
        assert_eq!(ClientAddress::parse("peer"), Some(ClientAddress::Peer));
        assert_eq!(ClientAddress::parse("xff"), None);
    }

    #[test]
    fn peer_records_hold_ip_peers_only() {
        assert_eq!(peer_record(b"203.0.113.9", Some(5555)).as_deref(), Some("203.0.113.9:5555"));
        assert_eq!(peer_record(b"2001:db8::9", Some(5555)).as_deref(), Some("[2001:db8::9]:5555"));
        assert_eq!(peer_record(b"127.0.0.3:4444", None).as_deref(), Some("127.0.0.3:4444"));
        assert_eq!(peer_record(b"[::ffff:10.0.0.1]:80", None).as_deref(), Some("10.0.0.1:80"));
        for not_ip in [&b"envoy://internal_client_address/"[..], b"/tmp/envoy.sock", b"", b"@abstract"] {
            assert_eq!(peer_record(not_ip, None), None, "{:?}", String::from_utf8_lossy(not_ip));
        }
        // What is recorded reads back as the same peer.
        let record = peer_record(b"2001:db8::9", Some(1)).unwrap();
        assert_eq!(crate::request::parse_peer_address(record.as_bytes()), "2001:db8::9".parse().ok());
    }
}
