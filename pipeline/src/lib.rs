//! The flows.

pub mod audit;
pub mod clock;
pub mod error;
pub mod network;
pub mod payment;
pub mod pki;
pub mod protocol;
pub mod reason;
pub mod registry;
pub mod revocation;
pub mod runtime;
pub mod settlement;
pub mod subjects;
pub mod terminal;
pub mod tier;
pub mod wallet;
