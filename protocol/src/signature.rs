//! Signed requests: `X-WSGIProxy-Signature: {key id} {nonce} {hex mac}`.
//!
//! The MAC is an HMAC (SHA-1 or SHA-256) over a canonical string of what the
//! receiver sees: method, host, path with query, the `Date` header, the nonce, the
//! key id and every protocol header sent (see [`canonical_string`]). The receiver
//! checks the MAC in constant time, the Date against a skew window, and the nonce
//! against the nonces it has seen inside that window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::asymmetric::{AsymmetricKey, PrivateKey, PublicKey};
use crate::headers::{is_protocol_header, X_WSGIPROXY_SIGNATURE};
use crate::hmac_key::{HmacHash, HmacKey};
use crate::reason::Reason;

pub const NONCE_LEN: usize = 16;
pub type Nonce = [u8; NONCE_LEN];

const CANONICAL_VERSION: &str = "wsgiproxy-signature-v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha1,
    HmacSha256,
    /// EdDSA on edwards25519 (RFC 9421 §3.3.6): a public-key algorithm, RFC 9421 only.
    Ed25519,
    /// ECDSA on P-256 with SHA-256 (RFC 9421 §3.3.4): a public-key algorithm, RFC 9421 only.
    EcdsaP256Sha256,
    /// ECDSA on P-384 with SHA-384 (RFC 9421 §3.3.5): a public-key algorithm, RFC 9421 only.
    EcdsaP384Sha384,
    /// RSASSA-PSS with SHA-512 (RFC 9421 §3.3.1): a public-key algorithm, RFC 9421 only.
    RsaPssSha512,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 9421 §3.3.2): a public-key algorithm, RFC 9421 only.
    RsaV15Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha1 => "hmac-sha1",
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Algorithm::EcdsaP384Sha384 => "ecdsa-p384-sha384",
            Algorithm::RsaPssSha512 => "rsa-pss-sha512",
            Algorithm::RsaV15Sha256 => "rsa-v1_5-sha256",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "hmac-sha1" => Some(Algorithm::HmacSha1),
            "hmac-sha256" => Some(Algorithm::HmacSha256),
            "ed25519" => Some(Algorithm::Ed25519),
            "ecdsa-p256-sha256" => Some(Algorithm::EcdsaP256Sha256),
            "ecdsa-p384-sha384" => Some(Algorithm::EcdsaP384Sha384),
            "rsa-pss-sha512" => Some(Algorithm::RsaPssSha512),
            "rsa-v1_5-sha256" => Some(Algorithm::RsaV15Sha256),
            _ => None,
        }
    }

    /// Whether the sender signs with a private key and receivers verify with its
    /// public key (instead of a secret both sides hold).
    pub fn is_asymmetric(self) -> bool {
        !matches!(self, Algorithm::HmacSha1 | Algorithm::HmacSha256)
    }

    /// Whether RFC 9421 defines it (its name there is [`Algorithm::name`]).
    pub fn in_rfc9421(self) -> bool {
        self != Algorithm::HmacSha1
    }
}

/// Keyed MAC state, built once per configuration; or, for the public-key
/// algorithms, one half of a key pair.
#[derive(Clone)]
enum KeyedMac {
    Hmac(HmacKey),
    /// A private key (the `app` role): signs, and verifies with its public half, made
    /// once, when first needed (a P-256 public key builds its verification table).
    Private(PrivateKey, Box<std::sync::OnceLock<PublicKey>>),
    /// A public key (the `middleware` role): verifies only.
    Public(PublicKey),
}

impl KeyedMac {
    fn new(algorithm: Algorithm, secret: &[u8]) -> Result<Self, String> {
        let hash = match algorithm {
            Algorithm::HmacSha1 => HmacHash::Sha1,
            Algorithm::HmacSha256 => HmacHash::Sha256,
            Algorithm::Ed25519
            | Algorithm::EcdsaP256Sha256
            | Algorithm::EcdsaP384Sha384
            | Algorithm::RsaPssSha512
            | Algorithm::RsaV15Sha256 => {
                return Err(format!("{} keys are key pairs, not secrets (see KeyRing::asymmetric)", algorithm.name()))
            }
        };
        Ok(KeyedMac::Hmac(HmacKey::new(hash, secret)?))
    }

    fn mac(&self, message: &[u8]) -> Vec<u8> {
        match self {
            KeyedMac::Hmac(key) => key.mac(message),
            // Empty, which no receiver accepts: see `SigningKey::signature_of`.
            KeyedMac::Private(key, _) => key.sign(message).unwrap_or_default(),
            KeyedMac::Public(_) => Vec::new(),
        }
    }

    fn verify(&self, message: &[u8], mac: &[u8]) -> bool {
        match self {
            KeyedMac::Hmac(key) => key.verify(message, mac),
            KeyedMac::Private(key, public) => public.get_or_init(|| key.public_key()).verifies(message, mac),
            KeyedMac::Public(key) => key.verifies(message, mac),
        }
    }
}

/// One named key. Its secret is never kept in the clear nor printed.
#[derive(Clone)]
pub struct SigningKey {
    pub id: String,
    mac: KeyedMac,
}

impl SigningKey {
    /// This key's MAC of `message`.
    pub fn mac_of(&self, message: &[u8]) -> Vec<u8> {
        self.mac.mac(message)
    }

    /// Whether `mac` is this key's MAC of `message`, compared in constant time; for
    /// a public-key algorithm, whether it is a signature of `message` by this key
    /// (or by the private key's public half).
    pub fn verifies(&self, message: &[u8], mac: &[u8]) -> bool {
        self.mac.verify(message, mac)
    }

    /// The public half of a public-key algorithm's key (what a key directory
    /// publishes); `None` for an HMAC key, which is a secret.
    pub fn public_key(&self) -> Option<PublicKey> {
        match &self.mac {
            KeyedMac::Private(key, public) => Some(public.get_or_init(|| key.public_key()).clone()),
            KeyedMac::Public(key) => Some(key.clone()),
            KeyedMac::Hmac(_) => None,
        }
    }

    /// This key's MAC or signature of `message`; `None` for a public key, which
    /// cannot sign.
    pub fn signature_of(&self, message: &[u8]) -> Option<Vec<u8>> {
        match &self.mac {
            KeyedMac::Private(key, _) => key.sign(message),
            KeyedMac::Public(_) => None,
            KeyedMac::Hmac(_) => Some(self.mac.mac(message)),
        }
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, <secret>)", self.id)
    }
}

/// The keys of one configuration: the first signs, all verify.
#[derive(Clone, Debug)]
pub struct KeyRing {
    pub algorithm: Algorithm,
    keys: Vec<SigningKey>,
}

/// Shortest secret accepted: a guessable key makes the signature decoration.
pub const MIN_SECRET_LEN: usize = 16;

impl KeyRing {
    /// `keys` are `(id, secret)` pairs, the signing key first.
    pub fn new(algorithm: Algorithm, keys: &[(String, Vec<u8>)]) -> Result<KeyRing, String> {
        if keys.is_empty() {
            return Err("at least one key is needed".into());
        }
        let mut ring = Vec::with_capacity(keys.len());
        for (id, secret) in keys {
            if !is_key_id(id) {
                return Err(format!("key id {id:?} must be 1 to 64 letters, digits, '.', '_' or '-'"));
            }
            if ring.iter().any(|k: &SigningKey| &k.id == id) {
                return Err(format!("key id {id:?} is given twice"));
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!("key {id:?} is shorter than {MIN_SECRET_LEN} bytes"));
            }
            ring.push(SigningKey { id: id.clone(), mac: KeyedMac::new(algorithm, secret)? });
        }
        Ok(KeyRing { algorithm, keys: ring })
    }

    pub fn signing_key(&self) -> Option<&SigningKey> {
        self.keys.first()
    }

    /// A ring of `algorithm` with no key: a receiver whose keys all come from key
    /// directories (`crate::key_directory`) verifies with those alone.
    pub fn empty(algorithm: Algorithm) -> KeyRing {
        KeyRing { algorithm, keys: Vec::new() }
    }

    pub fn key(&self, id: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Every key, the signing key first.
    pub fn keys(&self) -> impl Iterator<Item = &SigningKey> + '_ {
        self.keys.iter()
    }
}

/// The rings of the public-key algorithms.
impl KeyRing {
    /// `keys` are `(id, key)` pairs, the signing key first, each of `algorithm`: a
    /// sender's ring holds private keys, a receiver's public keys (the configuration
    /// checks which role holds which).
    pub fn asymmetric(algorithm: Algorithm, keys: Vec<(String, AsymmetricKey)>) -> Result<KeyRing, String> {
        if !algorithm.is_asymmetric() {
            return Err(format!("{} is not a public-key algorithm", algorithm.name()));
        }
        if keys.is_empty() {
            return Err("at least one key is needed".into());
        }
        let mut ring = Vec::with_capacity(keys.len());
        for (id, key) in keys {
            if !is_key_id(&id) {
                return Err(format!("key id {id:?} must be 1 to 64 letters, digits, '.', '_' or '-'"));
            }
            if ring.iter().any(|k: &SigningKey| k.id == id) {
                return Err(format!("key id {id:?} is given twice"));
            }
            if key.algorithm() != algorithm {
                return Err(format!("key {id:?} is an {} key, not {}", key.algorithm().name(), algorithm.name()));
            }
            let mac = match key {
                AsymmetricKey::Private(private) => KeyedMac::Private(private, Box::default()),
                AsymmetricKey::Public(public) => KeyedMac::Public(public),
            };
            ring.push(SigningKey { id, mac });
        }
        Ok(KeyRing { algorithm, keys: ring })
    }
}

/// Whether `id` can name a key: 1 to 64 letters, digits, '.', '_' or '-'.
pub fn is_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What the MAC covers, as the receiver sees the request.
pub struct SignedParts<'a> {
    pub method: &'a [u8],
    pub authority: &'a [u8],
    /// `:path`, with its query.
    pub path: &'a [u8],
    pub date: &'a [u8],
    /// Every protocol header, the signature itself excepted, in any order; names lowercase.
    pub protocol_headers: Vec<(&'a str, &'a [u8])>,
}

/// The canonical string: lines joined by `\n`, each line's content free of `\n`
/// (header values with CR or LF are refused before signing or verifying):
///
/// ```text
/// wsgiproxy-signature-v1
/// {algorithm}            hmac-sha1 | hmac-sha256
/// {key id}
/// {nonce}                32 lowercase hex digits
/// {Date header}
/// {method}
/// {host}                 :authority
/// {path}                 :path, with its query
/// {name}:{value}         one line per protocol header, sorted by name, then value
/// ```
pub fn canonical_string(algorithm: Algorithm, key_id: &str, nonce: &Nonce, parts: &SignedParts<'_>) -> Vec<u8> {
    // Sorted on the stack when they are few (a request signs about ten).
    let mut few: [&(&str, &[u8]); 24] = [&("", b""); 24];
    let mut many = Vec::new();
    let mut count = 0;
    for header in parts.protocol_headers.iter().filter(|(name, _)| *name != X_WSGIPROXY_SIGNATURE) {
        if count < few.len() {
            few[count] = header;
        } else {
            if many.is_empty() {
                many.extend_from_slice(&few);
            }
            many.push(header);
        }
        count += 1;
    }
    let headers: &mut [&(&str, &[u8])] = if many.is_empty() { &mut few[..count] } else { &mut many };
    headers.sort();
    let mut hex = [0u8; NONCE_LEN * 2];
    let nonce_hex = hex_into(nonce, &mut hex);
    let lines = [
        CANONICAL_VERSION.as_bytes(),
        algorithm.name().as_bytes(),
        key_id.as_bytes(),
        nonce_hex,
        parts.date,
        parts.method,
        parts.authority,
        parts.path,
    ];
    // Its exact size, so that it is made in one allocation.
    let size = lines.iter().map(|l| l.len() + 1).sum::<usize>() + headers.iter().map(|(n, v)| n.len() + v.len() + 2).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    for line in lines {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// One byte's two lowercase hex digits.
fn hex_pair(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]]
}

/// `bytes` in lowercase hex, written into `out` (twice its length), which is returned.
fn hex_into<'o>(bytes: &[u8], out: &'o mut [u8]) -> &'o [u8] {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&hex_pair(*b));
    }
    &out[..bytes.len() * 2]
}

/// Appends `bytes` in lowercase hex.
fn push_hex(out: &mut String, bytes: &[u8]) {
    out.extend(bytes.iter().flat_map(|b| hex_pair(*b)).map(char::from));
}

/// Hex digits (either case) into `out`, which must be half their length.
fn unhex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    // Each byte's value as a hex digit, or 0xff: one load per digit, no branches.
    const DIGIT: [u8; 256] = {
        let mut table = [0xff; 256];
        let mut c = 0;
        while c < 10 {
            table[b'0' as usize + c] = c as u8;
            c += 1;
        }
        let mut c = 0;
        while c < 6 {
            table[b'a' as usize + c] = 10 + c as u8;
            table[b'A' as usize + c] = 10 + c as u8;
            c += 1;
        }
        table
    };
    if text.len() != out.len() * 2 {
        return None;
    }
    let mut bad = 0u8;
    for (b, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (DIGIT[usize::from(pair[0])], DIGIT[usize::from(pair[1])]);
        bad |= high | low;
        *b = (high << 4) | (low & 0xf);
    }
    // A digit's value is below 16; a byte that is none sets the high bits.
    (bad < 16).then_some(())
}

/// True for the headers a signature covers besides method, host, path and Date.
pub fn is_signed_header(name: &str) -> bool {
    is_protocol_header(name) && name != X_WSGIPROXY_SIGNATURE
}

/// The signature header value for a request, signed with the ring's first key.
pub fn sign(ring: &KeyRing, nonce: &Nonce, parts: &SignedParts<'_>) -> Option<String> {
    let key = ring.signing_key()?;
    let mac = key.mac.mac(&canonical_string(ring.algorithm, &key.id, nonce, parts));
    let mut value = String::with_capacity(key.id.len() + 2 + 2 * (nonce.len() + mac.len()));
    value.push_str(&key.id);
    value.push(' ');
    push_hex(&mut value, nonce);
    value.push(' ');
    push_hex(&mut value, &mac);
    Some(value)
}

/// A parsed signature header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    pub key_id: String,
    pub nonce: Nonce,
    pub mac: Vec<u8>,
}

impl SignatureHeader {
    pub fn parse(value: &[u8]) -> Option<SignatureHeader> {
        // Three fields between single spaces, read as bytes: a key id and hex digits
        // are ASCII, so a value that is not UTF-8 fails their checks.
        let split = |field: &[u8]| field.iter().position(|b| *b == b' ');
        let first = split(value)?;
        let (key_id, rest) = (value.get(..first)?, value.get(first + 1..)?);
        let second = split(rest)?;
        let (nonce, mac) = (rest.get(..second)?, rest.get(second + 1..)?);
        let key_id = std::str::from_utf8(key_id).ok()?;
        if split(mac).is_some() || !is_key_id(key_id) || nonce.len() != NONCE_LEN * 2 || mac.len() > 128 {
            return None;
        }
        let mut nonce_bytes = [0u8; NONCE_LEN];
        unhex_into(nonce, &mut nonce_bytes)?;
        // An odd length is refused by `unhex_into` (its output is half the digits).
        let mut mac_bytes = vec![0u8; mac.len() / 2];
        unhex_into(mac, &mut mac_bytes)?;
        Some(SignatureHeader { key_id: key_id.to_string(), nonce: nonce_bytes, mac: mac_bytes })
    }
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No signature header at all.
    Missing,
    /// Malformed header, unknown key, or a MAC that does not match.
    Bad,
    /// No Date, an unparseable one, or one outside the skew window.
    Stale,
    /// Dated further ahead of the receiver's clock than `max_future_seconds`.
    DatedAhead,
    /// A nonce already seen inside the window.
    Replayed,
    /// Signed at or before the second the replay memory began (restart protection,
    /// as TLS 1.3 refuses 0-RTT data from before a server's start, RFC 8446 §8):
    /// what the memory's predecessor accepted is unknown, so it may be a replay.
    BeforeReplayMemory,
}

impl Rejection {
    pub fn reason(self) -> Reason {
        match self {
            Rejection::Missing => Reason::SignatureMissing,
            Rejection::Bad => Reason::SignatureBad,
            Rejection::Stale => Reason::SignatureStale,
            Rejection::DatedAhead => Reason::SignatureDatedAhead,
            Rejection::Replayed => Reason::SignatureReplayed,
            Rejection::BeforeReplayMemory => Reason::SignedBeforeRestart,
        }
    }
}

/// Checks the MAC of a parsed signature in constant time.
pub fn verify_mac(ring: &KeyRing, signature: &SignatureHeader, parts: &SignedParts<'_>) -> Result<(), Rejection> {
    let key = ring.key(&signature.key_id).ok_or(Rejection::Bad)?;
    let message = canonical_string(ring.algorithm, &key.id, &signature.nonce, parts);
    if key.mac.verify(&message, &signature.mac) {
        Ok(())
    } else {
        Err(Rejection::Bad)
    }
}

/// The IMF-fixdate form of a time, as the `Date` header carries it.
pub fn format_date(time: SystemTime) -> String {
    // Written directly (`Sun, 06 Nov 1994 08:49:37 GMT`): httpdate's `Display` goes
    // through the formatting machinery. Times before 1970 or after 9999 (which no
    // clock gives) are left to httpdate.
    let Ok(since) = time.duration_since(std::time::UNIX_EPOCH) else { return httpdate::fmt_http_date(time) };
    let secs = since.as_secs();
    let days = secs / 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    if year > 9999 {
        return httpdate::fmt_http_date(time);
    }
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let digits = |out: &mut String, n: u64, width: u32| {
        for place in (0..width).rev() {
            out.push(char::from(b'0' + (n / 10u64.pow(place) % 10) as u8));
        }
    };
    let mut out = String::with_capacity(29);
    out.push_str(WEEKDAYS[(days % 7) as usize]);
    out.push_str(", ");
    digits(&mut out, day, 2);
    out.push(' ');
    out.push_str(MONTHS[(month - 1) as usize]);
    out.push(' ');
    digits(&mut out, year, 4);
    out.push(' ');
    digits(&mut out, secs % 86_400 / 3600, 2);
    out.push(':');
    digits(&mut out, secs % 3600 / 60, 2);
    out.push(':');
    digits(&mut out, secs % 60, 2);
    out.push_str(" GMT");
    out
}

/// Parses a Date and checks it lies within `max_skew` before `now` and at most
/// `max_future` after it. Returns the Date as seconds since the epoch.
pub fn check_date(date: &[u8], now: SystemTime, max_skew: Duration, max_future: Duration) -> Result<u64, Rejection> {
    let text = std::str::from_utf8(date).map_err(|_| Rejection::Stale)?;
    let when = httpdate::parse_http_date(text).map_err(|_| Rejection::Stale)?;
    match now.duration_since(when) {
        Ok(behind) if behind > max_skew => return Err(Rejection::Stale),
        Ok(_) => {}
        Err(ahead) if ahead.duration() > max_future => {
            return Err(if ahead.duration() > max_skew { Rejection::Stale } else { Rejection::DatedAhead })
        }
        Err(_) => {}
    }
    when.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).map_err(|_| Rejection::Stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(alg: Algorithm) -> KeyRing {
        KeyRing::new(alg, &[("k2".into(), b"a-very-secret-key-2".to_vec()), ("k1".into(), b"a-very-secret-key-1".to_vec())]).unwrap()
    }

    fn parts<'a>(headers: Vec<(&'a str, &'a [u8])>) -> SignedParts<'a> {
        SignedParts {
            method: b"GET",
            authority: b"backend:8080",
            path: b"/app/x?y=1",
            date: b"Tue, 24 Nov 2026 02:00:00 GMT",
            protocol_headers: headers,
        }
    }

    #[test]
    fn canonical_string_is_exact() {
        let nonce = [0xab; NONCE_LEN];
        let p = parts(vec![("x-wsgiproxy-version", b"0.1"), ("x-forwarded-for", b"10.0.0.1"), ("x-wsgiproxy-signature", b"ignored")]);
        let text = String::from_utf8(canonical_string(Algorithm::HmacSha1, "k2", &nonce, &p)).unwrap();
        assert_eq!(
            text,
            "wsgiproxy-signature-v1\nhmac-sha1\nk2\nabababababababababababababababab\n\
             Tue, 24 Nov 2026 02:00:00 GMT\nGET\nbackend:8080\n/app/x?y=1\n\
             x-forwarded-for:10.0.0.1\nx-wsgiproxy-version:0.1\n"
        );
    }

    #[test]
    fn known_vector_sha256() {
        // Computed independently with Python: hmac.new(key, canonical, sha256).hexdigest()
        let nonce = [0u8; NONCE_LEN];
        let one = KeyRing::new(Algorithm::HmacSha256, &[("k".into(), b"0123456789abcdef".to_vec())]).unwrap();
        let p = parts(vec![("x-wsgiproxy-version", b"0.1")]);
        let header = sign(&one, &nonce, &p).unwrap();
        let sig = SignatureHeader::parse(header.as_bytes()).unwrap();
        assert_eq!(sig.key_id, "k");
        assert_eq!(hex::encode(&sig.mac), "4c6c42fbefb0b90d70382d5ced79e840cd95c4ec22ea34149f33e0e58f37382c");
        assert!(verify_mac(&one, &sig, &p).is_ok());
    }

    #[test]
    fn sign_then_verify_with_any_key_of_the_ring() {
        for alg in [Algorithm::HmacSha1, Algorithm::HmacSha256] {
            let r = ring(alg);
            let nonce = [7u8; NONCE_LEN];
            let p = parts(vec![("x-forwarded-for", b"1.2.3.4")]);
            let header = sign(&r, &nonce, &p).unwrap();
            assert!(header.starts_with("k2 0707"));
            let sig = SignatureHeader::parse(header.as_bytes()).unwrap();
            assert_eq!(verify_mac(&r, &sig, &p), Ok(()));
            // Tampering with any covered part fails.
            let mut tampered = parts(vec![("x-forwarded-for", b"1.2.3.5")]);
            assert_eq!(verify_mac(&r, &sig, &tampered), Err(Rejection::Bad));
            tampered = parts(vec![("x-forwarded-for", b"1.2.3.4"), ("x-script-name", b"/x")]);
            assert_eq!(verify_mac(&r, &sig, &tampered), Err(Rejection::Bad));
            let mut p2 = parts(vec![("x-forwarded-for", b"1.2.3.4")]);
            p2.path = b"/app/x?y=2";
            assert_eq!(verify_mac(&r, &sig, &p2), Err(Rejection::Bad));
            // A key the receiver does not hold fails.
            let other = KeyRing::new(alg, &[("k2".into(), b"another-secret-key!".to_vec())]).unwrap();
            assert_eq!(verify_mac(&other, &sig, &p), Err(Rejection::Bad));
        }
        // An older key still verifies after rotation.
        let old = KeyRing::new(Algorithm::HmacSha1, &[("k1".into(), b"a-very-secret-key-1".to_vec())]).unwrap();
        let p = parts(vec![]);
        let header = sign(&old, &[1; NONCE_LEN], &p).unwrap();
        let sig = SignatureHeader::parse(header.as_bytes()).unwrap();
        assert_eq!(verify_mac(&ring(Algorithm::HmacSha1), &sig, &p), Ok(()));
    }

    #[test]
    fn canonical_strings_of_many_headers_are_sorted_the_same() {
        let names: Vec<String> = (0..40).map(|i| format!("x-wsgiproxy-str-{}", (i * 7) % 40)).collect();
        for n in [0, 1, 10, 24, 25, 40] {
            let headers: Vec<(&str, &[u8])> = names[..n].iter().map(|name| (name.as_str(), &b"v"[..])).collect();
            let p = parts(headers.clone());
            let text = canonical_string(Algorithm::HmacSha256, "k", &[0; 16], &p);
            let mut sorted = headers.clone();
            sorted.sort();
            let tail: Vec<u8> = sorted.iter().flat_map(|(name, v)| [name.as_bytes(), b":", v, b"\n"].concat()).collect();
            assert!(text.ends_with(&tail), "{n}");
            assert_eq!(text.len(), canonical_string(Algorithm::HmacSha256, "k", &[0; 16], &parts(Vec::new())).len() + tail.len());
        }
    }

    #[test]
    fn dates_as_httpdate_writes_them() {
        let mut t = 0u64;
        while t < 253_402_300_800 {
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(t);
            assert_eq!(format_date(time), httpdate::fmt_http_date(time), "{t}");
            t = t * 3 / 2 + 86_399 + t % 7;
        }
        for t in [0, 951_782_400, 951_868_799, 1_795_485_600, 4_107_542_400, 253_402_300_799] {
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(t);
            assert_eq!(format_date(time), httpdate::fmt_http_date(time), "{t}");
        }
        // Every day of four years around a century's leap rule.
        for day in 0..(4 * 366) {
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800 - 2 * 365 * 86_400 + day * 86_400 + 45_296);
            assert_eq!(format_date(time), httpdate::fmt_http_date(time));
        }
    }

    #[test]
    fn hex_as_the_hex_crate_writes_and_reads_it() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 512];
        assert_eq!(hex_into(&bytes, &mut out), hex::encode(&bytes).as_bytes());
        let mut text = String::new();
        push_hex(&mut text, &bytes);
        assert_eq!(text, hex::encode(&bytes));
        for t in [hex::encode(&bytes), hex::encode_upper(&bytes), "0g".repeat(256), "zz".into(), String::new()] {
            let mut back = vec![0u8; t.len() / 2];
            assert_eq!(unhex_into(t.as_bytes(), &mut back).is_some(), hex::decode(&t).is_ok(), "{t}");
            if let Ok(decoded) = hex::decode(&t) {
                assert_eq!(back, decoded);
            }
        }
        assert!(unhex_into(b"abc", &mut [0u8; 1]).is_none());
    }

    #[test]
    fn every_pair_of_bytes_unhexes_as_the_hex_crate_reads_it() {
        for high in 0..=255u8 {
            for low in 0..=255u8 {
                let mut out = [0u8; 1];
                let read = unhex_into(&[high, low], &mut out).map(|()| out.to_vec());
                assert_eq!(read, hex::decode([high, low]).ok(), "{high:#x} {low:#x}");
            }
        }
    }

    #[test]
    fn signature_headers_parse_as_split_on_spaces() {
        // The reading by `str::split`, which the byte-wise parse replaced.
        fn by_split(value: &[u8]) -> Option<SignatureHeader> {
            let text = std::str::from_utf8(value).ok()?;
            let mut fields = text.split(' ');
            let (key_id, nonce, mac) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() || !is_key_id(key_id) || nonce.len() != NONCE_LEN * 2 || mac.len() > 128 || mac.len() % 2 != 0 {
                return None;
            }
            Some(SignatureHeader { key_id: key_id.into(), nonce: hex::decode(nonce).ok()?.try_into().ok()?, mac: hex::decode(mac).ok()? })
        }
        let good = "k1 00112233445566778899aabbccddeeff 0a0b".as_bytes();
        let mut values: Vec<Vec<u8>> = vec![Vec::new(), b" ".to_vec(), b"  ".to_vec(), b"   ".to_vec(), good.to_vec()];
        for at in 0..=good.len() {
            for b in [b' ', b'\xff', b'\xc3', b'A', b'F', b'g', b'0', b'/', b'\n'] {
                let mut changed = good.to_vec();
                changed[at.min(good.len() - 1)] = b;
                values.push(changed);
                let mut inserted = good.to_vec();
                inserted.insert(at, b);
                values.push(inserted);
            }
            values.push(good[..at].to_vec());
        }
        values.push(format!("k1 {} {}", "ab".repeat(16), "cd".repeat(64)).into_bytes());
        values.push(format!("k1 {} {}", "ab".repeat(16), "cd".repeat(65)).into_bytes());
        values.push(format!("{} {} 00", "k".repeat(65), "ab".repeat(16)).into_bytes());
        for value in values {
            assert_eq!(SignatureHeader::parse(&value), by_split(&value), "{:?}", String::from_utf8_lossy(&value));
        }
    }

    #[test]
    fn signature_header_parsing() {
        assert!(SignatureHeader::parse(b"k1 00112233445566778899aabbccddeeff 0a0b").is_some());
        assert!(SignatureHeader::parse(b"k1 0011 0a0b").is_none());
        assert!(SignatureHeader::parse(b"k1 00112233445566778899aabbccddeeff zz").is_none());
        assert!(SignatureHeader::parse(b"k1  00112233445566778899aabbccddeeff 0a").is_none());
        assert!(SignatureHeader::parse(b"k/1 00112233445566778899aabbccddeeff 0a").is_none());
        assert!(SignatureHeader::parse(b"\xff").is_none());
    }

    #[test]
    fn keys_are_checked() {
        assert!(KeyRing::new(Algorithm::HmacSha1, &[]).is_err());
        assert!(KeyRing::new(Algorithm::HmacSha1, &[("k".into(), b"short".to_vec())]).is_err());
        assert!(KeyRing::new(Algorithm::HmacSha1, &[("bad id".into(), b"0123456789abcdef".to_vec())]).is_err());
        let twice = [("k".into(), b"0123456789abcdef".to_vec()), ("k".into(), b"0123456789abcdef".to_vec())];
        assert!(KeyRing::new(Algorithm::HmacSha1, &twice).is_err());
        let debug = format!("{:?}", ring(Algorithm::HmacSha1));
        assert!(!debug.contains("secret-key"));
    }

    #[test]
    fn dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_485_600);
        let date = format_date(now);
        let (skew, future) = (Duration::from_secs(300), Duration::from_secs(2));
        assert_eq!(check_date(date.as_bytes(), now, skew, future), Ok(1_795_485_600));
        let later = now + Duration::from_secs(301);
        assert_eq!(check_date(date.as_bytes(), later, skew, future), Err(Rejection::Stale));
        // Ahead of the receiver's clock: up to `max_future`, then refused as dated
        // ahead (past the skew, as stale).
        let earlier = |secs| now - Duration::from_secs(secs);
        assert_eq!(check_date(date.as_bytes(), earlier(2), skew, future), Ok(1_795_485_600));
        assert_eq!(check_date(date.as_bytes(), earlier(2) - Duration::from_millis(1), skew, future), Err(Rejection::DatedAhead));
        assert_eq!(check_date(date.as_bytes(), earlier(60), skew, future), Err(Rejection::DatedAhead));
        assert_eq!(check_date(date.as_bytes(), earlier(301), skew, future), Err(Rejection::Stale));
        assert_eq!(check_date(b"yesterday", now, skew, future), Err(Rejection::Stale));
    }
}
