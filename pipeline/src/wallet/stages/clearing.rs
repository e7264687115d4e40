//! The payer's institution clears offline payments its wallets made that their payees
//! uploaded (forwarded by the payees' institutions on `wallet.offline.<oi>`): verifies each,
//! clears it once with the double-spending rule — a second payment under a counter, or one
//! beyond the purse, locks and blacklists the payer and books the excess to the loss account —
//! and hands it to the clearing path from the payer's purse account. A payment made after its
//! payer was locked or blacklisted is refused with an outcome to both institutions.
//!
//! A batch is cleared together ([`plan_uploaded`] for each payer): each payer read once, one
//! ledger transaction for all of them and one for the reservations, instead of a few ledger
//! calls and a commit per payment.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::Outgoing;
use dcpipe_connectors::ledger::offline::OfflineUpdate;
use futures::future::try_join_all;

use super::blacklist::{blacklist_entries, entry_subjects};
use super::record::{ToClear, UploadedAnswer, UploadedPlan, offline_intent, plan_uploaded};
use super::{STALE_RETRIES_MAX, commit_current, kept_changing};
use crate::clearing::payer::{Arrival, answer_reservation, rejection, reserve, short_answer};
use crate::clearing::{Audience, Institution, PaymentIntent};
use crate::reason::{Reason, Rejected};
use crate::registry::{Build, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict};
use crate::subjects;
use crate::wallet::payment::{VerifiedOfflinePayment, verify_offline_payment_frame};

/// Name of this stage.
pub const STAGE: &str = "wallet-clearing";

inventory::submit! {
    StageDescriptor {
        name: STAGE,
        summary: "the payer institution's clearing of offline payments uploaded by payees",
        flow: Flow::WalletKeySet,
        consumes: subjects::wallet_offline,
        // Clearing messages to the payees' institutions; refusals to both institutions; the
        // blacklist entry of a payer caught.
        publishes: |owner, institutions| {
            let mut names: Vec<String> = institutions
                .iter()
                .flat_map(|oi| [subjects::clearing_request(oi), subjects::txn_result(oi)])
                .collect();
            names.extend(entry_subjects(owner, institutions));
            names
        },
        build: Build::Institution(|inst| Arc::new(OfflineClearingStage::new(inst))),
    }
}

/// The clearing of uploaded offline payments.
#[derive(Debug)]
pub struct OfflineClearingStage {
    inst: Arc<Institution>,
}

impl OfflineClearingStage {
    /// The stage of an institution.
    pub fn new(inst: Arc<Institution>) -> Self {
        OfflineClearingStage { inst }
    }

    /// Clears the verified payments of a batch, all of payers held here: one read of each
    /// payer, one write of all of them at the versions read (read again when one changed
    /// since), one reservation of every payment to clear. Returns one verdict per payment,
    /// with its index in the batch.
    async fn clear_batch(
        &self,
        uploaded: &[Uploaded<'_>],
    ) -> Result<Vec<(usize, Verdict)>, StageError> {
        let inst = &self.inst;
        let offline = inst.ledger.offline();
        let mut payers: BTreeMap<&str, Vec<&Uploaded<'_>>> = BTreeMap::new();
        for item in uploaded {
            payers
                .entry(item.payment.payment.payer.wallet_id.as_str())
                .or_default()
                .push(item);
        }
        let mut verdicts = Vec::with_capacity(uploaded.len());
        for _ in 0..STALE_RETRIES_MAX {
            let now_ms = inst.clock.now_ms();
            let reads = try_join_all(payers.iter().map(|(wallet_id, items)| async move {
                let Some(read) = offline.offline_wallet(wallet_id).await? else {
                    return Ok::<_, StageError>((None, Vec::new()));
                };
                let counters: Vec<i64> = items.iter().map(|i| i.payment.payment.counter).collect();
                let cleared = offline.offline_cleared(wallet_id, &counters).await?;
                Ok((Some(read), cleared))
            }))
            .await?;
            let mut plans: Vec<UploadedPlan> = payers
                .values()
                .zip(&reads)
                .map(|(items, (read, cleared_before))| {
                    let to_clear: Vec<ToClear<'_>> = items
                        .iter()
                        .map(|i| ToClear {
                            payment: &i.payment,
                            frame: i.frame,
                        })
                        .collect();
                    plan_uploaded(&inst.id, read.as_ref(), cleared_before, &to_clear, now_ms)
                })
                .collect();
            let updates: Vec<OfflineUpdate> =
                plans.iter_mut().filter_map(|p| p.update.take()).collect();
            let stale = commit_current(offline, updates).await?;
            // The payers whose record changed since it was read are planned again; the others
            // are answered.
            let mut again = BTreeMap::new();
            let mut written = BTreeMap::new();
            let mut written_plans = Vec::new();
            for ((wallet_id, items), plan) in
                std::mem::take(&mut payers).into_iter().zip(plans.drain(..))
            {
                if stale.iter().any(|w| w == wallet_id) {
                    again.insert(wallet_id, items);
                } else {
                    written.insert(wallet_id, items);
                    written_plans.push(plan);
                }
            }
            verdicts.extend(self.answer(&written, &written_plans, now_ms).await?);
            if again.is_empty() {
                return Ok(verdicts);
            }
            payers = again;
        }
        let first = payers.keys().next().copied();
        Err(kept_changing(first.unwrap_or_default()))
    }

    /// The verdicts once the plans are written: dead letters and refusals, blacklist entries of
    /// payers caught, and the clearing path for the rest (one reservation for all, each
    /// payment once however often the batch holds it).
    async fn answer(
        &self,
        payers: &BTreeMap<&str, Vec<&Uploaded<'_>>>,
        plans: &[UploadedPlan],
        now_ms: i64,
    ) -> Result<Vec<(usize, Verdict)>, StageError> {
        let inst = &self.inst;
        let mut verdicts = Vec::new();
        let mut to_reserve: Vec<(usize, PaymentIntent, Vec<Outgoing>)> = Vec::new();
        let mut reserved = HashSet::new();
        for ((wallet_id, items), plan) in payers.iter().zip(plans) {
            let mut entries = match plan.caught_at_ms {
                Some(at_ms) => {
                    tracing::warn!(wallet = %wallet_id, "offline fraud evidence: wallet locked and blacklisted");
                    blacklist_entries(inst, wallet_id, at_ms)?
                }
                None => Vec::new(),
            };
            for (item, answer) in items.iter().zip(&plan.answers) {
                let intent = offline_intent(&item.payment);
                let verdict = match answer {
                    UploadedAnswer::UnknownPayer => Verdict::dead_letter(
                        Reason::WalletUnknown,
                        format!("no offline record of {wallet_id}"),
                    ),
                    UploadedAnswer::Refused(reason) => {
                        let refused = Rejected::new(
                            *reason,
                            format!(
                                "paid at {} by a wallet refused since",
                                item.payment.payment.paid_at_ms
                            ),
                        );
                        Verdict::Done(rejection(
                            inst,
                            &intent,
                            item.payment.digest,
                            &refused,
                            now_ms,
                            Audience::Everyone,
                            STAGE,
                        )?)
                    }
                    UploadedAnswer::Clear if reserved.insert(intent.payment_id) => {
                        to_reserve.push((item.index, intent, std::mem::take(&mut entries)));
                        continue;
                    }
                    // The same payment twice in the batch: its first copy carries the answer.
                    UploadedAnswer::Clear => Verdict::Done(Vec::new()),
                };
                verdicts.push((item.index, verdict));
            }
            if !entries.is_empty() {
                // Evidence comes only from a payment cleared now, whose answer takes them.
                return Err(StageError::fatal(format!(
                    "{wallet_id} caught without a payment of the batch to clear"
                )));
            }
        }
        let intents: Vec<&PaymentIntent> = to_reserve.iter().map(|(_, i, _)| i).collect();
        let results = reserve(inst, &intents, now_ms).await?;
        if results.len() != intents.len() {
            return Err(short_answer("reserve"));
        }
        for ((index, intent, mut outputs), result) in to_reserve.into_iter().zip(&results) {
            outputs.extend(answer_reservation(
                inst,
                &intent,
                result,
                Arrival::Uploaded,
                now_ms,
                STAGE,
            )?);
            verdicts.push((index, Verdict::Done(outputs)));
        }
        Ok(verdicts)
    }
}

/// One verified payment of a batch.
struct Uploaded<'a> {
    index: usize,
    payment: VerifiedOfflinePayment,
    frame: &'a [u8],
}

#[async_trait]
impl Stage for OfflineClearingStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        &self.inst.id
    }

    fn subject(&self) -> String {
        subjects::wallet_offline(&self.inst.id)
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(batch.len());
        let mut uploaded = Vec::new();
        for (index, input) in batch.iter().enumerate() {
            verdicts.push(
                match verify_offline_payment_frame(input.payload, &self.inst.verifier) {
                    Err(rejected) => Some(Verdict::dead_letter(rejected.reason, rejected.detail)),
                    Ok(payment) if payment.payment.payer.institution_id != self.inst.id => {
                        Some(Verdict::dead_letter(
                            Reason::WalletWrongInstitution,
                            format!(
                                "the payer's wallet is held by {}",
                                payment.payment.payer.institution_id
                            ),
                        ))
                    }
                    Ok(payment) => {
                        uploaded.push(Uploaded {
                            index,
                            payment,
                            frame: input.payload,
                        });
                        None
                    }
                },
            );
        }
        if !uploaded.is_empty() {
            for (index, verdict) in self.clear_batch(&uploaded).await? {
                verdicts[index] = Some(verdict);
            }
        }
        verdicts
            .into_iter()
            .map(|v| v.ok_or_else(|| StageError::fatal("a verified payment without a verdict")))
            .collect()
    }
}
