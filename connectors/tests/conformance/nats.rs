//! The conformance suite on NATS JetStream: a `nats-server` of its own per test.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::{Bus, NatsBus, NatsOptions};
use dcpipe_connectors::testkit::NatsServer;

use crate::harness::Harness;

struct NatsHarness {
    server: NatsServer,
}

impl NatsHarness {
    async fn start() -> Self {
        let server = NatsServer::start()
            .await
            .unwrap_or_else(|e| panic!("starting nats-server: {e}"));
        NatsHarness { server }
    }
}

#[async_trait]
impl Harness for NatsHarness {
    async fn bus(&mut self) -> Arc<dyn Bus> {
        let bus = NatsBus::connect(&[self.server.address()], &NatsOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.server.url()));
        Arc::new(bus)
    }

    async fn restart(&mut self) {
        self.server
            .restart()
            .await
            .unwrap_or_else(|e| panic!("restarting nats-server: {e}"));
    }

    fn dedups_by_msg_id(&self) -> bool {
        true
    }
}

conformance_suite!(NatsHarness::start().await);
