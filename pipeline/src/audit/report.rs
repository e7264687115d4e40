//! What an audit found: discrepancies with their stable codes, payments at the range's edges,
//! counts; as a JSON document and as a table for the terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use dcpipe_connectors::bus::Position;
use dcpipe_schemas::PaymentId;
use serde::Serialize;

use super::ceiling::VerificationCeiling;
use super::code::AuditCode;

/// Discrepancies kept in a report; more are counted, not kept.
pub const DISCREPANCIES_KEPT_MAX: usize = 100_000;

/// Partial payments listed in a report; more are counted, not listed.
pub const PARTIAL_LISTED_MAX: usize = 1_000;

/// Where a record is: its subject and position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The subject.
    pub subject: String,
    /// Kafka partition; 0 on the other buses.
    pub partition: u32,
    /// Stream sequence or offset.
    pub offset: u64,
}

impl Location {
    /// The location of a record.
    pub fn new(subject: &str, position: Position) -> Self {
        Location {
            subject: subject.to_owned(),
            partition: position.partition,
            offset: position.offset,
        }
    }
}

/// One thing wrong with the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    /// The stable code.
    pub code: AuditCode,
    /// The record it was found at.
    #[serde(flatten)]
    pub location: Location,
    /// The payment, when known (UUID text).
    pub payment_id: Option<String>,
    /// What the record should hold.
    pub expected: String,
    /// What it holds.
    pub found: String,
}

impl Discrepancy {
    /// A discrepancy.
    pub fn new(
        code: AuditCode,
        location: Location,
        payment_id: Option<PaymentId>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Discrepancy {
            code,
            location,
            payment_id: payment_id.map(|id| id.to_string()),
            expected: expected.into(),
            found: found.into(),
        }
    }
}

/// A payment the range does not hold whole: begun before it or not finished in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialPayment {
    /// The payment.
    pub payment_id: String,
    /// Which edge: `start` (begun before the range) or `end` (not finished in it).
    pub edge: &'static str,
    /// What of its life the range holds.
    pub seen: String,
}

/// The counts of an audit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditCounts {
    /// Records read, by subject.
    pub records_by_subject: BTreeMap<String, u64>,
    /// Records read, all subjects.
    pub records: u64,
    /// Records whose signatures were verified (every message but positions, dead letters and
    /// the kinds no flow audits yet).
    pub verified: u64,
    /// Payments whose whole life the range holds, judged.
    pub payments_judged: u64,
    /// Of those, completed.
    pub payments_completed: u64,
    /// Of those, rejected.
    pub payments_rejected: u64,
    /// Payments at the range's edges (partial).
    pub payments_partial: u64,
    /// Settlement instructions checked against their clearings.
    pub windows_checked: u64,
    /// Revocation updates applied to the history.
    pub revocation_updates: u64,
    /// Records refused by their checks but dead-lettered by a stage (not discrepancies).
    pub refused_and_dead_lettered: u64,
    /// Payments checked against the ledgers.
    pub ledger_payments_checked: u64,
    /// Wallets whose balance was checked against their opening and the record.
    pub wallets_checked: u64,
    /// Wallets the range does not cover whole (opened before it, money in flight, offline
    /// money, or moved by payments it does not hold whole): not checked.
    pub wallets_partial: u64,
    /// Offline wallets whose purse account was checked against its funding and the record.
    pub purses_checked: u64,
    /// Offline wallets the range does not cover whole (opened before it, money in flight).
    pub purses_partial: u64,
    /// Most payments open at once: what the audit's memory grows with (not the records).
    pub open_payments_max: u64,
    /// Vehicle telemetry batches applied to their vehicle's chain.
    pub vehicle_telemetry_batches: u64,
    /// Vehicle telemetry batches read again (duplicates: no effect).
    pub vehicle_telemetry_duplicates: u64,
    /// Reports skipped over gaps in a vehicle's sequence (lost, as the stage counts them).
    pub vehicle_telemetry_reports_missing: u64,
    /// Vehicle session events read.
    pub vehicle_session_events: u64,
    /// Registry entries the registry refuses (not applied: not discrepancies).
    pub vehicle_entities_refused: u64,
    /// Vehicle charges reconciled with their session, tariff and pre-authorization.
    pub vehicle_charges_checked: u64,
    /// Of those, whose session the range does not hold (at its edges).
    pub vehicle_charges_partial: u64,
    /// Most vehicles, sessions and pre-authorizations held at once (per vehicle and session,
    /// not per record).
    pub vehicle_state_max: u64,
}

/// What an audit found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    /// The bus audited.
    pub bus: String,
    /// The range, as asked.
    pub range: String,
    /// Whether the ledgers were reconciled.
    pub ledger_reconciled: bool,
    /// Counts.
    pub counts: AuditCounts,
    /// Every discrepancy (at most [`DISCREPANCIES_KEPT_MAX`]).
    pub discrepancies: Vec<Discrepancy>,
    /// Discrepancies found beyond those kept.
    pub discrepancies_not_kept: u64,
    /// Discrepancies by code.
    pub discrepancies_by_code: BTreeMap<String, u64>,
    /// Partial payments (at most [`PARTIAL_LISTED_MAX`]).
    pub partial: Vec<PartialPayment>,
    /// How long the audit took.
    pub elapsed_ms: u64,
    /// Records read per second.
    pub records_per_s: f64,
    /// What the verification of this range's mix alone reaches on the audit's threads,
    /// measured at the end on an even sample of the range; `None` for an empty range.
    pub ceiling: Option<VerificationCeiling>,
}

impl AuditReport {
    /// Adds a discrepancy.
    pub fn push(&mut self, discrepancy: Discrepancy) {
        *self
            .discrepancies_by_code
            .entry(discrepancy.code.as_str().to_owned())
            .or_insert(0) += 1;
        if self.discrepancies.len() < DISCREPANCIES_KEPT_MAX {
            self.discrepancies.push(discrepancy);
        } else {
            self.discrepancies_not_kept += 1;
        }
    }

    /// Adds a partial payment.
    pub fn push_partial(&mut self, partial: PartialPayment) {
        self.counts.payments_partial += 1;
        if self.partial.len() < PARTIAL_LISTED_MAX {
            self.partial.push(partial);
        }
    }

    /// Whether everything reconciled.
    pub fn is_clean(&self) -> bool {
        self.discrepancies_by_code.is_empty()
    }

    /// How many discrepancies carry `code`.
    pub fn count_of(&self, code: AuditCode) -> u64 {
        self.discrepancies_by_code
            .get(code.as_str())
            .copied()
            .unwrap_or(0)
    }

    /// The report as a JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as a table for the terminal: counts, then discrepancies by code, then the
    /// first few of each code.
    pub fn table(&self) -> String {
        let c = &self.counts;
        let mut out = String::new();
        let _ = writeln!(out, "audit of {} {}", self.bus, self.range);
        let _ = writeln!(
            out,
            "  records            {:>10}  ({} verified, {:.0} records/s)",
            c.records, c.verified, self.records_per_s
        );
        if let Some(ceiling) = &self.ceiling {
            let _ = writeln!(
                out,
                "  verification alone {:>10.0}  records/s on {} threads ({} records sampled, best of {} passes): the audit ran at {:.2} of it",
                ceiling.records_per_s,
                ceiling.threads,
                ceiling.sample_records,
                ceiling.passes,
                self.records_per_s / ceiling.records_per_s.max(1e-9)
            );
        }
        let _ = writeln!(
            out,
            "  payments judged    {:>10}  ({} completed, {} rejected; {} partial at the edges)",
            c.payments_judged, c.payments_completed, c.payments_rejected, c.payments_partial
        );
        let _ = writeln!(out, "  windows checked    {:>10}", c.windows_checked);
        if c.vehicle_telemetry_batches + c.vehicle_session_events + c.vehicle_charges_checked > 0 {
            let _ = writeln!(
                out,
                "  vehicle charges    {:>10}  ({} partial; {} telemetry batches, {} copies, \
                 {} reports missing; {} session events; state held, most {})",
                c.vehicle_charges_checked,
                c.vehicle_charges_partial,
                c.vehicle_telemetry_batches,
                c.vehicle_telemetry_duplicates,
                c.vehicle_telemetry_reports_missing,
                c.vehicle_session_events,
                c.vehicle_state_max
            );
        }
        let _ = writeln!(
            out,
            "  open payments, most {:>9}  (the state held, whatever the range)",
            c.open_payments_max
        );
        let _ = writeln!(
            out,
            "  refused, dead-lettered {:>6}  (bad input the stages handled)",
            c.refused_and_dead_lettered
        );
        if self.ledger_reconciled {
            let _ = writeln!(
                out,
                "  ledger payments    {:>10}",
                c.ledger_payments_checked
            );
            let _ = writeln!(
                out,
                "  wallet balances    {:>10}  ({} partially covered, not checked)",
                c.wallets_checked, c.wallets_partial
            );
            let _ = writeln!(
                out,
                "  offline purses     {:>10}  ({} partially covered, not checked)",
                c.purses_checked, c.purses_partial
            );
        }
        if self.is_clean() {
            let _ = writeln!(out, "  discrepancies               0  reconciled");
            return out;
        }
        let _ = writeln!(out, "  discrepancies by code:");
        for (code, count) in &self.discrepancies_by_code {
            let _ = writeln!(out, "    {code:<40} {count:>8}");
        }
        let mut shown: BTreeMap<AuditCode, usize> = BTreeMap::new();
        for d in &self.discrepancies {
            let n = shown.entry(d.code).or_insert(0);
            *n += 1;
            if *n > 5 {
                continue;
            }
            let _ = writeln!(
                out,
                "    {} at {} {}/{}{}: expected {}, found {}",
                d.code,
                d.location.subject,
                d.location.partition,
                d.location.offset,
                d.payment_id
                    .as_ref()
                    .map(|id| format!(" payment {id}"))
                    .unwrap_or_default(),
                d.expected,
                d.found
            );
        }
        out
    }
}
