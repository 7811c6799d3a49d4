//! The `exact` role (WSGIProxy's exactproxy): the request goes to the server its own
//! Host names, exactly as the client sent it. The filter's part is to keep this from
//! being an open proxy (only `allow_hosts` destinations; loopback, private and
//! link-local addresses only when listed by address). The one header Envoy adds on
//! its own is taken back by envoy/exact.yaml (see [`ABSENT_MARK`]).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::headers::AUTHORITY;
use crate::middleware::parse_authority;
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

/// Not loopback, private, link-local, unspecified, multicast or otherwise special.
pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || v4.octets()[0] == 0
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(&IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[derive(Debug)]
pub struct ExactConfig {
    pub allow_hosts: Vec<HostPattern>,
}

fn refuse(host: &str, why: &str) -> Decision {
    Decision::Reply(LocalReply::new(403, "destination_not_allowed", format!("this proxy does not forward to {host}: {why}")))
}

pub fn decide(config: &ExactConfig, head: &RequestHead) -> Decision {
    let raw = head.get(AUTHORITY).unwrap_or_default();
    let shown = String::from_utf8_lossy(raw).into_owned();
    let Some((host, port)) = parse_authority(raw) else {
        return Decision::Reply(LocalReply::new(400, "bad_host", format!("the Host header {shown:?} does not name a server")));
    };
    let port = port.unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let destination = match bare.parse::<IpAddr>() {
        Ok(ip) => Destination::Ip(ip),
        Err(_) => Destination::Name(host.to_ascii_lowercase().trim_end_matches('.').to_string()),
    };
    if !config.allow_hosts.iter().any(|p| p.matches(&destination, port)) {
        return refuse(&shown, "not in allow_hosts");
    }
    // Nothing to change here: Envoy routes only requests that carry X-Forwarded-Proto,
    // so the absence mark is taken off after routing, by envoy/exact.yaml's upstream filter.
    Decision::Forward(Edits::default())
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
        let c = config(&["api.example.com:443", "*.internal.example:8080", "static.example:*", "127.0.0.1:8080", "10.0.0.0/8:80", "[::1]:9000"]);
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
        for private in ["127.0.0.1:80", "10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.169.254", "[::1]:80", "[fe80::1]:80", "[fd00::1]:80", "[::ffff:127.0.0.1]:80", "0.0.0.0:80", "localhost:80", "a.localhost:80", "100.64.0.1"] {
            assert!(!allowed(&c, private), "{private}");
        }
    }

    #[test]
    fn bad_patterns() {
        for bad in ["example.com", ":80", "a b:80", "*.:80", "host:0", "host:x", "::1:80"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
