//! The ledger suite on SQLite: a fresh directory of ledger files per test; every handle is its
//! own connection, so concurrent scenarios contend for the file as separate processes would.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::ledger::{
    Ledger, LedgerError, LedgerOptions, LedgerUrl, SettlementConfig, SettlementStore,
    SqliteOptions, SqliteSync, open_ledger, open_settlement,
};
use tempfile::TempDir;

use crate::harness::Backend;

struct SqliteBackend {
    dir: TempDir,
    options: LedgerOptions,
}

impl SqliteBackend {
    fn new() -> Self {
        SqliteBackend {
            dir: tempfile::Builder::new()
                .prefix("dcpipe-ledger-")
                .tempdir()
                .expect("temp dir"),
            options: LedgerOptions {
                sqlite: SqliteOptions {
                    // Durability against power loss is not under test; fsyncs only slow it.
                    synchronous: SqliteSync::Normal,
                    ..SqliteOptions::default()
                },
                ..LedgerOptions::default()
            },
        }
    }

    fn url(&self) -> LedgerUrl {
        LedgerUrl::SqliteDir(self.dir.path().to_owned())
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn try_ledger(&self, institution: &str) -> Result<Arc<dyn Ledger>, LedgerError> {
        open_ledger(&self.url(), institution, &self.options).await
    }

    async fn try_settlement(
        &self,
        config: SettlementConfig,
    ) -> Result<Arc<dyn SettlementStore>, LedgerError> {
        open_settlement(&self.url(), config, &self.options).await
    }
}

ledger_suite!(SqliteBackend::new());

#[test]
fn random_interleavings_conserve_money() {
    crate::property::random_interleavings_conserve_money(Arc::new(SqliteBackend::new()), 256);
}

#[tokio::test]
async fn ledger_files_are_named_after_institutions() {
    let backend = SqliteBackend::new();
    backend.ledger("oi-a").await;
    backend.settlement(SettlementConfig::default()).await;
    assert!(backend.dir.path().join("oi-a.db").is_file());
    assert!(backend.dir.path().join("central-bank.db").is_file());
}

#[tokio::test]
async fn memory_url_gives_private_ledgers() {
    let url: LedgerUrl = "sqlite::memory:".parse().expect("url");
    let options = LedgerOptions::default();
    let first = open_ledger(&url, "oi-a", &options).await.expect("open");
    crate::fixtures::open(first.as_ref(), &[("a1", 100, crate::fixtures::TIER4)]).await;
    let second = open_ledger(&url, "oi-a", &options).await.expect("open");
    assert_eq!(second.wallet("a1").await.expect("read"), None);
    assert_eq!(first.total_balance_fen().await.expect("total"), 100);
}

#[tokio::test]
async fn file_of_another_institution_is_refused() {
    let backend = SqliteBackend::new();
    backend.ledger("oi-a").await;
    std::fs::copy(
        backend.dir.path().join("oi-a.db"),
        backend.dir.path().join("oi-b.db"),
    )
    .expect("copy");
    let err = backend.try_ledger("oi-b").await.expect_err("foreign file");
    assert_eq!(
        err.kind(),
        dcpipe_connectors::ledger::LedgerErrorKind::Config
    );
}

/// The stages of one institution share its ledger handle: what they send at the same time
/// commits together, each batch answered on its own, and the money adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_sharing_a_handle_share_commits() {
    use dcpipe_connectors::ledger::{ReserveResult, SqliteLedger, Transition};

    use crate::fixtures::{PAYER_OI, TIER4, open, pid, reserve};

    const WRITERS: u64 = 16;
    let backend = SqliteBackend::new();
    let ledger = Arc::new(
        SqliteLedger::open(
            &backend.dir.path().join(format!("{PAYER_OI}.db")),
            PAYER_OI,
            &backend.options.sqlite,
        )
        .await
        .expect("open"),
    );
    let wallets: Vec<String> = (0..WRITERS).map(|n| format!("a{n}")).collect();
    let specs: Vec<(&str, i64, _)> = wallets
        .iter()
        .map(|w| (w.as_str(), 10_000, TIER4))
        .collect();
    open(ledger.as_ref(), &specs).await;
    let before = ledger.group_commits();

    let tasks: Vec<_> = (0..WRITERS)
        .map(|n| {
            let ledger = Arc::clone(&ledger);
            tokio::spawn(async move {
                let wallet = format!("a{n}");
                let reserved = ledger
                    .reserve(&[reserve(n, &wallet, 1_000 + n as i64)])
                    .await
                    .expect("reserve");
                assert!(
                    matches!(reserved[..], [ReserveResult::Reserved(_)]),
                    "{reserved:?}"
                );
                let committed = ledger.commit(&[pid(n)]).await.expect("commit");
                assert!(
                    matches!(committed[..], [Transition::Applied(_)]),
                    "{committed:?}"
                );
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }

    let after = ledger.group_commits();
    assert_eq!(after.requests - before.requests, 2 * WRITERS);
    let commits = after.commits - before.commits;
    assert!((1..=2 * WRITERS).contains(&commits), "{commits} commits");
    let paid: i64 = (0..WRITERS as i64).map(|n| 1_000 + n).sum();
    assert_eq!(
        ledger.total_balance_fen().await.expect("total"),
        WRITERS as i64 * 10_000 - paid
    );
    ledger.verify_integrity().await.expect("integrity");
}
