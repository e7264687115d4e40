//! The flows.

pub mod pki;
pub mod protocol;
