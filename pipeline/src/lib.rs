//! The flows.

pub mod clock;
pub mod payment;
pub mod pki;
pub mod protocol;
pub mod reason;
pub mod runtime;
pub mod settlement;
pub mod subjects;
pub mod terminal;
