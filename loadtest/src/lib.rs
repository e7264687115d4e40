//! Synthetic producers for dcpipe: realistic terminals (and later vehicles and wallets) that
//! drive the pipeline through the same bytes real devices publish, for the demo and for load
//! tests.

pub mod payments;
