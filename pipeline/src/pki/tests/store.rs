//! The demo PKI: generation rules, files, modes, loading and special certificates.

use std::path::Path;
use std::sync::Arc;

use super::fixtures::*;
use crate::pki::{
    Algorithm, AlgorithmChoice, ChainVerifier, DemoPkiOptions, PkiDirectory, PkiLayout,
    RevocationSet, Role, SpecialCertificate, StoreErrorKind, SubjectSpec, TrustLayout,
    init_pki_directory, read_trust_anchors,
};

fn options(institutions: usize, wallets: usize, algorithm: AlgorithmChoice) -> DemoPkiOptions {
    DemoPkiOptions::new(institutions, wallets, algorithm, NOW_MS)
}

fn generate(institutions: usize, wallets: usize, algorithm: AlgorithmChoice) -> PkiDirectory {
    PkiDirectory::generate(&options(institutions, wallets, algorithm)).expect("generate")
}

fn verifier(pki: &PkiDirectory) -> ChainVerifier {
    ChainVerifier::new(
        Arc::clone(pki.trust_store()),
        Arc::new(RevocationSet::new()),
    )
}

#[test]
fn wallets_are_spread_round_robin_with_per_institution_numbers() {
    let pki = generate(3, 7, AlgorithmChoice::P256);
    let ids: Vec<(&str, &str)> = pki
        .manifest()
        .wallets
        .iter()
        .map(|w| (w.id.as_str(), w.institution.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("w-oi01-000001", "oi01"),
            ("w-oi02-000001", "oi02"),
            ("w-oi03-000001", "oi03"),
            ("w-oi01-000002", "oi01"),
            ("w-oi02-000002", "oi02"),
            ("w-oi03-000002", "oi03"),
            ("w-oi01-000003", "oi01"),
        ]
    );
    assert_eq!(pki.wallets().count(), 7);
    let institutions: Vec<&str> = pki.institutions().map(|(id, _)| id).collect();
    assert_eq!(institutions, ["oi01", "oi02", "oi03"]);
}

#[test]
fn mixed_choice_alternates_institutions_and_wallets() {
    let pki = generate(2, 4, AlgorithmChoice::Mixed);
    let manifest = pki.manifest();
    assert_eq!(manifest.root_algorithm, P256);
    let institutions: Vec<Algorithm> = manifest.institutions.iter().map(|i| i.algorithm).collect();
    assert_eq!(institutions, [P256, SM2]);
    let wallets: Vec<(&str, Algorithm)> = manifest
        .wallets
        .iter()
        .map(|w| (w.id.as_str(), w.algorithm))
        .collect();
    assert_eq!(
        wallets,
        [
            ("w-oi01-000001", P256),
            ("w-oi02-000001", SM2),
            ("w-oi01-000002", SM2),
            ("w-oi02-000002", P256),
        ]
    );
    let oi02 = pki.institution("oi02").expect("oi02");
    assert_eq!(oi02.ca.certificate().algorithm(), SM2);
    assert_eq!(oi02.ca.certificate().signature_algorithm(), P256);
    assert_eq!(oi02.signer.certificate().algorithm(), SM2);
    let wallet = pki.wallet("w-oi02-000002").expect("wallet");
    assert_eq!(wallet.terminal.certificate().algorithm(), P256);
    assert_eq!(wallet.terminal.certificate().signature_algorithm(), SM2);
}

#[test]
fn every_generated_certificate_verifies_for_its_role() {
    for choice in [
        AlgorithmChoice::P256,
        AlgorithmChoice::Sm2,
        AlgorithmChoice::Mixed,
    ] {
        let pki = generate(2, 4, choice);
        let verifier = verifier(&pki);
        let mut checked = 0;
        let mut check = |der: &[u8], role: Role| {
            verifier
                .verify(der, NOW_MS, role)
                .unwrap_or_else(|e| panic!("{choice} {role}: {e}"));
            checked += 1;
        };
        check(
            pki.settlement_signer().certificate().der(),
            Role::SettlementSigner,
        );
        for (_, keys) in pki.institutions() {
            check(keys.ca.certificate().der(), Role::InstitutionCa);
            check(keys.signer.certificate().der(), Role::InstitutionSigner);
        }
        for (_, keys) in pki.wallets() {
            check(keys.terminal.certificate().der(), Role::Terminal);
            check(keys.secure_element.certificate().der(), Role::SecureElement);
            check(keys.wallet.certificate().der(), Role::Wallet);
        }
        assert_eq!(checked, 1 + 2 * 2 + 3 * 4);
    }
}

#[test]
fn rejects_options_beyond_the_limits() {
    for bad in [
        options(0, 1, AlgorithmChoice::P256),
        options(100, 1, AlgorithmChoice::P256),
    ] {
        let err = PkiDirectory::generate(&bad).expect_err("limit");
        assert_eq!(err.reason_code(), "issue.limit_exceeded");
    }
}

#[test]
fn special_certificates_fail_with_their_reason_codes() {
    let pki = generate(1, 0, AlgorithmChoice::Mixed);
    let revocations = Arc::new(RevocationSet::new());
    let verifier = ChainVerifier::new(Arc::clone(pki.trust_store()), Arc::clone(&revocations));
    for (kind, code) in [
        (SpecialCertificate::Expired, "cert.expired"),
        (SpecialCertificate::NotYetValid, "cert.not_yet_valid"),
        (SpecialCertificate::Revoked, "cert.revoked"),
        (SpecialCertificate::WrongRole, "cert.wrong_role"),
        (SpecialCertificate::UnknownIssuer, "cert.unknown_issuer"),
    ] {
        for algorithm in Algorithm::ALL {
            let subject = SubjectSpec {
                role: Role::Terminal,
                id: "w-oi01-999999",
                institution: "oi01",
                algorithm,
            };
            let special = pki
                .issue_special(kind, &subject, NOW_MS, &revocations)
                .expect("issued");
            let err = verifier
                .verify(special.certificate().der(), NOW_MS, Role::Terminal)
                .expect_err("rejected");
            assert_eq!(err.reason_code(), code, "{kind:?} {algorithm}");
        }
    }
    assert_eq!(revocations.len(), 2);
}

#[test]
fn issues_vehicles_and_service_entities_that_verify() {
    let pki = generate(2, 0, AlgorithmChoice::Sm2);
    let verifier = verifier(&pki);
    for (role, id) in [
        (Role::Vehicle, "v-000001"),
        (Role::ServiceEntity, "toll-g7-01"),
    ] {
        let subject = SubjectSpec {
            role,
            id,
            institution: "oi02",
            algorithm: P256,
        };
        let issued = pki.issue(&subject, FROM_MS, UNTIL_MS).expect("issued");
        let identity = verifier
            .verify(issued.certificate().der(), NOW_MS, role)
            .expect("verifies");
        assert_eq!((identity.id(), identity.institution_id()), (id, "oi02"));
    }
}

fn fingerprints(pki: &PkiDirectory) -> Vec<[u8; 32]> {
    let mut out = vec![
        *pki.root().certificate().fingerprint(),
        *pki.settlement_signer().certificate().fingerprint(),
    ];
    for (_, keys) in pki.institutions() {
        out.push(*keys.ca.certificate().fingerprint());
        out.push(*keys.signer.certificate().fingerprint());
    }
    for (_, keys) in pki.wallets() {
        for certified in [&keys.terminal, &keys.secure_element, &keys.wallet] {
            out.push(*certified.certificate().fingerprint());
        }
    }
    out
}

#[test]
fn directory_round_trip_keeps_every_certificate_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written =
        init_pki_directory(dir.path(), &options(2, 3, AlgorithmChoice::Mixed)).expect("init");
    let loaded = PkiDirectory::load(dir.path()).expect("load");
    assert_eq!(loaded.manifest(), written.manifest());
    assert_eq!(fingerprints(&loaded), fingerprints(&written));
    let wallet = loaded.wallet("w-oi02-000001").expect("wallet");
    let signature = wallet
        .secure_element
        .key()
        .sign(b"pin proof")
        .expect("sign");
    let original = written.wallet("w-oi02-000001").expect("wallet");
    assert_eq!(
        original
            .secure_element
            .certificate()
            .public_key()
            .verify(b"pin proof", &signature),
        Ok(())
    );
    assert_eq!(
        loaded.trust_store().institution_ids().collect::<Vec<_>>(),
        ["oi01", "oi02"]
    );
}

#[test]
fn a_worker_loads_the_institutions_and_no_wallet_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written =
        init_pki_directory(dir.path(), &options(2, 6, AlgorithmChoice::Mixed)).expect("init");
    let loaded = PkiDirectory::load_institutions(dir.path()).expect("load");
    assert_eq!(loaded.wallets().count(), 0);
    assert!(loaded.wallet("w-oi01-000001").is_none());
    assert_eq!(
        loaded.trust_store().institution_ids().collect::<Vec<_>>(),
        ["oi01", "oi02"]
    );
    let signer = &loaded.institution("oi02").expect("institution").signer;
    assert_eq!(
        signer.certificate().fingerprint(),
        written
            .institution("oi02")
            .expect("institution")
            .signer
            .certificate()
            .fingerprint()
    );
    // Wallet certificates still verify against the loaded trust store.
    let terminal = written
        .wallet("w-oi01-000001")
        .expect("wallet")
        .terminal
        .certificate();
    let verifier = ChainVerifier::new(
        Arc::clone(loaded.trust_store()),
        Arc::new(RevocationSet::new()),
    );
    assert!(
        verifier
            .verify(terminal.der(), NOW_MS, Role::Terminal)
            .is_ok()
    );
}

#[test]
fn directory_follows_the_documented_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_pki_directory(dir.path(), &options(1, 1, AlgorithmChoice::P256)).expect("init");
    for file in [
        "manifest.toml",
        "root/ca.crt.pem",
        "root/ca.key.pem",
        "settlement/signer.crt.pem",
        "settlement/signer.key.pem",
        "institutions/oi01/ca/ca.crt.pem",
        "institutions/oi01/ca/ca.key.pem",
        "institutions/oi01/signer/signer.crt.pem",
        "institutions/oi01/signer/signer.key.pem",
        "wallets/w-oi01-000001/terminal.crt.pem",
        "wallets/w-oi01-000001/terminal.key.pem",
        "wallets/w-oi01-000001/secure-element.crt.pem",
        "wallets/w-oi01-000001/secure-element.key.pem",
        "wallets/w-oi01-000001/wallet.crt.pem",
        "wallets/w-oi01-000001/wallet.key.pem",
        "trust/root.crt.pem",
        "trust/settlement.crt.pem",
        "trust/institutions/oi01.crt.pem",
    ] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
#[test]
fn key_files_are_readable_by_the_owner_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_pki_directory(dir.path(), &options(1, 2, AlgorithmChoice::Sm2)).expect("init");
    let mut keys = 0;
    for path in files_under(dir.path()) {
        if path.to_string_lossy().ends_with(".key.pem") {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            keys += 1;
        } else {
            assert_eq!(mode(&path), 0o644, "{}", path.display());
        }
    }
    assert_eq!(keys, 2 + 2 + 2 * 3);
}

#[test]
fn trust_anchors_alone_are_certificates_that_rebuild_the_trust_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = generate(3, 2, AlgorithmChoice::Mixed);
    let trust = TrustLayout::new(dir.path().join("anchors"));
    pki.write_trust_anchors(&trust).expect("write");
    let mut files: Vec<String> = files_under(trust.dir())
        .iter()
        .map(|path| {
            let name = path.strip_prefix(trust.dir()).expect("inside");
            name.to_string_lossy().into_owned()
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "institutions/oi01.crt.pem",
            "institutions/oi02.crt.pem",
            "institutions/oi03.crt.pem",
            "root.crt.pem",
            "settlement.crt.pem",
        ]
    );
    let (_, store) = read_trust_anchors(&trust).expect("read back");
    assert_eq!(
        store.institution_ids().collect::<Vec<_>>(),
        ["oi01", "oi02", "oi03"]
    );
    // A wallet's certificates verify against the anchors read back.
    let wallet = pki.wallets().next().expect("a wallet").1;
    let verifier = ChainVerifier::new(Arc::new(store), Arc::new(RevocationSet::new()));
    assert!(
        verifier
            .verify(wallet.terminal.certificate().der(), NOW_MS, Role::Terminal)
            .is_ok()
    );
    // Written once: a second writer overwrites nothing.
    let before = std::fs::read(trust.root()).expect("read");
    let err = pki.write_trust_anchors(&trust).expect_err("second");
    assert_eq!(err.kind(), StoreErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(trust.root()).expect("read"), before);
}

#[test]
fn refuses_to_write_over_an_existing_pki() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_pki_directory(dir.path(), &options(1, 1, AlgorithmChoice::P256)).expect("first");
    let before = std::fs::read(dir.path().join("root/ca.key.pem")).expect("read");
    let err =
        init_pki_directory(dir.path(), &options(1, 1, AlgorithmChoice::P256)).expect_err("second");
    assert_eq!(err.kind(), StoreErrorKind::AlreadyExists);
    let after = std::fs::read(dir.path().join("root/ca.key.pem")).expect("read");
    assert_eq!(before, after);
}

#[test]
fn refuses_to_write_over_files_of_an_unfinished_pki() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = generate(1, 1, AlgorithmChoice::P256);
    let layout = PkiLayout::new(dir.path());
    std::fs::create_dir_all(layout.dir().join("root")).expect("mkdir");
    std::fs::write(layout.root().1, b"left over").expect("write");
    let err = pki.write(dir.path()).expect_err("existing key file");
    assert_eq!(err.kind(), StoreErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(layout.root().1).expect("read"), b"left over");
}

#[test]
fn load_rejects_a_key_that_is_not_the_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_pki_directory(dir.path(), &options(1, 2, AlgorithmChoice::P256)).expect("init");
    let layout = PkiLayout::new(dir.path());
    let (_, first) = layout.wallet_key("w-oi01-000001", Role::Terminal);
    let (_, second) = layout.wallet_key("w-oi01-000002", Role::Terminal);
    std::fs::copy(&second, &first).expect("swap key");
    let err = PkiDirectory::load(dir.path()).expect_err("mismatch");
    assert_eq!(err.kind(), StoreErrorKind::KeyMismatch);
    assert_eq!(err.path(), first);
}

#[test]
fn load_rejects_a_certificate_in_the_wrong_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_pki_directory(dir.path(), &options(1, 1, AlgorithmChoice::Sm2)).expect("init");
    let layout = PkiLayout::new(dir.path());
    let (terminal, _) = layout.wallet_key("w-oi01-000001", Role::Terminal);
    let (wallet, _) = layout.wallet_key("w-oi01-000001", Role::Wallet);
    std::fs::copy(&wallet, &terminal).expect("swap certificate");
    let err = PkiDirectory::load(dir.path()).expect_err("wrong role");
    assert_eq!(err.kind(), StoreErrorKind::Certificate);
}

#[test]
fn load_rejects_a_manifest_id_that_leaves_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_pki_directory(dir.path(), &options(1, 1, AlgorithmChoice::P256)).expect("init");
    let manifest = dir.path().join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).expect("read");
    std::fs::write(
        &manifest,
        text.replace("\"w-oi01-000001\"", "\"../../../etc\""),
    )
    .expect("write");
    let err = PkiDirectory::load(dir.path()).expect_err("traversal");
    assert_eq!(err.kind(), StoreErrorKind::Manifest);
}

#[test]
fn load_rejects_a_manifest_of_another_format_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_pki_directory(dir.path(), &options(1, 0, AlgorithmChoice::P256)).expect("init");
    let manifest = dir.path().join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).expect("read");
    assert!(text.contains("format_version = 1"), "{text}");
    std::fs::write(
        &manifest,
        text.replace("format_version = 1", "format_version = 2"),
    )
    .expect("write");
    let err = PkiDirectory::load(dir.path()).expect_err("version");
    assert_eq!(err.kind(), StoreErrorKind::Manifest);
}
