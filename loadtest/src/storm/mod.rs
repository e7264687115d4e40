//! The reconnection storm of offline wallets (`dcpipe loadtest --offline-wallets N`): after an
//! outage, N hard wallets reconnect within a short window, each publishing its key set with the
//! offline payments it made (0 to 20) and received; the wallet stages verify, synchronize and
//! clear them.
//!
//! [`Storm`] makes the wallets from a seed, chunk by chunk, so that memory stays bounded
//! whatever N; [`StormWork`] measures the crypto ceiling of the same mix with the stages' own
//! functions; [`run_storm`] runs the storm and checks it.

pub mod ceiling;
pub mod generate;
pub mod load;
pub mod spill;

pub use ceiling::{CEILING_SAMPLE_WALLETS, StormCeiling, StormWork};
pub use generate::{
    CHUNK_WALLETS, Chunk, PAYMENT_FEN_MAX, PAYMENTS_PER_WALLET_MAX, PURSE_FEN, Reconnection, Storm,
};
pub use load::{StormReport, run_storm};
