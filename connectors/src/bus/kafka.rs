//! Kafka (stub: to be implemented).

use super::{BusError, BusErrorKind, KafkaOptions};

/// A bus on Kafka.
#[derive(Debug)]
pub struct KafkaBus {}

impl KafkaBus {
    /// Connects to the bootstrap servers.
    pub async fn connect(_servers: &[String], _options: &KafkaOptions) -> Result<Self, BusError> {
        Err(BusError::new(BusErrorKind::Config, "not yet implemented"))
    }
}

// Stub so the crate compiles until the implementation lands.
#[async_trait::async_trait]
impl super::Bus for KafkaBus {
    fn kind(&self) -> super::BusKind {
        super::BusKind::Kafka
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
