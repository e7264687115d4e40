//! The thin runtime around every stage: consume a batch, hand it to the stage, publish what it
//! decided, dead-letter what it cannot process, then ack. All flow logic lives in the stages.
//!
//! Delivery is at least once: a batch is acked only after its outputs and dead letters are
//! stored on the bus. A crash in between redelivers the batch; stages are idempotent (the ledger
//! answers a repeated message with its first result) and outputs carry message ids, so nothing
//! is lost and no money moves twice.

mod runner;
mod stage;

pub use runner::{REASON_RETRIES_EXHAUSTED, RunnerConfig, StageRunner, spawn_stage};
pub use stage::{Input, Stage, StageError, Verdict, outgoing};
