//! Key directories: a receiver's public keys fetched from a sender's JSON Web Key
//! Set (RFC 7517 §5, `application/jwk-set+json`, and the HTTP Message Signatures
//! Directory, `/.well-known/http-message-signatures-directory`), kept fresh in the
//! background by the answer's `Cache-Control`, and refetched when a signature names a
//! key id it does not hold — at most once per directory per interval, however many
//! requests ask.
//!
//! Everything here is plain state driven by a clock the caller passes in
//! (milliseconds since any fixed point): the loaders only send the fetch
//! [`Directory::due`] asks for, hand its answer to [`Directory::on_answer`], and wake
//! the requests that wait for it. What verifies is [`Followed`]: an immutable set of
//! keys the loaders swap whole.
//!
//! A fetch that fails — no answer, a status other than 200, a body over its bound,
//! JSON that is not a key set, a key that is not of the receiver's algorithm — keeps
//! the last good keys until they are `max_stale` past their freshness, then drops
//! them: what verifies never widens, and no key at all fails closed.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::asymmetric::{self, AsymmetricKey, PublicKey};
use crate::signature::{Algorithm, KeyRing, SigningKey};

/// Where a directory lives and how closely it is followed (the `key_directories`
/// entries of the `middleware` role's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectorySource {
    /// The Envoy cluster the fetch goes through.
    pub cluster: String,
    /// The fetch's `:authority`.
    pub authority: String,
    /// The fetch's `:path`.
    pub path: String,
    /// How long a fetch may take; a request waiting for it waits no longer.
    pub timeout: Duration,
    /// The bounds within which the answer's `Cache-Control: max-age` is followed.
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    /// At most one refetch for an unknown key id per this interval.
    pub unknown_key_interval: Duration,
    /// How long past their freshness the last good keys still verify while fetches fail.
    pub max_stale: Duration,
    /// The largest answer read; a larger one is a failed fetch.
    pub max_bytes: usize,
}

pub const DEFAULT_PATH: &str = "/.well-known/http-message-signatures-directory";
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
pub const DEFAULT_MIN_REFRESH_SECONDS: u64 = 60;
pub const DEFAULT_MAX_REFRESH_SECONDS: u64 = 3600;
pub const DEFAULT_UNKNOWN_KEY_INTERVAL_SECONDS: u64 = 30;
pub const DEFAULT_MAX_STALE_SECONDS: u64 = 3600;
pub const DEFAULT_MAX_BYTES: u64 = 65_536;

/// The `Accept` a fetch sends: both media types, then plain JSON.
pub const ACCEPT: &str = "application/http-message-signatures-directory+json, application/jwk-set+json, application/json";

/// The media type a sender's directory is served as (the HTTP Message Signatures
/// Directory's; a JWKS).
pub const DIRECTORY_MEDIA_TYPE: &str = "application/http-message-signatures-directory+json";

/// The most keys one directory may publish (a larger set is a failed fetch).
pub const MAX_KEYS: usize = 64;

impl DirectorySource {
    /// The fetch's request headers. `Connection: close`: each fetch on a connection
    /// of its own. A kept-alive connection stays on the filter chain it was accepted
    /// by: after a sender's configuration push (its new ring), Envoy keeps serving the
    /// old chain's directory on it for the whole drain time (10 minutes by default),
    /// so a receiver reusing it would never see the rotation. One connection per
    /// fetch, once per refresh, costs nothing.
    pub fn request_headers(&self) -> [(&str, &str); 5] {
        [(":method", "GET"), (":path", &self.path), (":authority", &self.authority), ("accept", ACCEPT), ("connection", "close")]
    }
}

/// A directory's public keys, by key id.
pub type PublishedKeys = Vec<(String, AsymmetricKey)>;

/// Why a fetch was not taken; the last good keys stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// No answer: the cluster refused it, the connection failed, or it timed out.
    NoAnswer,
    Status(u16),
    TooLarge(usize),
    /// Not a key set, or a key that cannot be used (never quoting key text).
    Invalid(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::NoAnswer => write!(f, "no answer (connection failed, refused or timed out)"),
            FetchError::Status(status) => write!(f, "answered {status}, not 200"),
            FetchError::TooLarge(size) => write!(f, "answered {size} bytes, more than max_bytes"),
            FetchError::Invalid(why) => write!(f, "not a key set this receiver can use: {why}"),
        }
    }
}

/// Reads a directory's answer: a JWKS whose every key is a public key of `algorithm`.
/// A key's `kid` names it; without one, its RFC 7638 thumbprint does (as the HTTP
/// Message Signatures Directory's signers name their keys).
pub fn parse_key_set(algorithm: Algorithm, body: &[u8]) -> Result<PublishedKeys, FetchError> {
    let invalid = |why: &str| FetchError::Invalid(why.to_string());
    let document: Value = serde_json::from_slice(body).map_err(|_| invalid("the body is not JSON"))?;
    let keys = document.get("keys").and_then(Value::as_array).ok_or_else(|| invalid("no \"keys\" array"))?;
    if keys.len() > MAX_KEYS {
        return Err(FetchError::Invalid(format!("more than {MAX_KEYS} keys")));
    }
    let mut out: PublishedKeys = Vec::with_capacity(keys.len());
    for (i, jwk) in keys.iter().enumerate() {
        if !jwk.is_object() {
            return Err(FetchError::Invalid(format!("keys[{i}] is not an object")));
        }
        let id = match jwk.get("kid") {
            Some(Value::String(kid)) => kid.clone(),
            Some(_) => return Err(FetchError::Invalid(format!("keys[{i}].kid is not a string"))),
            None => thumbprint(jwk).ok_or_else(|| FetchError::Invalid(format!("keys[{i}] has no kid and no thumbprint")))?,
        };
        if !crate::signature::is_key_id(&id) {
            return Err(FetchError::Invalid(format!("keys[{i}].kid must be 1 to 64 letters, digits, '.', '_' or '-'")));
        }
        if jwk.get("d").is_some() {
            return Err(FetchError::Invalid(format!("keys[{i}] ({id}) is a private key: a directory publishes public keys only")));
        }
        if !for_verifying(jwk) {
            // An encryption key published beside the signing ones (RFC 7517 §4.2,
            // §4.3): not a key for this receiver, and no reason to refuse the set.
            continue;
        }
        let key = asymmetric::parse_key(algorithm, &jwk.to_string()).map_err(|e| FetchError::Invalid(format!("keys[{i}] ({id}) {e}")))?;
        if out.iter().any(|(k, _)| *k == id) {
            return Err(FetchError::Invalid(format!("the key id {id:?} is published twice")));
        }
        out.push((id, key));
    }
    Ok(out)
}

/// Whether a JWK may verify signatures: no `use`, or `"use": "sig"`; and no
/// `key_ops`, or `key_ops` listing `"verify"`.
fn for_verifying(jwk: &Value) -> bool {
    let use_ok = match jwk.get("use") {
        None => true,
        Some(value) => value.as_str() == Some("sig"),
    };
    let ops_ok = match jwk.get("key_ops") {
        None => true,
        Some(ops) => ops.as_array().is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify"))),
    };
    use_ok && ops_ok
}

/// A JWK's RFC 7638 thumbprint (SHA-256, base64url): its required members in
/// lexicographic order, without whitespace.
pub fn thumbprint(jwk: &Value) -> Option<String> {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    let canonical = match member("kty")? {
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, member("crv")?, member("x")?),
        "EC" => format!(r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#, member("crv")?, member("x")?, member("y")?),
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, member("e")?, member("n")?),
        _ => return None,
    };
    if canonical.contains('\\') {
        return None;
    }
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// The `max-age` of a `Cache-Control` value (`s-maxage` ignored: this is a private
/// cache); `Some(0)` for `no-cache` and `no-store`.
pub fn max_age(cache_control: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(cache_control).ok()?;
    let mut found = None;
    for directive in text.split(',').map(str::trim) {
        let (name, value) = directive.split_once('=').map_or((directive, None), |(n, v)| (n.trim(), Some(v.trim().trim_matches('"'))));
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            return Some(0);
        }
        if name.eq_ignore_ascii_case("max-age") {
            found = value.and_then(|v| v.parse::<u64>().ok()).or(found);
        }
    }
    found
}

/// An answer as the loader read it: status, `Cache-Control`, body.
pub type Answer<'a> = (u16, Option<&'a [u8]>, &'a [u8]);

/// What a request naming a key id no key holds is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKey {
    /// A fetch is under way or was just asked for: wait for it.
    Wait,
    /// The directory was refetched for an unknown key less than the interval ago.
    Refuse,
}

/// What changed with an answer, for the loader to count and log (each once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// New keys are in; `recovered` after failures.
    Fetched { keys: usize, recovered: bool },
    /// The fetch failed; `first` when the previous one had not (log it then only).
    Failed { error: FetchError, first: bool },
}

/// One directory followed: its keys and when to fetch it next. Times are
/// milliseconds on the caller's clock.
#[derive(Debug)]
pub struct Directory {
    pub source: DirectorySource,
    keys: Option<PublishedKeys>,
    /// The keys' freshness (from `Cache-Control`, within the bounds).
    fresh_until: u64,
    /// When the background refresh is due.
    next_fetch: u64,
    /// The fetch under way, since when.
    in_flight: Option<u64>,
    /// An unknown key id asked for a fetch not yet sent.
    asked: bool,
    /// The last fetch an unknown key id caused.
    last_unknown_fetch: Option<u64>,
    failing: bool,
    /// The stale keys were dropped (logged once).
    dropped: bool,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Directory {
    /// A directory not fetched yet: the first fetch is due at once.
    pub fn new(source: DirectorySource) -> Directory {
        Directory {
            source,
            keys: None,
            fresh_until: 0,
            next_fetch: 0,
            in_flight: None,
            asked: false,
            last_unknown_fetch: None,
            failing: false,
            dropped: false,
        }
    }

    /// Whether a fetch is to be sent now (the first, a refresh, or one an unknown key
    /// id asked for). When it is, it counts as under way until [`Directory::on_answer`]
    /// (or until it has taken its timeout and a second more: [`Directory::overdue`]).
    pub fn due(&mut self, now: u64) -> bool {
        if self.in_flight.is_some() || !(self.asked || now >= self.next_fetch) {
            return false;
        }
        self.asked = false;
        self.in_flight = Some(now);
        true
    }

    /// Whether the fetch under way has taken longer than it may: the loader then
    /// treats it as failed (an answer lost on the way must not stop the directory).
    pub fn overdue(&self, now: u64) -> bool {
        self.in_flight.is_some_and(|since| now.saturating_sub(since) > ms(self.source.timeout) + 1000)
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// A signature names a key id no key holds: wait for the fetch under way, or for
    /// one asked for now if the last such fetch is an interval old; else refuse.
    pub fn unknown_key(&mut self, now: u64) -> UnknownKey {
        if self.in_flight.is_some() || self.asked {
            return UnknownKey::Wait;
        }
        let interval = ms(self.source.unknown_key_interval);
        if self.last_unknown_fetch.is_some_and(|last| now.saturating_sub(last) < interval) {
            return UnknownKey::Refuse;
        }
        self.last_unknown_fetch = Some(now);
        self.asked = true;
        UnknownKey::Wait
    }

    /// The answer to the fetch under way: `None` when none came (refused, failed,
    /// timed out), else its status, `Cache-Control` and body.
    pub fn on_answer(&mut self, now: u64, algorithm: Algorithm, answer: Option<Answer<'_>>) -> Answered {
        let parsed = match answer {
            None => Err(FetchError::NoAnswer),
            Some((200, cache_control, body)) if body.len() <= self.source.max_bytes => {
                parse_key_set(algorithm, body).map(|keys| (keys, cache_control.and_then(max_age)))
            }
            Some((200, _, body)) => Err(FetchError::TooLarge(body.len())),
            Some((status, _, _)) => Err(FetchError::Status(status)),
        };
        self.on_result(now, parsed)
    }

    /// The fetch under way ended: its keys and `max-age`, or why not.
    pub fn on_result(&mut self, now: u64, parsed: Result<(PublishedKeys, Option<u64>), FetchError>) -> Answered {
        self.in_flight = None;
        match parsed {
            Ok((keys, max_age)) => {
                let (min, max) = (ms(self.source.min_refresh), ms(self.source.max_refresh));
                let fresh_for = max_age.map_or(max, |s| s.saturating_mul(1000)).clamp(min, max);
                self.fresh_until = now.saturating_add(fresh_for);
                // Refreshed a little before the keys go stale, so that they never do
                // while the directory answers.
                self.next_fetch = now.saturating_add(fresh_for - fresh_for / 10);
                let recovered = std::mem::replace(&mut self.failing, false);
                self.dropped = false;
                let count = keys.len();
                self.keys = Some(keys);
                Answered::Fetched { keys: count, recovered }
            }
            Err(error) => {
                // Tried again after the shorter of the refresh floor and the
                // unknown-key interval: soon, but never hammering a directory that is down.
                let retry = ms(self.source.min_refresh).min(ms(self.source.unknown_key_interval)).max(1000);
                self.next_fetch = now.saturating_add(retry);
                let first = !std::mem::replace(&mut self.failing, true);
                Answered::Failed { error, first }
            }
        }
    }

    /// A refetch asked for elsewhere, its interval's gate already applied (the Wasm
    /// filter's VMs ask the one that fetches: [`coordination`]): sent at the next
    /// [`Directory::due`].
    pub fn ask(&mut self) {
        if self.in_flight.is_none() {
            self.asked = true;
        }
    }

    /// The keys that verify now: the last good ones, until `max_stale` past their
    /// freshness. `None`: none (never fetched, or dropped).
    pub fn keys(&self, now: u64) -> Option<&PublishedKeys> {
        let usable_until = self.fresh_until.saturating_add(ms(self.source.max_stale));
        self.keys.as_ref().filter(|_| now < usable_until)
    }

    /// True once when the last good keys have gone past `max_stale` (to count and
    /// log it once); they are forgotten then.
    pub fn drop_expired(&mut self, now: u64) -> bool {
        if self.keys.is_some() && self.keys(now).is_none() {
            self.keys = None;
            if !self.dropped {
                self.dropped = true;
                return true;
            }
        }
        false
    }
}

/// The keys a receiver follows, merged across its directories: swapped whole when
/// one changes, read by requests without a lock on the directories.
#[derive(Debug, Clone, Default)]
pub struct Followed {
    /// Every usable key; a key id published by two directories is the first's.
    pub ring: Option<KeyRing>,
    /// Whether some directory's keys are current (an empty set counts): a key id
    /// none of them holds is then unknown, not unavailable.
    pub answered: bool,
}

impl Followed {
    /// Merges `directories`' usable keys at `now`, first directory first.
    pub fn merge(algorithm: Algorithm, directories: &[Directory], now: u64) -> Followed {
        let mut keys: Vec<(String, AsymmetricKey)> = Vec::new();
        let answered = directories.iter().any(|d| d.keys(now).is_some());
        for directory in directories {
            for (id, key) in directory.keys(now).into_iter().flatten() {
                if !keys.iter().any(|(k, _)| k == id) {
                    keys.push((id.clone(), key.clone()));
                }
            }
        }
        Followed { ring: KeyRing::asymmetric(algorithm, keys).ok(), answered }
    }

    pub fn key(&self, id: &str) -> Option<&SigningKey> {
        self.ring.as_ref().and_then(|r| r.key(id))
    }

    /// Whether no directory has a usable key: nothing verifies (fail closed).
    pub fn is_empty(&self) -> bool {
        self.ring.is_none()
    }
}

/// Every directory of a receiver, with the merged keys requests read.
#[derive(Debug)]
pub struct Follower {
    pub algorithm: Algorithm,
    pub directories: Vec<Directory>,
    followed: std::sync::Arc<Followed>,
}

impl Follower {
    pub fn new(algorithm: Algorithm, sources: &[DirectorySource]) -> Follower {
        Follower {
            algorithm,
            directories: sources.iter().cloned().map(Directory::new).collect(),
            followed: std::sync::Arc::new(Followed::default()),
        }
    }

    /// The keys requests verify with now.
    pub fn followed(&self) -> std::sync::Arc<Followed> {
        self.followed.clone()
    }

    /// Merges the directories' keys again (after an answer, or as stale keys expire).
    pub fn remerge(&mut self, now: u64) {
        self.followed = std::sync::Arc::new(Followed::merge(self.algorithm, &self.directories, now));
    }

    /// A signature names a key id no key holds: whether some directory will be
    /// fetched for it (the request then waits). Every directory is asked: the key
    /// may be in any.
    /// Also says whether a fetch was asked for now (rather than one already under way).
    pub fn unknown_key(&mut self, now: u64) -> (UnknownKey, bool) {
        let mut verdict = UnknownKey::Refuse;
        let mut asked = false;
        for directory in &mut self.directories {
            let was_asked = directory.asked;
            if directory.unknown_key(now) == UnknownKey::Wait {
                verdict = UnknownKey::Wait;
                asked |= directory.asked && !was_asked;
            }
        }
        (verdict, asked)
    }

    /// Whether some fetch is under way or asked for.
    pub fn busy(&self) -> bool {
        self.directories.iter().any(|d| d.in_flight.is_some() || d.asked)
    }
}

/// A public key as a JWK (`kid` and `alg` included), or `None` for a key type this
/// cannot write.
pub fn public_jwk(id: &str, key: &PublicKey) -> Option<Value> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    match key {
        PublicKey::Ed25519(key) => Some(
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": id, "alg": "EdDSA", "use": "sig", "x": b64(key.verifying_key().as_bytes())}),
        ),
        PublicKey::EcdsaP256(key) => {
            let point = key.verifying_key().to_encoded_point(false);
            Some(serde_json::json!({"kty": "EC", "crv": "P-256", "kid": id, "alg": "ES256", "use": "sig",
                "x": b64(point.x()?.as_slice()), "y": b64(point.y()?.as_slice())}))
        }
        PublicKey::EcdsaP384(key) => {
            let point = key.verifying_key().to_encoded_point(false);
            Some(serde_json::json!({"kty": "EC", "crv": "P-384", "kid": id, "alg": "ES384", "use": "sig",
                "x": b64(point.x()?.as_slice()), "y": b64(point.y()?.as_slice())}))
        }
        PublicKey::Rsa(scheme, key) => {
            let alg = match scheme {
                crate::asymmetric::RsaScheme::PssSha512 => "PS512",
                crate::asymmetric::RsaScheme::Pkcs1v15Sha256 => "RS256",
            };
            let (n, e) = key.components();
            Some(serde_json::json!({"kty": "RSA", "kid": id, "alg": alg, "use": "sig", "n": b64(&n), "e": b64(&e)}))
        }
    }
}

/// The key directory a sender publishes for `ring`: the public half of every key,
/// the signing key first, the keys being rotated in or out after it. `None` for an
/// HMAC ring (a secret is never published).
pub fn published_key_set(ring: &KeyRing) -> Option<String> {
    let keys: Option<Vec<Value>> = ring.keys().map(|k| public_jwk(&k.id, &k.public_key()?)).collect();
    Some(serde_json::json!({ "keys": keys? }).to_string())
}

/// The key id of the `wsgiproxy` signature in `Signature-Input`'s lines, if any.
pub fn signature_key_id(signature_input: &[Vec<u8>]) -> Option<String> {
    use sfv::{BareItem, Dictionary, ListEntry, Parser};
    let mut combined = Vec::new();
    for (i, line) in signature_input.iter().enumerate() {
        if i > 0 {
            combined.extend_from_slice(b", ");
        }
        combined.extend_from_slice(line);
    }
    let dictionary = Parser::new(&combined).parse::<Dictionary>().ok()?;
    let Some(ListEntry::InnerList(list)) = dictionary.get(crate::rfc9421::LABEL) else { return None };
    list.params.iter().find(|(key, _)| key.as_str() == "keyid").and_then(|(_, value)| match value {
        BareItem::String(id) => Some(id.as_str().to_string()),
        _ => None,
    })
}

pub mod coordination;
#[cfg(test)]
mod tests;
