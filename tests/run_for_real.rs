//! README.md's "Running it for real", run as written: `scripts/run-for-real.sh` on a
//! nats-server of its own (two institutions and settlement, every stage its own process with
//! only its own key, wallets opened from files, one payment submitted and its outcome read
//! back, then the run audited with zero discrepancies), and the README quoting the script's
//! commands exactly.

use std::path::Path;
use std::process::Command;

use dcpipe_connectors::testkit::NatsServer;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_runs_a_payment_to_completion_on_a_fresh_nats_server() {
    let server = NatsServer::start().await.expect("nats-server");
    let work = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new("bash");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DCPIPE_") {
            command.env_remove(name);
        }
    }
    let output = command
        .arg(repository().join("scripts/run-for-real.sh"))
        .arg(server.url())
        .arg(work.path().join("run"))
        .env("DCPIPE_BIN", env!("CARGO_BIN_EXE_dcpipe"))
        .output()
        .expect("bash runs the script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the script failed: {stdout}\n{stderr}"
    );
    assert!(stdout.contains(" 0 differ"), "{stdout}");
    assert!(
        stdout.contains("oi01: 2 wallets opened (2500000 fen issued)"),
        "{stdout}"
    );
    assert!(stdout.contains("COMPLETED"), "{stdout}");
    let outcome = stdout
        .lines()
        .find(|l| l.starts_with('{') && l.contains("\"subject\":\"txn.result.oi01\""))
        .unwrap_or_else(|| panic!("no outcome read back: {stdout}"));
    assert!(outcome.contains("\"status\":\"COMPLETED\""), "{outcome}");
    assert!(outcome.contains("\"amount_fen\":12345"), "{outcome}");
    // The audit that ends the script (README.md's "Auditing the record") reconciled the run:
    // the payment judged completed, the ledgers consulted, no discrepancy (the payee's credit
    // may still be in flight when the audit starts: then it is partial, not checked).
    assert!(
        stdout.contains("discrepancies               0  reconciled"),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(work.path().join("run/audit.json")).expect("the audit's report"),
    )
    .expect("the report is JSON");
    assert_eq!(report["discrepancies"], serde_json::json!([]), "{report}");
    assert_eq!(report["ledger_reconciled"], true, "{report}");
    assert_eq!(report["counts"]["payments_completed"], 1, "{report}");

    // The trust anchors hold no private key; each party's directory holds its own only.
    let pki = work.path().join("run/pki");
    assert_eq!(private_keys(&pki.join("trust")), Vec::<String>::new());
    for (party, own) in [
        ("institutions/oi01/signer", "signer.key.pem"),
        ("institutions/oi02/signer", "signer.key.pem"),
        ("settlement", "signer.key.pem"),
    ] {
        assert_eq!(
            private_keys(&pki.join(party)),
            vec![own.to_owned()],
            "{party}"
        );
    }
    // Each worker was given the trust anchors and its own signer's directory, nothing else.
    let script =
        std::fs::read_to_string(repository().join("scripts/run-for-real.sh")).expect("script");
    let workers: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("dcpipe worker "))
        .collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    for line in workers {
        assert!(line.contains(" --pki pki/trust "), "{line}");
        assert!(
            line.contains(r#" --key "pki/institutions/$oi/signer" "#)
                || line.contains(" --key pki/settlement "),
            "{line}"
        );
    }
}

fn private_keys(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, found);
            } else if path.to_string_lossy().ends_with(".key.pem") {
                let relative = path.strip_prefix(root).expect("under root");
                found.push(relative.display().to_string());
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, dir, &mut found);
    found
}

#[test]
fn the_readme_quotes_the_script_exactly() {
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README");
    let script =
        std::fs::read_to_string(repository().join("scripts/run-for-real.sh")).expect("script");
    let section = |title: &str| {
        readme
            .split(&format!("## {title}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("the section {title}"))
            .split("\n## ")
            .next()
            .expect("its text")
            .to_owned()
    };
    let sections = [
        section("Running it for real"),
        section("Auditing the record"),
    ];
    let quoted: Vec<&str> = sections
        .iter()
        .flat_map(|s| s.split("```").skip(1).step_by(2))
        .flat_map(|block| block.lines().skip(1))
        .map(str::trim)
        .filter(|l| l.starts_with("dcpipe "))
        .collect();
    assert!(quoted.len() >= 9, "{quoted:?}");
    assert!(
        quoted.iter().any(|l| l.starts_with("dcpipe audit ")),
        "{quoted:?}"
    );
    let script_lines: Vec<&str> = script.lines().map(str::trim).collect();
    for line in quoted {
        assert!(
            script_lines.contains(&line),
            "README.md quotes {line:?}, which scripts/run-for-real.sh does not run"
        );
    }
}
