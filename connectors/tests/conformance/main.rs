//! The bus conformance suite: the semantics documented on `dcpipe_connectors::bus` (at least
//! once, competing consumers, dedup, order per key, replay, backpressure, dead letters) proven
//! with the same scenarios on every bus, against real servers, so that workers can run on any
//! of them unchanged.
//!
//! `scenarios` holds one function per behaviour; each backend module implements
//! [`harness::Harness`] and runs them all with `conformance_suite!`.

#[macro_use]
mod harness;
mod scenarios;

mod embedded;
mod kafka;
mod nats;
