//! A fleet of synthetic vehicles through the vehicle stages of a running network: every
//! charge their trips must cause made once with its amount and cleared, no decoy charged, no
//! pre-authorization exceeded, money conserved.

use std::sync::Arc;
use std::time::Duration;

use dcpipe_connectors::bus::{Bus, EmbeddedBus, EmbeddedConfig};
use dcpipe_loadtest::vehicles::{FleetConfig, fleet_policy, run_fleet};
use dcpipe_pipeline::clock::{SystemClock, system_now_ms};
use dcpipe_pipeline::network::{Network, NetworkConfig};
use dcpipe_pipeline::runtime::RunnerConfig;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_is_charged_for_what_it_did_and_nothing_else() {
    let config = NetworkConfig::in_memory(2, 16);
    let mut network = Network::provision(&config, Arc::new(SystemClock))
        .await
        .expect("provisioned");
    network
        .enable_vehicles(&config.ledger, &config.ledger_options, fleet_policy())
        .await
        .expect("session stores");
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(EmbeddedConfig::default()));
    network
        .ensure_subjects(bus.as_ref(), 1)
        .await
        .expect("subjects");
    let shutdown = CancellationToken::new();
    let runner = RunnerConfig {
        fetch_wait: Duration::from_millis(20),
        ..RunnerConfig::default()
    };
    let handles = network.spawn(&bus, &runner, &shutdown).expect("spawned");

    let report = run_fleet(
        &network,
        &bus,
        &FleetConfig {
            seed: 3,
            vehicles: 6,
        },
        system_now_ms(),
        Duration::from_secs(120),
    )
    .await
    .expect("the fleet ran");
    assert_eq!(report.failures(), Vec::<String>::new(), "{report:?}");
    assert!(report.expected >= 6, "{report:?}");
    assert_eq!(report.charged, report.expected);
    assert_eq!(report.completed, report.charged);
    assert!(report.decoys >= 6, "{report:?}");

    let network = &network;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let money = network.money().await.expect("money");
        if money.is_settled_and_conserved() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "money not settled: {money:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    for handle in handles {
        let _ = handle.await;
    }
}
