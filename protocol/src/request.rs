//! What a role sees of a request and what it decides about it.

use crate::reason::Reason;

/// A request's headers, read once from the host (names lowercase, values raw bytes).
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    pub fn new(headers: Vec<(String, Vec<u8>)>) -> Self {
        RequestHead { headers }
    }

    /// The first value of a header.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The first value of a header, when it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }

    /// Names present, each once, that satisfy `pred`.
    pub fn names_where(&self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (name, _) in &self.headers {
            if pred(name) && !names.iter().any(|n| n == name) {
                names.push(name.clone());
            }
        }
        names
    }
}

/// The peer's address from Envoy's `source.address` attribute (`ip:port`,
/// `[v6]:port`, or a bare address). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
/// as a dual-stack listener reports IPv4 peers) becomes the IPv4 address, so that
/// `trust_ips` and `X-Forwarded-For` see what the peer really is.
pub fn parse_peer_address(raw: &[u8]) -> Option<std::net::IpAddr> {
    let text = std::str::from_utf8(raw).ok()?;
    let ip = text.parse::<std::net::SocketAddr>().map(|s| s.ip()).or_else(|_| text.parse::<std::net::IpAddr>()).ok()?;
    Some(ip.to_canonical())
}

/// Header changes to apply, removals first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    pub remove: Vec<String>,
    pub set: Vec<(String, Vec<u8>)>,
}

impl Edits {
    /// Sets a header (once: a later set of the same name replaces the earlier one).
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        let value = value.into();
        match self.set.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.set.push((name.to_string(), value)),
        }
    }

    /// Removes a header, unless this edit also sets it (a set replaces every value).
    pub fn remove(&mut self, name: &str) {
        if !self.remove.iter().any(|n| n == name) {
            self.remove.push(name.to_string());
        }
    }

    /// Drops removals made redundant by a later set of the same header.
    pub fn finish(mut self) -> Self {
        let set = &self.set;
        self.remove.retain(|r| !set.iter().any(|(n, _)| n == r));
        self
    }

    /// The first header this edit would write with a value that cannot stand in a
    /// header (Envoy does not check what filters write).
    pub fn first_unsafe(&self) -> Option<&str> {
        self.set.iter().find(|(_, v)| !crate::headers::is_safe_value(v)).map(|(n, _)| n.as_str())
    }

    /// Forwards with these edits, unless one of them would write an unsafe value.
    pub fn into_decision(self) -> Decision {
        match self.first_unsafe() {
            Some(name) => Decision::Reply(LocalReply::new(
                400,
                Reason::ControlCharacter,
                format!("the request would carry a control character in {name}"),
            )),
            None => Decision::Forward(self.finish()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    pub fn value_of(&self, name: &str) -> Option<&[u8]> {
        self.set.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

/// A response the filter sends itself instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    /// Why: the `x-wsgiproxy-error` header and the counter's name.
    pub reason: Reason,
    /// A short human explanation, sent as the body.
    pub detail: String,
    /// Extra response headers (for example `www-authenticate` or `retry-after`).
    pub headers: Vec<(String, String)>,
    /// An HTML page sent as the body instead of `detail` (the spawn role's waiting page).
    pub page: Option<String>,
}

impl LocalReply {
    pub fn new(status: u16, reason: Reason, detail: impl Into<String>) -> Self {
        LocalReply { status, reason, detail: detail.into(), headers: Vec::new(), page: None }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn with_page(mut self, html: String) -> Self {
        self.page = Some(html);
        self
    }

    pub fn body(&self) -> String {
        match &self.page {
            Some(html) => html.clone(),
            None => format!("{}\n", self.detail),
        }
    }

    /// The reply's headers: its content type, the reason, then the extra ones.
    pub fn response_headers(&self) -> Vec<(&str, &str)> {
        let content_type = if self.page.is_some() { "text/html; charset=utf-8" } else { "text/plain; charset=utf-8" };
        let mut headers = vec![("content-type", content_type), ("x-wsgiproxy-error", self.reason.as_str())];
        headers.extend(self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        headers
    }
}

/// What a role decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward(Edits),
    Reply(LocalReply),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_set_once() {
        let mut e = Edits::default();
        e.set("x-a", "1");
        e.set("x-b", "2");
        e.set("x-a", "3");
        assert_eq!(e.set, [("x-a".to_string(), b"3".to_vec()), ("x-b".to_string(), b"2".to_vec())]);
    }

    #[test]
    fn peer_addresses() {
        let ip = |s: &str| parse_peer_address(s.as_bytes()).map(|a| a.to_string());
        assert_eq!(ip("10.0.0.5:4242").as_deref(), Some("10.0.0.5"));
        assert_eq!(ip("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(ip("[::ffff:10.0.0.5]:80").as_deref(), Some("10.0.0.5"));
        assert_eq!(ip("::ffff:192.0.2.1").as_deref(), Some("192.0.2.1"));
        assert_eq!(ip("not an address"), None);
        assert_eq!(parse_peer_address(b"\xff"), None);
    }
}
