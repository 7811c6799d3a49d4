//! Scalars modulo n, the group's order, on fiat-crypto's verified 32-bit Montgomery
//! arithmetic (`p256_scalar_32`): the three products ECDSA verification needs.

use super::uint::U256;
use fiat_crypto::p256_scalar_32::{
    fiat_p256_scalar_montgomery_domain_field_element as Montgomery, fiat_p256_scalar_mul,
    fiat_p256_scalar_non_montgomery_domain_field_element as Plain, fiat_p256_scalar_to_montgomery,
};

/// n, P-256's group order.
pub(super) const N: U256 = U256([0xf3b9_cac2_fc63_2551, 0xbce6_faad_a717_9e84, 0xffff_ffff_ffff_ffff, 0xffff_ffff_0000_0000]);

/// s^-1 mod n, in Montgomery form, for s in [1, n-1].
pub(super) struct Inverse(Montgomery);

impl Inverse {
    /// Binary extended Euclid (variable time: s is public), checked with one
    /// verified multiplication: s * s^-1 = 1.
    pub(super) fn of(s: &U256) -> Option<Inverse> {
        let inverse = s.invert_mod(&N)?;
        let mut montgomery = Montgomery([0; 8]);
        fiat_p256_scalar_to_montgomery(&mut montgomery, &Plain(inverse.to_u32_limbs()));
        let inverse = Inverse(montgomery);
        (inverse.times(s)? == U256::ONE).then_some(inverse)
    }

    /// a * s^-1 mod n, for a in [0, n-1]. Montgomery multiplication of the plain `a`
    /// by s^-1 * R gives the plain product.
    pub(super) fn times(&self, a: &U256) -> Option<U256> {
        if !a.lt(&N) {
            return None;
        }
        let mut out = Montgomery([0; 8]);
        fiat_p256_scalar_mul(&mut out, &Montgomery(a.to_u32_limbs()), &self.0);
        Some(U256::from_u32_limbs(&out.0))
    }
}
