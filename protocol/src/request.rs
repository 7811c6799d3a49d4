//! What a role sees of a request and what it decides about it.

use crate::reason::Reason;

/// A request's headers, read once from the host (names lowercase, values raw bytes),
/// kept in one buffer: the Wasm host's own serialised map, parsed in place, or one
/// copy of Envoy's headers for the native module. Two allocations for the whole
/// head, however many headers it has.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    /// Names and values, back to back (the Wasm host's form has its count, lengths
    /// and NUL separators in between, which no span covers).
    buf: Vec<u8>,
    /// Each header's name and value as ranges of `buf`, in order. Every name is UTF-8
    /// (checked, or replaced by its lossy form, when the head is made).
    spans: Vec<Span>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl RequestHead {
    pub fn new(headers: Vec<(String, Vec<u8>)>) -> Self {
        let bytes = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        let mut head = RequestHead::with_capacity(headers.len(), bytes);
        for (name, value) in &headers {
            head.push(name.as_bytes(), value);
        }
        head
    }

    /// Room for `headers` headers of `bytes` bytes of names and values together.
    pub fn with_capacity(headers: usize, bytes: usize) -> Self {
        RequestHead { buf: Vec::with_capacity(bytes), spans: Vec::with_capacity(headers) }
    }

    /// Appends one header (a name that is not UTF-8 is kept in its lossy form).
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let name: std::borrow::Cow<'_, [u8]> = match std::str::from_utf8(name) {
            Ok(_) => name.into(),
            Err(_) => String::from_utf8_lossy(name).into_owned().into_bytes().into(),
        };
        let start = self.buf.len();
        self.buf.extend_from_slice(&name);
        let middle = self.buf.len();
        self.buf.extend_from_slice(value);
        let (Ok(start), Ok(middle), Ok(end)) = (u32::try_from(start), u32::try_from(middle), u32::try_from(self.buf.len())) else {
            // Past 4 GiB: no host sends such a head; drop what does not fit.
            self.buf.truncate(start);
            return;
        };
        self.spans.push(Span { name: (start, middle), value: (middle, end) });
    }

    /// A head from the proxy-wasm host's serialised map (`proxy_get_header_map_pairs`:
    /// a u32 count, a u32 name length and value length per header, then each name and
    /// value followed by a NUL), parsed in place. A malformed map gives the headers
    /// read before the fault.
    pub fn from_serialized_map(buf: Vec<u8>) -> Self {
        let word = |at: usize| buf.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(|b| u32::from_le_bytes(b) as usize);
        let count = word(0).unwrap_or(0);
        let mut spans = Vec::with_capacity(count.min(buf.len() / 8));
        let mut at = 4usize.saturating_add(count.saturating_mul(8));
        let mut lossy = false;
        for n in 0..count {
            let (Some(name_len), Some(value_len)) = (word(4 + n * 8), word(8 + n * 8)) else { break };
            let name_end = at.saturating_add(name_len);
            let value_start = name_end.saturating_add(1);
            let value_end = value_start.saturating_add(value_len);
            // Each value is followed by a NUL.
            if value_end >= buf.len() {
                break;
            }
            let (Ok(a), Ok(b), Ok(c), Ok(d)) =
                (u32::try_from(at), u32::try_from(name_end), u32::try_from(value_start), u32::try_from(value_end))
            else {
                break;
            };
            lossy |= std::str::from_utf8(&buf[at..name_end]).is_err();
            spans.push(Span { name: (a, b), value: (c, d) });
            at = value_end.saturating_add(1);
        }
        let head = RequestHead { buf, spans };
        if lossy {
            // A name that is not UTF-8 (Envoy does not send one): copied, in its lossy form.
            let mut copy = RequestHead::with_capacity(head.len(), head.buf.len());
            for span in &head.spans {
                copy.push(head.bytes(span.name), head.bytes(span.value));
            }
            return copy;
        }
        head
    }

    fn bytes(&self, (start, end): (u32, u32)) -> &[u8] {
        self.buf.get(start as usize..end as usize).unwrap_or_default()
    }

    fn name(&self, span: &Span) -> &str {
        std::str::from_utf8(self.bytes(span.name)).unwrap_or_default()
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
        self.spans.iter().map(|s| (self.name(s), self.bytes(s.value)))
    }

    /// Every header, copied out (for what wants owned pairs).
    pub fn to_pairs(&self) -> Vec<(String, Vec<u8>)> {
        self.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect()
    }

    /// The first value of a header.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.spans.iter().find(|s| self.bytes(s.name) == name.as_bytes()).map(|s| self.bytes(s.value))
    }

    /// The first value of a header, when it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.spans.iter().any(|s| self.bytes(s.name) == name.as_bytes())
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
}

impl LocalReply {
    pub fn new(status: u16, reason: Reason, detail: impl Into<String>) -> Self {
        LocalReply { status, reason, detail: detail.into(), headers: Vec::new() }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(&self) -> String {
        format!("{}\n", self.detail)
    }

    /// The reply's headers: plain text, the reason, then the extra ones.
    pub fn response_headers(&self) -> Vec<(&str, &str)> {
        let mut headers = vec![("content-type", "text/plain; charset=utf-8"), ("x-wsgiproxy-error", self.reason.as_str())];
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
