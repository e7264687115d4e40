//! What a user meets first: `--version` with the commit, arguments refused before anything is
//! provisioned, errors that keep their cause and are printed once, without colour codes when
//! the output is not a terminal.

use std::process::{Command, Output};

/// Runs `dcpipe` with `args` and no `DCPIPE_*` settings from the environment.
fn dcpipe(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dcpipe"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DCPIPE_") {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_LOG");
    command.args(args).output().expect("dcpipe runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_names_the_commit() {
    let output = dcpipe(&["--version"]);
    assert!(output.status.success());
    let stdout = text(&output.stdout);
    let expected = format!("dcpipe {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(stdout.starts_with(&expected), "{stdout}");
    let commit = stdout
        .trim_end()
        .strip_prefix(&expected)
        .and_then(|rest| rest.strip_suffix(')'))
        .expect("commit");
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit}"
    );
}

#[test]
fn demo_refuses_zero_wallets_before_provisioning() {
    let output = dcpipe(&["demo", "--wallets", "0"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("--wallets 0 refused"), "{stderr}");
    // Nothing was started: the demo's first line names the bus and ledgers it provisions.
    assert!(!text(&output.stdout).contains("dcpipe demo: bus"));
}

#[test]
fn demo_refuses_one_institution_before_provisioning() {
    let output = dcpipe(&["demo", "--institutions", "1"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("--institutions 1 refused"), "{stderr}");
    assert!(!text(&output.stdout).contains("dcpipe demo: bus"));
}

#[test]
fn a_fatal_error_is_printed_once_with_its_cause_and_no_colour() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = dir.path().join("no-pki-here");
    let output = dcpipe(&[
        "worker",
        "payer",
        "--institution",
        "oi01",
        "--bus",
        "nats://127.0.0.1:1",
        "--ledger",
        &format!("sqlite://{}", dir.path().join("ledgers").display()),
        "--pki",
        &pki.display().to_string(),
        "--key",
        &pki.join("signer").display().to_string(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("loading the trust anchors"))
        .collect();
    assert_eq!(lines.len(), 1, "printed once: {stderr}");
    // Which file, and why.
    assert!(lines[0].contains("root.crt.pem"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes: {stderr:?}");
}

#[test]
fn a_worker_given_trust_anchors_only_asks_for_its_signer_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dcpipe(&[
        "worker",
        "settlement",
        "--bus",
        "nats://127.0.0.1:1",
        "--ledger",
        &format!("sqlite://{}", dir.path().join("ledgers").display()),
        "--pki",
        &dir.path().join("trust").display().to_string(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("--key is required") && stderr.contains("(settlement)"),
        "{stderr}"
    );
}

#[test]
fn loadtest_report_directory_is_created_and_checked_before_the_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A directory where a report file is expected: refused before anything runs.
    let output = dcpipe(&[
        "loadtest",
        "--report",
        &dir.path().display().to_string(),
        "--duration",
        "1s",
    ]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("a directory; give a file name"), "{stderr}");
    assert!(!stderr.contains("dcpipe loadtest:"), "it started: {stderr}");

    // A directory that does not exist yet is created (here the run is then refused for its
    // wallets, which are checked after the paths).
    let report = dir.path().join("new").join("dir").join("report.json");
    let output = dcpipe(&[
        "loadtest",
        "--report",
        &report.display().to_string(),
        "--wallets",
        "1",
    ]);
    assert!(!output.status.success());
    assert!(report.parent().expect("dir").is_dir());
    assert!(!report.exists());

    // A file that is in the way of the directory: refused, with the reason.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"").expect("file");
    let output = dcpipe(&[
        "loadtest",
        "--report",
        &blocker.join("report.json").display().to_string(),
    ]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("cannot create its directory"), "{stderr}");
    assert!(!stderr.contains("dcpipe loadtest:"), "it started: {stderr}");
}
