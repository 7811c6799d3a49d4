//! RSA keys for RFC 9421's `rsa-pss-sha512` (§3.3.1: RSASSA-PSS, SHA-512, MGF1 with
//! SHA-512, a 64-byte salt) and `rsa-v1_5-sha256` (§3.3.2: RSASSA-PKCS1-v1_5, SHA-256).
//!
//! - Public keys are read with RustCrypto's `pkcs1`/`spki` (SPKI or PKCS#1 PEM, JWK)
//!   and hold 2048 to 4096 bits, an odd modulus and an odd exponent from 3 to
//!   2^33 - 1 (what both backends take, so that no key verifies in one loader only).
//! - Verification: ring's with feature `ring-verify` (both loaders), else RustCrypto's
//!   `rsa` (the package's own tests). Public-key operations only: RUSTSEC-2023-0071
//!   (Marvin, a timing side channel) concerns the `rsa` crate's private-key operations,
//!   which this project never runs.
//! - Signing is ring's `RsaKeyPair` (feature `ring`: the native module). Without it
//!   an RSA private key is refused when the configuration is read, saying why
//!   (`NO_RSA_SIGNING`).

use rsa::pkcs8::der::Decode as _;
use rsa::pkcs8::ObjectIdentifier;
use zeroize::Zeroizing;

use super::{AsymmetricKey, KeyError, PublicKey};

/// Which of RFC 9421's two RSA algorithms a key signs or verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaScheme {
    /// `rsa-pss-sha512`.
    PssSha512,
    /// `rsa-v1_5-sha256`.
    Pkcs1v15Sha256,
}

/// Fewer bits is refused (NIST SP 800-131A; ring refuses fewer too).
pub const MIN_RSA_BITS: usize = 2048;
/// More bits is refused: verification cost grows with the modulus, and the `rsa` crate
/// stops here by default.
pub const MAX_RSA_BITS: usize = 4096;

/// An RSA public key, with ring's form of it made once, when the configuration is read.
#[derive(Clone)]
pub struct RsaPublicKey {
    pub(super) key: rsa::RsaPublicKey,
    #[cfg(feature = "ring-verify")]
    ring_key: ring::signature::RsaPublicKeyComponents<Vec<u8>>,
}

impl RsaPublicKey {
    /// From the modulus and public exponent, big-endian (leading zeros allowed).
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<Self, KeyError> {
        let n = rsa::BigUint::from_bytes_be(n);
        let e = rsa::BigUint::from_bytes_be(e);
        let bits = n.bits();
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "is a {bits}-bit RSA key: RSA keys must have at least {MIN_RSA_BITS} bits (a shorter modulus can be factored)"
            ));
        }
        if bits > MAX_RSA_BITS {
            return Err(format!("is a {bits}-bit RSA key: RSA keys may have at most {MAX_RSA_BITS} bits"));
        }
        let key = rsa::RsaPublicKey::new(n, e)
            .map_err(|_| "is not a usable RSA public key (its modulus must be odd, its exponent odd, from 3 to 2^33 - 1)".to_string())?;
        Ok(RsaPublicKey {
            #[cfg(feature = "ring-verify")]
            ring_key: ring::signature::RsaPublicKeyComponents {
                n: rsa::traits::PublicKeyParts::n(&key).to_bytes_be(),
                e: rsa::traits::PublicKeyParts::e(&key).to_bytes_be(),
            },
            key,
        })
    }

    /// The modulus and the public exponent, big-endian, without leading zeros (as a
    /// JWK's `n` and `e` hold them).
    pub fn components(&self) -> (Vec<u8>, Vec<u8>) {
        (rsa::traits::PublicKeyParts::n(&self.key).to_bytes_be(), rsa::traits::PublicKeyParts::e(&self.key).to_bytes_be())
    }

    /// The modulus's length in bytes: every signature's length.
    pub fn size(&self) -> usize {
        rsa::traits::PublicKeyParts::size(&self.key)
    }

    /// Whether `signature` is this key's signature of `message` under `scheme`. A
    /// signature of any other length than the modulus's is simply not one.
    pub fn verifies(&self, scheme: RsaScheme, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != self.size() {
            return false;
        }
        self.verifies_checked(scheme, message, signature)
    }

    #[cfg(feature = "ring-verify")]
    fn verifies_checked(&self, scheme: RsaScheme, message: &[u8], signature: &[u8]) -> bool {
        let parameters = match scheme {
            RsaScheme::PssSha512 => &ring::signature::RSA_PSS_2048_8192_SHA512,
            RsaScheme::Pkcs1v15Sha256 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        };
        self.ring_key.verify(parameters, message, signature).is_ok()
    }

    #[cfg(not(feature = "ring-verify"))]
    fn verifies_checked(&self, scheme: RsaScheme, message: &[u8], signature: &[u8]) -> bool {
        rsa_verifies(&self.key, scheme, message, signature)
    }
}

/// RustCrypto's verification (where ring is not built; the tests hold ring's to it).
#[cfg(any(not(feature = "ring-verify"), test))]
pub(super) fn rsa_verifies(key: &rsa::RsaPublicKey, scheme: RsaScheme, message: &[u8], signature: &[u8]) -> bool {
    use sha2::Digest as _;
    match scheme {
        // Pss::new: the salt is the digest's length, 64 bytes, as §3.3.1 asks.
        RsaScheme::PssSha512 => key.verify(rsa::Pss::new::<sha2::Sha512>(), &sha2::Sha512::digest(message), signature).is_ok(),
        RsaScheme::Pkcs1v15Sha256 => {
            key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &sha2::Sha256::digest(message), signature).is_ok()
        }
    }
}

impl PartialEq for RsaPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for RsaPublicKey {}

impl std::fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaPublicKey({} bits)", self.size() * 8)
    }
}

/// An RSA private key: ring's, which signs (the native module only).
#[cfg(feature = "ring")]
#[derive(Clone)]
pub struct RsaPrivateKey {
    pair: std::sync::Arc<ring::signature::RsaKeyPair>,
    public: RsaPublicKey,
}

/// Why ring refuses a private key whose public half was fine.
#[cfg(feature = "ring")]
fn unusable(e: ring::error::KeyRejected) -> KeyError {
    format!(
        "is an RSA private key the signer cannot use ({e}): it takes two-prime keys whose primes have the same length, as `openssl genpkey -algorithm rsa` makes them (RFC 9421's own B.1.1 key has primes of unequal length)"
    )
}

#[cfg(feature = "ring")]
impl RsaPrivateKey {
    /// From a PKCS#1 `RSAPrivateKey` (DER), whose size was checked.
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, KeyError> {
        let pair = ring::signature::RsaKeyPair::from_der(der).map_err(unusable)?;
        Self::new(pair)
    }

    /// From a JWK's members (RFC 7518 §6.3), big-endian.
    pub fn from_components(components: &ring::rsa::KeyPairComponents<&[u8]>) -> Result<Self, KeyError> {
        let pair = ring::signature::RsaKeyPair::from_components(components).map_err(unusable)?;
        Self::new(pair)
    }

    fn new(pair: ring::signature::RsaKeyPair) -> Result<Self, KeyError> {
        let components = ring::signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        let public = RsaPublicKey::from_components(&components.n, &components.e)?;
        Ok(RsaPrivateKey { pair: std::sync::Arc::new(pair), public })
    }

    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    /// The signature of `message` (the modulus's length). PSS draws its 64-byte salt
    /// from the system's random source; PKCS#1 v1.5 is deterministic.
    pub fn sign(&self, scheme: RsaScheme, message: &[u8]) -> Option<Vec<u8>> {
        let padding: &'static dyn ring::signature::RsaEncoding = match scheme {
            RsaScheme::PssSha512 => &ring::signature::RSA_PSS_SHA512,
            RsaScheme::Pkcs1v15Sha256 => &ring::signature::RSA_PKCS1_SHA256,
        };
        let mut signature = vec![0; self.pair.public().modulus_len()];
        self.pair.sign(padding, &ring::rand::SystemRandom::new(), message, &mut signature).ok()?;
        Some(signature)
    }
}

/// rsaEncryption (RFC 8017 Appendix A.1), what OpenSSL writes for `genpkey -algorithm rsa`.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-RSASSA-PSS (RFC 4055), what `genpkey -algorithm rsa-pss` writes, as RFC 9421's B.1.2 key.
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// Why the Wasm filter holds no RSA private key.
#[cfg(not(feature = "ring"))]
const NO_RSA_SIGNING: &str = "is an RSA private key, which the Wasm filter does not take: it would sign with the `rsa` crate, whose private-key operations leak the key through timing (RUSTSEC-2023-0071, no fixed release). Sign with RSA in the native module (envoy/native-*.yaml), or with ed25519 or ecdsa-p256-sha256 in the Wasm filter; a middleware verifies with the public key (\"-----BEGIN PUBLIC KEY-----\" or a JWK without \"d\")";

fn kind(scheme: RsaScheme) -> &'static str {
    match scheme {
        RsaScheme::PssSha512 => "rsa-pss-sha512",
        RsaScheme::Pkcs1v15Sha256 => "rsa-v1_5-sha256",
    }
}

/// Whether a key of this algorithm identifier may serve `scheme`.
fn algorithm_suits(scheme: RsaScheme, oid: ObjectIdentifier, has_parameters: bool) -> Result<(), KeyError> {
    if oid == RSA_ENCRYPTION {
        return Ok(());
    }
    if oid != RSASSA_PSS {
        return Err(format!("is not an RSA key: give an RSA key for {}", kind(scheme)));
    }
    if scheme != RsaScheme::PssSha512 {
        return Err("is an RSASSA-PSS key (id-RSASSA-PSS), for rsa-pss-sha512 only, not rsa-v1_5-sha256".into());
    }
    if has_parameters {
        return Err("is an RSASSA-PSS key restricted by parameters, which are not read: give it as PKCS#1 (openssl rsa -traditional, or -RSAPublicKey_out)".into());
    }
    Ok(())
}

/// An RSA key from PEM: SPKI or PKCS#1 public (`-----BEGIN PUBLIC KEY-----`,
/// `-----BEGIN RSA PUBLIC KEY-----`), PKCS#8 or PKCS#1 private (`-----BEGIN PRIVATE
/// KEY-----`, `-----BEGIN RSA PRIVATE KEY-----`).
pub(super) fn parse_pem(scheme: RsaScheme, label: &str, pem: &str) -> Result<AsymmetricKey, KeyError> {
    let unreadable = |what: &str| format!("is not {what} of an RSA key (the PEM is not shown: it may be a secret)");
    let der = || -> Result<Zeroizing<Vec<u8>>, KeyError> {
        rsa::pkcs8::der::pem::decode_vec(pem.as_bytes())
            .map(|(_, der)| Zeroizing::new(der))
            .map_err(|_| "is not a PEM: its base64 or its END line is damaged (the PEM is not shown: it may be a secret)".to_string())
    };
    match label {
        "-----BEGIN PUBLIC KEY-----" => {
            let der = der()?;
            let spki = rsa::pkcs8::SubjectPublicKeyInfoRef::from_der(&der).map_err(|_| unreadable("an SPKI public key"))?;
            let has_parameters = spki.algorithm.parameters.is_some_and(|p| !p.is_null());
            algorithm_suits(scheme, spki.algorithm.oid, has_parameters)?;
            let bytes = spki.subject_public_key.as_bytes().ok_or_else(|| unreadable("an SPKI public key"))?;
            pkcs1_public(scheme, bytes).map_err(|e| e.unwrap_or_else(|| unreadable("an SPKI public key")))
        }
        "-----BEGIN RSA PUBLIC KEY-----" => {
            pkcs1_public(scheme, &der()?).map_err(|e| e.unwrap_or_else(|| unreadable("a PKCS#1 public key")))
        }
        "-----BEGIN PRIVATE KEY-----" => {
            let der = der()?;
            let info = rsa::pkcs8::PrivateKeyInfo::from_der(&der).map_err(|_| unreadable("a PKCS#8 private key"))?;
            let has_parameters = info.algorithm.parameters.is_some_and(|p| !p.is_null());
            algorithm_suits(scheme, info.algorithm.oid, has_parameters)?;
            pkcs1_private(scheme, info.private_key).map_err(|e| e.unwrap_or_else(|| unreadable("a PKCS#8 private key")))
        }
        "-----BEGIN RSA PRIVATE KEY-----" => {
            pkcs1_private(scheme, &der()?).map_err(|e| e.unwrap_or_else(|| unreadable("a PKCS#1 private key")))
        }
        "-----BEGIN ENCRYPTED PRIVATE KEY-----" => Err(super::ENCRYPTED_PEM.into()),
        _ => Err("is a PEM of another kind: give an RSA key as \"-----BEGIN PUBLIC KEY-----\" (SPKI) or \"-----BEGIN RSA PUBLIC KEY-----\" (PKCS#1), or its private key as \"-----BEGIN PRIVATE KEY-----\" (PKCS#8) or \"-----BEGIN RSA PRIVATE KEY-----\" (PKCS#1)".into()),
    }
}

/// A PKCS#1 `RSAPublicKey`; `Err(None)` when it does not parse.
fn pkcs1_public(scheme: RsaScheme, der: &[u8]) -> Result<AsymmetricKey, Option<KeyError>> {
    let key = rsa::pkcs1::RsaPublicKey::from_der(der).map_err(|_| None)?;
    let public = RsaPublicKey::from_components(key.modulus.as_bytes(), key.public_exponent.as_bytes()).map_err(Some)?;
    Ok(AsymmetricKey::Public(PublicKey::Rsa(scheme, public)))
}

/// A PKCS#1 `RSAPrivateKey`, its size checked first; `Err(None)` when it does not parse.
fn pkcs1_private(scheme: RsaScheme, der: &[u8]) -> Result<AsymmetricKey, Option<KeyError>> {
    let key = rsa::pkcs1::RsaPrivateKey::from_der(der).map_err(|_| None)?;
    RsaPublicKey::from_components(key.modulus.as_bytes(), key.public_exponent.as_bytes()).map_err(Some)?;
    #[cfg(feature = "ring")]
    return RsaPrivateKey::from_pkcs1_der(der).map(|k| AsymmetricKey::Private(super::PrivateKey::Rsa(scheme, k))).map_err(Some);
    #[cfg(not(feature = "ring"))]
    return {
        let _ = scheme;
        Err(Some(NO_RSA_SIGNING.into()))
    };
}

/// An RSA key from a JWK (RFC 7518 §6.3): `{"kty": "RSA", "n": .., "e": ..}`, and for
/// a private key `"d"`, `"p"`, `"q"`, `"dp"`, `"dq"`, `"qi"`.
pub(super) fn parse_jwk(scheme: RsaScheme, jwk: &super::Jwk) -> Result<AsymmetricKey, KeyError> {
    if jwk.kty != "RSA" {
        return Err("is not an RSA JWK (\"kty\": \"RSA\")".into());
    }
    let alg = match scheme {
        RsaScheme::PssSha512 => "PS512",
        RsaScheme::Pkcs1v15Sha256 => "RS256",
    };
    if jwk.alg.as_deref().is_some_and(|named| named != alg) {
        return Err(format!("is a JWK for another algorithm than {} (\"alg\" is not {alg:?})", kind(scheme)));
    }
    let n = super::jwk_member("n", &jwk.n)?;
    let e = super::jwk_member("e", &jwk.e)?;
    let public = RsaPublicKey::from_components(&n, &e)?;
    let Some(d) = &jwk.d else {
        return Ok(AsymmetricKey::Public(PublicKey::Rsa(scheme, public)));
    };
    #[cfg(feature = "ring")]
    {
        let secret = |name: &str, value: &Option<String>| -> Result<Zeroizing<Vec<u8>>, KeyError> {
            let value = value.as_ref().ok_or_else(|| {
                format!("is an RSA JWK with \"d\" but without {name:?}: a private key needs \"p\", \"q\", \"dp\", \"dq\" and \"qi\" too")
            })?;
            super::jwk_secret(name, value)
        };
        let (d, p, q) = (super::jwk_secret("d", d)?, secret("p", &jwk.p)?, secret("q", &jwk.q)?);
        let (dp, dq, qi) = (secret("dp", &jwk.dp)?, secret("dq", &jwk.dq)?, secret("qi", &jwk.qi)?);
        let components = ring::rsa::KeyPairComponents {
            public_key: ring::rsa::PublicKeyComponents { n: n.as_slice(), e: e.as_slice() },
            d: d.as_slice(),
            p: p.as_slice(),
            q: q.as_slice(),
            dP: dp.as_slice(),
            dQ: dq.as_slice(),
            qInv: qi.as_slice(),
        };
        let private = RsaPrivateKey::from_components(&components)?;
        if *private.public_key() != public {
            return Err("is a JWK whose \"n\" and \"e\" are not the public half of its private key".into());
        }
        Ok(AsymmetricKey::Private(super::PrivateKey::Rsa(scheme, private)))
    }
    #[cfg(not(feature = "ring"))]
    {
        let _ = d;
        Err(NO_RSA_SIGNING.into())
    }
}
