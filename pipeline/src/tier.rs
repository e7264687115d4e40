//! Wallet tiers and their limits, in fen. The defaults are the public e-CNY figures; a
//! deployment configures its own.

use dcpipe_connectors::ledger::WalletLimits;

use crate::terminal::PASSWORD_FREE_LIMIT_FEN_DEFAULT;

/// Fen per yuan.
pub const FEN_PER_CNY: i64 = 100;

/// A wallet tier: its number and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    /// Tier number (1 is the strongest identity, 4 a phone number only).
    pub number: u8,
    /// The limits of its wallets.
    pub limits: WalletLimits,
}

/// Tier 4 (phone number only): balance 10,000 CNY, single payment 2,000, daily 5,000.
pub const TIER_4: Tier = Tier {
    number: 4,
    limits: WalletLimits {
        balance_limit_fen: 10_000 * FEN_PER_CNY,
        single_payment_limit_fen: 2_000 * FEN_PER_CNY,
        daily_limit_fen: 5_000 * FEN_PER_CNY,
        password_free_limit_fen: PASSWORD_FREE_LIMIT_FEN_DEFAULT,
    },
};

/// Tier 2 (bank account linked, verified in person): balance 500,000 CNY, single payment
/// 50,000, daily 100,000.
pub const TIER_2: Tier = Tier {
    number: 2,
    limits: WalletLimits {
        balance_limit_fen: 500_000 * FEN_PER_CNY,
        single_payment_limit_fen: 50_000 * FEN_PER_CNY,
        daily_limit_fen: 100_000 * FEN_PER_CNY,
        password_free_limit_fen: PASSWORD_FREE_LIMIT_FEN_DEFAULT,
    },
};
