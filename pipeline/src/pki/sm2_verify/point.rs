//! Points of the SM2 curve y² = x³ − 3x + b in Jacobian coordinates, with the variable-time
//! formulas a verifier may use: every input here is public (keys, signatures, the generator).
//!
//! Doubling uses the a = −3 shortcut (3M + 5S); additions of a table point are mixed
//! (Jacobian + affine, 7M + 4S). Formulas: the Explicit-Formulas Database, `dbl-2001-b` and
//! `madd-2007-bl`.

use super::field::{Fe, batch_invert};

/// The curve constant b, big-endian (GB/T 32918.5).
pub(super) const B_BYTES: [u8; 32] = [
    0x28, 0xe9, 0xfa, 0x9e, 0x9d, 0x9f, 0x5e, 0x34, 0x4d, 0x5a, 0x9e, 0x4b, 0xcf, 0x65, 0x09, 0xa7,
    0xf3, 0x97, 0x89, 0xf5, 0x15, 0xab, 0x8f, 0x92, 0xdd, 0xbc, 0xbd, 0x41, 0x4d, 0x94, 0x0e, 0x93,
];
/// The generator's x coordinate, big-endian.
pub(super) const GX_BYTES: [u8; 32] = [
    0x32, 0xc4, 0xae, 0x2c, 0x1f, 0x19, 0x81, 0x19, 0x5f, 0x99, 0x04, 0x46, 0x6a, 0x39, 0xc9, 0x94,
    0x8f, 0xe3, 0x0b, 0xbf, 0xf2, 0x66, 0x0b, 0xe1, 0x71, 0x5a, 0x45, 0x89, 0x33, 0x4c, 0x74, 0xc7,
];
/// The generator's y coordinate, big-endian.
pub(super) const GY_BYTES: [u8; 32] = [
    0xbc, 0x37, 0x36, 0xa2, 0xf4, 0xf6, 0x77, 0x9c, 0x59, 0xbd, 0xce, 0xe3, 0x6b, 0x69, 0x21, 0x53,
    0xd0, 0xa9, 0x87, 0x7c, 0xc6, 0x2a, 0x47, 0x40, 0x02, 0xdf, 0x32, 0xe5, 0x21, 0x39, 0xf0, 0xa0,
];

/// A finite point in affine coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Affine {
    pub(super) x: Fe,
    pub(super) y: Fe,
}

impl Affine {
    /// The point of two big-endian coordinates, if they are field elements on the curve.
    pub(super) fn from_coordinates(x: &[u8; 32], y: &[u8; 32]) -> Option<Affine> {
        let point = Affine {
            x: Fe::from_be_bytes(x)?,
            y: Fe::from_be_bytes(y)?,
        };
        point.is_on_curve().then_some(point)
    }

    pub(super) fn generator() -> Affine {
        Affine::from_coordinates(&GX_BYTES, &GY_BYTES).unwrap_or_else(|| unreachable!())
    }

    fn is_on_curve(&self) -> bool {
        let b = Fe::from_be_bytes(&B_BYTES).unwrap_or_else(|| unreachable!());
        // x³ − 3x + b
        let x3 = self.x.square().mul(&self.x);
        let three_x = self.x.double().add(&self.x);
        self.y.square() == x3.sub(&three_x).add(&b)
    }

    fn neg(&self) -> Affine {
        Affine {
            x: self.x,
            y: self.y.neg(),
        }
    }
}

/// A point in Jacobian coordinates (X/Z², Y/Z³); Z = 0 is the point at infinity.
#[derive(Clone, Copy, Debug)]
pub(super) struct Jacobian {
    pub(super) x: Fe,
    pub(super) y: Fe,
    pub(super) z: Fe,
}

impl Jacobian {
    pub(super) const INFINITY: Jacobian = Jacobian {
        x: Fe::ONE,
        y: Fe::ONE,
        z: Fe::ZERO,
    };

    pub(super) fn from_affine(p: &Affine) -> Jacobian {
        Jacobian {
            x: p.x,
            y: p.y,
            z: Fe::ONE,
        }
    }

    pub(super) fn is_infinity(&self) -> bool {
        self.z.is_zero()
    }

    /// 2·self (`dbl-2001-b`, a = −3). The curve has odd prime order, so no finite point has
    /// y = 0 and the formula needs no special case; infinity stays infinity (Z3 = 0).
    pub(super) fn double(&self) -> Jacobian {
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x.mul(&gamma);
        let t = self.x.sub(&delta).mul(&self.x.add(&delta));
        let alpha = t.double().add(&t);
        let beta4 = beta.double().double();
        let x3 = alpha.square().sub(&beta4.double());
        let z3 = self.y.add(&self.z).square().sub(&gamma).sub(&delta);
        let gamma_sq8 = gamma.square().double().double().double();
        let y3 = alpha.mul(&beta4.sub(&x3)).sub(&gamma_sq8);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// self + q for an affine q (`madd-2007-bl`), with the special cases handled by branching.
    pub(super) fn add_affine(&self, q: &Affine) -> Jacobian {
        if self.is_infinity() {
            return Jacobian::from_affine(q);
        }
        let z1z1 = self.z.square();
        let u2 = q.x.mul(&z1z1);
        let s2 = q.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&self.x);
        let r = s2.sub(&self.y).double();
        if h.is_zero() {
            return if r.is_zero() {
                self.double()
            } else {
                Jacobian::INFINITY
            };
        }
        let hh = h.square();
        let i = hh.double().double();
        let j = h.mul(&i);
        let v = self.x.mul(&i);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&self.y.mul(&j).double());
        let z3 = self.z.add(&h).square().sub(&z1z1).sub(&hh);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// self + q for a Jacobian q (`add-2007-bl`), with the special cases handled by branching.
    pub(super) fn add(&self, q: &Jacobian) -> Jacobian {
        if self.is_infinity() {
            return *q;
        }
        if q.is_infinity() {
            return *self;
        }
        let z1z1 = self.z.square();
        let z2z2 = q.z.square();
        let u1 = self.x.mul(&z2z2);
        let u2 = q.x.mul(&z1z1);
        let s1 = self.y.mul(&q.z).mul(&z2z2);
        let s2 = q.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&u1);
        let r = s2.sub(&s1).double();
        if h.is_zero() {
            return if r.is_zero() {
                self.double()
            } else {
                Jacobian::INFINITY
            };
        }
        let i = h.double().square();
        let j = h.mul(&i);
        let v = u1.mul(&i);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&s1.mul(&j).double());
        let z3 = self.z.add(&q.z).square().sub(&z1z1).sub(&z2z2).mul(&h);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// Affine form of many finite points with one inversion.
    pub(super) fn batch_to_affine(points: &[Jacobian]) -> Vec<Affine> {
        let mut z_inverses: Vec<Fe> = points.iter().map(|p| p.z).collect();
        batch_invert(&mut z_inverses);
        points
            .iter()
            .zip(z_inverses)
            .map(|(p, z_inv)| {
                let z_inv2 = z_inv.square();
                Affine {
                    x: p.x.mul(&z_inv2),
                    y: p.y.mul(&z_inv2).mul(&z_inv),
                }
            })
            .collect()
    }
}

/// The odd multiples P, 3P, 5P, …, (2·count − 1)P in affine form, the table a width-w NAF
/// digit indexes (count = 2^(w−2)).
pub(super) fn odd_multiples(p: &Affine, count: usize) -> Vec<Affine> {
    let base = Jacobian::from_affine(p);
    let twice = base.double();
    let mut points = Vec::with_capacity(count);
    points.push(base);
    for i in 1..count {
        let next = points[i - 1].add(&twice);
        points.push(next);
    }
    Jacobian::batch_to_affine(&points)
}

/// Adds `digit`·P to `acc` from a table of odd multiples (`digit` odd, |digit| < 2·table.len()).
#[inline]
pub(super) fn add_digit(acc: &Jacobian, table: &[Affine], digit: i8) -> Jacobian {
    let index = usize::from(digit.unsigned_abs() >> 1);
    if digit > 0 {
        acc.add_affine(&table[index])
    } else {
        acc.add_affine(&table[index].neg())
    }
}

/// Width-`w` non-adjacent form of a 256-bit scalar (little-endian limbs): digit i is zero or
/// odd with |digit| < 2^(w−1), and Σ digit_i·2^i equals the scalar. Variable time.
pub(super) fn wnaf(scalar: &[u64; 4], w: u32) -> [i8; 257] {
    debug_assert!((2..=8).contains(&w));
    let mut digits = [0i8; 257];
    // One spare limb: adding back a negative digit can carry past bit 255.
    let mut k = [scalar[0], scalar[1], scalar[2], scalar[3], 0];
    let window = 1u64 << w;
    let mask = window - 1;
    let mut i = 0;
    while k != [0; 5] {
        if k[0] & 1 == 1 {
            let low = k[0] & mask;
            if low >= window >> 1 {
                // Negative digit low − 2^w: add 2^w − low to k.
                let digit = i64::try_from(low).unwrap_or(0) - i64::try_from(window).unwrap_or(0);
                digits[i] = i8::try_from(digit).unwrap_or(0);
                add_small(&mut k, window - low);
            } else {
                digits[i] = i8::try_from(low).unwrap_or(0);
                k[0] -= low;
            }
        }
        shift_right_one(&mut k);
        i += 1;
    }
    digits
}

fn add_small(k: &mut [u64; 5], value: u64) {
    let mut carry = value;
    for limb in k.iter_mut() {
        let (sum, overflow) = limb.overflowing_add(carry);
        *limb = sum;
        carry = u64::from(overflow);
        if carry == 0 {
            break;
        }
    }
}

fn shift_right_one(k: &mut [u64; 5]) {
    for i in 0..4 {
        k[i] = (k[i] >> 1) | (k[i + 1] << 63);
    }
    k[4] >>= 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_affine(p: &Jacobian) -> Affine {
        Jacobian::batch_to_affine(&[*p])[0]
    }

    #[test]
    fn generator_is_on_the_curve() {
        let g = Affine::generator();
        assert!(g.is_on_curve());
    }

    #[test]
    fn doubling_agrees_with_adding_a_point_to_itself() {
        let g = Affine::generator();
        let jg = Jacobian::from_affine(&g);
        let doubled = to_affine(&jg.double());
        assert_eq!(doubled, to_affine(&jg.add_affine(&g)));
        assert_eq!(doubled, to_affine(&jg.add(&jg)));
        assert!(doubled.is_on_curve());
        // 3G three ways.
        let three = to_affine(&jg.double().add_affine(&g));
        assert_eq!(three, to_affine(&jg.add(&jg.double())));
        assert!(three.is_on_curve());
    }

    #[test]
    fn a_point_plus_its_negation_is_infinity() {
        let g = Affine::generator();
        assert!(Jacobian::from_affine(&g).add_affine(&g.neg()).is_infinity());
        assert!(Jacobian::INFINITY.double().is_infinity());
    }

    #[test]
    fn odd_multiples_are_on_the_curve_and_step_by_two() {
        let g = Affine::generator();
        let table = odd_multiples(&g, 8);
        assert_eq!(table[0], g);
        for pair in table.windows(2) {
            assert!(pair[1].is_on_curve());
            let twice = Jacobian::from_affine(&g).double();
            assert_eq!(to_affine(&twice.add_affine(&pair[0])), pair[1]);
        }
    }

    #[test]
    fn wnaf_digits_sum_back_to_the_scalar() {
        let scalars = [
            [
                0x1234_5678_9abc_def0,
                0xffff_ffff_ffff_ffff,
                0,
                0x8000_0000_0000_0001,
            ],
            [u64::MAX; 4],
            [1, 0, 0, 0],
            [0xf0f0_f0f0_f0f0_f0f0; 4],
        ];
        for scalar in scalars {
            for w in [4u32, 5, 6, 7, 8] {
                let digits = wnaf(&scalar, w);
                // Horner from the top, in i128 windows of the big integer: compare limb-wise
                // by rebuilding k with 5 limbs of two's-complement accumulation.
                let mut acc = [0u64; 5];
                for (i, digit) in digits.iter().enumerate() {
                    if *digit == 0 {
                        continue;
                    }
                    assert_eq!(digit & 1, 1, "digits are odd");
                    assert!(i32::from(digit.unsigned_abs()) < (1 << (w - 1)));
                    let magnitude = u64::from(digit.unsigned_abs());
                    let mut term = [0u64; 5];
                    let (limb, bit) = (i / 64, i % 64);
                    term[limb] = magnitude << bit;
                    if bit > 0 && limb + 1 < 5 {
                        term[limb + 1] = magnitude >> (64 - bit);
                    }
                    let mut carry = false;
                    for j in 0..5 {
                        if *digit > 0 {
                            let (s, c1) = acc[j].overflowing_add(term[j]);
                            let (s, c2) = s.overflowing_add(u64::from(carry));
                            acc[j] = s;
                            carry = c1 || c2;
                        } else {
                            let (s, b1) = acc[j].overflowing_sub(term[j]);
                            let (s, b2) = s.overflowing_sub(u64::from(carry));
                            acc[j] = s;
                            carry = b1 || b2;
                        }
                    }
                }
                assert_eq!(&acc[..4], &scalar[..], "w = {w}");
                assert_eq!(acc[4], 0);
            }
        }
    }
}
