//! The `exact` role (WSGIProxy's exactproxy): the request goes to the server its own
//! Host names, exactly as the client sent it. The filter's part is to keep this from
//! being an open proxy (only `allow_hosts` destinations; loopback, private and
//! link-local addresses only when listed by address). The one header Envoy adds on
//! its own is taken back by envoy/exact.yaml (see [`ABSENT_MARK`]).
//!
//! The filter runs twice: before routing it checks the Host by name ([`decide`]);
//! as an upstream filter of the forward-proxy cluster, once DNS has answered, it
//! checks the address the name resolved to ([`decide_resolved`]), so that a name let
//! through only by a `*` pattern cannot lead to a loopback, private or metadata
//! address (`Host: 169.254.169.254.nip.io`).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::headers::parse_authority;
use crate::headers::AUTHORITY;
use crate::reason::Reason;
use crate::request::{Decision, Edits, LocalReply, RequestHead};

/// envoy/exact.yaml's early header mutation adds `x-forwarded-proto: wsgiproxy-absent`
/// when the client sent none, so that Envoy keeps it instead of adding its own; an
/// upstream filter removes the mark after routing (Envoy refuses to route a request
/// without X-Forwarded-Proto, so it cannot go earlier), and the upstream sees exactly
/// what the client sent.
pub const ABSENT_MARK: &str = "wsgiproxy-absent";

/// One `allow_hosts` entry: `host:port`, `*.domain:port`, `host:*`, `*:port`,
/// `*:*`, an IP or `[IPv6]` with a port, or `CIDR:port` (IPv6 CIDR in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    /// `None` matches any port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// Any public host name or public address.
    Any,
    Name(String),
    /// `*.example.com`: strict subdomains.
    Suffix(String),
    Net(IpNet),
}

impl HostPattern {
    pub fn parse(entry: &str) -> Result<HostPattern, String> {
        let (host, port) = entry
            .rsplit_once(':')
            .filter(|(h, _)| !h.is_empty() && (!h.contains(':') || h.starts_with('[')))
            .ok_or_else(|| format!("{entry:?} must be host:port (port may be *)"))?;
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{entry:?}: bad port {p:?}"))?),
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host == "*" {
            HostMatch::Any
        } else if let Ok(net) = bare.parse::<IpNet>() {
            HostMatch::Net(net.trunc())
        } else if let Ok(ip) = bare.parse::<IpAddr>() {
            HostMatch::Net(IpNet::from(ip))
        } else if let Some(domain) = host.strip_prefix("*.") {
            if parse_authority(domain.as_bytes()) != Some((domain, None)) {
                return Err(format!("{entry:?}: bad domain"));
            }
            HostMatch::Suffix(domain.to_ascii_lowercase())
        } else {
            if parse_authority(host.as_bytes()) != Some((host, None)) {
                return Err(format!("{entry:?}: bad host"));
            }
            HostMatch::Name(host.to_ascii_lowercase())
        };
        Ok(HostPattern { host, port })
    }

    fn matches(&self, host: &Destination, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match (&self.host, host) {
            (HostMatch::Any, Destination::Name(name)) => name != "localhost" && !name.ends_with(".localhost"),
            (HostMatch::Any, Destination::Ip(ip)) => is_public(ip),
            (HostMatch::Name(n), Destination::Name(name)) => n == name,
            (HostMatch::Suffix(s), Destination::Name(name)) => {
                name.len() > s.len() + 1 && name.ends_with(s.as_str()) && name.as_bytes()[name.len() - s.len() - 1] == b'.'
            }
            (HostMatch::Net(net), Destination::Ip(ip)) => net.contains(ip),
            _ => false,
        }
    }
}

enum Destination {
    Name(String),
    Ip(IpAddr),
}

/// A globally reachable unicast address: not loopback, private, link-local, shared
/// (CGNAT), reserved, documentation, benchmarking, multicast or otherwise special.
/// IPv6 addresses that carry an IPv4 one (mapped, NAT64, 6to4) are judged by it.
pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (b & 0xc0) == 64)
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b & 0xfe) == 18))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded_v4 = |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(&IpAddr::V4(v4));
            }
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address inside.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(&embedded_v4(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_public(&embedded_v4(s[1], s[2]));
            }
            // Global unicast is 2000::/3; within it, 2001::/23 (Teredo, ORCHID,
            // benchmarking...) and 2001:db8::/32 (documentation) are special.
            (s[0] & 0xe000) == 0x2000 && !(s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8))
        }
    }
}

#[derive(Debug)]
pub struct ExactConfig {
    pub allow_hosts: Vec<HostPattern>,
}

fn refuse(host: &str, why: &str) -> Decision<'static> {
    Decision::Reply(LocalReply::new(403, Reason::DestinationNotAllowed, format!("this proxy does not forward to {host}: {why}")))
}

pub fn decide(config: &ExactConfig, head: &RequestHead) -> Decision<'static> {
    let (shown, destination, port) = match requested(head) {
        Ok(requested) => requested,
        Err(reply) => return reply,
    };
    if !config.allow_hosts.iter().any(|p| p.matches(&destination, port)) {
        return refuse(&shown, "not in allow_hosts");
    }
    // Nothing to change here: Envoy routes only requests that carry X-Forwarded-Proto,
    // so the absence mark is taken off after routing, by envoy/exact.yaml's upstream filter.
    Decision::Forward(Edits::default())
}

/// The upstream check, once DNS has answered: the Host's name must have been let
/// through by a pattern that vouches for where it resolves. A listed name or domain
/// is trusted as listed; a name allowed only by `*` must resolve to a public
/// address. (IP literals were judged by address before routing.)
pub fn decide_resolved(config: &ExactConfig, head: &RequestHead, resolved: IpAddr) -> Decision<'static> {
    let (shown, destination, port) = match requested(head) {
        Ok(requested) => requested,
        Err(reply) => return reply,
    };
    let resolved = resolved.to_canonical();
    let vouched = config.allow_hosts.iter().any(|p| {
        p.matches(&destination, port)
            && match (&p.host, &destination) {
                (HostMatch::Any, _) => is_public(&resolved),
                (_, Destination::Ip(ip)) => *ip == resolved,
                _ => true,
            }
    });
    if vouched {
        Decision::Forward(Edits::default())
    } else {
        refuse(&shown, &format!("it resolves to {resolved}, which allow_hosts does not allow"))
    }
}

/// The upstream check when Envoy names the upstream by something other than an IP
/// address (a pipe, an internal listener): the filter cannot tell where the request
/// goes, so it refuses (fail closed).
pub fn refuse_unjudged(head: &RequestHead, upstream: &[u8]) -> Decision<'static> {
    let (shown, _, _) = match requested(head) {
        Ok(requested) => requested,
        Err(reply) => return reply,
    };
    if upstream.is_empty() {
        return refuse(&shown, "Envoy does not say which address it goes to");
    }
    refuse(&shown, &format!("its upstream {:?} is not an IP address this filter can judge", String::from_utf8_lossy(upstream)))
}

/// The server the Host names: (the Host as shown in replies, the destination, its
/// port, 80 when none is given), or a 400 when it names none.
fn requested(head: &RequestHead) -> Result<(String, Destination, u16), Decision<'static>> {
    let raw = head.get(AUTHORITY).unwrap_or_default();
    let shown = String::from_utf8_lossy(raw).into_owned();
    let Some((host, port)) = parse_authority(raw) else {
        return Err(Decision::Reply(LocalReply::new(400, Reason::BadHost, format!("the Host header {shown:?} does not name a server"))));
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let destination = match bare.parse::<IpAddr>() {
        Ok(ip) => Destination::Ip(ip.to_canonical()),
        Err(_) => Destination::Name(host.to_ascii_lowercase().trim_end_matches('.').to_string()),
    };
    Ok((shown, destination, port.unwrap_or(80)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(entries: &[&str]) -> ExactConfig {
        ExactConfig { allow_hosts: entries.iter().map(|e| HostPattern::parse(e).unwrap()).collect() }
    }

    fn allowed(c: &ExactConfig, host: &str) -> bool {
        let head = RequestHead::new(vec![(":authority".into(), host.as_bytes().to_vec())]);
        matches!(decide(c, &head), Decision::Forward(_))
    }

    #[test]
    fn patterns() {
        let c = config(&[
            "api.example.com:443",
            "*.internal.example:8080",
            "static.example:*",
            "127.0.0.1:8080",
            "10.0.0.0/8:80",
            "[::1]:9000",
        ]);
        assert!(allowed(&c, "api.example.com:443"));
        assert!(allowed(&c, "API.example.com:443"));
        assert!(!allowed(&c, "api.example.com:80"));
        assert!(!allowed(&c, "api.example.com"), "port 80 by default");
        assert!(allowed(&c, "a.internal.example:8080"));
        assert!(!allowed(&c, "internal.example:8080"));
        assert!(!allowed(&c, "evilinternal.example:8080"));
        assert!(allowed(&c, "static.example:1234"));
        assert!(allowed(&c, "127.0.0.1:8080"));
        assert!(!allowed(&c, "127.0.0.2:8080"));
        assert!(allowed(&c, "10.1.2.3"));
        assert!(allowed(&c, "[::1]:9000"));
        assert!(!allowed(&c, "user@api.example.com:443"));
    }

    #[test]
    fn wildcard_is_public_only() {
        let c = config(&["*:*"]);
        assert!(allowed(&c, "example.com:8443"));
        assert!(allowed(&c, "93.184.216.34:80"));
        for private in [
            "127.0.0.1:80",
            "10.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "[::1]:80",
            "[fe80::1]:80",
            "[fd00::1]:80",
            "[::ffff:127.0.0.1]:80",
            "0.0.0.0:80",
            "localhost:80",
            "a.localhost:80",
            "100.64.0.1",
        ] {
            assert!(!allowed(&c, private), "{private}");
        }
    }

    #[test]
    fn special_ranges_are_not_public() {
        for ip in [
            "198.18.0.1",
            "192.0.0.8",
            "240.0.0.1",
            "255.255.255.255",
            "100.100.100.200",
            "::",
            "::1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2001:db8::1",
            "2001::1",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "100::1",
        ] {
            assert!(!is_public(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::1"] {
            assert!(is_public(&ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn resolved_addresses() {
        let c = config(&["*:*", "api.internal:8080", "*.corp.example:443", "10.0.0.0/8:80"]);
        let check = |host: &str, ip: &str| {
            let head = RequestHead::new(vec![(":authority".into(), host.as_bytes().to_vec())]);
            matches!(decide_resolved(&c, &head, ip.parse().unwrap()), Decision::Forward(_))
        };
        assert!(check("example.com:443", "93.184.216.34"));
        assert!(!check("example.com:443", "127.0.0.1"), "a public-looking name resolving to loopback");
        assert!(!check("169.254.169.254.nip.io", "169.254.169.254"));
        assert!(!check("rebind.example:80", "::ffff:10.0.0.1"));
        assert!(check("api.internal:8080", "10.1.2.3"), "a listed name is trusted as listed");
        assert!(check("db.corp.example:443", "192.168.1.5"), "so is a listed domain");
        assert!(!check("api.internal:9090", "10.1.2.3"), "but only on its port (and then * wants a public address)");
        assert!(check("10.1.2.3", "10.1.2.3"));
        assert!(!check("10.1.2.3", "10.9.9.9"), "an address resolves to itself");
    }

    #[test]
    fn an_upstream_that_is_no_address_is_refused() {
        let head = RequestHead::new(vec![(":authority".into(), b"example.com".to_vec())]);
        assert!(matches!(refuse_unjudged(&head, b"envoy://internal"), Decision::Reply(reply) if reply.status == 403));
    }

    #[test]
    fn bad_patterns() {
        for bad in ["example.com", ":80", "a b:80", "*.:80", "host:0", "host:x", "::1:80"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
