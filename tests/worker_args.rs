//! `dcpipe worker` knows every registered stage (the registrations are linked into the binary)
//! and refuses a configuration outside the named limits before it opens anything.

use std::process::{Command, Output};

use dcpipe_connectors::ledger::BATCH_ITEMS_MAX;
use dcpipe_pipeline::registry;

/// Runs `dcpipe` with `args` and no `DCPIPE_*` settings from the environment.
fn dcpipe(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dcpipe"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DCPIPE_") {
            command.env_remove(name);
        }
    }
    command.args(args).output().expect("dcpipe runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_every_registered_stage() {
    let names = registry::names();
    for expected in ["payer", "payee", "commit", "finalize", "settlement"] {
        assert!(
            names.contains(&expected),
            "{expected} not registered: {names:?}"
        );
    }
    let help = dcpipe(&["worker", "--help"]);
    assert!(help.status.success(), "{}", text(&help.stderr));
    let help = text(&help.stdout);
    for descriptor in registry::stages() {
        assert!(
            help.contains(descriptor.name),
            "{} missing: {help}",
            descriptor.name
        );
        assert!(help.contains(descriptor.summary), "{help}");
    }
}

#[test]
fn unknown_stage_is_refused_with_the_list() {
    let refused = dcpipe(&["worker", "audit-everything", "--pki", "pki"]);
    assert_eq!(refused.status.code(), Some(2), "a usage error");
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("audit-everything"), "{stderr}");
    for name in registry::names() {
        assert!(stderr.contains(name), "{name} not listed: {stderr}");
    }
}

#[test]
fn batch_above_the_ledger_limit_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledgers = dir.path().join("ledgers");
    let batch = (BATCH_ITEMS_MAX + 904).to_string();
    let refused = dcpipe(&[
        "worker",
        "payer",
        "--institution",
        "oi01",
        "--bus",
        "nats://127.0.0.1:1",
        "--ledger",
        &format!("sqlite://{}", ledgers.display()),
        "--pki",
        &dir.path().join("pki").display().to_string(),
        "--batch-max",
        &batch,
    ]);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(stderr.contains(&format!("--batch-max {batch}")), "{stderr}");
    assert!(stderr.contains("BATCH_ITEMS_MAX"), "{stderr}");
    assert!(stderr.contains(&BATCH_ITEMS_MAX.to_string()), "{stderr}");
    assert!(!ledgers.exists(), "refused before any ledger is opened");
}

#[test]
fn zero_concurrency_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = dcpipe(&[
        "worker",
        "settlement",
        "--bus",
        "nats://127.0.0.1:1",
        "--ledger",
        &format!("sqlite://{}", dir.path().join("ledgers").display()),
        "--pki",
        &dir.path().join("pki").display().to_string(),
        "--concurrency",
        "0",
    ]);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("--concurrency 0"), "{stderr}");
}
