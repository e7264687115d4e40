//! Chains that must verify, and what the verified identity says.

use std::sync::Arc;

use super::fixtures::*;
use crate::pki::{
    Algorithm, CENTRAL_BANK_ID, ChainVerifier, RevocationSet, Role, RoleSet, SETTLEMENT_SIGNER_ID,
    sha256,
};

#[test]
fn verifies_terminal_chains_for_every_algorithm_combination() {
    for root_alg in Algorithm::ALL {
        for ca_alg in Algorithm::ALL {
            for leaf_alg in Algorithm::ALL {
                let pki = pki(root_alg, ca_alg);
                let leaf = terminal(&pki.ca, leaf_alg);
                let identity = pki
                    .verifier
                    .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
                    .unwrap_or_else(|e| panic!("{root_alg}/{ca_alg}/{leaf_alg}: {e}"));
                assert_eq!(identity.role(), Role::Terminal);
                assert_eq!(identity.id(), "w-oi01-000001");
                assert_eq!(identity.institution_id(), "oi01");
                assert_eq!(identity.algorithm(), leaf_alg);
                assert_eq!(identity.public_key(), leaf.key().public_key());
                assert_eq!(identity.fingerprint(), &sha256(leaf.certificate().der()));
                assert_eq!(
                    identity.issuer_fingerprint(),
                    Some(pki.ca.certificate().fingerprint())
                );
            }
        }
    }
}

#[test]
fn verified_public_key_checks_message_signatures_of_the_leaf_key() {
    for algorithm in Algorithm::ALL {
        let pki = pki(P256, SM2);
        let leaf = terminal(&pki.ca, algorithm);
        let identity = pki
            .verifier
            .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
            .expect("verifies");
        let signature = leaf.key().sign(b"payment envelope").expect("sign");
        assert_eq!(
            identity
                .public_key()
                .verify(b"payment envelope", &signature),
            Ok(())
        );
    }
}

#[test]
fn chain_validity_is_the_intersection_of_the_certificates() {
    let root = root(P256);
    let mut ca_template = template(Role::InstitutionCa, "oi01", "oi01");
    ca_template.valid_until_ms = NOW_MS + 10 * DAY_MS;
    let ca = issue(&root, &ca_template, P256);
    let mut leaf_template = template(Role::Terminal, "w-oi01-000001", "oi01");
    leaf_template.valid_from_ms = NOW_MS - DAY_MS / 2;
    let leaf = issue(&ca, &leaf_template, SM2);
    let verifier = ChainVerifier::new(
        Arc::new(store_of(&root, &[&ca])),
        Arc::new(RevocationSet::new()),
    );
    let identity = verifier
        .verify(leaf.certificate().der(), NOW_MS, Role::Terminal)
        .expect("verifies");
    assert_eq!(identity.valid_from_ms(), NOW_MS - DAY_MS / 2);
    assert_eq!(identity.valid_until_ms(), NOW_MS + 10 * DAY_MS);
}

#[test]
fn validity_bounds_are_inclusive() {
    let pki = pki(P256, P256);
    let leaf = terminal(&pki.ca, P256);
    let der = leaf.certificate().der();
    assert!(pki.verifier.verify(der, FROM_MS, Role::Terminal).is_ok());
    assert!(pki.verifier.verify(der, UNTIL_MS, Role::Terminal).is_ok());
}

#[test]
fn verifies_every_end_entity_role_issued_by_an_institution_ca() {
    let pki = pki(SM2, P256);
    for role in [
        Role::InstitutionSigner,
        Role::Terminal,
        Role::SecureElement,
        Role::Wallet,
        Role::Vehicle,
        Role::ServiceEntity,
    ] {
        let leaf = issue(&pki.ca, &template(role, "e-1", "oi01"), SM2);
        let identity = pki
            .verifier
            .verify(leaf.certificate().der(), NOW_MS, role)
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        assert_eq!(identity.role(), role);
    }
}

#[test]
fn verifies_settlement_signer_issued_by_the_root() {
    let pki = pki(SM2, SM2);
    let signer = issue(
        &pki.root,
        &template(
            Role::SettlementSigner,
            SETTLEMENT_SIGNER_ID,
            CENTRAL_BANK_ID,
        ),
        SM2,
    );
    let identity = pki
        .verifier
        .verify(signer.certificate().der(), NOW_MS, Role::SettlementSigner)
        .expect("verifies");
    assert_eq!(identity.institution_id(), CENTRAL_BANK_ID);
    assert_eq!(
        identity.issuer_fingerprint(),
        Some(pki.root.certificate().fingerprint())
    );
}

#[test]
fn verifies_institution_ca_when_a_ca_role_is_expected() {
    let pki = pki(P256, SM2);
    let identity = pki
        .verifier
        .verify(pki.ca.certificate().der(), NOW_MS, Role::InstitutionCa)
        .expect("verifies");
    assert_eq!(identity.role(), Role::InstitutionCa);
    assert_eq!(identity.id(), "oi01");
}

#[test]
fn verifies_the_root_itself_when_the_root_is_expected() {
    let pki = pki(SM2, P256);
    let identity = pki
        .verifier
        .verify(pki.root.certificate().der(), NOW_MS, Role::CentralBankRoot)
        .expect("verifies");
    assert_eq!(identity.role(), Role::CentralBankRoot);
    assert_eq!(identity.issuer_fingerprint(), None);
}

#[test]
fn accepts_any_of_several_expected_roles() {
    let pki = pki(P256, P256);
    let leaf = issue(&pki.ca, &template(Role::Vehicle, "v-1", "oi01"), P256);
    let expected = RoleSet::from([Role::Terminal, Role::Vehicle]);
    let identity = pki
        .verifier
        .verify(leaf.certificate().der(), NOW_MS, expected)
        .expect("verifies");
    assert_eq!(identity.role(), Role::Vehicle);
}

#[test]
fn trust_store_keeps_the_settlement_signer_and_institutions() {
    let root = root(P256);
    let oi01 = institution_ca(&root, "oi01", P256);
    let oi02 = institution_ca(&root, "oi02", SM2);
    let signer = issue(
        &root,
        &template(
            Role::SettlementSigner,
            SETTLEMENT_SIGNER_ID,
            CENTRAL_BANK_ID,
        ),
        P256,
    );
    let mut store = store_of(&root, &[&oi01, &oi02]);
    store
        .set_settlement_signer(signer.certificate().clone())
        .expect("accepted");
    assert_eq!(
        store.institution_ids().collect::<Vec<_>>(),
        ["oi01", "oi02"]
    );
    assert_eq!(store.institution_ca("oi02"), Some(oi02.certificate()));
    assert_eq!(store.settlement_signer(), Some(signer.certificate()));
    assert_eq!(store.root(), root.certificate());
}

#[test]
fn certificate_pem_round_trip_keeps_the_der() {
    let pki = pki(SM2, P256);
    let leaf = terminal(&pki.ca, SM2);
    let pem = leaf.certificate().to_pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    let back = crate::pki::Certificate::from_pem(&pem).expect("parses");
    assert_eq!(back.der(), leaf.certificate().der());
    assert_eq!(back.id(), "w-oi01-000001");
}

#[test]
fn issued_certificate_follows_the_profile() {
    let pki = pki(P256, SM2);
    let leaf = terminal(&pki.ca, P256);
    let cert = leaf.certificate();
    assert_eq!(cert.serial().len(), crate::pki::SERIAL_BYTES);
    assert!(cert.serial()[0] & 0x80 == 0 && cert.serial()[0] & 0x40 != 0);
    assert!(!cert.is_ca());
    assert_eq!(cert.path_len(), None);
    let ku = cert.key_usage().expect("keyUsage");
    assert!(ku.digital_signature && !ku.key_cert_sign && !ku.crl_sign);
    assert_eq!(
        cert.subject_key_id(),
        Some(&leaf.key().public_key().key_identifier()[..])
    );
    assert_eq!(
        cert.authority_key_id(),
        pki.ca.certificate().subject_key_id()
    );
    assert_eq!(cert.signature_algorithm(), SM2);
    assert_eq!(cert.valid_from_ms(), FROM_MS);
    assert_eq!(cert.valid_until_ms(), UNTIL_MS);

    let ca = pki.ca.certificate();
    assert!(ca.is_ca());
    assert_eq!(ca.path_len(), Some(0));
    let ku = ca.key_usage().expect("keyUsage");
    assert!(ku.key_cert_sign && ku.crl_sign && !ku.digital_signature);
    assert_eq!(pki.root.certificate().path_len(), Some(1));
}

#[test]
fn serials_differ_between_certificates() {
    let pki = pki(P256, P256);
    let a = terminal(&pki.ca, P256);
    let b = terminal(&pki.ca, P256);
    assert_ne!(a.certificate().serial(), b.certificate().serial());
}
