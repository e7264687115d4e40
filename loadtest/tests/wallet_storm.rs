//! A short reconnection storm (`dcpipe loadtest --offline-wallets N`) on each bus: the run is
//! valid (every key set answered once and accepted, every offline payment completed, every
//! purse what its wallet holds, no loss booked, money conserved with the purses) and its
//! figures consistent. Nothing here asserts speed: the machine running the tests may be slow
//! or busy.

use std::time::Duration;

use dcpipe_connectors::bus::BusUrl;
use dcpipe_connectors::testkit::{NatsServer, TansuServer};
use dcpipe_loadtest::LoadConfig;
use dcpipe_loadtest::storm::{CHUNK_WALLETS, StormReport, run_storm};
use tokio_util::sync::CancellationToken;

/// A chunk of wallets and a few more (two chunks), reconnecting over two seconds.
const WALLETS: usize = CHUNK_WALLETS + 16;

fn short_config(bus: BusUrl) -> LoadConfig {
    let mut config = LoadConfig::embedded(WALLETS as u32 / 2, Duration::from_secs(2));
    config.bus = bus;
    config.institutions = 2;
    config.wallets = 20;
    config.offline_wallets = WALLETS;
    config.warmup = Duration::from_millis(200);
    config.cooldown = Duration::from_millis(200);
    config.ceiling_duration = Duration::from_millis(300);
    config.drain_timeout = Duration::from_secs(45);
    config
}

async fn run_and_check(bus: BusUrl) -> StormReport {
    let mut config = short_config(bus);
    // The test's broker is thrown away with its data: nothing to remove (tansu 0.6 fails to
    // delete the run's topics, see docs/BENCHMARKS.md).
    config.keep = matches!(config.bus, BusUrl::Kafka(_));
    let report = run_storm(&config, &CancellationToken::new())
        .await
        .expect("the storm runs");
    eprintln!("{}", report.table());
    assert!(report.valid, "invalid: {:?}", report.invalid_reasons);
    assert_eq!(report.key_sets_sent, WALLETS as u64);
    assert_eq!(report.key_sets_answered, WALLETS as u64);
    assert_eq!(report.key_sets_answered_again, 0);
    assert_eq!(report.answers.get("ACCEPTED"), Some(&(WALLETS as u64)));
    // 0 to 20 payments each, 10 on average: far from none, within the bounds.
    assert!(
        report.payments_made > WALLETS as u64 * 5,
        "{}",
        report.payments_made
    );
    assert!(report.payments_made <= WALLETS as u64 * 20);
    assert_eq!(report.payments_completed, report.payments_made);
    assert!(
        report.payments_refused.is_empty(),
        "{:?}",
        report.payments_refused
    );
    assert!(report.payments_interbank > 0 && report.payments_received > 0);
    assert_eq!(report.purses_reconciled, WALLETS as u64);
    assert!(report.money.conserved);
    assert_eq!(report.loss_fen, 0);
    // What the purses still hold: funded, less what was paid.
    assert!(report.purses_fen > 0);
    let l = report.reconnect_latency_ms;
    assert!(l.samples > 0 && l.is_ordered(), "{l:?}");
    assert!(report.clearing_latency_ms.samples > 0);
    let c = &report.ceiling;
    assert!(c.key_sets_per_s > 0.0 && c.producer_per_core > 0.0);
    assert!(c.payments_per_key_set > 1.0 && c.payments_per_key_set < 20.0);
    assert!(
        (report.ratio_to_ceiling - report.key_sets_per_s / c.key_sets_per_s).abs() < 1e-9,
        "{report:?}"
    );
    assert!(report.rss_mb_max > 0.0);
    assert!(!report.series.is_empty());
    assert!(report.table().contains("reconnection → sync result"));
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_on_the_embedded_bus_is_valid_and_consistent() {
    run_and_check(BusUrl::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_on_nats_is_valid_and_consistent() {
    let server = NatsServer::start()
        .await
        .unwrap_or_else(|e| panic!("starting nats-server: {e}"));
    run_and_check(BusUrl::Nats(vec![server.address()])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_on_kafka_is_valid_and_consistent() {
    let server = TansuServer::start()
        .await
        .unwrap_or_else(|e| panic!("starting tansu: {e}"));
    run_and_check(BusUrl::Kafka(vec![server.address()])).await;
}
