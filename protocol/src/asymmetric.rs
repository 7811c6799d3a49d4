//! Public-key signatures for RFC 9421: Ed25519 (`ed25519`, RFC 8032) and ECDSA on
//! P-256 with SHA-256 (`ecdsa-p256-sha256`, RFC 9421 §3.3.4, deterministic nonces
//! as RFC 6979 gives them, so signing needs no randomness in the Wasm sandbox); ECDSA
//! on P-384 with SHA-384 (`ecdsa-p384-sha384`, §3.3.5, `p384_key.rs`) and RSA
//! (`rsa-pss-sha512`, §3.3.1, and `rsa-v1_5-sha256`, §3.3.2, `rsa_key.rs`: keys in
//! SPKI, PKCS#1 or PKCS#8 PEM or a JWK; RSA signs in the native module only).
//!
//! The `app` role holds a private key and signs; the `middleware` role holds
//! public keys only and verifies, so a receiver (or anyone reading its
//! configuration) cannot forge what the sender signs. Keys are read from text, as
//! the configuration gives it (inline or from an environment variable):
//!
//! - PEM: a PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`), a SEC1 P-256
//!   private key (`-----BEGIN EC PRIVATE KEY-----`, what `openssl ecparam -genkey`
//!   writes) or an SPKI public key (`-----BEGIN PUBLIC KEY-----`);
//! - a JWK (RFC 7517, 8037): `{"kty": "OKP", "crv": "Ed25519", "x": ..[, "d": ..]}`
//!   or `{"kty": "EC", "crv": "P-256", "x": .., "y": ..[, "d": ..]}`, base64url.
//!
//! An error never quotes the key text: it may be a secret.

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::{alphabet, Engine as _};
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use p256::ecdsa::signature::Signer as _;
use serde::Deserialize;
use zeroize::{Zeroize as _, Zeroizing};

use crate::signature::Algorithm;

mod ed25519_public_key;
#[cfg(any(feature = "p256-tables", feature = "ed25519-key-table"))]
mod key_tables;
mod p256_public_key;
pub use ed25519_public_key::Ed25519PublicKey;
#[cfg(feature = "p256-tables")]
mod p256_tables;
pub use p256_public_key::P256PublicKey;
mod p384_key;
pub use p384_key::P384PublicKey;
mod rsa_key;
#[cfg(feature = "ring")]
pub use rsa_key::RsaPrivateKey;
pub use rsa_key::{RsaPublicKey, RsaScheme, MAX_RSA_BITS, MIN_RSA_BITS};

/// A private key: signs (the `app` role).
#[derive(Clone)]
pub enum PrivateKey {
    Ed25519(ed25519_dalek::SigningKey),
    EcdsaP256(p256::ecdsa::SigningKey),
    /// ECDSA P-384 with SHA-384 (RFC 9421 §3.3.5), signing deterministically (RFC 6979).
    EcdsaP384(p384::ecdsa::SigningKey),
    /// RSA (`rsa-pss-sha512` or `rsa-v1_5-sha256`): ring's, in the native module only.
    #[cfg(feature = "ring")]
    Rsa(RsaScheme, RsaPrivateKey),
}

/// A public key: verifies only (the `middleware` role).
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    Ed25519(Ed25519PublicKey),
    EcdsaP256(P256PublicKey),
    EcdsaP384(P384PublicKey),
    Rsa(RsaScheme, RsaPublicKey),
}

/// A key as read from the configuration: which half it is decides which role may hold it.
#[derive(Clone, Debug)]
pub enum AsymmetricKey {
    Private(PrivateKey),
    Public(PublicKey),
}

impl PrivateKey {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PrivateKey::Ed25519(_) => Algorithm::Ed25519,
            PrivateKey::EcdsaP256(_) => Algorithm::EcdsaP256Sha256,
            PrivateKey::EcdsaP384(_) => Algorithm::EcdsaP384Sha384,
            #[cfg(feature = "ring")]
            PrivateKey::Rsa(scheme, _) => rsa_algorithm(*scheme),
        }
    }

    /// The signature of `message` (64 bytes either way: Ed25519's `R || S`, or
    /// ECDSA's `r || s`, each 32 bytes big-endian, RFC 9421 §3.3.4). `None` only
    /// if the signing library reports a failure, which a valid key never meets.
    pub fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        match self {
            PrivateKey::Ed25519(key) => key.try_sign(message).ok().map(|s| s.to_bytes().to_vec()),
            PrivateKey::EcdsaP256(key) => {
                let signature: p256::ecdsa::Signature = key.try_sign(message).ok()?;
                Some(signature.to_bytes().to_vec())
            }
            // 96 bytes, r || s (§3.3.5).
            PrivateKey::EcdsaP384(key) => {
                let signature: p384::ecdsa::Signature = key.try_sign(message).ok()?;
                Some(signature.to_bytes().to_vec())
            }
            // The modulus's length (§3.3.1, §3.3.2).
            #[cfg(feature = "ring")]
            PrivateKey::Rsa(scheme, key) => key.sign(*scheme, message),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        match self {
            PrivateKey::Ed25519(key) => PublicKey::Ed25519(Ed25519PublicKey::new(key.verifying_key())),
            PrivateKey::EcdsaP256(key) => PublicKey::EcdsaP256(P256PublicKey::new(*key.verifying_key())),
            PrivateKey::EcdsaP384(key) => PublicKey::EcdsaP384(P384PublicKey::new(*key.verifying_key())),
            #[cfg(feature = "ring")]
            PrivateKey::Rsa(scheme, key) => PublicKey::Rsa(*scheme, key.public_key().clone()),
        }
    }
}

impl PublicKey {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Ed25519(_) => Algorithm::Ed25519,
            PublicKey::EcdsaP256(_) => Algorithm::EcdsaP256Sha256,
            PublicKey::EcdsaP384(_) => Algorithm::EcdsaP384Sha384,
            PublicKey::Rsa(scheme, _) => rsa_algorithm(*scheme),
        }
    }

    /// Whether `signature` is this key's signature of `message`. Any length or
    /// encoding other than the algorithm's 64 bytes is simply not a signature.
    /// Ed25519 is checked strictly (canonical `S`, no small-order keys or `R`), so
    /// a signature has one encoding only. ECDSA takes `s` and `n - s` alike (OpenSSL
    /// signs either), through `p256` or, with feature `ring-verify` (both loaders), ring (`P256PublicKey`).
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Ed25519(key) => key.verifies(message, signature),
            PublicKey::EcdsaP256(key) => key.verifies(message, signature),
            PublicKey::EcdsaP384(key) => key.verifies(message, signature),
            PublicKey::Rsa(scheme, key) => key.verifies(*scheme, message, signature),
        }
    }
}

impl AsymmetricKey {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            AsymmetricKey::Private(key) => key.algorithm(),
            AsymmetricKey::Public(key) => key.algorithm(),
        }
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({}, <secret>)", self.algorithm().name())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.algorithm().name())
    }
}

/// Why a key's text is not a usable key (never quoting it).
pub type KeyError = String;

/// The algorithm an RSA scheme signs.
fn rsa_algorithm(scheme: RsaScheme) -> Algorithm {
    match scheme {
        RsaScheme::PssSha512 => Algorithm::RsaPssSha512,
        RsaScheme::Pkcs1v15Sha256 => Algorithm::RsaV15Sha256,
    }
}

/// The RSA scheme of an RSA algorithm.
fn rsa_scheme(algorithm: Algorithm) -> Option<RsaScheme> {
    match algorithm {
        Algorithm::RsaPssSha512 => Some(RsaScheme::PssSha512),
        Algorithm::RsaV15Sha256 => Some(RsaScheme::Pkcs1v15Sha256),
        _ => None,
    }
}

const ENCRYPTED_PEM: &str = "is an encrypted private key: give it decrypted (openssl pkey -in KEY), from an environment variable";

/// Reads a key of `algorithm` (Ed25519 or ECDSA P-256) from PEM or JWK text.
/// A PEM whose line breaks were written as `\n` (as some environment files do)
/// is read as if they were line breaks.
pub fn parse_key(algorithm: Algorithm, text: &str) -> Result<AsymmetricKey, KeyError> {
    let text = text.trim();
    if text.starts_with('{') {
        return parse_jwk(algorithm, text);
    }
    if !text.starts_with("-----BEGIN ") {
        return Err(format!("is not a key: give a PEM (\"-----BEGIN PRIVATE KEY-----\" or \"-----BEGIN PUBLIC KEY-----\") or a JWK (JSON text) of an {} key", key_kind(algorithm)));
    }
    let unescaped;
    let pem = if !text.contains('\n') && text.contains("\\n") {
        unescaped = Zeroizing::new(text.replace("\\n", "\n"));
        unescaped.as_str()
    } else {
        text
    };
    parse_pem(algorithm, pem)
}

fn key_kind(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::EcdsaP256Sha256 => "ECDSA P-256",
        Algorithm::EcdsaP384Sha384 => "ECDSA P-384",
        Algorithm::RsaPssSha512 | Algorithm::RsaV15Sha256 => "RSA",
        _ => "Ed25519",
    }
}

fn parse_pem(algorithm: Algorithm, pem: &str) -> Result<AsymmetricKey, KeyError> {
    let label = pem.lines().next().unwrap_or_default().trim();
    if algorithm == Algorithm::EcdsaP384Sha384 {
        return p384_key::parse_pem(label, pem);
    }
    if let Some(scheme) = rsa_scheme(algorithm) {
        return rsa_key::parse_pem(scheme, label, pem);
    }
    let kind = key_kind(algorithm);
    let unreadable = |what: &str| format!("is not {what} of an {kind} key (the PEM is not shown: it may be a secret)");
    match (label, algorithm) {
        ("-----BEGIN PRIVATE KEY-----", Algorithm::Ed25519) => ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(|k| AsymmetricKey::Private(PrivateKey::Ed25519(k)))
            .map_err(|_| unreadable("a PKCS#8 private key")),
        ("-----BEGIN PRIVATE KEY-----", Algorithm::EcdsaP256Sha256) => p256::ecdsa::SigningKey::from_pkcs8_pem(pem)
            .map(|k| AsymmetricKey::Private(PrivateKey::EcdsaP256(k)))
            .map_err(|_| unreadable("a PKCS#8 private key")),
        ("-----BEGIN EC PRIVATE KEY-----", Algorithm::EcdsaP256Sha256) => p256::SecretKey::from_sec1_pem(pem)
            .map(|k| AsymmetricKey::Private(PrivateKey::EcdsaP256(k.into())))
            .map_err(|_| unreadable("a SEC1 private key")),
        ("-----BEGIN PUBLIC KEY-----", Algorithm::Ed25519) => ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map_err(|_| unreadable("an SPKI public key"))
            .and_then(ed25519_public_key),
        ("-----BEGIN PUBLIC KEY-----", Algorithm::EcdsaP256Sha256) => p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
            .map(|k| AsymmetricKey::Public(PublicKey::EcdsaP256(P256PublicKey::new(k))))
            .map_err(|_| unreadable("an SPKI public key")),
        ("-----BEGIN ENCRYPTED PRIVATE KEY-----", _) => Err(ENCRYPTED_PEM.into()),
        _ => Err(format!(
            "is a PEM of another kind: give an {kind} key as \"-----BEGIN PRIVATE KEY-----\" (PKCS#8{}) or \"-----BEGIN PUBLIC KEY-----\" (SPKI)",
            if algorithm == Algorithm::EcdsaP256Sha256 { "; or SEC1, \"-----BEGIN EC PRIVATE KEY-----\"" } else { "" }
        )),
    }
}

/// An Ed25519 public key, unless it is one of the small-order points that a
/// signature could be forged for.
fn ed25519_public_key(key: ed25519_dalek::VerifyingKey) -> Result<AsymmetricKey, KeyError> {
    if key.is_weak() {
        return Err("is a weak Ed25519 public key (a point of small order)".into());
    }
    Ok(AsymmetricKey::Public(PublicKey::Ed25519(Ed25519PublicKey::new(key))))
}

/// The members of a JWK this reads; others (`kid`, `use`, `key_ops`...) are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    d: Option<String>,
    /// RSA (RFC 7518 §6.3): the public modulus and exponent, and the private key's
    /// primes and CRT members.
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    p: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    dp: Option<String>,
    #[serde(default)]
    dq: Option<String>,
    #[serde(default)]
    qi: Option<String>,
}

impl Drop for Jwk {
    fn drop(&mut self) {
        for secret in [&mut self.d, &mut self.p, &mut self.q, &mut self.dp, &mut self.dq, &mut self.qi].into_iter().flatten() {
            secret.zeroize();
        }
    }
}

/// A public member of a JWK, base64url-decoded.
fn jwk_member(name: &str, value: &Option<String>) -> Result<Vec<u8>, KeyError> {
    let value = value.as_deref().ok_or_else(|| format!("is a JWK without {name:?}"))?;
    BASE64URL.decode(value).map_err(|_| format!("is a JWK whose {name:?} is not base64url"))
}

/// A private member of a JWK, base64url-decoded into memory wiped once used.
fn jwk_secret(name: &str, value: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    BASE64URL.decode(value.as_bytes()).map(Zeroizing::new).map_err(|_| format!("is a JWK whose {name:?} is not base64url"))
}

/// base64url as JWKs write it (RFC 7515 §2: no padding), padding tolerated.
const BASE64URL: GeneralPurpose =
    GeneralPurpose::new(&alphabet::URL_SAFE, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));

fn parse_jwk(algorithm: Algorithm, text: &str) -> Result<AsymmetricKey, KeyError> {
    let jwk: Jwk = serde_json::from_str(text).map_err(|_| {
        "is not a JWK: a JSON object with \"kty\" and, as strings, \"crv\", \"x\"... (the text is not shown: it may be a secret)"
            .to_string()
    })?;
    let member = |name: &str, value: &Option<String>| -> Result<Vec<u8>, KeyError> {
        let value = value.as_deref().ok_or_else(|| format!("is a JWK without {name:?}"))?;
        BASE64URL.decode(value).map_err(|_| format!("is a JWK whose {name:?} is not base64url"))
    };
    let secret = |d: &String| -> Result<Zeroizing<Vec<u8>>, KeyError> { jwk_secret("d", d) };
    match algorithm {
        Algorithm::Ed25519 => {
            if jwk.kty != "OKP" || jwk.crv.as_deref() != Some("Ed25519") {
                return Err("is not an Ed25519 JWK (\"kty\": \"OKP\", \"crv\": \"Ed25519\")".into());
            }
            if jwk.alg.as_deref().is_some_and(|alg| alg != "EdDSA" && alg != "Ed25519") {
                return Err("is a JWK for another algorithm than Ed25519 (\"alg\")".into());
            }
            let x: [u8; 32] = member("x", &jwk.x)?.try_into().map_err(|_| "is a JWK whose \"x\" is not 32 bytes".to_string())?;
            let public = ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| "is a JWK whose \"x\" is not an Ed25519 public key")?;
            match &jwk.d {
                None => ed25519_public_key(public),
                Some(d) => {
                    let d = secret(d)?;
                    let seed: &[u8; 32] = d.as_slice().try_into().map_err(|_| "is a JWK whose \"d\" is not 32 bytes".to_string())?;
                    let key = ed25519_dalek::SigningKey::from_bytes(seed);
                    if key.verifying_key() != public {
                        return Err("is a JWK whose \"x\" is not the public half of its \"d\"".into());
                    }
                    Ok(AsymmetricKey::Private(PrivateKey::Ed25519(key)))
                }
            }
        }
        Algorithm::EcdsaP256Sha256 => {
            if jwk.kty != "EC" || jwk.crv.as_deref() != Some("P-256") {
                return Err("is not a P-256 JWK (\"kty\": \"EC\", \"crv\": \"P-256\")".into());
            }
            if jwk.alg.as_deref().is_some_and(|alg| alg != "ES256") {
                return Err("is a JWK for another algorithm than ECDSA P-256 with SHA-256 (\"alg\" is not \"ES256\")".into());
            }
            let coordinate = |name: &str, value: &Option<String>| -> Result<p256::FieldBytes, KeyError> {
                let bytes = member(name, value)?;
                if bytes.len() != 32 {
                    return Err(format!("is a JWK whose {name:?} is not 32 bytes"));
                }
                Ok(*p256::FieldBytes::from_slice(&bytes))
            };
            let point = p256::EncodedPoint::from_affine_coordinates(&coordinate("x", &jwk.x)?, &coordinate("y", &jwk.y)?, false);
            let public = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|_| "is a JWK whose \"x\" and \"y\" are not a point of P-256".to_string())?;
            match &jwk.d {
                None => Ok(AsymmetricKey::Public(PublicKey::EcdsaP256(P256PublicKey::new(public)))),
                Some(d) => {
                    let d = secret(d)?;
                    if d.len() != 32 {
                        return Err("is a JWK whose \"d\" is not 32 bytes".into());
                    }
                    let key = p256::ecdsa::SigningKey::from_slice(&d)
                        .map_err(|_| "is a JWK whose \"d\" is not a P-256 private key".to_string())?;
                    if *key.verifying_key() != public {
                        return Err("is a JWK whose \"x\" and \"y\" are not the public half of its \"d\"".into());
                    }
                    Ok(AsymmetricKey::Private(PrivateKey::EcdsaP256(key)))
                }
            }
        }
        Algorithm::EcdsaP384Sha384 => p384_key::parse_jwk(&jwk),
        Algorithm::RsaPssSha512 => rsa_key::parse_jwk(RsaScheme::PssSha512, &jwk),
        Algorithm::RsaV15Sha256 => rsa_key::parse_jwk(RsaScheme::Pkcs1v15Sha256, &jwk),
        Algorithm::HmacSha1 | Algorithm::HmacSha256 => Err("an HMAC key is a secret, not a JWK or PEM".into()),
    }
}

#[cfg(test)]
mod algorithm_tests;
#[cfg(test)]
mod tests;
