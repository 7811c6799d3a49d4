//! A fixed-base table: for each window i of WINDOW_BITS bits, the affine multiples
//! 1..=2^(WINDOW_BITS-1) of 2^(WINDOW_BITS*i)·B. A scalar, recoded into signed digits
//! (one per window), then costs one mixed addition per nonzero digit and no doubling.

use super::point::{add_to, batch_to_affine, Affine, Jacobian};
use super::uint::U256;

/// Chosen by measurement in Wasm (wasmtime, callgrind): instructions per verification,
/// per key table built, and the table's size:
/// 4 bits: 2.61 M, 21 M, 33 KB; 5: 2.13 M, 31 M, 53 KB; 6: 1.82 M, 48 M, 88 KB;
/// 7: 1.58 M, 81 M, 151 KB. Ring's constant-time code: 10.2 M.
pub(super) const WINDOW_BITS: usize = 6;
/// ceil(257 / WINDOW_BITS): the signed recoding of a 256-bit scalar may carry into bit 256.
pub(super) const WINDOWS: usize = (256 + WINDOW_BITS) / WINDOW_BITS;
/// Multiples per window: the digits' magnitudes.
const MULTIPLES: usize = 1 << (WINDOW_BITS - 1);

pub(super) struct Table {
    /// WINDOWS * MULTIPLES points, window by window.
    points: Vec<Affine>,
}

impl Table {
    /// The table of `base` (a point of the curve, not infinity). None only if an
    /// inversion fails, which a point of P-256's prime-order group never makes happen.
    pub(super) fn new(base: &Affine) -> Option<Table> {
        let mut jacobian = Vec::with_capacity(WINDOWS * MULTIPLES);
        let mut window_base = *base;
        for window in 0..WINDOWS {
            let mut multiple = Jacobian::from_affine(&window_base);
            jacobian.push(multiple);
            for _ in 1..MULTIPLES {
                multiple = multiple.add_affine(&window_base)?;
                jacobian.push(multiple);
            }
            if window + 1 < WINDOWS {
                // 2 * (2^(WINDOW_BITS-1) * B) = 2^WINDOW_BITS * B, the next window's base.
                window_base = multiple.double()?.to_affine()?;
            }
        }
        Some(Table { points: batch_to_affine(&jacobian)? })
    }

    /// `sum + scalar * B`, for a scalar below 2^256. None if a digit found no entry
    /// (it cannot: the recoding's digits are within the table).
    pub(super) fn add_multiple(&self, sum: Option<Jacobian>, scalar: &U256) -> Option<Option<Jacobian>> {
        let mut sum = sum;
        for (window, digit) in signed_digits(scalar).into_iter().enumerate() {
            if digit == 0 {
                continue;
            }
            let index = window * MULTIPLES + usize::from(digit.unsigned_abs()) - 1;
            let entry = self.points.get(index)?;
            sum = add_to(sum, &if digit < 0 { entry.neg() } else { *entry });
        }
        Some(sum)
    }
}

/// The digits d_i in [-(2^(w-1) - 1), 2^(w-1)] with scalar = sum d_i * 2^(w*i). The
/// last window starts at bit w*(WINDOWS-1) >= 257 - w, so it holds at most
/// 2^(w-1) with the carry and never carries out.
pub(super) fn signed_digits(scalar: &U256) -> [i16; WINDOWS] {
    let mut digits = [0i16; WINDOWS];
    let mut carry = 0u64;
    for (window, digit) in digits.iter_mut().enumerate() {
        let value = scalar.bits(window * WINDOW_BITS, WINDOW_BITS) + carry;
        if value > MULTIPLES as u64 {
            *digit = (value as i16) - (1 << WINDOW_BITS);
            carry = 1;
        } else {
            *digit = value as i16;
            carry = 0;
        }
    }
    digits
}
