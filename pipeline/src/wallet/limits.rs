//! The offline limits of each wallet tier and the platform's bounds on key sets, as named
//! constants: the defaults a deployment starts from (docs/PROTOCOL.md, "Offline wallets").

use dcpipe_schemas::OfflineLimits;

use crate::tier::FEN_PER_CNY;

/// An hour, in ms.
pub const HOUR_MS: i64 = 3_600_000;

/// Offline limits of tier 4 (phone number only): purse 1,000 CNY, single payment 500 CNY,
/// 1,000 CNY and 20 payments between two synchronizations, 24 hours offline.
pub const OFFLINE_TIER_4: OfflineLimits = OfflineLimits {
    purse_limit_fen: 1_000 * FEN_PER_CNY,
    single_payment_limit_fen: 500 * FEN_PER_CNY,
    cumulative_limit_fen: 1_000 * FEN_PER_CNY,
    payments_per_sync_max: 20,
    offline_duration_ms_max: 24 * HOUR_MS,
};

/// Offline limits of tier 2 (verified in person): purse 5,000 CNY, single payment 2,000 CNY,
/// 5,000 CNY and 32 payments between two synchronizations, 72 hours offline.
pub const OFFLINE_TIER_2: OfflineLimits = OfflineLimits {
    purse_limit_fen: 5_000 * FEN_PER_CNY,
    single_payment_limit_fen: 2_000 * FEN_PER_CNY,
    cumulative_limit_fen: 5_000 * FEN_PER_CNY,
    payments_per_sync_max: 32,
    offline_duration_ms_max: 72 * HOUR_MS,
};

/// The default offline limits of a tier: tier 2 and stronger get [`OFFLINE_TIER_2`], the others
/// [`OFFLINE_TIER_4`].
pub const fn offline_limits_for_tier(tier: u8) -> OfflineLimits {
    if tier <= 2 {
        OFFLINE_TIER_2
    } else {
        OFFLINE_TIER_4
    }
}

/// Largest |satellite moment of a key set − platform clock| the platform accepts, unless
/// configured otherwise: 2 minutes, as for envelopes. A satellite fix is far better than that;
/// the bound covers the time between making the set and its verification.
pub const SATELLITE_SKEW_MS_MAX_DEFAULT: i64 = 2 * 60 * 1000;

/// Offline longer than this (satellite moment − last sync), the platform asks the wallet to
/// rotate its key: 7 days.
pub const KEY_ROTATION_OFFLINE_MS_DEFAULT: i64 = 7 * 24 * HOUR_MS;

/// Farther than this from its own time estimate, a payee's wallet refuses an offline payment's
/// `paid_at_ms`: 10 minutes (both wallets read satellites; the margin covers a payer whose last
/// fix is a few minutes old).
pub const PAID_AT_SKEW_MS_MAX_DEFAULT: i64 = 10 * 60 * 1000;

/// How the platform judges key sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPolicy {
    /// Largest |satellite moment − platform clock|.
    pub satellite_skew_ms_max: i64,
    /// Offline duration past which the platform asks for a key rotation.
    pub key_rotation_offline_ms: i64,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy {
            satellite_skew_ms_max: SATELLITE_SKEW_MS_MAX_DEFAULT,
            key_rotation_offline_ms: KEY_ROTATION_OFFLINE_MS_DEFAULT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_limits_are_consistent() {
        for limits in [OFFLINE_TIER_4, OFFLINE_TIER_2] {
            assert!(limits.single_payment_limit_fen <= limits.cumulative_limit_fen);
            assert!(limits.cumulative_limit_fen <= limits.purse_limit_fen);
            assert!(
                limits.payments_per_sync_max
                    <= dcpipe_schemas::OFFLINE_PAYMENTS_PER_KEY_SET_MAX as i64
            );
            assert!(limits.offline_duration_ms_max < KEY_ROTATION_OFFLINE_MS_DEFAULT);
        }
        assert_eq!(offline_limits_for_tier(4), OFFLINE_TIER_4);
        assert_eq!(offline_limits_for_tier(1), OFFLINE_TIER_2);
    }
}
