//! One backend per bus and ledger: real servers started by the test, and a network on them.

use std::sync::Arc;
use std::time::Duration;

use dcpipe_connectors::bus::{
    Bus, EmbeddedBus, EmbeddedConfig, KafkaBus, KafkaOptions, NatsBus, NatsOptions,
};
use dcpipe_connectors::ledger::{LedgerUrl, SettlementConfig};
use dcpipe_connectors::testkit::{NatsServer, PostgresServer, TansuServer};
use dcpipe_pipeline::clock::SystemClock;
use dcpipe_pipeline::invariants::OutcomeCollector;
use dcpipe_pipeline::network::{Network, NetworkConfig};
use dcpipe_pipeline::runtime::RunnerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Servers kept alive for the test's duration.
#[allow(dead_code)]
enum Server {
    Nats(NatsServer),
    Tansu(TansuServer),
    Postgres(PostgresServer),
}

/// A bus and a ledger location, with the servers behind them.
pub(crate) struct Backend {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) ledger: LedgerUrl,
    pub(crate) partitions: u32,
    _servers: Vec<Server>,
}

impl Backend {
    pub(crate) fn embedded_sqlite() -> Self {
        Backend {
            bus: Arc::new(EmbeddedBus::new(EmbeddedConfig::default())),
            ledger: LedgerUrl::SqliteMemory,
            partitions: 1,
            _servers: Vec::new(),
        }
    }

    pub(crate) async fn embedded_postgres() -> Self {
        let server = PostgresServer::start()
            .await
            .unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
        Backend {
            bus: Arc::new(EmbeddedBus::new(EmbeddedConfig::default())),
            ledger: server.url().parse().expect("postgres ledger URL"),
            partitions: 1,
            _servers: vec![Server::Postgres(server)],
        }
    }

    pub(crate) async fn nats_sqlite() -> Self {
        let server = NatsServer::start()
            .await
            .unwrap_or_else(|e| panic!("starting nats-server: {e}"));
        let bus = NatsBus::connect(&[server.address()], &NatsOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to NATS: {e}"));
        Backend {
            bus: Arc::new(bus),
            ledger: LedgerUrl::SqliteMemory,
            partitions: 1,
            _servers: vec![Server::Nats(server)],
        }
    }

    pub(crate) async fn kafka_sqlite() -> Self {
        let server = TansuServer::start()
            .await
            .unwrap_or_else(|e| panic!("starting tansu: {e}"));
        let bus = KafkaBus::connect(&[server.address()], &KafkaOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to Kafka: {e}"));
        Backend {
            bus: Arc::new(bus),
            ledger: LedgerUrl::SqliteMemory,
            partitions: 2,
            _servers: vec![Server::Tansu(server)],
        }
    }
}

/// A running network with an outcome collector.
pub(crate) struct Running {
    pub(crate) network: Network,
    pub(crate) collector: OutcomeCollector,
    pub(crate) bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
    handles: Vec<JoinHandle<()>>,
    stages: Vec<JoinHandle<dcpipe_pipeline::runtime::MemberResult>>,
}

/// Settlement windows of a second, so tests see them close.
pub(crate) const TEST_WINDOW_MS: i64 = 1_000;

pub(crate) fn runner() -> RunnerConfig {
    RunnerConfig {
        fetch_wait: Duration::from_millis(20),
        ack_wait: Duration::from_secs(5),
        retry_delay: Duration::from_millis(100),
        ..RunnerConfig::default()
    }
}

impl Running {
    /// Provisions `institutions` institutions with `wallets` wallets on the backend and starts
    /// every stage and a collector of every outcome.
    pub(crate) async fn start(backend: &Backend, institutions: usize, wallets: usize) -> Self {
        let mut config = NetworkConfig::in_memory(institutions, wallets);
        config.ledger = backend.ledger.clone();
        config.settlement = SettlementConfig {
            window_ms: TEST_WINDOW_MS,
        };
        config.settlement_grace_ms = 200;
        let network = Network::provision(&config, Arc::new(SystemClock))
            .await
            .unwrap_or_else(|e| panic!("provisioning: {e}"));
        network
            .ensure_subjects(backend.bus.as_ref(), backend.partitions)
            .await
            .unwrap_or_else(|e| panic!("creating subjects: {e}"));
        let shutdown = CancellationToken::new();
        let stages = network
            .spawn(&backend.bus, &runner(), &shutdown)
            .unwrap_or_else(|e| panic!("runner configuration: {e}"));
        let (collector, handles) = OutcomeCollector::spawn(
            Arc::clone(&backend.bus),
            network.institutions.keys().cloned(),
            "test-observer",
            shutdown.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("collector: {e}"));
        Running {
            network,
            collector,
            bus: Arc::clone(&backend.bus),
            shutdown,
            handles,
            stages,
        }
    }

    /// Stops every stage and the collector, keeping the network (its keys and ledgers) for
    /// what the test does next (the audit's suite tampers with the record then).
    #[allow(dead_code)]
    pub(crate) async fn stop_stages(&mut self) {
        self.shutdown.cancel();
        for handle in self.handles.drain(..) {
            let _ = handle.await;
        }
        for handle in self.stages.drain(..) {
            let _ = handle.await;
        }
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        for handle in self.handles {
            let _ = handle.await;
        }
        for handle in self.stages {
            let _ = handle.await;
        }
    }
}
