//! The operator's provisioning commands, run as an operator runs them: `dcpipe bus init` on a
//! real nats-server, `dcpipe wallets open` on SQLite ledgers, and a worker refusing to start on
//! a bus nobody provisioned.

use std::path::Path;
use std::process::{Command, Output};

use dcpipe_connectors::ledger::{LedgerOptions, LedgerUrl, open_ledger};
use dcpipe_connectors::testkit::NatsServer;
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::pki::{AlgorithmChoice, DemoPkiOptions, PkiLayout, init_pki_directory};

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

fn report_lines<'a>(stdout: &'a str, state: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|word| word.trim_end_matches(':') == state)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_init_creates_once_then_reports_what_exists_and_drift() {
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    let init = |extra: &[&str]| {
        let mut args = vec!["bus", "init", "--bus", &url, "--institutions", "oi01,oi02"];
        args.extend_from_slice(extra);
        dcpipe(&args)
    };

    let dry = init(&["--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let stdout = text(&dry.stdout);
    assert!(report_lines(&stdout, "would-create").len() > 10, "{stdout}");
    assert!(stdout.contains("txn.submit.oi02"), "{stdout}");
    assert!(report_lines(&stdout, "created").is_empty(), "{stdout}");

    let first = init(&[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    let created = report_lines(&stdout, "created");
    // One JetStream stream per family (txn, clearing, …): its first subject creates it, the
    // others find it.
    let streams: std::collections::BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|h| h.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(
        streams.contains("TXN") && streams.contains("DEADLETTER"),
        "{stdout}"
    );
    assert_eq!(created.len(), streams.len(), "{stdout}");
    assert!(report_lines(&stdout, "would-create").is_empty(), "{stdout}");

    let second = init(&[]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let stdout = text(&second.stdout);
    assert!(report_lines(&stdout, "created").is_empty(), "{stdout}");
    assert!(report_lines(&stdout, "differs").is_empty(), "{stdout}");
    assert!(stdout.contains(" 0 created,"), "{stdout}");

    let drifted = init(&["--nats-stream-max-age", "3d"]);
    assert_eq!(drifted.status.code(), Some(1), "{}", text(&drifted.stdout));
    let stdout = text(&drifted.stdout);
    let differs = report_lines(&stdout, "differs");
    assert!(!differs.is_empty(), "{stdout}");
    assert!(
        differs
            .iter()
            .all(|l| l.ends_with("differs: max age 30d, configured 3d")),
        "{stdout}"
    );
    assert!(
        text(&drifted.stderr).contains("exist otherwise than configured"),
        "{}",
        text(&drifted.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_with_only_its_own_key_fails_fast_on_an_unprovisioned_bus_naming_bus_init() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = dir.path().join("pki");
    init_pki_directory(
        &pki,
        &DemoPkiOptions::new(2, 4, AlgorithmChoice::P256, system_now_ms()),
    )
    .expect("pki");
    // The worker's machine holds no private key but its institution's signer.
    let own = PkiLayout::new(&pki).institution_signer("oi01").1;
    remove_keys_but(&pki, &own);
    let ledgers = format!("sqlite://{}", dir.path().join("ledgers").display());
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    let worker = dcpipe(&[
        "worker",
        "payer",
        "--institution",
        "oi01",
        "--bus",
        &url,
        "--ledger",
        &ledgers,
        "--pki",
        &pki.display().to_string(),
    ]);
    assert!(!worker.status.success());
    let stderr = text(&worker.stderr);
    assert!(stderr.contains("dcpipe bus init"), "{stderr}");
    assert!(stderr.contains("txn.submit.oi01"), "{stderr}");
    assert!(
        stderr.contains("holds no wallets") && stderr.contains("dcpipe wallets open"),
        "a worker on an empty ledger says so: {stderr}"
    );
}

/// Deletes every private key under `dir` but `keep`.
fn remove_keys_but(dir: &Path, keep: &Path) {
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            remove_keys_but(&path, keep);
        } else if path.to_string_lossy().ends_with(".key.pem") && path != keep {
            std::fs::remove_file(&path).expect("remove key");
        }
    }
}

fn write(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallets_open_issues_each_wallet_once_and_refuses_other_terms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger_dir = dir.path().join("ledgers");
    let ledgers = format!("sqlite://{}", ledger_dir.display());
    let file = dir.path().join("wallets.jsonl");
    write(
        &file,
        &[
            r#"{"wallet_id":"w1","tier":4,"opening_balance_fen":500000}"#,
            r#"{"wallet_id":"w2","tier":2,"opening_balance_fen":2000000,"password_free_limit_fen":50000}"#,
            r#"{"wallet_id":"w1","tier":4,"opening_balance_fen":500000}"#,
        ],
    );
    let open = |file: &Path| {
        dcpipe(&[
            "wallets",
            "open",
            "--institution",
            "oi01",
            "--ledger",
            &ledgers,
            "--file",
            &file.display().to_string(),
        ])
    };

    let first = open(&file);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains(
            "oi01: 2 wallets opened (2500000 fen issued), 1 already open on the same terms, 0 refused"
        ),
        "{}",
        text(&first.stdout)
    );
    let again = open(&file);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("0 wallets opened (0 fen issued), 3 already open"),
        "{}",
        text(&again.stdout)
    );

    let conflicting = dir.path().join("conflicting.jsonl");
    write(
        &conflicting,
        &[
            r#"{"wallet_id":"w1","tier":4,"opening_balance_fen":900000}"#,
            r#"{"wallet_id":"w3","tier":4,"opening_balance_fen":1}"#,
        ],
    );
    let refused = open(&conflicting);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("line 1: wallet w1 was opened on other terms"),
        "{stderr}"
    );

    let bad = dir.path().join("bad.jsonl");
    write(
        &bad,
        &[
            r#"{"wallet_id":"w4","tier":4,"opening_balance_fen":1}"#,
            r#"{"wallet_id":"w5","tier":9,"opening_balance_fen":1}"#,
        ],
    );
    let refused = open(&bad);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("line 2: tier 9"),
        "{}",
        text(&refused.stderr)
    );

    let ledger = open_ledger(
        &LedgerUrl::SqliteDir(ledger_dir),
        "oi01",
        &LedgerOptions::default(),
    )
    .await
    .expect("ledger");
    assert_eq!(ledger.wallet_count().await.expect("count"), 3, "w1, w2, w3");
    assert_eq!(
        ledger.issued_total_fen().await.expect("issued"),
        500_000 + 2_000_000 + 1
    );
    assert_eq!(
        ledger.total_balance_fen().await.expect("balances"),
        500_000 + 2_000_000 + 1
    );
    assert_eq!(
        ledger
            .wallet("w2")
            .await
            .expect("read")
            .expect("w2")
            .account
            .limits
            .password_free_limit_fen,
        50_000
    );
    assert!(ledger.wallet("w4").await.expect("read").is_none());
}

/// Waits until `path` contains `needle`, up to `deadline`.
async fn wait_for_log(path: &Path, needle: &str, deadline: std::time::Instant) -> bool {
    while std::time::Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|log| log.contains(needle)) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_revoke_reaches_a_running_worker_and_the_revoked_payer_is_refused() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use dcpipe_connectors::bus::{Bus, NatsBus, NatsOptions, Outgoing};
    use dcpipe_pipeline::clock::SystemClock;
    use dcpipe_pipeline::invariants::{OutcomeCollector, Submission};
    use dcpipe_pipeline::network::{Network, NetworkConfig};
    use dcpipe_pipeline::subjects;
    use dcpipe_pipeline::terminal::{PaymentRequest, PinEntry, Touch};
    use dcpipe_schemas::{Channel, OutcomeStatus, PaymentId};

    const DEADLINE: Duration = Duration::from_secs(60);
    let dir = tempfile::tempdir().expect("temp dir");
    let pki_dir = dir.path().join("pki");
    let ledger_dir = dir.path().join("ledgers");
    let pki = Arc::new(
        init_pki_directory(
            &pki_dir,
            &DemoPkiOptions::new(2, 4, AlgorithmChoice::P256, system_now_ms()),
        )
        .expect("pki"),
    );
    let mut config = NetworkConfig::in_memory(2, 4);
    config.ledger = LedgerUrl::SqliteDir(ledger_dir.clone());
    let network = Network::from_pki(Arc::clone(&pki), &config, Arc::new(SystemClock))
        .await
        .expect("network");
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    let bus: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&[server.address()], &NatsOptions::default())
            .await
            .expect("connect"),
    );
    network
        .ensure_subjects(bus.as_ref(), 1)
        .await
        .expect("subjects");

    let payer = network.wallets[0].party.clone();
    let payee = network
        .wallets
        .iter()
        .find(|w| w.party.institution_id != payer.institution_id)
        .expect("payee")
        .party
        .clone();
    let log = dir.path().join("payer.log");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_dcpipe"))
        .args([
            "worker",
            "payer",
            "--institution",
            &payer.institution_id,
            "--bus",
            &url,
            "--ledger",
            &format!("sqlite://{}", ledger_dir.display()),
            "--pki",
            &pki_dir.display().to_string(),
        ])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("worker");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let (collector, _handles) = OutcomeCollector::spawn(
        Arc::clone(&bus),
        network.institutions.keys().cloned(),
        "test-observer",
        shutdown.clone(),
    )
    .await
    .expect("collector");
    let pay = |amount_fen: i64| {
        let now_ms = system_now_ms();
        let touch = Touch::connect(
            network.terminal(&payer.wallet_id).expect("payer terminal"),
            network.terminal(&payee.wallet_id).expect("payee terminal"),
            &network.verifier,
            now_ms,
        )
        .expect("touch");
        touch
            .negotiate(&PaymentRequest {
                payment_id: PaymentId::time_ordered(),
                amount_fen,
                channel: Channel::Nfc,
                created_at_ms: now_ms,
                pin: PinEntry::WhenRequired,
            })
            .expect("envelope")
    };
    let answer = |envelope: dcpipe_schemas::TransactionEnvelope| {
        let bus = Arc::clone(&bus);
        let collector = &collector;
        async move {
            let submission = Submission::of_envelope(&envelope);
            bus.publish(Outgoing::new(
                subjects::txn_submit(&envelope.payer.institution_id),
                dcpipe_schemas::encode(&envelope).expect("encode"),
            ))
            .await
            .expect("publish");
            assert!(
                collector
                    .wait_until(DEADLINE, |book| book.answers_all(&[submission]))
                    .await,
                "no answer"
            );
            collector.with_book(|book| book.answer(&submission).cloned().expect("answer"))
        }
    };

    // Over the single-payment limit: the payer stage answers by itself, so it is running.
    let before = answer(pay(10_000_000)).await;
    assert_eq!(before.status, OutcomeStatus::Rejected);
    assert_ne!(before.reason_code.as_deref(), Some("cert.revoked"));

    let ca = PkiLayout::new(&pki_dir).institution_ca_dir(&payer.institution_id);
    let terminal_cert = PkiLayout::new(&pki_dir)
        .wallet_key(&payer.wallet_id, dcpipe_pipeline::pki::Role::Terminal)
        .0;
    let revoke = dcpipe(&[
        "pki",
        "revoke",
        "--ca",
        &ca.display().to_string(),
        "--cert",
        &terminal_cert.display().to_string(),
        "--reason",
        "keyCompromise",
        "--bus",
        &url,
    ]);
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    assert!(
        text(&revoke.stdout).contains("sequence 1 published on pki.revocation"),
        "{}",
        text(&revoke.stdout)
    );
    assert!(
        wait_for_log(&log, "revocations applied", Instant::now() + DEADLINE).await,
        "the worker did not apply the revocation: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let after = answer(pay(1_000)).await;
    assert_eq!(after.status, OutcomeStatus::Rejected);
    assert_eq!(after.reason_code.as_deref(), Some("cert.revoked"));

    // The same CA's next update takes the next sequence; a serial in hex works as a certificate.
    let serial = hex::encode(
        dcpipe_pipeline::pki::read_certificate_pem(&terminal_cert)
            .expect("certificate")
            .serial(),
    );
    let again = dcpipe(&[
        "pki",
        "revoke",
        "--ca",
        &ca.display().to_string(),
        "--serial",
        &serial,
        "--reason",
        "superseded",
        "--bus",
        &url,
    ]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("sequence 2 "),
        "{}",
        text(&again.stdout)
    );
    shutdown.cancel();
    let _ = worker.kill();
    let _ = worker.wait();
}
