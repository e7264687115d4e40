//! The payer's institution clears offline payments its wallets made that their payees
//! uploaded (forwarded by the payees' institutions on `wallet.offline.<oi>`): verifies each,
//! clears it once with the double-spending rule — a second payment under a counter, or one
//! beyond the purse, locks and blacklists the payer and books the excess to the loss account —
//! and hands it to the clearing path from the payer's purse account. A payment made after its
//! payer was locked or blacklisted is refused with an outcome to both institutions.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::Position;
use dcpipe_connectors::ledger::offline::OfflineUpdate;

use super::blacklist::{blacklist_entries, entry_subjects};
use super::record::{
    ToClear, decide_payer_clearing, offline_intent, standing, stored_record, wallet_record,
};
use super::sync::clear_intents;
use super::{STALE_RETRIES_MAX, commit, kept_changing};
use crate::clearing::payer::rejection;
use crate::clearing::{Audience, Institution};
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

    async fn one(
        &self,
        payment: &VerifiedOfflinePayment,
        frame: &[u8],
        position: Position,
    ) -> Result<Verdict, StageError> {
        let inst = &self.inst;
        let payer = &payment.payment.payer;
        if payer.institution_id != inst.id {
            return Ok(Verdict::dead_letter(
                Reason::WalletWrongInstitution,
                format!("the payer's wallet is held by {}", payer.institution_id),
            ));
        }
        let offline = inst.ledger.offline();
        for _ in 0..STALE_RETRIES_MAX {
            let now_ms = inst.clock.now_ms();
            let Some(read) = offline.offline_wallet(&payer.wallet_id).await? else {
                return Ok(Verdict::dead_letter(
                    Reason::WalletUnknown,
                    format!("no offline record of {}", payer.wallet_id),
                ));
            };
            let record = wallet_record(&inst.id, &read);
            let cleared_before = offline
                .offline_cleared(&payer.wallet_id, &[payment.payment.counter])
                .await?;
            let known = cleared_before
                .iter()
                .any(|c| c.digest == *payment.digest.as_bytes());
            let intent = offline_intent(payment);
            let mut entries = Vec::new();
            if !known {
                if let Some(reason) = standing(&record).refuses(payment.payment.paid_at_ms) {
                    let refused = Rejected::new(
                        reason,
                        format!(
                            "paid at {} by a wallet refused since",
                            payment.payment.paid_at_ms
                        ),
                    );
                    return Ok(Verdict::Done(rejection(
                        inst,
                        &intent,
                        payment.digest,
                        &refused,
                        now_ms,
                        Audience::Everyone,
                        STAGE,
                    )?));
                }
                let to_clear = [ToClear { payment, frame }];
                let cleared = decide_payer_clearing(&record, &cleared_before, &to_clear, now_ms);
                let update = OfflineUpdate {
                    record: stored_record(&cleared.record, &read, None),
                    clearings: cleared.clearings,
                };
                if !commit(offline, &[update]).await? {
                    continue;
                }
                if cleared.fraud {
                    let at_ms = cleared.record.blacklisted_at_ms.unwrap_or(now_ms);
                    entries = blacklist_entries(inst, &payer.wallet_id, at_ms)?;
                    tracing::warn!(wallet = %payer.wallet_id, payment = %payment.payment_id, "offline fraud evidence: wallet locked and blacklisted");
                }
            }
            let mut outputs = entries;
            outputs.extend(clear_intents(inst, &[intent], position, now_ms, STAGE).await?);
            return Ok(Verdict::Done(outputs));
        }
        Err(kept_changing(&payer.wallet_id))
    }
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
        let mut verdicts = Vec::with_capacity(batch.len());
        for input in batch {
            verdicts.push(
                match verify_offline_payment_frame(input.payload, &self.inst.verifier) {
                    Err(rejected) => Verdict::dead_letter(rejected.reason, rejected.detail),
                    Ok(payment) => self.one(&payment, input.payload, input.position).await?,
                },
            );
        }
        Ok(verdicts)
    }
}
