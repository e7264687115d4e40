//! The thin runtime around every stage: consume a batch, hand it to the stage, publish what it
//! decided, dead-letter what it cannot process, then ack. All flow logic lives in the stages.
//!
//! Delivery is at least once: a batch is acked only after its outputs and dead letters are
//! stored on the bus. A crash in between redelivers the batch; stages are idempotent (the ledger
//! answers a repeated message with its first result) and outputs carry message ids, so nothing
//! is lost and no money moves twice.
//!
//! A stage's failure says what it is ([`StageErrorKind`]): a transient one is retried with an
//! exponential backoff, an item one is isolated by splitting the batch and dead-lettered alone,
//! a fatal one stops the member (its batch is given back for the others) and makes the process
//! not ready ([`Health`]).

mod config;
mod error;
mod follow;
mod health;
mod runner;
mod stage;

pub use config::{ConfigError, ConfigErrorKind, RunnerConfig};
pub use error::{StageError, StageErrorKind, bus_failure_kind, ledger_failure_kind};
pub use follow::{FOLLOW_RETRY, FOLLOW_RETRY_MAX, Follower, follow_backoff, keep_following};
pub use health::{Component, Health, MemberId, MemberState, NotReady, Reachability, Readiness};
pub use runner::{MemberResult, StageRunner, spawn_stage};
pub use stage::{Input, Stage, Verdict, outgoing};

#[cfg(test)]
mod tests;
