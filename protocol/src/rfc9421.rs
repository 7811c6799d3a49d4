//! The second signature format: RFC 9421 HTTP Message Signatures, which any
//! backend can check with an RFC 9421 library.
//!
//! The `app` role sends
//!
//! ```text
//! Signature-Input: wsgiproxy=("@method" "@authority" "@path" "@query" "x-forwarded-for" ...);created=...;keyid="k1";alg="hmac-sha256";nonce="..."
//! Signature: wsgiproxy=:{base64 HMAC-SHA256 of the signature base}:
//! ```
//!
//! (or `alg="ed25519"` / `"ecdsa-p256-sha256"` and a signature by the sender's
//! private key, which receivers check with its public key: [`crate::asymmetric`]).
//!
//! covering the four derived components above, then every protocol header it
//! sends, sorted by name. The `middleware` role finds the `wsgiproxy` member of
//! both fields (other labels are ignored), rebuilds the signature base (§2.5) from
//! the request as it sees it, and checks the MAC in constant time. Its policy: `alg`
//! must name the ring's algorithm (see [`alg_suits`]), `keyid` must be in the ring,
//! `created` within the skew window, `expires` (when present) not past, `nonce`
//! present (it goes to the replay memory), and the four derived components and
//! every protocol header present must be covered, so that a header added on the
//! way breaks trust.

use base64::Engine as _;
use sfv::{BareItem, Dictionary, FieldType, InnerList, Item, ListEntry, Parser};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::signature::{Algorithm, KeyRing, Nonce, Rejection, NONCE_LEN};

/// The label of our signature in `Signature-Input` and `Signature`.
pub const LABEL: &str = "wsgiproxy";
/// The HMAC this format uses (RFC 9421 §3.3.3); the public-key algorithms are
/// [`Algorithm::Ed25519`] and [`Algorithm::EcdsaP256Sha256`].
pub const ALGORITHM: &str = "hmac-sha256";
pub const SIGNATURE_INPUT: &str = "signature-input";
pub const SIGNATURE: &str = "signature";

/// The derived components the `app` role covers, in this order, before its
/// protocol headers; the `middleware` role requires each of them.
pub const REQUIRED_DERIVED: [&str; 4] = ["@method", "@authority", "@path", "@query"];

/// Which signature format a configuration uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureFormat {
    /// `X-WSGIProxy-Signature` (`wsgiproxy-signature-v1`), checked by our middleware role only.
    #[default]
    V1,
    /// `Signature-Input` and `Signature` (RFC 9421).
    Rfc9421,
}

impl SignatureFormat {
    pub fn from_name(name: &str) -> Option<SignatureFormat> {
        match name {
            "v1" => Some(SignatureFormat::V1),
            "rfc9421" => Some(SignatureFormat::Rfc9421),
            _ => None,
        }
    }
}

/// The request as a signature sees it.
pub struct Message<'a, F: FieldLines + ?Sized = [(String, Vec<u8>)]> {
    pub method: &'a [u8],
    /// Whether the target URI's scheme is https (for `@scheme`, `@target-uri`, and
    /// the default port `@authority` leaves out).
    pub https: bool,
    /// `:authority`, as sent or received.
    pub authority: &'a [u8],
    /// `:path`, with its query.
    pub target: &'a [u8],
    /// Header fields, names lowercase, each field line once, in order.
    pub fields: &'a F,
}

/// The header field lines of a message, in order, names lowercase: owned pairs or
/// the request head itself (read in place, no copy).
pub trait FieldLines {
    fn lines(&self) -> impl Iterator<Item = (&str, &[u8])> + '_;
}

impl FieldLines for [(String, Vec<u8>)] {
    fn lines(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }
}

impl FieldLines for Vec<(String, Vec<u8>)> {
    fn lines(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.as_slice().lines()
    }
}

impl FieldLines for [(&str, &[u8])] {
    fn lines(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.iter().copied()
    }
}

impl FieldLines for crate::request::RequestHead {
    fn lines(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.iter()
    }
}

/// Why a signature base cannot be built.
pub type BaseError = &'static str;

/// `host[:port]` lowercased, the port left out when it is the scheme's default
/// (RFC 9421 §2.2.3, RFC 9110 §4.2.3).
pub fn normalize_authority(authority: &str, https: bool) -> String {
    let lower = authority.to_ascii_lowercase();
    let (host, port) = match lower.rfind(':') {
        // A colon inside brackets belongs to an IPv6 address, not a port.
        Some(i) if !lower[i..].contains(']') && (!lower.contains('[') || lower[..i].ends_with(']')) => (&lower[..i], Some(&lower[i + 1..])),
        _ => (lower.as_str(), None),
    };
    match port {
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            let default = if https { "443" } else { "80" };
            if p.trim_start_matches('0') == default || p.is_empty() {
                host.to_string()
            } else {
                lower.clone()
            }
        }
        _ => lower.clone(),
    }
}

/// Whether [`normalize_authority`] would leave `authority` as it is: lowercase, no
/// IPv6 brackets, and no port or one that is not the scheme's default (nor empty).
fn authority_is_normal(authority: &[u8], https: bool) -> bool {
    if authority.iter().any(|&b| b.is_ascii_uppercase() || b == b'[') {
        return false;
    }
    let Some(colon) = authority.iter().rposition(|&b| b == b':') else { return true };
    let port = &authority[colon + 1..];
    if !port.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let significant = &port[port.iter().take_while(|&&b| b == b'0').count()..];
    !port.is_empty() && significant != if https { &b"443"[..] } else { &b"80"[..] }
}

/// A component value may hold visible ASCII, spaces and tabs only: the signature
/// base is ASCII text, one component per line. Checked on the bytes, which then
/// go into the base as they are (ASCII: no UTF-8 validation needed).
fn printable(value: &[u8]) -> Result<&[u8], BaseError> {
    if value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        Ok(value)
    } else {
        Err("a component value holds a character the signature base cannot carry")
    }
}

/// The value of one covered component (RFC 9421 §2.1, §2.2).
pub fn component_value<F: FieldLines + ?Sized>(message: &Message<'_, F>, name: &str) -> Result<String, BaseError> {
    let mut out = Vec::new();
    push_component_value(&mut out, message, name)?;
    String::from_utf8(out).map_err(|_| "not ASCII")
}

/// `path` and `query` of a request target (`None`: no `?`).
fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    }
}

/// Appends the value of one covered component to `out` (no intermediate copy).
fn push_component_value<F: FieldLines + ?Sized>(out: &mut Vec<u8>, message: &Message<'_, F>, name: &str) -> Result<(), BaseError> {
    let scheme: &[u8] = if message.https { b"https" } else { b"http" };
    match name {
        "@method" => out.extend_from_slice(printable(message.method)?),
        "@authority" => {
            let authority = printable(message.authority)?;
            // Already normal (what the app role sends): no copy to lowercase.
            if !authority_is_normal(authority, message.https) {
                let authority = std::str::from_utf8(authority).map_err(|_| "not ASCII")?;
                out.extend_from_slice(normalize_authority(authority, message.https).as_bytes());
            } else {
                out.extend_from_slice(authority);
            }
        }
        "@scheme" => out.extend_from_slice(scheme),
        "@target-uri" => {
            let authority = printable(message.authority)?;
            let target = printable(message.target)?;
            out.extend_from_slice(scheme);
            out.extend_from_slice(b"://");
            out.extend_from_slice(authority);
            out.extend_from_slice(target);
        }
        "@request-target" => out.extend_from_slice(printable(message.target)?),
        "@path" => {
            let (path, _) = split_target(printable(message.target)?);
            out.extend_from_slice(if path.is_empty() { b"/" } else { path });
        }
        // An absent query is `?` alone (§2.2.7).
        "@query" => {
            let (_, query) = split_target(printable(message.target)?);
            out.push(b'?');
            out.extend_from_slice(query.unwrap_or_default());
        }
        derived if derived.starts_with('@') => return Err("an unsupported derived component"),
        pseudo if pseudo.starts_with(':') => return Err("a pseudo-header is not a field"),
        field => {
            // Every field line, trimmed, joined with ", " in order (§2.1).
            let mut any = false;
            for (_, value) in message.fields.lines().filter(|(n, _)| *n == field) {
                if any {
                    out.extend_from_slice(b", ");
                }
                any = true;
                // Printable: the only ASCII whitespace left to trim is spaces and tabs.
                out.extend_from_slice(printable(value)?.trim_ascii());
            }
            if !any {
                return Err("a covered header field is absent");
            }
        }
    }
    Ok(())
}

/// The signature base (§2.5): one `"{component}": {value}` line per covered
/// component, then `"@signature-params": {params}` with no newline after it.
pub fn signature_base<F: FieldLines + ?Sized>(message: &Message<'_, F>, params: &InnerList) -> Result<String, BaseError> {
    let member = Member::from_inner_list(params).ok_or("the signature parameters cannot be serialised")?;
    let mut base = Vec::with_capacity(512);
    member.write_base(message, &mut base)?;
    String::from_utf8(base).map_err(|_| "not ASCII")
}

/// A parameter of our `Signature-Input` member, as the policy reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Param<'a> {
    /// Borrowed from the field on the fast path.
    Text(Cow<'a, str>),
    Integer(i64),
    /// Any other bare item (a token, a boolean, a byte sequence ...).
    Other,
}

/// Our `Signature-Input` member: its canonical serialisation (what
/// `@signature-params` carries), its components and the parameters the policy reads.
/// On the fast path everything is borrowed from the field: no copy, no allocation
/// but `spans`.
#[derive(Debug, Clone, Default)]
struct Member<'a> {
    /// The inner list with its parameters, serialised (RFC 8941 §4.1.1.1).
    text: Cow<'a, str>,
    /// Where the component names are in `names`: `(start, end)` of each.
    names: Cow<'a, str>,
    spans: Vec<(usize, usize)>,
    /// Whether every name needs no escaping as an RFC 8941 string (the fast path
    /// read them so): the base quotes them as they are.
    plain_names: bool,
    /// Why a component cannot be covered (parameters, capitals, not a string).
    bad_component: Option<BaseError>,
    created: Option<Param<'a>>,
    expires: Option<Param<'a>>,
    keyid: Option<Param<'a>>,
    alg: Option<Param<'a>>,
    nonce: Option<Param<'a>>,
}

impl<'a> Member<'a> {
    fn components(&self) -> impl Iterator<Item = &str> + '_ {
        self.spans.iter().map(move |&(start, end)| &self.names[start..end])
    }

    fn set_param(&mut self, key: &str, value: Param<'a>) {
        let slot = match key {
            "created" => &mut self.created,
            "expires" => &mut self.expires,
            "keyid" => &mut self.keyid,
            "alg" => &mut self.alg,
            "nonce" => &mut self.nonce,
            _ => return,
        };
        *slot = Some(value);
    }

    fn text_param<'p>(param: &'p Option<Param<'_>>) -> Option<&'p str> {
        match param {
            Some(Param::Text(s)) => Some(s),
            _ => None,
        }
    }

    fn integer_param(param: &Option<Param<'_>>) -> Option<i64> {
        match param {
            Some(Param::Integer(i)) => Some(*i),
            Some(_) => Some(-1),
            None => None,
        }
    }

    /// From a member the full RFC 8941 parser read.
    fn from_inner_list(list: &InnerList) -> Option<Member<'static>> {
        let mut names = String::new();
        let mut member = Member { text: Cow::Owned(inner_list_text(list)?), ..Member::default() };
        for item in &list.items {
            match component_name(item) {
                Ok(name) => {
                    let start = names.len();
                    names.push_str(name);
                    member.spans.push((start, names.len()));
                }
                Err(e) => {
                    member.bad_component.get_or_insert(e);
                }
            }
        }
        for (key, value) in &list.params {
            let param = match value {
                BareItem::String(s) => Param::Text(Cow::Owned(s.as_str().to_string())),
                BareItem::Integer(i) => Param::Integer(i64::from(*i)),
                _ => Param::Other,
            };
            member.set_param(key.as_str(), param);
        }
        member.names = Cow::Owned(names);
        Some(member)
    }

    /// The fast path: a field that is exactly our member, alone, in canonical form
    /// (as this project's `app` role sends it), read without the general parser.
    /// `None` for anything else, which the full parser then reads: canonical form
    /// means the text is its own serialisation, so both paths agree.
    fn parse_canonical(value: &'a [u8]) -> Option<Member<'a>> {
        let text = std::str::from_utf8(value).ok()?.strip_prefix(LABEL)?.strip_prefix('=')?;
        let mut member = Member {
            text: Cow::Borrowed(text),
            names: Cow::Borrowed(text),
            spans: Vec::with_capacity(16),
            plain_names: true,
            ..Member::default()
        };
        let bytes = text.as_bytes();
        if bytes.first() != Some(&b'(') {
            return None;
        }
        let mut i = 1;
        // Components: `"name"` separated by one space, up to `)`.
        if bytes.get(i) == Some(&b')') {
            i += 1;
        } else {
            loop {
                let (len, name) = canonical_string(&text[i..])?;
                if name.bytes().any(|b| b.is_ascii_uppercase()) {
                    member.bad_component.get_or_insert("a component with parameters or capitals");
                } else {
                    member.spans.push((i + 1, i + 1 + name.len()));
                }
                i += len;
                match bytes.get(i)? {
                    b' ' => i += 1,
                    b')' => {
                        i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        // Parameters: `;key=value`, each key once, values strings or integers.
        let mut seen: [Option<&str>; 8] = [None; 8];
        let mut count = 0;
        while i < bytes.len() {
            if bytes[i] != b';' {
                return None;
            }
            i += 1;
            let key_len = text[i..].bytes().take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(b)).count();
            let key = &text[i..i + key_len];
            if !key.starts_with(|c: char| c.is_ascii_lowercase() || c == '*') || bytes.get(i + key_len) != Some(&b'=') {
                return None;
            }
            if count == seen.len() || seen[..count].contains(&Some(key)) {
                return None;
            }
            seen[count] = Some(key);
            count += 1;
            i += key_len + 1;
            let param = if bytes.get(i) == Some(&b'"') {
                let (len, s) = canonical_string(&text[i..])?;
                i += len;
                Param::Text(Cow::Borrowed(s))
            } else {
                let digits = text[i..].bytes().take_while(u8::is_ascii_digit).count();
                let number = &text[i..i + digits];
                // No sign, no leading zero, at most 15 digits (RFC 8941 §3.3.1).
                if digits == 0 || digits > 15 || (digits > 1 && number.starts_with('0')) {
                    return None;
                }
                i += digits;
                Param::Integer(number.parse().ok()?)
            };
            member.set_param(key, param);
        }
        Some(member)
    }

    /// The signature base (§2.5) into `out`.
    fn write_base<F: FieldLines + ?Sized>(&self, message: &Message<'_, F>, out: &mut Vec<u8>) -> Result<(), BaseError> {
        if let Some(e) = self.bad_component {
            return Err(e);
        }
        for (i, name) in self.components().enumerate() {
            if self.components().take(i).any(|seen| seen == name) {
                return Err("a component is covered twice");
            }
            if self.plain_names {
                out.push(b'"');
                out.extend_from_slice(name.as_bytes());
                out.push(b'"');
            } else {
                push_sf_string_bytes(out, name).ok_or("a component identifier that is not a string")?;
            }
            out.extend_from_slice(b": ");
            push_component_value(out, message, name)?;
            out.push(b'\n');
        }
        out.extend_from_slice(b"\"@signature-params\": ");
        out.extend_from_slice(self.text.as_bytes());
        Ok(())
    }
}

/// A string item in canonical form at the start of `text` (no escapes: `"` and `\`
/// inside make it non-canonical for this path): its length with the quotes, and its content.
fn canonical_string(text: &str) -> Option<(usize, &str)> {
    let rest = text.strip_prefix('"')?;
    let len = rest.bytes().take_while(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\').count();
    if rest.as_bytes().get(len) != Some(&b'"') {
        return None;
    }
    Some((len + 2, &rest[..len]))
}

/// Appends `value` as an RFC 8941 string (§4.1.6); `None` when it holds a
/// character a string cannot.
fn push_sf_string(out: &mut String, value: &str) -> Option<()> {
    out.push('"');
    // Nothing to escape (header names, hex nonces): copied whole.
    if value.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.push_str(value);
        out.push('"');
        return Some(());
    }
    for c in value.chars() {
        if !(' '..='~').contains(&c) {
            return None;
        }
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Some(())
}

/// [`push_sf_string`] into the signature base's bytes.
fn push_sf_string_bytes(out: &mut Vec<u8>, value: &str) -> Option<()> {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        return Some(());
    }
    let mut quoted = String::new();
    push_sf_string(&mut quoted, value)?;
    out.extend_from_slice(quoted.as_bytes());
    Some(())
}

/// A covered component's name: a lowercase string without parameters (`;sf`,
/// `;key`, `;bs`, `;req` and `;tr` are not supported).
fn component_name(item: &Item) -> Result<&str, BaseError> {
    match &item.bare_item {
        BareItem::String(s) if item.params.is_empty() && !s.as_str().bytes().any(|b| b.is_ascii_uppercase()) => Ok(s.as_str()),
        BareItem::String(_) => Err("a component with parameters or capitals"),
        _ => Err("a component identifier that is not a string"),
    }
}

/// The serialisation of an inner list with its parameters.
fn inner_list_text(list: &InnerList) -> Option<String> {
    let entry = ListEntry::InnerList(list.clone());
    let mut ser = sfv::ListSerializer::new();
    ser.members(std::iter::once(&entry));
    ser.finish()
}

#[cfg(test)]
fn string_item(value: &str) -> Option<BareItem> {
    sfv::String::from_string(value.to_string()).ok().map(BareItem::String)
}

/// The two header values the `app` role adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureFields {
    pub signature_input: String,
    pub signature: String,
}

/// Signs `message` with the ring's first key, covering [`REQUIRED_DERIVED`] and
/// `fields` sorted by name. `None` when RFC 9421 does not define the ring's
/// algorithm, its first key cannot sign (a public key), or a value cannot stand in
/// a signature base.
pub fn sign<F: FieldLines + ?Sized>(
    ring: &KeyRing,
    message: &Message<'_, F>,
    fields: &[&str],
    created: u64,
    nonce: &str,
) -> Option<SignatureFields> {
    if !ring.algorithm.in_rfc9421() {
        return None;
    }
    let signing_key = ring.signing_key()?;
    let mut sorted: Vec<&str> = fields.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    // RFC 8941 integers have at most 15 digits.
    if created > 999_999_999_999_999 {
        return None;
    }
    // The member, serialised as RFC 8941 would, straight into `Signature-Input`.
    let mut input = String::with_capacity(256);
    input.push_str(LABEL);
    input.push_str("=(");
    for (i, name) in REQUIRED_DERIVED.iter().copied().chain(sorted.iter().copied()).enumerate() {
        if i > 0 {
            input.push(' ');
        }
        push_sf_string(&mut input, name)?;
    }
    input.push_str(");created=");
    input.push_str(&created.to_string());
    input.push_str(";keyid=");
    push_sf_string(&mut input, &signing_key.id)?;
    input.push_str(";alg=");
    push_sf_string(&mut input, ring.algorithm.name())?;
    input.push_str(";nonce=");
    push_sf_string(&mut input, nonce)?;
    let params = &input[LABEL.len() + 1..];

    let mut base = Vec::with_capacity(512);
    for name in REQUIRED_DERIVED.iter().copied().chain(sorted.iter().copied()) {
        push_sf_string_bytes(&mut base, name)?;
        base.extend_from_slice(b": ");
        push_component_value(&mut base, message, name).ok()?;
        base.push(b'\n');
    }
    base.extend_from_slice(b"\"@signature-params\": ");
    base.extend_from_slice(params.as_bytes());
    let mac = signing_key.signature_of(&base)?;

    let mut signature = String::with_capacity(LABEL.len() + 3 + mac.len().div_ceil(3) * 4);
    signature.push_str(LABEL);
    signature.push_str("=:");
    base64::engine::general_purpose::STANDARD.encode_string(&mac, &mut signature);
    signature.push(':');
    Some(SignatureFields { signature_input: input, signature })
}

/// A structured field's lines combined as RFC 8941 §4.2 parses them; `None` when absent.
pub fn combined(fields: &[(String, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for (_, value) in fields.iter().filter(|(n, _)| n == name) {
        match &mut out {
            None => out = Some(value.clone()),
            Some(all) => {
                all.extend_from_slice(b", ");
                all.extend_from_slice(value);
            }
        }
    }
    out
}

/// Our member of `Signature-Input` and of `Signature`. `Missing` when the request
/// carries no signature with our label; `Bad` when either field does not parse or
/// the members are not an inner list and a byte sequence.
pub fn find_signature(fields: &[(String, Vec<u8>)]) -> Result<(InnerList, Vec<u8>), Rejection> {
    let parse = |name: &str| -> Result<Option<Dictionary>, Rejection> {
        match combined(fields, name) {
            None => Ok(None),
            Some(raw) => Parser::new(&raw).parse::<Dictionary>().map(Some).map_err(|_| Rejection::Bad),
        }
    };
    let input = parse(SIGNATURE_INPUT)?;
    let signature = parse(SIGNATURE)?;
    let input_member = input.as_ref().and_then(|d| d.get(LABEL));
    let signature_member = signature.as_ref().and_then(|d| d.get(LABEL));
    match (input_member, signature_member) {
        (None, None) => Err(Rejection::Missing),
        (Some(ListEntry::InnerList(list)), Some(ListEntry::Item(Item { bare_item: BareItem::ByteSequence(mac), .. }))) => {
            Ok((list.clone(), mac.clone()))
        }
        _ => Err(Rejection::Bad),
    }
}

/// What a verified signature leaves for the replay check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signature's nonce, as the replay memory keys it.
    pub nonce: Nonce,
    /// `created` (seconds since the epoch): the replay memory's time bucket.
    pub created: u64,
    /// Whether `Signature-Input` and `Signature` were one line each holding our
    /// member alone (as our app role sends them): both go whole once consumed.
    pub alone: bool,
}

/// The derived components a receiver may require (`required_components`): those a
/// signature base can carry ([`component_value`]).
pub const DERIVED_COMPONENTS: [&str; 7] = ["@method", "@authority", "@scheme", "@target-uri", "@request-target", "@path", "@query"];

/// Whether `name` can be a required component: a derived component of
/// [`DERIVED_COMPONENTS`], or a header field name in lowercase (no parameters).
pub fn check_required_component(name: &str) -> Result<(), String> {
    if name.starts_with('@') {
        if DERIVED_COMPONENTS.contains(&name) {
            return Ok(());
        }
        return Err(format!(
            "{name:?} is not a derived component a request's signature can cover: one of {}",
            DERIVED_COMPONENTS.join(", ")
        ));
    }
    if crate::headers::is_lowercase_token(name) {
        return Ok(());
    }
    Err(format!(
        "{name:?} is not a component: a header field name in lowercase (\"x-forwarded-for\"), or a derived component (\"@target-uri\")"
    ))
}

/// Checks our signature on `message`. `is_protocol_header` names the headers that
/// must be covered whenever present.
pub fn verify<F: FieldLines + ?Sized>(
    ring: &KeyRing,
    message: &Message<'_, F>,
    now: SystemTime,
    max_skew: Duration,
    max_future: Duration,
    is_protocol_header: impl Fn(&str) -> bool,
) -> Result<Verified, Rejection> {
    verify_requiring(ring, message, now, max_skew, max_future, is_protocol_header, &[])
}

/// [`verify`], and every component of `required` must be covered too (the
/// receiver's `required_components`), present or not: a signature covering fewer is
/// refused before its key is even looked at, whatever it verifies.
pub fn verify_requiring<F: FieldLines + ?Sized>(
    ring: &KeyRing,
    message: &Message<'_, F>,
    now: SystemTime,
    max_skew: Duration,
    max_future: Duration,
    is_protocol_header: impl Fn(&str) -> bool,
    required: &[String],
) -> Result<Verified, Rejection> {
    let (member, mac, alone) = find_member(message.fields)?;
    if required.iter().any(|name| !member.components().any(|c| c == name)) {
        return Err(Rejection::Bad);
    }
    let alg = match &member.alg {
        Some(Param::Text(named)) => Some(Some(named.as_ref())),
        Some(_) => Some(None),
        None => None,
    };
    if !alg_named_suits(ring.algorithm, alg) {
        return Err(Rejection::Bad);
    }
    let key = Member::text_param(&member.keyid).and_then(|id| ring.key(id)).ok_or(Rejection::Bad)?;
    let nonce = Member::text_param(&member.nonce).filter(|n| !n.is_empty()).ok_or(Rejection::Bad)?;

    let now_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let created = Member::integer_param(&member.created).and_then(|c| u64::try_from(c).ok()).ok_or(Rejection::Stale)?;
    if now_secs.abs_diff(created) > max_skew.as_secs() {
        return Err(Rejection::Stale);
    }
    if created > now_secs.saturating_add(max_future.as_secs()) {
        return Err(Rejection::DatedAhead);
    }
    if let Some(expires) = Member::integer_param(&member.expires) {
        if u64::try_from(expires).map_or(true, |e| e < now_secs) {
            return Err(Rejection::Stale);
        }
    }

    let covered = |name: &str| member.components().any(|c| c == name);
    let uncovered_field = message.fields.lines().any(|(n, _)| is_protocol_header(n) && !covered(n));
    if uncovered_field || REQUIRED_DERIVED.iter().any(|d| !covered(d)) {
        return Err(Rejection::Bad);
    }
    let mut base = Vec::with_capacity(512);
    member.write_base(message, &mut base).map_err(|_| Rejection::Bad)?;
    if !key.verifies(&base, &mac) {
        return Err(Rejection::Bad);
    }
    Ok(Verified { nonce: nonce_key(nonce), created, alone })
}

/// Our members of `Signature-Input` and `Signature`: by the fast path when each
/// field is one line holding our member alone in canonical form, else by the full
/// RFC 8941 parser ([`find_signature`]).
fn find_member<F: FieldLines + ?Sized>(fields: &F) -> Result<(Member<'_>, Vec<u8>, bool), Rejection> {
    let only = |name: &str| {
        let mut lines = fields.lines().filter(|(n, _)| *n == name);
        match (lines.next(), lines.next()) {
            (Some((_, value)), None) => Some(value),
            _ => None,
        }
    };
    if let (Some(input), Some(signature)) = (only(SIGNATURE_INPUT), only(SIGNATURE)) {
        if let (Some(member), Some(mac)) = (Member::parse_canonical(input), canonical_signature(signature)) {
            return Ok((member, mac, true));
        }
    }
    let owned: Vec<(String, Vec<u8>)> = fields.lines().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
    let (list, mac) = find_signature(&owned)?;
    let member = Member::from_inner_list(&list).ok_or(Rejection::Bad)?;
    Ok((member, mac, false))
}

/// `wsgiproxy=:{base64}:` alone, canonical base64 (padded, no stray bits): the signature.
fn canonical_signature(value: &[u8]) -> Option<Vec<u8>> {
    let encoded = value.strip_prefix(LABEL.as_bytes())?.strip_prefix(b"=:")?.strip_suffix(b":")?;
    base64::engine::general_purpose::STANDARD.decode(encoded).ok()
}

/// [`alg_suits`] on the `alg` parameter's text: `None` when absent, `Some(None)`
/// when it is not a string.
fn alg_named_suits(algorithm: Algorithm, alg: Option<Option<&str>>) -> bool {
    algorithm.in_rfc9421()
        && match alg {
            Some(Some(named)) => named == algorithm.name(),
            Some(None) => false,
            None => algorithm.is_asymmetric(),
        }
}

/// Whether a signature's `alg` parameter suits a ring of `algorithm`, which alone
/// decides how the signature is checked (never the request: no algorithm
/// confusion). RFC 9421 must define the algorithm; `alg` must name it when present
/// (an HMAC receiver refuses `ed25519`, an Ed25519 receiver `hmac-sha256`); it may
/// be left out with a public-key algorithm only, whose key says what it is (§3.2),
/// while HMAC requires it as it always has.
pub fn alg_suits(algorithm: Algorithm, alg: Option<&BareItem>) -> bool {
    let named = alg.map(|item| match item {
        BareItem::String(named) => Some(named.as_str()),
        _ => None,
    });
    alg_named_suits(algorithm, named)
}

/// The replay memory's key for an RFC 9421 nonce (any string): a digest, kept
/// apart from v1's raw nonces by a prefix.
pub fn nonce_key(nonce: &str) -> Nonce {
    let mut key = [0u8; NONCE_LEN];
    key.copy_from_slice(&nonce_digest(nonce)[..NONCE_LEN]);
    key
}

const NONCE_PREFIX: &[u8] = b"wsgiproxy-rfc9421-nonce\n";

/// SHA-256 of the prefix and the nonce: `sha2` portable code.
#[cfg(any(not(feature = "ring"), test))]
fn nonce_digest_sha2(nonce: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::new().chain_update(NONCE_PREFIX).chain_update(nonce.as_bytes()).finalize().into()
}

#[cfg(not(feature = "ring"))]
fn nonce_digest(nonce: &str) -> [u8; 32] {
    nonce_digest_sha2(nonce)
}

/// The same digest on ring's SHA-256 where the host builds it (the native module):
/// its assembly takes fewer instructions than `sha2`'s portable code on CPUs
/// without SHA-NI, as for the MAC (`crate::hmac_key`). Same bytes either way.
#[cfg(feature = "ring")]
fn nonce_digest(nonce: &str) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(NONCE_PREFIX);
    context.update(nonce.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// What is left of `Signature-Input` or `Signature` once our member is consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// No member of ours (or not a dictionary): the field is left as it is.
    NotOurs,
    /// Ours was the only member: the field goes.
    All,
    /// The other members, serialised.
    Rest(String),
}

pub fn without_our_member(value: &[u8]) -> Consumed {
    // What this project's app role sends: our member alone, read without the full parser.
    if Member::parse_canonical(value).is_some() || canonical_signature(value).is_some() {
        return Consumed::All;
    }
    let Ok(mut dictionary) = Parser::new(value).parse::<Dictionary>() else {
        return Consumed::NotOurs;
    };
    if dictionary.shift_remove(LABEL).is_none() {
        return Consumed::NotOurs;
    }
    match dictionary.serialize() {
        Some(rest) => Consumed::Rest(rest),
        None => Consumed::All,
    }
}

#[cfg(test)]
mod required_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    /// RFC 9421 Appendix B.1.5, "test-shared-secret".
    const RFC_SHARED_SECRET: &str = "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
    }

    /// The request of RFC 9421 Appendix B.2.
    fn rfc_request() -> Vec<(String, Vec<u8>)> {
        fields(&[
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
            ("content-digest", "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"),
            ("content-length", "18"),
        ])
    }

    fn message<'a>(target: &'a str, authority: &'a str, f: &'a [(String, Vec<u8>)]) -> Message<'a> {
        Message { method: b"POST", https: false, authority: authority.as_bytes(), target: target.as_bytes(), fields: f }
    }

    fn ring(id: &str, secret: &[u8]) -> KeyRing {
        KeyRing::new(Algorithm::HmacSha256, &[(id.to_string(), secret.to_vec())]).unwrap()
    }

    fn input_member(value: &str) -> InnerList {
        match Parser::new(value).parse::<Dictionary>().unwrap().get("sig-b25") {
            Some(ListEntry::InnerList(l)) => l.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rfc_9421_appendix_b_2_5_hmac_sha256() {
        let f = rfc_request();
        let m = message("/foo?param=Value&Pet=dog", "example.com", &f);
        let list = input_member(r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#);
        let base = signature_base(&m, &list).unwrap();
        assert_eq!(
            base,
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
             \"@authority\": example.com\n\
             \"content-type\": application/json\n\
             \"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
        );
        let secret = B64.decode(RFC_SHARED_SECRET).unwrap();
        let r = ring("test-shared-secret", &secret);
        let key = r.key("test-shared-secret").unwrap();
        let mac = key.mac_of(base.as_bytes());
        assert_eq!(B64.encode(&mac), "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=");
        assert!(key.verifies(base.as_bytes(), &mac));
        let mut flipped = mac.clone();
        flipped[0] ^= 1;
        assert!(!key.verifies(base.as_bytes(), &flipped));
        // The Signature field of the appendix parses to the same MAC.
        let with_sig = [
            f.clone(),
            fields(&[
                ("signature-input", r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#),
                ("signature", "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"),
            ]),
        ]
        .concat();
        let parsed = Parser::new(&combined(&with_sig, SIGNATURE).unwrap()).parse::<Dictionary>().unwrap();
        assert_eq!(parsed.get("sig-b25"), Some(&ListEntry::Item(Item::new(BareItem::ByteSequence(mac)))));
    }

    #[test]
    fn derived_components() {
        let f = fields(&[]);
        let m = message("/foo?param=Value&Pet=dog", "Example.COM:80", &f);
        assert_eq!(component_value(&m, "@method").unwrap(), "POST");
        assert_eq!(component_value(&m, "@authority").unwrap(), "example.com");
        assert_eq!(component_value(&m, "@path").unwrap(), "/foo");
        assert_eq!(component_value(&m, "@query").unwrap(), "?param=Value&Pet=dog");
        assert_eq!(component_value(&m, "@request-target").unwrap(), "/foo?param=Value&Pet=dog");
        assert_eq!(component_value(&m, "@target-uri").unwrap(), "http://Example.COM:80/foo?param=Value&Pet=dog");
        assert_eq!(component_value(&m, "@scheme").unwrap(), "http");
        assert!(component_value(&m, "@status").is_err());
        assert!(component_value(&m, "@query-param").is_err());
        // An absent query is "?" alone; so is an empty one.
        assert_eq!(component_value(&message("/p", "h", &f), "@query").unwrap(), "?");
        assert_eq!(component_value(&message("/p?", "h", &f), "@query").unwrap(), "?");
        let list = InnerList::new(vec![Item::new(string_item("@query").unwrap())]);
        assert_eq!(signature_base(&message("/p", "h", &f), &list).unwrap(), "\"@query\": ?\n\"@signature-params\": (\"@query\")");
    }

    #[test]
    fn nonce_digest_is_sha256_of_the_prefix_and_nonce() {
        for nonce in ["00112233445566778899aabbccddeeff", "", "a nonce of any text, longer than one SHA-256 block of sixty-four bytes"] {
            assert_eq!(nonce_digest(nonce), nonce_digest_sha2(nonce));
        }
        assert_eq!(
            hex::encode(nonce_key("00112233445566778899aabbccddeeff")),
            hex::encode(&nonce_digest_sha2("00112233445566778899aabbccddeeff")[..16])
        );
    }

    /// The check that skips the copy agrees with the normalisation it skips.
    #[test]
    fn normal_authorities_are_recognised() {
        for authority in [
            "backend",
            "backend:80",
            "backend:080",
            "backend:443",
            "backend:8080",
            "backend:",
            "backend:0",
            "backend:x",
            "Backend:8080",
            "[2001:db8::1]:8080",
            "10.0.0.1:80",
            "10.0.0.1:8080",
            "h:00080",
            "h:0443",
            "h:4430",
        ] {
            for https in [false, true] {
                let normal = normalize_authority(authority, https) == authority;
                // Brackets always take the slow path; otherwise the two agree.
                let expected = normal && !authority.contains('[');
                assert_eq!(authority_is_normal(authority.as_bytes(), https), expected, "{authority} {https}");
            }
        }
    }

    #[test]
    fn authorities_are_normalised() {
        assert_eq!(normalize_authority("Backend:80", false), "backend");
        assert_eq!(normalize_authority("backend:080", false), "backend");
        assert_eq!(normalize_authority("backend:443", false), "backend:443");
        assert_eq!(normalize_authority("backend:443", true), "backend");
        assert_eq!(normalize_authority("backend:8080", true), "backend:8080");
        assert_eq!(normalize_authority("[2001:DB8::1]:80", false), "[2001:db8::1]");
        assert_eq!(normalize_authority("[2001:db8::1]", false), "[2001:db8::1]");
        assert_eq!(normalize_authority("[2001:db8::1]:8080", false), "[2001:db8::1]:8080");
        assert_eq!(normalize_authority("10.0.0.1:80", false), "10.0.0.1");
    }

    #[test]
    fn repeated_fields_are_combined() {
        let f = fields(&[("x-list", " a "), ("other", "z"), ("x-list", "b,c"), ("x-empty", "")]);
        let m = message("/", "h", &f);
        assert_eq!(component_value(&m, "x-list").unwrap(), "a, b,c");
        assert_eq!(component_value(&m, "x-empty").unwrap(), "");
        assert_eq!(component_value(&m, "x-absent"), Err("a covered header field is absent"));
        let bad = fields(&[("x-bin", "caf\u{e9}")]);
        assert!(component_value(&message("/", "h", &bad), "x-bin").is_err());
    }

    fn app_message<'a>(f: &'a [(String, Vec<u8>)]) -> Message<'a> {
        Message { method: b"GET", https: false, authority: b"backend:8080", target: b"/app/x?y=1", fields: f }
    }

    const NOW: u64 = 1_795_485_600;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn protocol(name: &str) -> bool {
        crate::signature::is_signed_header(name)
    }

    /// Signs the protocol headers of `f` and returns them with the two signature fields added.
    fn signed(r: &KeyRing, f: &[(String, Vec<u8>)], created: u64) -> Vec<(String, Vec<u8>)> {
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).filter(|n| protocol(n)).collect();
        let s = sign(r, &app_message(f), &names, created, "00112233445566778899aabbccddeeff").unwrap();
        [f.to_vec(), fields(&[("signature-input", &s.signature_input), ("signature", &s.signature)])].concat()
    }

    #[test]
    fn signs_what_the_app_sends_and_verifies_it() {
        let r = ring("k1", b"0123456789abcdef");
        let f = fields(&[("x-wsgiproxy-version", "0.1"), ("accept", "*/*"), ("x-forwarded-for", "10.0.0.1")]);
        let names = ["x-wsgiproxy-version", "x-forwarded-for"];
        let s = sign(&r, &app_message(&f), &names, NOW, "00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(
            s.signature_input,
            r#"wsgiproxy=("@method" "@authority" "@path" "@query" "x-forwarded-for" "x-wsgiproxy-version");created=1795485600;keyid="k1";alg="hmac-sha256";nonce="00112233445566778899aabbccddeeff""#
        );
        // The MAC over the documented base, computed independently.
        let base = "\"@method\": GET\n\"@authority\": backend:8080\n\"@path\": /app/x\n\"@query\": ?y=1\n\
                    \"x-forwarded-for\": 10.0.0.1\n\"x-wsgiproxy-version\": 0.1\n\"@signature-params\": "
            .to_string()
            + s.signature_input.trim_start_matches("wsgiproxy=");
        let expected = r.key("k1").unwrap().mac_of(base.as_bytes());
        assert_eq!(s.signature, format!("wsgiproxy=:{}:", B64.encode(expected)));

        let all = signed(&r, &f, NOW);
        let v = verify(&r, &app_message(&all), now(), Duration::from_secs(300), Duration::from_secs(2), protocol).unwrap();
        assert_eq!(v.nonce, nonce_key("00112233445566778899aabbccddeeff"));
        assert_eq!(v.created, NOW);
        // Any key of the ring verifies; SHA-1 rings neither sign nor verify this format.
        let rotated = KeyRing::new(
            Algorithm::HmacSha256,
            &[("k2".into(), b"another-key-0123456".to_vec()), ("k1".into(), b"0123456789abcdef".to_vec())],
        )
        .unwrap();
        assert!(verify(&rotated, &app_message(&all), now(), Duration::from_secs(300), Duration::from_secs(2), protocol).is_ok());
        let sha1 = KeyRing::new(Algorithm::HmacSha1, &[("k1".into(), b"0123456789abcdef".to_vec())]).unwrap();
        assert!(sign(&sha1, &app_message(&f), &names, NOW, "n").is_none());
        assert_eq!(
            verify(&sha1, &app_message(&all), now(), Duration::from_secs(300), Duration::from_secs(2), protocol),
            Err(Rejection::Bad)
        );
    }

    #[test]
    fn verification_refuses() {
        let r = ring("k1", b"0123456789abcdef");
        let skew = Duration::from_secs(300);
        let f = fields(&[("x-wsgiproxy-version", "0.1"), ("x-forwarded-for", "10.0.0.1")]);
        let all = signed(&r, &f, NOW);
        let check = |f: &[(String, Vec<u8>)]| verify(&r, &app_message(f), now(), skew, Duration::from_secs(2), protocol);
        assert!(check(&all).is_ok());

        // Tampered component, added protocol header, unsigned request.
        let mut tampered = all.clone();
        tampered[1].1 = b"10.0.0.2".to_vec();
        assert_eq!(check(&tampered), Err(Rejection::Bad));
        let added = [all.clone(), fields(&[("x-script-name", "/evil")])].concat();
        assert_eq!(check(&added), Err(Rejection::Bad));
        let unrelated = [all.clone(), fields(&[("accept", "*/*")])].concat();
        assert!(check(&unrelated).is_ok(), "headers outside the protocol need no coverage");
        assert_eq!(check(&f), Err(Rejection::Missing));
        let moved = Message { target: b"/app/x?y=2", ..app_message(&all) };
        assert_eq!(verify(&r, &moved, now(), skew, Duration::from_secs(2), protocol), Err(Rejection::Bad));

        // Stale either way; in the window at its edges.
        assert_eq!(check(&signed(&r, &f, NOW - 301)), Err(Rejection::Stale));
        assert_eq!(check(&signed(&r, &f, NOW + 301)), Err(Rejection::Stale));
        assert!(check(&signed(&r, &f, NOW - 300)).is_ok());
        // Ahead of the receiver's clock: at most max_future (2 s here).
        assert!(check(&signed(&r, &f, NOW + 2)).is_ok());
        assert_eq!(check(&signed(&r, &f, NOW + 3)), Err(Rejection::DatedAhead));
        assert_eq!(check(&signed(&r, &f, NOW + 60)), Err(Rejection::DatedAhead));

        // Another key, another label only.
        let other = ring("k1", b"fedcba9876543210");
        assert_eq!(check(&signed(&other, &f, NOW)), Err(Rejection::Bad));
        let relabelled: Vec<(String, Vec<u8>)> =
            all.iter().map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).replace("wsgiproxy=", "other=").into_bytes())).collect();
        assert_eq!(check(&relabelled), Err(Rejection::Missing));
    }

    /// A signature made by hand from the given Signature-Input member, to test the policy.
    fn hand_signed(r: &KeyRing, f: &[(String, Vec<u8>)], member: &str) -> Vec<(String, Vec<u8>)> {
        let input = format!("wsgiproxy={member}");
        let list = match Parser::new(&input).parse::<Dictionary>().unwrap().get(LABEL) {
            Some(ListEntry::InnerList(l)) => l.clone(),
            other => panic!("{other:?}"),
        };
        let base = signature_base(&app_message(f), &list).unwrap();
        let mac = r.key("k1").map(|k| k.mac_of(base.as_bytes())).unwrap_or_default();
        let sig = format!("other=:AAAA:, wsgiproxy=:{}:", B64.encode(mac));
        [f.to_vec(), fields(&[("signature-input", &format!("other=(\"@method\");created=1, {input}")), ("signature", &sig)])].concat()
    }

    #[test]
    fn parameters_policy() {
        let r = ring("k1", b"0123456789abcdef");
        let f = fields(&[("x-wsgiproxy-version", "0.1")]);
        let check = |member: &str| {
            verify(&r, &app_message(&hand_signed(&r, &f, member)), now(), Duration::from_secs(300), Duration::from_secs(2), protocol)
        };
        let all = r#"("@method" "@authority" "@path" "@query" "x-wsgiproxy-version")"#;
        let ok = format!(r#"{all};created={NOW};keyid="k1";alg="hmac-sha256";nonce="n1""#);
        assert!(check(&ok).is_ok(), "other labels are ignored");
        // Parameter order and extra components are free.
        assert!(check(&format!(r#"("@query" "@path" "x-wsgiproxy-version" "@authority" "@method" "@scheme");nonce="n1";alg="hmac-sha256";keyid="k1";created={NOW};tag="t""#)).is_ok());
        assert!(check(&format!(r#"{all};created={NOW};keyid="k1";alg="hmac-sha256";nonce="n1";expires={}"#, NOW + 1)).is_ok());
        assert_eq!(
            check(&format!(r#"{all};created={NOW};keyid="k1";alg="hmac-sha256";nonce="n1";expires={}"#, NOW - 1)),
            Err(Rejection::Stale)
        );
        assert_eq!(check(&format!(r#"{all};keyid="k1";alg="hmac-sha256";nonce="n1""#)), Err(Rejection::Stale));
        assert_eq!(check(&format!(r#"{all};created="{NOW}";keyid="k1";alg="hmac-sha256";nonce="n1""#)), Err(Rejection::Stale));
        assert_eq!(check(&format!(r#"{all};created={NOW};keyid="k1";nonce="n1""#)), Err(Rejection::Bad), "alg is required");
        assert_eq!(check(&format!(r#"{all};created={NOW};keyid="k1";alg="rsa-pss-sha512";nonce="n1""#)), Err(Rejection::Bad));
        assert_eq!(check(&format!(r#"{all};created={NOW};keyid="k9";alg="hmac-sha256";nonce="n1""#)), Err(Rejection::Bad));
        assert_eq!(check(&format!(r#"{all};created={NOW};keyid="k1";alg="hmac-sha256""#)), Err(Rejection::Bad), "nonce is required");
        // Each derived component is required; none may be covered twice or carry parameters.
        let no_query =
            format!(r#"("@method" "@authority" "@path" "x-wsgiproxy-version");created={NOW};keyid="k1";alg="hmac-sha256";nonce="n1""#);
        assert_eq!(check(&no_query), Err(Rejection::Bad));
        let twice = format!(
            r#"("@method" "@method" "@authority" "@path" "@query" "x-wsgiproxy-version");created={NOW};keyid="k1";alg="hmac-sha256";nonce="n1""#
        );
        assert_eq!(
            verify(&r, &app_message(&fields(&[])), now(), Duration::from_secs(300), Duration::from_secs(2), protocol).err(),
            Some(Rejection::Missing)
        );
        assert!(signature_base(&app_message(&f), &input_member(&format!("sig-b25={twice}"))).is_err());
    }

    #[test]
    fn consumed_member_is_removed() {
        assert_eq!(without_our_member(br#"wsgiproxy=("@method");created=1, other=("@path")"#), Consumed::Rest(r#"other=("@path")"#.into()));
        assert_eq!(without_our_member(b"wsgiproxy=:AAAA:"), Consumed::All);
        assert_eq!(without_our_member(b"other=:AAAA:"), Consumed::NotOurs);
        assert_eq!(without_our_member(b"not a dictionary ("), Consumed::NotOurs);
    }

    impl PartialEq for Member<'_> {
        fn eq(&self, other: &Member<'_>) -> bool {
            let components = |m: &Member<'_>| m.components().map(str::to_string).collect::<Vec<_>>();
            (&*self.text, components(self), self.bad_component, &self.created, &self.expires, &self.keyid, &self.alg, &self.nonce)
                == (
                    &*other.text,
                    components(other),
                    other.bad_component,
                    &other.created,
                    &other.expires,
                    &other.keyid,
                    &other.alg,
                    &other.nonce,
                )
        }
    }

    /// The fast path reads exactly what the full parser reads, or leaves it to it.
    #[test]
    fn fast_path_agrees_with_the_full_parser() {
        let canonical = [
            r#"wsgiproxy=("@method" "@authority" "@path" "@query" "x-forwarded-for");created=1795485600;keyid="k1";alg="hmac-sha256";nonce="00ff""#,
            r#"wsgiproxy=();created=0"#,
            r#"wsgiproxy=("")"#,
            r#"wsgiproxy=("@METHOD" "x");created=5;expires=6;tag="t";keyid="a b""#,
            r#"wsgiproxy=("@method");*x.y-z_1=2;alg="ed25519""#,
        ];
        let full = |value: &str| match Parser::new(value).parse::<Dictionary>().ok().and_then(|d| d.get(LABEL).cloned()) {
            Some(ListEntry::InnerList(list)) => Member::from_inner_list(&list),
            _ => None,
        };
        for value in canonical {
            let fast = Member::parse_canonical(value.as_bytes());
            assert!(fast.is_some(), "{value}");
            assert_eq!(fast, full(value), "{value}");
            assert_eq!(without_our_member(value.as_bytes()), Consumed::All);
        }
        // Not canonical or not ours alone: the full parser's business.
        let others = [
            r#"wsgiproxy=("@method");created=01"#,
            r#"wsgiproxy=("@method" );created=1"#,
            r#"wsgiproxy=( "@method");created=1"#,
            r#"wsgiproxy=("@method");created=1;created=2"#,
            r#"wsgiproxy=("@method");created=-1"#,
            r#"wsgiproxy=("@method");created=1234567890123456"#,
            r#"wsgiproxy=("@method");keyid="a"b""#,
            r#"wsgiproxy=("@method");flag"#,
            r#"wsgiproxy=("@method");created=1.5"#,
            r#"wsgiproxy=("@method";sf);created=1"#,
            r#"wsgiproxy=("@method");Created=1"#,
            r#"wsgiproxy=("@method"), other=("@path")"#,
            r#"other=("@method")"#,
            r#"wsgiproxy=("@method") "#,
        ];
        for value in others {
            assert_eq!(Member::parse_canonical(value.as_bytes()), None, "{value}");
        }
        assert_eq!(canonical_signature(b"wsgiproxy=:AAAA:"), Some(vec![0, 0, 0]));
        for value in [&b"wsgiproxy=:AAA:"[..], b"wsgiproxy=:AAB=:", b"wsgiproxy=:AAAA:, x=1", b"wsgiproxy=:AAAA"] {
            assert_eq!(canonical_signature(value), None);
        }
    }

    #[test]
    fn malformed_input_never_panics() {
        let r = ring("k1", b"0123456789abcdef");
        let inputs: [&[u8]; 12] = [
            b"",
            b"wsgiproxy",
            b"wsgiproxy=",
            b"wsgiproxy=(",
            b"wsgiproxy=(\"@method\";created=99999999999999999",
            b"wsgiproxy=(1 2 3);created=1",
            b"wsgiproxy=(\"@METHOD\");created=1",
            b"wsgiproxy=(\"x\";sf);created=-5;expires=-1",
            b"wsgiproxy=:!!!:",
            b"\xff\xfe",
            b"wsgiproxy=(\"@method\");created=1795485600;keyid=\"k1\";alg=\"hmac-sha256\";nonce=\"\"",
            b"wsgiproxy=%\"display\"",
        ];
        for input in inputs {
            for sig in [&b"wsgiproxy=:AAAA:"[..], b"wsgiproxy=1", b"", b"(("] {
                let f = vec![
                    ("signature-input".to_string(), input.to_vec()),
                    ("signature".to_string(), sig.to_vec()),
                    ("x-bin".to_string(), b"\x00\xff".to_vec()),
                ];
                assert!(verify(&r, &app_message(&f), now(), Duration::from_secs(300), Duration::from_secs(2), protocol).is_err());
                let _ = without_our_member(input);
            }
        }
    }
}
