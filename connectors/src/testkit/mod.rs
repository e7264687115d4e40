//! Real brokers for tests: each handle starts its own server process on a free port with a
//! temporary storage directory, waits until it answers, and kills it on drop.
//!
//! Tests must never depend on a broker that happens to listen on the machine (a default port
//! may belong to an older server), so every test starts the exact version it was written
//! against. The binaries are installed by `scripts/setup.sh` into the cache directory
//! (`$DCPIPE_CACHE`, else `$XDG_CACHE_HOME/dcpipe`, else `~/.cache/dcpipe`); the environment
//! variables `DCPIPE_NATS_SERVER` and `DCPIPE_TANSU` point at other binaries. A missing binary is
//! an error that says how to install it: tests fail rather than silently skip.
//!
//! Enabled by the `testkit` cargo feature.

mod http;
mod nats;
mod nats_cluster;
pub mod postgres;
mod process;
mod tansu;

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::bus::{Consumer, Delivery};

pub use http::{free_address, http_get};
pub use nats::{NATS_SERVER_VERSION, NatsServer};
pub use nats_cluster::{NATS_CLUSTER_NODES, NatsCluster};
pub use postgres::PostgresServer;
pub use tansu::{TANSU_VERSION, TansuServer};

/// Longest single wait of [`fetch_until`], so that it looks at its deadline often.
const FETCH_UNTIL_WAIT: Duration = Duration::from_millis(500);

/// Fetches, without acking, until `n` deliveries have arrived or `deadline` has passed: a test
/// waits on the condition with a deadline, never on a fixed sleep. Panics when a fetch fails.
pub async fn fetch_until(
    consumer: &mut dyn Consumer,
    n: usize,
    deadline: Instant,
) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    while deliveries.len() < n && Instant::now() < deadline {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(FETCH_UNTIL_WAIT);
        let batch = consumer
            .fetch(n - deliveries.len(), wait)
            .await
            .unwrap_or_else(|e| panic!("fetch: {e}"));
        deliveries.extend(batch);
    }
    deliveries
}

/// What went wrong while running a test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TestkitErrorKind {
    /// The server binary is not installed (run `scripts/setup.sh`).
    BinaryMissing,
    /// The process could not be started or stopped, or its files could not be written.
    Process,
    /// The server did not answer within its start-up deadline.
    NotReady,
    /// The server exited while starting (on a fresh start, typically because another process
    /// took its port between the choice of a free port and its bind): start-up tries a new port.
    Exited,
}

impl TestkitErrorKind {
    /// A stable code for the kind, e.g. `testkit.binary_missing`.
    pub fn reason_code(self) -> &'static str {
        match self {
            TestkitErrorKind::BinaryMissing => "testkit.binary_missing",
            TestkitErrorKind::Process => "testkit.process",
            TestkitErrorKind::NotReady => "testkit.not_ready",
            TestkitErrorKind::Exited => "testkit.exited",
        }
    }
}

/// An error of the test servers: a [`TestkitErrorKind`] with a message for the person running
/// the tests.
#[derive(Debug)]
pub struct TestkitError {
    kind: TestkitErrorKind,
    message: String,
}

impl TestkitError {
    pub(crate) fn new(kind: TestkitErrorKind, message: impl Into<String>) -> Self {
        TestkitError {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> TestkitErrorKind {
        self.kind
    }
}

impl fmt::Display for TestkitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.reason_code(), self.message)
    }
}

impl StdError for TestkitError {}
