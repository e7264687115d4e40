//! The platform side of flow 2 in memory: each institution's records of its wallets, the
//! offline payments cleared, the purses, the loss account, the blacklist and the remote commands
//! waiting, driven by the pure functions of this module's siblings.
//!
//! [`OfflineNetwork`] is the reference model of what the stages do with a store: the tests, the
//! demo's checks and the load test's validity gate run wallets against it. Like the stages, it
//! credits every payee of a double spender in full, the purse first and the loss account for
//! the excess, and locks the double spender; and a payment to a locked wallet is voided on the
//! clearing path (its payee's institution refuses the credit, `payee.wallet_locked`) and gives
//! back what it took, the purse part to its payer's purse and the loss part to the loss account,
//! once the answer to the key set that cleared it is made (the clearing path runs after the
//! answer). Its accounts must always satisfy the conservation of money:
//!
//! ```text
//! Σ purses + Σ credited to payees + loss account = Σ funded       (loss account ≤ 0)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use dcpipe_schemas::{
    CommandId, Der, Digest32, OfflineLimits, PartyRef, PaymentId, RemoteControlCommand, SyncStatus,
    WalletKeySet, WalletSyncResult,
};

use super::control::{Command, sign_command};
use super::double_spend::{ClearingDecision, PayerHistory, PaymentToClear, clear_payer_payments};
use super::limits::SyncPolicy;
use super::payment::VerifiedOfflinePayment;
use super::sync::{
    KeySetVerdict, PayerStanding, SyncContext, WalletRecord, accepted_result, decide_sync,
    key_fingerprint, rejected_result, sign_sync_result, verify_key_set,
};
use crate::pki::{CertifiedKey, ChainVerifier, KeyError};
use crate::protocol::{CHAIN_START, anchors_digest};
use crate::reason::{Reason, Rejected};

/// One offline payment the network cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearedPayment {
    /// Its payer.
    pub payer: PartyRef,
    /// Its payee, credited in full.
    pub payee: PartyRef,
    /// Its amount.
    pub amount_fen: i64,
    /// How it was paid: from the purse and from the loss account.
    pub decision: ClearingDecision,
    /// Whether the payer or the payee uploaded it first.
    pub first_uploaded_by_payer: bool,
    /// Whether the clearing path voided it: its payee was locked, so its payee's institution
    /// refused the credit. It stays recorded under its counter, credited to nobody, and what it
    /// took went back.
    pub voided: bool,
}

/// What one key set brought.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    /// The signed answer.
    pub result: WalletSyncResult,
    /// The signed commands that follow it, in sequence order.
    pub commands: Vec<RemoteControlCommand>,
    /// Payments cleared by this key set (its own and the received ones), in clearing order.
    pub cleared: Vec<PaymentId>,
    /// True when this was the last accepted key set delivered again.
    pub duplicate: bool,
    /// The reason a key set for another institution could not be answered (dead letter).
    pub dead_letter: Option<Rejected>,
}

/// Money of the whole network, in fen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OfflineTotals {
    /// Moved from online balances into purses.
    pub funded_fen: i64,
    /// Held in purses, as the platforms record them.
    pub purses_fen: i64,
    /// Credited to payees for offline payments.
    pub credited_fen: i64,
    /// The loss accounts together (never above 0).
    pub loss_account_fen: i64,
}

impl OfflineTotals {
    /// Whether money is conserved: purses + credited + loss account = funded.
    pub fn conserved(&self) -> bool {
        self.purses_fen + self.credited_fen + self.loss_account_fen == self.funded_fen
            && self.loss_account_fen <= 0
    }
}

/// One institution's offline platform.
#[derive(Debug)]
struct Institution {
    signer: Arc<CertifiedKey>,
    records: BTreeMap<String, WalletRecord>,
    /// The answer to each wallet's last accepted key set, sent again to a redelivery.
    answers: BTreeMap<String, WalletSyncResult>,
    /// Commands by wallet, in sequence order (signed at issue).
    commands: BTreeMap<String, Vec<RemoteControlCommand>>,
    /// Wallets ordered to rotate their key, until a key set under a new key is accepted.
    rotation_orders: BTreeSet<String>,
    loss_account_fen: i64,
    funded_fen: i64,
}

/// Every institution's offline platform (see the module documentation).
#[derive(Debug)]
pub struct OfflineNetwork {
    verifier: Arc<ChainVerifier>,
    policy: SyncPolicy,
    institutions: BTreeMap<String, Institution>,
    /// Cleared payments by id.
    cleared: BTreeMap<PaymentId, ClearedPayment>,
    /// Digests cleared under each (payer institution, payer wallet, counter).
    slots: BTreeMap<(String, String, i64), Vec<Digest32>>,
    credited: HashMap<PartyRef, i64>,
    blacklist: Vec<String>,
    blacklist_version: i64,
    anchors: Vec<Der>,
    anchors_digest: Digest32,
}

impl OfflineNetwork {
    /// A network whose institutions sign with `signers` (institution id → institution signer),
    /// verifying with `verifier`, whose trust anchors (root and institution CAs, DER) are
    /// `anchors`.
    pub fn new(
        verifier: Arc<ChainVerifier>,
        anchors: Vec<Vec<u8>>,
        signers: impl IntoIterator<Item = (String, Arc<CertifiedKey>)>,
        policy: SyncPolicy,
    ) -> Self {
        let anchors_digest = anchors_digest(anchors.iter().map(Vec::as_slice));
        OfflineNetwork {
            verifier,
            policy,
            institutions: signers
                .into_iter()
                .map(|(id, signer)| {
                    (
                        id,
                        Institution {
                            signer,
                            records: BTreeMap::new(),
                            answers: BTreeMap::new(),
                            commands: BTreeMap::new(),
                            rotation_orders: BTreeSet::new(),
                            loss_account_fen: 0,
                            funded_fen: 0,
                        },
                    )
                })
                .collect(),
            cleared: BTreeMap::new(),
            slots: BTreeMap::new(),
            credited: HashMap::new(),
            blacklist: Vec::new(),
            blacklist_version: 0,
            anchors: anchors.into_iter().map(Der).collect(),
            anchors_digest,
        }
    }

    /// Records a wallet as its institution opens it for offline use: its key (version 1 or
    /// later), its last sync and its limits; purse 0.
    pub fn open_wallet(
        &mut self,
        party: &PartyRef,
        key_version: i32,
        public_key_der: &[u8],
        last_sync_at_ms: i64,
        limits: OfflineLimits,
    ) {
        if let Some(institution) = self.institutions.get_mut(&party.institution_id) {
            institution
                .records
                .entry(party.wallet_id.clone())
                .or_insert_with(|| WalletRecord {
                    party: party.clone(),
                    key_version,
                    key_fingerprint: key_fingerprint(public_key_der),
                    last_sync_at_ms,
                    counter: 0,
                    chain_head: CHAIN_START,
                    purse_fen: 0,
                    limits,
                    locked_at_ms: None,
                    blacklisted_at_ms: None,
                    last_key_set: None,
                    commands_applied_through: 0,
                    blacklist_version: 0,
                });
        }
    }

    /// Moves `amount_fen` from the wallet's online balance into its purse (the ledger operation;
    /// the device adds it to its purse with `HardWallet::fund_purse`).
    pub fn fund_purse(&mut self, party: &PartyRef, amount_fen: i64) -> bool {
        let Some(institution) = self.institutions.get_mut(&party.institution_id) else {
            return false;
        };
        let Some(record) = institution.records.get_mut(&party.wallet_id) else {
            return false;
        };
        if amount_fen <= 0 || record.purse_fen + amount_fen > record.limits.purse_limit_fen {
            return false;
        }
        record.purse_fen += amount_fen;
        institution.funded_fen += amount_fen;
        true
    }

    /// The platform's record of a wallet.
    pub fn record(&self, party: &PartyRef) -> Option<&WalletRecord> {
        self.institutions
            .get(&party.institution_id)?
            .records
            .get(&party.wallet_id)
    }

    /// Every payment cleared, by id.
    pub fn cleared(&self) -> &BTreeMap<PaymentId, ClearedPayment> {
        &self.cleared
    }

    /// What a payee was credited for offline payments.
    pub fn credited(&self, payee: &PartyRef) -> i64 {
        self.credited.get(payee).copied().unwrap_or(0)
    }

    /// The blacklist every wallet is sent.
    pub fn blacklist(&self) -> &[String] {
        &self.blacklist
    }

    /// The loss account of an institution (0 or below).
    pub fn loss_account_fen(&self, institution: &str) -> i64 {
        self.institutions
            .get(institution)
            .map_or(0, |i| i.loss_account_fen)
    }

    /// The money of the whole network.
    pub fn totals(&self) -> OfflineTotals {
        let mut totals = OfflineTotals {
            credited_fen: self.credited.values().sum(),
            ..OfflineTotals::default()
        };
        for institution in self.institutions.values() {
            totals.funded_fen += institution.funded_fen;
            totals.loss_account_fen += institution.loss_account_fen;
            totals.purses_fen += institution
                .records
                .values()
                .map(|r| r.purse_fen)
                .sum::<i64>();
        }
        totals
    }

    /// The institution issues a command to one of its wallets at `now_ms`: numbered after the
    /// wallet's last command and signed; it reaches the wallet after its next key set.
    pub fn issue_command(
        &mut self,
        party: &PartyRef,
        command: Command,
        now_ms: i64,
    ) -> Result<RemoteControlCommand, KeyError> {
        let institution = self
            .institutions
            .get_mut(&party.institution_id)
            .ok_or_else(|| {
                KeyError::new(crate::pki::KeyErrorKind::Signing, "no such institution")
            })?;
        let queue = institution
            .commands
            .entry(party.wallet_id.clone())
            .or_default();
        let sequence = i64::try_from(queue.len()).unwrap_or(i64::MAX) + 1;
        let signed = sign_command(
            CommandId::random(),
            party,
            sequence,
            &command,
            now_ms,
            &institution.signer,
        )?;
        queue.push(signed.clone());
        if let Some(record) = institution.records.get_mut(&party.wallet_id) {
            // A lock binds from its issue, whether the wallet knows it yet or not; new limits
            // bind once the wallet applied them (`with_applied_limits`).
            match command {
                Command::Lock => record.locked_at_ms = record.locked_at_ms.or(Some(now_ms)),
                Command::Unlock => record.locked_at_ms = None,
                Command::OfflineLimits(_) | Command::Blacklist(_) => {}
            }
        }
        Ok(signed)
    }

    /// The institution orders one of its wallets to rotate its key: its accepted sync results
    /// carry `KEY_ROTATION` until a key set under a new key is accepted. False when the wallet
    /// has no record.
    pub fn order_key_rotation(&mut self, party: &PartyRef) -> bool {
        let Some(institution) = self.institutions.get_mut(&party.institution_id) else {
            return false;
        };
        if !institution.records.contains_key(&party.wallet_id) {
            return false;
        }
        institution.rotation_orders.insert(party.wallet_id.clone());
        true
    }

    /// Whether the institution's order to rotate the wallet's key still stands.
    pub fn rotation_ordered(&self, party: &PartyRef) -> bool {
        self.institutions
            .get(&party.institution_id)
            .is_some_and(|i| i.rotation_orders.contains(&party.wallet_id))
    }

    fn standing(&self, payer: &PartyRef) -> PayerStanding {
        let record = self.record(payer);
        PayerStanding {
            locked_at_ms: record.and_then(|r| r.locked_at_ms),
            blacklisted_at_ms: record.and_then(|r| r.blacklisted_at_ms),
        }
    }

    /// Handles one key set received by `institution` at `now_ms`, as the stages will: verifies,
    /// decides, clears its payments (its own at this institution, the received ones at their
    /// payers'), and answers with a signed result and the commands waiting for the wallet.
    pub fn sync(
        &mut self,
        institution_id: &str,
        set: &WalletKeySet,
        now_ms: i64,
    ) -> Result<SyncOutcome, KeyError> {
        let party = PartyRef {
            institution_id: set.institution_id.clone(),
            wallet_id: set.wallet_id.clone(),
        };
        let record = self
            .institutions
            .get(institution_id)
            .and_then(|i| i.records.get(&set.wallet_id))
            .filter(|_| set.institution_id == institution_id)
            .cloned()
            .map(|record| self.with_applied_limits(record, set.commands_applied_through));
        let verdict = {
            let standing = |payer: &PartyRef| self.standing(payer);
            verify_key_set(
                set,
                record.as_ref(),
                institution_id,
                &self.verifier,
                &self.policy,
                now_ms,
                &standing,
            )
        };
        let Some(institution) = self.institutions.get(institution_id) else {
            return Ok(dead_letter(Rejected::new(
                Reason::WalletWrongInstitution,
                format!("no institution {institution_id}"),
            )));
        };
        let signer = Arc::clone(&institution.signer);
        let verified = match verdict {
            KeySetVerdict::Duplicate => {
                let result = institution
                    .answers
                    .get(&set.wallet_id)
                    .cloned()
                    .ok_or_else(|| {
                        KeyError::new(crate::pki::KeyErrorKind::Signing, "no stored answer")
                    })?;
                return Ok(SyncOutcome {
                    commands: self.pending_commands(&party, set.commands_applied_through),
                    result,
                    cleared: Vec::new(),
                    duplicate: true,
                    dead_letter: None,
                });
            }
            KeySetVerdict::Rejected(rejection) if !rejection.answerable => {
                return Ok(dead_letter(rejection.rejected));
            }
            KeySetVerdict::Rejected(rejection) => {
                let result = sign_sync_result(
                    rejected_result(set, record.as_ref(), &rejection.rejected, now_ms),
                    &signer,
                )?;
                return Ok(SyncOutcome {
                    result,
                    commands: Vec::new(),
                    cleared: Vec::new(),
                    duplicate: false,
                    dead_letter: None,
                });
            }
            KeySetVerdict::Verified(verified) => verified,
        };
        let Some(record) = record else {
            return Ok(dead_letter(Rejected::new(
                Reason::WalletUnknown,
                "no record",
            )));
        };
        let pending = i64::try_from(
            self.pending_commands(&party, verified.commands_applied_through)
                .len(),
        )
        .unwrap_or(i64::MAX);
        let blacklist = self.blacklist.clone();
        let anchors = self.anchors.clone();
        let policy = self.policy.clone();
        let context = SyncContext {
            blacklist: &blacklist,
            blacklist_version: self.blacklist_version,
            trust_anchors: &anchors,
            anchors_digest: self.anchors_digest,
            pending_commands: pending,
            policy: &policy,
            rotation_ordered: self.rotation_ordered(&party),
            now_ms,
        };
        let decision = decide_sync(&record, &verified, &context);
        self.store_record(&decision.record);
        if verified.rotation.is_some()
            && let Some(institution) = self.institutions.get_mut(institution_id)
        {
            institution.rotation_orders.remove(&set.wallet_id);
        }
        let mut cleared = Vec::new();
        let own: Vec<(PaymentToClear, &VerifiedOfflinePayment)> = decision
            .own_payments
            .iter()
            .filter_map(|p| {
                verified
                    .payments
                    .iter()
                    .find(|v| v.payment_id == p.payment_id)
                    .map(|v| (p.clone(), v))
            })
            .collect();
        let mut fraud = !decision.evidence.is_empty();
        let mut voids = Vec::new();
        fraud |= self.clear(&party, &own, true, now_ms, &mut cleared, &mut voids);
        for received in &decision.received {
            let payer = received.payment.payer.clone();
            let to_clear = PaymentToClear {
                payment_id: received.payment_id,
                digest: received.digest,
                counter: received.payment.counter,
                amount_fen: received.payment.amount_fen,
            };
            self.clear(
                &payer,
                &[(to_clear, received)],
                false,
                now_ms,
                &mut cleared,
                &mut voids,
            );
        }
        if fraud {
            self.mark_fraud(&party, now_ms);
        }
        let record_after = self
            .record(&party)
            .cloned()
            .unwrap_or(decision.record.clone());
        let blacklist = self.blacklist.clone();
        let context = SyncContext {
            blacklist: &blacklist,
            blacklist_version: self.blacklist_version,
            ..context
        };
        let mut result = accepted_result(&decision, &record_after, fraud, &context);
        if let Some(record) = self.record_mut(&party).filter(|_| fraud) {
            record.blacklist_version = context.blacklist_version;
        }
        result = sign_sync_result(result, &signer)?;
        if let Some(institution) = self.institutions.get_mut(institution_id) {
            institution
                .answers
                .insert(set.wallet_id.clone(), result.clone());
        }
        // The clearing path, after the answer: voided payments give back what they took.
        for void in voids {
            self.give_back(&void);
        }
        Ok(SyncOutcome {
            commands: self.pending_commands(&party, verified.commands_applied_through),
            result,
            cleared,
            duplicate: false,
            dead_letter: None,
        })
    }

    /// The record with the offline limits in force on the wallet: those of its last sync, then
    /// those of the LIMIT_CHANGE commands it says it applied (it applies them when they reach
    /// it, after a sync, before paying again). A limit change only binds the wallet from then
    /// on, so payments it made before are judged by the limits it had.
    fn with_applied_limits(&self, mut record: WalletRecord, applied_through: i64) -> WalletRecord {
        let commands = self
            .institutions
            .get(&record.party.institution_id)
            .and_then(|i| i.commands.get(&record.party.wallet_id));
        for command in commands.into_iter().flatten() {
            let applied = command.sequence > record.commands_applied_through
                && command.sequence <= applied_through;
            if let Some(limits) = command.offline_limits.filter(|_| applied) {
                record.limits = limits;
            }
        }
        record
    }

    fn record_mut(&mut self, party: &PartyRef) -> Option<&mut WalletRecord> {
        self.institutions
            .get_mut(&party.institution_id)?
            .records
            .get_mut(&party.wallet_id)
    }

    fn store_record(&mut self, record: &WalletRecord) {
        if let Some(stored) = self.record_mut(&record.party) {
            *stored = record.clone();
        }
    }

    fn pending_commands(
        &self,
        party: &PartyRef,
        applied_through: i64,
    ) -> Vec<RemoteControlCommand> {
        self.institutions
            .get(&party.institution_id)
            .and_then(|i| i.commands.get(&party.wallet_id))
            .map(|queue| {
                queue
                    .iter()
                    .filter(|c| c.sequence > applied_through)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the institution of `payee` refuses a credit to it: the wallet is locked (its
    /// online wallet with it).
    fn refuses_credit(&self, payee: &PartyRef) -> bool {
        self.record(payee).is_some_and(|r| r.locked_at_ms.is_some())
    }

    /// A voided payment gives back what it took: the purse part to its payer's purse, the loss
    /// part to the loss account of the payer's institution.
    fn give_back(&mut self, void: &Void) {
        if let Some(record) = self.record_mut(&void.payer) {
            record.purse_fen += void.from_purse_fen;
        }
        if let Some(institution) = self.institutions.get_mut(&void.payer.institution_id) {
            institution.loss_account_fen += void.from_loss_fen;
        }
    }

    /// Clears payments of one payer at the payer's institution with the double-spending rule;
    /// returns whether they hold evidence against the payer. A payment to a locked payee is
    /// cleared and then voided: it is credited to nobody and added to `voids`, to give back
    /// once the clearing path runs.
    fn clear(
        &mut self,
        payer: &PartyRef,
        payments: &[(PaymentToClear, &VerifiedOfflinePayment)],
        by_payer: bool,
        now_ms: i64,
        cleared: &mut Vec<PaymentId>,
        voids: &mut Vec<Void>,
    ) -> bool {
        let Some(record) = self.record(payer).cloned() else {
            return false;
        };
        let mut history = PayerHistory {
            purse_fen: record.purse_fen,
            cleared: BTreeMap::new(),
        };
        for (payment, _) in payments {
            let key = (
                payer.institution_id.clone(),
                payer.wallet_id.clone(),
                payment.counter,
            );
            if let Some(digests) = self.slots.get(&key) {
                history.cleared.insert(payment.counter, digests.clone());
            }
        }
        let to_clear: Vec<PaymentToClear> = payments.iter().map(|(p, _)| p.clone()).collect();
        let clearing = clear_payer_payments(&history, &to_clear);
        for decision in &clearing.decisions {
            let Some((_, verified)) = payments
                .iter()
                .find(|(p, _)| p.payment_id == decision.payment.payment_id)
            else {
                continue;
            };
            let key = (
                payer.institution_id.clone(),
                payer.wallet_id.clone(),
                decision.payment.counter,
            );
            self.slots
                .entry(key)
                .or_default()
                .push(decision.payment.digest);
            let voided = self.refuses_credit(&verified.payment.payee);
            if voided {
                voids.push(Void {
                    payer: payer.clone(),
                    from_purse_fen: decision.from_purse_fen,
                    from_loss_fen: decision.from_loss_fen,
                });
            } else {
                *self
                    .credited
                    .entry(verified.payment.payee.clone())
                    .or_default() += decision.payment.amount_fen;
            }
            if let Some(institution) = self.institutions.get_mut(&payer.institution_id) {
                institution.loss_account_fen -= decision.from_loss_fen;
            }
            self.cleared.insert(
                decision.payment.payment_id,
                ClearedPayment {
                    payer: payer.clone(),
                    payee: verified.payment.payee.clone(),
                    amount_fen: decision.payment.amount_fen,
                    decision: decision.clone(),
                    first_uploaded_by_payer: by_payer,
                    voided,
                },
            );
            cleared.push(decision.payment.payment_id);
        }
        if let Some(stored) = self.record_mut(payer) {
            stored.purse_fen = clearing.purse_after_fen;
        }
        if clearing.fraud && !by_payer {
            self.mark_fraud(payer, now_ms);
        }
        clearing.fraud
    }

    /// Locks the wallet and puts it on every wallet's blacklist.
    fn mark_fraud(&mut self, party: &PartyRef, now_ms: i64) {
        if let Some(record) = self.record_mut(party) {
            record.locked_at_ms = record.locked_at_ms.or(Some(now_ms));
            record.blacklisted_at_ms = record.blacklisted_at_ms.or(Some(now_ms));
        }
        if !self.blacklist.contains(&party.wallet_id) {
            self.blacklist.push(party.wallet_id.clone());
            self.blacklist_version += 1;
        }
    }

    /// Whether the answer is an acceptance.
    pub fn accepted(outcome: &SyncOutcome) -> bool {
        outcome.result.status == SyncStatus::Accepted
    }
}

/// What a voided payment gives back.
#[derive(Debug, Clone)]
struct Void {
    payer: PartyRef,
    from_purse_fen: i64,
    from_loss_fen: i64,
}

fn dead_letter(rejected: Rejected) -> SyncOutcome {
    SyncOutcome {
        result: WalletSyncResult {
            wallet_id: String::new(),
            institution_id: String::new(),
            key_version: 0,
            status: SyncStatus::Rejected,
            reason_code: Some(rejected.reason.as_str().to_owned()),
            actions: Vec::new(),
            platform_time_at_ms: 0,
            institution_certificate: Vec::new(),
            institution_signature: Vec::new(),
            key_set_digest: None,
            counter: 0,
            chain_head: None,
            purse_fen: 0,
            offline_limits: None,
            blacklist: Vec::new(),
            trust_anchors: Vec::new(),
            refused: Vec::new(),
            pending_commands: 0,
        },
        commands: Vec::new(),
        cleared: Vec::new(),
        duplicate: false,
        dead_letter: Some(rejected),
    }
}
