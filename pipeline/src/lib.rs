//! The flows.

pub mod pki;
