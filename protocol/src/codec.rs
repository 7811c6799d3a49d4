//! Payload headers: `X-WSGIProxy-{Str,Unicode,Json,Pickle}-N: {url-quoted key} {value}`,
//! where a value that could not travel safely is sent as `b64` + base64.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The four families of environ keys, each numbered from 0 on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Str,
    Unicode,
    Json,
    Pickle,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Str, Family::Unicode, Family::Json, Family::Pickle];

    /// The lowercase header-name prefix of this family, up to and including the last dash.
    pub fn header_prefix(self) -> &'static str {
        match self {
            Family::Str => "x-wsgiproxy-str-",
            Family::Unicode => "x-wsgiproxy-unicode-",
            Family::Json => "x-wsgiproxy-json-",
            Family::Pickle => "x-wsgiproxy-pickle-",
        }
    }

    /// [`Family::header_prefix`] after the protocol's `x-wsgiproxy-`.
    fn name_after_prefix(self) -> &'static str {
        match self {
            Family::Str => "str-",
            Family::Unicode => "unicode-",
            Family::Json => "json-",
            Family::Pickle => "pickle-",
        }
    }

    /// The name of the payload header `index` of this family: the first eight are
    /// static, the others made.
    pub fn header_name(self, index: usize) -> std::borrow::Cow<'static, str> {
        const NAMES: [[&str; 8]; 4] = [
            [
                "x-wsgiproxy-str-0",
                "x-wsgiproxy-str-1",
                "x-wsgiproxy-str-2",
                "x-wsgiproxy-str-3",
                "x-wsgiproxy-str-4",
                "x-wsgiproxy-str-5",
                "x-wsgiproxy-str-6",
                "x-wsgiproxy-str-7",
            ],
            [
                "x-wsgiproxy-unicode-0",
                "x-wsgiproxy-unicode-1",
                "x-wsgiproxy-unicode-2",
                "x-wsgiproxy-unicode-3",
                "x-wsgiproxy-unicode-4",
                "x-wsgiproxy-unicode-5",
                "x-wsgiproxy-unicode-6",
                "x-wsgiproxy-unicode-7",
            ],
            [
                "x-wsgiproxy-json-0",
                "x-wsgiproxy-json-1",
                "x-wsgiproxy-json-2",
                "x-wsgiproxy-json-3",
                "x-wsgiproxy-json-4",
                "x-wsgiproxy-json-5",
                "x-wsgiproxy-json-6",
                "x-wsgiproxy-json-7",
            ],
            [
                "x-wsgiproxy-pickle-0",
                "x-wsgiproxy-pickle-1",
                "x-wsgiproxy-pickle-2",
                "x-wsgiproxy-pickle-3",
                "x-wsgiproxy-pickle-4",
                "x-wsgiproxy-pickle-5",
                "x-wsgiproxy-pickle-6",
                "x-wsgiproxy-pickle-7",
            ],
        ];
        match NAMES[self as usize].get(index) {
            Some(name) => std::borrow::Cow::Borrowed(name),
            None => std::borrow::Cow::Owned(format!("{}{}", self.header_prefix(), index)),
        }
    }

    /// The family and index of a payload header name, `None` when it is not one.
    /// An index that is not plain decimal (sign, leading zero, too long) is an error.
    pub fn parse_header_name(name: &str) -> Option<Result<(Family, usize), String>> {
        // Most names are no protocol header at all: one test of the common prefix
        // turns them away before the families are tried.
        let after = name.strip_prefix(crate::headers::X_WSGIPROXY_PREFIX)?;
        let (family, index) = Family::ALL.iter().find_map(|&family| Some((family, after.strip_prefix(family.name_after_prefix())?)))?;
        Some(parse_index(index).map(|i| (family, i)).ok_or_else(|| format!("{name}: payload index is not a plain decimal number")))
    }
}

/// Largest payload index accepted; more keys than this is not a sane request.
pub const MAX_INDEX: usize = 999;

fn parse_index(digits: &str) -> Option<usize> {
    let plain = !digits.is_empty()
        && digits.len() <= 3
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if plain {
        digits.parse().ok()
    } else {
        None
    }
}

/// Python 2's `urllib.quote` keeps letters, digits, `_.-` and `/`; everything else is %XX.
const QUOTE_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'_').remove(b'.').remove(b'-').remove(b'/');

const B64_MARK: &[u8] = b"b64";

/// True when a value must travel as base64: control characters, non-ASCII bytes,
/// leading or trailing white space, an empty value (Envoy trims trailing space, so
/// `key ` would arrive as `key`), or a value that itself starts with `b64`.
pub fn needs_base64(value: &[u8]) -> bool {
    value.is_empty()
        || value.starts_with(B64_MARK)
        || value.iter().any(|&b| !(0x20..0x7f).contains(&b))
        || value.first().is_some_and(|b| *b == b' ')
        || value.last().is_some_and(|b| *b == b' ')
}

/// Encodes one value for the wire.
pub fn encode_value(value: &[u8]) -> String {
    let mut out = String::with_capacity(3 + value.len().div_ceil(3) * 4);
    encode_value_into(value, &mut out);
    out
}

/// [`encode_value`], appended to `out`.
fn encode_value_into(value: &[u8], out: &mut String) {
    if needs_base64(value) {
        out.push_str("b64");
        STANDARD.encode_string(value, out);
    } else {
        // needs_base64 returned false, so every byte is printable ASCII.
        out.extend(value.iter().map(|&b| b as char));
    }
}

/// The whole payload header value: `{url-quoted key} {encoded value}`, made in one
/// allocation.
pub fn encode_payload(key: &str, value: &[u8]) -> String {
    let mut out = String::with_capacity(key.len() + 4 + value.len().div_ceil(3) * 4);
    out.extend(utf8_percent_encode(key, QUOTE_SET));
    out.push(' ');
    encode_value_into(value, &mut out);
    out
}

/// Why a payload header could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    BadKey,
    BadBase64,
    NotUtf8,
    NotJson,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecodeError::BadKey => "the key is not a valid url-quoted UTF-8 name",
            DecodeError::BadBase64 => "the b64 value is not valid base64",
            DecodeError::NotUtf8 => "the value is not valid UTF-8",
            DecodeError::NotJson => "the value is not valid JSON",
        })
    }
}

/// Splits a payload header value into its (unquoted) key and its raw wire value.
pub fn split_payload(raw: &[u8]) -> Result<(String, &[u8]), DecodeError> {
    let (key, value) = match raw.iter().position(|&b| b == b' ') {
        Some(at) => (&raw[..at], &raw[at + 1..]),
        None => (raw, &raw[raw.len()..]),
    };
    let key = std::str::from_utf8(key).map_err(|_| DecodeError::BadKey)?;
    // Printable ASCII with no percent sign (most keys) decodes to itself.
    if !key.is_empty() && key.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'%') {
        return Ok((key.to_string(), value));
    }
    let key = percent_decode_str(key).decode_utf8().map_err(|_| DecodeError::BadKey)?;
    if key.is_empty() || key.chars().any(char::is_control) {
        return Err(DecodeError::BadKey);
    }
    Ok((key.into_owned(), value))
}

/// Decodes a wire value (strict base64 after a `b64` mark) and checks it against its family.
pub fn decode_value(family: Family, wire: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let value = match wire.strip_prefix(B64_MARK) {
        Some(b64) => STANDARD.decode(b64).map_err(|_| DecodeError::BadBase64)?,
        None => wire.to_vec(),
    };
    match family {
        Family::Str | Family::Pickle => {}
        Family::Unicode => {
            std::str::from_utf8(&value).map_err(|_| DecodeError::NotUtf8)?;
        }
        Family::Json => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&value).map_err(|_| DecodeError::NotJson)?;
        }
    }
    Ok(value)
}

/// True when `value` is one JSON text.
pub fn is_json(value: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_split_as_decoded_ones() {
        // The reading by percent-decoding every key, which the plain-key shortcut skips.
        fn decoded(raw: &[u8]) -> Option<(String, &[u8])> {
            let at = raw.iter().position(|&b| b == b' ').unwrap_or(raw.len());
            let key = percent_decode_str(std::str::from_utf8(&raw[..at]).ok()?).decode_utf8().ok()?;
            (!key.is_empty() && !key.chars().any(char::is_control)).then(|| (key.into_owned(), raw.get(at + 1..).unwrap_or_default()))
        }
        for key in ["REMOTE_USER", "a", "~!*()'", "a%20b", "%41", "%", "%zz", "\x7f", "\x1f", " ", "", "caf\u{e9}", "a\tb", "%c2%85"] {
            for raw in [key.to_string(), format!("{key} v"), format!("{key} ")] {
                assert_eq!(split_payload(raw.as_bytes()).ok(), decoded(raw.as_bytes()), "{raw:?}");
            }
        }
    }

    #[test]
    fn plain_values_travel_as_is() {
        assert_eq!(encode_payload("REMOTE_USER", b"bob"), "REMOTE_USER bob");
        assert_eq!(encode_payload("a key/x", b"v w"), "a%20key/x v w");
    }

    #[test]
    fn unsafe_values_travel_as_base64() {
        assert_eq!(encode_value(b"line\nbreak"), "b64bGluZQpicmVhaw==");
        assert_eq!(encode_value(b" padded"), "b64IHBhZGRlZA==");
        assert_eq!(encode_value(b"padded "), "b64cGFkZGVkIA==");
        assert_eq!(encode_value(b"b64abc"), "b64YjY0YWJj");
        assert_eq!(encode_value("caf\u{e9}".as_bytes()), "b64Y2Fmw6k=");
        assert_eq!(encode_value(b""), "b64");
        assert_eq!(encode_value(b"\x7f"), "b64fw==");
    }

    #[test]
    fn round_trip() {
        for value in [&b"bob"[..], b"", b" x ", b"b64", b"\x00\xff", "\u{263a}".as_bytes()] {
            let wire = encode_payload("k", value);
            let (key, raw) = split_payload(wire.as_bytes()).unwrap();
            assert_eq!(key, "k");
            assert_eq!(decode_value(Family::Str, raw).unwrap(), value);
        }
    }

    #[test]
    fn decoding_is_strict() {
        assert_eq!(decode_value(Family::Str, b"b64!!!"), Err(DecodeError::BadBase64));
        assert_eq!(decode_value(Family::Str, b"b64YQ"), Err(DecodeError::BadBase64));
        assert_eq!(decode_value(Family::Unicode, b"b64/w=="), Err(DecodeError::NotUtf8));
        assert_eq!(decode_value(Family::Json, b"{nope"), Err(DecodeError::NotJson));
        assert_eq!(decode_value(Family::Json, b"[1, \"a\"]").unwrap(), b"[1, \"a\"]");
        assert_eq!(split_payload(b"%ZZ v"), Ok(("%ZZ".to_string(), &b"v"[..])));
        assert_eq!(split_payload(b"%FF v"), Err(DecodeError::BadKey));
        assert_eq!(split_payload(b" v"), Err(DecodeError::BadKey));
        assert_eq!(split_payload(b"%0A v"), Err(DecodeError::BadKey));
        assert_eq!(split_payload(b"KEY"), Ok(("KEY".to_string(), &b""[..])));
    }

    #[test]
    fn header_names() {
        assert_eq!(Family::Json.header_name(2), "x-wsgiproxy-json-2");
        for family in Family::ALL {
            for index in 0..12 {
                assert_eq!(family.header_name(index), format!("{}{index}", family.header_prefix()));
            }
        }
        assert_eq!(Family::parse_header_name("x-wsgiproxy-str-0"), Some(Ok((Family::Str, 0))));
        assert_eq!(Family::parse_header_name("x-wsgiproxy-pickle-12"), Some(Ok((Family::Pickle, 12))));
        assert!(matches!(Family::parse_header_name("x-wsgiproxy-str-01"), Some(Err(_))));
        assert!(matches!(Family::parse_header_name("x-wsgiproxy-str-+1"), Some(Err(_))));
        assert!(matches!(Family::parse_header_name("x-wsgiproxy-str-"), Some(Err(_))));
        assert!(matches!(Family::parse_header_name("x-wsgiproxy-str-1000"), Some(Err(_))));
        assert_eq!(Family::parse_header_name("x-wsgiproxy-version"), None);
        for family in Family::ALL {
            assert_eq!(format!("{}{}", crate::headers::X_WSGIPROXY_PREFIX, family.name_after_prefix()), family.header_prefix());
        }
    }
}
