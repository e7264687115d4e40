//! The chain verifier on arbitrary leaf certificates, against the trust store of the
//! protocol's test vectors (P-256 and SM2): any certificate is accepted for one of the
//! expected roles or refused with a reason code, never a panic; an accepted one is of an
//! expected role, valid at the time asked, and the cached verifier agrees with the uncached one.
#![no_main]

use dcpipe_fuzz::{NOW_MS, verifier, verifier_sm2};
use dcpipe_pipeline::pki::{Role, RoleSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the roles asked for and the time, the rest is the leaf.
    let Some((&choice, leaf)) = data.split_first() else {
        return;
    };
    let roles: Vec<Role> = Role::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| choice & (1 << (i % 8)) != 0)
        .map(|(_, role)| *role)
        .collect();
    let expected = RoleSet::from(roles.as_slice());
    let at_ms = NOW_MS + i64::from(choice) * 86_400_000 * 365;
    for verifier in [verifier(), verifier_sm2()] {
        let uncached = verifier.verify_uncached(leaf, at_ms, expected);
        let cached = verifier.verify(leaf, at_ms, expected);
        match (&uncached, &cached) {
            (Ok(identity), Ok(again)) => {
                assert!(expected.contains(identity.role()));
                assert!(identity.valid_from_ms() <= at_ms && at_ms <= identity.valid_until_ms());
                assert_eq!(identity.fingerprint(), again.fingerprint());
            }
            (Err(e), Err(again)) => {
                assert!(!e.reason_code().is_empty());
                assert_eq!(e.reason_code(), again.reason_code());
            }
            _ => panic!("cached and uncached disagree: {uncached:?} / {cached:?}"),
        }
    }
});
