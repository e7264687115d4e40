//! The ledger conformance suite: the money rules documented on `dcpipe_connectors::ledger`
//! (holds, pending credits, one final decision per payment, idempotent batches, limits, expiry,
//! conservation under concurrency, settlement netting) proven with the same scenarios on every
//! backend, against real databases: SQLite files and a private PostgreSQL server.
//!
//! `scenarios` and `settlement` hold one function per behaviour, `property` a randomized
//! interleaving of the whole flow; each backend module implements [`harness::Backend`] and runs
//! them all with `ledger_suite!`.

#[macro_use]
mod harness;
mod fixtures;
mod offline;
mod property;
mod scenarios;
mod settlement;

mod postgres;
mod sqlite;
