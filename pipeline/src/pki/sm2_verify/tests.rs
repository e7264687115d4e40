//! The fast verifier against the GB/T 32918.5 example and, case by case, against the RustCrypto
//! `sm2` crate's verifier.

use sm2::dsa::signature::hazmat::PrehashVerifier as _;
use sm2::dsa::signature::{Signer as _, Verifier as _};
use sm2::dsa::{Signature, SigningKey, VerifyingKey};
use sm2::elliptic_curve::ops::Reduce as _;
use sm2::elliptic_curve::sec1::ToSec1Point as _;
use sm2::{FieldBytes, NonZeroScalar, Scalar, SecretKey};

use super::Sm2VerifyingKey;
use crate::pki::SM2_DISTINGUISHING_ID;

/// Cases of the differential test that runs with the unit tests (debug builds: the `sm2` crate
/// signs and verifies slowly there: 1,000 cases took 50 s on a loaded machine).
const DIFFERENTIAL_CASES_CI: u64 = 500;
/// Environment variable giving the case count of the full differential run.
const DIFFERENTIAL_CASES_ENV: &str = "DCPIPE_SM2_DIFFERENTIAL_CASES";
/// The full run's count when the variable is not set.
const DIFFERENTIAL_CASES_FULL: u64 = 1_000_000;

fn hex32(text: &str) -> [u8; 32] {
    hex::decode(text)
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

/// GB/T 32918.5 (GM/T 0003.5) example on the recommended curve: private key, public key, the
/// message "message digest" with the default identifier, its hash e and the signature (r, s)
/// made with the nonce k given there.
mod gbt_32918_5 {
    pub(super) const PRIVATE: &str =
        "3945208f7b2144b13f36e38ac6d39f95889393692860b51a42fb81ef4df7c5b8";
    pub(super) const PUBLIC_X: &str =
        "09f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020";
    pub(super) const PUBLIC_Y: &str =
        "ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13";
    pub(super) const MESSAGE: &[u8] = b"message digest";
    pub(super) const E: &str = "f0b43e94ba45accaace692ed534382eb17e6ab5a19ce7b31f4486fdfc0d28640";
    pub(super) const R: &str = "f5a03b0648d2c4630eeac513e1bb81a15944da3827d5b74143ac7eaceee720b3";
    pub(super) const S: &str = "b1b6aa29df212fd8763182bc0d421ca1bb9038fd1f7f42d4840b69c485bbc1aa";
}

fn example_point() -> [u8; 65] {
    let mut point = [0u8; 65];
    point[0] = 0x04;
    point[1..33].copy_from_slice(&hex32(gbt_32918_5::PUBLIC_X));
    point[33..].copy_from_slice(&hex32(gbt_32918_5::PUBLIC_Y));
    point
}

fn example_signature() -> [u8; 64] {
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&hex32(gbt_32918_5::R));
    signature[32..].copy_from_slice(&hex32(gbt_32918_5::S));
    signature
}

fn fast_key(point: &[u8; 65]) -> Sm2VerifyingKey {
    Sm2VerifyingKey::from_sec1_point(point, SM2_DISTINGUISHING_ID).expect("on the curve")
}

#[test]
fn gbt_32918_5_example_public_key_belongs_to_its_private_key() {
    let secret = SecretKey::from_slice(&hex32(gbt_32918_5::PRIVATE)).expect("scalar");
    let point = secret.public_key().to_sec1_point(false);
    assert_eq!(point.as_bytes(), example_point().as_slice());
}

#[test]
fn gbt_32918_5_example_hash_is_sm3_of_z_and_message() {
    let key = fast_key(&example_point());
    let mut hasher = <sm3::Sm3 as sm3::Digest>::new();
    sm3::Digest::update(&mut hasher, key.identity_hash);
    sm3::Digest::update(&mut hasher, gbt_32918_5::MESSAGE);
    let e = sm3::Digest::finalize(hasher);
    assert_eq!(hex::encode(e), gbt_32918_5::E);
}

#[test]
fn gbt_32918_5_example_signature_verifies() {
    let key = fast_key(&example_point());
    let signature = Signature::from_slice(&example_signature()).expect("in range");
    assert!(key.verify(gbt_32918_5::MESSAGE, &signature));
    assert!(key.verify_prehash(&hex32(gbt_32918_5::E), &signature));
    assert!(!key.verify(b"message digesT", &signature));
    let crate_key =
        VerifyingKey::from_sec1_bytes(SM2_DISTINGUISHING_ID, &example_point()).expect("key");
    assert!(crate_key.verify(gbt_32918_5::MESSAGE, &signature).is_ok());
}

#[test]
fn off_curve_and_compressed_points_are_refused() {
    let mut point = example_point();
    point[64] ^= 1;
    assert!(Sm2VerifyingKey::from_sec1_point(&point, SM2_DISTINGUISHING_ID).is_none());
    let mut compressed = example_point();
    compressed[0] = 0x02;
    assert!(Sm2VerifyingKey::from_sec1_point(&compressed, SM2_DISTINGUISHING_ID).is_none());
}

#[test]
fn signature_whose_sum_is_at_infinity_is_rejected() {
    // With r = e and s = −r·d/(1 + d): [s]G + [r + s]Q = O, whose "x" would satisfy r = e + x.
    let d = Scalar::from(0x1234_5678_9abc_u64);
    let signing = SigningKey::from_nonzero_scalar(
        SM2_DISTINGUISHING_ID,
        NonZeroScalar::new(d).expect("nonzero"),
    )
    .expect("key");
    let prehash = [7u8; 32];
    let r = Scalar::reduce(&FieldBytes::from(prehash));
    let s = -(r * d) * (d + Scalar::ONE).invert().expect("invertible");
    let signature = Signature::from_scalars(r, s).expect("in range");
    let point = sec1(signing.verifying_key());
    assert!(!fast_key(&point).verify_prehash(&prehash, &signature));
    assert!(
        signing
            .verifying_key()
            .verify_prehash(&prehash, &signature)
            .is_err()
    );
}

#[test]
fn signature_with_r_plus_s_zero_is_rejected() {
    let key = fast_key(&example_point());
    let r = Scalar::reduce(&FieldBytes::from(hex32(gbt_32918_5::R)));
    let signature = Signature::from_scalars(r, -r).expect("in range");
    assert!(!key.verify(gbt_32918_5::MESSAGE, &signature));
}

fn sec1(key: &VerifyingKey) -> [u8; 65] {
    key.to_sec1_bytes().as_ref().try_into().expect("65 bytes")
}

/// A small seeded generator (SplitMix64): a failing case is replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next_u64() % u64::try_from(bound).expect("bound")).expect("index")
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        out
    }
}

/// One signer of the differential test, in both implementations.
struct Signer {
    signing: SigningKey,
    point: [u8; 65],
    fast: Sm2VerifyingKey,
}

fn signer(rng: &mut Rng) -> Signer {
    loop {
        let Ok(secret) = SecretKey::from_slice(&rng.bytes::<32>()) else {
            continue;
        };
        let Ok(signing) = SigningKey::new(SM2_DISTINGUISHING_ID, &secret) else {
            continue;
        };
        let point = sec1(signing.verifying_key());
        let fast = fast_key(&point);
        return Signer {
            signing,
            point,
            fast,
        };
    }
}

/// Counts of a differential run.
#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    accepted: u64,
    rejected: u64,
    unparsed: u64,
}

/// Checks one (key, message, signature bytes) case in both verifiers; panics on disagreement.
fn agree(tally: &mut Tally, seed: u64, signer: &Signer, message: &[u8], signature: &[u8; 64]) {
    tally.cases += 1;
    let Ok(parsed) = Signature::from_slice(signature) else {
        // Out-of-range r or s: refused before either verifier runs, as `PublicKey` does.
        tally.unparsed += 1;
        return;
    };
    let reference = signer
        .signing
        .verifying_key()
        .verify(message, &parsed)
        .is_ok();
    let fast = signer.fast.verify(message, &parsed);
    assert_eq!(
        fast,
        reference,
        "seed {seed}: key {} message {} signature {}",
        hex::encode(signer.point),
        hex::encode(message),
        hex::encode(signature)
    );
    if fast {
        tally.accepted += 1;
    } else {
        tally.rejected += 1;
    }
}

/// `cases` cases from `seed`: per signer and message, the valid signature and corruptions of
/// it (a bit of r, of s, of the message; the signature under another key; s replaced by n − r
/// and by a random value).
fn differential(seed: u64, cases: u64) -> Tally {
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let mut signers = [signer(&mut rng), signer(&mut rng)];
    while tally.cases < cases {
        // A fresh key now and then; most messages reuse a key, as certificates are reused.
        if rng.below(8) == 0 {
            let fresh = signer(&mut rng);
            let slot = rng.below(signers.len());
            signers[slot] = fresh;
        }
        let index = rng.below(signers.len());
        let signer = &signers[index];
        let other = &signers[(index + 1) % signers.len()];
        let length = rng.below(200);
        let message: Vec<u8> = (0..length).map(|_| rng.bytes::<1>()[0]).collect();
        let signature: Signature = signer.signing.sign(&message);
        let bytes: [u8; 64] = signature.to_bytes().into();
        agree(&mut tally, seed, signer, &message, &bytes);

        let mut flipped_r = bytes;
        flipped_r[rng.below(32)] ^= 1 << rng.below(8);
        agree(&mut tally, seed, signer, &message, &flipped_r);

        let mut flipped_s = bytes;
        flipped_s[32 + rng.below(32)] ^= 1 << rng.below(8);
        agree(&mut tally, seed, signer, &message, &flipped_s);

        if !message.is_empty() {
            let mut flipped_message = message.clone();
            flipped_message[rng.below(message.len())] ^= 1 << rng.below(8);
            agree(&mut tally, seed, signer, &flipped_message, &bytes);
        }

        agree(&mut tally, seed, other, &message, &bytes);

        let r = *signature.r();
        let mut zero_sum = bytes;
        zero_sum[32..].copy_from_slice(&(-r).to_bytes());
        agree(&mut tally, seed, signer, &message, &zero_sum);

        let mut random_s = bytes;
        random_s[32..].copy_from_slice(&rng.bytes::<32>());
        agree(&mut tally, seed, signer, &message, &random_s);
    }
    tally
}

#[test]
fn fast_verifier_agrees_with_the_sm2_crate_on_valid_and_corrupted_signatures() {
    let tally = differential(0x5eed_0001, DIFFERENTIAL_CASES_CI);
    assert!(tally.cases >= DIFFERENTIAL_CASES_CI);
    // About one case in seven is a valid signature; the rest are corruptions.
    assert!(tally.accepted * 10 > tally.cases, "{tally:?}");
    assert!(tally.rejected * 2 > tally.cases, "{tally:?}");
}

/// The full-size run: `DCPIPE_SM2_DIFFERENTIAL_CASES` cases (default 1,000,000), seeded by
/// `DCPIPE_SM2_DIFFERENTIAL_SEED` (default 1). See docs/BENCHMARKS.md for the command.
#[test]
#[ignore = "full-size differential run; minutes in release mode"]
fn fast_verifier_agrees_with_the_sm2_crate_at_full_size() {
    let cases = std::env::var(DIFFERENTIAL_CASES_ENV)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DIFFERENTIAL_CASES_FULL);
    let seed = std::env::var("DCPIPE_SM2_DIFFERENTIAL_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1);
    let started = std::time::Instant::now();
    let tally = differential(seed, cases);
    println!(
        "sm2 differential: seed {seed}, {tally:?}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(tally.cases >= cases);
}

#[test]
fn signatures_of_random_keys_verify() {
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..20 {
        let signer = signer(&mut rng);
        let message = rng.bytes::<48>();
        let signature: Signature = signer.signing.sign(&message);
        assert!(signer.fast.verify(&message, &signature));
    }
}

/// The rare case x(R) ≥ n (probability about 2^-128 for a real signature), built on purpose:
/// a point R with such an x, chosen r and s, the key Q = (R − [s]G)/t and the hash
/// e = r − (x mod n), so that [s]G + [t]Q = R. Both verifiers must accept it, and refuse it
/// with another hash.
#[test]
fn sum_with_x_above_the_group_order_is_accepted_as_the_crate_does() {
    use super::field::{Fe, be_bytes_from_limbs, checked_add};
    use sm2::elliptic_curve::Group as _;
    use sm2::elliptic_curve::ff::PrimeField as _;

    let b = Fe::from_be_bytes(&super::point::B_BYTES).expect("b");
    let (x, y) = (0u64..)
        .find_map(|k| {
            let limbs = checked_add(&super::N, &[k, 0, 0, 0]).expect("no overflow");
            let x = Fe::from_canonical_limbs(limbs);
            let three_x = x.double().add(&x);
            let rhs = x.square().mul(&x).sub(&three_x).add(&b);
            rhs.sqrt().map(|y| (x, y))
        })
        .expect("a square within a few tries");
    let mut r_point = [0u8; 65];
    r_point[0] = 0x04;
    r_point[1..33].copy_from_slice(&x.to_be_bytes());
    r_point[33..].copy_from_slice(&y.to_be_bytes());
    let big_r = sm2::PublicKey::from_sec1_bytes(&r_point)
        .expect("R on the curve")
        .to_projective();

    let r = Scalar::from(0x0123_4567_89ab_cdef_u64);
    let s = Scalar::from(0x0fed_cba9_8765_4321_u64);
    let t = r + s;
    let q =
        ((big_r - sm2::ProjectivePoint::generator() * s) * t.invert().expect("t ≠ 0")).to_affine();
    let key_point: [u8; 65] = sm2::PublicKey::from_affine(q)
        .expect("finite")
        .to_sec1_point(false)
        .as_bytes()
        .try_into()
        .expect("65 bytes");

    // x mod n = x − n, since n ≤ x < p < 2n.
    let x_limbs = x.to_limbs();
    let mut x_bytes = be_bytes_from_limbs(&x_limbs);
    let x_mod_n = Scalar::reduce(&FieldBytes::from(x_bytes));
    x_bytes = x_mod_n.to_repr().into();
    assert_eq!(
        checked_add(&super::field::limbs_from_be_bytes(&x_bytes), &super::N),
        Some(x_limbs)
    );
    let e: [u8; 32] = (r - x_mod_n).to_repr().into();
    let signature = Signature::from_scalars(r, s).expect("in range");

    let crate_key = VerifyingKey::from_sec1_bytes(SM2_DISTINGUISHING_ID, &key_point).expect("key");
    assert!(crate_key.verify_prehash(&e, &signature).is_ok());
    let fast = fast_key(&key_point);
    assert!(fast.verify_prehash(&e, &signature), "first verification");
    assert!(fast.verify_prehash(&e, &signature), "split form");

    let mut other_e = e;
    other_e[31] ^= 1;
    assert!(crate_key.verify_prehash(&other_e, &signature).is_err());
    assert!(!fast.verify_prehash(&other_e, &signature));
}

/// SubjectPublicKeyInfo of an SM2 key up to its point: id-ecPublicKey with the SM2 curve
/// (1.2.156.10197.1.301), then a BIT STRING of the 65-byte uncompressed point.
const SM2_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d, 0x03, 0x42, 0x00,
];

/// A DER INTEGER of a 32-byte unsigned big-endian value.
fn der_integer(value: &[u8]) -> Vec<u8> {
    let start = value
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(value.len() - 1);
    let mut content = value[start..].to_vec();
    if content[0] & 0x80 != 0 {
        content.insert(0, 0);
    }
    let mut out = vec![0x02, u8::try_from(content.len()).expect("short")];
    out.extend(content);
    out
}

/// What the `openssl` command says of (key, message, signature): SM3 with the default
/// distinguishing identifier, as dcpipe signs.
fn openssl_verifies(
    dir: &std::path::Path,
    point: &[u8; 65],
    message: &[u8],
    signature: &[u8; 64],
) -> bool {
    let mut spki = SM2_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(point);
    let mut body = der_integer(&signature[..32]);
    body.extend(der_integer(&signature[32..]));
    let mut der = vec![0x30, u8::try_from(body.len()).expect("short")];
    der.extend(body);
    std::fs::write(dir.join("key.der"), &spki).expect("key");
    std::fs::write(dir.join("message"), message).expect("message");
    std::fs::write(dir.join("signature"), &der).expect("signature");
    let distid = format!("distid:{SM2_DISTINGUISHING_ID}");
    let output = std::process::Command::new("openssl")
        .args([
            "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-rawin", "-digest", "sm3",
        ])
        .arg("-inkey")
        .arg(dir.join("key.der"))
        .arg("-in")
        .arg(dir.join("message"))
        .arg("-sigfile")
        .arg(dir.join("signature"))
        .args(["-pkeyopt", &distid])
        .output()
        .expect("the openssl command (scripts/setup.sh installs it)");
    let said = String::from_utf8_lossy(&output.stdout);
    match output.status.code() {
        Some(0) => {
            assert!(said.contains("Verified Successfully"), "{said}");
            true
        }
        Some(1) => false,
        other => panic!(
            "openssl exited with {other:?}: {said}{}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// A sample against OpenSSL, a third implementation: valid signatures and the corruptions of
/// the differential test (a bit of r, of s, of the message; another key).
#[test]
fn fast_verifier_agrees_with_openssl_on_a_sample() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut rng = Rng(0x5eed_0003);
    let signers = [signer(&mut rng), signer(&mut rng)];
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..12 {
        let signer = &signers[case % 2];
        let other = &signers[(case + 1) % 2];
        let message: Vec<u8> = (0..rng.below(120) + 1)
            .map(|_| rng.bytes::<1>()[0])
            .collect();
        let signature: Signature = signer.signing.sign(&message);
        let bytes: [u8; 64] = signature.to_bytes().into();
        let mut flipped_r = bytes;
        flipped_r[rng.below(32)] ^= 1 << rng.below(8);
        let mut flipped_s = bytes;
        flipped_s[32 + rng.below(32)] ^= 1 << rng.below(8);
        let mut flipped_message = message.clone();
        flipped_message[rng.below(message.len())] ^= 1 << rng.below(8);
        let cases: [(&Signer, &[u8], [u8; 64]); 5] = [
            (signer, &message, bytes),
            (signer, &message, flipped_r),
            (signer, &message, flipped_s),
            (signer, &flipped_message, bytes),
            (other, &message, bytes),
        ];
        for (key, message, signature) in cases {
            let Ok(parsed) = Signature::from_slice(&signature) else {
                continue;
            };
            let fast = key.fast.verify(message, &parsed);
            let openssl = openssl_verifies(dir.path(), &key.point, message, &signature);
            assert_eq!(
                fast,
                openssl,
                "key {} message {} signature {}",
                hex::encode(key.point),
                hex::encode(message),
                hex::encode(signature)
            );
            if fast {
                accepted += 1;
            } else {
                rejected += 1;
            }
        }
    }
    assert_eq!(accepted, 12, "every valid signature verifies in both");
    assert!(
        rejected >= 40,
        "{rejected} corrupted signatures refused by both"
    );
}
