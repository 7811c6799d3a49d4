//! What a role sees of a request and what it decides about it.

use std::borrow::Cow;

use crate::reason::Reason;

/// A request's headers, read once from the host (names lowercase, values raw bytes),
/// in three allocations however many headers it has: the names in one string
/// (checked UTF-8 once, as they are added), the values in one buffer (the Wasm
/// host's own serialised map, read in place, or one copy of Envoy's headers for the
/// native module), and their places.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    names: String,
    /// The values (the Wasm host's form has its count, lengths, names and NUL
    /// separators in between, which no span covers).
    values: Vec<u8>,
    /// Each header's name, as a range of `names`, and value, as a range of `values`, in order.
    spans: Vec<Span>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl RequestHead {
    pub fn new(headers: Vec<(String, Vec<u8>)>) -> Self {
        let names = headers.iter().map(|(n, _)| n.len()).sum();
        let values = headers.iter().map(|(_, v)| v.len()).sum();
        let mut head = RequestHead::with_capacity(headers.len(), names, values);
        for (name, value) in &headers {
            head.push(name.as_bytes(), value);
        }
        head
    }

    /// Room for `headers` headers of `names` bytes of names and `values` of values.
    pub fn with_capacity(headers: usize, names: usize, values: usize) -> Self {
        RequestHead { names: String::with_capacity(names), values: Vec::with_capacity(values), spans: Vec::with_capacity(headers) }
    }

    /// Appends one header (a name that is not UTF-8 is kept in its lossy form).
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.values.len();
        self.values.extend_from_slice(value);
        let Some(value) = span(start, self.values.len()) else {
            // Past 4 GiB: no host sends such a head; drop what does not fit.
            self.values.truncate(start);
            return;
        };
        self.push_name(name, value);
    }

    fn push_name(&mut self, name: &[u8], value: (u32, u32)) {
        let start = self.names.len();
        match std::str::from_utf8(name) {
            Ok(name) => self.names.push_str(name),
            Err(_) => self.names.push_str(&String::from_utf8_lossy(name)),
        }
        match span(start, self.names.len()) {
            Some(name) => self.spans.push(Span { name, value }),
            None => self.names.truncate(start),
        }
    }

    /// A head from the proxy-wasm host's serialised map (`proxy_get_header_map_pairs`:
    /// a u32 count, a u32 name length and value length per header, then each name and
    /// value followed by a NUL). The values are read in place; the names are copied
    /// into one string. A malformed map gives the headers read before the fault.
    pub fn from_serialized_map(buf: Vec<u8>) -> Self {
        let word = |at: usize| buf.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(|b| u32::from_le_bytes(b) as usize);
        let count = word(0).unwrap_or(0).min(buf.len() / 8);
        let table_end = 4usize.saturating_add(count.saturating_mul(8));
        let mut head = RequestHead {
            names: String::with_capacity(buf.len().saturating_sub(table_end)),
            values: Vec::new(),
            spans: Vec::with_capacity(count),
        };
        let mut at = table_end;
        for n in 0..count {
            let (Some(name_len), Some(value_len)) = (word(4 + n * 8), word(8 + n * 8)) else { break };
            let name_end = at.saturating_add(name_len);
            let value_start = name_end.saturating_add(1);
            let value_end = value_start.saturating_add(value_len);
            // Each value is followed by a NUL.
            if value_end >= buf.len() {
                break;
            }
            let Some(value) = span(value_start, value_end) else { break };
            head.push_name(&buf[at..name_end], value);
            at = value_end + 1;
        }
        head.values = buf;
        head
    }

    fn value(&self, span: &Span) -> &[u8] {
        self.values.get(span.value.0 as usize..span.value.1 as usize).unwrap_or_default()
    }

    fn name(&self, span: &Span) -> &str {
        self.names.get(span.name.0 as usize..span.name.1 as usize).unwrap_or_default()
    }

    /// How many header lines.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Every header, in order, as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.spans.iter().map(|s| (self.name(s), self.value(s)))
    }

    /// Every header, copied out (for what wants owned pairs).
    pub fn to_pairs(&self) -> Vec<(String, Vec<u8>)> {
        self.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect()
    }

    /// Whether a header's name is `name`: its length first, then its bytes (no
    /// char-boundary checks, which slicing the names as a `str` would make).
    fn is_named(&self, span: &Span, name: &str) -> bool {
        (span.name.1.wrapping_sub(span.name.0)) as usize == name.len()
            && self.names.as_bytes().get(span.name.0 as usize..span.name.1 as usize) == Some(name.as_bytes())
    }

    /// The first value of a header.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.spans.iter().find(|s| self.is_named(s, name)).map(|s| self.value(s))
    }

    /// The first value of a header, when it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.spans.iter().any(|s| self.is_named(s, name))
    }

    /// Names present, each once, that satisfy `pred`.
    pub fn names_where(&self, pred: impl Fn(&str) -> bool) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in self.iter() {
            if pred(name) && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

/// A head being read from a host that lends one header at a time (the native
/// module): the names are copied as bytes and checked UTF-8 once, all together, in
/// [`RawHead::finish`]; one check of the whole buffer costs a fraction of one per name.
#[derive(Debug, Default)]
pub struct RawHead {
    names: Vec<u8>,
    values: Vec<u8>,
    spans: Vec<Span>,
}

impl RawHead {
    /// Room for `headers` headers of `names` bytes of names and `values` of values.
    pub fn with_capacity(headers: usize, names: usize, values: usize) -> Self {
        RawHead { names: Vec::with_capacity(names), values: Vec::with_capacity(values), spans: Vec::with_capacity(headers) }
    }

    /// Appends one header.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let (name_start, value_start) = (self.names.len(), self.values.len());
        self.names.extend_from_slice(name);
        self.values.extend_from_slice(value);
        match (span(name_start, self.names.len()), span(value_start, self.values.len())) {
            (Some(name), Some(value)) => self.spans.push(Span { name, value }),
            // Past 4 GiB: no host sends such a head; drop what does not fit.
            _ => {
                self.names.truncate(name_start);
                self.values.truncate(value_start);
            }
        }
    }

    /// The head, as [`RequestHead::push`] would have made it: a name that is not
    /// UTF-8 is kept in its lossy form.
    pub fn finish(self) -> RequestHead {
        let RawHead { names, values, spans } = self;
        match String::from_utf8(names) {
            // Each name must be UTF-8 on its own, not only all of them together.
            Ok(names) if spans.iter().all(|s| names.is_char_boundary(s.name.0 as usize) && names.is_char_boundary(s.name.1 as usize)) => {
                RequestHead { names, values, spans }
            }
            Ok(names) => RawHead::lossy(names.into_bytes(), values, &spans),
            Err(e) => RawHead::lossy(e.into_bytes(), values, &spans),
        }
    }

    /// Each name checked on its own (the rare head with a name that is not UTF-8).
    fn lossy(names: Vec<u8>, values: Vec<u8>, spans: &[Span]) -> RequestHead {
        let mut head = RequestHead { names: String::with_capacity(names.len()), values, spans: Vec::with_capacity(spans.len()) };
        for s in spans {
            head.push_name(names.get(s.name.0 as usize..s.name.1 as usize).unwrap_or_default(), s.value);
        }
        head
    }
}

/// A range of a head's buffer, when it fits in u32s.
fn span(start: usize, end: usize) -> Option<(u32, u32)> {
    Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?))
}

/// A test's way to change a head: its headers as owned pairs, written back when
/// the guard is dropped.
#[cfg(test)]
pub(crate) struct PairsMut<'a> {
    head: &'a mut RequestHead,
    pairs: Vec<(String, Vec<u8>)>,
}

#[cfg(test)]
impl RequestHead {
    pub(crate) fn headers_mut(&mut self) -> PairsMut<'_> {
        let pairs = self.to_pairs();
        PairsMut { head: self, pairs }
    }
}

#[cfg(test)]
impl std::ops::Deref for PairsMut<'_> {
    type Target = Vec<(String, Vec<u8>)>;
    fn deref(&self) -> &Self::Target {
        &self.pairs
    }
}

#[cfg(test)]
impl std::ops::DerefMut for PairsMut<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.pairs
    }
}

#[cfg(test)]
impl Drop for PairsMut<'_> {
    fn drop(&mut self) {
        *self.head = RequestHead::new(std::mem::take(&mut self.pairs));
    }
}

/// The peer's address from Envoy's `source.address` attribute (`ip:port`,
/// `[v6]:port`, or a bare address). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
/// as a dual-stack listener reports IPv4 peers) becomes the IPv4 address, so that
/// `trust_ips` and `X-Forwarded-For` see what the peer really is.
pub fn parse_peer_address(raw: &[u8]) -> Option<std::net::IpAddr> {
    if let Some(v4) = plain_ipv4_with_port(raw) {
        return Some(std::net::IpAddr::V4(v4));
    }
    let text = std::str::from_utf8(raw).ok()?;
    let ip = text.parse::<std::net::SocketAddr>().map(|s| s.ip()).or_else(|_| text.parse::<std::net::IpAddr>()).ok()?;
    Some(ip.to_canonical())
}

/// `a.b.c.d:port` in its plain form (how Envoy writes an IPv4 peer), read without
/// std's general parser (a fifth of its cost); anything else is left to that parser.
fn plain_ipv4_with_port(raw: &[u8]) -> Option<std::net::Ipv4Addr> {
    // Plain decimal: digits only, no leading zero, at most `max_len` of them.
    let number = |digits: &[u8], max_len: usize| {
        let plain = !digits.is_empty()
            && digits.len() <= max_len
            && digits.iter().all(u8::is_ascii_digit)
            && (digits.len() == 1 || digits.first() != Some(&b'0'));
        plain.then(|| digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let colon = raw.iter().position(|b| *b == b':')?;
    let (address, port) = (raw.get(..colon)?, raw.get(colon + 1..)?);
    u16::try_from(number(port, 5)?).ok()?;
    let mut parts = address.split(|b| *b == b'.');
    let mut octets = [0u8; 4];
    for octet in &mut octets {
        *octet = u8::try_from(number(parts.next()?, 3)?).ok()?;
    }
    parts.next().is_none().then_some(std::net::Ipv4Addr::from(octets))
}

/// An address as text, as `IpAddr`'s `Display` writes it; an IPv4 address without
/// the formatting machinery (a tenth of its cost).
pub fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else { return ip.to_string() };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// Header changes to apply, removals first. Names the protocol knows are kept
/// borrowed (see [`crate::headers::static_name`]), and so are values taken as they
/// are from the configuration or the request (`'a`): no allocation for either.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits<'a> {
    pub remove: Vec<Cow<'static, str>>,
    pub set: Vec<(Cow<'static, str>, Cow<'a, [u8]>)>,
}

impl<'a> Edits<'a> {
    /// Room for `remove` removals and `set` sets.
    pub fn with_capacity(remove: usize, set: usize) -> Self {
        Edits { remove: Vec::with_capacity(remove), set: Vec::with_capacity(set) }
    }

    /// Sets a header (once: a later set of the same name replaces the earlier one).
    pub fn set(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Value<'a>>) {
        let name = name.into();
        let value = value.into().0;
        match self.set.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v = value,
            None => self.set.push((name, value)),
        }
    }

    /// Removes a header, unless this edit also sets it (a set replaces every value).
    /// True when the name was not already removed.
    pub fn remove(&mut self, name: &str) -> bool {
        let new = !self.remove.iter().any(|n| n == name);
        if new {
            self.remove.push(crate::headers::static_name(name));
        }
        new
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
        self.set.iter().find(|(_, v)| !crate::headers::is_safe_value(v)).map(|(n, _)| n.as_ref())
    }

    /// Forwards with these edits, unless one of them would write an unsafe value.
    pub fn into_decision(self) -> Decision<'a> {
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

    /// The same edits, owning their values.
    pub fn into_owned(self) -> Edits<'static> {
        Edits { remove: self.remove, set: self.set.into_iter().map(|(n, v)| (n, Cow::Owned(v.into_owned()))).collect() }
    }

    pub fn value_of(&self, name: &str) -> Option<&[u8]> {
        self.set.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_ref())
    }
}

/// A header value for [`Edits::set`]: borrowed from `&[u8]` and `&str`, owned from
/// `Vec<u8>` and `String`.
pub struct Value<'a>(pub Cow<'a, [u8]>);

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value(Cow::Borrowed(v))
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value(Cow::Borrowed(v.as_bytes()))
    }
}

impl From<Vec<u8>> for Value<'_> {
    fn from(v: Vec<u8>) -> Self {
        Value(Cow::Owned(v))
    }
}

impl From<String> for Value<'_> {
    fn from(v: String) -> Self {
        Value(Cow::Owned(v.into_bytes()))
    }
}

impl<'a> From<Cow<'a, str>> for Value<'a> {
    fn from(v: Cow<'a, str>) -> Self {
        match v {
            Cow::Borrowed(v) => Value(Cow::Borrowed(v.as_bytes())),
            Cow::Owned(v) => Value(Cow::Owned(v.into_bytes())),
        }
    }
}

impl<'a> From<Cow<'a, [u8]>> for Value<'a> {
    fn from(v: Cow<'a, [u8]>) -> Self {
        Value(v)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Value<'a> {
    fn from(v: &'a [u8; N]) -> Self {
        Value(Cow::Borrowed(v))
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

impl Decision<'_> {
    /// The same decision, owning its values.
    pub fn into_owned(self) -> Decision<'static> {
        match self {
            Decision::Forward(edits) => Decision::Forward(edits.into_owned()),
            Decision::Reply(reply) => Decision::Reply(reply),
        }
    }
}

/// What a role decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    Forward(Edits<'a>),
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
        assert_eq!(e.set, [("x-a".into(), b"3"[..].into()), ("x-b".into(), b"2"[..].into())]);
    }

    #[test]
    fn a_serialized_map_is_read_in_place() {
        let pairs: [(&str, &[u8]); 3] = [(":path", b"/a?b"), ("x-e", b""), ("x-bin", b"\xff\x00z")];
        let mut buf = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            buf.extend_from_slice(&(n.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            buf.extend_from_slice(n.as_bytes());
            buf.push(0);
            buf.extend_from_slice(v);
            buf.push(0);
        }
        let head = RequestHead::from_serialized_map(buf.clone());
        assert_eq!(head.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(head.get("x-bin"), Some(&b"\xff\x00z"[..]));
        // Cut anywhere: the headers whole before the cut, never a panic.
        for cut in 0..buf.len() {
            let head = RequestHead::from_serialized_map(buf[..cut].to_vec());
            assert!(head.len() <= 3);
            assert_eq!(head.iter().collect::<Vec<_>>(), pairs[..head.len()]);
        }
        assert!(RequestHead::from_serialized_map(Vec::new()).is_empty());
        // A name that is not UTF-8 is kept in its lossy form.
        let mut odd = 1u32.to_le_bytes().to_vec();
        odd.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0, b'v', 0]);
        assert_eq!(RequestHead::from_serialized_map(odd).iter().collect::<Vec<_>>(), [("\u{fffd}", &b"v"[..])]);
    }

    #[test]
    fn a_raw_head_is_the_head_pushed_one_by_one() {
        let heads: [&[(&[u8], &[u8])]; 4] = [
            &[],
            &[(b":path", b"/a"), (b"x-e", b""), (b"x-bin", b"\xff\x00z")],
            // Not UTF-8, alone or only together: each name is checked on its own.
            &[(b"a\xc3", b"1"), (b"\xa9b", b"2"), (b"ok", b"3")],
            &[(b"caf\xc3\xa9", b"1"), (b"\xff", b"2"), (b"", b"")],
        ];
        for pairs in heads {
            let mut raw = RawHead::with_capacity(pairs.len(), 0, 0);
            let mut pushed = RequestHead::with_capacity(0, 0, 0);
            for (name, value) in pairs {
                raw.push(name, value);
                pushed.push(name, value);
            }
            let raw = raw.finish();
            assert_eq!(raw.iter().collect::<Vec<_>>(), pushed.iter().collect::<Vec<_>>());
            assert_eq!(raw.len(), pairs.len());
        }
    }

    #[test]
    fn addresses_as_text() {
        for ip in ["0.0.0.0", "1.2.3.4", "10.0.0.255", "100.99.9.10", "255.255.255.255", "::1", "2001:db8::7", "::ffff:1.2.3.4"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = std::net::IpAddr::from([n, 255 - n, n / 3, n % 7]);
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn plain_ipv4_peers_read_as_std_reads_them() {
        let std_reading = |raw: &str| raw.parse::<std::net::SocketAddr>().ok().map(|s| s.ip());
        let mut cases: Vec<String> = [
            "127.0.0.1:54321",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "1.2.3.4:65536",
            "1.2.3.4:080",
            "1.2.3.4:00",
            "1.2.3.4:",
            "1.2.3.4",
            "01.2.3.4:80",
            "1.2.3.256:80",
            "1.2.3:80",
            "1.2.3.4.5:80",
            "1..3.4:80",
            "1.2.3.4:8a",
            "a.b.c.d:80",
            "1.2.3.4:+80",
            "[::1]:80",
            "::1",
            "1.2.3.4:123456",
            "1000.2.3.4:80",
            ":80",
            "",
            "1.2.3.04:1",
        ]
        .map(String::from)
        .to_vec();
        for n in [0u32, 1, 9, 10, 99, 100, 199, 249, 250, 255, 256, 999, 65535, 65536, 99999] {
            cases.push(format!("10.{}.0.1:{n}", n % 300));
        }
        for raw in cases {
            let fast = plain_ipv4_with_port(raw.as_bytes()).map(std::net::IpAddr::V4);
            if fast.is_some() {
                assert_eq!(fast, std_reading(&raw), "{raw}");
            }
            assert_eq!(
                parse_peer_address(raw.as_bytes()),
                std_reading(&raw).or_else(|| raw.parse().ok()).map(|ip: std::net::IpAddr| ip.to_canonical()),
                "{raw}"
            );
        }
        assert!(plain_ipv4_with_port(b"127.0.0.1:54321").is_some(), "Envoy's form takes the short way");
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
