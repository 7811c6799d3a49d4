//! 256-bit unsigned integers for the variable-time steps that fiat-crypto does not
//! offer: range checks, the scalars' signed windows and modular inversion (binary
//! extended Euclid, checked afterwards by a multiplication on fiat's arithmetic).
//! Limbs of 64 bits: Wasm adds, subtracts and shifts them natively.

/// Little-endian 64-bit limbs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct U256(pub(super) [u64; 4]);

impl U256 {
    pub(super) const ZERO: U256 = U256([0; 4]);
    pub(super) const ONE: U256 = U256([1, 0, 0, 0]);

    pub(super) fn from_be_bytes(bytes: &[u8; 32]) -> U256 {
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(bytes.rchunks_exact(8)) {
            *limb = chunk.iter().fold(0, |value, &byte| value << 8 | u64::from(byte));
        }
        U256(limbs)
    }

    /// Little-endian 32-bit limbs, as fiat-crypto's 32-bit code takes them.
    pub(super) fn to_u32_limbs(self) -> [u32; 8] {
        let mut out = [0u32; 8];
        for (pair, limb) in out.chunks_exact_mut(2).zip(self.0) {
            pair[0] = limb as u32;
            pair[1] = (limb >> 32) as u32;
        }
        out
    }

    pub(super) fn from_u32_limbs(limbs: &[u32; 8]) -> U256 {
        let mut out = [0u64; 4];
        for (limb, pair) in out.iter_mut().zip(limbs.chunks_exact(2)) {
            *limb = u64::from(pair[0]) | u64::from(pair[1]) << 32;
        }
        U256(out)
    }

    pub(super) fn is_zero(&self) -> bool {
        self.0 == [0; 4]
    }

    fn is_even(&self) -> bool {
        self.0[0] & 1 == 0
    }

    pub(super) fn lt(&self, other: &U256) -> bool {
        for (a, b) in self.0.iter().zip(other.0.iter()).rev() {
            if a != b {
                return a < b;
            }
        }
        false
    }

    /// The sum and whether it carried out of 256 bits.
    pub(super) fn add(&self, other: &U256) -> (U256, bool) {
        let mut out = [0u64; 4];
        let mut carry = false;
        for ((sum, a), b) in out.iter_mut().zip(self.0).zip(other.0) {
            let (partial, carry1) = a.overflowing_add(b);
            let (total, carry2) = partial.overflowing_add(u64::from(carry));
            *sum = total;
            carry = carry1 || carry2;
        }
        (U256(out), carry)
    }

    /// The difference modulo 2^256 and whether it borrowed.
    pub(super) fn sub(&self, other: &U256) -> (U256, bool) {
        let mut out = [0u64; 4];
        let mut borrow = false;
        for ((difference, a), b) in out.iter_mut().zip(self.0).zip(other.0) {
            let (partial, borrow1) = a.overflowing_sub(b);
            let (total, borrow2) = partial.overflowing_sub(u64::from(borrow));
            *difference = total;
            borrow = borrow1 || borrow2;
        }
        (U256(out), borrow)
    }

    /// Shifted right by one, `top` becoming bit 255.
    fn shr1(&self, top: bool) -> U256 {
        let l = self.0;
        U256([l[0] >> 1 | l[1] << 63, l[1] >> 1 | l[2] << 63, l[2] >> 1 | l[3] << 63, l[3] >> 1 | u64::from(top) << 63])
    }

    /// `count` (at most 63) bits from bit `start` on; bits past 255 read as 0.
    pub(super) fn bits(&self, start: usize, count: usize) -> u64 {
        let limb = start / 64;
        let shift = start % 64;
        let low = self.0.get(limb).copied().unwrap_or(0) >> shift;
        let high = if shift == 0 { 0 } else { self.0.get(limb + 1).copied().unwrap_or(0) << (64 - shift) };
        (low | high) & ((1u64 << count) - 1)
    }

    /// The inverse modulo the odd `modulus`, for `self` in [1, modulus - 1] and
    /// coprime with it (always so for a prime modulus); None otherwise. Variable time:
    /// for public values only.
    pub(super) fn invert_mod(&self, modulus: &U256) -> Option<U256> {
        if self.is_zero() || !self.lt(modulus) || modulus.is_even() {
            return None;
        }
        // Invariants: x1 * self = u and x2 * self = v (mod modulus).
        let (mut u, mut v) = (*self, *modulus);
        let (mut x1, mut x2) = (U256::ONE, U256::ZERO);
        while u != U256::ONE && v != U256::ONE {
            if u.is_zero() || v.is_zero() {
                return None; // not coprime
            }
            while u.is_even() {
                u = u.shr1(false);
                x1 = x1.halve_mod(modulus);
            }
            while v.is_even() {
                v = v.shr1(false);
                x2 = x2.halve_mod(modulus);
            }
            if u.lt(&v) {
                v = v.sub(&u).0;
                x2 = x2.sub_mod(&x1, modulus);
            } else {
                u = u.sub(&v).0;
                x1 = x1.sub_mod(&x2, modulus);
            }
        }
        Some(if u == U256::ONE { x1 } else { x2 })
    }

    /// self / 2 modulo the odd `modulus`, for self < modulus.
    fn halve_mod(&self, modulus: &U256) -> U256 {
        if self.is_even() {
            self.shr1(false)
        } else {
            let (sum, carry) = self.add(modulus);
            sum.shr1(carry)
        }
    }

    /// self - other modulo `modulus`, both below it.
    fn sub_mod(&self, other: &U256, modulus: &U256) -> U256 {
        let (difference, borrow) = self.sub(other);
        if borrow {
            difference.add(modulus).0
        } else {
            difference
        }
    }
}
