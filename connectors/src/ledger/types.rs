//! The words of the ledger: wallets, payments, requests and their per-item results.

use std::collections::BTreeMap;
use std::fmt;

/// A wallet's id, unique within its institution.
pub type WalletId = String;

/// An operating institution's id (also names its ledger file or schema).
pub type InstitutionId = String;

/// Offset of the business day from UTC: the daily limit counts payments per calendar day in
/// China Standard Time (UTC+8, no daylight saving), so the day turns at 16:00 UTC.
pub const BUSINESS_DAY_OFFSET_MS: i64 = 8 * 60 * 60 * 1000;

/// Milliseconds in a day.
pub const MS_PER_DAY: i64 = 24 * 60 * 60 * 1000;

/// Most items one batch call accepts; the pipeline sends a few hundred at a time.
pub const BATCH_ITEMS_MAX: usize = 4096;

/// Largest amount one payment may move: 10^14 fen (one trillion yuan). Larger amounts are
/// refused as [`LedgerRefusal::InvalidAmount`], so sums of a batch never overflow an `i64`.
pub const AMOUNT_FEN_MAX: i64 = 100_000_000_000_000;

/// Longest wallet or institution id, in bytes.
pub const ID_LEN_MAX: usize = 64;

/// Longest reason code, in bytes.
pub const REASON_CODE_LEN_MAX: usize = 64;

/// Most records one [`super::Ledger::expired_reservations`] call returns.
pub const EXPIRED_LIST_MAX: usize = 10_000;

/// Most records one [`super::Ledger::decided_since`] call returns. More than two full batches
/// ([`BATCH_ITEMS_MAX`] each): paging by update time stalls only if more decisions than this
/// were stamped in one millisecond.
pub const DECIDED_LIST_MAX: usize = 10_000;

/// The business day (days since 1970-01-01 in UTC+8) that a payment made at `at_ms` counts in.
pub fn business_day(at_ms: i64) -> i64 {
    at_ms
        .saturating_add(BUSINESS_DAY_OFFSET_MS)
        .div_euclid(MS_PER_DAY)
}

/// A payment's id, chosen by the payer's terminal; the same on both institutions' ledgers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PaymentId(pub [u8; 16]);

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PaymentId({self})")
    }
}

/// The content digest of a submitted payment envelope: the same id with another digest is a
/// conflict, never a duplicate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// A wallet's limits, in fen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalletLimits {
    /// Most the balance plus pending credits may reach through incoming payments.
    pub balance_limit_fen: i64,
    /// Most one outgoing payment may move.
    pub single_payment_limit_fen: i64,
    /// Most the reserved and committed outgoing payments of one business day may add up to.
    pub daily_limit_fen: i64,
    /// Up to this amount no PIN is needed (the pipeline checks it; stored here with the wallet).
    pub password_free_limit_fen: i64,
}

/// A wallet as provisioned by its institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletAccount {
    /// The wallet's id.
    pub wallet_id: WalletId,
    /// The institution holding it: must be the ledger's own.
    pub institution_id: InstitutionId,
    /// The wallet's tier (1 = most verified, 4 = phone only).
    pub tier: u8,
    /// Settled money, in fen: includes holds, excludes pending credits.
    pub balance_fen: i64,
    /// The wallet's limits.
    pub limits: WalletLimits,
    /// A locked wallet neither pays nor receives.
    pub locked: bool,
}

/// A wallet with its money in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletState {
    /// The wallet as provisioned, with its current balance.
    pub account: WalletAccount,
    /// Sum of its reserved outgoing payments (part of the balance, not spendable).
    pub held_fen: i64,
    /// What it can still pay: balance minus holds.
    pub available_fen: i64,
    /// Sum of incoming payments not yet finalized (not part of the balance).
    pub pending_credit_fen: i64,
}

/// The other side of a payment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Party {
    /// Its institution.
    pub institution_id: InstitutionId,
    /// Its wallet at that institution.
    pub wallet_id: WalletId,
}

/// Which side of a payment a record belongs to. An institution can hold both sides of the
/// same payment when payer and payee are both its customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The payer's institution: reserves, commits, voids.
    Payer,
    /// The payee's institution: pending credit, finalization.
    Payee,
}

impl Side {
    /// Stable name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Payer => "payer",
            Side::Payee => "payee",
        }
    }

    /// The side named `name` (as stored).
    pub fn parse(name: &str) -> Option<Side> {
        match name {
            "payer" => Some(Side::Payer),
            "payee" => Some(Side::Payee),
            _ => None,
        }
    }
}

/// Where a payment stands on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PaymentState {
    /// Payer side: the amount is held on the payer wallet until commit, void or expiry.
    Reserved,
    /// Payer side, final: the amount left the payer's balance.
    Committed,
    /// Final: payer side, the hold was released; payee side, a tombstone (the void arrived
    /// before the clearing message, or a late clearing message was refused).
    Voided,
    /// Final: refused before any money was held or credited.
    Rejected,
    /// Payee side: the amount awaits the payer's final decision, not spendable, not in balance.
    PendingCredit,
    /// Payee side, final: the amount was added to the payee's balance.
    Credited,
    /// Payee side, final: the pending credit was cancelled.
    Reversed,
}

impl PaymentState {
    /// Every state, in a stable order.
    pub const ALL: [PaymentState; 7] = [
        PaymentState::Reserved,
        PaymentState::Committed,
        PaymentState::Voided,
        PaymentState::Rejected,
        PaymentState::PendingCredit,
        PaymentState::Credited,
        PaymentState::Reversed,
    ];

    /// Stable name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Reserved => "reserved",
            PaymentState::Committed => "committed",
            PaymentState::Voided => "voided",
            PaymentState::Rejected => "rejected",
            PaymentState::PendingCredit => "pending_credit",
            PaymentState::Credited => "credited",
            PaymentState::Reversed => "reversed",
        }
    }

    /// The state named `name` (as stored).
    pub fn parse(name: &str) -> Option<PaymentState> {
        PaymentState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether no further transition can happen.
    pub fn is_final(self) -> bool {
        !matches!(self, PaymentState::Reserved | PaymentState::PendingCredit)
    }
}

/// One side's record of a payment. A retry returns the stored record, so the caller can send
/// the first answer again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    /// The payment.
    pub payment_id: PaymentId,
    /// Which side this record is.
    pub side: Side,
    /// Where it stands.
    pub state: PaymentState,
    /// Digest of the envelope first seen; `None` only for a payee tombstone.
    pub digest: Option<Digest>,
    /// This institution's wallet (payer's or payee's); `None` only for a payee tombstone.
    pub wallet_id: Option<WalletId>,
    /// The other side (payee for a payer record, payer for a payee record); `None` when unknown
    /// (rejections decided before the ledger, tombstones).
    pub counterparty: Option<Party>,
    /// The amount, in fen (0 on a tombstone).
    pub amount_fen: i64,
    /// Why it was rejected, voided or reversed.
    pub reason_code: Option<String>,
    /// Payer side: when it was paid (decides the business day); payee side: when the clearing
    /// message was made.
    pub paid_at_ms: i64,
    /// When the ledger first recorded it (ledger clock).
    pub created_ms: i64,
    /// When the ledger last changed it (ledger clock).
    pub updated_ms: i64,
    /// Payer side: when an undecided hold is voided.
    pub expires_at_ms: Option<i64>,
}

/// Why a ledger refused to hold or credit an amount. Recorded as a [`PaymentState::Rejected`]
/// record, so a resubmission gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerRefusal {
    /// An id is empty or longer than [`ID_LEN_MAX`] bytes.
    MalformedRequest,
    /// The amount is not in `1..=AMOUNT_FEN_MAX`.
    InvalidAmount,
    /// No such wallet at this institution.
    UnknownWallet,
    /// The wallet is locked.
    WalletLocked,
    /// The amount exceeds the payer's single-payment limit.
    SinglePaymentLimit {
        /// The limit.
        limit_fen: i64,
    },
    /// The amount would take the payer's total of the business day over its daily limit.
    DailyLimit {
        /// The limit.
        limit_fen: i64,
        /// Already reserved or committed that day.
        spent_fen: i64,
    },
    /// The payer's available amount (balance minus holds) is too small.
    InsufficientFunds {
        /// What was available.
        available_fen: i64,
    },
    /// Crediting would take the payee's balance plus pending credits over its balance limit.
    BalanceLimit {
        /// The limit.
        limit_fen: i64,
    },
}

impl LedgerRefusal {
    /// Stable code, stored as the record's reason.
    pub fn reason_code(&self) -> &'static str {
        match self {
            LedgerRefusal::MalformedRequest => "ledger.malformed_request",
            LedgerRefusal::InvalidAmount => "ledger.invalid_amount",
            LedgerRefusal::UnknownWallet => "ledger.unknown_wallet",
            LedgerRefusal::WalletLocked => "ledger.wallet_locked",
            LedgerRefusal::SinglePaymentLimit { .. } => "ledger.single_payment_limit",
            LedgerRefusal::DailyLimit { .. } => "ledger.daily_limit",
            LedgerRefusal::InsufficientFunds { .. } => "ledger.insufficient_funds",
            LedgerRefusal::BalanceLimit { .. } => "ledger.balance_limit",
        }
    }
}

/// Result of provisioning one wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenResult {
    /// The wallet was created with the given balance.
    Created,
    /// It existed already, opened on the same terms, and was left as it is (balance, limits
    /// and lock unchanged): opening the same wallet twice issues its money once.
    AlreadyOpen,
    /// A wallet of this id was opened on other terms (tier, opening balance or limits): refused,
    /// nothing changed.
    Conflict,
}

/// The terms a wallet was opened on, as its issuance record keeps them: the money that entered
/// the system with it and the tier and limits it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpeningTerms {
    /// The wallet's tier.
    pub tier: u8,
    /// Money issued to it at opening, in fen.
    pub amount_fen: i64,
    /// The limits it was opened with.
    pub limits: WalletLimits,
}

impl OpeningTerms {
    /// The terms of opening `account`.
    pub fn of(account: &WalletAccount) -> Self {
        OpeningTerms {
            tier: account.tier,
            amount_fen: account.balance_fen,
            limits: account.limits,
        }
    }
}

/// Payer side: hold `amount_fen` on the payer wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The payment.
    pub payment_id: PaymentId,
    /// Digest of the submitted envelope.
    pub digest: Digest,
    /// The paying wallet (at this institution).
    pub payer_wallet: WalletId,
    /// Who is paid.
    pub payee: Party,
    /// The amount, in fen.
    pub amount_fen: i64,
    /// When it was paid: decides the business day of the daily limit.
    pub paid_at_ms: i64,
    /// When the hold is voided if no decision came.
    pub expires_at_ms: i64,
}

/// Result of one [`ReserveRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveResult {
    /// The amount is now held.
    Reserved(PaymentRecord),
    /// Seen before with the same digest: nothing moved; the stored record tells the first answer.
    Duplicate(PaymentRecord),
    /// Seen before with another digest: nothing moved; the request must be rejected.
    Conflict(PaymentRecord),
    /// Refused and recorded as rejected.
    Refused(LedgerRefusal),
}

/// Payer side: a payment rejected before the ledger (bad signature, expired certificate…),
/// recorded so that a resubmission gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The payment.
    pub payment_id: PaymentId,
    /// Digest of the submitted envelope.
    pub digest: Digest,
    /// The wallet the envelope claims to pay from.
    pub payer_wallet: WalletId,
    /// The amount the envelope claims.
    pub amount_fen: i64,
    /// Why it was rejected (a stable code such as `cert.expired`).
    pub reason_code: String,
    /// When it was decided.
    pub at_ms: i64,
}

/// Result of one [`Rejection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectionResult {
    /// Recorded now.
    Recorded(PaymentRecord),
    /// Seen before with the same digest: the stored record tells the first answer.
    Duplicate(PaymentRecord),
    /// Seen before with another digest.
    Conflict(PaymentRecord),
}

/// Result of one commit or void.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The state changed; the record is the new one.
    Applied(PaymentRecord),
    /// Nothing changed: the payment was already final (possibly with the other outcome, which
    /// the caller sees in the record's state: the first decision stands).
    AlreadyFinal(PaymentRecord),
    /// No such payment on this side.
    NotFound,
}

/// Payee side: record an incoming amount as pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditRequest {
    /// The payment.
    pub payment_id: PaymentId,
    /// Digest of the clearing message's envelope.
    pub digest: Digest,
    /// The receiving wallet (at this institution).
    pub payee_wallet: WalletId,
    /// Who pays.
    pub payer: Party,
    /// The amount, in fen.
    pub amount_fen: i64,
    /// When the clearing message was made.
    pub at_ms: i64,
}

/// Result of one [`CreditRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreditResult {
    /// The amount is pending on the payee wallet.
    Pending(PaymentRecord),
    /// Seen before with the same digest: nothing moved.
    Duplicate(PaymentRecord),
    /// Seen before with another digest: nothing moved.
    Conflict(PaymentRecord),
    /// Refused and recorded as rejected.
    Refused(LedgerRefusal),
    /// The payer's void arrived first: the tombstone refuses this late clearing message.
    AlreadyVoided(PaymentRecord),
}

/// The payer institution's final decision, applied on the payee side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finalization {
    /// The payer committed: credit the payee.
    Completed,
    /// The payer voided: cancel the pending credit.
    Voided {
        /// Why (stable code).
        reason_code: String,
    },
}

/// Result of one finalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalizeResult {
    /// The pending credit went into the payee's balance.
    Credited(PaymentRecord),
    /// The pending credit was cancelled.
    Reversed(PaymentRecord),
    /// No pending credit existed: the void is remembered so a late clearing message is refused.
    Tombstoned(PaymentRecord),
    /// Nothing changed: already final (possibly with the other outcome: compare the state).
    AlreadyFinal(PaymentRecord),
    /// A completion for a payment this ledger never recorded: nothing moved.
    NotFound,
}

/// Money in flight on a ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingTotals {
    /// Sum of holds of reserved outgoing payments (inside the balances).
    pub held_fen: i64,
    /// Sum of pending incoming credits (outside the balances).
    pub pending_credit_fen: i64,
}

/// Most wallets answered by one [`Ledger::wallet_openings`](super::Ledger::wallet_openings) call.
pub const WALLET_OPENINGS_PAGE_MAX: usize = 1_000;

/// A wallet's opening and what its balance became, for an audit: the balance must equal the
/// opening plus the payments that moved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletOpening {
    /// The wallet.
    pub wallet_id: WalletId,
    /// Its opening balance (the issuance record).
    pub opening_fen: i64,
    /// When it was opened (ledger clock).
    pub opened_ms: i64,
    /// Its balance now.
    pub balance_fen: i64,
    /// Holds of its reserved outgoing payments.
    pub held_fen: i64,
    /// Its pending incoming credits.
    pub pending_credit_fen: i64,
    /// Payment records that moved its balance: payer side committed, payee side credited.
    pub moving_payments: u64,
    /// Whether offline money touched it (an offline wallet, a purse account, or the payee of
    /// an offline payment cleared here): moves that the online record does not explain.
    pub offline: bool,
}

/// Number of payment records per side and state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateCounts(pub BTreeMap<(Side, PaymentState), u64>);

impl StateCounts {
    /// How many records of `side` are in `state`.
    pub fn get(&self, side: Side, state: PaymentState) -> u64 {
        self.0.get(&(side, state)).copied().unwrap_or(0)
    }

    /// How many records in all.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_day_turns_at_midnight_china_time() {
        // 2024-01-01T15:59:59.999Z is 23:59:59.999 in UTC+8; one ms later is the next day.
        let before_ms = 1_704_124_799_999;
        assert_eq!(business_day(before_ms) + 1, business_day(before_ms + 1));
        assert_eq!(business_day(before_ms - 3_600_000), business_day(before_ms));
    }

    #[test]
    fn business_day_counts_from_epoch_in_china_time() {
        assert_eq!(business_day(0), 0);
        assert_eq!(business_day(-BUSINESS_DAY_OFFSET_MS - 1), -1);
        assert_eq!(business_day(MS_PER_DAY - BUSINESS_DAY_OFFSET_MS), 1);
    }

    #[test]
    fn state_names_round_trip() {
        for state in PaymentState::ALL {
            assert_eq!(PaymentState::parse(state.as_str()), Some(state));
        }
        assert_eq!(Side::parse("payee"), Some(Side::Payee));
        assert_eq!(PaymentState::parse("spent"), None);
    }
}
