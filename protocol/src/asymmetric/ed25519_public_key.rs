//! An Ed25519 public key, verifying `ed25519` signatures strictly, as ed25519-dalek's
//! `verify_strict`: a canonical `S`, `R` and the key not of small order, and
//! `[S]B = R + [k]A` checked by recomputing `R` and comparing its encoding, so a
//! signature has one encoding only.
//!
//! Two ways to the same verdict:
//! - ed25519-dalek's `verify_strict` (the default, and the native module's): one
//!   double-scalar multiplication, whose 253 doublings are cheap with 64-bit
//!   multiplies and AVX2.
//! - With feature `ed25519-key-table` (the Wasm filter): `[k](-A)` read from a table of
//!   the key's multiples (curve25519-dalek's fixed-base table, 30 KB a key, made when
//!   the key first verifies: `super::key_tables`), as `[S]B` is from the base point's:
//!   additions only, no doublings; and `R` is not decompressed (its small order is
//!   told by its encoding). In Wasm, where a field multiplication takes 100 32-bit
//!   products, that is about a third fewer instructions (`scripts/crypto-cost.sh`, BENCHMARKS.md issue #30).
//!
//! The tests hold both to the same verdicts, on Wycheproof's vectors and on mutated
//! signatures.

/// An Ed25519 public key; with `ed25519-key-table`, its table of multiples too.
#[derive(Clone)]
pub struct Ed25519PublicKey {
    key: ed25519_dalek::VerifyingKey,
    /// Made on first use (`super::key_tables`); none for a key of small order.
    #[cfg(feature = "ed25519-key-table")]
    table: super::key_tables::LazyTable<table::KeyTable>,
}

impl Ed25519PublicKey {
    pub fn new(key: ed25519_dalek::VerifyingKey) -> Self {
        Ed25519PublicKey {
            #[cfg(feature = "ed25519-key-table")]
            table: super::key_tables::LazyTable::new(),
            key,
        }
    }

    /// The key as ed25519-dalek holds it.
    pub fn verifying_key(&self) -> &ed25519_dalek::VerifyingKey {
        &self.key
    }

    /// Whether `signature` (64 bytes, `R || S`) is this key's signature of `message`.
    #[cfg(feature = "ed25519-key-table")]
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        // No table: the key is of small order, which verifies nothing.
        let key = &self.key;
        self.table.get(|| table::table_of(key)).is_some_and(|table| table.verifies(key.as_bytes(), message, signature))
    }

    /// Whether `signature` (64 bytes, `R || S`) is this key's signature of `message`.
    #[cfg(not(feature = "ed25519-key-table"))]
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        dalek_verifies(&self.key, message, signature)
    }
}

#[cfg(any(not(feature = "ed25519-key-table"), test))]
fn dalek_verifies(key: &ed25519_dalek::VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    ed25519_dalek::Signature::from_slice(signature).is_ok_and(|signature| key.verify_strict(message, &signature).is_ok())
}

#[cfg(feature = "ed25519-key-table")]
mod table {
    use std::sync::{Arc, OnceLock};

    use crate::asymmetric::key_tables::InUse;

    use curve25519_dalek::constants::{ED25519_BASEPOINT_TABLE, EIGHT_TORSION};
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsBasepointTable};
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::BasepointTable as _;
    use sha2::{Digest as _, Sha512};

    /// The canonical encodings of the eight points of small order (made once).
    fn small_order_encodings() -> &'static [[u8; 32]; 8] {
        static ENCODINGS: OnceLock<[[u8; 32]; 8]> = OnceLock::new();
        ENCODINGS.get_or_init(|| EIGHT_TORSION.map(|point| point.compress().to_bytes()))
    }

    /// The tables of the keys in use, by encoding.
    static IN_USE: InUse<KeyTable> = InUse::new();

    pub fn table_of(key: &ed25519_dalek::VerifyingKey) -> Option<Arc<KeyTable>> {
        IN_USE.table_of(key.as_bytes(), || KeyTable::new(key))
    }

    /// `-A`'s multiples, for `[k](-A)` without doublings.
    pub struct KeyTable {
        minus_a: EdwardsBasepointTable,
    }

    impl KeyTable {
        /// `None` for a key of small order (or one that is not a point, which a
        /// `VerifyingKey` never holds): `verify_strict` refuses every signature by it.
        pub fn new(key: &ed25519_dalek::VerifyingKey) -> Option<KeyTable> {
            let a = CompressedEdwardsY(key.to_bytes()).decompress()?;
            if a.is_small_order() {
                return None;
            }
            Some(KeyTable { minus_a: EdwardsBasepointTable::create(&-a) })
        }

        /// RFC 8032 §5.1.7, strictly: `R' = [S]B + [k](-A)` with
        /// `k = SHA-512(R || A || M) mod L`, equal to `R` as encoded.
        pub fn verifies(&self, a: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
            let Ok(signature) = <&[u8; 64]>::try_from(signature) else { return false };
            let (r, s) = signature.split_at(32);
            let (Ok(r), Ok(s)) = (<[u8; 32]>::try_from(r), <[u8; 32]>::try_from(s)) else { return false };
            // S < L, else a second encoding of the same signature.
            let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s)) else { return false };
            // R not of small order, as verify_strict, without decompressing R (a
            // square root): R must equal R' as encoded, and R' is encoded canonically,
            // so R passes only as a point's canonical encoding; a small-order point's
            // is one of eight.
            if small_order_encodings().contains(&r) {
                return false;
            }
            let mut hash = [0u8; 64];
            hash.copy_from_slice(&Sha512::new().chain_update(r).chain_update(a).chain_update(message).finalize());
            let k = Scalar::from_bytes_mod_order_wide(&hash);
            (ED25519_BASEPOINT_TABLE * &s + &self.minus_a * &k).compress().0 == r
        }
    }
}

/// The same key (the table is made from it).
impl PartialEq for Ed25519PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Ed25519PublicKey {}

impl std::fmt::Debug for Ed25519PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ed25519PublicKey")
    }
}

#[cfg(test)]
mod tests;
