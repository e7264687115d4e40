//! The pure part of the stages: the platform's record between the ledger's words and the
//! core's, the clearing of one payer's payments with the double-spending rule, the intent an
//! offline payment hands to the clearing path, and the limits a wallet applied.

use std::collections::BTreeMap;

use dcpipe_connectors::ledger::PaymentId as LedgerPaymentId;
use dcpipe_connectors::ledger::offline::{
    OfflineClearing, OfflineRecord, OfflineTerms, OfflineUpdate, purse_wallet_id,
};
use dcpipe_schemas::{Digest32, OfflineLimits, PartyRef, PaymentId, RemoteControlCommand};

use crate::clearing::{Authorization, AuthorizationKind, PaymentIntent};
use crate::reason::Reason;
use crate::wallet::double_spend::{PayerHistory, PaymentToClear, clear_payer_payments};
use crate::wallet::payment::VerifiedOfflinePayment;
use crate::wallet::sync::{PayerStanding, WalletRecord};

/// The core's view of a stored record of a wallet of `institution`.
pub fn wallet_record(institution: &str, stored: &OfflineRecord) -> WalletRecord {
    WalletRecord {
        party: PartyRef {
            institution_id: institution.to_owned(),
            wallet_id: stored.wallet_id.clone(),
        },
        key_version: stored.key_version,
        key_fingerprint: stored.key_fingerprint,
        last_sync_at_ms: stored.last_sync_at_ms,
        counter: stored.counter,
        chain_head: Digest32::from_bytes(stored.chain_head),
        purse_fen: stored.purse_fen,
        limits: limits_of(&stored.limits),
        locked_at_ms: stored.locked_at_ms,
        blacklisted_at_ms: stored.blacklisted_at_ms,
        last_key_set: stored.last_key_set.map(Digest32::from_bytes),
        commands_applied_through: stored.commands_applied_through,
        blacklist_version: stored.blacklist_version,
    }
}

/// The record to store for `record`, written over `read` (the version read, what was funded)
/// with the answer to keep.
pub fn stored_record(
    record: &WalletRecord,
    read: &OfflineRecord,
    last_answer: Option<Vec<u8>>,
) -> OfflineRecord {
    OfflineRecord {
        wallet_id: read.wallet_id.clone(),
        version: read.version,
        key_version: record.key_version,
        key_fingerprint: record.key_fingerprint,
        last_sync_at_ms: record.last_sync_at_ms,
        counter: record.counter,
        chain_head: *record.chain_head.as_bytes(),
        purse_fen: record.purse_fen,
        funded_fen: read.funded_fen,
        limits: terms_of(&record.limits),
        locked_at_ms: record.locked_at_ms,
        blacklisted_at_ms: record.blacklisted_at_ms,
        last_key_set: record.last_key_set.map(|d| *d.as_bytes()),
        commands_applied_through: record.commands_applied_through,
        blacklist_version: record.blacklist_version,
        last_answer: last_answer.or_else(|| read.last_answer.clone()),
        // An order to rotate holds until a key set under a new key is accepted.
        rotation_ordered_at_ms: read
            .rotation_ordered_at_ms
            .filter(|_| record.key_version == read.key_version),
    }
}

/// The schema's offline limits for the ledger's.
pub fn limits_of(terms: &OfflineTerms) -> OfflineLimits {
    OfflineLimits {
        purse_limit_fen: terms.purse_limit_fen,
        single_payment_limit_fen: terms.single_payment_limit_fen,
        cumulative_limit_fen: terms.cumulative_limit_fen,
        payments_per_sync_max: terms.payments_per_sync_max,
        offline_duration_ms_max: terms.offline_duration_ms_max,
    }
}

/// The ledger's offline limits for the schema's.
pub fn terms_of(limits: &OfflineLimits) -> OfflineTerms {
    OfflineTerms {
        purse_limit_fen: limits.purse_limit_fen,
        single_payment_limit_fen: limits.single_payment_limit_fen,
        cumulative_limit_fen: limits.cumulative_limit_fen,
        payments_per_sync_max: limits.payments_per_sync_max,
        offline_duration_ms_max: limits.offline_duration_ms_max,
    }
}

/// When a payer was locked or blacklisted, from its record.
pub fn standing(record: &WalletRecord) -> PayerStanding {
    PayerStanding {
        locked_at_ms: record.locked_at_ms,
        blacklisted_at_ms: record.blacklisted_at_ms,
    }
}

/// The record with the limits in force on the wallet: those recorded, then those of the
/// LIMIT_CHANGE commands (`commands`, the wallet's after the record's applied sequence) it
/// says it applied through `applied_through`. A limit change binds the wallet only from then
/// on, so the payments it made before are judged by the limits it had.
pub fn with_applied_limits(
    mut record: WalletRecord,
    commands: &[RemoteControlCommand],
    applied_through: i64,
) -> WalletRecord {
    for command in commands {
        let applied = command.sequence > record.commands_applied_through
            && command.sequence <= applied_through;
        if let Some(limits) = command.offline_limits.filter(|_| applied) {
            record.limits = limits;
        }
    }
    record
}

/// Locks `record` and marks it blacklisted at `now_ms` (kept if earlier): the answer to fraud
/// evidence.
pub fn mark_fraud(record: &mut WalletRecord, now_ms: i64) {
    record.locked_at_ms = record.locked_at_ms.or(Some(now_ms));
    record.blacklisted_at_ms = record.blacklisted_at_ms.or(Some(now_ms));
}

/// One payment to clear with the frame it came in.
#[derive(Debug, Clone, Copy)]
pub struct ToClear<'a> {
    /// The verified payment.
    pub payment: &'a VerifiedOfflinePayment,
    /// Its OfflinePayment frame (kept for the audit).
    pub frame: &'a [u8],
}

/// What clearing payments of one payer changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerUpdate {
    /// The payer's record after (purse, and lock and blacklist on evidence).
    pub record: WalletRecord,
    /// The payments newly cleared, for the ledger.
    pub clearings: Vec<OfflineClearing>,
    /// Whether they hold evidence against the payer.
    pub fraud: bool,
}

/// Clears `payments` of the payer whose record is `record` at `now_ms`, knowing the payments
/// `cleared_before` under their counters: the double-spending rule
/// ([`clear_payer_payments`]); a payment cleared before is recognized and clears nothing.
pub fn decide_payer_clearing(
    record: &WalletRecord,
    cleared_before: &[OfflineClearing],
    payments: &[ToClear<'_>],
    now_ms: i64,
) -> PayerUpdate {
    let mut history = PayerHistory {
        purse_fen: record.purse_fen,
        cleared: BTreeMap::new(),
    };
    for clearing in cleared_before {
        history
            .cleared
            .entry(clearing.counter)
            .or_default()
            .push(Digest32::from_bytes(clearing.digest));
    }
    let to_clear: Vec<PaymentToClear> = payments
        .iter()
        .map(|p| PaymentToClear {
            payment_id: p.payment.payment_id,
            digest: p.payment.digest,
            counter: p.payment.payment.counter,
            amount_fen: p.payment.payment.amount_fen,
        })
        .collect();
    let decided = clear_payer_payments(&history, &to_clear);
    let mut next = record.clone();
    next.purse_fen = decided.purse_after_fen;
    if decided.fraud {
        mark_fraud(&mut next, now_ms);
    }
    let clearings = decided
        .decisions
        .iter()
        .filter_map(|decision| {
            let found = payments
                .iter()
                .find(|p| p.payment.payment_id == decision.payment.payment_id)?;
            let payment = &found.payment.payment;
            Some(OfflineClearing {
                payment_id: LedgerPaymentId(*decision.payment.payment_id.as_bytes()),
                digest: *decision.payment.digest.as_bytes(),
                payer_wallet_id: record.party.wallet_id.clone(),
                counter: payment.counter,
                payee_institution_id: payment.payee.institution_id.clone(),
                payee_wallet_id: payment.payee.wallet_id.clone(),
                amount_fen: payment.amount_fen,
                from_purse_fen: decision.from_purse_fen,
                from_loss_fen: decision.from_loss_fen,
                evidence: decision.evidence.map(|r| r.as_str().to_owned()),
                paid_at_ms: payment.paid_at_ms,
                frame: found.frame.to_vec(),
            })
        })
        .collect();
    PayerUpdate {
        record: next,
        clearings,
        fraud: decided.fraud,
    }
}

/// What the payer's institution does with one uploaded payment of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadedAnswer {
    /// No offline record of the payer here: dead-lettered.
    UnknownPayer,
    /// Made after its payer was locked or blacklisted, and not cleared before: refused.
    Refused(Reason),
    /// Cleared, now or before: it takes the clearing path.
    Clear,
}

/// The plan for the uploaded payments of one payer: one answer per payment, in their order,
/// and the write the new ones need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPlan {
    /// One answer per payment.
    pub answers: Vec<UploadedAnswer>,
    /// The payer's record and the new clearings to write at the version read, if any.
    pub update: Option<OfflineUpdate>,
    /// When the payer was caught, if these payments are evidence against it.
    pub caught_at_ms: Option<i64>,
}

/// Plans the clearing of `payments`, all of one payer, uploaded by their payees: `read` is the
/// payer's stored record (`None` when unknown here) and `cleared_before` what is cleared under
/// their counters. A payment cleared before clears nothing and takes the clearing path again
/// (its first answer); one made at or after the payer's lock or blacklisting, as recorded
/// before this batch, is refused; the others are cleared together by the double-spending rule
/// ([`decide_payer_clearing`]), as one at a time in any order would (evidence locks the payer
/// from now on, after every payment it made offline).
pub fn plan_uploaded(
    institution: &str,
    read: Option<&OfflineRecord>,
    cleared_before: &[OfflineClearing],
    payments: &[ToClear<'_>],
    now_ms: i64,
) -> UploadedPlan {
    let Some(read) = read else {
        return UploadedPlan {
            answers: vec![UploadedAnswer::UnknownPayer; payments.len()],
            update: None,
            caught_at_ms: None,
        };
    };
    let record = wallet_record(institution, read);
    let standing = standing(&record);
    let mut new = Vec::new();
    let answers = payments
        .iter()
        .map(|p| {
            let known = cleared_before
                .iter()
                .any(|c| c.digest == *p.payment.digest.as_bytes());
            if known {
                return UploadedAnswer::Clear;
            }
            if let Some(reason) = standing.refuses(p.payment.payment.paid_at_ms) {
                return UploadedAnswer::Refused(reason);
            }
            new.push(*p);
            UploadedAnswer::Clear
        })
        .collect();
    if new.is_empty() {
        return UploadedPlan {
            answers,
            update: None,
            caught_at_ms: None,
        };
    }
    let cleared = decide_payer_clearing(&record, cleared_before, &new, now_ms);
    let caught_at_ms = cleared
        .fraud
        .then(|| cleared.record.blacklisted_at_ms.unwrap_or(now_ms));
    UploadedPlan {
        answers,
        update: Some(OfflineUpdate {
            record: stored_record(&cleared.record, read, None),
            clearings: cleared.clearings,
        }),
        caught_at_ms,
    }
}

/// The payer of an offline payment on the clearing path: its purse account.
pub fn purse_party(payer: &PartyRef) -> PartyRef {
    PartyRef {
        institution_id: payer.institution_id.clone(),
        wallet_id: purse_wallet_id(&payer.wallet_id),
    }
}

/// The intent to pay of a verified offline payment: from the payer's purse account to the
/// payee, named by its offline-payment digest (which the payer's wallet signed).
pub fn offline_intent(payment: &VerifiedOfflinePayment) -> PaymentIntent {
    let p = &payment.payment;
    PaymentIntent {
        payment_id: payment.payment_id,
        payer: purse_party(&p.payer),
        payee: p.payee.clone(),
        amount_fen: p.amount_fen,
        currency: p.currency.clone(),
        paid_at_ms: p.paid_at_ms,
        authorization: Authorization {
            kind: AuthorizationKind::OfflinePayment,
            digest: payment.digest,
            binding: payment.digest,
        },
    }
}

/// The ledger's id of an offline payment.
pub fn ledger_id(payment_id: &PaymentId) -> LedgerPaymentId {
    LedgerPaymentId(*payment_id.as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use dcpipe_connectors::ledger::offline::OfflineRecord;

    use std::sync::Arc;

    use super::*;
    use crate::pki::{
        AlgorithmChoice, ChainVerifier, DemoPkiOptions, PkiDirectory, RevocationSet, TrustStore,
    };
    use crate::protocol::CHAIN_START;
    use crate::wallet::device::{HardWallet, WalletProvisioning, copied_key};
    use crate::wallet::limits::OFFLINE_TIER_4;
    use crate::wallet::payment::verify_offline_payment_frame;

    fn stored() -> OfflineRecord {
        OfflineRecord {
            wallet_id: "w1".to_owned(),
            version: 4,
            key_version: 2,
            key_fingerprint: [3; 32],
            last_sync_at_ms: 1_000,
            counter: 5,
            chain_head: [6; 32],
            purse_fen: 7_000,
            funded_fen: 9_000,
            limits: terms_of(&OFFLINE_TIER_4),
            locked_at_ms: None,
            blacklisted_at_ms: Some(8),
            last_key_set: Some([9; 32]),
            commands_applied_through: 2,
            blacklist_version: 1,
            last_answer: Some(vec![1]),
            rotation_ordered_at_ms: Some(11),
        }
    }

    #[test]
    fn a_stored_record_reads_and_writes_back_unchanged() {
        let read = stored();
        let record = wallet_record("oi01", &read);
        assert_eq!(record.party.institution_id, "oi01");
        assert_eq!(record.limits, OFFLINE_TIER_4);
        assert_eq!(stored_record(&record, &read, None), read);
    }

    #[test]
    fn an_order_to_rotate_holds_until_the_key_version_rises() {
        let read = stored();
        let mut record = wallet_record("oi01", &read);
        record.last_sync_at_ms = 2_000;
        assert_eq!(
            stored_record(&record, &read, None).rotation_ordered_at_ms,
            Some(11)
        );
        record.key_version = 3;
        record.key_fingerprint = [4; 32];
        assert_eq!(
            stored_record(&record, &read, None).rotation_ordered_at_ms,
            None
        );
    }

    #[test]
    fn a_new_answer_replaces_the_stored_one() {
        let read = stored();
        let record = wallet_record("oi01", &read);
        assert_eq!(
            stored_record(&record, &read, Some(vec![2])).last_answer,
            Some(vec![2])
        );
    }

    #[test]
    fn fraud_keeps_an_earlier_lock() {
        let mut record = wallet_record("oi01", &stored());
        record.locked_at_ms = Some(3);
        mark_fraud(&mut record, 10);
        assert_eq!(
            (record.locked_at_ms, record.blacklisted_at_ms),
            (Some(3), Some(8))
        );
    }

    /// Two wallets of one institution, the payer funded with `purse_fen` and opened at `t0`,
    /// and the trust anchors that verify them.
    pub(crate) fn funded_payer(purse_fen: i64) -> (HardWallet, PartyRef, Arc<TrustStore>, i64) {
        let t0 = crate::clock::system_now_ms();
        let pki = PkiDirectory::generate(&DemoPkiOptions::new(1, 2, AlgorithmChoice::P256, t0))
            .expect("PKI");
        let mut wallets = pki.wallets();
        let (payer_id, payer_keys) = wallets.next().expect("payer");
        let (payee_id, payee_keys) = wallets.next().expect("payee");
        let anchors = vec![
            pki.root().certificate().der().to_vec(),
            pki.institutions()
                .next()
                .map(|(_, k)| k.ca.certificate().der().to_vec())
                .expect("CA"),
        ];
        let mut payer = HardWallet::provision(WalletProvisioning {
            party: PartyRef {
                institution_id: payer_keys.institution.clone(),
                wallet_id: payer_id.to_owned(),
            },
            tier: 4,
            key: copied_key(&payer_keys.wallet).expect("copy"),
            key_version: 1,
            limits: OFFLINE_TIER_4,
            trust_anchors: anchors,
            last_sync_at_ms: t0,
            counter: 0,
            chain_head: CHAIN_START,
            purse_fen: 0,
        })
        .expect("provisioned");
        payer.fund_purse(purse_fen).expect("funded");
        let payee = PartyRef {
            institution_id: payee_keys.institution.clone(),
            wallet_id: payee_id.to_owned(),
        };
        (payer, payee, Arc::clone(pki.trust_store()), t0)
    }

    /// [`funded_payer`], with a verifier of its trust anchors.
    fn payer_and_payee(purse_fen: i64) -> (HardWallet, PartyRef, Arc<ChainVerifier>, i64) {
        let (payer, payee, store, t0) = funded_payer(purse_fen);
        let verifier = Arc::new(ChainVerifier::new(store, Arc::new(RevocationSet::new())));
        (payer, payee, verifier, t0)
    }

    fn record_of(payer: &HardWallet, purse_fen: i64) -> WalletRecord {
        let mut record = wallet_record(&payer.party().institution_id, &stored());
        record.party = payer.party().clone();
        record.purse_fen = purse_fen;
        record.locked_at_ms = None;
        record.blacklisted_at_ms = None;
        record
    }

    #[test]
    fn a_payment_is_cleared_once_from_the_purse_and_a_second_under_its_counter_is_fraud() {
        let (mut payer, payee, verifier, t0) = payer_and_payee(10_000);
        let fix = |at_ms| crate::wallet::SatelliteFix { at_ms };
        let first = payer.pay(&payee, 8_000, fix(t0 + 1_000)).expect("pays");
        payer.rewind_for_double_spending(0, CHAIN_START, 10_000);
        let second = payer
            .pay(&payee, 7_000, fix(t0 + 2_000))
            .expect("pays again");
        let first_frame = first.as_bytes();
        let first = verify_offline_payment_frame(first_frame, &verifier).expect("verifies");
        let second_frame = second.as_bytes();
        let second = verify_offline_payment_frame(second_frame, &verifier).expect("verifies");
        let record = record_of(&payer, 10_000);

        let cleared = decide_payer_clearing(
            &record,
            &[],
            &[ToClear {
                payment: &first,
                frame: first_frame,
            }],
            t0 + 5_000,
        );
        assert!(!cleared.fraud);
        assert_eq!(cleared.record.purse_fen, 2_000);
        assert_eq!(cleared.clearings.len(), 1);
        let stored_first = cleared.clearings[0].clone();
        assert_eq!(
            (stored_first.from_purse_fen, stored_first.from_loss_fen),
            (8_000, 0)
        );
        assert_eq!(stored_first.frame, first_frame);

        // Uploaded again (by the payer or the payee): recognized, nothing clears.
        let again = decide_payer_clearing(
            &cleared.record,
            std::slice::from_ref(&stored_first),
            &[ToClear {
                payment: &first,
                frame: first_frame,
            }],
            t0 + 6_000,
        );
        assert!(again.clearings.is_empty() && !again.fraud);
        assert_eq!(again.record, cleared.record);

        // Another payment under counter 1: credited in full, 2,000 from the purse, 5,000 from
        // the loss account, and the payer locked and blacklisted.
        let spent = decide_payer_clearing(
            &cleared.record,
            std::slice::from_ref(&stored_first),
            &[ToClear {
                payment: &second,
                frame: second_frame,
            }],
            t0 + 7_000,
        );
        assert!(spent.fraud);
        assert_eq!(spent.record.purse_fen, 0);
        assert_eq!(
            (
                spent.clearings[0].from_purse_fen,
                spent.clearings[0].from_loss_fen
            ),
            (2_000, 5_000)
        );
        assert_eq!(
            spent.clearings[0].evidence.as_deref(),
            Some(crate::reason::Reason::OfflineDoubleSpend.as_str())
        );
        assert_eq!(spent.record.locked_at_ms, Some(t0 + 7_000));
        assert_eq!(spent.record.blacklisted_at_ms, Some(t0 + 7_000));
    }

    #[test]
    fn uploaded_payments_of_one_payer_are_planned_together() {
        // The wallet holds more than the platform records: payments beyond the recorded purse.
        let (mut payer, payee, verifier, t0) = payer_and_payee(12_000);
        let fix = |at_ms| crate::wallet::SatelliteFix { at_ms };
        let frames: Vec<_> = [(3_000, 1_000), (4_000, 2_000), (5_000, 3_000)]
            .into_iter()
            .map(|(amount, at)| payer.pay(&payee, amount, fix(t0 + at)).expect("pays"))
            .collect();
        let verified: Vec<_> = frames
            .iter()
            .map(|f| verify_offline_payment_frame(f.as_bytes(), &verifier).expect("verifies"))
            .collect();
        let to_clear: Vec<ToClear<'_>> = verified
            .iter()
            .zip(&frames)
            .map(|(payment, frame)| ToClear {
                payment,
                frame: frame.as_bytes(),
            })
            .collect();
        let institution = payer.party().institution_id.clone();
        let mut read = stored();
        read.wallet_id = payer.party().wallet_id.clone();
        read.purse_fen = 10_000;
        read.locked_at_ms = None;
        read.blacklisted_at_ms = None;
        let now_ms = t0 + 10_000;

        // Unknown payer: every payment dead-lettered, nothing written.
        let unknown = plan_uploaded(&institution, None, &[], &to_clear, now_ms);
        assert_eq!(unknown.answers, vec![UploadedAnswer::UnknownPayer; 3]);
        assert!(unknown.update.is_none() && unknown.caught_at_ms.is_none());

        // The first uploaded twice in the batch and cleared before: the other two clear, once
        // each, from the purse.
        let first = decide_payer_clearing(
            &wallet_record(&institution, &read),
            &[],
            &to_clear[..1],
            now_ms,
        );
        read.purse_fen = first.record.purse_fen;
        let batch = [to_clear[0], to_clear[1], to_clear[2], to_clear[1]];
        let plan = plan_uploaded(&institution, Some(&read), &first.clearings, &batch, now_ms);
        assert_eq!(plan.answers, vec![UploadedAnswer::Clear; 4]);
        let update = plan.update.expect("a write");
        assert_eq!(update.record.purse_fen, 0);
        assert_eq!(update.record.version, read.version);
        let parts: Vec<(i64, i64)> = update
            .clearings
            .iter()
            .map(|c| (c.from_purse_fen, c.from_loss_fen))
            .collect();
        // 7,000 left in the purse: 4,000 from it, then 3,000 of 5,000 and 2,000 from the loss
        // account, which is evidence.
        assert_eq!(parts, vec![(4_000, 0), (3_000, 2_000)]);
        assert_eq!(plan.caught_at_ms, Some(now_ms));

        // Locked between the second and third payment: the third is refused, the second
        // clears, the one cleared before takes the clearing path again.
        read.locked_at_ms = Some(t0 + 2_500);
        let plan = plan_uploaded(
            &institution,
            Some(&read),
            &first.clearings,
            &to_clear,
            now_ms,
        );
        assert_eq!(
            plan.answers,
            vec![
                UploadedAnswer::Clear,
                UploadedAnswer::Clear,
                UploadedAnswer::Refused(Reason::OfflinePayerLocked),
            ]
        );
        let update = plan.update.expect("a write");
        assert_eq!(update.clearings.len(), 1);
        assert_eq!(update.record.purse_fen, 7_000 - 4_000);
        assert_eq!(plan.caught_at_ms, None);
    }

    #[test]
    fn an_offline_payment_pays_from_the_purse_account() {
        let payer = PartyRef {
            institution_id: "oi01".to_owned(),
            wallet_id: "w1".to_owned(),
        };
        assert_eq!(purse_party(&payer).wallet_id, "w1-purse");
        assert_eq!(purse_party(&payer).institution_id, "oi01");
    }
}
