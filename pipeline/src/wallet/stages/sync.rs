//! The wallet's institution receives its key set on reconnection: verifies it against the
//! platform's record, decides the new record, clears the wallet's own payments with the
//! double-spending rule, writes all of it at the version read, and answers with a signed
//! WalletSyncResult followed by the commands waiting for the wallet. Received payments go to
//! their payers' institutions (`wallet.offline.<payer oi>`); the wallet's own payments take the
//! clearing path from its purse account.
//!
//! The key sets of a batch, when they are of different wallets, are decided together: their
//! reads side by side, one ledger transaction for every record and one for the reservations.
//! A batch in which a wallet is locked or blacklisted goes one key set at a time, so that the
//! others see it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::{Outgoing, Position};
use dcpipe_connectors::ledger::offline::{
    COMMANDS_LIST_MAX, OfflineClearing, OfflineRecord, OfflineUpdate,
};
use dcpipe_schemas::{
    Der, OfflinePayment, PartyRef, RemoteControlCommand, WalletKeySet, WalletSyncResult,
};
use futures::future::try_join_all;

use super::record::{
    ToClear, decide_payer_clearing, mark_fraud, offline_intent, standing, stored_record,
    wallet_record, with_applied_limits,
};
use super::{STALE_RETRIES_MAX, commit, commit_current, kept_changing};
use crate::clearing::payer::{Arrival, answer_reservation, reserve, short_answer};
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
        let offline = self.inst.ledger.offline();
        let now_ms = self.inst.clock.now_ms();
        let blacklist = offline.blacklist().await?;
        match self.decide(set, position, &blacklist, now_ms).await? {
            Decided::Answered(verdict) => Ok(Some(verdict)),
            Decided::Accepted(accepted) => {
                if !commit(offline, std::slice::from_ref(&accepted.update)).await? {
                    return Ok(None);
                }
                let mut verdicts = self.finish(vec![*accepted], now_ms).await?;
                Ok(verdicts.pop())
            }
        }
    }

    /// The key sets of a batch, all of different wallets, decided together: the reads of all
    /// of them side by side, one write at the versions read, one reservation of the wallets'
    /// own payments; a key set whose record changed since it was read is decided again alone.
    /// `None` (nothing written) when the batch must go one key set at a time: a key set locks
    /// or blacklists its wallet (fraud, a lock command applied), which the others of the batch
    /// may need to see.
    async fn together(
        &self,
        sets: &[(&WalletKeySet, Position)],
    ) -> Result<Option<Vec<Verdict>>, StageError> {
        let offline = self.inst.ledger.offline();
        let now_ms = self.inst.clock.now_ms();
        let blacklist = offline.blacklist().await?;
        let decided = try_join_all(
            sets.iter()
                .map(|(set, position)| self.decide(set, *position, &blacklist, now_ms)),
        )
        .await?;
        if decided.iter().any(|d| match d {
            Decided::Accepted(accepted) => accepted.fraud || accepted.standing_changed,
            Decided::Answered(_) => false,
        }) {
            return Ok(None);
        }
        let updates: Vec<OfflineUpdate> = decided
            .iter()
            .filter_map(|d| match d {
                Decided::Accepted(accepted) => Some(accepted.update.clone()),
                Decided::Answered(_) => None,
            })
            .collect();
        let stale = commit_current(offline, updates).await?;
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(decided.len());
        let mut accepted = Vec::new();
        let mut again = Vec::new();
        for (index, d) in decided.into_iter().enumerate() {
            verdicts.push(None);
            match d {
                Decided::Answered(verdict) => verdicts[index] = Some(verdict),
                Decided::Accepted(a) if stale.contains(&a.update.record.wallet_id) => {
                    again.push(index);
                }
                Decided::Accepted(a) => accepted.push((index, *a)),
            }
        }
        let (indexes, accepted): (Vec<usize>, Vec<Accepted>) = accepted.into_iter().unzip();
        for (index, verdict) in indexes
            .into_iter()
            .zip(self.finish(accepted, now_ms).await?)
        {
            verdicts[index] = Some(verdict);
        }
        // Those whose record changed since it was read, decided again one at a time.
        for index in again {
            let (set, position) = sets[index];
            verdicts[index] = Some(self.one(set, position).await?);
        }
        verdicts
            .into_iter()
            .map(|v| v.ok_or_else(|| StageError::fatal("a key set of the batch without a verdict")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Reads what the platform holds for `set` and decides it at `now_ms` against
    /// `blacklist`: answered without a write, or accepted with the write it needs.
    async fn decide(
        &self,
        set: &WalletKeySet,
        position: Position,
        blacklist: &[String],
        now_ms: i64,
    ) -> Result<Decided, StageError> {
        let inst = &self.inst;
        let offline = inst.ledger.offline();
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
                return Ok(Decided::Answered(Verdict::Done(outputs)));
            }
            KeySetVerdict::Rejected(rejection) if !rejection.answerable => {
                return Ok(Decided::Answered(Verdict::dead_letter(
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
                return Ok(Decided::Answered(Verdict::Done(vec![
                    self.result_message(&result, position)?,
                ])));
            }
            KeySetVerdict::Verified(verified) => verified,
        };
        let (Some(read), Some(record)) = (read, record) else {
            return Ok(Decided::Answered(Verdict::dead_letter(
                Reason::WalletUnknown,
                format!("no offline record of {}", set.wallet_id),
            )));
        };
        let frames = own_frames(set, &verified.payments);
        let counters: Vec<i64> = frames.iter().map(|p| p.payment.payment.counter).collect();
        let cleared_before = if counters.is_empty() {
            Vec::new()
        } else {
            offline.offline_cleared(&party.wallet_id, &counters).await?
        };
        let accepted = self.accept(
            Sync {
                set,
                party,
                read: &read,
                record: &record,
                verified: &verified,
                commands: &commands,
                position,
            },
            blacklist,
            &cleared_before,
            now_ms,
        )?;
        Ok(Decided::Accepted(Box::new(accepted)))
    }

    /// Decides an accepted key set at `now_ms`: the new record, the clearing of the wallet's
    /// own payments, the signed answer and what follows it.
    fn accept(
        &self,
        sync: Sync<'_>,
        blacklist: &[String],
        cleared_before: &[OfflineClearing],
        now_ms: i64,
    ) -> Result<Accepted, StageError> {
        let Sync {
            set,
            party,
            read,
            record,
            verified,
            commands,
            position,
        } = sync;
        let inst = &self.inst;
        let pending = commands
            .iter()
            .filter(|c| c.sequence > verified.commands_applied_through)
            .count();
        let context = SyncContext {
            blacklist,
            blacklist_version: list_version(blacklist),
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
        let cleared = decide_payer_clearing(&decision.record, cleared_before, &own, now_ms);
        let fraud = cleared.fraud || !decision.evidence.is_empty();
        let mut after = cleared.record;
        let mut blacklist_after = blacklist.to_vec();
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
        let standing_changed = standing(record) != standing(&after);
        let update = OfflineUpdate {
            record: stored_record(&after, read, Some(answer)),
            clearings: cleared.clearings,
        };
        if fraud {
            tracing::warn!(wallet = %party.wallet_id, evidence = ?decision.evidence, "offline fraud evidence: wallet locked and blacklisted");
        }
        let mut outputs = vec![self.result_message(&result, position)?];
        outputs.extend(self.command_messages(
            &party,
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
        let intents = own.iter().map(|p| offline_intent(p.payment)).collect();
        Ok(Accepted {
            update,
            outputs,
            intents,
            fraud,
            standing_changed,
        })
    }

    /// The verdicts of accepted key sets once written: their answers and forwarded payments,
    /// and the clearing path for their own payments, reserved in one ledger transaction.
    async fn finish(
        &self,
        accepted: Vec<Accepted>,
        now_ms: i64,
    ) -> Result<Vec<Verdict>, StageError> {
        let inst = &self.inst;
        let intents: Vec<&PaymentIntent> = accepted.iter().flat_map(|a| &a.intents).collect();
        let results = reserve(inst, &intents, now_ms).await?;
        if results.len() != intents.len() {
            return Err(short_answer("reserve"));
        }
        let mut results = results.iter();
        let mut verdicts = Vec::with_capacity(accepted.len());
        for a in accepted {
            metrics::counter!("dcpipe_wallet_key_sets_total", "institution" => inst.id.clone(), "status" => "accepted", "reason" => "").increment(1);
            let mut outputs = a.outputs;
            for (intent, result) in a.intents.iter().zip(results.by_ref()) {
                outputs.extend(answer_reservation(
                    inst,
                    intent,
                    result,
                    Arrival::Uploaded,
                    now_ms,
                    STAGE,
                )?);
            }
            verdicts.push(Verdict::Done(outputs));
        }
        Ok(verdicts)
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

/// A verified key set with what was read for it.
struct Sync<'a> {
    set: &'a WalletKeySet,
    party: PartyRef,
    read: &'a OfflineRecord,
    record: &'a WalletRecord,
    verified: &'a VerifiedKeySet,
    commands: &'a [RemoteControlCommand],
    position: Position,
}

/// A key set decided.
enum Decided {
    /// Answered without a write.
    Answered(Verdict),
    /// Accepted: written, then answered.
    Accepted(Box<Accepted>),
}

/// An accepted key set: the write it needs and what to publish once it is written.
struct Accepted {
    update: OfflineUpdate,
    /// The answer, the commands waiting, blacklist entries, the received payments forwarded.
    outputs: Vec<Outgoing>,
    /// The wallet's own payments, for the clearing path.
    intents: Vec<PaymentIntent>,
    fraud: bool,
    /// Whether the wallet is locked or blacklisted now and was not before.
    standing_changed: bool,
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
        let decoded: Vec<Result<WalletKeySet, _>> = batch
            .iter()
            .map(|input| dcpipe_schemas::decode::<WalletKeySet>(input.payload))
            .collect();
        let sets: Vec<(&WalletKeySet, Position)> = decoded
            .iter()
            .zip(batch)
            .filter_map(|(set, input)| Some((set.as_ref().ok()?, input.position)))
            .collect();
        let wallets: HashSet<&str> = sets.iter().map(|(s, _)| s.wallet_id.as_str()).collect();
        let mut together = None;
        if sets.len() > 1 && wallets.len() == sets.len() {
            together = self.together(&sets).await?;
        }
        let mut together = together.map(Vec::into_iter);
        let mut verdicts = Vec::with_capacity(batch.len());
        for (set, input) in decoded.iter().zip(batch) {
            verdicts.push(match (set, together.as_mut()) {
                (Err(e), _) => Verdict::undecodable(e),
                (Ok(_), Some(decided)) => decided
                    .next()
                    .ok_or_else(|| StageError::fatal("a key set of the batch without a verdict"))?,
                (Ok(set), None) => self.one(set, input.position).await?,
            });
        }
        Ok(verdicts)
    }
}
