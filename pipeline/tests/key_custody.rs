//! Each process holds only the keys its role needs: `pki init` writes one directory per party
//! and the trust anchors (certificates only) in trust/; a worker reads trust/ and its own
//! signer's directory, nothing else; a private key file others may read is refused.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::pki::{
    AlgorithmChoice, DemoPkiOptions, KeyHolder, PkiDirectory, PkiLayout, init_pki_directory,
    read_certificate_pem,
};

fn pki_in(dir: &Path) {
    init_pki_directory(
        dir,
        &DemoPkiOptions::new(2, 4, AlgorithmChoice::Mixed, system_now_ms()),
    )
    .expect("pki");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            // fs::copy keeps the mode: a key stays 0600.
            fs::copy(&path, &target).expect("copy");
        }
    }
}

/// A worker's machine: a copy of trust/ and of its own party directory only.
fn machine(pki: &Path, own: &Path, into: &Path) -> (PathBuf, PathBuf) {
    let trust = into.join("trust");
    let key = into.join("key");
    copy_dir(PkiLayout::new(pki).trust().dir(), &trust);
    copy_dir(own, &key);
    (trust, key)
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found
}

#[test]
fn pki_init_writes_one_directory_per_party_and_trust_holds_no_private_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki_in(dir.path());
    let layout = PkiLayout::new(dir.path());
    let trust = layout.trust();
    assert!(files(trust.dir(), ".key.pem").is_empty());
    // root, settlement, a CA and a signer per institution, three keys per wallet.
    assert_eq!(files(dir.path(), ".key.pem").len(), 1 + 1 + 2 * 2 + 3 * 4);
    for (party, keys) in [
        (layout.root_dir(), 1),
        (layout.settlement_dir(), 1),
        (layout.institution_ca_dir("oi01"), 1),
        (layout.institution_signer_dir("oi02"), 1),
        (layout.wallet_dir("w-oi01-000001"), 3),
    ] {
        assert_eq!(files(&party, ".key.pem").len(), keys, "{}", party.display());
    }
    // trust/ holds the same certificates as the parties' directories.
    assert_eq!(
        fs::read(trust.root()).expect("root"),
        fs::read(layout.root().0).expect("root")
    );
    assert_eq!(
        fs::read(trust.settlement_signer()).expect("settlement"),
        fs::read(layout.settlement_signer().0).expect("settlement")
    );
    for id in ["oi01", "oi02"] {
        assert_eq!(
            fs::read(trust.institution_ca(id)).expect("ca"),
            fs::read(layout.institution_ca(id).0).expect("ca")
        );
    }
    assert_eq!(files(trust.dir(), ".crt.pem").len(), 4);
}

#[test]
fn an_institution_worker_starts_with_trust_and_its_own_signer_directory_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki_in(dir.path());
    let layout = PkiLayout::new(dir.path());
    let host = tempfile::tempdir().expect("worker machine");
    let (trust, key) = machine(
        dir.path(),
        &layout.institution_signer_dir("oi01"),
        host.path(),
    );
    assert_eq!(
        files(host.path(), ".key.pem").len(),
        1,
        "only oi01's signer key"
    );

    let keys = PkiDirectory::load_worker(&trust, &key, KeyHolder::Institution("oi01"))
        .expect("oi01's worker needs only its own key");
    assert_eq!(
        keys.institutions,
        vec!["oi01".to_owned(), "oi02".to_owned()]
    );
    assert_eq!(keys.signer.certificate().institution(), "oi01");
    // The trust anchors were read from certificates: every institution CA is trusted.
    for id in ["oi01", "oi02"] {
        let ca = read_certificate_pem(&layout.institution_ca(id).0).expect("ca certificate");
        assert_eq!(
            keys.trust_store.institution_ca(id).map(|c| c.serial()),
            Some(ca.serial())
        );
    }

    // The directory holds oi01's signer: it is no other party's key.
    for other in [KeyHolder::Institution("oi02"), KeyHolder::Settlement] {
        let err = PkiDirectory::load_worker(&trust, &key, other).expect_err("not its key");
        assert!(err.to_string().contains("signer.crt.pem"), "{err}");
    }
    // The whole PKI directory is accepted as --pki too (demo, tests).
    PkiDirectory::load_worker(
        dir.path(),
        &layout.institution_signer_dir("oi02"),
        KeyHolder::Institution("oi02"),
    )
    .expect("trust/ found inside the PKI directory");
}

#[test]
fn the_settlement_worker_starts_with_trust_and_the_settlement_directory_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki_in(dir.path());
    let host = tempfile::tempdir().expect("worker machine");
    let (trust, key) = machine(
        dir.path(),
        &PkiLayout::new(dir.path()).settlement_dir(),
        host.path(),
    );
    assert_eq!(files(host.path(), ".key.pem").len(), 1);
    let keys = PkiDirectory::load_worker(&trust, &key, KeyHolder::Settlement)
        .expect("settlement needs only its own key");
    assert_eq!(keys.signer.certificate().institution(), "central-bank");
}

#[test]
fn a_signer_of_another_pki_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki_in(dir.path());
    let other = tempfile::tempdir().expect("another pki");
    pki_in(other.path());
    let err = PkiDirectory::load_worker(
        PkiLayout::new(dir.path()).trust().dir(),
        &PkiLayout::new(other.path()).settlement_dir(),
        KeyHolder::Settlement,
    )
    .expect_err("another root's settlement signer");
    assert!(err.to_string().contains("not trusted"), "{err}");
}

#[test]
fn a_private_key_others_may_read_is_refused_with_chmod_600() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki_in(dir.path());
    let layout = PkiLayout::new(dir.path());
    let own = layout.institution_signer_dir("oi01");
    let key = layout.institution_signer("oi01").1;
    let load = || PkiDirectory::load_worker(dir.path(), &own, KeyHolder::Institution("oi01"));
    for mode in [0o640, 0o604, 0o644] {
        fs::set_permissions(&key, fs::Permissions::from_mode(mode)).expect("chmod");
        let err = load().expect_err("group- or world-readable key");
        let message = err.to_string();
        assert!(message.contains("chmod 600"), "{message}");
        assert!(message.contains("signer.key.pem"), "{message}");
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    load().expect("0600 is fine");
    // The full load (demo, load test) applies the same rule.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(PkiDirectory::load(dir.path()).is_err());
}
