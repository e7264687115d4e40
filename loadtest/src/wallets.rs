//! Synthetic offline wallets: a seeded scenario of hard wallets that fund their purses, go
//! offline, pay each other while their device clocks drift, and reconnect in a random order,
//! with the bad cases a bank must withstand injected — a double spender, a forged key set and a
//! replayed key set. It knows by construction what must clear, and checks it against the
//! platform's reference model (`pipeline::wallet::OfflineNetwork`): every offline payment made
//! cleared exactly once and credited to its payee, each injected case answered with its code,
//! money conserved. The same seed gives the same run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dcpipe_pipeline::pki::{ChainVerifier, PkiDirectory, RevocationSet};
use dcpipe_pipeline::protocol::{CHAIN_START, offline_payment_digest, offline_payment_id};
use dcpipe_pipeline::reason::Reason;
use dcpipe_pipeline::wallet::limits::{HOUR_MS, PAID_AT_SKEW_MS_MAX_DEFAULT};
use dcpipe_pipeline::wallet::{
    DeviceClock, Drift, HardWallet, OfflineNetwork, OfflineTotals, SatelliteSource, SyncPolicy,
    WalletProvisioning, copied_key, key_set_input, offline_limits_for_tier,
};
use dcpipe_schemas::{OfflinePayment, PartyRef, PaymentId, SyncStatus, WalletKeySet};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Most offline payments one synthetic wallet makes between two syncs.
pub const PAYMENTS_PER_WALLET_MAX: u32 = 20;

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletScenario {
    /// Seed of every random choice.
    pub seed: u64,
    /// Each wallet makes 0 to this many offline payments (at most [`PAYMENTS_PER_WALLET_MAX`]).
    pub payments_per_wallet_max: u32,
    /// Inject a wallet that spends its purse twice.
    pub double_spender: bool,
    /// Inject a key set signed with another wallet's key.
    pub forged_key_set: bool,
    /// Inject a key set replayed after a newer sync.
    pub replayed_key_set: bool,
}

/// What happened, and whether it is what had to happen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalletScenarioReport {
    /// Wallets in the run.
    pub wallets: usize,
    /// Offline payments the wallets made (each must clear once).
    pub payments_made: usize,
    /// Payments the platform cleared.
    pub payments_cleared: usize,
    /// Key sets answered, by status and code.
    pub answers: BTreeMap<String, u64>,
    /// Money of the network at the end.
    pub totals: OfflineTotals,
    /// The double spender was locked and blacklisted (or none was injected).
    pub double_spender_caught: bool,
    /// The forged key set got `wallet.signature_invalid` (or none was injected).
    pub forged_refused: bool,
    /// The replayed key set got `wallet.keyset_replayed` (or none was injected).
    pub replay_refused: bool,
    /// Payments made that did not clear exactly once, by id.
    pub missing: Vec<PaymentId>,
}

impl WalletScenarioReport {
    /// Whether every check held.
    pub fn valid(&self) -> bool {
        self.missing.is_empty()
            && self.payments_cleared == self.payments_made
            && self.totals.conserved()
            && self.double_spender_caught
            && self.forged_refused
            && self.replay_refused
    }
}

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum WalletScenarioError {
    /// The PKI has fewer than three wallets.
    #[error("a scenario needs at least 3 wallets")]
    TooFewWallets,
    /// A wallet or the platform failed (a defect, not a refusal).
    #[error("{0}")]
    Wallet(String),
}

fn failed(error: impl std::fmt::Display) -> WalletScenarioError {
    WalletScenarioError::Wallet(error.to_string())
}

struct Sim {
    wallet: HardWallet,
    clock: DeviceClock,
}

/// Runs `scenario` over every wallet of `pki` from the true moment `t0_ms` (the certificates
/// must be valid then and for the days after).
pub fn run_wallet_scenario(
    pki: &PkiDirectory,
    scenario: &WalletScenario,
    t0_ms: i64,
) -> Result<WalletScenarioReport, WalletScenarioError> {
    let mut rng = SmallRng::seed_from_u64(scenario.seed);
    let satellite = SatelliteSource::new(scenario.seed);
    let mut anchors = vec![pki.root().certificate().der().to_vec()];
    anchors.extend(
        pki.institutions()
            .map(|(_, k)| k.ca.certificate().der().to_vec()),
    );
    let verifier = Arc::new(ChainVerifier::new(
        Arc::clone(pki.trust_store()),
        Arc::new(RevocationSet::new()),
    ));
    let signers = pki
        .institutions()
        .map(|(id, keys)| {
            Ok((
                id.to_owned(),
                Arc::new(copied_key(&keys.signer).map_err(failed)?),
            ))
        })
        .collect::<Result<Vec<_>, WalletScenarioError>>()?;
    let mut net = OfflineNetwork::new(
        Arc::clone(&verifier),
        anchors.clone(),
        signers,
        SyncPolicy::default(),
    );
    let mut sims = Vec::new();
    for (index, (id, keys)) in pki.wallets().enumerate() {
        let party = PartyRef {
            institution_id: keys.institution.clone(),
            wallet_id: id.to_owned(),
        };
        let tier = if index % 10 == 9 { 2 } else { 4 };
        let limits = offline_limits_for_tier(tier);
        let mut wallet = HardWallet::provision(WalletProvisioning {
            party: party.clone(),
            tier,
            key: copied_key(&keys.wallet).map_err(failed)?,
            key_version: 1,
            limits,
            trust_anchors: anchors.clone(),
            last_sync_at_ms: t0_ms,
            counter: 0,
            chain_head: CHAIN_START,
            purse_fen: 0,
        })
        .map_err(failed)?;
        let public_key = keys
            .wallet
            .certificate()
            .public_key()
            .to_spki_der()
            .map_err(failed)?;
        net.open_wallet(&party, 1, &public_key, t0_ms, limits);
        let purse_fen = rng.random_range(limits.purse_limit_fen / 4..=limits.purse_limit_fen);
        if !net.fund_purse(&party, purse_fen) {
            return Err(failed(format!("funding {}", party.wallet_id)));
        }
        wallet.fund_purse(purse_fen).map_err(failed)?;
        let drift = Drift {
            offset_ms: rng.random_range(-2_000..=2_000),
            ppm: rng.random_range(-200..=200),
            periodic_amplitude_ms: rng.random_range(0..=1_500),
            periodic_period_ms: 24 * HOUR_MS,
            steps: Vec::new(),
        };
        sims.push(Sim {
            wallet,
            clock: DeviceClock::new(drift, t0_ms, t0_ms),
        });
    }
    let count = sims.len();
    if count < 3 {
        return Err(WalletScenarioError::TooFewWallets);
    }

    // Offline: each wallet pays 0..=max times, to random other wallets, within its limits.
    let mut made: BTreeSet<PaymentId> = BTreeSet::new();
    let payments_max = scenario
        .payments_per_wallet_max
        .min(PAYMENTS_PER_WALLET_MAX);
    let mut true_ms = t0_ms + HOUR_MS;
    for payer in 0..count {
        let payments = rng.random_range(0..=payments_max);
        for _ in 0..payments {
            true_ms += rng.random_range(1_000..60_000);
            let payee = (payer + rng.random_range(1..count)) % count;
            let Some(fix) = satellite.fix(true_ms) else {
                continue;
            };
            let amount = rng.random_range(1..=5_000);
            let payee_party = sims[payee].wallet.party().clone();
            let Ok(frame) = sims[payer].wallet.pay(&payee_party, amount, fix) else {
                continue;
            };
            if sims[payee]
                .wallet
                .receive(frame.as_bytes(), fix, PAID_AT_SKEW_MS_MAX_DEFAULT)
                .is_ok()
            {
                made.insert(payment_id_of(frame.as_bytes())?);
            }
        }
    }
    // The double spender: wallet 0 rewinds its secure element and spends its purse again to
    // the next wallet, under counters it already used.
    let mut double_spender = None;
    if scenario.double_spender {
        let purse = net
            .record(sims[0].wallet.party())
            .map_or(0, |r| r.purse_fen);
        let (counter, head) = (0, CHAIN_START);
        sims[0]
            .wallet
            .rewind_for_double_spending(counter, head, purse);
        let payee_party = sims[1].wallet.party().clone();
        let single = sims[0].wallet.limits().single_payment_limit_fen;
        true_ms += 60_000;
        let fix = satellite.fix(true_ms).ok_or_else(|| failed("no fix"))?;
        let paid = sims[0]
            .wallet
            .pay(&payee_party, single.min(purse.max(1)), fix);
        if let Ok(frame) = paid
            && sims[1]
                .wallet
                .receive(frame.as_bytes(), fix, PAID_AT_SKEW_MS_MAX_DEFAULT)
                .is_ok()
        {
            made.insert(payment_id_of(frame.as_bytes())?);
        }
        double_spender = Some(sims[0].wallet.party().clone());
    }

    // Reconnection, in a random order; each wallet's device clock says when it thinks it is,
    // the satellite when it is.
    let mut report = WalletScenarioReport {
        wallets: count,
        payments_made: made.len(),
        double_spender_caught: !scenario.double_spender,
        forged_refused: !scenario.forged_key_set,
        replay_refused: !scenario.replayed_key_set,
        ..WalletScenarioReport::default()
    };
    let mut order: Vec<usize> = (0..count).collect();
    for i in (1..count).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut first_upload: Option<(usize, WalletKeySet)> = None;
    for round in 0..2 {
        for &index in &order {
            true_ms += rng.random_range(10..2_000);
            let _device_ms = sims[index].clock.reading_ms(true_ms);
            let Some(fix) = satellite.fix(true_ms) else {
                continue;
            };
            let upload = sims[index].wallet.key_set(fix).map_err(failed)?;
            if round == 0 && index == order[0] && scenario.forged_key_set {
                let other = &sims[order[1]].wallet;
                let mut forged = upload.key_set.clone();
                forged.signature = other
                    .key()
                    .key()
                    .sign(&key_set_input(&forged))
                    .map_err(failed)?;
                let outcome = net
                    .sync(&forged.institution_id.clone(), &forged, true_ms)
                    .map_err(failed)?;
                report.forged_refused =
                    outcome.result.reason_code.as_deref() == Some(Reason::WalletSignature.as_str());
            }
            let institution = upload.key_set.institution_id.clone();
            let outcome = net
                .sync(&institution, &upload.key_set, true_ms)
                .map_err(failed)?;
            let key = match (&outcome.result.status, &outcome.result.reason_code) {
                (SyncStatus::Accepted, _) => "ACCEPTED".to_owned(),
                (SyncStatus::Rejected, Some(code)) => code.clone(),
                (SyncStatus::Rejected, None) => "REJECTED".to_owned(),
            };
            *report.answers.entry(key).or_default() += 1;
            if outcome.result.status == SyncStatus::Accepted
                && first_upload.is_none()
                && round == 0
                && Some(sims[index].wallet.party()) != double_spender.as_ref()
            {
                first_upload = Some((index, upload.key_set.clone()));
            }
            sims[index]
                .wallet
                .apply_sync_result(&outcome.result, &verifier)
                .map_err(failed)?;
            for command in &outcome.commands {
                sims[index]
                    .wallet
                    .apply_command(command, &verifier)
                    .map_err(failed)?;
            }
            if outcome
                .result
                .actions
                .contains(&dcpipe_schemas::WalletAction::ClockResync)
            {
                sims[index]
                    .clock
                    .resync(true_ms, outcome.result.platform_time_at_ms);
            }
        }
    }
    if scenario.replayed_key_set
        && let Some((_, old)) = &first_upload
    {
        let outcome = net
            .sync(&old.institution_id.clone(), old, true_ms)
            .map_err(failed)?;
        report.replay_refused =
            outcome.result.reason_code.as_deref() == Some(Reason::WalletKeySetReplayed.as_str());
    }
    if let Some(party) = &double_spender {
        report.double_spender_caught = net.blacklist().contains(&party.wallet_id)
            && net.record(party).is_some_and(|r| r.locked_at_ms.is_some());
    }
    report.payments_cleared = made
        .iter()
        .filter(|id| net.cleared().contains_key(id))
        .count();
    report.missing = made
        .iter()
        .filter(|id| !net.cleared().contains_key(id))
        .copied()
        .collect();
    report.totals = net.totals();
    Ok(report)
}

fn payment_id_of(frame: &[u8]) -> Result<PaymentId, WalletScenarioError> {
    let payment: OfflinePayment = dcpipe_schemas::decode(frame).map_err(failed)?;
    Ok(offline_payment_id(&offline_payment_digest(&payment)))
}
