//! The session store conformance suite: the rules documented on
//! `dcpipe_connectors::session` (compare-and-set per vehicle, idempotent retries, one charge
//! per session, charges within their pre-authorization, concurrent workers) proven with the
//! same scenarios on SQLite files and a private PostgreSQL server.

#[macro_use]
mod harness;
mod scenarios;

mod postgres;
mod sqlite;
