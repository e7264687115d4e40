//! The verified-chain cache: signatures once, per-call checks always.

use super::fixtures::*;
use crate::pki::{Role, VerifierStats};

#[test]
fn cache_hit_skips_the_signature_check() {
    let pki = pki(SM2, P256);
    let der = terminal(&pki.ca, SM2).certificate().der().to_vec();
    for _ in 0..5 {
        pki.verifier
            .verify(&der, NOW_MS, Role::Terminal)
            .expect("verifies");
    }
    assert_eq!(
        pki.verifier.stats(),
        VerifierStats {
            cache_hits: 4,
            cache_misses: 1,
            signature_checks: 1,
            cached_chains: 1,
        }
    );
}

#[test]
fn uncached_verification_checks_the_signature_every_time() {
    let pki = pki(P256, P256);
    let der = terminal(&pki.ca, P256).certificate().der().to_vec();
    for _ in 0..3 {
        pki.verifier
            .verify_uncached(&der, NOW_MS, Role::Terminal)
            .expect("verifies");
    }
    let stats = pki.verifier.stats();
    assert_eq!(stats.signature_checks, 3);
    assert_eq!(stats.cached_chains, 0);
}

#[test]
fn cache_hit_rejects_a_leaf_revoked_after_caching() {
    let pki = pki(P256, SM2);
    let leaf = terminal(&pki.ca, P256);
    let der = leaf.certificate().der();
    pki.verifier
        .verify(der, NOW_MS, Role::Terminal)
        .expect("verifies before revocation");
    pki.revocations
        .revoke_certificate(leaf.certificate(), pki.ca.certificate())
        .expect("room");
    let err = pki
        .verifier
        .verify(der, NOW_MS, Role::Terminal)
        .expect_err("revoked");
    assert_eq!(err.reason_code(), "cert.revoked");
    let stats = pki.verifier.stats();
    assert_eq!((stats.cache_hits, stats.signature_checks), (1, 1));
}

#[test]
fn cache_hit_rejects_a_time_past_expiry() {
    let pki = pki(SM2, SM2);
    let der = terminal(&pki.ca, SM2).certificate().der().to_vec();
    pki.verifier
        .verify(&der, NOW_MS, Role::Terminal)
        .expect("valid now");
    let err = pki
        .verifier
        .verify(&der, UNTIL_MS + 1, Role::Terminal)
        .expect_err("expired");
    assert_eq!(err.reason_code(), "cert.expired");
    let err = pki
        .verifier
        .verify(&der, FROM_MS - 1, Role::Terminal)
        .expect_err("not yet");
    assert_eq!(err.reason_code(), "cert.not_yet_valid");
    assert_eq!(pki.verifier.stats().signature_checks, 1);
}

#[test]
fn cache_hit_checks_the_expected_role() {
    let pki = pki(P256, P256);
    let der = terminal(&pki.ca, P256).certificate().der().to_vec();
    pki.verifier
        .verify(&der, NOW_MS, Role::Terminal)
        .expect("terminal");
    let err = pki
        .verifier
        .verify(&der, NOW_MS, Role::SecureElement)
        .expect_err("wrong role");
    assert_eq!(err.reason_code(), "cert.wrong_role");
    assert_eq!(pki.verifier.stats().cache_hits, 1);
}

#[test]
fn rejected_signature_is_not_cached() {
    let pki = pki(P256, P256);
    let mut der = terminal(&pki.ca, P256).certificate().der().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    for _ in 0..2 {
        assert!(pki.verifier.verify(&der, NOW_MS, Role::Terminal).is_err());
    }
    let stats = pki.verifier.stats();
    assert_eq!((stats.cached_chains, stats.signature_checks), (0, 2));
}

#[test]
fn cache_stays_within_its_bound() {
    const BOUND: usize = 16;
    let pki = pki_with_cache(P256, P256, BOUND);
    for _ in 0..(4 * BOUND) {
        let der = terminal(&pki.ca, P256).certificate().der().to_vec();
        pki.verifier
            .verify(&der, NOW_MS, Role::Terminal)
            .expect("verifies");
        assert!(pki.verifier.stats().cached_chains <= BOUND);
    }
    assert_eq!(pki.verifier.cache().capacity(), BOUND);
    assert_eq!(pki.verifier.stats().cache_misses, 4 * BOUND as u64);
}

#[test]
fn concurrent_verifications_agree_and_check_each_chain_at_most_once_per_thread() {
    let pki = pki(P256, SM2);
    let leaves: Vec<Vec<u8>> = (0..8)
        .map(|_| terminal(&pki.ca, P256).certificate().der().to_vec())
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..10 {
                    for der in &leaves {
                        let identity = pki
                            .verifier
                            .verify(der, NOW_MS, Role::Terminal)
                            .expect("verifies");
                        assert_eq!(identity.id(), "w-oi01-000001");
                    }
                }
            });
        }
    });
    let stats = pki.verifier.stats();
    assert_eq!(stats.cache_hits + stats.cache_misses, 4 * 10 * 8);
    // Threads may race on a first miss, never more than one check per thread per leaf.
    assert!(stats.signature_checks >= 8 && stats.signature_checks <= 4 * 8);
    assert_eq!(stats.cached_chains, 8);
}
