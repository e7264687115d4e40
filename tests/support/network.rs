//! What the tests of worker processes start from: a PKI and SQLite ledgers of two institutions
//! (20 wallets) in a temporary directory, and every subject of the network on a bus.

use std::sync::Arc;

use dcpipe_connectors::bus::Bus;
use dcpipe_connectors::ledger::{LedgerUrl, SettlementConfig};
use dcpipe_pipeline::clock::{SystemClock, system_now_ms};
use dcpipe_pipeline::network::{Network, NetworkConfig};
use dcpipe_pipeline::pki::{AlgorithmChoice, DemoPkiOptions, init_pki_directory};

/// The directory (`pki/`, `ledgers/`) and the provisioned network, settling in `settlement`'s
/// windows.
pub(crate) async fn two_institutions(
    bus: &dyn Bus,
    settlement: SettlementConfig,
) -> (tempfile::TempDir, Network) {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = DemoPkiOptions::new(2, 20, AlgorithmChoice::P256, system_now_ms());
    let pki = Arc::new(init_pki_directory(&dir.path().join("pki"), &options).expect("pki"));
    let mut config = NetworkConfig::in_memory(2, 20);
    config.ledger = LedgerUrl::SqliteDir(dir.path().join("ledgers"));
    config.settlement = settlement;
    let network = Network::from_pki(pki, &config, Arc::new(SystemClock))
        .await
        .expect("provisioned");
    network.ensure_subjects(bus, 1).await.expect("subjects");
    (dir, network)
}
