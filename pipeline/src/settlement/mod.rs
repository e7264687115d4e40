//! The central bank's side: multilateral netting of completed interbank payments per
//! settlement window, and the settlement instructions that follow.
//!
//! Each completed interbank payment arrives on `settlement.clearing` as the payer institution's
//! signed outcome. The store assigns it to the window of its decision time, or to the earliest
//! open window when that one is closed (a late clearing, counted in the report). When a window
//! has closed (its end plus a grace period has passed), the stage publishes one signed
//! [`SettlementInstruction`] with one net position per institution, summing to zero, and each
//! institution's [`SettlementPosition`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dcpipe_connectors::bus::Outgoing;
use dcpipe_connectors::ledger::{ClearingOutcome, ClearingRecord, ClosedWindow, SettlementStore};
use dcpipe_schemas::{
    InstructionId, OutcomeStatus, PaymentOutcome, SettlementInstruction, SettlementPosition,
};

use crate::clock::Clock;
use crate::payment::commit;
use crate::pki::{CertifiedKey, ChainVerifier, Role, sha256};
use crate::protocol::{payment_outcome_bytes, settlement_instruction_bytes};
use crate::reason::Reason;
use crate::registry::{Build, CENTRAL_BANK, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict, outgoing};
use crate::subjects;

/// Name of this stage.
pub const STAGE: &str = "settlement";

inventory::submit! {
    StageDescriptor {
        name: STAGE,
        summary: "the central bank's netting of completed interbank payments per window",
        flow: Flow::Settlement,
        consumes: |_| subjects::SETTLEMENT_CLEARING.to_owned(),
        publishes: |_, institutions| {
            institutions
                .iter()
                .map(|oi| subjects::settlement_position(oi))
                .chain([subjects::SETTLEMENT_INSTRUCTION.to_owned()])
                .collect()
        },
        build: Build::CentralBank(|bank| Arc::new(SettlementStage::new(bank))),
    }
}

/// Grace after a window's end before it closes, unless configured otherwise: late clearings
/// within it still count in their own window.
pub const GRACE_MS_DEFAULT: i64 = 2_000;

/// How often due windows are closed.
pub const CLOSE_INTERVAL: Duration = Duration::from_millis(500);

/// Windows re-announced at start, in case the previous run closed them but stopped before
/// publishing their instructions (the bus drops repeats by message id).
pub const REANNOUNCE_WINDOWS: i64 = 16;

/// The central bank's settlement service.
#[derive(Debug)]
pub struct CentralBank {
    /// Signs settlement instructions.
    pub signer: CertifiedKey,
    /// Verifies the payer institutions' signatures on outcomes.
    pub verifier: Arc<ChainVerifier>,
    /// The central bank's own records.
    pub store: Arc<dyn SettlementStore>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Grace before a window closes.
    pub grace_ms: i64,
}

/// The settlement stage.
#[derive(Debug)]
pub struct SettlementStage {
    bank: Arc<CentralBank>,
    /// Whether the first tick (which re-announces recent windows) has run.
    started: Mutex<bool>,
}

impl SettlementStage {
    /// The stage.
    pub fn new(bank: Arc<CentralBank>) -> Self {
        SettlementStage {
            bank,
            started: Mutex::new(false),
        }
    }

    /// Closes due windows and returns their instructions and positions to publish.
    pub async fn close_due(&self) -> Result<Vec<Outgoing>, StageError> {
        let bank = &self.bank;
        let now_ms = bank.clock.now_ms();
        let mut outputs = Vec::new();
        let first_tick = !std::mem::replace(&mut *lock(&self.started), true);
        if first_tick {
            let config = bank.store.config();
            let current = config.window_of(now_ms);
            for window_id in (current - REANNOUNCE_WINDOWS)..current {
                if let Some(window) = bank.store.window_report(window_id).await?
                    && !window.positions.is_empty()
                {
                    outputs.extend(self.announce(&window)?);
                }
            }
        }
        for window in bank.store.close_due_windows(now_ms, bank.grace_ms).await? {
            tracing::info!(
                window = window.window_id,
                clearings = window.clearing_count,
                late = window.late_count,
                "settlement window closed"
            );
            outputs.extend(self.announce(&window)?);
            record_closed(&window, now_ms);
        }
        // A window closes only while this runs: operators alert when it stops.
        metrics::gauge!(crate::metrics::SETTLEMENT_CLOSER_TIMESTAMP_SECONDS)
            .set(now_ms as f64 / 1000.0);
        Ok(outputs)
    }

    /// The signed instruction and the positions of a closed window.
    fn announce(&self, window: &ClosedWindow) -> Result<Vec<Outgoing>, StageError> {
        let bank = &self.bank;
        let positions: Vec<SettlementPosition> = window
            .positions
            .iter()
            .map(|p| SettlementPosition {
                window_id: window.window_id,
                window_start_at_ms: window.start_ms,
                window_end_at_ms: window.end_ms,
                institution_id: p.institution_id.clone(),
                net_fen: p.net_fen,
                debit_fen: p.debit_fen,
                credit_fen: p.credit_fen,
                clearing_count: i64::try_from(p.clearing_count).unwrap_or(i64::MAX),
            })
            .collect();
        let net_sum: i64 = positions.iter().map(|p| p.net_fen).sum();
        if net_sum != 0 {
            // Money created or lost in the central bank's records: an operator must look.
            return Err(StageError::fatal(format!(
                "window {} positions sum to {net_sum} fen, not zero",
                window.window_id
            )));
        }
        // The id is derived from the window, so a re-announcement is the same instruction.
        let mut id = [0u8; 16];
        id.copy_from_slice(
            &sha256(format!("dcpipe/v1/settlement-window/{}", window.window_id).as_bytes())[..16],
        );
        let mut instruction = SettlementInstruction {
            instruction_id: InstructionId::from_bytes(id),
            window_id: window.window_id,
            window_start_at_ms: window.start_ms,
            window_end_at_ms: window.end_ms,
            positions: positions.clone(),
            late_clearing_count: i64::try_from(window.late_count).unwrap_or(i64::MAX),
            late_amount_fen: window.late_amount_fen,
            issued_at_ms: window.end_ms,
            issuer_certificate: bank.signer.certificate().der().to_vec(),
            signature: Vec::new(),
        };
        instruction.signature = bank
            .signer
            .key()
            .sign(&settlement_instruction_bytes(&instruction))
            .map_err(|e| StageError::fatal(format!("the settlement signer cannot sign: {e}")))?;
        let key = window.window_id.to_be_bytes();
        let mut outputs = vec![outgoing(
            subjects::SETTLEMENT_INSTRUCTION.to_owned(),
            &instruction,
            format!("{}/{}", subjects::SETTLEMENT_INSTRUCTION, window.window_id),
            &key,
        )?];
        for position in &positions {
            let subject = subjects::settlement_position(&position.institution_id);
            let msg_id = format!("{subject}/{}", window.window_id);
            outputs.push(outgoing(subject, position, msg_id, &key)?);
        }
        Ok(outputs)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn clearing_of(
    bank: &CentralBank,
    outcome: &PaymentOutcome,
    now_ms: i64,
) -> Result<ClearingRecord, Verdict> {
    if outcome.status != OutcomeStatus::Completed
        || outcome.stage != commit::STAGE
        || outcome.payer.institution_id == outcome.payee.institution_id
    {
        return Err(Verdict::dead_letter(
            Reason::SettlementNotAClearing,
            "only completed interbank payments are settled",
        ));
    }
    let identity = bank
        .verifier
        .verify(
            &outcome.institution_certificate,
            now_ms,
            Role::InstitutionSigner,
        )
        .map_err(|e| {
            Verdict::dead_letter(
                Reason::Certificate(e.kind()),
                format!("payer institution certificate: {e}"),
            )
        })?;
    if identity.institution_id() != outcome.payer.institution_id
        || outcome.decided_by != outcome.payer.institution_id
    {
        return Err(Verdict::dead_letter(
            Reason::PartyMismatch,
            "a clearing must be decided and signed by the payer's institution",
        ));
    }
    identity
        .public_key()
        .verify(
            &payment_outcome_bytes(outcome),
            &outcome.institution_signature,
        )
        .map_err(|e| Verdict::dead_letter(Reason::InstitutionSignature, e.to_string()))?;
    Ok(ClearingRecord {
        payment_id: crate::payment::ledger_id_of(&outcome.payment_id),
        payer_institution: outcome.payer.institution_id.clone(),
        payee_institution: outcome.payee.institution_id.clone(),
        amount_fen: outcome.amount_fen,
        decided_at_ms: outcome.decided_at_ms,
    })
}

#[async_trait]
impl Stage for SettlementStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        CENTRAL_BANK
    }

    fn subject(&self) -> String {
        subjects::SETTLEMENT_CLEARING.to_owned()
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        let bank = &self.bank;
        let now_ms = bank.clock.now_ms();
        let read: Vec<Result<ClearingRecord, Verdict>> = batch
            .iter()
            .map(|input| {
                let outcome = dcpipe_schemas::decode::<PaymentOutcome>(input.payload)
                    .map_err(|e| Verdict::undecodable(&e))?;
                clearing_of(bank, &outcome, now_ms)
            })
            .collect();
        let clearings: Vec<ClearingRecord> = read
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();
        let mut recorded = if clearings.is_empty() {
            Vec::new()
        } else {
            bank.store.record_clearings(&clearings, now_ms).await?
        }
        .into_iter();
        let mut verdicts = Vec::with_capacity(batch.len());
        for item in read {
            verdicts.push(match item {
                Err(verdict) => verdict,
                Ok(_) => match recorded.next() {
                    Some(ClearingOutcome::Recorded { late, .. }) => {
                        metrics::counter!("dcpipe_settlement_clearings_total", "late" => if late { "true" } else { "false" }).increment(1);
                        Verdict::Done(Vec::new())
                    }
                    Some(ClearingOutcome::Duplicate { .. }) => Verdict::Done(Vec::new()),
                    Some(ClearingOutcome::Conflict { window_id }) => Verdict::dead_letter(
                        Reason::SettlementConflict,
                        format!("payment already settled in window {window_id} with other content"),
                    ),
                    Some(ClearingOutcome::Refused { reason_code }) => Verdict::dead_letter(
                        // The store's codes are in the table; one this version does not know
                        // still says the clearing is malformed.
                        Reason::parse(reason_code).unwrap_or(Reason::SettlementMalformedClearing),
                        format!("clearing refused by the settlement store ({reason_code})"),
                    ),
                    None => {
                        return Err(StageError::fatal(
                            "settlement store returned fewer results than clearings",
                        ));
                    }
                },
            });
        }
        Ok(verdicts)
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(CLOSE_INTERVAL)
    }

    async fn tick(&self) -> Result<Vec<Outgoing>, StageError> {
        self.close_due().await
    }
}

/// The gauges of the window just closed at `now_ms`: each institution's net position and how
/// long after its end the window closed.
fn record_closed(window: &ClosedWindow, now_ms: i64) {
    for position in &window.positions {
        // Exact in an f64 below 2^53 fen, far above any window's positions.
        metrics::gauge!(crate::metrics::SETTLEMENT_NET_POSITION_FEN, "institution" => position.institution_id.clone())
            .set(position.net_fen as f64);
    }
    metrics::gauge!(crate::metrics::SETTLEMENT_CLOSE_DELAY_SECONDS)
        .set((now_ms - window.end_ms) as f64 / 1000.0);
}
