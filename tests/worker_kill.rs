//! A worker process killed with SIGKILL in the middle of a stream and started again: no payment
//! is lost and none is paid twice. Every stage runs as its own `dcpipe worker` process on a
//! real nats-server, with SQLite ledgers shared through files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcpipe_connectors::bus::{Bus, NatsBus, NatsOptions};
use dcpipe_connectors::ledger::{LedgerUrl, SettlementConfig};
use dcpipe_connectors::testkit::NatsServer;
use dcpipe_loadtest::payments::{PaymentGenerator, PaymentMix};
use dcpipe_pipeline::clock::{SystemClock, system_now_ms};
use dcpipe_pipeline::invariants::{OutcomeCollector, Submission};
use dcpipe_pipeline::network::{Network, NetworkConfig};
use dcpipe_pipeline::pki::{AlgorithmChoice, DemoPkiOptions, init_pki_directory};
use tokio_util::sync::CancellationToken;

/// How long the test waits for the pipeline to answer and settle.
const DEADLINE: Duration = Duration::from_secs(90);

/// A worker process, killed when dropped.
struct Worker {
    args: Vec<String>,
    log: PathBuf,
    child: Child,
}

impl Worker {
    fn start(args: Vec<String>, log: PathBuf) -> Self {
        let child = spawn(&args, &log);
        Worker { args, log, child }
    }

    /// SIGKILL, then start the same worker again.
    fn kill_and_restart(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
        self.child = spawn(&self.args, &self.log);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[String], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("worker log");
    Command::new(env!("CARGO_BIN_EXE_dcpipe"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("dcpipe worker starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_loses_no_payment_and_pays_none_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki_dir = dir.path().join("pki");
    let ledger_dir = dir.path().join("ledgers");
    let options = DemoPkiOptions::new(2, 40, AlgorithmChoice::P256, system_now_ms());
    let pki = Arc::new(init_pki_directory(&pki_dir, &options).expect("pki init"));

    let server = NatsServer::start().await.expect("nats-server");
    let bus: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&[server.address()], &NatsOptions::default())
            .await
            .expect("connect"),
    );
    let mut config = NetworkConfig::in_memory(2, 40);
    config.ledger = LedgerUrl::SqliteDir(ledger_dir.clone());
    config.settlement = SettlementConfig { window_ms: 1_000 };
    let network = Network::from_pki(Arc::clone(&pki), &config, Arc::new(SystemClock))
        .await
        .expect("provisioned");
    network
        .ensure_subjects(bus.as_ref(), 1)
        .await
        .expect("subjects");

    let common = |stage: &str, institution: Option<&str>| {
        let mut args = vec![
            "worker".to_owned(),
            stage.to_owned(),
            "--bus".to_owned(),
            server.url(),
            "--ledger".to_owned(),
            format!("sqlite://{}", ledger_dir.display()),
            "--pki".to_owned(),
            pki_dir.display().to_string(),
            "--ack-wait".to_owned(),
            "1500ms".to_owned(),
            "--batch-max".to_owned(),
            "32".to_owned(),
            "--settlement-window".to_owned(),
            "1s".to_owned(),
        ];
        if let Some(institution) = institution {
            args.push("--institution".to_owned());
            args.push(institution.to_owned());
        }
        args
    };
    let mut workers = Vec::new();
    for institution in network.institutions.keys() {
        for stage in ["payer", "payee", "commit", "finalize"] {
            workers.push(Worker::start(
                common(stage, Some(institution)),
                dir.path().join(format!("{stage}-{institution}.log")),
            ));
        }
    }
    workers.push(Worker::start(
        common("settlement", None),
        dir.path().join("settlement.log"),
    ));

    let shutdown = CancellationToken::new();
    let (collector, _handles) = OutcomeCollector::spawn(
        Arc::clone(&bus),
        network.institutions.keys().cloned(),
        "test-observer",
        shutdown.clone(),
    )
    .await
    .expect("collector");

    // 400 payments at about 200/s; the payer and the commit worker of the first institution
    // are killed and restarted while they flow.
    let mut generator = PaymentGenerator::new(&network, PaymentMix::default(), 7);
    let mut submitted: Vec<Submission> = Vec::new();
    for round in 0..40 {
        let mut batch = Vec::new();
        for _ in 0..10 {
            let generated = generator.next(system_now_ms()).expect("payment");
            submitted.push(generated.submission);
            batch.push(generated.outgoing());
        }
        bus.publish_many(batch).await.expect("published");
        if round == 10 {
            workers[0].kill_and_restart(); // payer of the first institution
        }
        if round == 20 {
            workers[2].kill_and_restart(); // commit of the first institution
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let answered = collector
        .wait_until(DEADLINE, |book| book.answers_all(&submitted))
        .await;
    let logs = || {
        std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: String = text.lines().rev().take(5).collect::<Vec<_>>().join("\n");
                format!("{}:\n{tail}", e.path().display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        answered,
        "not every payment was answered; worker logs:\n{}",
        logs()
    );
    collector.with_book(|book| {
        let violations = book.violations(&submitted);
        assert!(violations.is_empty(), "{violations:?}");
        let completed = submitted
            .iter()
            .filter(|s| {
                book.answer(s)
                    .is_some_and(|a| a.status == dcpipe_schemas::OutcomeStatus::Completed)
            })
            .count();
        assert!(
            completed > submitted.len() * 9 / 10,
            "{completed} of {} completed",
            submitted.len()
        );
    });
    // The killed workers really died and came back.
    for killed in ["payer", "commit"] {
        let institution = network.institutions.keys().next().expect("institution");
        let log = std::fs::read_to_string(dir.path().join(format!("{killed}-{institution}.log")))
            .expect("log");
        assert_eq!(log.matches("worker starting").count(), 2, "{killed}: {log}");
    }
    let started = Instant::now();
    loop {
        let money = network.money().await.expect("money");
        if money.is_settled_and_conserved() {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "money not settled and conserved: {money:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
}
