//! The ledgers' PostgreSQL server restarted while payments flow: the stages meet connection
//! failures, treat them as transient and retry their batches; no stage stops, every payment
//! gets exactly one outcome, none completes twice, and money is conserved and settled.

use std::sync::Arc;
use std::time::Duration;

use dcpipe_connectors::bus::{Bus, EmbeddedBus, EmbeddedConfig};
use dcpipe_connectors::ledger::SettlementConfig;
use dcpipe_connectors::testkit::PostgresServer;
use dcpipe_loadtest::payments::{PaymentGenerator, PaymentMix};
use dcpipe_pipeline::clock::{SystemClock, system_now_ms};
use dcpipe_pipeline::invariants::{OutcomeCollector, Submission};
use dcpipe_pipeline::network::{Network, NetworkConfig};
use dcpipe_pipeline::runtime::RunnerConfig;
use dcpipe_schemas::OutcomeStatus;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the pipeline has to answer and settle after the load.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_load_loses_nothing_and_pays_nothing_twice() {
    // The process's metrics, to see the restart's failures counted.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("metrics recorder");
    let server = PostgresServer::start().await.expect("postgres");
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(EmbeddedConfig::default()));
    let mut config = NetworkConfig::in_memory(2, 40);
    config.ledger = server.url().parse().expect("ledger URL");
    config.settlement = SettlementConfig { window_ms: 1_000 };
    config.settlement_grace_ms = 200;
    let network = Network::provision(&config, Arc::new(SystemClock))
        .await
        .expect("provisioned");
    network
        .ensure_subjects(bus.as_ref(), 1)
        .await
        .expect("subjects");
    let shutdown = CancellationToken::new();
    let runner = RunnerConfig {
        fetch_wait: Duration::from_millis(20),
        ack_wait: Duration::from_secs(5),
        retry_delay: Duration::from_millis(100),
        ..RunnerConfig::default()
    };
    let stages = network
        .spawn(&bus, &runner, &shutdown)
        .expect("runner configuration");
    let (collector, _handles) = OutcomeCollector::spawn(
        Arc::clone(&bus),
        network.institutions.keys().cloned(),
        "test-observer",
        shutdown.clone(),
    )
    .await
    .expect("collector");

    // 500 payments at about 100/s; the server is restarted (fast shutdown: open transactions
    // rolled back, connections cut) after the first 150, while they flow.
    let mut generator = PaymentGenerator::new(&network, PaymentMix::default(), 13);
    let mut submitted: Vec<Submission> = Vec::new();
    let mut restart = None;
    let mut server = Some(server);
    for round in 0..50 {
        let mut batch = Vec::new();
        for _ in 0..10 {
            let generated = generator.next(system_now_ms()).expect("payment");
            submitted.push(generated.submission);
            batch.push(generated.outgoing());
        }
        bus.publish_many(batch).await.expect("published");
        if round == 15 {
            let answered_before = collector.with_book(|book| book.answers_all_count(&submitted));
            assert!(
                answered_before < submitted.len(),
                "the restart comes mid-load"
            );
            let mut server = server.take().expect("server");
            restart = Some(tokio::spawn(async move {
                server.restart().await.expect("postgres restarted");
                server
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = restart.expect("restarted").await.expect("restart task");

    let answered = collector
        .wait_until(DEADLINE, |book| book.answers_all(&submitted))
        .await;
    assert!(
        answered,
        "{} of {} answered\n{}",
        collector.with_book(|book| book.answers_all_count(&submitted)),
        submitted.len(),
        server.log_tail()
    );
    // The restart was felt: ledger batches failed on the lost connections, and the stages
    // counted transient failures only.
    let exposition = metrics.render();
    let failed_batches: Vec<&str> = exposition
        .lines()
        .filter(|line| {
            line.starts_with("dcpipe_ledger_batches_total{")
                && line.contains("backend=\"postgres\"")
                && !line.contains("outcome=\"ok\"")
        })
        .collect();
    assert!(!failed_batches.is_empty(), "{exposition}");
    assert!(
        failed_batches
            .iter()
            .all(|line| line.contains("outcome=\"ledger.connect\"")
                || line.contains("outcome=\"ledger.busy\"")),
        "{failed_batches:?}"
    );
    let stage_failures: Vec<&str> = exposition
        .lines()
        .filter(|line| line.starts_with("dcpipe_stage_failures_total{"))
        .collect();
    assert!(
        stage_failures
            .iter()
            .all(|line| !line.contains("kind=\"fatal\"")),
        "{stage_failures:?}"
    );
    println!("{}", failed_batches.join("\n"));
    println!("{}", stage_failures.join("\n"));
    // Every stage is still running: the failures were transient.
    for stage in &stages {
        assert!(!stage.is_finished(), "a stage member stopped");
    }
    collector.with_book(|book| {
        let violations = book.violations(&submitted);
        assert!(violations.is_empty(), "{violations:?}");
        let completed = submitted
            .iter()
            .filter(|s| {
                book.answer(s)
                    .is_some_and(|a| a.status == OutcomeStatus::Completed)
            })
            .count();
        assert!(
            completed > submitted.len() * 9 / 10,
            "{completed} of {} completed: {:?}",
            submitted.len(),
            book.counts_by_outcome()
        );
    });
    let deadline = Instant::now() + DEADLINE;
    loop {
        let money = network.money().await.expect("money");
        if money.is_settled_and_conserved() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "money not settled and conserved: {money:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    for stage in stages {
        let _ = stage.await;
    }
}
