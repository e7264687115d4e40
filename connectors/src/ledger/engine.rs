//! The money rules, written once for every backend.
//!
//! A backend runs each batch as: open a transaction, load (and lock) the rows the batch names
//! into a [`Working`] set, let the batch's [`Op::apply`] decide every item in order against that
//! in-memory state, then write back the changed rows and commit. The rules never touch a
//! database, so SQLite and PostgreSQL cannot drift apart, and later items of a batch see the
//! effects of earlier ones (two reservations on one wallet in one batch share its funds).

use std::collections::{BTreeSet, HashMap};

use super::error::LedgerError;
use super::types::{
    AMOUNT_FEN_MAX, BATCH_ITEMS_MAX, CreditRequest, CreditResult, Finalization, FinalizeResult,
    ID_LEN_MAX, LedgerRefusal, OpenResult, OpeningTerms, Party, PaymentId, PaymentRecord,
    PaymentState, REASON_CODE_LEN_MAX, Rejection, RejectionResult, ReserveRequest, ReserveResult,
    Side, Transition, WalletAccount, WalletId, WalletState, business_day,
};

/// A payment record's key: one record per payment and side.
pub(crate) type PaymentKey = (PaymentId, Side);

/// A wallet row with its money in flight, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalletRow {
    pub(crate) account: WalletAccount,
    pub(crate) held_fen: i64,
    pub(crate) pending_credit_fen: i64,
}

impl WalletRow {
    pub(crate) fn state(&self) -> WalletState {
        WalletState {
            account: self.account.clone(),
            held_fen: self.held_fen,
            available_fen: self.account.balance_fen - self.held_fen,
            pending_credit_fen: self.pending_credit_fen,
        }
    }

    /// The stored invariants of one wallet; a violation aborts the batch.
    fn check(&self) -> Result<(), LedgerError> {
        if self.held_fen < 0
            || self.pending_credit_fen < 0
            || self.account.balance_fen < self.held_fen
        {
            return Err(LedgerError::integrity(format!(
                "wallet {}: balance {} held {} pending {}",
                self.account.wallet_id,
                self.account.balance_fen,
                self.held_fen,
                self.pending_credit_fen
            )));
        }
        Ok(())
    }
}

/// The rows one batch works on, and which of them it changed.
#[derive(Debug, Default)]
pub(crate) struct Working {
    pub(crate) now_ms: i64,
    /// Loaded wallets; a wallet the batch names that is absent here does not exist.
    pub(crate) wallets: HashMap<WalletId, WalletRow>,
    /// Loaded payment records; absent means never seen.
    pub(crate) payments: HashMap<PaymentKey, PaymentRecord>,
    /// Daily totals per (wallet, business day); absent means zero.
    pub(crate) daily: HashMap<(WalletId, i64), i64>,
    inserted: BTreeSet<PaymentKey>,
    updated: BTreeSet<PaymentKey>,
    dirty_wallets: BTreeSet<WalletId>,
    dirty_daily: BTreeSet<(WalletId, i64)>,
}

impl Working {
    pub(crate) fn new(now_ms: i64) -> Self {
        Working {
            now_ms,
            ..Working::default()
        }
    }

    /// New payment records, in key order (the order inserts lock index entries in).
    pub(crate) fn inserted(&self) -> impl Iterator<Item = &PaymentRecord> {
        self.inserted.iter().filter_map(|k| self.payments.get(k))
    }

    /// Changed existing payment records, in key order.
    pub(crate) fn updated(&self) -> impl Iterator<Item = &PaymentRecord> {
        self.updated.iter().filter_map(|k| self.payments.get(k))
    }

    /// Changed wallets, in id order.
    pub(crate) fn dirty_wallets(&self) -> impl Iterator<Item = &WalletRow> {
        self.dirty_wallets
            .iter()
            .filter_map(|id| self.wallets.get(id))
    }

    /// Changed daily totals, in key order.
    pub(crate) fn dirty_daily(&self) -> impl Iterator<Item = (&WalletId, i64, i64)> {
        self.dirty_daily.iter().map(|key| {
            let spent_fen = self.daily.get(key).copied().unwrap_or(0);
            (&key.0, key.1, spent_fen)
        })
    }

    fn insert_payment(&mut self, record: PaymentRecord) {
        let key = (record.payment_id, record.side);
        self.inserted.insert(key);
        self.payments.insert(key, record);
    }

    fn update_payment(&mut self, record: PaymentRecord) {
        let key = (record.payment_id, record.side);
        if !self.inserted.contains(&key) {
            self.updated.insert(key);
        }
        self.payments.insert(key, record);
    }

    /// Applies `change` to a loaded wallet and checks its invariants afterwards.
    fn change_wallet(
        &mut self,
        wallet_id: &str,
        change: impl FnOnce(&mut WalletRow) -> Option<()>,
    ) -> Result<(), LedgerError> {
        let Some(row) = self.wallets.get_mut(wallet_id) else {
            return Err(LedgerError::integrity(format!(
                "wallet {wallet_id} of an open payment is missing"
            )));
        };
        if change(row).is_none() {
            return Err(LedgerError::integrity(format!(
                "wallet {wallet_id}: amount overflow"
            )));
        }
        row.check()?;
        self.dirty_wallets.insert(wallet_id.to_owned());
        Ok(())
    }

    fn add_daily(&mut self, wallet_id: &str, day: i64, delta_fen: i64) -> Result<(), LedgerError> {
        let key = (wallet_id.to_owned(), day);
        let spent_fen = self.daily.get(&key).copied().unwrap_or(0);
        let next_fen = spent_fen
            .checked_add(delta_fen)
            .filter(|v| *v >= 0)
            .ok_or_else(|| {
                LedgerError::integrity(format!(
                    "daily total of {wallet_id} on day {day} would be {spent_fen} + {delta_fen}"
                ))
            })?;
        self.daily.insert(key.clone(), next_fen);
        self.dirty_daily.insert(key);
        Ok(())
    }
}

/// One kind of batch: which rows it needs, and the rules that decide each item.
pub(crate) trait Op: Send + Sync + 'static {
    /// The per-item result.
    type Item: Send + 'static;

    /// The operation's name, for metrics and logs.
    const NAME: &'static str;

    /// Number of items.
    fn len(&self) -> usize;

    /// The side of every payment record this batch touches.
    fn side(&self) -> Side;

    /// Checks limits on the batch itself (size, reason codes chosen by the caller): a violation
    /// refuses it whole. Malformed content of one item is refused per item instead.
    fn validate(&self) -> Result<(), LedgerError>;

    /// The payment ids to load, sorted and without repeats (the lock order).
    fn payment_ids(&self) -> Vec<PaymentId>;

    /// The wallets to load, given the loaded payments; sorted (the lock order).
    fn wallet_ids(&self, payments: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<WalletId>;

    /// The daily totals to load, given the loaded payments.
    fn daily_keys(
        &self,
        payments: &HashMap<PaymentKey, PaymentRecord>,
    ) -> BTreeSet<(WalletId, i64)>;

    /// Decides every item in order against `working`, recording the changes there.
    fn apply(&self, working: &mut Working) -> Result<Vec<Self::Item>, LedgerError>;
}

fn check_batch_len(len: usize) -> Result<(), LedgerError> {
    if len > BATCH_ITEMS_MAX {
        return Err(LedgerError::invalid_input(format!(
            "batch of {len} items exceeds {BATCH_ITEMS_MAX}"
        )));
    }
    Ok(())
}

fn check_reason(reason_code: &str) -> Result<(), LedgerError> {
    if reason_code.is_empty() || reason_code.len() > REASON_CODE_LEN_MAX {
        return Err(LedgerError::invalid_input(format!(
            "reason code must have 1 to {REASON_CODE_LEN_MAX} bytes"
        )));
    }
    Ok(())
}

fn check_id(what: &str, id: &str) -> Result<(), LedgerError> {
    if id.is_empty() || id.len() > ID_LEN_MAX {
        return Err(LedgerError::invalid_input(format!(
            "{what} must have 1 to {ID_LEN_MAX} bytes"
        )));
    }
    Ok(())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= ID_LEN_MAX
}

fn valid_party(party: &Party) -> bool {
    valid_id(&party.institution_id) && valid_id(&party.wallet_id)
}

/// An id as stored on a record: at most [`ID_LEN_MAX`] bytes, cut on a character boundary, so
/// that an oversized id from a bad envelope is kept for the audit without bloating the ledger.
fn clip(id: &str) -> String {
    let mut end = id.len().min(ID_LEN_MAX);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    id[..end].to_owned()
}

fn clip_party(party: &Party) -> Party {
    Party {
        institution_id: clip(&party.institution_id),
        wallet_id: clip(&party.wallet_id),
    }
}

fn sorted_ids(ids: impl Iterator<Item = PaymentId>) -> Vec<PaymentId> {
    ids.collect::<BTreeSet<_>>().into_iter().collect()
}

fn valid_amount(amount_fen: i64) -> bool {
    (1..=AMOUNT_FEN_MAX).contains(&amount_fen)
}

fn record_wallets(
    ids: &[PaymentId],
    side: Side,
    payments: &HashMap<PaymentKey, PaymentRecord>,
) -> BTreeSet<WalletId> {
    ids.iter()
        .filter_map(|id| payments.get(&(*id, side)))
        .filter_map(|r| r.wallet_id.clone())
        .collect()
}

/// Reserve (payer side).
#[derive(Debug)]
pub(crate) struct ReserveOp(pub(crate) Vec<ReserveRequest>);

impl ReserveOp {
    fn refusal(&self, working: &Working, request: &ReserveRequest) -> Option<LedgerRefusal> {
        if !valid_id(&request.payer_wallet) || !valid_party(&request.payee) {
            return Some(LedgerRefusal::MalformedRequest);
        }
        if !valid_amount(request.amount_fen) {
            return Some(LedgerRefusal::InvalidAmount);
        }
        let Some(wallet) = working.wallets.get(&request.payer_wallet) else {
            return Some(LedgerRefusal::UnknownWallet);
        };
        let limits = &wallet.account.limits;
        if wallet.account.locked {
            return Some(LedgerRefusal::WalletLocked);
        }
        if request.amount_fen > limits.single_payment_limit_fen {
            return Some(LedgerRefusal::SinglePaymentLimit {
                limit_fen: limits.single_payment_limit_fen,
            });
        }
        let day = business_day(request.paid_at_ms);
        let spent_fen = working
            .daily
            .get(&(request.payer_wallet.clone(), day))
            .copied()
            .unwrap_or(0);
        if spent_fen.saturating_add(request.amount_fen) > limits.daily_limit_fen {
            return Some(LedgerRefusal::DailyLimit {
                limit_fen: limits.daily_limit_fen,
                spent_fen,
            });
        }
        let available_fen = wallet.account.balance_fen - wallet.held_fen;
        if request.amount_fen > available_fen {
            return Some(LedgerRefusal::InsufficientFunds { available_fen });
        }
        None
    }
}

impl Op for ReserveOp {
    type Item = ReserveResult;

    const NAME: &'static str = "reserve";

    fn len(&self) -> usize {
        self.0.len()
    }

    fn side(&self) -> Side {
        Side::Payer
    }

    fn validate(&self) -> Result<(), LedgerError> {
        check_batch_len(self.0.len())
    }

    fn payment_ids(&self) -> Vec<PaymentId> {
        sorted_ids(self.0.iter().map(|r| r.payment_id))
    }

    fn wallet_ids(&self, _: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<WalletId> {
        self.0.iter().map(|r| r.payer_wallet.clone()).collect()
    }

    fn daily_keys(&self, _: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<(WalletId, i64)> {
        self.0
            .iter()
            .map(|r| (r.payer_wallet.clone(), business_day(r.paid_at_ms)))
            .collect()
    }

    fn apply(&self, working: &mut Working) -> Result<Vec<ReserveResult>, LedgerError> {
        let mut results = Vec::with_capacity(self.0.len());
        for request in &self.0 {
            if let Some(existing) = working.payments.get(&(request.payment_id, Side::Payer)) {
                results.push(if existing.digest == Some(request.digest) {
                    ReserveResult::Duplicate(existing.clone())
                } else {
                    ReserveResult::Conflict(existing.clone())
                });
                continue;
            }
            let refusal = self.refusal(working, request);
            let mut record = PaymentRecord {
                payment_id: request.payment_id,
                side: Side::Payer,
                state: PaymentState::Reserved,
                digest: Some(request.digest),
                wallet_id: Some(clip(&request.payer_wallet)),
                counterparty: Some(clip_party(&request.payee)),
                amount_fen: request.amount_fen,
                reason_code: None,
                paid_at_ms: request.paid_at_ms,
                created_ms: working.now_ms,
                updated_ms: working.now_ms,
                expires_at_ms: Some(request.expires_at_ms),
            };
            match refusal {
                Some(refusal) => {
                    record.state = PaymentState::Rejected;
                    record.reason_code = Some(refusal.reason_code().to_owned());
                    record.expires_at_ms = None;
                    working.insert_payment(record);
                    results.push(ReserveResult::Refused(refusal));
                }
                None => {
                    let amount_fen = request.amount_fen;
                    working.change_wallet(&request.payer_wallet, |w| {
                        w.held_fen = w.held_fen.checked_add(amount_fen)?;
                        Some(())
                    })?;
                    working.add_daily(
                        &request.payer_wallet,
                        business_day(request.paid_at_ms),
                        amount_fen,
                    )?;
                    working.insert_payment(record.clone());
                    results.push(ReserveResult::Reserved(record));
                }
            }
        }
        Ok(results)
    }
}

/// Record rejections decided before the ledger (payer side).
#[derive(Debug)]
pub(crate) struct RejectOp(pub(crate) Vec<Rejection>);

impl Op for RejectOp {
    type Item = RejectionResult;

    const NAME: &'static str = "record_rejections";

    fn len(&self) -> usize {
        self.0.len()
    }

    fn side(&self) -> Side {
        Side::Payer
    }

    fn validate(&self) -> Result<(), LedgerError> {
        check_batch_len(self.0.len())?;
        self.0.iter().try_for_each(|r| check_reason(&r.reason_code))
    }

    fn payment_ids(&self) -> Vec<PaymentId> {
        sorted_ids(self.0.iter().map(|r| r.payment_id))
    }

    fn wallet_ids(&self, _: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<WalletId> {
        BTreeSet::new()
    }

    fn daily_keys(&self, _: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<(WalletId, i64)> {
        BTreeSet::new()
    }

    fn apply(&self, working: &mut Working) -> Result<Vec<RejectionResult>, LedgerError> {
        let mut results = Vec::with_capacity(self.0.len());
        for rejection in &self.0 {
            if let Some(existing) = working.payments.get(&(rejection.payment_id, Side::Payer)) {
                results.push(if existing.digest == Some(rejection.digest) {
                    RejectionResult::Duplicate(existing.clone())
                } else {
                    RejectionResult::Conflict(existing.clone())
                });
                continue;
            }
            let record = PaymentRecord {
                payment_id: rejection.payment_id,
                side: Side::Payer,
                state: PaymentState::Rejected,
                digest: Some(rejection.digest),
                wallet_id: Some(clip(&rejection.payer_wallet)),
                counterparty: None,
                amount_fen: rejection.amount_fen,
                reason_code: Some(rejection.reason_code.clone()),
                paid_at_ms: rejection.at_ms,
                created_ms: working.now_ms,
                updated_ms: working.now_ms,
                expires_at_ms: None,
            };
            working.insert_payment(record.clone());
            results.push(RejectionResult::Recorded(record));
        }
        Ok(results)
    }
}

/// Commit reserved payments (payer side): the amount leaves the balance.
#[derive(Debug)]
pub(crate) struct CommitOp(pub(crate) Vec<PaymentId>);

impl Op for CommitOp {
    type Item = Transition;

    const NAME: &'static str = "commit";

    fn len(&self) -> usize {
        self.0.len()
    }

    fn side(&self) -> Side {
        Side::Payer
    }

    fn validate(&self) -> Result<(), LedgerError> {
        check_batch_len(self.0.len())
    }

    fn payment_ids(&self) -> Vec<PaymentId> {
        sorted_ids(self.0.iter().copied())
    }

    fn wallet_ids(&self, payments: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<WalletId> {
        record_wallets(&self.0, Side::Payer, payments)
    }

    fn daily_keys(&self, _: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<(WalletId, i64)> {
        BTreeSet::new()
    }

    fn apply(&self, working: &mut Working) -> Result<Vec<Transition>, LedgerError> {
        let mut results = Vec::with_capacity(self.0.len());
        for id in &self.0 {
            let Some(record) = working.payments.get(&(*id, Side::Payer)).cloned() else {
                results.push(Transition::NotFound);
                continue;
            };
            if record.state != PaymentState::Reserved {
                results.push(Transition::AlreadyFinal(record));
                continue;
            }
            let wallet_id = open_wallet_of(&record)?;
            let amount_fen = record.amount_fen;
            working.change_wallet(&wallet_id, |w| {
                w.account.balance_fen = w.account.balance_fen.checked_sub(amount_fen)?;
                w.held_fen = w.held_fen.checked_sub(amount_fen)?;
                Some(())
            })?;
            let record = PaymentRecord {
                state: PaymentState::Committed,
                updated_ms: working.now_ms,
                ..record
            };
            working.update_payment(record.clone());
            results.push(Transition::Applied(record));
        }
        Ok(results)
    }
}

fn open_wallet_of(record: &PaymentRecord) -> Result<WalletId, LedgerError> {
    record.wallet_id.clone().ok_or_else(|| {
        LedgerError::integrity(format!("open payment {} has no wallet", record.payment_id))
    })
}

/// Void reserved payments (payer side): the hold and the daily total are released.
#[derive(Debug)]
pub(crate) struct VoidOp(pub(crate) Vec<(PaymentId, String)>);

impl Op for VoidOp {
    type Item = Transition;

    const NAME: &'static str = "void";

    fn len(&self) -> usize {
        self.0.len()
    }

    fn side(&self) -> Side {
        Side::Payer
    }

    fn validate(&self) -> Result<(), LedgerError> {
        check_batch_len(self.0.len())?;
        self.0
            .iter()
            .try_for_each(|(_, reason)| check_reason(reason))
    }

    fn payment_ids(&self) -> Vec<PaymentId> {
        sorted_ids(self.0.iter().map(|(id, _)| *id))
    }

    fn wallet_ids(&self, payments: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<WalletId> {
        let ids: Vec<PaymentId> = self.0.iter().map(|(id, _)| *id).collect();
        record_wallets(&ids, Side::Payer, payments)
    }

    fn daily_keys(
        &self,
        payments: &HashMap<PaymentKey, PaymentRecord>,
    ) -> BTreeSet<(WalletId, i64)> {
        self.0
            .iter()
            .filter_map(|(id, _)| payments.get(&(*id, Side::Payer)))
            .filter(|r| r.state == PaymentState::Reserved)
            .filter_map(|r| Some((r.wallet_id.clone()?, business_day(r.paid_at_ms))))
            .collect()
    }

    fn apply(&self, working: &mut Working) -> Result<Vec<Transition>, LedgerError> {
        let mut results = Vec::with_capacity(self.0.len());
        for (id, reason_code) in &self.0 {
            let Some(record) = working.payments.get(&(*id, Side::Payer)).cloned() else {
                results.push(Transition::NotFound);
                continue;
            };
            if record.state != PaymentState::Reserved {
                results.push(Transition::AlreadyFinal(record));
                continue;
            }
            let wallet_id = open_wallet_of(&record)?;
            let amount_fen = record.amount_fen;
            working.change_wallet(&wallet_id, |w| {
                w.held_fen = w.held_fen.checked_sub(amount_fen)?;
                Some(())
            })?;
            working.add_daily(&wallet_id, business_day(record.paid_at_ms), -amount_fen)?;
            let record = PaymentRecord {
                state: PaymentState::Voided,
                reason_code: Some(reason_code.clone()),
                updated_ms: working.now_ms,
                ..record
            };
            working.update_payment(record.clone());
            results.push(Transition::Applied(record));
        }
        Ok(results)
    }
}

/// Record incoming amounts as pending (payee side).
#[derive(Debug)]
pub(crate) struct CreditOp(pub(crate) Vec<CreditRequest>);

impl CreditOp {
    fn refusal(&self, working: &Working, request: &CreditRequest) -> Option<LedgerRefusal> {
        if !valid_id(&request.payee_wallet) || !valid_party(&request.payer) {
            return Some(LedgerRefusal::MalformedRequest);
        }
        if !valid_amount(request.amount_fen) {
            return Some(LedgerRefusal::InvalidAmount);
        }
        let Some(wallet) = working.wallets.get(&request.payee_wallet) else {
            return Some(LedgerRefusal::UnknownWallet);
        };
        if wallet.account.locked {
            return Some(LedgerRefusal::WalletLocked);
        }
        let limit_fen = wallet.account.limits.balance_limit_fen;
        let after_fen = wallet
            .account
            .balance_fen
            .saturating_add(wallet.pending_credit_fen)
            .saturating_add(request.amount_fen);
        if after_fen > limit_fen {
            return Some(LedgerRefusal::BalanceLimit { limit_fen });
        }
        None
    }
}

impl Op for CreditOp {
    type Item = CreditResult;

    const NAME: &'static str = "credit_pending";

    fn len(&self) -> usize {
        self.0.len()
    }

    fn side(&self) -> Side {
        Side::Payee
    }

    fn validate(&self) -> Result<(), LedgerError> {
        check_batch_len(self.0.len())
    }

    fn payment_ids(&self) -> Vec<PaymentId> {
        sorted_ids(self.0.iter().map(|r| r.payment_id))
    }

    fn wallet_ids(&self, _: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<WalletId> {
        self.0.iter().map(|r| r.payee_wallet.clone()).collect()
    }

    fn daily_keys(&self, _: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<(WalletId, i64)> {
        BTreeSet::new()
    }

    fn apply(&self, working: &mut Working) -> Result<Vec<CreditResult>, LedgerError> {
        let mut results = Vec::with_capacity(self.0.len());
        for request in &self.0 {
            if let Some(existing) = working
                .payments
                .get(&(request.payment_id, Side::Payee))
                .cloned()
            {
                results.push(if existing.state == PaymentState::Voided {
                    CreditResult::AlreadyVoided(fill_tombstone(working, existing, request))
                } else if existing.digest == Some(request.digest) {
                    CreditResult::Duplicate(existing)
                } else {
                    CreditResult::Conflict(existing)
                });
                continue;
            }
            let refusal = self.refusal(working, request);
            let mut record = PaymentRecord {
                payment_id: request.payment_id,
                side: Side::Payee,
                state: PaymentState::PendingCredit,
                digest: Some(request.digest),
                wallet_id: Some(clip(&request.payee_wallet)),
                counterparty: Some(clip_party(&request.payer)),
                amount_fen: request.amount_fen,
                reason_code: None,
                paid_at_ms: request.at_ms,
                created_ms: working.now_ms,
                updated_ms: working.now_ms,
                expires_at_ms: None,
            };
            match refusal {
                Some(refusal) => {
                    record.state = PaymentState::Rejected;
                    record.reason_code = Some(refusal.reason_code().to_owned());
                    working.insert_payment(record);
                    results.push(CreditResult::Refused(refusal));
                }
                None => {
                    let amount_fen = request.amount_fen;
                    working.change_wallet(&request.payee_wallet, |w| {
                        w.pending_credit_fen = w.pending_credit_fen.checked_add(amount_fen)?;
                        Some(())
                    })?;
                    working.insert_payment(record.clone());
                    results.push(CreditResult::Pending(record));
                }
            }
        }
        Ok(results)
    }
}

/// A tombstone learns what the late clearing message carried, once, for the audit trail; it
/// stays voided and moves no money.
fn fill_tombstone(
    working: &mut Working,
    tombstone: PaymentRecord,
    request: &CreditRequest,
) -> PaymentRecord {
    if tombstone.digest.is_some() {
        return tombstone;
    }
    let record = PaymentRecord {
        digest: Some(request.digest),
        wallet_id: Some(clip(&request.payee_wallet)),
        counterparty: Some(clip_party(&request.payer)),
        amount_fen: request.amount_fen,
        paid_at_ms: request.at_ms,
        updated_ms: working.now_ms,
        ..tombstone
    };
    working.update_payment(record.clone());
    record
}

/// Apply the payer's final decision (payee side).
#[derive(Debug)]
pub(crate) struct FinalizeOp(pub(crate) Vec<(PaymentId, Finalization)>);

impl Op for FinalizeOp {
    type Item = FinalizeResult;

    const NAME: &'static str = "finalize";

    fn len(&self) -> usize {
        self.0.len()
    }

    fn side(&self) -> Side {
        Side::Payee
    }

    fn validate(&self) -> Result<(), LedgerError> {
        check_batch_len(self.0.len())?;
        self.0.iter().try_for_each(|(_, f)| match f {
            Finalization::Completed => Ok(()),
            Finalization::Voided { reason_code } => check_reason(reason_code),
        })
    }

    fn payment_ids(&self) -> Vec<PaymentId> {
        sorted_ids(self.0.iter().map(|(id, _)| *id))
    }

    fn wallet_ids(&self, payments: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<WalletId> {
        let ids: Vec<PaymentId> = self.0.iter().map(|(id, _)| *id).collect();
        record_wallets(&ids, Side::Payee, payments)
    }

    fn daily_keys(&self, _: &HashMap<PaymentKey, PaymentRecord>) -> BTreeSet<(WalletId, i64)> {
        BTreeSet::new()
    }

    fn apply(&self, working: &mut Working) -> Result<Vec<FinalizeResult>, LedgerError> {
        let mut results = Vec::with_capacity(self.0.len());
        for (id, finalization) in &self.0 {
            let existing = working.payments.get(&(*id, Side::Payee)).cloned();
            let result = match (existing, finalization) {
                (None, Finalization::Completed) => FinalizeResult::NotFound,
                (None, Finalization::Voided { reason_code }) => {
                    let record = PaymentRecord {
                        payment_id: *id,
                        side: Side::Payee,
                        state: PaymentState::Voided,
                        digest: None,
                        wallet_id: None,
                        counterparty: None,
                        amount_fen: 0,
                        reason_code: Some(reason_code.clone()),
                        paid_at_ms: working.now_ms,
                        created_ms: working.now_ms,
                        updated_ms: working.now_ms,
                        expires_at_ms: None,
                    };
                    working.insert_payment(record.clone());
                    FinalizeResult::Tombstoned(record)
                }
                (Some(record), _) if record.state != PaymentState::PendingCredit => {
                    FinalizeResult::AlreadyFinal(record)
                }
                (Some(record), Finalization::Completed) => {
                    let wallet_id = open_wallet_of(&record)?;
                    let amount_fen = record.amount_fen;
                    working.change_wallet(&wallet_id, |w| {
                        w.account.balance_fen = w.account.balance_fen.checked_add(amount_fen)?;
                        w.pending_credit_fen = w.pending_credit_fen.checked_sub(amount_fen)?;
                        Some(())
                    })?;
                    let record = PaymentRecord {
                        state: PaymentState::Credited,
                        updated_ms: working.now_ms,
                        ..record
                    };
                    working.update_payment(record.clone());
                    FinalizeResult::Credited(record)
                }
                (Some(record), Finalization::Voided { reason_code }) => {
                    let wallet_id = open_wallet_of(&record)?;
                    let amount_fen = record.amount_fen;
                    working.change_wallet(&wallet_id, |w| {
                        w.pending_credit_fen = w.pending_credit_fen.checked_sub(amount_fen)?;
                        Some(())
                    })?;
                    let record = PaymentRecord {
                        state: PaymentState::Reversed,
                        reason_code: Some(reason_code.clone()),
                        updated_ms: working.now_ms,
                        ..record
                    };
                    working.update_payment(record.clone());
                    FinalizeResult::Reversed(record)
                }
            };
            results.push(result);
        }
        Ok(results)
    }
}

/// Checks a batch of wallets to provision: ids, institution, amounts.
/// The answer to opening `account` again, given the terms its wallet was first opened on
/// (`None` for a wallet with no issuance record, which cannot be told apart: taken as open).
pub(crate) fn reopening(account: &WalletAccount, stored: Option<&OpeningTerms>) -> OpenResult {
    match stored {
        Some(terms) if *terms != OpeningTerms::of(account) => OpenResult::Conflict,
        _ => OpenResult::AlreadyOpen,
    }
}

pub(crate) fn validate_accounts(
    institution_id: &str,
    accounts: &[WalletAccount],
) -> Result<(), LedgerError> {
    check_batch_len(accounts.len())?;
    for account in accounts {
        check_id("wallet id", &account.wallet_id)?;
        if account.wallet_id.ends_with(super::offline::PURSE_SUFFIX) {
            return Err(LedgerError::invalid_input(format!(
                "wallet {}: ids ending in {} name offline purse accounts",
                account.wallet_id,
                super::offline::PURSE_SUFFIX
            )));
        }
        if account.institution_id != institution_id {
            return Err(LedgerError::invalid_input(format!(
                "wallet {} belongs to {}, not to this ledger's {institution_id}",
                account.wallet_id, account.institution_id
            )));
        }
        let limits = &account.limits;
        let amounts = [
            account.balance_fen,
            limits.balance_limit_fen,
            limits.single_payment_limit_fen,
            limits.daily_limit_fen,
            limits.password_free_limit_fen,
        ];
        if amounts.iter().any(|a| *a < 0) {
            return Err(LedgerError::invalid_input(format!(
                "wallet {}: balance and limits must not be negative",
                account.wallet_id
            )));
        }
    }
    Ok(())
}

/// Compares the daily totals recomputed from payment records with the stored ones (a stored
/// zero equals a missing one).
pub(crate) fn compare_daily(
    expected: &HashMap<(WalletId, i64), i64>,
    stored: &HashMap<(WalletId, i64), i64>,
) -> Result<(), LedgerError> {
    let keys = expected.keys().chain(stored.keys());
    for key in keys {
        let want = expected.get(key).copied().unwrap_or(0);
        let have = stored.get(key).copied().unwrap_or(0);
        if want != have {
            return Err(LedgerError::integrity(format!(
                "daily total of {} on day {}: stored {have}, records {want}",
                key.0, key.1
            )));
        }
    }
    Ok(())
}

/// The ids a batch lookup of wallets asks the database for: distinct and sorted. An id no wallet
/// can have (empty or longer than [`ID_LEN_MAX`], refused when wallets are opened) is not asked
/// for and is answered `None`.
pub(crate) fn lookup_ids(wallet_ids: &[String]) -> Result<Vec<WalletId>, LedgerError> {
    check_batch_len(wallet_ids.len())?;
    Ok(wallet_ids
        .iter()
        .filter(|id| valid_id(id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .cloned()
        .collect())
}

/// One answer per requested id, in request order, from the wallets found.
pub(crate) fn lookup_answers(
    wallet_ids: &[String],
    found: &HashMap<WalletId, WalletRow>,
) -> Vec<Option<WalletState>> {
    wallet_ids
        .iter()
        .map(|id| found.get(id).map(WalletRow::state))
        .collect()
}

/// Checks limits before they are stored.
pub(crate) fn validate_limits(limits: &super::types::WalletLimits) -> Result<(), LedgerError> {
    let amounts = [
        limits.balance_limit_fen,
        limits.single_payment_limit_fen,
        limits.daily_limit_fen,
        limits.password_free_limit_fen,
    ];
    if amounts.iter().any(|a| *a < 0) {
        return Err(LedgerError::invalid_input("limits must not be negative"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::types::{Digest, WalletLimits};

    const LIMITS: WalletLimits = WalletLimits {
        balance_limit_fen: 1_000_000,
        single_payment_limit_fen: 200_000,
        daily_limit_fen: 500_000,
        password_free_limit_fen: 10_000,
    };

    fn working_with_wallet(balance_fen: i64) -> Working {
        let mut working = Working::new(1);
        let account = WalletAccount {
            wallet_id: "w1".into(),
            institution_id: "oi-a".into(),
            tier: 4,
            balance_fen,
            limits: LIMITS,
            locked: false,
        };
        working.wallets.insert(
            "w1".into(),
            WalletRow {
                account,
                held_fen: 0,
                pending_credit_fen: 0,
            },
        );
        working
    }

    fn reserve(id: u8, amount_fen: i64) -> ReserveRequest {
        ReserveRequest {
            payment_id: PaymentId([id; 16]),
            digest: Digest([id; 32]),
            payer_wallet: "w1".into(),
            payee: Party {
                institution_id: "oi-b".into(),
                wallet_id: "w2".into(),
            },
            amount_fen,
            paid_at_ms: 0,
            expires_at_ms: 60_000,
        }
    }

    #[test]
    fn later_items_of_a_batch_see_earlier_holds() {
        let mut working = working_with_wallet(150_000);
        let op = ReserveOp(vec![reserve(1, 100_000), reserve(2, 100_000)]);
        let results = op.apply(&mut working).expect("apply");
        assert!(matches!(results[0], ReserveResult::Reserved(_)));
        assert_eq!(
            results[1],
            ReserveResult::Refused(LedgerRefusal::InsufficientFunds {
                available_fen: 50_000
            })
        );
        assert_eq!(working.wallets["w1"].held_fen, 100_000);
        assert_eq!(working.inserted().count(), 2);
    }

    #[test]
    fn repeated_id_in_one_batch_is_a_duplicate() {
        let mut working = working_with_wallet(150_000);
        let op = ReserveOp(vec![reserve(1, 10_000), reserve(1, 10_000)]);
        let results = op.apply(&mut working).expect("apply");
        assert!(matches!(results[1], ReserveResult::Duplicate(_)));
        assert_eq!(working.wallets["w1"].held_fen, 10_000);
    }

    #[test]
    fn missing_wallet_of_open_payment_is_an_integrity_error() {
        let mut working = working_with_wallet(150_000);
        ReserveOp(vec![reserve(1, 10_000)])
            .apply(&mut working)
            .expect("reserve");
        working.wallets.clear();
        let err = CommitOp(vec![PaymentId([1; 16])])
            .apply(&mut working)
            .expect_err("commit without wallet");
        assert_eq!(err.kind(), crate::ledger::LedgerErrorKind::Integrity);
    }

    #[test]
    fn lookup_asks_each_valid_id_once() {
        let ids: Vec<String> = ["w2", "w1", "w2", "", &"x".repeat(ID_LEN_MAX + 1)]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(lookup_ids(&ids).expect("ids"), vec!["w1", "w2"]);
    }

    #[test]
    fn lookup_answers_every_requested_position() {
        let working = working_with_wallet(150_000);
        let ids: Vec<String> = ["w1", "ghost", "w1"].map(str::to_owned).to_vec();
        let answers = lookup_answers(&ids, &working.wallets);
        let balances: Vec<Option<i64>> = answers
            .iter()
            .map(|w| w.as_ref().map(|w| w.account.balance_fen))
            .collect();
        assert_eq!(balances, vec![Some(150_000), None, Some(150_000)]);
    }

    #[test]
    fn oversized_lookup_is_invalid_input() {
        let ids = vec!["w1".to_owned(); BATCH_ITEMS_MAX + 1];
        let err = lookup_ids(&ids).expect_err("too large");
        assert_eq!(err.kind(), crate::ledger::LedgerErrorKind::InvalidInput);
    }

    #[test]
    fn oversized_batch_is_invalid_input() {
        let op = CommitOp(vec![PaymentId([0; 16]); BATCH_ITEMS_MAX + 1]);
        let err = op.validate().expect_err("too large");
        assert_eq!(err.kind(), crate::ledger::LedgerErrorKind::InvalidInput);
    }
}
