//! Interoperability: our certificates as seen by independent implementations.

use std::path::Path;
use std::process::Command;

use p256::ecdsa::signature::Verifier as _;

use super::fixtures::*;
use crate::pki::{CertifiedKey, PrivateKey};

#[test]
fn p256_certificate_signatures_verify_with_the_p256_crate() {
    let pki = pki(P256, P256);
    let leaf = terminal(&pki.ca, P256);
    for (child, issuer) in [
        (leaf.certificate(), pki.ca.certificate()),
        (pki.ca.certificate(), pki.root.certificate()),
        (pki.root.certificate(), pki.root.certificate()),
    ] {
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(issuer.public_key().sec1_point())
            .expect("issuer key");
        let signature = p256::ecdsa::Signature::from_der(child.signature()).expect("DER");
        assert!(
            key.verify(child.tbs(), &signature).is_ok(),
            "{}",
            child.id()
        );
    }
}

#[test]
fn p256_message_signature_verifies_with_the_p256_crate() {
    let key = PrivateKey::generate(P256).expect("key");
    let signature = key.sign(b"clearing message").expect("sign");
    let verifying =
        p256::ecdsa::VerifyingKey::from_sec1_bytes(key.public_key().sec1_point()).expect("key");
    let signature = p256::ecdsa::Signature::from_slice(&signature).expect("r||s");
    assert!(verifying.verify(b"clearing message", &signature).is_ok());
    assert!(verifying.verify(b"another message", &signature).is_err());
}

fn openssl_available() -> bool {
    let found = Command::new("openssl").arg("version").output().is_ok();
    if !found {
        eprintln!("openssl not on PATH: skipping the OpenSSL cross-check");
    }
    found
}

fn write_pem(dir: &Path, name: &str, keys: &CertifiedKey) -> String {
    let path = dir.join(name);
    std::fs::write(&path, keys.certificate().to_pem()).expect("write");
    path.to_string_lossy().into_owned()
}

fn openssl(args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn openssl_verifies_a_p256_chain_strictly() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(P256, P256);
    let leaf = terminal(&pki.ca, P256);
    let root = write_pem(dir.path(), "root.pem", &pki.root);
    let ca = write_pem(dir.path(), "ca.pem", &pki.ca);
    let leaf = write_pem(dir.path(), "leaf.pem", &leaf);
    let at = (NOW_MS / 1000).to_string();
    let (ok, text) = openssl(&[
        "verify",
        "-x509_strict",
        "-attime",
        &at,
        "-CAfile",
        &root,
        "-untrusted",
        &ca,
        &leaf,
    ]);
    assert!(ok, "{text}");
    assert!(text.contains(": OK"), "{text}");
}

#[test]
fn openssl_reads_the_profile_of_a_p256_certificate() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(P256, P256);
    let leaf = write_pem(dir.path(), "leaf.pem", &terminal(&pki.ca, P256));
    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", &leaf]);
    assert!(ok, "{text}");
    for expected in [
        "Version: 3 (0x2)",
        "Signature Algorithm: ecdsa-with-SHA256",
        "Issuer: O = oi01, OU = institution-ca, CN = oi01",
        "Subject: O = oi01, OU = terminal, CN = w-oi01-000001",
        "ASN1 OID: prime256v1",
        "X509v3 Basic Constraints: critical",
        "X509v3 Key Usage: critical",
        "Digital Signature",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn openssl_reads_our_pkcs8_keys_of_both_algorithms() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (algorithm, curve) in [(P256, "prime256v1"), (SM2, "SM2")] {
        let key = PrivateKey::generate(algorithm).expect("key");
        let path = dir.path().join(format!("{algorithm}.key.pem"));
        std::fs::write(&path, key.to_pkcs8_pem().expect("pem").as_bytes()).expect("write");
        let (ok, text) = openssl(&["pkey", "-noout", "-text", "-in", &path.to_string_lossy()]);
        assert!(ok, "{algorithm}: {text}");
        assert!(text.contains(curve), "{algorithm}: {text}");
    }
}

#[test]
fn keys_written_by_openssl_load_for_both_algorithms() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (algorithm, args) in [
        (
            P256,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
        ),
        (SM2, &["-algorithm", "SM2"][..]),
    ] {
        let path = dir.path().join(format!("openssl-{algorithm}.pem"));
        let path_text = path.to_string_lossy().into_owned();
        let mut command = vec!["genpkey"];
        command.extend_from_slice(args);
        command.extend_from_slice(&["-out", &path_text]);
        let (ok, text) = openssl(&command);
        assert!(ok, "{algorithm}: {text}");
        let pem = std::fs::read_to_string(&path).expect("read");
        let key = PrivateKey::from_pkcs8_pem(&pem).expect("our loader reads it");
        assert_eq!(key.algorithm(), algorithm);
    }
}

/// OpenSSL 3 needs the SM2 distinguishing ID spelled out and checks one SM2 link at a time
/// (two-level SM2 chains fail in its verifier: openssl/openssl#23471), so each link is checked
/// on its own. Without the ID it rejects the signature, which shows the ID is in our Z.
#[test]
fn openssl_verifies_each_sm2_link_with_the_default_distinguishing_id() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(SM2, SM2);
    let root = write_pem(dir.path(), "root.pem", &pki.root);
    let ca = write_pem(dir.path(), "ca.pem", &pki.ca);
    let leaf = write_pem(dir.path(), "leaf.pem", &terminal(&pki.ca, SM2));
    let at = (NOW_MS / 1000).to_string();
    let distid = format!("distid:{}", crate::pki::SM2_DISTINGUISHING_ID);
    for (anchor, child) in [(&root, &ca), (&ca, &leaf)] {
        let (ok, text) = openssl(&[
            "verify",
            "-attime",
            &at,
            "-vfyopt",
            &distid,
            "-partial_chain",
            "-CAfile",
            anchor,
            child,
        ]);
        assert!(ok && text.contains(": OK"), "{child}: {text}");
    }
    let (ok, _) = openssl(&[
        "verify",
        "-attime",
        &at,
        "-partial_chain",
        "-CAfile",
        &ca,
        &leaf,
    ]);
    assert!(!ok, "verifies without the distinguishing ID");
}
