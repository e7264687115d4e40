//! Small builders for wallets, requests and ids, so scenarios say only what matters to them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dcpipe_connectors::ledger::{
    CreditRequest, Digest, Ledger, MS_PER_DAY, OpenResult, Party, PaymentId, ReserveRequest,
    WalletAccount, WalletLimits,
};

/// The payer's institution in two-institution scenarios.
pub(crate) const PAYER_OI: &str = "oi-payer";
/// The payee's institution.
pub(crate) const PAYEE_OI: &str = "oi-payee";

/// 2025-01-01T00:00:00+08:00 (2024-12-31T16:00:00Z): the start of a business day.
pub(crate) const DAY_START_MS: i64 = 1_735_660_800_000;
/// Noon of that business day.
pub(crate) const NOON_MS: i64 = DAY_START_MS + MS_PER_DAY / 2;
/// How long a hold lives in the scenarios.
pub(crate) const HOLD_MS: i64 = 60_000;

/// Limits of a tier-4 wallet (phone only), in fen: balance 10,000 CNY, single payment 2,000,
/// daily 5,000, password-free 1,000.
pub(crate) const TIER4: WalletLimits = WalletLimits {
    balance_limit_fen: 1_000_000,
    single_payment_limit_fen: 200_000,
    daily_limit_fen: 500_000,
    password_free_limit_fen: 100_000,
};

/// Limits high enough never to refuse (for scenarios about something else).
pub(crate) const UNLIMITED: WalletLimits = WalletLimits {
    balance_limit_fen: i64::MAX / 4,
    single_payment_limit_fen: i64::MAX / 4,
    daily_limit_fen: i64::MAX / 4,
    password_free_limit_fen: 0,
};

/// A tier-4 wallet of `institution` holding `balance_fen`.
pub(crate) fn account(institution: &str, wallet_id: &str, balance_fen: i64) -> WalletAccount {
    WalletAccount {
        wallet_id: wallet_id.to_owned(),
        institution_id: institution.to_owned(),
        tier: 4,
        balance_fen,
        limits: TIER4,
        locked: false,
    }
}

/// Opens wallets with `(wallet_id, balance_fen, limits)` on `ledger`, asserting they are new.
pub(crate) async fn open(ledger: &dyn Ledger, wallets: &[(&str, i64, WalletLimits)]) {
    let accounts: Vec<WalletAccount> = wallets
        .iter()
        .map(|(id, balance_fen, limits)| WalletAccount {
            limits: *limits,
            ..account(ledger.institution_id(), id, *balance_fen)
        })
        .collect();
    let results = ledger.open_wallets(&accounts).await.expect("open wallets");
    assert_eq!(results, vec![OpenResult::Created; accounts.len()]);
}

/// Payment id number `n`.
pub(crate) fn pid(n: u64) -> PaymentId {
    let mut bytes = [0u8; 16];
    bytes[8..].copy_from_slice(&n.to_be_bytes());
    PaymentId(bytes)
}

/// The digest of version `version` of payment `n`'s envelope.
pub(crate) fn digest(n: u64, version: u8) -> Digest {
    let mut bytes = [version; 32];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    Digest(bytes)
}

/// Payment `n` of `amount_fen` from `payer_wallet` to the payee institution's wallet `b1`,
/// paid at noon of the scenario day.
pub(crate) fn reserve(n: u64, payer_wallet: &str, amount_fen: i64) -> ReserveRequest {
    reserve_at(n, payer_wallet, amount_fen, NOON_MS)
}

/// Like [`reserve`], paid at `paid_at_ms`.
pub(crate) fn reserve_at(
    n: u64,
    payer_wallet: &str,
    amount_fen: i64,
    paid_at_ms: i64,
) -> ReserveRequest {
    ReserveRequest {
        payment_id: pid(n),
        digest: digest(n, 1),
        payer_wallet: payer_wallet.to_owned(),
        payee: Party {
            institution_id: PAYEE_OI.to_owned(),
            wallet_id: "b1".to_owned(),
        },
        amount_fen,
        paid_at_ms,
        expires_at_ms: paid_at_ms + HOLD_MS,
    }
}

/// The clearing message of payment `n` to `payee_wallet`, from the payer institution's `a1`.
pub(crate) fn credit(n: u64, payee_wallet: &str, amount_fen: i64) -> CreditRequest {
    CreditRequest {
        payment_id: pid(n),
        digest: digest(n, 1),
        payee_wallet: payee_wallet.to_owned(),
        payer: Party {
            institution_id: PAYER_OI.to_owned(),
            wallet_id: "a1".to_owned(),
        },
        amount_fen,
        at_ms: NOON_MS,
    }
}

/// A deterministic pseudo-random sequence (64-bit LCG), so concurrent scenarios replay.
#[derive(Debug, Clone)]
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    /// The next number below `bound`.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

/// How long [`clock_past`] waits for the clock to reach the next millisecond.
const CLOCK_TICK_DEADLINE: Duration = Duration::from_secs(2);

/// The wall clock in ms since the epoch: the ledger clock that stamps records.
pub(crate) fn wall_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since_epoch.as_millis()).expect("ms fit in i64")
}

/// Waits until the ledger clock has passed `stamp_ms`, so that the next change gets a later
/// update stamp than the one that ended at `stamp_ms`.
pub(crate) async fn clock_past(stamp_ms: i64) {
    let deadline = Instant::now() + CLOCK_TICK_DEADLINE;
    while wall_ms() <= stamp_ms {
        assert!(
            Instant::now() < deadline,
            "the clock did not pass {stamp_ms} ms"
        );
        tokio::task::yield_now().await;
    }
}
