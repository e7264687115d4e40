//! Random mutations of valid certificates: rejected, never a panic.

use std::sync::OnceLock;

use proptest::prelude::*;

use super::fixtures::*;
use crate::pki::{Algorithm, Certificate, Role};

struct Sample {
    pki: Pki,
    p256_leaf: Vec<u8>,
    sm2_leaf: Vec<u8>,
}

/// One PKI for all cases: building it per case would dominate the run.
fn sample() -> &'static Sample {
    static SAMPLE: OnceLock<Sample> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let pki = pki(P256, SM2);
        let p256_leaf = terminal(&pki.ca, Algorithm::EcdsaP256Sha256)
            .certificate()
            .der()
            .to_vec();
        let sm2_leaf = terminal(&pki.ca, Algorithm::Sm2Sm3)
            .certificate()
            .der()
            .to_vec();
        Sample {
            pki,
            p256_leaf,
            sm2_leaf,
        }
    })
}

fn mutated(original: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let mut der = original.to_vec();
    for (position, value) in edits {
        let i = position % der.len();
        der[i] = *value;
    }
    der
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutated_certificate_is_rejected_without_panic(
        sm2 in any::<bool>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let sample = sample();
        let original = if sm2 { &sample.sm2_leaf } else { &sample.p256_leaf };
        let der = mutated(original, &edits);
        prop_assume!(der != *original);
        let outcome = sample.pki.verifier.verify_uncached(&der, NOW_MS, Role::Terminal);
        prop_assert!(outcome.is_err(), "mutation accepted: {edits:?}");
    }

    #[test]
    fn truncated_certificate_is_rejected_without_panic(sm2 in any::<bool>(), keep in any::<usize>()) {
        let sample = sample();
        let original = if sm2 { &sample.sm2_leaf } else { &sample.p256_leaf };
        let der = &original[..keep % original.len()];
        prop_assert!(Certificate::from_der(der).is_err());
        prop_assert!(sample.pki.verifier.verify(der, NOW_MS, Role::Terminal).is_err());
    }

    #[test]
    fn random_bytes_are_rejected_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let sample = sample();
        prop_assert!(sample.pki.verifier.verify(&bytes, NOW_MS, Role::Terminal).is_err());
    }
}
