//! Offline wallets in an institution's ledger (flow 2): each wallet's offline purse, the
//! platform's record of the wallet, the offline payments cleared, the loss account, the remote
//! commands waiting for each wallet and the blacklist.
//!
//! How money moves:
//! - **Funding** ([`OfflineLedger::fund_purses`]) moves an amount from a wallet's online
//!   balance to its **purse account**, a wallet row of its own ([`purse_wallet_id`]), in one
//!   transaction: the money stays in the sum of balances.
//! - **Clearing** an offline payment happens in two steps at the payer's institution. First
//!   [`OfflineLedger::commit_offline`] records it (once per payment id) with how it is paid:
//!   from the purse, and from the **loss account** for what the purse cannot cover (the
//!   double-spending rule); the part from the loss account moves into the purse account in the
//!   same transaction, the loss account going below zero by as much. Then the payment takes
//!   the clearing path of every payment ([`super::Ledger::reserve`] on the purse account,
//!   commit, and the payee's institution credits the payee).
//!
//! So, for every ledger:
//!
//! ```text
//! Σ balances (purse accounts included) + money in flight + loss account = issued
//! ```
//!
//! The record's `purse_fen` is what the platform holds the wallet's purse to be (funded minus
//! what its cleared payments took from it); the purse account holds that and the money of
//! cleared payments not yet committed.
//!
//! The platform's record of a wallet is written at the version it was read
//! ([`OfflineLedger::commit_offline`]): two workers that read one record cannot both write it,
//! the second is told its read is stale and decides again.

use std::fmt;

use async_trait::async_trait;

use super::error::LedgerError;
use super::types::{AMOUNT_FEN_MAX, BATCH_ITEMS_MAX, ID_LEN_MAX, PaymentId};

/// What is appended to a wallet's id to name its purse account (letters, digits, `-` and `_`,
/// as every wallet id on the protocol). Opening a wallet whose id ends with it is refused.
pub const PURSE_SUFFIX: &str = "-purse";

/// Longest id of a wallet that can go offline: its purse account's id must fit
/// [`ID_LEN_MAX`].
pub const OFFLINE_WALLET_ID_LEN_MAX: usize = ID_LEN_MAX - PURSE_SUFFIX.len();

/// Most commands [`OfflineLedger::commands_after`] returns.
pub const COMMANDS_LIST_MAX: usize = 256;

/// Longest frame of a queued command or a stored answer, in bytes.
pub const FRAME_LEN_MAX: usize = 64 * 1024;

/// The columns of a record, a clearing and a command, in the order both backends read them.
pub(crate) const RECORD_COLUMNS: &str = "wallet_id, version, key_version, key_fingerprint, \
     last_sync_at_ms, counter, chain_head, purse_fen, funded_fen, purse_limit_fen, \
     single_payment_limit_fen, cumulative_limit_fen, payments_per_sync_max, \
     offline_duration_ms_max, locked_at_ms, blacklisted_at_ms, last_key_set, \
     commands_applied_through, blacklist_version, last_answer, rotation_ordered_at_ms";
pub(crate) const CLEARING_COLUMNS: &str = "payment_id, digest, payer_wallet_id, counter, \
     payee_institution_id, payee_wallet_id, amount_fen, from_purse_fen, from_loss_fen, evidence, \
     paid_at_ms, frame";
pub(crate) const COMMAND_COLUMNS: &str =
    "command_id, wallet_id, sequence, kind, frame, issued_at_ms";

/// The id of the purse account of `wallet_id`.
pub fn purse_wallet_id(wallet_id: &str) -> String {
    format!("{wallet_id}{PURSE_SUFFIX}")
}

/// A wallet's offline limits, as the platform records them (docs/PROTOCOL.md, "Offline
/// wallets", limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineTerms {
    /// Most the purse may hold.
    pub purse_limit_fen: i64,
    /// Most one offline payment may be.
    pub single_payment_limit_fen: i64,
    /// Most the payments between two synchronizations may total.
    pub cumulative_limit_fen: i64,
    /// Most payments between two synchronizations.
    pub payments_per_sync_max: i64,
    /// The preset offline duration.
    pub offline_duration_ms_max: i64,
}

/// A wallet opened for offline use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineOpening {
    /// The wallet (opened online before).
    pub wallet_id: String,
    /// Its key version (1 at issuance).
    pub key_version: i32,
    /// SHA-256 of its key's DER SubjectPublicKeyInfo.
    pub key_fingerprint: [u8; 32],
    /// Its first synchronization moment.
    pub last_sync_at_ms: i64,
    /// Its offline limits.
    pub limits: OfflineTerms,
}

/// What opening a wallet for offline use did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineOpenResult {
    /// Recorded, with an empty purse account.
    Opened,
    /// Recorded before with the same key: left as it is.
    AlreadyOpen,
    /// Recorded before with another key or key version: refused, nothing changed.
    Conflict,
    /// No online wallet of this id at this institution.
    UnknownWallet,
}

/// The platform's record of an offline wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineRecord {
    /// The wallet.
    pub wallet_id: String,
    /// Raised by every write: the version a writer read (see the module documentation).
    pub version: i64,
    /// The key version in force.
    pub key_version: i32,
    /// SHA-256 of the key of that version.
    pub key_fingerprint: [u8; 32],
    /// The last synchronization moment.
    pub last_sync_at_ms: i64,
    /// The counter of the wallet's last offline payment the platform holds.
    pub counter: i64,
    /// The head of its hash chain (32 zero bytes before the first payment).
    pub chain_head: [u8; 32],
    /// What the purse holds as the platform records it.
    pub purse_fen: i64,
    /// Moved into the purse so far (written by funding only).
    pub funded_fen: i64,
    /// The offline limits in force.
    pub limits: OfflineTerms,
    /// Locked since (the wallet's online payments are refused too).
    pub locked_at_ms: Option<i64>,
    /// Blacklisted since.
    pub blacklisted_at_ms: Option<i64>,
    /// Digest of the last accepted key set.
    pub last_key_set: Option<[u8; 32]>,
    /// The sequence of the last remote command the wallet reported applied.
    pub commands_applied_through: i64,
    /// The blacklist version the wallet was last sent.
    pub blacklist_version: i64,
    /// The signed answer to the last accepted key set (a frame), sent again to a redelivery.
    pub last_answer: Option<Vec<u8>>,
    /// Since when the institution orders the wallet to rotate its key, until a key set under a
    /// new key is accepted.
    pub rotation_ordered_at_ms: Option<i64>,
}

/// Moving money from a wallet's online balance into its purse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurseFunding {
    /// Chosen by the caller: funding again with the same id moves nothing.
    pub funding_id: [u8; 16],
    /// The wallet.
    pub wallet_id: String,
    /// The amount, in fen.
    pub amount_fen: i64,
}

/// Why a funding was refused (nothing moved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FundingRefusal {
    /// The amount is not in `1..=AMOUNT_FEN_MAX`.
    InvalidAmount,
    /// The wallet has no offline record (or no online wallet).
    UnknownWallet,
    /// The wallet is locked.
    WalletLocked,
    /// The online balance's available amount is smaller.
    InsufficientFunds,
    /// The purse would hold more than its limit.
    OverPurseLimit,
    /// The funding id was used before for another wallet or amount.
    Conflict,
}

/// What a funding did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FundingResult {
    /// Moved; the purse as the platform records it now.
    Funded {
        /// The purse after the funding.
        purse_fen: i64,
    },
    /// Done before with this id: nothing moved.
    Duplicate,
    /// Refused: nothing moved.
    Refused(FundingRefusal),
}

/// One offline payment cleared at its payer's institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineClearing {
    /// Its payment id (from its digest).
    pub payment_id: PaymentId,
    /// Its offline-payment digest.
    pub digest: [u8; 32],
    /// The paying wallet (of this institution).
    pub payer_wallet_id: String,
    /// The payer's counter it was made under.
    pub counter: i64,
    /// The payee's institution.
    pub payee_institution_id: String,
    /// The payee's wallet.
    pub payee_wallet_id: String,
    /// Its amount.
    pub amount_fen: i64,
    /// Paid from the payer's purse.
    pub from_purse_fen: i64,
    /// Paid from the loss account.
    pub from_loss_fen: i64,
    /// The fraud evidence it is (a reason code), if any.
    pub evidence: Option<String>,
    /// When it was paid (satellite moment).
    pub paid_at_ms: i64,
    /// The signed OfflinePayment frame, kept for the audit.
    pub frame: Vec<u8>,
}

/// A write of one wallet's record, at the version read, with the payments it clears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineUpdate {
    /// The record as it must be after the write; its `version` is the version read, and its
    /// `funded_fen` must be the one read.
    pub record: OfflineRecord,
    /// Payments of this wallet as payer cleared by the write: their `from_purse_fen` together
    /// are what the record's purse lost since the version read.
    pub clearings: Vec<OfflineClearing>,
}

/// What [`OfflineLedger::commit_offline`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineCommit {
    /// Every update written.
    Committed,
    /// The record of this wallet changed since it was read (or vanished): nothing written;
    /// read again and decide again.
    Stale(String),
}

/// A signed remote control command waiting for its wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCommand {
    /// The command's id.
    pub command_id: [u8; 16],
    /// The wallet.
    pub wallet_id: String,
    /// Its number among the wallet's commands, from 1.
    pub sequence: i64,
    /// Its kind (`LOCK`, `UNLOCK`, …), for listings.
    pub kind: String,
    /// The signed RemoteControlCommand frame.
    pub frame: Vec<u8>,
    /// When it was issued.
    pub issued_at_ms: i64,
}

/// What queuing a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueResult {
    /// Queued.
    Queued,
    /// Queued before with this id: left as it was.
    Duplicate,
    /// The wallet already has another command with this sequence: number it again.
    SequenceTaken,
    /// No offline record of the wallet.
    UnknownWallet,
}

/// What [`OfflineLedger::return_voided`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoidedReturn {
    /// Given back; the payer's purse as the platform records it now.
    Returned {
        /// The purse after the return.
        purse_fen: i64,
    },
    /// Given back before: nothing moved.
    AlreadyReturned,
    /// No offline payment cleared here under this id (an online payment): nothing to do.
    NotOffline,
    /// The payment is not voided at this (its payer's) institution: nothing moved.
    NotVoided,
}

/// The money of offline wallets in one ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OfflineTotals {
    /// Moved from online balances into purses.
    pub funded_fen: i64,
    /// The purses as the platform records them.
    pub purses_fen: i64,
    /// The purse accounts' balances (the purses and cleared payments not yet committed).
    pub purse_accounts_fen: i64,
    /// Offline payments cleared here as payer's institution (those voided afterwards, their
    /// money given back, left out).
    pub cleared_fen: i64,
    /// Of which paid from the loss account.
    pub from_loss_fen: i64,
    /// The loss account (0 or below).
    pub loss_account_fen: i64,
}

/// The offline side of an institution's ledger (see the module documentation). Every call
/// runs in one database transaction.
#[async_trait]
pub trait OfflineLedger: Send + Sync + fmt::Debug {
    /// Records wallets for offline use, each with an empty purse account.
    async fn open_offline(
        &self,
        openings: &[OfflineOpening],
    ) -> Result<Vec<OfflineOpenResult>, LedgerError>;

    /// Moves money from online balances into purses; one result per funding, in order.
    async fn fund_purses(
        &self,
        fundings: &[PurseFunding],
    ) -> Result<Vec<FundingResult>, LedgerError>;

    /// The record of one offline wallet.
    async fn offline_wallet(&self, wallet_id: &str) -> Result<Option<OfflineRecord>, LedgerError>;

    /// The payments cleared for `payer_wallet_id` under any of `counters`, by counter then
    /// digest.
    async fn offline_cleared(
        &self,
        payer_wallet_id: &str,
        counters: &[i64],
    ) -> Result<Vec<OfflineClearing>, LedgerError>;

    /// One cleared payment by its id.
    async fn offline_clearing(
        &self,
        payment_id: &PaymentId,
    ) -> Result<Option<OfflineClearing>, LedgerError>;

    /// Writes records at the versions read, with their clearings, the loss account, the purse
    /// accounts, the online lock and the blacklist (a record newly blacklisted is appended to
    /// it), all or nothing. A clearing already recorded with the same digest is left as it
    /// is; with another digest it is an integrity error.
    async fn commit_offline(&self, updates: &[OfflineUpdate])
    -> Result<OfflineCommit, LedgerError>;

    /// Gives back what an offline payment voided on the clearing path (its payee's institution
    /// refused the credit, or its reservation expired) took when it cleared: the part from the
    /// purse to the payer's record, the part from the loss account from the purse account back
    /// to the loss account (the void already released the whole amount into the purse
    /// account). Once per payment; the record's version is raised.
    async fn return_voided(&self, payment_id: &PaymentId) -> Result<VoidedReturn, LedgerError>;

    /// Queues a signed command for its wallet.
    async fn queue_command(&self, command: &QueuedCommand) -> Result<QueueResult, LedgerError>;

    /// The highest sequence of a wallet's commands (0 when none).
    async fn last_command_sequence(&self, wallet_id: &str) -> Result<i64, LedgerError>;

    /// The commands of a wallet after `sequence`, in sequence order, at most `limit` (capped
    /// at [`COMMANDS_LIST_MAX`]).
    async fn commands_after(
        &self,
        wallet_id: &str,
        sequence: i64,
        limit: usize,
    ) -> Result<Vec<QueuedCommand>, LedgerError>;

    /// Adds wallets (of any institution) to the blacklist; a wallet listed before keeps its
    /// place. Returns the list's version after (its length).
    async fn blacklist_add(&self, wallet_ids: &[String], at_ms: i64) -> Result<i64, LedgerError>;

    /// The blacklist, in the order wallets were listed; its version is its length.
    async fn blacklist(&self) -> Result<Vec<String>, LedgerError>;

    /// The money of offline wallets.
    async fn offline_totals(&self) -> Result<OfflineTotals, LedgerError>;
}

pub(crate) fn check_openings(openings: &[OfflineOpening]) -> Result<(), LedgerError> {
    check_len(openings.len())?;
    for opening in openings {
        check_wallet_id(&opening.wallet_id)?;
        check_terms(&opening.limits)?;
        if opening.key_version < 1 {
            return Err(LedgerError::invalid_input("key versions start at 1"));
        }
    }
    Ok(())
}

pub(crate) fn check_fundings(fundings: &[PurseFunding]) -> Result<(), LedgerError> {
    check_len(fundings.len())?;
    fundings
        .iter()
        .try_for_each(|funding| check_wallet_id(&funding.wallet_id))
}

pub(crate) fn check_updates(updates: &[OfflineUpdate]) -> Result<(), LedgerError> {
    check_len(updates.iter().map(|u| 1 + u.clearings.len()).sum())?;
    for update in updates {
        let record = &update.record;
        check_wallet_id(&record.wallet_id)?;
        check_terms(&record.limits)?;
        if record.purse_fen < 0 || record.counter < 0 || record.commands_applied_through < 0 {
            return Err(LedgerError::invalid_input(
                "purse, counter and applied commands must not be negative",
            ));
        }
        if record
            .last_answer
            .as_ref()
            .is_some_and(|a| a.len() > FRAME_LEN_MAX)
        {
            return Err(LedgerError::invalid_input("answer frame too long"));
        }
        for clearing in &update.clearings {
            let amounts_valid = (1..=AMOUNT_FEN_MAX).contains(&clearing.amount_fen)
                && clearing.from_purse_fen >= 0
                && clearing.from_loss_fen >= 0
                && clearing.from_purse_fen + clearing.from_loss_fen == clearing.amount_fen;
            if !amounts_valid {
                return Err(LedgerError::invalid_input(format!(
                    "offline payment {}: the purse and loss parts must add up to its amount",
                    clearing.payment_id
                )));
            }
            if clearing.payer_wallet_id != record.wallet_id {
                return Err(LedgerError::invalid_input(format!(
                    "offline payment {} is not paid by {}",
                    clearing.payment_id, record.wallet_id
                )));
            }
            if clearing.frame.len() > FRAME_LEN_MAX
                || clearing.payee_wallet_id.is_empty()
                || clearing.payee_wallet_id.len() > ID_LEN_MAX
                || clearing.payee_institution_id.is_empty()
                || clearing.payee_institution_id.len() > ID_LEN_MAX
            {
                return Err(LedgerError::invalid_input(format!(
                    "offline payment {}: malformed payee or frame",
                    clearing.payment_id
                )));
            }
        }
    }
    Ok(())
}

/// Checks a write against the record it replaces (read inside the write's transaction), and
/// returns what it moves from the loss account. Money conservation of the write: the purse
/// loses exactly what the new clearings take from it.
pub(crate) fn apply_update(
    stored: &OfflineRecord,
    update: &OfflineUpdate,
    new_clearings: &[&OfflineClearing],
) -> Result<i64, LedgerError> {
    let taken_fen: i64 = new_clearings.iter().map(|c| c.from_purse_fen).sum();
    if stored.purse_fen - taken_fen != update.record.purse_fen {
        return Err(LedgerError::integrity(format!(
            "wallet {}: purse {} minus the {} its new clearings take is not {}",
            stored.wallet_id, stored.purse_fen, taken_fen, update.record.purse_fen
        )));
    }
    if update.record.funded_fen != stored.funded_fen {
        return Err(LedgerError::invalid_input(
            "only funding changes what was funded",
        ));
    }
    Ok(new_clearings.iter().map(|c| c.from_loss_fen).sum())
}

/// Why a funding is refused, if it is, given the wallet's record and its online available
/// amount and lock.
pub(crate) fn funding_refusal(
    record: &OfflineRecord,
    available_fen: i64,
    locked: bool,
    funding: &PurseFunding,
) -> Option<FundingRefusal> {
    if locked || record.locked_at_ms.is_some() || record.blacklisted_at_ms.is_some() {
        Some(FundingRefusal::WalletLocked)
    } else if available_fen < funding.amount_fen {
        Some(FundingRefusal::InsufficientFunds)
    } else if record.purse_fen + funding.amount_fen > record.limits.purse_limit_fen {
        Some(FundingRefusal::OverPurseLimit)
    } else {
        None
    }
}

pub(crate) fn check_command(command: &QueuedCommand) -> Result<(), LedgerError> {
    check_wallet_id(&command.wallet_id)?;
    if command.sequence < 1 || command.frame.len() > FRAME_LEN_MAX || command.kind.len() > 32 {
        return Err(LedgerError::invalid_input(
            "a command has a sequence from 1, a short kind and a frame within bounds",
        ));
    }
    Ok(())
}

pub(crate) fn check_blacklisted(wallet_ids: &[String]) -> Result<(), LedgerError> {
    check_len(wallet_ids.len())?;
    if wallet_ids
        .iter()
        .any(|id| id.is_empty() || id.len() > ID_LEN_MAX)
    {
        return Err(LedgerError::invalid_input(format!(
            "wallet ids must have 1 to {ID_LEN_MAX} bytes"
        )));
    }
    Ok(())
}

fn check_len(len: usize) -> Result<(), LedgerError> {
    if len > BATCH_ITEMS_MAX {
        return Err(LedgerError::invalid_input(format!(
            "batch of {len} items exceeds {BATCH_ITEMS_MAX}"
        )));
    }
    Ok(())
}

fn check_wallet_id(wallet_id: &str) -> Result<(), LedgerError> {
    if wallet_id.is_empty() || wallet_id.len() > OFFLINE_WALLET_ID_LEN_MAX {
        return Err(LedgerError::invalid_input(format!(
            "an offline wallet's id must have 1 to {OFFLINE_WALLET_ID_LEN_MAX} bytes"
        )));
    }
    Ok(())
}

fn check_terms(terms: &OfflineTerms) -> Result<(), LedgerError> {
    let valid = (0..=AMOUNT_FEN_MAX).contains(&terms.purse_limit_fen)
        && (0..=AMOUNT_FEN_MAX).contains(&terms.single_payment_limit_fen)
        && (0..=AMOUNT_FEN_MAX).contains(&terms.cumulative_limit_fen)
        && terms.payments_per_sync_max >= 0
        && terms.offline_duration_ms_max >= 0;
    if !valid {
        return Err(LedgerError::invalid_input(
            "offline limits must be within 0 and the largest amount",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerErrorKind;

    const TERMS: OfflineTerms = OfflineTerms {
        purse_limit_fen: 100_000,
        single_payment_limit_fen: 50_000,
        cumulative_limit_fen: 100_000,
        payments_per_sync_max: 20,
        offline_duration_ms_max: 86_400_000,
    };

    fn record(purse_fen: i64) -> OfflineRecord {
        OfflineRecord {
            wallet_id: "w1".to_owned(),
            version: 3,
            key_version: 1,
            key_fingerprint: [1; 32],
            last_sync_at_ms: 0,
            counter: 0,
            chain_head: [0; 32],
            purse_fen,
            funded_fen: 10_000,
            limits: TERMS,
            locked_at_ms: None,
            blacklisted_at_ms: None,
            last_key_set: None,
            commands_applied_through: 0,
            blacklist_version: 0,
            last_answer: None,
            rotation_ordered_at_ms: None,
        }
    }

    fn clearing(from_purse_fen: i64, from_loss_fen: i64) -> OfflineClearing {
        OfflineClearing {
            payment_id: PaymentId([1; 16]),
            digest: [2; 32],
            payer_wallet_id: "w1".to_owned(),
            counter: 1,
            payee_institution_id: "oi02".to_owned(),
            payee_wallet_id: "w2".to_owned(),
            amount_fen: from_purse_fen + from_loss_fen,
            from_purse_fen,
            from_loss_fen,
            evidence: None,
            paid_at_ms: 5,
            frame: vec![0],
        }
    }

    #[test]
    fn a_write_takes_from_the_purse_exactly_what_its_clearings_take() {
        let update = OfflineUpdate {
            record: record(4_000),
            clearings: vec![clearing(6_000, 500)],
        };
        let refs: Vec<&OfflineClearing> = update.clearings.iter().collect();
        assert_eq!(
            apply_update(&record(10_000), &update, &refs).ok(),
            Some(500)
        );
        let err = apply_update(&record(9_000), &update, &refs).expect_err("purse differs");
        assert_eq!(err.kind(), LedgerErrorKind::Integrity);
    }

    #[test]
    fn clearing_parts_must_add_up_to_the_amount() {
        let mut bad = clearing(100, 0);
        bad.amount_fen = 150;
        let update = OfflineUpdate {
            record: record(0),
            clearings: vec![bad],
        };
        let err = check_updates(&[update]).expect_err("parts");
        assert_eq!(err.kind(), LedgerErrorKind::InvalidInput);
    }

    #[test]
    fn a_purse_account_id_fits_the_ledger_ids() {
        let longest = "w".repeat(OFFLINE_WALLET_ID_LEN_MAX);
        assert_eq!(purse_wallet_id(&longest).len(), ID_LEN_MAX);
        assert!(check_wallet_id(&format!("{longest}w")).is_err());
    }
}
