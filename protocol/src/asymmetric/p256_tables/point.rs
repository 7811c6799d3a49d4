//! Points of P-256 (y^2 = x^3 - 3x + b): affine ones for the tables, Jacobian ones
//! (x = X/Z^2, y = Y/Z^3) for sums. The point at infinity is `None`. Variable time,
//! with every exceptional case of the addition handled: the points are public.

use super::field::Fe;

#[derive(Clone, Copy)]
pub(super) struct Affine {
    pub(super) x: Fe,
    pub(super) y: Fe,
}

impl Affine {
    pub(super) fn neg(&self) -> Affine {
        Affine { x: self.x, y: self.y.neg() }
    }
}

#[derive(Clone, Copy)]
pub(super) struct Jacobian {
    pub(super) x: Fe,
    pub(super) y: Fe,
    /// Never zero: infinity is `None`.
    pub(super) z: Fe,
}

impl Jacobian {
    pub(super) fn from_affine(point: &Affine) -> Jacobian {
        Jacobian { x: point.x, y: point.y, z: Fe::one() }
    }

    /// 2P, with a = -3 ("dbl-2001-b": 3M + 5S); None if y = 0 (no such point on P-256,
    /// whose order is prime, but nothing here relies on it).
    pub(super) fn double(&self) -> Option<Jacobian> {
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x.mul(&gamma);
        let t = self.x.sub(&delta).mul(&self.x.add(&delta));
        let alpha = t.double().add(&t);
        let four_beta = beta.double().double();
        let x = alpha.square().sub(&four_beta.double());
        let z = self.y.add(&self.z).square().sub(&gamma).sub(&delta);
        let eight_gamma_squared = gamma.square().double().double().double();
        let y = alpha.mul(&four_beta.sub(&x)).sub(&eight_gamma_squared);
        (!z.is_zero()).then_some(Jacobian { x, y, z })
    }

    /// P + Q for an affine Q (8M + 3S); doubles when Q = P, None when Q = -P.
    pub(super) fn add_affine(&self, other: &Affine) -> Option<Jacobian> {
        let z1z1 = self.z.square();
        let u2 = other.x.mul(&z1z1);
        let s2 = other.y.mul(&z1z1.mul(&self.z));
        let h = u2.sub(&self.x);
        let r = s2.sub(&self.y);
        if h.is_zero() {
            return if r.is_zero() { self.double() } else { None };
        }
        let z = self.z.mul(&h);
        let hh = h.square();
        let hhh = hh.mul(&h);
        let v = self.x.mul(&hh);
        let x = r.square().sub(&hhh).sub(&v.double());
        let y = r.mul(&v.sub(&x)).sub(&self.y.mul(&hhh));
        Some(Jacobian { x, y, z })
    }

    /// The affine form, with one inversion.
    pub(super) fn to_affine(self) -> Option<Affine> {
        let z_inverse = self.z.invert()?;
        Some(affine_with(&self, &z_inverse))
    }
}

/// `sum + point`, either possibly infinity.
pub(super) fn add_to(sum: Option<Jacobian>, point: &Affine) -> Option<Jacobian> {
    match sum {
        None => Some(Jacobian::from_affine(point)),
        Some(sum) => sum.add_affine(point),
    }
}

fn affine_with(point: &Jacobian, z_inverse: &Fe) -> Affine {
    let z_inverse_squared = z_inverse.square();
    Affine { x: point.x.mul(&z_inverse_squared), y: point.y.mul(&z_inverse_squared.mul(z_inverse)) }
}

/// All the points in affine form with a single inversion (Montgomery's trick).
pub(super) fn batch_to_affine(points: &[Jacobian]) -> Option<Vec<Affine>> {
    // prefix[i] = z_0 * ... * z_i
    let mut prefix = Vec::with_capacity(points.len());
    let mut product = Fe::one();
    for point in points {
        product = product.mul(&point.z);
        prefix.push(product);
    }
    let mut inverse = product.invert()?; // of z_0 * ... * z_i, going down
    let mut affine = vec![Affine { x: Fe::ZERO, y: Fe::ZERO }; points.len()];
    for (i, (point, out)) in points.iter().zip(affine.iter_mut()).enumerate().rev() {
        let before = if i == 0 { Fe::one() } else { prefix.get(i - 1).copied().unwrap_or(Fe::ZERO) };
        *out = affine_with(point, &inverse.mul(&before));
        inverse = inverse.mul(&point.z);
    }
    Some(affine)
}
