//! NATS JetStream (stub: to be implemented).

use super::{BusError, BusErrorKind, NatsOptions};

/// A bus on NATS JetStream.
#[derive(Debug)]
pub struct NatsBus {}

impl NatsBus {
    /// Connects to the first reachable server.
    pub async fn connect(_servers: &[String], _options: &NatsOptions) -> Result<Self, BusError> {
        Err(BusError::new(BusErrorKind::Config, "not yet implemented"))
    }
}

// Stub so the crate compiles until the implementation lands.
#[async_trait::async_trait]
impl super::Bus for NatsBus {
    fn kind(&self) -> super::BusKind {
        super::BusKind::Nats
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
