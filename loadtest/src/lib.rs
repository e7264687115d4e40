//! Synthetic producers for dcpipe, and the load test that drives the whole pipeline with them.
//!
//! The producers are realistic terminals that publish the same bytes real devices do
//! ([`payments`]), offline hard wallets ([`wallets`]) and vehicles driving through a
//! synthetic city ([`vehicles`]). The load test ([`run()`]) provisions a network,
//! measures what the hardware allows — the signature work alone ([`ceiling::CryptoWork`]) and
//! the bus alone ([`ceiling::measure_bus`]) — then offers load open-loop, as a ramp or
//! closed-loop, measures end-to-end latency from each payment's *intended* send time in HDR
//! histograms, holds the run to the pipeline's invariants (one answer per submission, money
//! conserved) and reports it all as JSON, a terminal table and an SVG plot.
//!
//! Operators need to say how fast dcpipe is on their hardware and how close it comes to what
//! the hardware allows: that is why every figure is reported beside both ceilings.

pub mod ceiling;
pub mod config;
pub mod error;
pub mod measure;
pub mod payments;
pub mod plot;
pub mod ramp;
pub mod report;
pub mod rss;
pub mod run;
pub mod schedule;
pub mod storm;
pub mod tracker;
pub mod vehicles;
pub mod wallet_flow;
pub mod wallets;

pub use config::{LedgerChoice, LoadConfig, Mode, RampConfig, SustainCriterion};
pub use error::{LoadTestError, LoadTestErrorKind};
pub use report::Report;
pub use run::{INTERRUPTED_DRAIN_MAX, run, run_until};
