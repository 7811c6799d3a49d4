//! An ECDSA P-384 public key, verifying `ecdsa-p384-sha384` signatures (RFC 9421
//! §3.3.5): SHA-384, the signature `r || s`, each 48 bytes big-endian.
//!
//! As for P-256 (`p256_public_key.rs`), two backends with one behaviour (exactly 96
//! bytes, `r` and `s` in [1, n-1], either `s` or `n - s`): RustCrypto's `p384` by
//! default (the Wasm filter: ring's P-384, built for wasm32, ran 71.4 M instructions
//! per request against `p384`'s 62 M), ring's with feature `ring` (the native module,
//! where it is the faster). Keys
//! are read and signing is done with `p384` (deterministic, RFC 6979), so both
//! loaders send the same bytes.

/// A P-384 public key, with ring's form of it made once, when the configuration is read.
#[derive(Clone)]
pub struct P384PublicKey {
    pub(super) key: p384::ecdsa::VerifyingKey,
    /// The uncompressed SEC1 point (97 bytes), as ring takes it.
    #[cfg(feature = "ring")]
    ring_key: ring::signature::UnparsedPublicKey<Vec<u8>>,
}

impl P384PublicKey {
    /// The key, as RustCrypto holds it (to write it out, as a JWK say).
    pub fn verifying_key(&self) -> &p384::ecdsa::VerifyingKey {
        &self.key
    }

    pub fn new(key: p384::ecdsa::VerifyingKey) -> Self {
        P384PublicKey {
            #[cfg(feature = "ring")]
            ring_key: ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P384_SHA384_FIXED,
                key.to_encoded_point(false).as_bytes().to_vec(),
            ),
            key,
        }
    }

    /// Whether `signature` (96 bytes, `r || s`) is this key's signature of `message`.
    #[cfg(feature = "ring")]
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        // _FIXED: 96 bytes only (not DER), r and s in [1, n-1].
        self.ring_key.verify(message, signature).is_ok()
    }

    /// Whether `signature` (96 bytes, `r || s`) is this key's signature of `message`.
    #[cfg(not(feature = "ring"))]
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        p384_verifies(&self.key, message, signature)
    }
}

#[cfg(any(not(feature = "ring"), test))]
pub(super) fn p384_verifies(key: &p384::ecdsa::VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    use p384::ecdsa::signature::Verifier as _;
    // from_slice takes 96 bytes only, and r and s in [1, n-1].
    p384::ecdsa::Signature::from_slice(signature).is_ok_and(|signature| key.verify(message, &signature).is_ok())
}

/// The same key (ring's form is made from `p384`'s, so comparing that suffices).
impl PartialEq for P384PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for P384PublicKey {}

impl std::fmt::Debug for P384PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("P384PublicKey")
    }
}

/// A P-384 key from PEM: PKCS#8 or SEC1 private, SPKI public.
pub(super) fn parse_pem(label: &str, pem: &str) -> Result<super::AsymmetricKey, super::KeyError> {
    use super::{AsymmetricKey, PrivateKey, PublicKey};
    use p384::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
    let unreadable = |what: &str| format!("is not {what} of an ECDSA P-384 key (the PEM is not shown: it may be a secret)");
    match label {
        "-----BEGIN PRIVATE KEY-----" => p384::ecdsa::SigningKey::from_pkcs8_pem(pem)
            .map(|k| AsymmetricKey::Private(PrivateKey::EcdsaP384(k)))
            .map_err(|_| unreadable("a PKCS#8 private key")),
        "-----BEGIN EC PRIVATE KEY-----" => p384::SecretKey::from_sec1_pem(pem)
            .map(|k| AsymmetricKey::Private(PrivateKey::EcdsaP384(k.into())))
            .map_err(|_| unreadable("a SEC1 private key")),
        "-----BEGIN PUBLIC KEY-----" => p384::ecdsa::VerifyingKey::from_public_key_pem(pem)
            .map(|k| AsymmetricKey::Public(PublicKey::EcdsaP384(P384PublicKey::new(k))))
            .map_err(|_| unreadable("an SPKI public key")),
        "-----BEGIN ENCRYPTED PRIVATE KEY-----" => Err(super::ENCRYPTED_PEM.into()),
        _ => Err("is a PEM of another kind: give an ECDSA P-384 key as \"-----BEGIN PRIVATE KEY-----\" (PKCS#8; or SEC1, \"-----BEGIN EC PRIVATE KEY-----\") or \"-----BEGIN PUBLIC KEY-----\" (SPKI)".into()),
    }
}

/// A P-384 key from a JWK: `{"kty": "EC", "crv": "P-384", "x": .., "y": ..[, "d": ..]}`.
pub(super) fn parse_jwk(jwk: &super::Jwk) -> Result<super::AsymmetricKey, super::KeyError> {
    use super::{AsymmetricKey, PrivateKey, PublicKey};
    if jwk.kty != "EC" || jwk.crv.as_deref() != Some("P-384") {
        return Err("is not a P-384 JWK (\"kty\": \"EC\", \"crv\": \"P-384\")".into());
    }
    if jwk.alg.as_deref().is_some_and(|alg| alg != "ES384") {
        return Err("is a JWK for another algorithm than ECDSA P-384 with SHA-384 (\"alg\" is not \"ES384\")".into());
    }
    let coordinate = |name: &str, value: &Option<String>| -> Result<p384::FieldBytes, super::KeyError> {
        let bytes = super::jwk_member(name, value)?;
        if bytes.len() != 48 {
            return Err(format!("is a JWK whose {name:?} is not 48 bytes"));
        }
        Ok(*p384::FieldBytes::from_slice(&bytes))
    };
    let point = p384::EncodedPoint::from_affine_coordinates(&coordinate("x", &jwk.x)?, &coordinate("y", &jwk.y)?, false);
    let public = p384::ecdsa::VerifyingKey::from_encoded_point(&point)
        .map_err(|_| "is a JWK whose \"x\" and \"y\" are not a point of P-384".to_string())?;
    match &jwk.d {
        None => Ok(AsymmetricKey::Public(PublicKey::EcdsaP384(P384PublicKey::new(public)))),
        Some(d) => {
            let d = super::jwk_secret("d", d)?;
            if d.len() != 48 {
                return Err("is a JWK whose \"d\" is not 48 bytes".into());
            }
            let key = p384::ecdsa::SigningKey::from_slice(&d).map_err(|_| "is a JWK whose \"d\" is not a P-384 private key".to_string())?;
            if *key.verifying_key() != public {
                return Err("is a JWK whose \"x\" and \"y\" are not the public half of its \"d\"".into());
            }
            Ok(AsymmetricKey::Private(PrivateKey::EcdsaP384(key)))
        }
    }
}
