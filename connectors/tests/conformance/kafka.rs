//! The conformance suite on Kafka: a tansu broker of its own per test, storing in SQLite so
//! that a restart keeps its data.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::{Bus, KafkaBus, KafkaOptions};
use dcpipe_connectors::testkit::TansuServer;

use crate::harness::Harness;

struct KafkaHarness {
    server: TansuServer,
}

impl KafkaHarness {
    async fn start() -> Self {
        let server = TansuServer::start()
            .await
            .unwrap_or_else(|e| panic!("starting tansu: {e}"));
        KafkaHarness { server }
    }
}

#[async_trait]
impl Harness for KafkaHarness {
    async fn bus(&mut self) -> Arc<dyn Bus> {
        let bus = KafkaBus::connect(&[self.server.address()], &KafkaOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.server.url()));
        Arc::new(bus)
    }

    async fn restart(&mut self) {
        self.server
            .restart()
            .await
            .unwrap_or_else(|e| panic!("restarting tansu: {e}"));
    }

    fn dedups_by_msg_id(&self) -> bool {
        // The idempotent producer removes its own retry duplicates only.
        false
    }
}

conformance_suite!(KafkaHarness::start().await);
