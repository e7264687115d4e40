//! Each reason code of `CertError`, produced by a crafted certificate or situation.

use std::sync::Arc;

use super::fixtures::*;
use crate::pki::{
    CERTIFICATE_DER_BYTES_MAX, CertError, Certificate, ChainVerifier, KeyUsageProfile,
    RevocationSet, Role, TrustStore, VerifiedIdentity,
};

const SERIAL_LAST: usize = crate::pki::SERIAL_BYTES - 1;

fn reason(result: Result<VerifiedIdentity, CertError>) -> &'static str {
    result.expect_err("must be rejected").reason_code()
}

fn store_reason(result: Result<(), CertError>) -> &'static str {
    result.expect_err("must be rejected").reason_code()
}

/// Replaces every occurrence of `from` by `to` (same length, so DER lengths stay right).
fn replace_bytes(der: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = der.to_vec();
    let mut found = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            found += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(found > 0, "pattern not found");
    out
}

#[test]
fn rejects_bytes_that_are_not_a_certificate_as_malformed() {
    let pki = pki(P256, P256);
    for bytes in [&b""[..], b"\x30\x03\x02\x01\x01", b"hello"] {
        assert_eq!(
            reason(pki.verifier.verify(bytes, NOW_MS, Role::Terminal)),
            "cert.malformed"
        );
    }
}

#[test]
fn rejects_trailing_bytes_as_malformed() {
    let pki = pki(P256, P256);
    let mut der = terminal(&pki.ca, P256).certificate().der().to_vec();
    der.push(0);
    assert_eq!(
        reason(pki.verifier.verify(&der, NOW_MS, Role::Terminal)),
        "cert.malformed"
    );
}

#[test]
fn rejects_oversized_input_as_too_large() {
    let pki = pki(P256, P256);
    let big = vec![0x30; CERTIFICATE_DER_BYTES_MAX + 1];
    assert_eq!(
        reason(pki.verifier.verify(&big, NOW_MS, Role::Terminal)),
        "cert.too_large"
    );
}

#[test]
fn rejects_leaf_of_a_ca_with_the_same_name_but_another_key_as_unknown_issuer() {
    let pki = pki(P256, SM2);
    let rogue_root = root(P256);
    let rogue_ca = institution_ca(&rogue_root, "oi01", SM2);
    let leaf = terminal(&rogue_ca, SM2);
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
        ),
        "cert.unknown_issuer"
    );
}

#[test]
fn rejects_institution_ca_of_another_root_as_unknown_issuer() {
    let root = root(SM2);
    let mut store = TrustStore::new(root.certificate().clone()).expect("root");
    let other_ca = institution_ca(&super::fixtures::root(SM2), "oi09", SM2);
    assert_eq!(
        store_reason(store.add_institution_ca(other_ca.certificate().clone())),
        "cert.unknown_issuer"
    );
}

#[test]
fn rejects_certificate_whose_signed_content_was_altered() {
    for algorithm in [P256, SM2] {
        let pki = pki(algorithm, algorithm);
        let leaf = terminal(&pki.ca, algorithm);
        let altered = replace_bytes(leaf.certificate().der(), b"w-oi01-000001", b"w-oi01-000002");
        assert_eq!(
            reason(pki.verifier.verify(&altered, NOW_MS, Role::Terminal)),
            "cert.signature_invalid",
            "{algorithm}"
        );
    }
}

#[test]
fn rejects_root_whose_self_signature_is_broken() {
    let root = root(P256);
    let serial = root.certificate().serial().to_vec();
    let mut other_serial = serial.clone();
    other_serial[SERIAL_LAST] ^= 1;
    let altered = replace_bytes(root.certificate().der(), &serial, &other_serial);
    let cert = Certificate::from_der(&altered).expect("still parses");
    let err = TrustStore::new(cert).expect_err("rejected");
    assert_eq!(err.reason_code(), "cert.signature_invalid");
}

#[test]
fn rejects_root_of_another_role_as_wrong_role() {
    let pki = pki(SM2, SM2);
    let err = TrustStore::new(pki.ca.certificate().clone()).expect_err("rejected");
    assert_eq!(err.reason_code(), "cert.wrong_role");
}

#[test]
fn rejects_leaf_not_yet_valid() {
    let pki = pki(P256, SM2);
    let mut t = template(Role::Terminal, "w-oi01-000001", "oi01");
    t.valid_from_ms = NOW_MS + DAY_MS;
    let leaf = issue(&pki.ca, &t, P256);
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
        ),
        "cert.not_yet_valid"
    );
}

#[test]
fn rejects_expired_leaf() {
    let pki = pki(SM2, SM2);
    let mut t = template(Role::Terminal, "w-oi01-000001", "oi01");
    t.valid_until_ms = NOW_MS - 1000;
    let leaf = issue(&pki.ca, &t, SM2);
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
        ),
        "cert.expired"
    );
}

#[test]
fn rejects_leaf_whose_institution_ca_expired() {
    let root = root(P256);
    let mut ca_template = template(Role::InstitutionCa, "oi01", "oi01");
    ca_template.valid_until_ms = NOW_MS - DAY_MS / 2;
    let ca = issue(&root, &ca_template, P256);
    let leaf = terminal(&ca, P256);
    let verifier = ChainVerifier::new(
        Arc::new(store_of(&root, &[&ca])),
        Arc::new(RevocationSet::new()),
    );
    assert_eq!(
        reason(verifier.verify(leaf.certificate().der(), NOW_MS, Role::Terminal)),
        "cert.expired"
    );
}

#[test]
fn rejects_revoked_leaf() {
    let pki = pki(P256, P256);
    let leaf = terminal(&pki.ca, SM2);
    pki.revocations
        .revoke_certificate(leaf.certificate(), pki.ca.certificate())
        .expect("room");
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
        ),
        "cert.revoked"
    );
}

#[test]
fn revoking_an_institution_ca_rejects_its_leaves() {
    let pki = pki(SM2, P256);
    let leaf = terminal(&pki.ca, P256);
    pki.revocations
        .revoke_certificate(pki.ca.certificate(), pki.root.certificate())
        .expect("room");
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
        ),
        "cert.revoked"
    );
}

#[test]
fn rejects_institution_ca_without_ca_flag_as_not_ca() {
    let root = root(P256);
    let mut t = template(Role::InstitutionCa, "oi01", "oi01");
    t.is_ca = false;
    t.path_len = None;
    let ca = issue(&root, &t, P256);
    let mut store = TrustStore::new(root.certificate().clone()).expect("root");
    assert_eq!(
        store_reason(store.add_institution_ca(ca.certificate().clone())),
        "cert.not_ca"
    );
}

#[test]
fn rejects_root_without_ca_flag_as_not_ca() {
    let mut t = root_template();
    t.is_ca = false;
    t.path_len = None;
    let root = root_from(&t, SM2);
    let err = TrustStore::new(root.certificate().clone()).expect_err("rejected");
    assert_eq!(err.reason_code(), "cert.not_ca");
}

#[test]
fn rejects_end_entity_marked_as_ca_as_unexpected_ca() {
    let pki = pki(P256, P256);
    let mut t = template(Role::Terminal, "w-oi01-000001", "oi01");
    t.is_ca = true;
    let leaf = issue(&pki.ca, &t, P256);
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
        ),
        "cert.unexpected_ca"
    );
}

#[test]
fn rejects_end_entity_without_key_usage() {
    let pki = pki(P256, SM2);
    let mut t = template(Role::Terminal, "w-oi01-000001", "oi01");
    t.key_usage = None;
    let leaf = issue(&pki.ca, &t, SM2);
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
        ),
        "cert.key_usage"
    );
}

#[test]
fn rejects_end_entity_with_only_certificate_signing_usage() {
    let pki = pki(P256, P256);
    let mut t = template(Role::SecureElement, "w-oi01-000001", "oi01");
    t.key_usage = Some(KeyUsageProfile::CertificateAuthority);
    let leaf = issue(&pki.ca, &t, P256);
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::SecureElement)
        ),
        "cert.key_usage"
    );
}

#[test]
fn rejects_institution_ca_without_key_cert_sign() {
    let root = root(SM2);
    let mut t = template(Role::InstitutionCa, "oi01", "oi01");
    t.key_usage = Some(KeyUsageProfile::DigitalSignature);
    let ca = issue(&root, &t, SM2);
    let mut store = TrustStore::new(root.certificate().clone()).expect("root");
    assert_eq!(
        store_reason(store.add_institution_ca(ca.certificate().clone())),
        "cert.key_usage"
    );
}

#[test]
fn rejects_role_the_caller_does_not_expect() {
    let pki = pki(P256, P256);
    let leaf = terminal(&pki.ca, P256);
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::InstitutionSigner)
        ),
        "cert.wrong_role"
    );
}

#[test]
fn rejects_ca_where_an_end_entity_is_expected_as_wrong_role() {
    let pki = pki(P256, P256);
    assert_eq!(
        reason(
            pki.verifier
                .verify(pki.ca.certificate().der(), NOW_MS, Role::Terminal)
        ),
        "cert.wrong_role"
    );
}

#[test]
fn rejects_terminal_issued_directly_by_the_root_as_wrong_issuer() {
    let pki = pki(P256, P256);
    let leaf = issue(&pki.root, &template(Role::Terminal, "w-x", "oi01"), P256);
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
        ),
        "cert.wrong_issuer"
    );
}

#[test]
fn rejects_settlement_signer_issued_by_an_institution_as_wrong_issuer() {
    let pki = pki(SM2, SM2);
    let leaf = issue(
        &pki.ca,
        &template(Role::SettlementSigner, "settlement", "oi01"),
        SM2,
    );
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::SettlementSigner)
        ),
        "cert.wrong_issuer"
    );
}

#[test]
fn rejects_leaf_of_another_institution_as_institution_mismatch() {
    let pki = pki(P256, SM2);
    let leaf = issue(
        &pki.ca,
        &template(Role::Terminal, "w-oi02-000001", "oi02"),
        P256,
    );
    assert_eq!(
        reason(
            pki.verifier
                .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
        ),
        "cert.institution_mismatch"
    );
}

#[test]
fn rejects_institution_ca_whose_name_is_not_its_institution() {
    let root = root(P256);
    let ca = issue(&root, &template(Role::InstitutionCa, "oi01", "oi02"), P256);
    let mut store = TrustStore::new(root.certificate().clone()).expect("root");
    assert_eq!(
        store_reason(store.add_institution_ca(ca.certificate().clone())),
        "cert.institution_mismatch"
    );
}

#[test]
fn rejects_signature_algorithm_other_than_ours_as_unsupported() {
    let pki = pki(P256, P256);
    let leaf = terminal(&pki.ca, P256);
    // ecdsa-with-SHA256 (1.2.840.10045.4.3.2) → ecdsa-with-SHA384 (1.2.840.10045.4.3.3).
    let altered = replace_bytes(
        leaf.certificate().der(),
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    );
    assert_eq!(
        reason(pki.verifier.verify(&altered, NOW_MS, Role::Terminal)),
        "cert.unsupported_algorithm"
    );
}

#[test]
fn rejects_key_on_another_curve_as_unsupported() {
    let pki = pki(P256, P256);
    let leaf = terminal(&pki.ca, P256);
    // prime256v1 (1.2.840.10045.3.1.7) → prime192v1 (1.2.840.10045.3.1.1).
    let altered = replace_bytes(
        leaf.certificate().der(),
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x01],
    );
    assert_eq!(
        reason(pki.verifier.verify(&altered, NOW_MS, Role::Terminal)),
        "cert.unsupported_algorithm"
    );
}

#[test]
fn rejects_institution_ca_under_a_root_with_path_length_zero() {
    let mut t = root_template();
    t.path_len = Some(0);
    let root = root_from(&t, P256);
    let ca = institution_ca(&root, "oi01", P256);
    let mut store = TrustStore::new(root.certificate().clone()).expect("root");
    assert_eq!(
        store_reason(store.add_institution_ca(ca.certificate().clone())),
        "cert.path_too_long"
    );
}

#[test]
fn rejects_unknown_critical_extension() {
    let pki = pki(SM2, SM2);
    let leaf = terminal(&pki.ca, SM2);
    // keyUsage (2.5.29.15, critical) → 2.5.29.99, an extension the verifier does not know.
    let altered = replace_bytes(
        leaf.certificate().der(),
        &[0x06, 0x03, 0x55, 0x1d, 0x0f],
        &[0x06, 0x03, 0x55, 0x1d, 0x63],
    );
    assert_eq!(
        reason(pki.verifier.verify(&altered, NOW_MS, Role::Terminal)),
        "cert.unknown_critical_extension"
    );
}

#[test]
fn every_reason_code_is_distinct_and_namespaced() {
    use crate::pki::CertErrorKind as K;
    let kinds = [
        K::Malformed,
        K::TooLarge,
        K::UnknownIssuer,
        K::SignatureInvalid,
        K::NotYetValid,
        K::Expired,
        K::Revoked,
        K::NotCa,
        K::UnexpectedCa,
        K::KeyUsage,
        K::WrongRole,
        K::WrongIssuer,
        K::InstitutionMismatch,
        K::UnsupportedAlgorithm,
        K::PathTooLong,
        K::UnknownCriticalExtension,
    ];
    let codes: std::collections::BTreeSet<&str> = kinds.iter().map(|k| k.reason_code()).collect();
    assert_eq!(codes.len(), kinds.len());
    assert!(codes.iter().all(|c| c.starts_with("cert.")));
}
