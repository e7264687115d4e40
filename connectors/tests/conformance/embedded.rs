//! The conformance suite on the embedded bus: no server, a new bus per test.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::{Bus, EmbeddedBus, EmbeddedConfig};

use crate::harness::Harness;

struct EmbeddedHarness {
    bus: Arc<EmbeddedBus>,
}

impl EmbeddedHarness {
    fn new() -> Self {
        EmbeddedHarness {
            bus: Arc::new(EmbeddedBus::new(EmbeddedConfig::default())),
        }
    }
}

#[async_trait]
impl Harness for EmbeddedHarness {
    async fn bus(&mut self) -> Arc<dyn Bus> {
        self.bus.clone()
    }

    async fn restart(&mut self) {
        // In-process: the bus lives as long as the process, and the scenario recreates its
        // consumers as a restarted worker would.
    }

    fn dedups_by_msg_id(&self) -> bool {
        true
    }

    async fn capacity_bounded_bus(&mut self, messages_max: usize) -> Option<Arc<dyn Bus>> {
        Some(Arc::new(EmbeddedBus::new(EmbeddedConfig {
            subject_messages_max: messages_max,
            ..EmbeddedConfig::default()
        })))
    }
}

conformance_suite!(EmbeddedHarness::new());
