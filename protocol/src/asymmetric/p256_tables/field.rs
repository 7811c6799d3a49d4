//! P-256's base field on fiat-crypto's formally verified 32-bit Montgomery
//! arithmetic. fiat keeps every element fully reduced (below p), so two elements are
//! equal exactly when their limbs are.

use super::uint::U256;
use fiat_crypto::p256_32::{
    fiat_p256_add, fiat_p256_from_montgomery, fiat_p256_montgomery_domain_field_element as Montgomery, fiat_p256_mul,
    fiat_p256_non_montgomery_domain_field_element as Plain, fiat_p256_opp, fiat_p256_set_one, fiat_p256_square, fiat_p256_sub,
    fiat_p256_to_montgomery,
};

/// p = 2^256 - 2^224 + 2^192 + 2^96 - 1.
pub(super) const P: U256 = U256([0xffff_ffff_ffff_ffff, 0x0000_0000_ffff_ffff, 0, 0xffff_ffff_0000_0001]);

/// An element of GF(p), in Montgomery form.
#[derive(Clone, Copy)]
pub(super) struct Fe(Montgomery);

impl Fe {
    pub(super) const ZERO: Fe = Fe(Montgomery([0; 8]));

    pub(super) fn one() -> Fe {
        let mut out = Fe::ZERO;
        fiat_p256_set_one(&mut out.0);
        out
    }

    /// The element `value`, if below p.
    pub(super) fn from_uint(value: &U256) -> Option<Fe> {
        if !value.lt(&P) {
            return None;
        }
        let mut out = Fe::ZERO;
        fiat_p256_to_montgomery(&mut out.0, &Plain(value.to_u32_limbs()));
        Some(out)
    }

    pub(super) fn to_uint(self) -> U256 {
        let mut out = Plain([0; 8]);
        fiat_p256_from_montgomery(&mut out, &self.0);
        U256::from_u32_limbs(&out.0)
    }

    pub(super) fn mul(&self, other: &Fe) -> Fe {
        let mut out = Fe::ZERO;
        fiat_p256_mul(&mut out.0, &self.0, &other.0);
        out
    }

    pub(super) fn square(&self) -> Fe {
        let mut out = Fe::ZERO;
        fiat_p256_square(&mut out.0, &self.0);
        out
    }

    pub(super) fn add(&self, other: &Fe) -> Fe {
        let mut out = Fe::ZERO;
        fiat_p256_add(&mut out.0, &self.0, &other.0);
        out
    }

    pub(super) fn sub(&self, other: &Fe) -> Fe {
        let mut out = Fe::ZERO;
        fiat_p256_sub(&mut out.0, &self.0, &other.0);
        out
    }

    pub(super) fn neg(&self) -> Fe {
        let mut out = Fe::ZERO;
        fiat_p256_opp(&mut out.0, &self.0);
        out
    }

    pub(super) fn double(&self) -> Fe {
        self.add(self)
    }

    pub(super) fn is_zero(&self) -> bool {
        self.0 .0 == [0; 8]
    }

    pub(super) fn equals(&self, other: &Fe) -> bool {
        self.0 .0 == other.0 .0
    }

    /// The inverse (None for zero): binary extended Euclid on the integer, checked by
    /// one verified multiplication. Variable time: table building only.
    pub(super) fn invert(&self) -> Option<Fe> {
        let inverse = Fe::from_uint(&self.to_uint().invert_mod(&P)?)?;
        self.mul(&inverse).equals(&Fe::one()).then_some(inverse)
    }
}
