//! Each process holds only the keys its role needs: a worker reads the trust anchors as
//! certificates and its own signing key, nothing else; a private key file others may read is
//! refused.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::pki::{
    AlgorithmChoice, DemoPkiOptions, KeyHolder, PkiDirectory, PkiLayout, init_pki_directory,
};

fn pki_in(dir: &Path) {
    init_pki_directory(
        dir,
        &DemoPkiOptions::new(2, 4, AlgorithmChoice::Mixed, system_now_ms()),
    )
    .expect("pki");
}

/// Deletes every private key of the directory but `keep`, and every wallet's files.
fn keep_only(dir: &Path, keep: &Path) {
    fn walk(path: &Path, keep: &Path) {
        for entry in fs::read_dir(path).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "wallets") {
                    fs::remove_dir_all(&path).expect("remove wallets");
                } else {
                    walk(&path, keep);
                }
            } else if path.to_string_lossy().ends_with(".key.pem") && path != keep {
                fs::remove_file(&path).expect("remove key");
            }
        }
    }
    walk(dir, keep);
}

fn key_files(dir: &Path) -> usize {
    fn count(path: &Path) -> usize {
        fs::read_dir(path)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .map(|p| {
                if p.is_dir() {
                    count(&p)
                } else {
                    usize::from(p.to_string_lossy().ends_with(".key.pem"))
                }
            })
            .sum()
    }
    count(dir)
}

#[test]
fn an_institution_worker_starts_with_every_other_private_key_deleted() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki_in(dir.path());
    let layout = PkiLayout::new(dir.path());
    let own = layout.institution_signer("oi01").1;
    keep_only(dir.path(), &own);
    assert_eq!(key_files(dir.path()), 1, "only oi01's signer key is left");

    let keys = PkiDirectory::load_worker(dir.path(), KeyHolder::Institution("oi01"))
        .expect("oi01's worker needs only its own key");
    assert_eq!(
        keys.institutions,
        vec!["oi01".to_owned(), "oi02".to_owned()]
    );
    assert_eq!(keys.signer.certificate().institution(), "oi01");
    // The trust anchors were read from certificates: every institution CA is trusted.
    for id in ["oi01", "oi02"] {
        let ca = dcpipe_pipeline::pki::read_certificate_pem(&layout.institution_ca(id).0)
            .expect("ca certificate");
        assert!(keys.trust_store.institution_ca(id).is_some(), "{id}");
        assert_eq!(
            keys.trust_store.institution_ca(id).map(|c| c.serial()),
            Some(ca.serial())
        );
    }

    for other in [KeyHolder::Institution("oi02"), KeyHolder::Settlement] {
        let err = PkiDirectory::load_worker(dir.path(), other).expect_err("its key is gone");
        assert!(err.to_string().contains(".key.pem"), "{err}");
    }
}

#[test]
fn the_settlement_worker_starts_with_only_the_settlement_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki_in(dir.path());
    let own = PkiLayout::new(dir.path()).settlement_signer().1;
    keep_only(dir.path(), &own);
    let keys = PkiDirectory::load_worker(dir.path(), KeyHolder::Settlement)
        .expect("settlement needs only its own key");
    assert_eq!(keys.signer.certificate().institution(), "central-bank");
}

#[test]
fn a_private_key_others_may_read_is_refused_with_chmod_600() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki_in(dir.path());
    let key = PkiLayout::new(dir.path()).institution_signer("oi01").1;
    for mode in [0o640, 0o604, 0o644] {
        fs::set_permissions(&key, fs::Permissions::from_mode(mode)).expect("chmod");
        let err = PkiDirectory::load_worker(dir.path(), KeyHolder::Institution("oi01"))
            .expect_err("group- or world-readable key");
        let message = err.to_string();
        assert!(message.contains("chmod 600"), "{message}");
        assert!(message.contains("signer.key.pem"), "{message}");
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    PkiDirectory::load_worker(dir.path(), KeyHolder::Institution("oi01")).expect("0600 is fine");
    // The full load (demo, load test) applies the same rule.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(PkiDirectory::load(dir.path()).is_err());
}
