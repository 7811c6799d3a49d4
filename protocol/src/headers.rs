//! Header names of the protocol, and what may stand in a header.

/// Headers the sending side writes and the receiving side consumes.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_SERVER: &str = "x-forwarded-server";
pub const X_FORWARDED_SCHEME: &str = "x-forwarded-scheme";
pub const X_SCRIPT_NAME: &str = "x-script-name";
/// What WSGIProxy 0.2.2's sender really wrote; accepted as an alias of `x-script-name`.
pub const X_FORWARDED_SCRIPT_NAME: &str = "x-forwarded-script-name";
pub const X_TRAVERSAL_PATH: &str = "x-traversal-path";
pub const X_TRAVERSAL_QUERY_STRING: &str = "x-traversal-query-string";
pub const X_WSGIPROXY_VERSION: &str = "x-wsgiproxy-version";
pub const X_WSGIPROXY_SIGNATURE: &str = "x-wsgiproxy-signature";
/// The endpoint a signature was made for (`ip:port`), with `bind_endpoint`.
pub const X_WSGIPROXY_ENDPOINT: &str = "x-wsgiproxy-endpoint";
pub const X_WSGIPROXY_PREFIX: &str = "x-wsgiproxy-";
pub const DATE: &str = "date";

/// Headers the receiving side delivers to the backend in plain, framework-friendly form.
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_PREFIX: &str = "x-forwarded-prefix";

pub const PATH: &str = ":path";
pub const AUTHORITY: &str = ":authority";
pub const METHOD: &str = ":method";

pub const PROTOCOL_VERSION: &str = "0.1";

/// The fixed (non-`x-wsgiproxy-*`) protocol headers.
const FIXED_PROTOCOL_HEADERS: [&str; 7] = [
    X_FORWARDED_FOR,
    X_FORWARDED_SERVER,
    X_FORWARDED_SCHEME,
    X_SCRIPT_NAME,
    X_FORWARDED_SCRIPT_NAME,
    X_TRAVERSAL_PATH,
    X_TRAVERSAL_QUERY_STRING,
];

/// A header name as an edit keeps it: borrowed when it is one the protocol knows (its
/// own headers, the payload headers' first few, the competing forwarding headers),
/// else copied.
pub fn static_name(name: &str) -> std::borrow::Cow<'static, str> {
    // A match, which compiles to a switch on the length before any bytes are
    // compared; the test `known_names_are_static` holds it to its list.
    let known = match name {
        X_FORWARDED_FOR => X_FORWARDED_FOR,
        X_FORWARDED_SERVER => X_FORWARDED_SERVER,
        X_FORWARDED_SCHEME => X_FORWARDED_SCHEME,
        X_SCRIPT_NAME => X_SCRIPT_NAME,
        X_FORWARDED_SCRIPT_NAME => X_FORWARDED_SCRIPT_NAME,
        X_TRAVERSAL_PATH => X_TRAVERSAL_PATH,
        X_TRAVERSAL_QUERY_STRING => X_TRAVERSAL_QUERY_STRING,
        X_WSGIPROXY_VERSION => X_WSGIPROXY_VERSION,
        X_WSGIPROXY_SIGNATURE => X_WSGIPROXY_SIGNATURE,
        X_WSGIPROXY_ENDPOINT => X_WSGIPROXY_ENDPOINT,
        DATE => DATE,
        X_FORWARDED_HOST => X_FORWARDED_HOST,
        X_FORWARDED_PROTO => X_FORWARDED_PROTO,
        X_FORWARDED_PREFIX => X_FORWARDED_PREFIX,
        "forwarded" => "forwarded",
        "x-forwarded-port" => "x-forwarded-port",
        "x-forwarded-ssl" => "x-forwarded-ssl",
        "x-forwarded-protocol" => "x-forwarded-protocol",
        "x-url-scheme" => "x-url-scheme",
        "front-end-https" => "front-end-https",
        "x-real-ip" => "x-real-ip",
        "x-client-ip" => "x-client-ip",
        "true-client-ip" => "true-client-ip",
        "x-cluster-client-ip" => "x-cluster-client-ip",
        "x-envoy-external-address" => "x-envoy-external-address",
        _ => {
            return match crate::codec::Family::parse_header_name(name) {
                Some(Ok((family, index))) => family.header_name(index),
                _ => std::borrow::Cow::Owned(name.to_string()),
            }
        }
    };
    std::borrow::Cow::Borrowed(known)
}

/// True for every header that belongs to the protocol (names are lowercase, as Envoy gives them).
pub fn is_protocol_header(name: &str) -> bool {
    name.starts_with(X_WSGIPROXY_PREFIX) || FIXED_PROTOCOL_HEADERS.contains(&name)
}

/// Other spellings of what the receiving side delivers, which frameworks may also
/// believe (Django's `USE_X_FORWARDED_PORT`, ProxyFix's `x_port`, RFC 7239). The
/// filter is the one authority on the client, host and scheme: the middleware
/// removes these from every request, so a client cannot send them past it.
pub const COMPETING_FORWARDING_HEADERS: [&str; 11] = [
    "forwarded",
    "x-forwarded-port",
    "x-forwarded-ssl",
    "x-forwarded-protocol",
    "x-url-scheme",
    "front-end-https",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    // Envoy's own, set from what it computed (an X-Forwarded-For entry under some settings).
    "x-envoy-external-address",
];

/// Whether `name` spelled with dashes for its underscores satisfies `pred`. Many
/// servers (CGI/WSGI: `HTTP_X_SCRIPT_NAME`) cannot tell `x_script_name` from
/// `x-script-name`; the shipped Envoy configs drop such names, and the filter
/// strips them too wherever Envoy lets them through (Istio's default).
pub fn is_underscore_spelling_of(name: &str, pred: impl Fn(&str) -> bool) -> bool {
    // A byte loop: a char search's setup costs more than a header name's few bytes.
    name.bytes().any(|b| b == b'_') && pred(&name.replace('_', "-"))
}

/// A header value a filter may write: Envoy does not check what filters write, so we do.
/// Refuses control characters (CR, LF, NUL and the rest, except tab) and DEL.
pub fn is_safe_value(value: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let byte_ok = |b: &u8| *b == b'\t' || (*b >= 0x20 && *b != 0x7f);
    // Eight bytes at a time: a word with no byte below 0x20 and none equal to 0x7f
    // is safe as it stands; any other word is checked byte by byte (a tab is allowed).
    let plain = |w: u64| {
        let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        let del = (w ^ (ONES * 0x7f)).wrapping_sub(ONES) & !(w ^ (ONES * 0x7f)) & HIGHS;
        (below_space | del) == 0
    };
    let mut words = value.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        if !plain(u64::from_le_bytes(bytes)) && !word.iter().all(byte_ok) {
            return false;
        }
    }
    // The last few bytes as one word too: from 4 to 7, their first four and last
    // four (overlapping); from 1 to 3, the first, middle and last, padded with spaces.
    let rest = words.remainder();
    let last = match (rest.first_chunk::<4>(), rest.last_chunk::<4>()) {
        (Some(first), Some(last)) => u64::from(u32::from_le_bytes(*first)) | u64::from(u32::from_le_bytes(*last)) << 32,
        _ => match (rest.first(), rest.get(rest.len() / 2), rest.last()) {
            (Some(&a), Some(&b), Some(&c)) => u64::from_le_bytes([a, b, c, b' ', b' ', b' ', b' ', b' ']),
            _ => return true,
        },
    };
    plain(last) || rest.iter().all(byte_ok)
}

/// An HTTP token (RFC 9110) in lowercase: what a configured header name must be.
pub fn is_lowercase_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers a configuration may never ask the filter to write: pseudo-headers,
/// hop-by-hop and framing headers, and the protocol's own.
pub fn is_reserved_name(name: &str) -> bool {
    const RESERVED: [&str; 12] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
        "date",
        "cookie",
        "authorization",
    ];
    name.starts_with(':')
        || RESERVED.contains(&name)
        || is_protocol_header(name)
        || name == X_FORWARDED_HOST
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_PREFIX
}

/// Parses `host[:port]`: a registered name or IPv4 address, or a bracketed IPv6
/// address; no user information, path, comma or white space.
pub fn parse_authority(value: &[u8]) -> Option<(&str, Option<u16>)> {
    let text = std::str::from_utf8(value).ok()?;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let end = rest.find(']')?;
        let inner = &rest[..end];
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        let after = &rest[end + 1..];
        (&text[..end + 2], if after.is_empty() { None } else { Some(after.strip_prefix(':')?) })
    } else {
        // The first colon, found byte by byte (a char search costs more on so short a value).
        match text.bytes().position(|b| b == b':') {
            Some(colon) => (text.get(..colon)?, Some(text.get(colon + 1..)?)),
            None => (text, None),
        }
    };
    if !host.starts_with('[')
        && (host.is_empty() || host.len() > 253 || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
    {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_values_word_by_word_as_byte_by_byte() {
        let reference = |v: &[u8]| v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        for len in 0..20 {
            for at in 0..len.max(1) {
                for b in 0..=255u8 {
                    let mut v = vec![b'a'; len];
                    if len > 0 {
                        v[at] = b;
                    }
                    assert_eq!(is_safe_value(&v), reference(&v), "{v:?}");
                    // Next to bytes above 0x7f and tabs, which are allowed.
                    let mut w: Vec<u8> = (0..len).map(|i| [0x80, b'\t', 0xff, b' ', 0x7e][i % 5]).collect();
                    if len > 0 {
                        w[at] = b;
                    }
                    assert_eq!(is_safe_value(&w), reference(&w), "{w:?}");
                }
            }
        }
    }

    /// The names [`static_name`] keeps borrowed besides the fixed protocol headers and
    /// the competing forwarding headers.
    const OTHER_KNOWN_NAMES: [&str; 7] =
        [X_WSGIPROXY_VERSION, X_WSGIPROXY_SIGNATURE, X_WSGIPROXY_ENDPOINT, DATE, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_FORWARDED_PREFIX];

    #[test]
    fn known_names_are_static() {
        for name in FIXED_PROTOCOL_HEADERS.iter().chain(&OTHER_KNOWN_NAMES).chain(&COMPETING_FORWARDING_HEADERS) {
            assert!(matches!(static_name(name), std::borrow::Cow::Borrowed(n) if n == *name), "{name}");
        }
        assert!(matches!(static_name("x-wsgiproxy-str-3"), std::borrow::Cow::Borrowed("x-wsgiproxy-str-3")));
        assert!(matches!(static_name("x-wsgiproxy-str-30"), std::borrow::Cow::Owned(n) if n == "x-wsgiproxy-str-30"));
        assert!(matches!(static_name("x-other"), std::borrow::Cow::Owned(n) if n == "x-other"));
    }

    #[test]
    fn protocol_headers() {
        assert!(is_protocol_header("x-wsgiproxy-str-0"));
        assert!(is_protocol_header("x-forwarded-script-name"));
        assert!(is_protocol_header("x-traversal-path"));
        assert!(!is_protocol_header("x-forwarded-proto"));
        assert!(!is_protocol_header("x-wsgiproxy"));
    }

    #[test]
    fn underscore_spellings() {
        assert!(is_underscore_spelling_of("x_script_name", is_protocol_header));
        assert!(is_underscore_spelling_of("x-wsgiproxy_str-0", is_protocol_header));
        assert!(!is_underscore_spelling_of("x-script-name", is_protocol_header), "no underscore: the name itself");
        assert!(!is_underscore_spelling_of("x_custom", is_protocol_header));
    }

    #[test]
    fn safe_values() {
        assert!(is_safe_value(b"plain value\twith tab"));
        assert!(is_safe_value("caf\u{e9}".as_bytes()));
        assert!(!is_safe_value(b"a\r\nb"));
        assert!(!is_safe_value(b"a\0b"));
        assert!(!is_safe_value(b"a\x7fb"));
    }

    #[test]
    fn tokens_and_reserved() {
        assert!(is_lowercase_token("x-remote-user"));
        assert!(!is_lowercase_token("X-Remote-User"));
        assert!(!is_lowercase_token("x remote"));
        assert!(!is_lowercase_token(""));
        assert!(is_reserved_name(":path"));
        assert!(is_reserved_name("x-forwarded-host"));
        assert!(is_reserved_name("x-wsgiproxy-str-0"));
        assert!(!is_reserved_name("x-remote-user"));
    }
}
