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
//! - fixed-base tables (feature `p256-tables`, the Wasm filter's: `super::p256_tables`):
//!   variable-time verification on fiat-crypto's verified 32-bit arithmetic with a
//!   table of affine multiples per key (88 KB, built when the key first verifies) and
//!   one of the generator's, so a verification is mixed additions only. In Wasm, where
//!   ring's P-256 code is constant-time and generic, under a fifth of ring's
//!   instructions (1.8 M against 10.2 M under wasmtime; issue #30), for about 48 M
//!   per key to build its table. It wins over `ring-verify`, which the filter keeps
//!   for RSA.
//!
//! Either way the key is read with `p256` (PEM, JWK: `super::parse_key`), and
//! signing stays with `p256` (deterministic, RFC 6979), so both loaders send the same
//! bytes.

/// A P-256 public key, with ring's form of it made when the key is read, and its
/// table (`p256-tables`) when it first verifies (`super::key_tables`).
#[derive(Clone)]
pub struct P256PublicKey {
    key: p256::ecdsa::VerifyingKey,
    /// Made on first use; none only if it could not be built, which no valid key
    /// causes: then the other backend verifies.
    #[cfg(feature = "p256-tables")]
    table: super::key_tables::LazyTable<super::p256_tables::KeyTable>,
    /// The uncompressed SEC1 point (65 bytes), as ring takes it.
    #[cfg(feature = "ring-verify")]
    ring_key: ring::signature::UnparsedPublicKey<Vec<u8>>,
}

impl P256PublicKey {
    pub fn new(key: p256::ecdsa::VerifyingKey) -> Self {
        P256PublicKey {
            #[cfg(feature = "p256-tables")]
            table: super::key_tables::LazyTable::new(),
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
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        #[cfg(feature = "p256-tables")]
        if let Some(table) = self.table() {
            return table.verifies(message, signature);
        }
        self.verifies_without_table(message, signature)
    }

    /// The key's table, made now if this is its first use.
    #[cfg(feature = "p256-tables")]
    fn table(&self) -> Option<&std::sync::Arc<super::p256_tables::KeyTable>> {
        self.table.get(|| tables::table_of(&self.key))
    }

    #[cfg(feature = "ring-verify")]
    fn verifies_without_table(&self, message: &[u8], signature: &[u8]) -> bool {
        ring_verifies(&self.ring_key, message, signature)
    }

    #[cfg(not(feature = "ring-verify"))]
    fn verifies_without_table(&self, message: &[u8], signature: &[u8]) -> bool {
        p256_verifies(&self.key, message, signature)
    }
}

/// The tables of the keys in use, one per key (`super::key_tables`).
#[cfg(feature = "p256-tables")]
mod tables {
    use std::sync::Arc;

    use crate::asymmetric::key_tables::InUse;
    use crate::asymmetric::p256_tables::KeyTable;

    /// By uncompressed point.
    static IN_USE: InUse<KeyTable> = InUse::new();

    pub fn table_of(key: &p256::ecdsa::VerifyingKey) -> Option<Arc<KeyTable>> {
        let point = key.to_encoded_point(false);
        IN_USE.table_of(point.as_bytes(), || KeyTable::new(point.x()?.as_slice().try_into().ok()?, point.y()?.as_slice().try_into().ok()?))
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
mod differential;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod wycheproof;
