//! Buses and databases: what dcpipe's workers stand on, without knowing the flows.
//!
//! - [`bus`]: one [`bus::Bus`] interface over NATS JetStream, Kafka and an embedded in-process
//!   bus, chosen by URL.

pub mod bus;
pub mod ledger;

/// Real brokers (nats-server, tansu) started per test; see the module doc.
#[cfg(feature = "testkit")]
pub mod testkit;
