//! The ledger suite on PostgreSQL: one private server per test process (started on first use,
//! stopped when the process exits), a fresh database per test, one schema per institution.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcpipe_connectors::ledger::{
    Ledger, LedgerError, LedgerErrorKind, LedgerOptions, LedgerUrl, PostgresOptions, ReserveResult,
    SettlementConfig, SettlementStore, Side, open_ledger, open_settlement,
};
use dcpipe_connectors::testkit::PostgresServer;

use crate::fixtures::{TIER4, open, pid, reserve};
use crate::harness::Backend;

/// The server shared by the tests of this process. Started from a thread of its own so that
/// no test's runtime owns it; its watchdog stops it when the process exits.
fn server() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime
                .block_on(PostgresServer::start())
                .unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"))
        })
        .join()
        .expect("PostgreSQL start thread")
    })
}

fn options() -> LedgerOptions {
    LedgerOptions {
        postgres: PostgresOptions {
            pool_size: 4,
            ..PostgresOptions::default()
        },
        ..LedgerOptions::default()
    }
}

struct PostgresBackend {
    url: LedgerUrl,
}

impl PostgresBackend {
    async fn new() -> Self {
        static DATABASES: AtomicU64 = AtomicU64::new(0);
        let name = format!("t{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        let url = server()
            .create_database(&name)
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        PostgresBackend {
            url: url.parse().expect("url"),
        }
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn try_ledger(&self, institution: &str) -> Result<Arc<dyn Ledger>, LedgerError> {
        open_ledger(&self.url, institution, &options()).await
    }

    async fn try_settlement(
        &self,
        config: SettlementConfig,
    ) -> Result<Arc<dyn SettlementStore>, LedgerError> {
        open_settlement(&self.url, config, &options()).await
    }
}

ledger_suite!(PostgresBackend::new().await);

#[test]
fn random_interleavings_conserve_money() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(PostgresBackend::new());
    crate::property::random_interleavings_conserve_money(Arc::new(backend), 128);
}

/// How long the pool may take to notice a restarted server.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_reconnects_after_server_restart() {
    // A server of its own: restarting the shared one would disturb the other tests.
    let mut server = PostgresServer::start().await.expect("start PostgreSQL");
    let url: LedgerUrl = server.url().parse().expect("url");
    let ledger = open_ledger(&url, "oi-a", &options()).await.expect("open");
    open(ledger.as_ref(), &[("a1", 50_000, TIER4)]).await;
    let first = ledger
        .reserve(&[reserve(1, "a1", 1_000)])
        .await
        .expect("reserve");
    assert!(matches!(first[0], ReserveResult::Reserved(_)), "{first:?}");
    server.restart().await.expect("restart");
    // Connections broken by the restart fail as retryable Connect errors until the pool has
    // replaced them; the batch is idempotent, so retrying it is safe.
    let deadline = Instant::now() + RECONNECT_DEADLINE;
    let second = loop {
        match ledger.reserve(&[reserve(2, "a1", 1_000)]).await {
            Ok(results) => break results,
            Err(e) if e.kind().is_retryable() && Instant::now() < deadline => {
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("reserve after restart: {e}"),
        }
    };
    assert!(
        matches!(second[0], ReserveResult::Reserved(_)),
        "{second:?}"
    );
    let kept = ledger
        .payment(&pid(1), Side::Payer)
        .await
        .expect("read")
        .expect("payment 1 kept");
    assert_eq!(kept.amount_fen, 1_000);
    assert_eq!(
        ledger.wallet("a1").await.expect("read").map(|w| w.held_fen),
        Some(2_000)
    );
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error() {
    // Port 1 on loopback: nothing listens there.
    let url: LedgerUrl = "postgres://postgres@127.0.0.1:1/postgres?connect_timeout=2"
        .parse()
        .expect("url");
    let err = open_ledger(&url, "oi-a", &options())
        .await
        .expect_err("no server");
    assert_eq!(err.kind(), LedgerErrorKind::Connect);
}
