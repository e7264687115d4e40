//! Arithmetic modulo the SM2 prime p = 2^256 − 2^224 − 2^96 + 2^64 − 1.
//!
//! A thin wrapper over fiat-crypto's generated SM2 field (`fiat_crypto::sm2_64`): Montgomery
//! form in four 64-bit limbs, every output fully reduced below p, so two elements are equal
//! exactly when their limbs are. The code is formally verified and already in the build (the
//! `sm2` crate uses the same module); only the glue here is ours.

use fiat_crypto::sm2_64::{
    fiat_sm2_add, fiat_sm2_montgomery_domain_field_element as Mont, fiat_sm2_mul,
    fiat_sm2_non_montgomery_domain_field_element as NonMont, fiat_sm2_opp, fiat_sm2_square,
    fiat_sm2_sub, fiat_sm2_to_montgomery,
};

/// The SM2 prime, little-endian limbs.
pub(super) const P: [u64; 4] = [
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_0000_0000,
    0xffff_ffff_ffff_ffff,
    0xffff_fffe_ffff_ffff,
];

/// A field element in Montgomery form, always below p.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fe([u64; 4]);

impl Fe {
    pub(super) const ZERO: Fe = Fe([0; 4]);
    /// 1 in Montgomery form: 2^256 mod p.
    pub(super) const ONE: Fe = Fe([1, 0xffff_ffff, 0, 0x1_0000_0000]);

    /// The element of a 32-byte big-endian integer, or `None` when it is not below p.
    pub(super) fn from_be_bytes(bytes: &[u8; 32]) -> Option<Fe> {
        let limbs = limbs_from_be_bytes(bytes);
        if !less_than(&limbs, &P) {
            return None;
        }
        Some(Fe::from_canonical_limbs(limbs))
    }

    /// The element of integer limbs already known to be below p.
    pub(super) fn from_canonical_limbs(limbs: [u64; 4]) -> Fe {
        let mut out = Mont([0; 4]);
        fiat_sm2_to_montgomery(&mut out, &NonMont(limbs));
        Fe(out.0)
    }

    /// The canonical integer (little-endian limbs).
    #[cfg(test)]
    pub(super) fn to_limbs(self) -> [u64; 4] {
        let mut out = NonMont([0; 4]);
        fiat_crypto::sm2_64::fiat_sm2_from_montgomery(&mut out, &Mont(self.0));
        out.0
    }

    /// Big-endian bytes of the canonical integer.
    #[cfg(test)]
    pub(super) fn to_be_bytes(self) -> [u8; 32] {
        be_bytes_from_limbs(&self.to_limbs())
    }

    #[inline]
    pub(super) fn mul(&self, other: &Fe) -> Fe {
        let mut out = Mont([0; 4]);
        fiat_sm2_mul(&mut out, &Mont(self.0), &Mont(other.0));
        Fe(out.0)
    }

    #[inline]
    pub(super) fn square(&self) -> Fe {
        let mut out = Mont([0; 4]);
        fiat_sm2_square(&mut out, &Mont(self.0));
        Fe(out.0)
    }

    #[inline]
    pub(super) fn add(&self, other: &Fe) -> Fe {
        let mut out = Mont([0; 4]);
        fiat_sm2_add(&mut out, &Mont(self.0), &Mont(other.0));
        Fe(out.0)
    }

    #[inline]
    pub(super) fn sub(&self, other: &Fe) -> Fe {
        let mut out = Mont([0; 4]);
        fiat_sm2_sub(&mut out, &Mont(self.0), &Mont(other.0));
        Fe(out.0)
    }

    #[inline]
    pub(super) fn neg(&self) -> Fe {
        let mut out = Mont([0; 4]);
        fiat_sm2_opp(&mut out, &Mont(self.0));
        Fe(out.0)
    }

    #[inline]
    pub(super) fn double(&self) -> Fe {
        self.add(self)
    }

    pub(super) fn is_zero(&self) -> bool {
        self.0 == [0; 4]
    }

    /// The inverse by Fermat (x^(p−2)); variable time, used only on public values when tables
    /// are built. Zero maps to zero.
    pub(super) fn invert(&self) -> Fe {
        // p − 2, little-endian limbs.
        const EXPONENT: [u64; 4] = [P[0] - 2, P[1], P[2], P[3]];
        let mut acc = Fe::ONE;
        for limb in EXPONENT.iter().rev() {
            for bit in (0..64).rev() {
                acc = acc.square();
                if (limb >> bit) & 1 == 1 {
                    acc = acc.mul(self);
                }
            }
        }
        acc
    }

    /// A square root, if there is one: p ≡ 3 (mod 4), so x^((p+1)/4) is one when x is a
    /// square. Used by tests that build points with chosen x coordinates.
    #[cfg(test)]
    pub(super) fn sqrt(&self) -> Option<Fe> {
        // (p + 1) / 4, little-endian limbs.
        const EXPONENT: [u64; 4] = [
            0x4000_0000_0000_0000,
            0xffff_ffff_c000_0000,
            0xffff_ffff_ffff_ffff,
            0x3fff_ffff_bfff_ffff,
        ];
        let mut acc = Fe::ONE;
        for limb in EXPONENT.iter().rev() {
            for bit in (0..64).rev() {
                acc = acc.square();
                if (limb >> bit) & 1 == 1 {
                    acc = acc.mul(self);
                }
            }
        }
        (acc.square() == *self).then_some(acc)
    }
}

/// Inverts every element of `values` with one field inversion (Montgomery's trick). No element
/// may be zero.
pub(super) fn batch_invert(values: &mut [Fe]) {
    let mut prefix = Vec::with_capacity(values.len());
    let mut acc = Fe::ONE;
    for value in values.iter() {
        prefix.push(acc);
        acc = acc.mul(value);
    }
    let mut inverse = acc.invert();
    for (value, before) in values.iter_mut().zip(prefix).rev() {
        let next = inverse.mul(value);
        *value = inverse.mul(&before);
        inverse = next;
    }
}

/// Little-endian limbs of a 32-byte big-endian integer.
pub(super) fn limbs_from_be_bytes(bytes: &[u8; 32]) -> [u64; 4] {
    let mut limbs = [0u64; 4];
    for (i, limb) in limbs.iter_mut().enumerate() {
        let start = 24 - 8 * i;
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[start..start + 8]);
        *limb = u64::from_be_bytes(word);
    }
    limbs
}

/// Big-endian bytes of little-endian limbs.
#[cfg(test)]
pub(super) fn be_bytes_from_limbs(limbs: &[u64; 4]) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (i, limb) in limbs.iter().enumerate() {
        let start = 24 - 8 * i;
        bytes[start..start + 8].copy_from_slice(&limb.to_be_bytes());
    }
    bytes
}

/// `a < b` for little-endian limbs.
pub(super) fn less_than(a: &[u64; 4], b: &[u64; 4]) -> bool {
    for i in (0..4).rev() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
    }
    false
}

/// `a + b` for little-endian limbs, or `None` on overflow past 2^256.
pub(super) fn checked_add(a: &[u64; 4], b: &[u64; 4]) -> Option<[u64; 4]> {
    let mut out = [0u64; 4];
    let mut carry = false;
    for i in 0..4 {
        let (sum, c1) = a[i].overflowing_add(b[i]);
        let (sum, c2) = sum.overflowing_add(u64::from(carry));
        out[i] = sum;
        carry = c1 || c2;
    }
    (!carry).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe(n: u64) -> Fe {
        Fe::from_canonical_limbs([n, 0, 0, 0])
    }

    #[test]
    fn one_is_the_montgomery_form_of_one() {
        assert_eq!(fe(1), Fe::ONE);
        assert_eq!(Fe::ONE.to_limbs(), [1, 0, 0, 0]);
    }

    #[test]
    fn p_minus_one_squared_is_one() {
        let minus_one = Fe::from_canonical_limbs([P[0] - 1, P[1], P[2], P[3]]);
        assert_eq!(minus_one, Fe::ONE.neg());
        assert_eq!(minus_one.square(), Fe::ONE);
    }

    #[test]
    fn p_itself_is_not_a_field_element() {
        assert_eq!(Fe::from_be_bytes(&be_bytes_from_limbs(&P)), None);
    }

    #[test]
    fn inverse_times_value_is_one() {
        let x = Fe::from_be_bytes(&[0x5a; 32]).expect("below p");
        assert_eq!(x.invert().mul(&x), Fe::ONE);
        let mut values = [x, fe(2), fe(3), x.square()];
        batch_invert(&mut values);
        assert_eq!(values[0], x.invert());
        assert_eq!(values[1].mul(&fe(2)), Fe::ONE);
        assert_eq!(values[2].mul(&fe(3)), Fe::ONE);
        assert_eq!(values[3].mul(&x.square()), Fe::ONE);
    }

    #[test]
    fn bytes_round_trip() {
        let bytes = [0x31; 32];
        assert_eq!(
            Fe::from_be_bytes(&bytes).expect("below p").to_be_bytes(),
            bytes
        );
    }
}
