//! The wallet's institution receives its key set on reconnection: verifies it against the
//! platform's record, decides the new record, clears the wallet's own payments with the
//! double-spending rule, writes all of it at the version read, and answers with a signed
//! WalletSyncResult followed by the commands waiting for the wallet. Received payments go to
//! their payers' institutions (`wallet.offline.<payer oi>`); the wallet's own payments take the
//! clearing path from its purse account.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::{Outgoing, Position};
use dcpipe_connectors::ledger::offline::{COMMANDS_LIST_MAX, OfflineRecord, OfflineUpdate};
use dcpipe_schemas::{
    Der, OfflinePayment, PartyRef, RemoteControlCommand, WalletKeySet, WalletSyncResult,
};

use super::record::{
    ToClear, decide_payer_clearing, mark_fraud, offline_intent, standing, stored_record,
    wallet_record, with_applied_limits,
};
use super::{STALE_RETRIES_MAX, commit, kept_changing};
use crate::clearing::payer::{answer_reservation, reserve};
use crate::clearing::{Institution, PaymentIntent};
use crate::protocol::anchors_digest;
use crate::reason::Reason;
use crate::registry::{Build, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict, outgoing};
use crate::subjects;
use crate::wallet::limits::SyncPolicy;
use crate::wallet::payment::VerifiedOfflinePayment;
use crate::wallet::sync::{
    KeySetVerdict, PayerStanding, SyncContext, VerifiedKeySet, WalletRecord, accepted_result,
    decide_sync, rejected_result, sign_sync_result, verify_key_set,
};

/// Name of this stage.
pub const STAGE: &str = "wallet-sync";

inventory::submit! {
    StageDescriptor {
        name: STAGE,
        summary: "the wallet institution's intake of key sets: verify, sync, clear, answer",
        flow: Flow::WalletKeySet,
        consumes: subjects::wallet_keyset,
        // The answer and commands to the wallet; received payments to their payers'
        // institutions; the wallet's own payments on the clearing path.
        publishes: |owner, institutions| {
            let mut names = vec![
                subjects::wallet_result(owner),
                subjects::wallet_command(owner),
            ];
            names.extend(super::blacklist::entry_subjects(owner, institutions));
            names.extend(institutions.iter().flat_map(|oi| {
                [
                    subjects::wallet_offline(oi),
                    subjects::clearing_request(oi),
                    subjects::txn_result(oi),
                ]
            }));
            names
        },
        build: Build::Institution(|inst| Arc::new(WalletSyncStage::new(inst))),
    }
}

/// The intake of key sets.
#[derive(Debug)]
pub struct WalletSyncStage {
    inst: Arc<Institution>,
    policy: SyncPolicy,
    anchors: Vec<Der>,
    anchors_digest: dcpipe_schemas::Digest32,
}

impl WalletSyncStage {
    /// The stage of an institution, with the default sync policy; the trust anchors sent to
    /// wallets are the root and the institution CAs of its trust store.
    pub fn new(inst: Arc<Institution>) -> Self {
        let store = inst.verifier.trust_store();
        let mut anchors = vec![store.root().der().to_vec()];
        anchors.extend(
            store
                .institution_ids()
                .filter_map(|id| store.institution_ca(id))
                .map(|ca| ca.der().to_vec()),
        );
        let anchors_digest = anchors_digest(anchors.iter().map(Vec::as_slice));
        WalletSyncStage {
            inst,
            policy: SyncPolicy::default(),
            anchors: anchors.into_iter().map(Der).collect(),
            anchors_digest,
        }
    }

    async fn one(&self, set: &WalletKeySet, position: Position) -> Result<Verdict, StageError> {
        for _ in 0..STALE_RETRIES_MAX {
            if let Some(verdict) = self.attempt(set, position).await? {
                return Ok(verdict);
            }
        }
        Err(kept_changing(&set.wallet_id))
    }

    /// One read-decide-write; `None` when the record changed before the write.
    async fn attempt(
        &self,
        set: &WalletKeySet,
        position: Position,
    ) -> Result<Option<Verdict>, StageError> {
        let inst = &self.inst;
        let offline = inst.ledger.offline();
        let now_ms = inst.clock.now_ms();
        let read = if set.institution_id == inst.id {
            offline.offline_wallet(&set.wallet_id).await?
        } else {
            None
        };
        let commands = match &read {
            Some(read) => decoded_commands(
                &offline
                    .commands_after(
                        &read.wallet_id,
                        read.commands_applied_through,
                        COMMANDS_LIST_MAX,
                    )
                    .await?,
            )?,
            None => Vec::new(),
        };
        let record = read.as_ref().map(|read| {
            with_applied_limits(
                wallet_record(&inst.id, read),
                &commands,
                set.commands_applied_through,
            )
        });
        let standings = self.payer_standings(set).await?;
        let verdict = verify_key_set(
            set,
            record.as_ref(),
            &inst.id,
            &inst.verifier,
            &self.policy,
            now_ms,
            &|payer| standings.get(payer).copied().unwrap_or_default(),
        );
        let party = PartyRef {
            institution_id: set.institution_id.clone(),
            wallet_id: set.wallet_id.clone(),
        };
        let verified = match verdict {
            KeySetVerdict::Duplicate => {
                let answer = read.as_ref().and_then(|r| r.last_answer.as_ref());
                let Some(answer) = answer else {
                    return Err(StageError::fatal(format!(
                        "wallet {}: an accepted key set without its stored answer",
                        set.wallet_id
                    )));
                };
                let result: WalletSyncResult = dcpipe_schemas::decode(answer)?;
                let mut outputs = vec![self.result_message(&result, position)?];
                outputs.extend(self.command_messages(
                    &party,
                    &commands,
                    set.commands_applied_through,
                    position,
                )?);
                return Ok(Some(Verdict::Done(outputs)));
            }
            KeySetVerdict::Rejected(rejection) if !rejection.answerable => {
                return Ok(Some(Verdict::dead_letter(
                    rejection.rejected.reason,
                    rejection.rejected.detail,
                )));
            }
            KeySetVerdict::Rejected(rejection) => {
                tracing::info!(wallet = %set.wallet_id, reason = %rejection.rejected.reason, detail = %rejection.rejected.detail, "key set rejected");
                metrics::counter!("dcpipe_wallet_key_sets_total", "institution" => inst.id.clone(), "status" => "rejected", "reason" => rejection.rejected.reason.as_str()).increment(1);
                let result = sign_sync_result(
                    rejected_result(set, record.as_ref(), &rejection.rejected, now_ms),
                    &inst.signer,
                )
                .map_err(signer_failure)?;
                return Ok(Some(Verdict::Done(vec![
                    self.result_message(&result, position)?,
                ])));
            }
            KeySetVerdict::Verified(verified) => verified,
        };
        let (Some(read), Some(record)) = (read, record) else {
            return Ok(Some(Verdict::dead_letter(
                Reason::WalletUnknown,
                format!("no offline record of {}", set.wallet_id),
            )));
        };
        self.accept(
            set, &party, &read, &record, &verified, &commands, position, now_ms,
        )
        .await
    }

    /// Decides, clears and writes an accepted key set; `None` when the record changed.
    #[allow(clippy::too_many_arguments)]
    async fn accept(
        &self,
        set: &WalletKeySet,
        party: &PartyRef,
        read: &OfflineRecord,
        record: &WalletRecord,
        verified: &VerifiedKeySet,
        commands: &[RemoteControlCommand],
        position: Position,
        now_ms: i64,
    ) -> Result<Option<Verdict>, StageError> {
        let inst = &self.inst;
        let offline = inst.ledger.offline();
        let blacklist = offline.blacklist().await?;
        let pending = commands
            .iter()
            .filter(|c| c.sequence > verified.commands_applied_through)
            .count();
        let context = SyncContext {
            blacklist: &blacklist,
            blacklist_version: list_version(&blacklist),
            trust_anchors: &self.anchors,
            anchors_digest: self.anchors_digest,
            pending_commands: i64::try_from(pending).unwrap_or(i64::MAX),
            policy: &self.policy,
            rotation_ordered: read.rotation_ordered_at_ms.is_some(),
            now_ms,
        };
        let decision = decide_sync(record, verified, &context);
        let frames = own_frames(set, &verified.payments);
        let own: Vec<ToClear<'_>> = decision
            .own_payments
            .iter()
            .filter_map(|p| frames.iter().find(|f| f.payment.payment_id == p.payment_id))
            .copied()
            .collect();
        let counters: Vec<i64> = own.iter().map(|p| p.payment.payment.counter).collect();
        let cleared_before = if counters.is_empty() {
            Vec::new()
        } else {
            offline.offline_cleared(&party.wallet_id, &counters).await?
        };
        let cleared = decide_payer_clearing(&decision.record, &cleared_before, &own, now_ms);
        let fraud = cleared.fraud || !decision.evidence.is_empty();
        let mut after = cleared.record;
        let mut blacklist_after = blacklist.clone();
        if fraud {
            mark_fraud(&mut after, now_ms);
            if !blacklist_after.contains(&party.wallet_id) {
                blacklist_after.push(party.wallet_id.clone());
            }
        }
        let context = SyncContext {
            blacklist: &blacklist_after,
            blacklist_version: list_version(&blacklist_after),
            ..context
        };
        if decision.send_blacklist || fraud {
            after.blacklist_version = context.blacklist_version;
        }
        let result = sign_sync_result(
            accepted_result(&decision, &after, fraud, &context),
            &inst.signer,
        )
        .map_err(signer_failure)?;
        let answer = dcpipe_schemas::encode(&result)?;
        let update = OfflineUpdate {
            record: stored_record(&after, read, Some(answer)),
            clearings: cleared.clearings,
        };
        if !commit(offline, &[update]).await? {
            return Ok(None);
        }
        metrics::counter!("dcpipe_wallet_key_sets_total", "institution" => inst.id.clone(), "status" => "accepted", "reason" => "").increment(1);
        if fraud {
            tracing::warn!(wallet = %party.wallet_id, evidence = ?decision.evidence, "offline fraud evidence: wallet locked and blacklisted");
        }
        let mut outputs = vec![self.result_message(&result, position)?];
        outputs.extend(self.command_messages(
            party,
            commands,
            verified.commands_applied_through,
            position,
        )?);
        if fraud {
            let at_ms = after.blacklisted_at_ms.unwrap_or(now_ms);
            outputs.extend(super::blacklist::blacklist_entries(
                inst,
                &party.wallet_id,
                at_ms,
            )?);
        }
        outputs.extend(self.forward_received(&decision.received)?);
        // Every own payment the platform holds as cleared takes the clearing path: the ledger
        // answers one reserved before with its first answer.
        let intents: Vec<PaymentIntent> = own.iter().map(|p| offline_intent(p.payment)).collect();
        outputs.extend(clear_intents(inst, &intents, position, now_ms, STAGE).await?);
        Ok(Some(Verdict::Done(outputs)))
    }

    /// Standings of the payers of received payments held here.
    async fn payer_standings(
        &self,
        set: &WalletKeySet,
    ) -> Result<HashMap<PartyRef, PayerStanding>, StageError> {
        let mut standings = HashMap::new();
        for frame in &set.received {
            let Ok(payment) = dcpipe_schemas::decode::<OfflinePayment>(frame.as_bytes()) else {
                continue;
            };
            if payment.payer.institution_id != self.inst.id
                || standings.contains_key(&payment.payer)
            {
                continue;
            }
            if let Some(stored) = self
                .inst
                .ledger
                .offline()
                .offline_wallet(&payment.payer.wallet_id)
                .await?
            {
                standings.insert(
                    payment.payer.clone(),
                    standing(&wallet_record(&self.inst.id, &stored)),
                );
            }
        }
        Ok(standings)
    }

    /// The answer, named after the key set's bus position: a redelivery of that message is
    /// dropped by its id, a key set published again is answered again.
    fn result_message(
        &self,
        result: &WalletSyncResult,
        position: Position,
    ) -> Result<Outgoing, StageError> {
        let subject = subjects::wallet_result(&self.inst.id);
        let msg_id = format!(
            "{subject}/{}/{}-{}",
            result.wallet_id, position.partition, position.offset
        );
        outgoing(subject, result, msg_id, result.wallet_id.as_bytes())
    }

    /// The commands after `applied_through`, in sequence order, named after the key set they
    /// answer (so that they come again after every answer).
    fn command_messages(
        &self,
        party: &PartyRef,
        commands: &[RemoteControlCommand],
        applied_through: i64,
        position: Position,
    ) -> Result<Vec<Outgoing>, StageError> {
        let subject = subjects::wallet_command(&self.inst.id);
        commands
            .iter()
            .filter(|c| c.sequence > applied_through)
            .map(|command| {
                let msg_id = format!(
                    "{subject}/{}/{}-{}",
                    command.command_id, position.partition, position.offset
                );
                outgoing(subject.clone(), command, msg_id, party.wallet_id.as_bytes())
            })
            .collect()
    }

    /// Received payments to their payers' institutions, for clearing there.
    fn forward_received(
        &self,
        received: &[VerifiedOfflinePayment],
    ) -> Result<Vec<Outgoing>, StageError> {
        let mut outputs = Vec::with_capacity(received.len());
        for payment in received {
            let payer_institution = &payment.payment.payer.institution_id;
            if !self.inst.knows(payer_institution) {
                tracing::warn!(payer = %payer_institution, "received payment of an unknown institution not forwarded");
                continue;
            }
            let subject = subjects::wallet_offline(payer_institution);
            let msg_id = format!("{subject}/{}", payment.payment_id);
            outputs.push(outgoing(
                subject,
                &payment.payment,
                msg_id,
                payment.payment.payer.wallet_id.as_bytes(),
            )?);
        }
        Ok(outputs)
    }
}

/// The version of a blacklist: its length (entries are only ever added).
fn list_version(blacklist: &[String]) -> i64 {
    i64::try_from(blacklist.len()).unwrap_or(i64::MAX)
}

/// The wallet's own payments with their frames, in the key set's order.
fn own_frames<'a>(
    set: &'a WalletKeySet,
    payments: &'a [VerifiedOfflinePayment],
) -> Vec<ToClear<'a>> {
    payments
        .iter()
        .zip(&set.payments)
        .map(|(payment, frame)| ToClear {
            payment,
            frame: frame.as_bytes(),
        })
        .collect()
}

fn decoded_commands(
    queued: &[dcpipe_connectors::ledger::offline::QueuedCommand],
) -> Result<Vec<RemoteControlCommand>, StageError> {
    queued
        .iter()
        .map(|q| {
            dcpipe_schemas::decode::<RemoteControlCommand>(&q.frame).map_err(|e| {
                StageError::fatal(format!(
                    "stored command {} of {} does not decode: {e}",
                    hex::encode(q.command_id),
                    q.wallet_id
                ))
            })
        })
        .collect()
}

fn signer_failure(e: crate::pki::KeyError) -> StageError {
    StageError::fatal(format!("the institution signer cannot sign: {e}"))
}

/// Reserves offline payments on their purse accounts (one ledger transaction) and answers
/// each as the clearing path does: the clearing message, the first answer again, or a
/// rejection.
pub(crate) async fn clear_intents(
    inst: &Institution,
    intents: &[PaymentIntent],
    position: Position,
    now_ms: i64,
    stage: &str,
) -> Result<Vec<Outgoing>, StageError> {
    if intents.is_empty() {
        return Ok(Vec::new());
    }
    let refs: Vec<&PaymentIntent> = intents.iter().collect();
    let results = reserve(inst, &refs, now_ms).await?;
    let mut outputs = Vec::new();
    for (intent, result) in intents.iter().zip(&results) {
        outputs.extend(answer_reservation(
            inst, intent, result, position, now_ms, stage,
        )?);
    }
    Ok(outputs)
}

#[async_trait]
impl Stage for WalletSyncStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        &self.inst.id
    }

    fn subject(&self) -> String {
        subjects::wallet_keyset(&self.inst.id)
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        let mut verdicts = Vec::with_capacity(batch.len());
        for input in batch {
            verdicts.push(
                match dcpipe_schemas::decode::<WalletKeySet>(input.payload) {
                    Err(e) => Verdict::undecodable(&e),
                    Ok(set) => self.one(&set, input.position).await?,
                },
            );
        }
        Ok(verdicts)
    }
}
