//! The session store suite on SQLite: a fresh directory per test; every handle its own
//! connection.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::ledger::{
    LedgerError, LedgerErrorKind, LedgerOptions, LedgerUrl, SqliteOptions, SqliteSync,
};
use dcpipe_connectors::session::{SessionStore, open_session_store, sqlite_file_name};
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
                .prefix("dcpipe-sessions-")
                .tempdir()
                .expect("temp dir"),
            options: LedgerOptions {
                sqlite: SqliteOptions {
                    synchronous: SqliteSync::Normal,
                    ..SqliteOptions::default()
                },
                ..LedgerOptions::default()
            },
        }
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn try_store(&self, institution: &str) -> Result<Arc<dyn SessionStore>, LedgerError> {
        open_session_store(
            &LedgerUrl::SqliteDir(self.dir.path().to_owned()),
            institution,
            &self.options,
        )
        .await
    }
}

session_suite!(SqliteBackend::new());

#[tokio::test]
async fn the_store_is_a_file_of_its_own_beside_the_ledger() {
    let backend = SqliteBackend::new();
    backend.store("oi-a").await;
    assert!(backend.dir.path().join(sqlite_file_name("oi-a")).is_file());
    assert!(!backend.dir.path().join("oi-a.db").exists());
}

#[tokio::test]
async fn another_institutions_file_is_refused() {
    let backend = SqliteBackend::new();
    backend.store("oi-a").await;
    std::fs::copy(
        backend.dir.path().join(sqlite_file_name("oi-a")),
        backend.dir.path().join(sqlite_file_name("oi-b")),
    )
    .expect("copy");
    let err = backend.try_store("oi-b").await.expect_err("foreign file");
    assert_eq!(err.kind(), LedgerErrorKind::Config);
}
