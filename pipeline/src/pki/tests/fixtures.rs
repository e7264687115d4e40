//! Small builders shared by the PKI tests.

use std::sync::Arc;

use crate::pki::{
    Algorithm, CENTRAL_BANK_ID, CertificateTemplate, CertifiedKey, ChainVerifier, PrivateKey,
    RevocationSet, Role, TrustStore,
};

/// The tests' "now": 2025-06-15T00:00:00Z.
pub(super) const NOW_MS: i64 = 1_749_945_600_000;
pub(super) const DAY_MS: i64 = 24 * 3600 * 1000;
/// Validity of fixture certificates: a day before now to a year after.
pub(super) const FROM_MS: i64 = NOW_MS - DAY_MS;
pub(super) const UNTIL_MS: i64 = NOW_MS + 365 * DAY_MS;

pub(super) const P256: Algorithm = Algorithm::EcdsaP256Sha256;
pub(super) const SM2: Algorithm = Algorithm::Sm2Sm3;

/// The profile's template for `role` with the fixture validity.
pub(super) fn template(role: Role, id: &str, institution: &str) -> CertificateTemplate {
    CertificateTemplate::for_role(role, id, institution, FROM_MS, UNTIL_MS)
}

pub(super) fn root(algorithm: Algorithm) -> CertifiedKey {
    CertifiedKey::self_signed_root(algorithm, FROM_MS, UNTIL_MS).expect("root")
}

/// A root built from an arbitrary template (crafted roots).
pub(super) fn root_from(template: &CertificateTemplate, algorithm: Algorithm) -> CertifiedKey {
    CertifiedKey::self_signed(template, PrivateKey::generate(algorithm).expect("key"))
        .expect("root")
}

pub(super) fn root_template() -> CertificateTemplate {
    template(Role::CentralBankRoot, CENTRAL_BANK_ID, CENTRAL_BANK_ID)
}

pub(super) fn institution_ca(root: &CertifiedKey, id: &str, algorithm: Algorithm) -> CertifiedKey {
    issue(root, &template(Role::InstitutionCa, id, id), algorithm)
}

pub(super) fn issue(
    issuer: &CertifiedKey,
    template: &CertificateTemplate,
    algorithm: Algorithm,
) -> CertifiedKey {
    issuer
        .issue_with_new_key(template, algorithm)
        .expect("issue")
}

/// A terminal of wallet `w-<institution>-000001` issued by `ca`.
pub(super) fn terminal(ca: &CertifiedKey, algorithm: Algorithm) -> CertifiedKey {
    let institution = ca.certificate().institution();
    issue(
        ca,
        &template(
            Role::Terminal,
            &format!("w-{institution}-000001"),
            institution,
        ),
        algorithm,
    )
}

/// Root, one institution CA (`oi01`), the store holding both, and a verifier over it.
pub(super) struct Pki {
    pub(super) root: CertifiedKey,
    pub(super) ca: CertifiedKey,
    pub(super) revocations: Arc<RevocationSet>,
    pub(super) verifier: ChainVerifier,
}

pub(super) fn pki(root_algorithm: Algorithm, ca_algorithm: Algorithm) -> Pki {
    pki_with_cache(root_algorithm, ca_algorithm, 1024)
}

pub(super) fn pki_with_cache(
    root_algorithm: Algorithm,
    ca_algorithm: Algorithm,
    cache_entries: usize,
) -> Pki {
    let root = root(root_algorithm);
    let ca = institution_ca(&root, "oi01", ca_algorithm);
    let store = store_of(&root, &[&ca]);
    let revocations = Arc::new(RevocationSet::new());
    let verifier = ChainVerifier::with_cache_capacity(
        Arc::new(store),
        Arc::clone(&revocations),
        cache_entries,
    );
    Pki {
        root,
        ca,
        revocations,
        verifier,
    }
}

pub(super) fn store_of(root: &CertifiedKey, cas: &[&CertifiedKey]) -> TrustStore {
    let mut store = TrustStore::new(root.certificate().clone()).expect("root accepted");
    for ca in cas {
        store
            .add_institution_ca(ca.certificate().clone())
            .expect("CA accepted");
    }
    store
}
