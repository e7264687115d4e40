//! Tests of the PKI as a whole: chains, reason codes, cache, files, interoperability.

mod cache;
mod chains;
mod fixtures;
mod fuzz;
mod interop;
mod reasons;
mod store;
