//! The session store suite on PostgreSQL: one private server per test process, a fresh
//! database per test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use dcpipe_connectors::ledger::{LedgerError, LedgerOptions, LedgerUrl, PostgresOptions};
use dcpipe_connectors::session::{SessionStore, open_session_store};
use dcpipe_connectors::testkit::PostgresServer;

use crate::harness::Backend;

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

struct PostgresBackend {
    url: LedgerUrl,
}

impl PostgresBackend {
    async fn new() -> Self {
        static DATABASES: AtomicU64 = AtomicU64::new(0);
        let name = format!("s{}", DATABASES.fetch_add(1, Ordering::Relaxed));
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
    async fn try_store(&self, institution: &str) -> Result<Arc<dyn SessionStore>, LedgerError> {
        let options = LedgerOptions {
            postgres: PostgresOptions {
                pool_size: 4,
                ..PostgresOptions::default()
            },
            ..LedgerOptions::default()
        };
        open_session_store(&self.url, institution, &options).await
    }
}

session_suite!(PostgresBackend::new().await);

#[tokio::test]
async fn an_institution_id_of_the_longest_length_fits_a_schema_name() {
    let backend = PostgresBackend::new().await;
    let id = "o".repeat(dcpipe_connectors::ledger::INSTITUTION_ID_LEN_MAX);
    backend.store(&id).await;
}
