//! A payment network on one bus, its PKI written to disk as `dcpipe pki init` lays it out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dcpipe_connectors::bus::{
    Bus, EmbeddedBus, EmbeddedConfig, KafkaBus, KafkaOptions, NatsBus, NatsOptions,
};
use dcpipe_connectors::ledger::{LedgerUrl, SettlementConfig};
use dcpipe_connectors::testkit::{NatsServer, TansuServer};
use dcpipe_pipeline::clock::SystemClock;
use dcpipe_pipeline::network::{Network, NetworkConfig};
use dcpipe_pipeline::pki::PkiLayout;
use dcpipe_pipeline::runtime::RunnerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Servers kept alive for the test's duration.
#[allow(dead_code)]
enum Server {
    Nats(NatsServer),
    Tansu(TansuServer),
}

/// A bus with the server behind it.
pub(crate) struct Backend {
    pub(crate) bus: Arc<dyn Bus>,
    /// The URL a separate process reaches the bus with (none for the embedded bus).
    pub(crate) url: Option<String>,
    pub(crate) partitions: u32,
    _server: Option<Server>,
}

impl Backend {
    pub(crate) fn embedded() -> Self {
        Backend {
            bus: Arc::new(EmbeddedBus::new(EmbeddedConfig::default())),
            url: None,
            partitions: 1,
            _server: None,
        }
    }

    pub(crate) async fn nats() -> Self {
        let server = NatsServer::start()
            .await
            .unwrap_or_else(|e| panic!("starting nats-server: {e}"));
        let bus = NatsBus::connect(&[server.address()], &NatsOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to NATS: {e}"));
        Backend {
            bus: Arc::new(bus),
            url: Some(format!("nats://{}", server.address())),
            partitions: 1,
            _server: Some(Server::Nats(server)),
        }
    }

    pub(crate) async fn kafka() -> Self {
        let server = TansuServer::start()
            .await
            .unwrap_or_else(|e| panic!("starting tansu: {e}"));
        let bus = KafkaBus::connect(&[server.address()], &KafkaOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to Kafka: {e}"));
        Backend {
            bus: Arc::new(bus),
            url: Some(format!("kafka://{}", server.address())),
            partitions: 2,
            _server: Some(Server::Tansu(server)),
        }
    }
}

/// Settlement windows of a second, so tests see them close.
pub(crate) const TEST_WINDOW_MS: i64 = 1_000;

/// A running network whose PKI is on disk.
pub(crate) struct Running {
    pub(crate) network: Network,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) pki_dir: tempfile::TempDir,
    shutdown: CancellationToken,
    stages: Vec<JoinHandle<dcpipe_pipeline::runtime::MemberResult>>,
}

impl Running {
    /// Two institutions with two wallets each, every stage running.
    pub(crate) async fn start(backend: &Backend) -> Self {
        let mut config = NetworkConfig::in_memory(2, 4);
        config.ledger = LedgerUrl::SqliteMemory;
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
        let pki_dir = tempfile::tempdir().expect("temporary directory");
        network.pki.write(pki_dir.path()).expect("PKI written");
        let shutdown = CancellationToken::new();
        let runner = RunnerConfig {
            fetch_wait: Duration::from_millis(20),
            ack_wait: Duration::from_secs(5),
            retry_delay: Duration::from_millis(100),
            ..RunnerConfig::default()
        };
        let stages = network
            .spawn(&backend.bus, &runner, &shutdown)
            .unwrap_or_else(|e| panic!("runner configuration: {e}"));
        Running {
            network,
            bus: Arc::clone(&backend.bus),
            pki_dir,
            shutdown,
            stages,
        }
    }

    /// The wallet directory of the `n`th wallet of `institution`.
    pub(crate) fn wallet_dir(&self, institution: &str, n: usize) -> PathBuf {
        let wallet = self
            .network
            .wallets
            .iter()
            .filter(|w| w.party.institution_id == institution)
            .nth(n)
            .unwrap_or_else(|| panic!("no wallet {n} at {institution}"));
        PkiLayout::new(self.pki_dir.path()).wallet_dir(&wallet.party.wallet_id)
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        for handle in self.stages {
            let _ = handle.await;
        }
    }
}
