//! Offline wallets on a running network (flow 2 through its stages, for the demo): wallets of
//! every institution open their offline purses from their balances, pay each other offline
//! from a seed, one spends its purse twice, and they reconnect and publish their key sets; the
//! bad cases a bank must withstand are injected — a forged and a replayed key set, a command
//! issued while a wallet is offline. Every answer, every offline payment's outcome and every
//! purse is then checked.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dcpipe_connectors::bus::{Bus, Consumer, ConsumerConfig, Outgoing};
use dcpipe_connectors::ledger::OfflineLedger;
use dcpipe_connectors::ledger::offline::{FundingResult, OfflineOpening, PurseFunding};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::invariants::{OutcomeCollector, Submission};
use dcpipe_pipeline::network::Network;
use dcpipe_pipeline::protocol::{CHAIN_START, offline_payment_digest, offline_payment_id};
use dcpipe_pipeline::reason::Reason;
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::wallet::limits::{HOUR_MS, PAID_AT_SKEW_MS_MAX_DEFAULT};
use dcpipe_pipeline::wallet::remote::issue_command;
use dcpipe_pipeline::wallet::stages::record::terms_of;
use dcpipe_pipeline::wallet::{
    Command, CommandApplied, HardWallet, SatelliteFix, WalletProvisioning, copied_key,
    key_fingerprint, key_set_input, offline_limits_for_tier,
};
use dcpipe_schemas::{
    CommandId, Digest32, OfflinePayment, OutcomeStatus, PartyRef, PaymentId, RemoteControlCommand,
    SyncStatus, WalletSyncResult,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// What each wallet moves into its purse before going offline.
pub const FLOW_PURSE_FEN: i64 = 50_000;

/// Most wallets the flow takes offline.
pub const FLOW_WALLETS_MAX: usize = 64;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletFlowConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Wallets taken offline (4 to [`FLOW_WALLETS_MAX`]), spread over the institutions.
    pub wallets: usize,
}

/// What happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalletFlowReport {
    /// Wallets taken offline.
    pub wallets: usize,
    /// Offline payments made (each must clear once).
    pub payments_made: usize,
    /// Of which completed, once each.
    pub payments_completed: usize,
    /// Of which refused once because their payee, the double spender, was locked when they
    /// cleared (`payee.wallet_locked`): voided, their purse given back to their payer.
    pub payments_refused_payee_locked: usize,
    /// Key sets answered.
    pub key_sets_answered: usize,
    /// Wallets whose purse, as their platform records it, is what the wallet holds.
    pub purses_reconciled: usize,
    /// The double spender was locked and blacklisted, the loss booked, its key set refused.
    pub double_spender_caught: bool,
    /// The loss accounts together (0 or below).
    pub loss_fen: i64,
    /// The forged key set got `wallet.signature_invalid`.
    pub forged_refused: bool,
    /// The replayed key set got `wallet.keyset_replayed`.
    pub replay_refused: bool,
    /// The command issued while its wallet was offline was applied once after it reconnected.
    pub command_applied_once: bool,
    /// Net of the completed offline payments between institutions, per institution: what
    /// settlement must add to the other flows' nets.
    pub interbank_net: BTreeMap<String, i64>,
    /// What went wrong, for people.
    pub failures: Vec<String>,
}

impl WalletFlowReport {
    /// Whether every check held.
    pub fn valid(&self) -> bool {
        self.failures.is_empty()
            && self.payments_completed + self.payments_refused_payee_locked == self.payments_made
            && self.purses_reconciled == self.wallets
            && self.double_spender_caught
            && self.forged_refused
            && self.replay_refused
            && self.command_applied_once
    }
}

/// Why the flow could not run (a defect or an unreachable bus, not a refusal).
#[derive(Debug, thiserror::Error)]
#[error("wallet flow: {0}")]
pub struct WalletFlowError(String);

fn failed(error: impl std::fmt::Display) -> WalletFlowError {
    WalletFlowError(error.to_string())
}

fn fix(at_ms: i64) -> SatelliteFix {
    SatelliteFix { at_ms }
}

/// The wallets' side of the bus: key sets out, answers and commands in.
struct Wallets<'a> {
    network: &'a Network,
    bus: &'a Arc<dyn Bus>,
    results: Vec<Box<dyn Consumer>>,
    commands: Vec<Box<dyn Consumer>>,
    answers: VecDeque<WalletSyncResult>,
    received_commands: Vec<RemoteControlCommand>,
    until: tokio::time::Instant,
}

impl Wallets<'_> {
    async fn publish(
        &self,
        subject: String,
        key: &str,
        frame: Vec<u8>,
    ) -> Result<(), WalletFlowError> {
        self.bus
            .publish(Outgoing::new(subject, Bytes::from(frame)).with_key(key.as_bytes().to_vec()))
            .await
            .map(|_| ())
            .map_err(failed)
    }

    /// Reads what arrived on the answer and command subjects.
    async fn poll(&mut self) -> Result<(), WalletFlowError> {
        for consumer in &mut self.results {
            for delivery in consumer
                .fetch(64, Duration::from_millis(20))
                .await
                .map_err(failed)?
            {
                self.answers
                    .push_back(dcpipe_schemas::decode(&delivery.record.payload).map_err(failed)?);
                delivery.ack().await.map_err(failed)?;
            }
        }
        for consumer in &mut self.commands {
            for delivery in consumer
                .fetch(64, Duration::from_millis(20))
                .await
                .map_err(failed)?
            {
                self.received_commands
                    .push(dcpipe_schemas::decode(&delivery.record.payload).map_err(failed)?);
                delivery.ack().await.map_err(failed)?;
            }
        }
        Ok(())
    }

    /// The next answer naming `digest` for `wallet_id`.
    async fn answer(
        &mut self,
        wallet_id: &str,
        digest: Digest32,
    ) -> Result<WalletSyncResult, WalletFlowError> {
        loop {
            let found = self
                .answers
                .iter()
                .position(|r| r.wallet_id == wallet_id && r.key_set_digest == Some(digest));
            if let Some(result) = found.and_then(|index| self.answers.remove(index)) {
                return Ok(result);
            }
            if tokio::time::Instant::now() > self.until {
                return Err(failed(format!("no answer for {wallet_id}")));
            }
            self.poll().await?;
        }
    }

    /// The wallet reconnects now: its key set out, its answer back and applied.
    async fn sync(&mut self, wallet: &mut HardWallet) -> Result<WalletSyncResult, WalletFlowError> {
        let upload = wallet.key_set(fix(system_now_ms())).map_err(failed)?;
        let party = wallet.party().clone();
        self.publish(
            subjects::wallet_keyset(&party.institution_id),
            &party.wallet_id,
            upload.frame.clone(),
        )
        .await?;
        let result = self.answer(&party.wallet_id, upload.digest).await?;
        wallet
            .apply_sync_result(&result, &self.network.verifier)
            .map_err(|e| failed(format!("{}: {e:?}", party.wallet_id)))?;
        Ok(result)
    }

    fn offline(&self, institution: &str) -> &dyn OfflineLedger {
        self.network.institutions[institution].ledger.offline()
    }
}

/// Runs the flow on `network`, whose stages run on `bus`, watching outcomes with `collector`.
pub async fn run_wallet_flow(
    network: &Network,
    bus: &Arc<dyn Bus>,
    collector: &OutcomeCollector,
    config: &WalletFlowConfig,
    deadline: Duration,
) -> Result<WalletFlowReport, WalletFlowError> {
    let until = tokio::time::Instant::now() + deadline;
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let institutions: Vec<String> = network.institutions.keys().cloned().collect();
    if institutions.len() < 2 {
        return Err(failed("the flow needs two institutions"));
    }
    // Wallets round-robin over the institutions, the last of each first (the payments' load
    // spends from the first, its hot wallets, and a purse is funded from the balance).
    let wanted = config.wallets.clamp(4, FLOW_WALLETS_MAX);
    let mut chosen = Vec::new();
    for n in 0.. {
        let before = chosen.len();
        for oi in &institutions {
            if chosen.len() == wanted {
                break;
            }
            if let Some(info) = network
                .wallets
                .iter()
                .filter(|w| &w.party.institution_id == oi)
                .rev()
                .nth(n)
            {
                chosen.push(info.clone());
            }
        }
        if chosen.len() == wanted || chosen.len() == before {
            break;
        }
    }
    let mut anchors = vec![network.pki.root().certificate().der().to_vec()];
    anchors.extend(
        network
            .pki
            .institutions()
            .map(|(_, keys)| keys.ca.certificate().der().to_vec()),
    );
    let mut side = Wallets {
        network,
        bus,
        results: Vec::new(),
        commands: Vec::new(),
        answers: VecDeque::new(),
        received_commands: Vec::new(),
        until,
    };
    for oi in &institutions {
        side.results.push(
            bus.consumer(ConsumerConfig::new(
                subjects::wallet_result(oi),
                "demo-wallets",
            ))
            .await
            .map_err(failed)?,
        );
        side.commands.push(
            bus.consumer(ConsumerConfig::new(
                subjects::wallet_command(oi),
                "demo-wallets",
            ))
            .await
            .map_err(failed)?,
        );
    }
    // Offline: each purse funded from the wallet's balance, the platform's record opened.
    let t0 = system_now_ms() - HOUR_MS;
    let mut wallets = Vec::with_capacity(chosen.len());
    for info in &chosen {
        let party = &info.party;
        let keys = network
            .pki
            .wallet(&party.wallet_id)
            .ok_or_else(|| failed(format!("no keys of {}", party.wallet_id)))?;
        let spki = keys
            .wallet
            .certificate()
            .public_key()
            .to_spki_der()
            .map_err(failed)?;
        let limits = offline_limits_for_tier(info.tier.number);
        let offline = side.offline(&party.institution_id);
        offline
            .open_offline(&[OfflineOpening {
                wallet_id: party.wallet_id.clone(),
                key_version: 1,
                key_fingerprint: key_fingerprint(&spki),
                last_sync_at_ms: t0,
                limits: terms_of(&limits),
            }])
            .await
            .map_err(failed)?;
        let funded = offline
            .fund_purses(&[PurseFunding {
                funding_id: *CommandId::random().as_bytes(),
                wallet_id: party.wallet_id.clone(),
                amount_fen: FLOW_PURSE_FEN,
            }])
            .await
            .map_err(failed)?;
        if !matches!(funded.first(), Some(FundingResult::Funded { .. })) {
            return Err(failed(format!(
                "the purse of {} is not funded: {funded:?}",
                party.wallet_id
            )));
        }
        let mut wallet = HardWallet::provision(WalletProvisioning {
            party: party.clone(),
            tier: info.tier.number,
            key: copied_key(&keys.wallet).map_err(failed)?,
            key_version: 1,
            limits,
            trust_anchors: anchors.clone(),
            last_sync_at_ms: t0,
            counter: 0,
            chain_head: CHAIN_START,
            purse_fen: 0,
        })
        .map_err(failed)?;
        wallet.fund_purse(FLOW_PURSE_FEN).map_err(failed)?;
        wallets.push(wallet);
    }
    let count = wallets.len();
    let mut report = WalletFlowReport {
        wallets: count,
        ..WalletFlowReport::default()
    };
    // While wallet 1 is offline its institution raises its purse limit.
    let commanded = wallets[1].party().clone();
    let inst = &network.institutions[&commanded.institution_id];
    let mut raised = *wallets[1].limits();
    raised.purse_limit_fen += 10_000;
    let command = issue_command(
        inst,
        &commanded.wallet_id,
        CommandId::random(),
        &Command::OfflineLimits(raised),
        system_now_ms(),
    )
    .await
    .map_err(failed)?
    .ok_or_else(|| failed("no offline record for the command"))?;

    // Offline payments from the seed; wallet 0 then rewinds and spends its purse again.
    let mut made: Vec<Made> = Vec::new();
    let mut at = t0 + 60_000;
    let mut pay =
        |wallets: &mut Vec<HardWallet>, payer: usize, payee: usize, amount: i64, at: i64| {
            let payee_party = wallets[payee].party().clone();
            let Ok(frame) = wallets[payer].pay(&payee_party, amount, fix(at)) else {
                return;
            };
            if wallets[payee]
                .receive(frame.as_bytes(), fix(at), PAID_AT_SKEW_MS_MAX_DEFAULT)
                .is_ok()
                && let Ok(payment) = dcpipe_schemas::decode::<OfflinePayment>(frame.as_bytes())
            {
                made.push(Made::of(&payment));
            }
        };
    // Wallet 0, the future double spender, pays only what the injection makes it pay; it is
    // paid like the others: a payment to it that clears after it was caught (its online wallet
    // locked) is refused (`payee.wallet_locked`) and its payer's purse given back.
    for payer in 1..count {
        for _ in 0..rng.random_range(0..=4) {
            let payee = (payer + rng.random_range(1..count)) % count;
            at += rng.random_range(1_000..30_000);
            pay(&mut wallets, payer, payee, rng.random_range(1..=5_000), at);
        }
    }
    at += 60_000;
    pay(&mut wallets, 0, 1, 10_000, at);
    wallets[0].rewind_for_double_spending(0, CHAIN_START, FLOW_PURSE_FEN);
    let other = (2..count)
        .find(|i| wallets[*i].party().institution_id != wallets[0].party().institution_id)
        .unwrap_or(2);
    at += 60_000;
    pay(&mut wallets, 0, other, 45_000, at);
    report.payments_made = made.len();

    // Reconnection of all but the double spender, in a seeded order; a forged key set first.
    let mut order: Vec<usize> = (1..count).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let forger = order[0];
    let victim = order[1];
    let upload = wallets[victim]
        .key_set(fix(system_now_ms()))
        .map_err(failed)?;
    let mut forged = upload.key_set.clone();
    forged.signature = wallets[forger]
        .key()
        .key()
        .sign(&key_set_input(&forged))
        .map_err(failed)?;
    side.publish(
        subjects::wallet_keyset(&forged.institution_id),
        &forged.wallet_id,
        dcpipe_schemas::encode(&forged).map_err(failed)?,
    )
    .await?;
    let refused = side.answer(&forged.wallet_id, upload.digest).await?;
    report.forged_refused = refused.status == SyncStatus::Rejected
        && refused.reason_code.as_deref() == Some(Reason::WalletSignature.as_str());
    report.key_sets_answered += 1;
    let mut first_uploads = Vec::new();
    for &index in &order {
        let upload = wallets[index]
            .key_set(fix(system_now_ms()))
            .map_err(failed)?;
        let answer = side.sync(&mut wallets[index]).await?;
        report.key_sets_answered += 1;
        if answer.status != SyncStatus::Accepted {
            report.failures.push(format!(
                "{}: key set {:?} {:?}",
                wallets[index].party().wallet_id,
                answer.status,
                answer.reason_code
            ));
        }
        first_uploads.push((index, upload));
    }
    // The command follows its wallet's answer: applied once, a copy recognized.
    let deadline_commands = tokio::time::Instant::now() + Duration::from_secs(10).min(deadline);
    while !side
        .received_commands
        .iter()
        .any(|c| c.command_id == command.command_id)
        && tokio::time::Instant::now() < deadline_commands
    {
        side.poll().await?;
    }
    let delivered: Vec<RemoteControlCommand> = side
        .received_commands
        .iter()
        .filter(|c| c.command_id == command.command_id)
        .cloned()
        .collect();
    if let Some(first) = delivered.first() {
        let once = wallets[1].apply_command(first, &network.verifier);
        let again = wallets[1].apply_command(first, &network.verifier);
        report.command_applied_once = matches!(once, Ok(CommandApplied::Applied(_)))
            && again == Ok(CommandApplied::AlreadyApplied)
            && wallets[1].limits().purse_limit_fen == raised.purse_limit_fen;
    }
    // A replay: the first key set of the victim again, after a newer sync.
    let (_, replayed) = first_uploads
        .iter()
        .find(|(index, _)| *index == victim)
        .ok_or_else(|| failed("no upload of the victim"))?;
    let replayed = replayed.clone();
    // A payee that is neither the victim nor the double spender.
    let fresh = if victim + 1 < count { victim + 1 } else { 1 };
    let fresh_payee = wallets[fresh].party().clone();
    if wallets[victim]
        .pay(&fresh_payee, 1, fix(system_now_ms()))
        .is_ok()
    {
        // Its payee never uploads it: the payer's own key set clears it.
        let frame = wallets[victim]
            .key_set(fix(system_now_ms()))
            .map_err(failed)?
            .key_set
            .payments
            .last()
            .map(|f| f.as_bytes().to_vec())
            .unwrap_or_default();
        if let Ok(payment) = dcpipe_schemas::decode::<OfflinePayment>(&frame) {
            made.push(Made::of(&payment));
            report.payments_made = made.len();
        }
    }
    side.sync(&mut wallets[victim]).await?;
    report.key_sets_answered += 1;
    side.publish(
        subjects::wallet_keyset(&replayed.key_set.institution_id),
        &replayed.key_set.wallet_id,
        replayed.frame.clone(),
    )
    .await?;
    let answer = side
        .answer(&replayed.key_set.wallet_id, replayed.digest)
        .await?;
    report.key_sets_answered += 1;
    report.replay_refused = answer.status == SyncStatus::Rejected
        && answer.reason_code.as_deref() == Some(Reason::WalletKeySetReplayed.as_str());

    // Every payment completes once; then the double spender comes back.
    let submissions: Vec<Submission> = made.iter().map(Made::submission).collect();
    let remaining = until.saturating_duration_since(tokio::time::Instant::now());
    collector
        .wait_until(remaining, |book| {
            submissions.iter().all(|s| book.answer(s).is_some())
        })
        .await;
    let spender = wallets[0].party().clone();
    let mut refunded_payers: Vec<usize> = Vec::new();
    collector.with_book(|book| {
        for payment in &made {
            let answer = book.answer(&payment.submission());
            if payment.payee == spender
                && answer.is_some_and(|a| {
                    a.status == OutcomeStatus::Rejected
                        && a.reason_code.as_deref() == Some(Reason::PayeeWalletLocked.as_str())
                })
            {
                report.payments_refused_payee_locked += 1;
                if let Some(index) = wallets.iter().position(|w| *w.party() == payment.payer) {
                    refunded_payers.push(index);
                }
                continue;
            }
            if !answer.is_some_and(|a| a.status == OutcomeStatus::Completed) {
                report.failures.push(format!(
                    "offline payment {} not completed: {:?}",
                    payment.id,
                    answer.map(|a| (a.status, a.reason_code.clone()))
                ));
                continue;
            }
            report.payments_completed += 1;
            if payment.payer_institution != payment.payee_institution {
                *report
                    .interbank_net
                    .entry(payment.payer_institution.clone())
                    .or_default() -= payment.amount_fen;
                *report
                    .interbank_net
                    .entry(payment.payee_institution.clone())
                    .or_default() += payment.amount_fen;
            }
        }
    });
    // The payers of refused payments learn their purse back at a sync.
    refunded_payers.sort_unstable();
    refunded_payers.dedup();
    for index in refunded_payers {
        side.sync(&mut wallets[index]).await?;
        report.key_sets_answered += 1;
    }
    let answer = side.sync(&mut wallets[0]).await?;
    report.key_sets_answered += 1;
    let record = side
        .offline(&spender.institution_id)
        .offline_wallet(&spender.wallet_id)
        .await
        .map_err(failed)?;
    let blacklist = side
        .offline(&spender.institution_id)
        .blacklist()
        .await
        .map_err(failed)?;
    for oi in &institutions {
        report.loss_fen += side
            .offline(oi)
            .offline_totals()
            .await
            .map_err(failed)?
            .loss_account_fen;
    }
    report.double_spender_caught = answer.reason_code.as_deref()
        == Some(Reason::WalletBlacklisted.as_str())
        && record.is_some_and(|r| r.locked_at_ms.is_some() && r.blacklisted_at_ms.is_some())
        && blacklist.contains(&spender.wallet_id)
        && report.loss_fen < 0;
    // Purses: what the platform records is what each wallet holds after its last sync (the
    // double spender's, refused, is empty on the platform).
    for wallet in &wallets {
        let party = wallet.party();
        let record = side
            .offline(&party.institution_id)
            .offline_wallet(&party.wallet_id)
            .await
            .map_err(failed)?;
        let expected = if party == &spender {
            0
        } else {
            wallet.purse_fen()
        };
        if record.as_ref().is_some_and(|r| r.purse_fen == expected) {
            report.purses_reconciled += 1;
        } else {
            report.failures.push(format!(
                "{}: purse {} on the platform, {} in the wallet",
                party.wallet_id,
                record.map_or(-1, |r| r.purse_fen),
                expected
            ));
        }
    }
    Ok(report)
}

/// An offline payment made, as the checks need it.
struct Made {
    id: PaymentId,
    digest: Digest32,
    payer: PartyRef,
    payee: PartyRef,
    payer_institution: String,
    payee_institution: String,
    amount_fen: i64,
}

impl Made {
    fn of(payment: &OfflinePayment) -> Self {
        let digest = offline_payment_digest(payment);
        Made {
            id: offline_payment_id(&digest),
            digest,
            payer: payment.payer.clone(),
            payee: payment.payee.clone(),
            payer_institution: payment.payer.institution_id.clone(),
            payee_institution: payment.payee.institution_id.clone(),
            amount_fen: payment.amount_fen,
        }
    }

    /// The submission its outcome answers: the offline-payment digest names it.
    fn submission(&self) -> Submission {
        Submission {
            payment_id: self.id,
            envelope_digest: self.digest,
            submission_digest: self.digest,
        }
    }
}
