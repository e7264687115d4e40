//! Buses and databases: what dcpipe's workers stand on, without knowing the flows.
//!
//! - [`bus`]: one [`bus::Bus`] interface over NATS JetStream, Kafka and an embedded in-process
//!   bus, chosen by URL;
//! - [`ledger`]: the institutions' ledgers and the central bank's settlement store;
//! - [`session`]: the vehicles' session stores of the institutions.

pub mod bus;
pub mod ledger;
pub mod session;

/// Real brokers (nats-server, tansu) started per test; see the module doc.
#[cfg(feature = "testkit")]
pub mod testkit;
