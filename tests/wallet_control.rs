//! The operator's side of offline wallets, as run from a shell: a wallet opened, opened for
//! offline use with its purse funded from its balance, then locked and unlocked by signed
//! remote commands, each numbered after the last and queued in the institution's ledger, and
//! ordered to rotate its key.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `dcpipe` in `dir` with `args` and no `DCPIPE_*` settings from the environment.
fn dcpipe(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dcpipe"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DCPIPE_") {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_LOG");
    command
        .current_dir(dir)
        .args(args)
        .output()
        .expect("dcpipe runs")
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const WALLET: &str = "w-oi01-000001";

/// `dcpipe pki init` of two institutions and four wallets into `dir/pki`.
fn init_pki(dir: &Path) {
    stdout_of(&dcpipe(
        dir,
        &[
            "pki",
            "init",
            "--out",
            "pki",
            "--institutions",
            "2",
            "--wallets",
            "4",
        ],
    ));
}

#[test]
fn a_wallet_goes_offline_and_is_locked_and_unlocked_by_numbered_commands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    init_pki(dir);
    std::fs::write(
        dir.join("wallets.jsonl"),
        format!("{{\"wallet_id\": \"{WALLET}\", \"tier\": 4, \"opening_balance_fen\": 500000}}\n"),
    )
    .expect("wallet file");
    let ledger = ["--ledger", "sqlite://ledgers"];
    let opened = stdout_of(&dcpipe(
        dir,
        &[
            &[
                "wallets",
                "open",
                "--institution",
                "oi01",
                "--file",
                "wallets.jsonl",
            ][..],
            &ledger,
        ]
        .concat(),
    ));
    assert!(opened.contains("1 wallets opened"), "{opened}");
    let certificate = format!("pki/wallets/{WALLET}/wallet.crt.pem");
    let offline = [
        &[
            "wallets",
            "offline",
            "--institution",
            "oi01",
            "--wallet",
            WALLET,
            "--certificate",
            &certificate,
            "--purse-fen",
            "50000",
            "--funding-id",
            "0190f0e4-0000-7000-8000-000000000001",
        ][..],
        &ledger,
    ]
    .concat();
    let funded = stdout_of(&dcpipe(dir, &offline));
    assert!(
        funded.contains("50000 fen moved into its purse"),
        "{funded}"
    );
    let again = stdout_of(&dcpipe(dir, &offline));
    assert!(again.contains("nothing moved"), "{again}");
    let control = |verb: &str| {
        [
            &[
                "wallet",
                verb,
                "--institution",
                "oi01",
                "--wallet",
                WALLET,
                "--pki",
                "pki",
            ][..],
            &ledger,
        ]
        .concat()
        .iter()
        .map(|s| (*s).to_owned())
        .collect::<Vec<String>>()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stdout_of(&dcpipe(dir, &args))
    };
    let locked = run(control("lock"));
    assert!(locked.contains("LOCK for w-oi01-000001"), "{locked}");
    assert!(locked.contains("(sequence 1)"), "{locked}");
    let unlocked = run(control("unlock"));
    assert!(unlocked.contains("UNLOCK for w-oi01-000001"), "{unlocked}");
    assert!(unlocked.contains("(sequence 2)"), "{unlocked}");
    // An order to rotate the wallet's key: recorded once, no signer key needed.
    let rotate = |wallet: &str| {
        dcpipe(
            dir,
            &[
                &[
                    "wallets",
                    "rotate",
                    "--institution",
                    "oi01",
                    "--wallet",
                    wallet,
                ][..],
                &ledger,
            ]
            .concat(),
        )
    };
    let ordered = stdout_of(&rotate(WALLET));
    assert!(
        ordered.contains("w-oi01-000001 ordered to rotate its key (key version 1 now)"),
        "{ordered}"
    );
    let again = stdout_of(&rotate(WALLET));
    assert!(again.contains("nothing changed"), "{again}");
    let stranger = rotate("w-oi01-000002");
    assert!(!stranger.status.success());
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("keeps no offline record"),
        "{}",
        String::from_utf8_lossy(&stranger.stderr)
    );
    // The wrong key's certificate is refused.
    let wrong = dcpipe(
        dir,
        &[
            &[
                "wallets",
                "offline",
                "--institution",
                "oi01",
                "--wallet",
                WALLET,
                "--certificate",
                &format!("pki/wallets/{WALLET}/terminal.crt.pem"),
                "--purse-fen",
                "1",
            ][..],
            &ledger,
        ]
        .concat(),
    );
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("is not the wallet key"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}

#[test]
fn a_rotated_wallet_key_is_certified_by_its_institution_ca_for_the_wallet() {
    use dcpipe_pipeline::clock::system_now_ms;
    use dcpipe_pipeline::pki::{
        Algorithm, ChainVerifier, PrivateKey, RevocationSet, Role, TrustLayout,
        read_certificate_pem, read_trust_anchors,
    };
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    init_pki(dir);
    // The wallet's new key, handed to its CA as a PUBLIC KEY file (only the public half).
    let new_key = PrivateKey::generate(Algorithm::EcdsaP256Sha256).expect("key");
    std::fs::write(
        dir.join("new-key.pem"),
        new_key.public_key().to_spki_pem().expect("pem"),
    )
    .expect("public key file");
    let certify = |ca: &str, public_key: &str, out: &str| {
        dcpipe(
            dir,
            &[
                "pki",
                "certify-wallet-key",
                "--ca",
                ca,
                "--wallet",
                WALLET,
                "--public-key",
                public_key,
                "--out",
                out,
            ],
        )
    };
    let certified = stdout_of(&certify(
        "pki/institutions/oi01/ca",
        "new-key.pem",
        "new.crt.pem",
    ));
    assert!(
        certified.contains("certified the p256 key of wallet w-oi01-000001 of oi01"),
        "{certified}"
    );
    // A wallet certificate for that very key, chaining to the root through oi01's CA.
    let certificate = read_certificate_pem(&dir.join("new.crt.pem")).expect("certificate");
    let (_, store) = read_trust_anchors(&TrustLayout::new(dir.join("pki/trust"))).expect("trust");
    let verifier = ChainVerifier::new(Arc::new(store), Arc::new(RevocationSet::new()));
    let identity = verifier
        .verify(certificate.der(), system_now_ms(), Role::Wallet)
        .expect("the new certificate verifies");
    assert_eq!(identity.id(), WALLET);
    assert_eq!(identity.institution_id(), "oi01");
    assert_eq!(
        identity.public_key().sec1_point(),
        new_key.public_key().sec1_point()
    );
    let signature = new_key.sign(b"key set").expect("signature");
    assert!(identity.public_key().verify(b"key set", &signature).is_ok());

    let refused = |output: Output, expected: &str| {
        assert!(!output.status.success(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    };
    // An existing certificate is never overwritten.
    refused(
        certify("pki/institutions/oi01/ca", "new-key.pem", "new.crt.pem"),
        "new.crt.pem",
    );
    // The root is not the wallet's institution CA.
    refused(
        certify("pki/root", "new-key.pem", "root.crt.pem"),
        "cannot certify a wallet key",
    );
    // A private key file is not a public key file; nothing is written.
    std::fs::write(
        dir.join("private.pem"),
        new_key.to_pkcs8_pem().expect("pkcs8").as_bytes(),
    )
    .expect("private key file");
    refused(
        certify("pki/institutions/oi01/ca", "private.pem", "other.crt.pem"),
        "PEM label is not PUBLIC KEY",
    );
    assert!(!dir.join("other.crt.pem").exists());
}
