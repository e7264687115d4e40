//! Flow 2: offline hard wallets, the pure core.
//!
//! A hard wallet funds an offline purse from its online balance, goes offline, pays other
//! wallets and is paid without a network, keeps time from a satellite source while its own clock
//! drifts, and on reconnection publishes a signed key set with its offline payment records; the
//! platform verifies the set against what it recorded of the wallet, clears each offline payment
//! exactly once, catches double spending, answers with a signed sync result and delivers the
//! remote commands waiting for the wallet (docs/PROTOCOL.md, "Offline wallets").
//!
//! | what | where |
//! |---|---|
//! | satellite time beside a drifting device clock | [`time`] |
//! | tier limits and the platform's bounds | [`limits`] |
//! | the wallet: purse, limits, counter and chain, key sets | [`device`] |
//! | checking an offline payment | [`payment`] |
//! | the platform's checks of a key set, its decision and answer | [`sync`] |
//! | the double-spending rule | [`double_spend`] |
//! | remote control commands | [`control`] |
//! | every institution's platform side in memory: the reference model | [`platform`] |
//!
//! Everything here is pure: time is an argument, the platform's record of a wallet is an
//! argument, and the results are typed. The stages that run it on a bus, with a store, come on
//! top.

pub mod control;
pub mod device;
pub mod double_spend;
pub mod limits;
pub mod payment;
pub mod platform;
pub mod remote;
pub mod stages;
pub mod sync;
pub mod time;

pub use control::{Command, sign_command, verify_command};
pub use device::{
    CommandApplied, HardWallet, KeyRotationRequest, KeySetUpload, PayRefusal, ReceiveRefusal,
    Received, SyncApplied, SyncResultError, WalletError, WalletProvisioning, certify_rotated_key,
    certify_wallet_key, copied_key,
};
pub use double_spend::{
    ClearingDecision, PayerClearing, PayerHistory, PaymentToClear, clear_payer_payments,
};
pub use limits::{OFFLINE_TIER_2, OFFLINE_TIER_4, SyncPolicy, offline_limits_for_tier};
pub use payment::{VerifiedOfflinePayment, verify_offline_payment, verify_offline_payment_frame};
pub use platform::{ClearedPayment, OfflineNetwork, OfflineTotals, SyncOutcome};
pub use sync::{
    KeySetVerdict, PayerStanding, SyncContext, SyncDecision, SyncRejection, VerifiedKeySet,
    WalletRecord, accepted_result, decide_sync, key_fingerprint, key_set_input, rejected_result,
    sign_sync_result, verify_key_set, verify_sync_result,
};
pub use time::{DeviceClock, Drift, SatelliteFix, SatelliteSource, offline_duration_ms};
