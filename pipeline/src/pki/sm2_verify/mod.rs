//! SM2 signature verification (GB/T 32918.2), fast and variable-time.
//!
//! Verification handles public data only — the key, the message and the signature — so it may
//! branch and index tables on them: nothing secret can leak through its timing. Signing stays
//! with the RustCrypto `sm2` crate, which is constant-time.
//!
//! What makes it fast next to the `sm2` crate's generic constant-time verifier:
//! - `[s]G + [t]Q` in one pass (Straus–Shamir): one chain of doublings serves both products,
//!   with a width-8 NAF of `s` over tables of 64 odd multiples of G and of 2^128·G computed once
//!   per process, and a width-5 NAF of `t` over 8 odd multiples of Q kept with the key; the
//!   table points are affine, so every addition is a mixed one;
//! - keys are long-lived (certificates stay in the chain cache), so from a key's second
//!   verification on it also keeps the odd multiples of 2^128·Q: both scalars are split in
//!   128-bit halves, `s₀G + s₁(2^128·G) + t₀Q + t₁(2^128·Q)`, and the chain has 128 doublings
//!   instead of 256. A key verified once does not pay for that table;
//! - Jacobian doubling with the a = −3 shortcut;
//! - no inversion at the end: `x(R) ≡ r − e (mod n)` is checked as `X = c·Z²` for `c = r − e`
//!   and, when `c + n < p`, for `c + n` (the two field values whose residue mod n is `c`);
//! - the identity hash `Z` of the key is computed once, with the key.
//!
//! It rejects exactly what the `sm2` crate rejects: r or s outside [1, n−1] (refused when the
//! signature is parsed, by the crate), t = r + s ≡ 0, and a sum at infinity; keys are checked
//! to lie on the curve when they are built. The unit tests hold the GB/T 32918.5 example and a
//! differential test against the crate.

mod field;
mod point;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use sm2::dsa::Signature;
use sm2::elliptic_curve::ff::PrimeField as _;
use sm2::{FieldBytes, Scalar};
use sm3::Digest as _;

use field::{Fe, P, checked_add, less_than, limbs_from_be_bytes};
use point::{Affine, B_BYTES, GX_BYTES, GY_BYTES, Jacobian, add_digit, odd_multiples, wnaf};

/// NAF width for the generator's scalar: 2^(8−2) = 64 precomputed points.
const G_WINDOW: u32 = 8;
/// NAF width for the key's scalar: 2^(5−2) = 8 points per key.
const Q_WINDOW: u32 = 5;
/// The group order n, little-endian limbs.
const N: [u64; 4] = [
    0x53bb_f409_39d5_4123,
    0x7203_df6b_21c6_052b,
    0xffff_ffff_ffff_ffff,
    0xffff_fffe_ffff_ffff,
];
/// The curve constant a = p − 3, big-endian, as hashed into `Z`.
const A_BYTES: [u8; 32] = [
    0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfc,
];
/// Longest distinguishing identifier: its bit length must fit the 16-bit `ENTL` field.
const DISTINGUISHING_ID_BYTES_MAX: usize = 8191;

/// Bits of the low half of a split scalar.
const HALF_BITS: usize = 128;

/// Odd multiples G, 3G, …, 127G, computed on first use.
fn generator_table() -> &'static [Affine] {
    static TABLE: OnceLock<Vec<Affine>> = OnceLock::new();
    TABLE.get_or_init(|| odd_multiples(&Affine::generator(), 1 << (G_WINDOW - 2)))
}

/// Odd multiples of 2^128·G, computed on first use.
fn generator_high_table() -> &'static [Affine] {
    static TABLE: OnceLock<Vec<Affine>> = OnceLock::new();
    TABLE.get_or_init(|| odd_multiples(&shifted_by_half(&Affine::generator()), 1 << (G_WINDOW - 2)))
}

/// 2^128·P for a finite point P of the prime-order group (never at infinity).
fn shifted_by_half(p: &Affine) -> Affine {
    let mut acc = Jacobian::from_affine(p);
    for _ in 0..HALF_BITS {
        acc = acc.double();
    }
    Jacobian::batch_to_affine(&[acc])[0]
}

/// An SM2 public key ready to verify: the point, its identity hash `Z`, and (built on its
/// first and second verification) its tables of odd multiples of Q and of 2^128·Q.
pub(crate) struct Sm2VerifyingKey {
    point: Affine,
    identity_hash: [u8; 32],
    table: OnceLock<Vec<Affine>>,
    table_high: OnceLock<Vec<Affine>>,
    verified_before: AtomicBool,
}

impl std::fmt::Debug for Sm2VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sm2VerifyingKey")
            .field("identity_hash", &hex::encode(self.identity_hash))
            .finish_non_exhaustive()
    }
}

impl Sm2VerifyingKey {
    /// A key from an uncompressed SEC1 point (`04 || x || y`) and the signer's distinguishing
    /// identifier; `None` if the point is not on the curve or the identifier is too long.
    pub(crate) fn from_sec1_point(point: &[u8; 65], distinguishing_id: &str) -> Option<Self> {
        if point[0] != 0x04 || distinguishing_id.len() > DISTINGUISHING_ID_BYTES_MAX {
            return None;
        }
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        x.copy_from_slice(&point[1..33]);
        y.copy_from_slice(&point[33..65]);
        let affine = Affine::from_coordinates(&x, &y)?;
        // Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA).
        let entl = u16::try_from(distinguishing_id.len() * 8).ok()?;
        let mut hasher = sm3::Sm3::new();
        hasher.update(entl.to_be_bytes());
        hasher.update(distinguishing_id.as_bytes());
        for part in [&A_BYTES, &B_BYTES, &GX_BYTES, &GY_BYTES, &x, &y] {
            hasher.update(part);
        }
        let mut identity_hash = [0u8; 32];
        identity_hash.copy_from_slice(hasher.finalize().as_slice());
        Some(Sm2VerifyingKey {
            point: affine,
            identity_hash,
            table: OnceLock::new(),
            table_high: OnceLock::new(),
            verified_before: AtomicBool::new(false),
        })
    }

    /// Whether `signature` signs `message` under this key.
    pub(crate) fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let mut hasher = sm3::Sm3::new();
        hasher.update(self.identity_hash);
        hasher.update(message);
        let mut e = [0u8; 32];
        e.copy_from_slice(hasher.finalize().as_slice());
        self.verify_prehash(&e, signature)
    }

    /// Whether `signature` signs the message hash `e = SM3(Z || M)` under this key.
    pub(crate) fn verify_prehash(&self, prehash: &[u8; 32], signature: &Signature) -> bool {
        let r: Scalar = *signature.r();
        let s: Scalar = *signature.s();
        let t = r + s;
        if bool::from(t.is_zero()) {
            return false;
        }
        let e = <Scalar as sm2::elliptic_curve::ops::Reduce<FieldBytes>>::reduce(
            &FieldBytes::from(*prehash),
        );
        let sum = self.linear_combination(&scalar_limbs(&s), &scalar_limbs(&t));
        if sum.is_infinity() {
            return false;
        }
        // x(R) mod n must equal c = r − e mod n; x(R) = X/Z² is c or c + n (when below p).
        let c = scalar_limbs(&(r - e));
        let z2 = sum.z.square();
        if sum.x == Fe::from_canonical_limbs(c).mul(&z2) {
            return true;
        }
        match checked_add(&c, &N) {
            Some(c_plus_n) if less_than(&c_plus_n, &P) => {
                sum.x == Fe::from_canonical_limbs(c_plus_n).mul(&z2)
            }
            _ => false,
        }
    }

    /// [s]G + [t]Q in one doubling chain: the split form once the key has been seen before.
    fn linear_combination(&self, s: &[u64; 4], t: &[u64; 4]) -> Jacobian {
        let q_table = self
            .table
            .get_or_init(|| odd_multiples(&self.point, 1 << (Q_WINDOW - 2)));
        if self.verified_before.swap(true, Ordering::Relaxed) {
            let q_high_table = self
                .table_high
                .get_or_init(|| odd_multiples(&shifted_by_half(&self.point), 1 << (Q_WINDOW - 2)));
            straus(
                &[
                    (wnaf(&[s[0], s[1], 0, 0], G_WINDOW), generator_table()),
                    (wnaf(&[s[2], s[3], 0, 0], G_WINDOW), generator_high_table()),
                    (wnaf(&[t[0], t[1], 0, 0], Q_WINDOW), q_table),
                    (wnaf(&[t[2], t[3], 0, 0], Q_WINDOW), q_high_table),
                ],
                HALF_BITS + 1,
            )
        } else {
            straus(
                &[
                    (wnaf(s, G_WINDOW), generator_table()),
                    (wnaf(t, Q_WINDOW), q_table),
                ],
                2 * HALF_BITS + 1,
            )
        }
    }
}

/// Σ digitsᵢ·Pᵢ over the first `length` NAF digits, every table holding the odd multiples of
/// its Pᵢ: one doubling per digit position, one mixed addition per nonzero digit.
fn straus(terms: &[([i8; 257], &[Affine])], length: usize) -> Jacobian {
    debug_assert!(
        terms
            .iter()
            .all(|(digits, _)| digits[length..].iter().all(|d| *d == 0))
    );
    let mut acc = Jacobian::INFINITY;
    for i in (0..length).rev() {
        if !acc.is_infinity() {
            acc = acc.double();
        }
        for (digits, table) in terms {
            if digits[i] != 0 {
                acc = add_digit(&acc, table, digits[i]);
            }
        }
    }
    acc
}

/// Little-endian limbs of a scalar's canonical value.
fn scalar_limbs(scalar: &Scalar) -> [u64; 4] {
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(scalar.to_repr().as_slice());
    limbs_from_be_bytes(&bytes)
}

#[cfg(test)]
mod tests;
