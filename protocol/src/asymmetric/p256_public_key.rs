//! An ECDSA P-256 public key, verifying `ecdsa-p256-sha256` signatures.
//!
//! Two backends, one behaviour (a signature is exactly 64 bytes, `r || s`, each
//! 32 bytes big-endian and in [1, n-1]; either `s` or `n - s` verifies, as OpenSSL
//! signs both):
//! - RustCrypto's `p256` (the default): portable Rust.
//! - ring's (feature `ring-verify`, which both loaders enable; `ring` implies it):
//!   BoringSSL's P-256 code, several times fewer instructions per verification
//!   (BENCHMARKS.md). Natively its field arithmetic is assembly; in Wasm it is
//!   fiat-crypto's 32-bit C with a precomputed table of the base point's multiples,
//!   where `p256`'s 64-bit limbs become 128-bit multiplies that Wasm lacks
//!   (`__multi3` calls).
//!
//! Either way the key is read with `p256` (PEM, JWK: `super::parse_key`), and
//! signing stays with `p256` (deterministic, RFC 6979), so both loaders send the same
//! bytes.

/// A P-256 public key, with ring's form of it made once, when the configuration is read.
#[derive(Clone)]
pub struct P256PublicKey {
    key: p256::ecdsa::VerifyingKey,
    /// The uncompressed SEC1 point (65 bytes), as ring takes it.
    #[cfg(feature = "ring-verify")]
    ring_key: ring::signature::UnparsedPublicKey<Vec<u8>>,
}

impl P256PublicKey {
    pub fn new(key: p256::ecdsa::VerifyingKey) -> Self {
        P256PublicKey {
            #[cfg(feature = "ring-verify")]
            ring_key: ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                key.to_encoded_point(false).as_bytes().to_vec(),
            ),
            key,
        }
    }

    /// The key as `p256` holds it.
    pub fn verifying_key(&self) -> &p256::ecdsa::VerifyingKey {
        &self.key
    }

    /// Whether `signature` (64 bytes, `r || s`) is this key's signature of `message`.
    #[cfg(feature = "ring-verify")]
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        ring_verifies(&self.ring_key, message, signature)
    }

    /// Whether `signature` (64 bytes, `r || s`) is this key's signature of `message`.
    #[cfg(not(feature = "ring-verify"))]
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        p256_verifies(&self.key, message, signature)
    }
}

#[cfg(any(not(feature = "ring-verify"), test))]
fn p256_verifies(key: &p256::ecdsa::VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier as _;
    // from_slice takes 64 bytes only, and r and s in [1, n-1].
    p256::ecdsa::Signature::from_slice(signature).is_ok_and(|signature| key.verify(message, &signature).is_ok())
}

#[cfg(feature = "ring-verify")]
fn ring_verifies(key: &ring::signature::UnparsedPublicKey<Vec<u8>>, message: &[u8], signature: &[u8]) -> bool {
    // _FIXED: 64 bytes only (not DER), r and s in [1, n-1].
    key.verify(message, signature).is_ok()
}

/// The same key (ring's form is made from `p256`'s, so comparing that suffices).
impl PartialEq for P256PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for P256PublicKey {}

impl std::fmt::Debug for P256PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("P256PublicKey")
    }
}

#[cfg(test)]
mod tests;
