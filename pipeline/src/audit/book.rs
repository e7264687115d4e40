//! The reconciliation, in record order: each payment's life rebuilt across subjects (envelope
//! → clearing message → response → outcomes → settlement), each settlement window's clearings
//! summed against its instruction, each position against its instruction's row.
//!
//! State is kept per **open** payment, never per message: a payment is judged and forgotten
//! once its life is complete (a short summary stays for [`BookConfig::closed_retention_ms`] of
//! bus time, so that repeats and contradictions arriving later are still recognized).

use std::collections::{BTreeMap, HashMap, VecDeque};

use dcpipe_connectors::bus::Position;
use dcpipe_schemas::{
    Digest32, OutcomeStatus, PaymentId, SettlementInstruction, SettlementPosition,
};

use super::check::{Checked, Fact, OutcomeFact, Terms};
use super::code::AuditCode;
use super::report::{AuditReport, Discrepancy, Location, PartialPayment};
use super::vehicle::{Coverage, RegistryHistory, VehicleBook};
use crate::ops::settlement::zero_sum;

/// Default width of the range's edges: a payment begun less than this after the range's start
/// (or active less than this before its end) and not whole in it is partial.
pub const EDGE_MS_DEFAULT: i64 = 60_000;

/// Default time a complete payment waits (bus time) before it is judged: records of one
/// payment on different subjects or partitions may be read slightly out of their order.
pub const REORDER_MS_DEFAULT: i64 = 5_000;

/// Default time a judged payment's summary is kept (bus time) for later repeats.
pub const CLOSED_RETENTION_MS_DEFAULT: i64 = 10 * 60_000;

/// Judged payments whose summary is kept at most; the oldest are forgotten first.
pub const CLOSED_KEPT_MAX: usize = 1_000_000;

/// Settlement windows whose positions are kept to check the positions published after them.
pub const WINDOWS_KEPT_MAX: usize = 256;

/// Records refused by their checks awaiting a dead letter, at most.
pub const REFUSED_PENDING_MAX: usize = 100_000;

/// How the book judges the range's edges.
#[derive(Debug, Clone)]
pub struct BookConfig {
    /// Bus time of the range's start; `None` when the range starts at the beginning (nothing
    /// can have begun before it).
    pub range_start_ms: Option<i64>,
    /// Width of the edges.
    pub edge_ms: i64,
    /// How long a judged payment's summary is kept.
    pub closed_retention_ms: i64,
    /// How long a complete payment waits before it is judged.
    pub reorder_ms: i64,
    /// Only this institution's subjects are read: payments of other payers are judged on
    /// what this institution sees.
    pub institution: Option<String>,
}

impl Default for BookConfig {
    fn default() -> Self {
        BookConfig {
            range_start_ms: None,
            edge_ms: EDGE_MS_DEFAULT,
            closed_retention_ms: CLOSED_RETENTION_MS_DEFAULT,
            reorder_ms: REORDER_MS_DEFAULT,
            institution: None,
        }
    }
}

/// A payment judged whole, for the ledgers to confirm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgedPayment {
    /// The payment.
    pub payment_id: PaymentId,
    /// Its terms.
    pub terms: Terms,
    /// Completed (else rejected: it must have moved nothing).
    pub completed: bool,
    /// The record of its final outcome.
    pub location: Location,
    /// The bus time the payment was last seen at.
    pub last_seen_ms: i64,
}

#[derive(Debug, Clone)]
struct SubmissionSeen {
    envelope_digest: Digest32,
    submission_digest: Digest32,
    terms: Terms,
    factor: Digest32,
    valid: Result<(), String>,
    location: Location,
}

impl SubmissionSeen {
    /// Whether `outcome` answers it: under its envelope digest, or under its submission digest
    /// when the payer's institution refused it before authenticating the payer.
    fn answered_by(&self, outcome: &OutcomeFact) -> bool {
        outcome.digest == self.envelope_digest || outcome.digest == self.submission_digest
    }
}

#[derive(Debug, Clone)]
struct ClearingSeen {
    terms: Terms,
    digest: Digest32,
    binding: Digest32,
    location: Location,
}

#[derive(Debug, Clone)]
struct OutcomeSeen {
    fact: OutcomeFact,
    location: Location,
    /// Already judged in an earlier life of the payment (a repeat).
    repeat: bool,
}

/// What is kept of a judged payment: for every payment of [`CLOSED_RETENTION_MS_DEFAULT`] of
/// bus time, so it is kept small (about 160 bytes with its entries in the book's maps, measured
/// over 287,041 payments: docs/BENCHMARKS.md, "Audit replay").
#[derive(Debug, Clone, Default)]
struct Summary {
    /// Final outcome per digest answered, with its terms.
    finals: Vec<Final>,
    /// Settled in a window.
    settled: bool,
    /// Codes already reported against its outcomes: a contradiction is one discrepancy,
    /// however many copies of each side the record holds.
    reported: Vec<AuditCode>,
}

/// A final outcome of a judged payment, as its summary keeps it.
#[derive(Debug, Clone)]
struct Final {
    digest: Digest32,
    status: OutcomeStatus,
    reason_code: Option<Box<str>>,
    /// The terms it answered as [`Terms::describe`] writes them: one allocation instead of a
    /// string per id. Exact: ids hold only letters, digits, `-` and `_` (the codec checks), so
    /// two terms with one description are the same terms.
    terms: Box<str>,
}

/// Terms an outcome is compared with: an open payment's, or a judged one's description.
enum EarlierTerms<'a> {
    Seen(&'a Terms),
    Judged(&'a str),
}

impl EarlierTerms<'_> {
    fn matches(&self, terms: &Terms) -> bool {
        match self {
            EarlierTerms::Seen(earlier) => *earlier == terms,
            EarlierTerms::Judged(described) => *described == terms.describe(),
        }
    }

    fn describe(&self) -> String {
        match self {
            EarlierTerms::Seen(earlier) => earlier.describe(),
            EarlierTerms::Judged(described) => (*described).to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
struct OpenPayment {
    first_seen_ms: i64,
    last_seen_ms: i64,
    submissions: Vec<SubmissionSeen>,
    clearing: Option<ClearingSeen>,
    accepted: Option<bool>,
    outcomes: Vec<OutcomeSeen>,
    settled: bool,
    prior: Option<Summary>,
    /// Waiting in the queue of complete payments.
    queued: bool,
    /// Codes already reported against its outcomes.
    reported: Vec<AuditCode>,
}

impl OpenPayment {
    fn new(at_ms: i64, prior: Option<Summary>) -> Self {
        OpenPayment {
            first_seen_ms: at_ms,
            last_seen_ms: at_ms,
            submissions: Vec::new(),
            clearing: None,
            accepted: None,
            outcomes: Vec::new(),
            settled: prior.as_ref().is_some_and(|p| p.settled),
            reported: prior
                .as_ref()
                .map(|p| p.reported.clone())
                .unwrap_or_default(),
            prior,
            queued: false,
        }
    }

    fn completed(&self) -> Option<&OutcomeSeen> {
        self.outcomes
            .iter()
            .find(|o| o.fact.status == OutcomeStatus::Completed)
    }

    /// Whether its life is complete: every valid submission answered, an outcome seen, and a
    /// completed interbank payment settled.
    fn complete(&self) -> bool {
        if self.prior.is_some() && self.submissions.is_empty() && self.clearing.is_none() {
            // A judged payment read again (a copy, a repeat): nothing new to wait for.
            return self
                .outcomes
                .iter()
                .all(|o| o.repeat || o.fact.status == OutcomeStatus::Rejected)
                || self.settled;
        }
        let answered = self
            .submissions
            .iter()
            .all(|s| s.valid.is_err() || self.outcomes.iter().any(|o| s.answered_by(&o.fact)));
        let settled = match self.completed() {
            Some(o) if !o.repeat && o.fact.terms.is_interbank() => self.settled,
            _ => true,
        };
        answered && !self.outcomes.is_empty() && settled
    }

    fn describe(&self) -> String {
        let mut seen = Vec::new();
        if !self.submissions.is_empty() {
            seen.push("envelope");
        }
        if self.clearing.is_some() {
            seen.push("clearing");
        }
        if self.accepted.is_some() {
            seen.push("response");
        }
        if !self.outcomes.is_empty() {
            seen.push("outcome");
        }
        if self.settled {
            seen.push("settlement");
        }
        seen.join(", ")
    }
}

#[derive(Debug, Clone)]
struct PendingClearing {
    payment_id: PaymentId,
    payer_institution: String,
    payee_institution: String,
    amount_fen: i64,
    decided_at_ms: i64,
}

#[derive(Debug, Clone)]
struct RefusedRecord {
    payload_sha256: [u8; 32],
    discrepancy: Discrepancy,
    at_ms: i64,
}

/// One institution's row as the clearings make it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Row {
    debit_fen: i64,
    credit_fen: i64,
    clearing_count: i64,
}

/// The reconciliation state.
#[derive(Debug)]
pub struct Book {
    config: BookConfig,
    open: HashMap<PaymentId, OpenPayment>,
    closed: HashMap<PaymentId, Summary>,
    closed_order: VecDeque<(i64, PaymentId)>,
    vehicles: VehicleBook,
    pending_clearings: Vec<PendingClearing>,
    repeated_clearings: Vec<PendingClearing>,
    windows: BTreeMap<i64, Vec<SettlementPosition>>,
    pending_positions: Vec<(SettlementPosition, Location, i64)>,
    refused: HashMap<(String, Position), RefusedRecord>,
    judged: Vec<JudgedPayment>,
    newest_ms: i64,
    last_touched: Option<PaymentId>,
    complete: VecDeque<(i64, PaymentId)>,
    wallets: super::wallet::WalletBook,
}

impl Book {
    /// An empty book.
    pub fn new(config: BookConfig) -> Self {
        Book {
            open: HashMap::new(),
            closed: HashMap::new(),
            closed_order: VecDeque::new(),
            vehicles: VehicleBook::new(config.range_start_ms, config.edge_ms, config.reorder_ms),
            pending_clearings: Vec::new(),
            repeated_clearings: Vec::new(),
            windows: BTreeMap::new(),
            pending_positions: Vec::new(),
            refused: HashMap::new(),
            judged: Vec::new(),
            newest_ms: i64::MIN,
            last_touched: None,
            complete: VecDeque::new(),
            config,
            wallets: super::wallet::WalletBook::new(),
        }
    }

    /// Judges vehicle sessions against the registry's history (read from its beginning).
    pub fn set_registry(&mut self, registry: RegistryHistory) {
        self.vehicles.set_registry(registry);
    }

    /// Judges vehicle charges on the session events and station reports `coverage` reads.
    pub fn set_vehicle_coverage(&mut self, coverage: Coverage) {
        self.vehicles.set_coverage(coverage);
    }

    /// Payments open now (the memory the book holds is proportional to it).
    pub fn open_payments(&self) -> usize {
        self.open.len()
    }

    /// Vehicles, sessions and pre-authorizations held now (the vehicle flow's state).
    pub fn vehicle_state(&self) -> usize {
        self.vehicles.held()
    }

    /// The payments judged since the last call, for the ledgers.
    pub fn take_judged(&mut self) -> Vec<JudgedPayment> {
        std::mem::take(&mut self.judged)
    }

    /// Takes one checked record, in record order.
    pub fn apply(&mut self, checked: Checked, report: &mut AuditReport) {
        let at_ms = checked.timestamp_ms;
        self.newest_ms = self.newest_ms.max(at_ms);
        let location = Location::new(&checked.subject, checked.position);
        match checked.fact {
            envelope @ Fact::Envelope { .. } => {
                report.counts.verified += 1;
                self.submission(envelope, location, at_ms);
            }
            Fact::Wallet(fact) => {
                report.counts.verified += 1;
                let start_edge_ms = self
                    .config
                    .range_start_ms
                    .map(|from| from.saturating_add(self.config.edge_ms));
                let (envelopes, not_cleared) =
                    self.wallets
                        .apply(fact, &location, at_ms, start_edge_ms, report);
                for envelope in envelopes {
                    self.submission(envelope, location.clone(), at_ms);
                    if let Some(payment_id) = self.last_touched.take() {
                        self.close_if_complete(payment_id, report);
                    }
                }
                for (payment_id, why) in not_cleared.iter().flat_map(|n| &n.payments) {
                    let key_set = not_cleared.as_ref().map(|n| &n.key_set);
                    if let Some(payment) = self.open.get_mut(payment_id) {
                        // Not cleared at its synchronization: it awaits no outcome.
                        for s in &mut payment.submissions {
                            if Some(&s.location) == key_set && s.valid.is_ok() {
                                s.valid = Err(format!("not cleared at the sync: {why}"));
                            }
                        }
                        self.close_if_complete(*payment_id, report);
                    }
                }
            }
            Fact::Clearing {
                payment_id,
                terms,
                digest,
                binding,
            } => {
                report.counts.verified += 1;
                if self.vehicles.authorizes(&binding) {
                    self.vehicles.charge(
                        payment_id, &terms, digest, binding, &location, at_ms, report,
                    );
                }
                let payment = self.entry(payment_id, at_ms);
                if payment.clearing.is_none() {
                    payment.clearing = Some(ClearingSeen {
                        terms,
                        digest,
                        binding,
                        location,
                    });
                }
            }
            Fact::Response {
                payment_id,
                accepted,
                amount_fen: _,
            } => {
                report.counts.verified += 1;
                let payment = self.entry(payment_id, at_ms);
                payment.accepted = Some(payment.accepted.unwrap_or(false) || accepted);
            }
            Fact::Outcome(fact) => {
                report.counts.verified += 1;
                self.outcome(fact, location, at_ms, report);
            }
            Fact::SettlementClearing(fact) => {
                report.counts.verified += 1;
                self.settlement_clearing(fact, location, at_ms, report);
            }
            Fact::Instruction(instruction) => {
                report.counts.verified += 1;
                self.instruction(&instruction, &location, report);
            }
            Fact::Position(position) => self.position(position, location, at_ms, report),
            Fact::Revocation => report.counts.verified += 1,
            Fact::Vehicle(fact) => {
                if let Some(refusal) = self.vehicles.apply(fact, at_ms, report) {
                    self.refuse(
                        refusal.code,
                        checked.subject,
                        checked.position,
                        None,
                        refusal.found,
                        refusal.payload_sha256,
                        at_ms,
                        report,
                    );
                }
            }
            Fact::DeadLetter {
                subject,
                position,
                original_sha256,
            } => {
                self.wallets.dead_lettered(&subject, position);
                if let Some(refused) = self.refused.get(&(subject.clone(), position))
                    && refused.payload_sha256 == original_sha256
                {
                    self.refused.remove(&(subject, position));
                    report.counts.refused_and_dead_lettered += 1;
                }
            }
            Fact::Unaudited => {}
            Fact::Refused {
                code,
                payment_id,
                found,
                payload_sha256,
            } => self.refuse(
                code,
                checked.subject,
                checked.position,
                payment_id,
                found,
                payload_sha256,
                at_ms,
                report,
            ),
        }
        if let Some(payment_id) = self.last_touched.take() {
            self.close_if_complete(payment_id, report);
        }
        self.vehicles.tick(self.newest_ms, report);
    }

    /// A record that failed its checks: a discrepancy unless a dead letter holds its bytes.
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &mut self,
        code: AuditCode,
        subject: String,
        position: Position,
        payment_id: Option<PaymentId>,
        found: String,
        payload_sha256: [u8; 32],
        at_ms: i64,
        report: &mut AuditReport,
    ) {
        let expected = match code {
            AuditCode::UndecodableNotDeadLettered => {
                "a frame of the subject's message, or a dead letter with its bytes"
            }
            AuditCode::VehicleTelemetryOutOfSequence => {
                "the vehicle's next batch, or a dead letter with its bytes"
            }
            AuditCode::VehicleSessionInvalid => {
                "a session event derived from its session and the registry"
            }
            _ => "a signature that verifies at the message's time, or a dead letter",
        };
        let location = Location::new(&subject, position);
        let discrepancy = Discrepancy::new(code, location, payment_id, expected, found);
        if self.refused.len() >= REFUSED_PENDING_MAX {
            report.push(discrepancy);
        } else {
            self.refused.insert(
                (subject, position),
                RefusedRecord {
                    payload_sha256,
                    discrepancy,
                    at_ms,
                },
            );
        }
    }

    /// A submission ([`Fact::Envelope`]; any other fact is not one and is ignored).
    fn submission(&mut self, envelope: Fact, location: Location, at_ms: i64) {
        if let Fact::Envelope {
            payment_id,
            terms,
            envelope_digest,
            submission_digest,
            factor,
            verdict,
        } = envelope
        {
            let payment = self.entry(payment_id, at_ms);
            payment.submissions.push(SubmissionSeen {
                envelope_digest,
                submission_digest,
                terms,
                factor,
                valid: verdict.map_err(|r| r.to_string()),
                location,
            });
        }
    }

    /// The open payment `payment_id`, opened (with its summary if it was judged before).
    fn entry(&mut self, payment_id: PaymentId, at_ms: i64) -> &mut OpenPayment {
        self.last_touched = Some(payment_id);
        let closed = &mut self.closed;
        let payment = self
            .open
            .entry(payment_id)
            .or_insert_with(|| OpenPayment::new(at_ms, closed.remove(&payment_id)));
        payment.last_seen_ms = payment.last_seen_ms.max(at_ms);
        payment
    }

    fn outcome(
        &mut self,
        fact: OutcomeFact,
        location: Location,
        at_ms: i64,
        report: &mut AuditReport,
    ) {
        let payment = self.entry(fact.payment_id, at_ms);
        let prior_final = payment
            .prior
            .as_ref()
            .and_then(|p| p.finals.iter().find(|f| f.digest == fact.digest).cloned());
        let same = |status: OutcomeStatus, reason: Option<&str>| {
            status == fact.status && reason == fact.reason_code.as_deref()
        };
        if let Some(seen) = payment
            .outcomes
            .iter()
            .find(|o| o.fact.digest == fact.digest)
        {
            let earlier = format!(
                "{} (as at {} {})",
                seen.fact.describe_status(),
                seen.location.subject,
                seen.location.offset
            );
            let same_decision = same(seen.fact.status, seen.fact.reason_code.as_deref());
            let terms = seen.fact.terms.clone();
            compare_with_earlier(
                &mut payment.reported,
                report,
                &location,
                &fact,
                (same_decision, earlier, EarlierTerms::Seen(&terms)),
            );
            return;
        }
        if let Some(prior) = &prior_final {
            let reason = prior.reason_code.as_deref();
            compare_with_earlier(
                &mut payment.reported,
                report,
                &location,
                &fact,
                (
                    same(prior.status, reason),
                    describe(prior.status, reason),
                    EarlierTerms::Judged(&prior.terms),
                ),
            );
        }
        let completed_before = payment.completed().map(|o| o.fact.digest).or_else(|| {
            payment.prior.as_ref().and_then(|p| {
                p.finals
                    .iter()
                    .find(|f| f.status == OutcomeStatus::Completed)
                    .map(|f| f.digest)
            })
        });
        if fact.status == OutcomeStatus::Completed
            && completed_before.is_some_and(|d| d != fact.digest)
        {
            once(
                &mut payment.reported,
                report,
                Discrepancy::new(
                    AuditCode::OutcomeContradiction,
                    location.clone(),
                    Some(fact.payment_id),
                    "one completion per payment",
                    "COMPLETED under a second content",
                ),
            );
        }
        payment.outcomes.push(OutcomeSeen {
            fact,
            location,
            repeat: prior_final.is_some(),
        });
    }

    fn settlement_clearing(
        &mut self,
        fact: OutcomeFact,
        location: Location,
        at_ms: i64,
        report: &mut AuditReport,
    ) {
        if fact.status != OutcomeStatus::Completed || !fact.terms.is_interbank() {
            report.push(Discrepancy::new(
                AuditCode::SettlementClearingInvalid,
                location,
                Some(fact.payment_id),
                "a COMPLETED interbank outcome",
                format!("{} {}", fact.describe_status(), fact.terms.describe()),
            ));
            return;
        }
        let clearing = PendingClearing {
            payment_id: fact.payment_id,
            payer_institution: fact.terms.payer.institution_id.clone(),
            payee_institution: fact.terms.payee.institution_id.clone(),
            amount_fen: fact.terms.amount_fen,
            decided_at_ms: fact.decided_at_ms,
        };
        let payment = self.entry(fact.payment_id, at_ms);
        if payment.settled {
            // Already counted once: only a window that counts it again is wrong.
            self.repeated_clearings.push(clearing);
            return;
        }
        if let Some(completed) = payment.completed()
            && (completed.fact.terms != fact.terms || completed.fact.digest != fact.digest)
        {
            report.push(Discrepancy::new(
                AuditCode::SettlementClearingInvalid,
                location.clone(),
                Some(fact.payment_id),
                completed.fact.terms.describe(),
                fact.terms.describe(),
            ));
        }
        payment.settled = true;
        self.pending_clearings.push(clearing);
    }

    fn instruction(
        &mut self,
        instruction: &SettlementInstruction,
        location: &Location,
        report: &mut AuditReport,
    ) {
        let (start, end) = (instruction.window_start_at_ms, instruction.window_end_at_ms);
        // The central bank takes clearings in the order it reads them: a clearing of this
        // window read before it closed is counted here, one read after is late in the next
        // window open then. Whatever the bus order, the instruction says how many of each it
        // counted: take them, in record order, from the clearings not counted yet.
        let clearings: i64 = instruction
            .positions
            .iter()
            .map(|p| p.clearing_count)
            .sum::<i64>()
            / 2;
        let late_wanted = usize::try_from(instruction.late_clearing_count).unwrap_or(0);
        let on_time_wanted =
            usize::try_from(clearings - instruction.late_clearing_count).unwrap_or(0);
        let mut counted = Vec::new();
        let mut late = Vec::new();
        let mut rest = Vec::new();
        for clearing in self.pending_clearings.drain(..) {
            if (start..end).contains(&clearing.decided_at_ms) && counted.len() < on_time_wanted {
                counted.push(clearing);
            } else if clearing.decided_at_ms < start && late.len() < late_wanted {
                late.push(clearing);
            } else {
                rest.push(clearing);
            }
        }
        self.pending_clearings = rest;
        let repeated = std::mem::take(&mut self.repeated_clearings);
        self.windows
            .insert(instruction.window_id, instruction.positions.clone());
        while self.windows.len() > WINDOWS_KEPT_MAX {
            self.windows.pop_first();
        }
        self.resolve_positions(instruction.window_id, report);
        if let Err(e) = zero_sum(&instruction.positions) {
            report.push(Discrepancy::new(
                AuditCode::SettlementMismatch,
                location.clone(),
                None,
                "positions that sum to zero",
                e,
            ));
            return;
        }
        if self.config.range_start_ms.is_some_and(|from| start < from) {
            // Its clearings began before the range: partial, not judged.
            return;
        }
        report.counts.windows_checked += 1;
        let all: Vec<&PendingClearing> = counted.iter().chain(late.iter()).collect();
        let found = rows_of_instruction(instruction);
        let expected = rows_of(all.iter().copied());
        let late_amount_fen: i64 = late.iter().map(|c| c.amount_fen).sum();
        let late_matches = instruction.late_clearing_count == late.len() as i64
            && instruction.late_amount_fen == late_amount_fen;
        if expected == found && late_matches {
            return;
        }
        for repeat in &repeated {
            let again = rows_of(all.iter().copied().chain(std::iter::once(repeat)));
            if again == found {
                report.push(Discrepancy::new(
                    AuditCode::ClearingInTwoWindows,
                    location.clone(),
                    Some(repeat.payment_id),
                    "each clearing in one window",
                    format!(
                        "counted again in window {} ({} fen {} → {})",
                        instruction.window_id,
                        repeat.amount_fen,
                        repeat.payer_institution,
                        repeat.payee_institution
                    ),
                ));
                return;
            }
        }
        report.push(Discrepancy::new(
            AuditCode::SettlementMismatch,
            location.clone(),
            None,
            format!(
                "window {}: {} ({} late, {} fen)",
                instruction.window_id,
                describe_rows(&expected),
                late.len(),
                late_amount_fen
            ),
            format!(
                "{} ({} late, {} fen)",
                describe_rows(&found),
                instruction.late_clearing_count,
                instruction.late_amount_fen
            ),
        ));
    }

    fn position(
        &mut self,
        position: SettlementPosition,
        location: Location,
        at_ms: i64,
        report: &mut AuditReport,
    ) {
        if let Some(rows) = self.windows.get(&position.window_id) {
            check_position(rows, &position, location, report);
        } else if self.pending_positions.len() < WINDOWS_KEPT_MAX * 64 {
            self.pending_positions.push((position, location, at_ms));
        }
    }

    fn resolve_positions(&mut self, window_id: i64, report: &mut AuditReport) {
        let Some(rows) = self.windows.get(&window_id) else {
            return;
        };
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_positions)
            .into_iter()
            .partition(|(p, _, _)| p.window_id == window_id);
        for (position, location, _) in now {
            check_position(rows, &position, location, report);
        }
        self.pending_positions = later;
    }

    /// Queues the last touched payment once its life is complete; judges the payments
    /// complete for longer than the reorder delay.
    fn close_if_complete(&mut self, payment_id: PaymentId, report: &mut AuditReport) {
        if let Some(payment) = self.open.get_mut(&payment_id)
            && !payment.queued
            && payment.complete()
        {
            payment.queued = true;
            self.complete.push_back((self.newest_ms, payment_id));
        }
        let horizon = self.newest_ms.saturating_sub(self.config.reorder_ms);
        while let Some(&(at_ms, id)) = self.complete.front() {
            if at_ms > horizon {
                break;
            }
            self.complete.pop_front();
            let still = self.open.get_mut(&id).is_some_and(|p| {
                p.queued = false;
                p.complete()
            });
            if still && let Some(payment) = self.open.remove(&id) {
                self.judge(id, payment, report);
            }
        }
        self.forget_old();
    }

    /// Whether a payment first seen at `first_seen_ms` may have begun before the range.
    fn at_start_edge(&self, first_seen_ms: i64) -> bool {
        self.config
            .range_start_ms
            .is_some_and(|from| first_seen_ms < from.saturating_add(self.config.edge_ms))
    }

    fn judge(&mut self, payment_id: PaymentId, payment: OpenPayment, report: &mut AuditReport) {
        let mut summary = payment.prior.clone().unwrap_or_default();
        summary.settled |= payment.settled;
        summary.reported.clone_from(&payment.reported);
        let fresh: Vec<&OutcomeSeen> = payment.outcomes.iter().filter(|o| !o.repeat).collect();
        let other_payer = self.config.institution.as_ref().is_some_and(|oi| {
            payment
                .outcomes
                .iter()
                .any(|o| &o.fact.terms.payer.institution_id != oi)
        });
        let mut partial = false;
        for outcome in &fresh {
            let o = &outcome.fact;
            let mut authorized = true;
            let submission = payment
                .submissions
                .iter()
                .find(|s| s.envelope_digest == o.digest || s.submission_digest == o.digest);
            // A vehicle charge: its clearing message is bound to a pre-authorization (the
            // charge itself is reconciled with its session by the vehicle book).
            let vehicle = payment
                .clearing
                .as_ref()
                .filter(|c| self.vehicles.authorizes(&c.binding));
            match (submission, vehicle) {
                (Some(s), _) => {
                    if o.status == OutcomeStatus::Completed
                        && let Err(why) = &s.valid
                    {
                        report.push(Discrepancy::new(
                            AuditCode::CompletedUnauthorized,
                            outcome.location.clone(),
                            Some(payment_id),
                            "an envelope whose signatures verify at its time",
                            why.clone(),
                        ));
                    }
                    if s.terms != o.terms {
                        report.push(Discrepancy::new(
                            AuditCode::OutcomeMismatch,
                            outcome.location.clone(),
                            Some(payment_id),
                            s.terms.describe(),
                            o.terms.describe(),
                        ));
                    }
                    if o.status == OutcomeStatus::Completed
                        && let Some(c) = &payment.clearing
                        && (c.terms != s.terms
                            || c.digest != s.envelope_digest
                            || c.binding != s.factor)
                    {
                        report.push(Discrepancy::new(
                            AuditCode::ClearingMismatch,
                            c.location.clone(),
                            Some(payment_id),
                            format!(
                                "{} under the envelope's digest and factor",
                                s.terms.describe()
                            ),
                            c.terms.describe(),
                        ));
                    }
                }
                (None, Some(clearing)) => {
                    if clearing.terms != o.terms || clearing.digest != o.digest {
                        report.push(Discrepancy::new(
                            AuditCode::OutcomeMismatch,
                            outcome.location.clone(),
                            Some(payment_id),
                            clearing.terms.describe(),
                            o.terms.describe(),
                        ));
                    }
                }
                (None, None) => {
                    if super::vehicle::is_refused_charge(o) {
                        // A charge refused before any money moved: its session's.
                        self.vehicles
                            .refused_charge(payment_id, o, &outcome.location, report);
                    } else if other_payer {
                        // A payer this audit does not read: judged on what it sees.
                    } else if self.at_start_edge(payment.first_seen_ms) {
                        partial = true;
                    } else {
                        authorized = false;
                        report.push(Discrepancy::new(
                            AuditCode::OutcomeWithoutSubmission,
                            outcome.location.clone(),
                            Some(payment_id),
                            "an envelope or pre-authorization in the record",
                            format!("{} {}", o.describe_status(), o.terms.describe()),
                        ));
                    }
                }
            }
            if o.status == OutcomeStatus::Completed && !partial && authorized {
                let accepted = payment.accepted == Some(true);
                if (payment.clearing.is_none() || !accepted)
                    && !self.at_start_edge(payment.first_seen_ms)
                {
                    report.push(Discrepancy::new(
                        AuditCode::CompletedWithoutClearing,
                        outcome.location.clone(),
                        Some(payment_id),
                        "a clearing message and an accepted response before completion",
                        payment.describe(),
                    ));
                }
            }
            summary.finals.push(Final {
                digest: o.digest,
                status: o.status,
                reason_code: o.reason_code.as_deref().map(Box::from),
                terms: o.terms.describe().into_boxed_str(),
            });
        }
        if partial {
            report.push_partial(PartialPayment {
                payment_id: payment_id.to_string(),
                edge: "start",
                seen: payment.describe(),
            });
        } else if let Some(last) = fresh.last() {
            report.counts.payments_judged += 1;
            let completed = payment.completed().filter(|o| !o.repeat);
            if completed.is_some() {
                report.counts.payments_completed += 1;
            } else {
                report.counts.payments_rejected += 1;
            }
            let chosen = completed.unwrap_or(last);
            self.judged.push(JudgedPayment {
                payment_id,
                terms: chosen.fact.terms.clone(),
                completed: completed.is_some(),
                location: chosen.location.clone(),
                last_seen_ms: payment.last_seen_ms,
            });
        }
        summary.finals.shrink_to_fit();
        summary.reported.shrink_to_fit();
        self.closed.insert(payment_id, summary);
        self.closed_order
            .push_back((payment.last_seen_ms, payment_id));
    }

    /// Forgets judged summaries older than the retention.
    fn forget_old(&mut self) {
        let horizon = self
            .newest_ms
            .saturating_sub(self.config.closed_retention_ms);
        while let Some(&(at_ms, id)) = self.closed_order.front() {
            if at_ms >= horizon && self.closed_order.len() <= CLOSED_KEPT_MAX {
                break;
            }
            self.closed_order.pop_front();
            self.closed.remove(&id);
        }
    }

    /// Ends the range at bus time `range_end_ms`: what is still open is judged incomplete, or
    /// partial when it was active near an edge.
    pub fn finish(&mut self, range_end_ms: i64, report: &mut AuditReport) {
        let end_edge = range_end_ms.saturating_sub(self.config.edge_ms);
        self.complete.clear();
        let mut open: Vec<(PaymentId, OpenPayment)> = self.open.drain().collect();
        open.sort_by_key(|(_, p)| p.first_seen_ms);
        for (payment_id, payment) in open {
            let partial = !payment.complete()
                && (payment.last_seen_ms >= end_edge || self.at_start_edge(payment.first_seen_ms));
            if partial {
                report.push_partial(PartialPayment {
                    payment_id: payment_id.to_string(),
                    edge: if payment.last_seen_ms >= end_edge {
                        "end"
                    } else {
                        "start"
                    },
                    seen: payment.describe(),
                });
                continue;
            }
            let unanswered = payment.submissions.iter().find(|s| {
                s.valid.is_ok() && !payment.outcomes.iter().any(|o| s.answered_by(&o.fact))
            });
            if let Some(s) = unanswered {
                report.push(Discrepancy::new(
                    AuditCode::OutcomeMissing,
                    s.location.clone(),
                    Some(payment_id),
                    "one final outcome",
                    format!("none ({})", payment.describe()),
                ));
            }
            if let Some(completed) = payment.completed().filter(|o| !o.repeat)
                && completed.fact.terms.is_interbank()
                && !payment.settled
                && (payment.clearing.is_some() || !payment.submissions.is_empty())
            {
                report.push(Discrepancy::new(
                    AuditCode::SettlementMissing,
                    completed.location.clone(),
                    Some(payment_id),
                    "the completed interbank payment on settlement.clearing",
                    "no settlement record",
                ));
            }
            if payment.outcomes.is_empty() {
                if payment.submissions.is_empty() && payment.prior.is_none() {
                    // A clearing message or response that nothing answered.
                    let location = payment.clearing.as_ref().map_or_else(
                        || {
                            Location::new(
                                "-",
                                Position {
                                    partition: 0,
                                    offset: 0,
                                },
                            )
                        },
                        |c| c.location.clone(),
                    );
                    report.push(Discrepancy::new(
                        AuditCode::OutcomeMissing,
                        location,
                        Some(payment_id),
                        "one final outcome",
                        format!("none ({})", payment.describe()),
                    ));
                }
                continue;
            }
            self.judge(payment_id, payment, report);
        }
        for clearing in self.pending_clearings.drain(..) {
            if clearing.decided_at_ms < end_edge {
                report.push(Discrepancy::new(
                    AuditCode::SettlementMissing,
                    Location::new(
                        crate::subjects::SETTLEMENT_CLEARING,
                        Position {
                            partition: 0,
                            offset: 0,
                        },
                    ),
                    Some(clearing.payment_id),
                    "the clearing counted in a settlement instruction",
                    "no instruction counted it",
                ));
            }
        }
        for (position, location, at_ms) in self.pending_positions.drain(..) {
            let early = self
                .config
                .range_start_ms
                .is_some_and(|from| position.window_start_at_ms < from);
            if at_ms < end_edge && !early {
                report.push(Discrepancy::new(
                    AuditCode::PositionMismatch,
                    location,
                    None,
                    format!("the instruction of window {}", position.window_id),
                    "no instruction of its window",
                ));
            }
        }
        self.vehicles.finish(range_end_ms, report);
        self.wallets.finish(end_edge, report);
        for (_, refused) in self.refused.drain() {
            if refused.at_ms < end_edge {
                report.push(refused.discrepancy);
            }
        }
    }
}

/// An outcome for a submission answered before (`earlier`: whether the decision is the same,
/// how it read, its terms): another decision is a contradiction, the same with other terms a
/// mismatch; each reported once per payment.
fn compare_with_earlier(
    reported: &mut Vec<AuditCode>,
    report: &mut AuditReport,
    location: &Location,
    fact: &OutcomeFact,
    earlier: (bool, String, EarlierTerms<'_>),
) {
    let (same_decision, described, terms) = earlier;
    let (code, expected, found) = if !same_decision {
        (
            AuditCode::OutcomeContradiction,
            described,
            fact.describe_status(),
        )
    } else if !terms.matches(&fact.terms) {
        (
            AuditCode::OutcomeMismatch,
            terms.describe(),
            fact.terms.describe(),
        )
    } else {
        return;
    };
    once(
        reported,
        report,
        Discrepancy::new(
            code,
            location.clone(),
            Some(fact.payment_id),
            expected,
            found,
        ),
    );
}

/// Reports `discrepancy` unless its code was reported for this payment already.
fn once(reported: &mut Vec<AuditCode>, report: &mut AuditReport, discrepancy: Discrepancy) {
    if !reported.contains(&discrepancy.code) {
        reported.push(discrepancy.code);
        report.push(discrepancy);
    }
}

fn describe(status: OutcomeStatus, reason: Option<&str>) -> String {
    match status {
        OutcomeStatus::Completed => "COMPLETED".to_owned(),
        OutcomeStatus::Rejected => format!("REJECTED {}", reason.unwrap_or("-")),
    }
}

fn rows_of<'a>(clearings: impl Iterator<Item = &'a PendingClearing>) -> BTreeMap<String, Row> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for c in clearings {
        let payer = rows.entry(c.payer_institution.clone()).or_default();
        payer.debit_fen += c.amount_fen;
        payer.clearing_count += 1;
        let payee = rows.entry(c.payee_institution.clone()).or_default();
        payee.credit_fen += c.amount_fen;
        payee.clearing_count += 1;
    }
    rows
}

fn rows_of_instruction(instruction: &SettlementInstruction) -> BTreeMap<String, Row> {
    instruction
        .positions
        .iter()
        .filter(|p| p.debit_fen != 0 || p.credit_fen != 0 || p.clearing_count != 0)
        .map(|p| {
            (
                p.institution_id.clone(),
                Row {
                    debit_fen: p.debit_fen,
                    credit_fen: p.credit_fen,
                    clearing_count: p.clearing_count,
                },
            )
        })
        .collect()
}

fn describe_rows(rows: &BTreeMap<String, Row>) -> String {
    if rows.is_empty() {
        return "no clearings".to_owned();
    }
    rows.iter()
        .map(|(oi, r)| {
            format!(
                "{oi} debit {} credit {} ({} clearings)",
                r.debit_fen, r.credit_fen, r.clearing_count
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn check_position(
    rows: &[SettlementPosition],
    position: &SettlementPosition,
    location: Location,
    report: &mut AuditReport,
) {
    match rows
        .iter()
        .find(|r| r.institution_id == position.institution_id)
    {
        Some(row) if row == position => {}
        row => report.push(Discrepancy::new(
            AuditCode::PositionMismatch,
            location,
            None,
            row.map(|r| {
                format!(
                    "net {} fen (debit {}, credit {})",
                    r.net_fen, r.debit_fen, r.credit_fen
                )
            })
            .unwrap_or_else(|| "no row of this institution".to_owned()),
            format!(
                "net {} fen (debit {}, credit {})",
                position.net_fen, position.debit_fen, position.credit_fen
            ),
        )),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use dcpipe_schemas::PartyRef;

    use super::*;

    const T0_MS: i64 = 1_800_000_000_000;

    pub(in crate::audit) fn party(institution: &str, wallet: &str) -> PartyRef {
        PartyRef {
            institution_id: institution.into(),
            wallet_id: wallet.into(),
        }
    }

    fn terms(payee_institution: &str, amount_fen: i64) -> Terms {
        Terms {
            payer: party("oi01", "w1"),
            payee: party(payee_institution, "w2"),
            amount_fen,
            currency: "CNY".into(),
        }
    }

    /// A checked record of `subject` at `offset` and bus time `at_ms`.
    pub(in crate::audit) fn record(subject: &str, offset: u64, at_ms: i64, fact: Fact) -> Checked {
        Checked {
            subject: subject.into(),
            position: Position {
                partition: 0,
                offset,
            },
            timestamp_ms: at_ms,
            fact,
        }
    }

    fn id() -> PaymentId {
        PaymentId::from_bytes([5; 16])
    }

    fn digest(byte: u8) -> Digest32 {
        Digest32::from_bytes([byte; 32])
    }

    fn envelope(terms: Terms) -> Fact {
        envelope_of(id(), terms)
    }

    fn envelope_of(payment_id: PaymentId, terms: Terms) -> Fact {
        Fact::Envelope {
            payment_id,
            terms,
            envelope_digest: digest(1),
            submission_digest: digest(2),
            factor: digest(3),
            verdict: Ok(()),
        }
    }

    fn clearing(terms: Terms, binding: Digest32) -> Fact {
        Fact::Clearing {
            payment_id: id(),
            terms,
            digest: digest(1),
            binding,
        }
    }

    fn accepted() -> Fact {
        Fact::Response {
            payment_id: id(),
            accepted: true,
            amount_fen: 0,
        }
    }

    fn outcome(terms: Terms, status: OutcomeStatus, stage: &str) -> OutcomeFact {
        OutcomeFact {
            payment_id: id(),
            digest: digest(1),
            status,
            reason_code: (status == OutcomeStatus::Rejected).then(|| "funds.insufficient".into()),
            terms,
            stage: stage.into(),
            decided_at_ms: T0_MS,
        }
    }

    fn position(oi: &str, debit_fen: i64, credit_fen: i64) -> SettlementPosition {
        SettlementPosition {
            window_id: 7,
            window_start_at_ms: T0_MS - 1_000,
            window_end_at_ms: T0_MS + 1_000,
            institution_id: oi.into(),
            net_fen: credit_fen - debit_fen,
            debit_fen,
            credit_fen,
            clearing_count: 1,
        }
    }

    /// The instruction of window 7 ([T0 − 1 s, T0 + 1 s)) with one clearing oi01 → oi02.
    fn instruction(amount_fen: i64) -> SettlementInstruction {
        SettlementInstruction {
            instruction_id: dcpipe_schemas::InstructionId::from_bytes([1; 16]),
            window_id: 7,
            window_start_at_ms: T0_MS - 1_000,
            window_end_at_ms: T0_MS + 1_000,
            positions: vec![
                position("oi01", amount_fen, 0),
                position("oi02", 0, amount_fen),
            ],
            late_clearing_count: 0,
            late_amount_fen: 0,
            issued_at_ms: T0_MS + 2_000,
            issuer_certificate: Vec::new(),
            signature: Vec::new(),
        }
    }

    fn run(config: BookConfig, records: Vec<Checked>, end_ms: i64) -> AuditReport {
        let mut book = Book::new(config);
        let mut report = AuditReport::default();
        for r in records {
            book.apply(r, &mut report);
        }
        book.finish(end_ms, &mut report);
        report
    }

    #[test]
    fn a_whole_interbank_payment_is_judged_once_and_its_copies_are_repeats() {
        let t = terms("oi02", 700);
        let completed = outcome(t.clone(), OutcomeStatus::Completed, "commit");
        let report = run(
            BookConfig::default(),
            vec![
                record("txn.submit.oi01", 1, T0_MS, envelope(t.clone())),
                record(
                    "clearing.request.oi02",
                    1,
                    T0_MS + 1,
                    clearing(t.clone(), digest(3)),
                ),
                record("clearing.response.oi01", 1, T0_MS + 2, accepted()),
                record(
                    "txn.result.oi01",
                    1,
                    T0_MS + 3,
                    Fact::Outcome(completed.clone()),
                ),
                record(
                    "txn.result.oi02",
                    1,
                    T0_MS + 3,
                    Fact::Outcome(completed.clone()),
                ),
                record(
                    "settlement.clearing",
                    1,
                    T0_MS + 3,
                    Fact::SettlementClearing(completed.clone()),
                ),
                record(
                    "settlement.instruction",
                    1,
                    T0_MS + 2_000,
                    Fact::Instruction(instruction(700)),
                ),
                record(
                    "settlement.position.oi02",
                    1,
                    T0_MS + 2_000,
                    Fact::Position(position("oi02", 0, 700)),
                ),
                // Long after it was judged, a copy again.
                record(
                    "txn.result.oi02",
                    2,
                    T0_MS + 60_000,
                    Fact::Outcome(completed),
                ),
            ],
            T0_MS + 120_000,
        );
        assert!(report.is_clean(), "{:#?}", report.discrepancies);
        assert_eq!(report.counts.payments_judged, 1);
        assert_eq!(report.counts.payments_completed, 1);
        assert_eq!(report.counts.windows_checked, 1);
    }

    /// An intrabank payment of `t` rejected, judged (another payment's records, half a minute
    /// later, move the book's time past its reorder wait), then `late` read a minute after.
    fn judged_then(t: &Terms, late: OutcomeFact) -> AuditReport {
        let rejected = outcome(t.clone(), OutcomeStatus::Rejected, "payer");
        let other_id = PaymentId::from_bytes([6; 16]);
        let other_envelope = envelope_of(other_id, t.clone());
        let mut other_outcome = rejected.clone();
        other_outcome.payment_id = other_id;
        let mut book = Book::new(BookConfig::default());
        let mut report = AuditReport::default();
        for r in [
            record("txn.submit.oi01", 1, T0_MS, envelope(t.clone())),
            record("txn.result.oi01", 1, T0_MS + 3, Fact::Outcome(rejected)),
            record("txn.submit.oi01", 2, T0_MS + 30_000, other_envelope),
            record(
                "txn.result.oi01",
                2,
                T0_MS + 30_003,
                Fact::Outcome(other_outcome),
            ),
        ] {
            book.apply(r, &mut report);
        }
        assert!(
            book.closed.contains_key(&id()),
            "judged before the late outcome"
        );
        book.apply(
            record("txn.result.oi01", 3, T0_MS + 60_000, Fact::Outcome(late)),
            &mut report,
        );
        book.finish(T0_MS + 120_000, &mut report);
        report
    }

    #[test]
    fn an_outcome_read_after_its_payment_was_judged_is_held_to_the_judged_one() {
        let t = terms("oi01", 700);
        // The same outcome again: a repeat, nothing to report.
        let same = judged_then(&t, outcome(t.clone(), OutcomeStatus::Rejected, "payer"));
        assert!(same.is_clean(), "{:#?}", same.discrepancies);
        assert_eq!(same.counts.payments_judged, 2);

        // Other terms for the same decision: the judged terms are what was expected.
        let other = judged_then(
            &t,
            outcome(terms("oi01", 701), OutcomeStatus::Rejected, "payer"),
        );
        assert_eq!(other.discrepancies.len(), 1, "{:#?}", other.discrepancies);
        let found = &other.discrepancies[0];
        assert_eq!(found.code, AuditCode::OutcomeMismatch);
        assert_eq!(found.expected, "oi01/w1 → oi01/w2 700 fen CNY");
        assert_eq!(found.found, "oi01/w1 → oi01/w2 701 fen CNY");

        // Another decision: a contradiction, the judged one named with its reason.
        let mut reason = outcome(t.clone(), OutcomeStatus::Rejected, "payer");
        reason.reason_code = Some("limit.daily".into());
        let contradiction = judged_then(&t, reason);
        assert_eq!(contradiction.discrepancies.len(), 1);
        let found = &contradiction.discrepancies[0];
        assert_eq!(found.code, AuditCode::OutcomeContradiction);
        assert_eq!(found.expected, "REJECTED funds.insufficient");
    }

    #[test]
    fn a_completed_payment_without_its_clearing_is_found() {
        let t = terms("oi01", 700);
        let report = run(
            BookConfig::default(),
            vec![
                record("txn.submit.oi01", 1, T0_MS, envelope(t.clone())),
                record(
                    "txn.result.oi01",
                    1,
                    T0_MS + 3,
                    Fact::Outcome(outcome(t, OutcomeStatus::Completed, "commit")),
                ),
            ],
            T0_MS + 120_000,
        );
        assert_eq!(report.count_of(AuditCode::CompletedWithoutClearing), 1);
        assert_eq!(report.discrepancies.len(), 1);
    }

    #[test]
    fn an_outcome_begun_before_the_range_is_partial() {
        let t = terms("oi01", 700);
        let config = BookConfig {
            range_start_ms: Some(T0_MS),
            ..BookConfig::default()
        };
        let report = run(
            config,
            vec![record(
                "txn.result.oi01",
                1,
                T0_MS + 10,
                Fact::Outcome(outcome(t, OutcomeStatus::Rejected, "commit")),
            )],
            T0_MS + 120_000,
        );
        assert!(report.is_clean(), "{:#?}", report.discrepancies);
        assert_eq!(report.counts.payments_partial, 1);
        assert_eq!(report.partial[0].edge, "start");
    }

    #[test]
    fn a_valid_envelope_without_outcome_is_missing_one_unless_at_the_end() {
        let t = terms("oi02", 700);
        let records = || vec![record("txn.submit.oi01", 1, T0_MS, envelope(t.clone()))];
        let late = run(BookConfig::default(), records(), T0_MS + 120_000);
        assert_eq!(late.count_of(AuditCode::OutcomeMissing), 1);
        let at_the_end = run(BookConfig::default(), records(), T0_MS + 1_000);
        assert!(at_the_end.is_clean());
        assert_eq!(at_the_end.partial[0].edge, "end");
    }

    #[test]
    fn an_instruction_is_the_sum_of_its_windows_clearings() {
        let t = terms("oi02", 700);
        let clearing = outcome(t, OutcomeStatus::Completed, "commit");
        let mut book = Book::new(BookConfig::default());
        let mut report = AuditReport::default();
        book.apply(
            record(
                "settlement.clearing",
                1,
                T0_MS,
                Fact::SettlementClearing(clearing),
            ),
            &mut report,
        );
        book.apply(
            record(
                "settlement.instruction",
                1,
                T0_MS + 2_000,
                Fact::Instruction(instruction(701)),
            ),
            &mut report,
        );
        assert_eq!(report.count_of(AuditCode::SettlementMismatch), 1);
        assert_eq!(report.counts.windows_checked, 1);
    }
}
