//! Variable-time ECDSA P-256 verification with fixed-base tables (feature
//! `p256-tables`, the Wasm filter's; issue #30). Verification handles public data only
//! (key, message, signature), so it need not run in constant time, and the fewer
//! field multiplications, the fewer instructions: in Wasm each of fiat-crypto's
//! 32-bit multiplications costs about 1,700.
//!
//! u1·G + u2·Q is summed from two tables (generator G, key Q) of affine points, one
//! entry per 6-bit signed window of each scalar: about 86 mixed additions of 11
//! multiplications each, no doubling. Each table holds 43 windows x 32 multiples x 64
//! bytes = 88 KB: one per key, built when the key first verifies (`KeyTable::new`,
//! through `super::key_tables`), and G's, built once per process (Wasm VM) with the
//! first key. The final check needs no
//! inversion: x(R) = r (mod n) means X = r·Z^2 or, when r + n < p, X = (r + n)·Z^2.
//!
//! Field and scalar arithmetic are fiat-crypto's formally verified code; the
//! variable-time inversions (binary extended Euclid) are checked by multiplying back.

mod field;
mod point;
mod scalar;
mod table;
mod uint;

use field::{Fe, P};
use point::{Affine, Jacobian};
use scalar::{Inverse, N};
use sha2::{Digest as _, Sha256};
use std::sync::OnceLock;
use table::Table;
use uint::U256;

/// The generator's table, built with the first key.
static GENERATOR_TABLE: OnceLock<Option<Table>> = OnceLock::new();

/// P-256's generator G (SEC 2), big-endian.
const GENERATOR_X: [u8; 32] = [
    0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb,
    0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96,
];
const GENERATOR_Y: [u8; 32] = [
    0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31,
    0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
];

fn generator_table() -> Option<&'static Table> {
    GENERATOR_TABLE.get_or_init(|| Table::new(&affine_point(&GENERATOR_X, &GENERATOR_Y)?)).as_ref()
}

fn affine_point(x: &[u8; 32], y: &[u8; 32]) -> Option<Affine> {
    Some(Affine { x: Fe::from_uint(&U256::from_be_bytes(x))?, y: Fe::from_uint(&U256::from_be_bytes(y))? })
}

/// A public key's table (88 KB), for a key already validated as a point of the curve.
pub(crate) struct KeyTable {
    table: Table,
}

impl KeyTable {
    /// The table of the affine point (x, y), big-endian coordinates of a validated
    /// key (`p256` checks that it is on the curve and not infinity). Also builds G's
    /// table if no key did yet. None if either cannot be built (not for a valid key).
    pub(crate) fn new(x: &[u8; 32], y: &[u8; 32]) -> Option<KeyTable> {
        generator_table()?;
        Some(KeyTable { table: Table::new(&affine_point(x, y)?)? })
    }

    /// Whether `signature` (exactly 64 bytes, r || s, each big-endian in [1, n-1]) is
    /// this key's ECDSA signature of SHA-256(`message`).
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.try_verify(message, signature).unwrap_or(false)
    }

    fn try_verify(&self, message: &[u8], signature: &[u8]) -> Option<bool> {
        let signature: &[u8; 64] = signature.try_into().ok()?;
        let (r, s) = signature.split_at(32);
        let r = U256::from_be_bytes(r.try_into().ok()?);
        let s = U256::from_be_bytes(s.try_into().ok()?);
        if r.is_zero() || !r.lt(&N) || s.is_zero() || !s.lt(&N) {
            return Some(false);
        }
        // bits2int of a 256-bit digest is the digest itself, below 2^256 < 2n.
        let digest = U256::from_be_bytes(&Sha256::digest(message).into());
        let e = if digest.lt(&N) { digest } else { digest.sub(&N).0 };
        let s_inverse = Inverse::of(&s)?;
        let u1 = s_inverse.times(&e)?;
        let u2 = s_inverse.times(&r)?;
        let sum = generator_table()?.add_multiple(None, &u1)?;
        let Some(sum) = self.table.add_multiple(sum, &u2)? else {
            return Some(false); // infinity
        };
        Some(x_is_r_mod_n(&sum, &r))
    }
}

/// Whether the affine x of `point` is r modulo n: x = r or x = r + n (x < p), tested
/// as X = x·Z^2 without inverting Z.
fn x_is_r_mod_n(point: &Jacobian, r: &U256) -> bool {
    let z_squared = point.z.square();
    let matches = |candidate: &U256| Fe::from_uint(candidate).is_some_and(|x| point.x.equals(&x.mul(&z_squared)));
    if matches(r) {
        return true;
    }
    let (r_plus_n, carry) = r.add(&N);
    !carry && r_plus_n.lt(&P) && matches(&r_plus_n)
}

#[cfg(test)]
mod tests;
