//! The in-process bus (stub: to be implemented).

use super::BusError;

/// Limits of the embedded bus.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedConfig {}

/// The in-process bus.
#[derive(Debug)]
pub struct EmbeddedBus {}

impl EmbeddedBus {
    /// A new, empty bus.
    pub fn new(_config: EmbeddedConfig) -> Self {
        EmbeddedBus {}
    }
}

#[allow(dead_code)]
fn _unused(_: BusError) {}

// Stub so the crate compiles until the implementation lands.
#[async_trait::async_trait]
impl super::Bus for EmbeddedBus {
    fn kind(&self) -> super::BusKind {
        super::BusKind::Embedded
    }
    async fn ensure_subject(&self, _spec: &super::SubjectSpec) -> Result<(), BusError> {
        Err(BusError::new(
            super::BusErrorKind::Config,
            "not yet implemented",
        ))
    }
    async fn publish(&self, _m: super::Outgoing) -> Result<super::PublishReceipt, BusError> {
        Err(BusError::new(
            super::BusErrorKind::Config,
            "not yet implemented",
        ))
    }
    async fn consumer(
        &self,
        _c: super::ConsumerConfig,
    ) -> Result<Box<dyn super::Consumer>, BusError> {
        Err(BusError::new(
            super::BusErrorKind::Config,
            "not yet implemented",
        ))
    }
    async fn replay(
        &self,
        _r: super::ReplayRequest,
    ) -> Result<Box<dyn super::ReplayStream>, BusError> {
        Err(BusError::new(
            super::BusErrorKind::Config,
            "not yet implemented",
        ))
    }
}
