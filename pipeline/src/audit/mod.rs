//! The audit replay: any range of the record re-verified message by message and reconciled
//! (`dcpipe audit`, docs/OPERATIONS.md).
//!
//! - [`check`]: each record decoded with its subject's schema and every signature verified
//!   with the functions the stages use, at the message's own time ([`trust`]: chains valid then
//!   and not revoked as of then, from the revocation history rebuilt from `pki.revocation`).
//!   Pure and independent per record: run on every core.
//! - [`book`]: the reconciliation in record order — each payment's life across subjects, each
//!   settlement window against its clearings — holding state per open payment only.
//! - [`ledger`]: with the institutions' ledgers, each payment judged whole checked against
//!   both sides' records.
//! - [`run`] (here): reads the subjects through [`Bus::replay`] (no consumer group: live
//!   consumers are not disturbed), merges them by bus time, verifies in parallel, reconciles.
//!
//! What is wrong is a [`Discrepancy`] with a stable [`AuditCode`] (docs/PROTOCOL.md §12).
//! Each flow adds its checks in one place: flow 1 (envelopes) and the clearing path in
//! [`check`]'s and [`book`]'s envelope, clearing and outcome arms; flow 3, vehicles, in
//! [`vehicle`] (telemetry, station reports, session events, registry entries and
//! pre-authorizations re-verified; each charge — a clearing message bound to a
//! pre-authorization — reconciled with its session, tariff and pre-authorization); flow 2, the
//! offline wallets, in [`wallet`] (offline payments and key sets as submissions from purse
//! accounts, sync results and remote commands verified, each wallet's synchronizations
//! followed, purses and loss accounts against the ledgers); settlement in the instruction and
//! position arms.

pub mod book;
pub mod ceiling;
pub mod check;
pub mod code;
pub mod ledger;
pub mod report;
pub mod trust;
pub mod vehicle;
pub mod wallet;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcpipe_connectors::bus::{
    Bus, BusError, BusErrorKind, Record, ReplayFrom, ReplayRequest, ReplayStream,
    dead_letter_subject,
};
use dcpipe_schemas::RevocationUpdate;

pub use book::{Book, BookConfig, EDGE_MS_DEFAULT, JudgedPayment};
pub use ceiling::{CEILING_SAMPLE_RECORDS, Sample, VerificationCeiling};
pub use check::{AuditRecord, CheckContext, Checked, Fact, check_record};
pub use code::AuditCode;
pub use ledger::{
    BalanceVerdict, Explained, LedgerReconciler, WalletTally, reconcile_balance, reconcile_payment,
};
pub use report::{AuditReport, Discrepancy, Location, PartialPayment};
pub use trust::{RevocationHistory, TimedVerifier};

use crate::error::Error;
use crate::pki::TrustStore;
use crate::subjects;

/// Records read from one subject per replay batch.
pub const READ_BATCH_MAX: usize = 512;

/// Records verified together (split between the verification threads).
pub const VERIFY_BATCH_RECORDS: usize = 4_096;

/// Why an audit could not run (as opposed to what it found).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditErrorKind {
    /// The bus failed or could not be reached.
    Bus,
    /// A ledger failed or could not be reached.
    Ledger,
    /// The options do not make a range.
    Input,
}

impl fmt::Display for AuditErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuditErrorKind::Bus => "bus",
            AuditErrorKind::Ledger => "ledger",
            AuditErrorKind::Input => "input",
        })
    }
}

/// An audit that could not run.
pub type AuditError = Error<AuditErrorKind>;

impl From<BusError> for AuditError {
    fn from(e: BusError) -> Self {
        AuditError::with_source(AuditErrorKind::Bus, e.to_string(), e)
    }
}

impl From<dcpipe_connectors::ledger::LedgerError> for AuditError {
    fn from(e: dcpipe_connectors::ledger::LedgerError) -> Self {
        AuditError::with_source(AuditErrorKind::Ledger, e.to_string(), e)
    }
}

/// Where a range ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeEnd {
    /// Before this bus time (exclusive).
    TimeMs(i64),
    /// Before this sequence or offset (exclusive, in each subject), and before the time the
    /// audit started.
    Offset(u64),
}

/// What to audit.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// The institutions whose subjects are read.
    pub institutions: Vec<String>,
    /// Only this institution's subjects (and settlement's) are read.
    pub institution: Option<String>,
    /// Only the subjects matching one of these patterns (`*` one token, `>` the rest); all when
    /// empty.
    pub subjects: Vec<String>,
    /// Where the range starts.
    pub from: ReplayFrom,
    /// Where it ends.
    pub to: RangeEnd,
    /// Width of the range's edges (see [`BookConfig::edge_ms`]).
    pub edge_ms: i64,
    /// Verification threads.
    pub threads: usize,
}

impl AuditOptions {
    /// Every subject of `institutions` from the beginning up to `until_ms`.
    pub fn new(institutions: Vec<String>, until_ms: i64) -> Self {
        AuditOptions {
            institutions,
            institution: None,
            subjects: Vec::new(),
            from: ReplayFrom::Beginning,
            to: RangeEnd::TimeMs(until_ms),
            edge_ms: EDGE_MS_DEFAULT,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }

    /// The subjects this audit reads, in a stable order.
    pub fn audited_subjects(&self) -> Vec<String> {
        let institutions: Vec<&String> = self
            .institutions
            .iter()
            .filter(|oi| self.institution.as_ref().is_none_or(|only| only == *oi))
            .collect();
        let mut all = Vec::new();
        for oi in &institutions {
            all.extend([
                subjects::txn_submit(oi),
                subjects::clearing_request(oi),
                subjects::clearing_response(oi),
                subjects::txn_result(oi),
                subjects::settlement_position(oi),
                subjects::vehicle_authorization(oi),
                subjects::vehicle_telemetry(oi),
                subjects::vehicle_report(oi),
                subjects::vehicle_session(oi),
                subjects::wallet_offline(oi),
                subjects::wallet_keyset(oi),
                subjects::wallet_result(oi),
                subjects::wallet_command(oi),
            ]);
        }
        all.extend([
            subjects::SETTLEMENT_CLEARING.to_owned(),
            subjects::SETTLEMENT_INSTRUCTION.to_owned(),
            subjects::PKI_REVOCATION.to_owned(),
            subjects::VEHICLE_REGISTRY.to_owned(),
        ]);
        let mut stages: Vec<&str> = crate::registry::stages().iter().map(|d| d.name).collect();
        stages.push(crate::revocation::DEAD_LETTER_STAGE);
        all.extend(stages.into_iter().map(dead_letter_subject));
        all.retain(|s| self.subjects.is_empty() || self.subjects.iter().any(|p| matches(p, s)));
        all
    }
}

/// Whether `subject` matches `pattern` (`*` one token, `>` one or more at the end).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// How far an audit is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Records read so far.
    pub records: u64,
    /// Records per second since the start.
    pub records_per_s: f64,
    /// Payments open now.
    pub open_payments: usize,
    /// Discrepancies so far.
    pub discrepancies: u64,
}

/// Records read ahead per subject at most, waiting for a partition's next record (Kafka
/// returns a topic's partitions in its own order; the merge wants each one's head).
pub const READ_AHEAD_RECORDS_MAX: usize = 4_096;

/// One subject's replay, with what it read ahead, per partition.
struct SubjectStream {
    stream: Option<Box<dyn ReplayStream>>,
    partitions: std::collections::BTreeMap<u32, VecDeque<Record>>,
    buffered: usize,
}

impl SubjectStream {
    /// Whether to read more before merging: nothing is buffered, or a partition not read to
    /// its end (as the stream tells; else one seen before) has nothing buffered while the
    /// read-ahead allows more. A partition the broker has not answered for yet is waited for:
    /// merged without it, its earlier records would come after later ones of the others (a
    /// clearing after the settlement instruction that counted it).
    fn wants_more(&self) -> bool {
        let Some(stream) = &self.stream else {
            return false;
        };
        if self.buffered == 0 {
            return true;
        }
        if self.buffered >= READ_AHEAD_RECORDS_MAX {
            return false;
        }
        match stream.open_partitions() {
            Some(open) => open
                .iter()
                .any(|p| self.partitions.get(p).is_none_or(VecDeque::is_empty)),
            None => self.partitions.values().any(VecDeque::is_empty),
        }
    }
}

/// The subjects' replays merged by bus time, partition by partition (ties: the order of the
/// subjects given).
struct MergedReplay {
    streams: Vec<SubjectStream>,
    until_offset: Option<u64>,
}

impl MergedReplay {
    async fn open(
        bus: &dyn Bus,
        subjects: &[String],
        from: ReplayFrom,
        until_ms: i64,
        until_offset: Option<u64>,
    ) -> Result<Self, BusError> {
        let mut streams = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let stream = match bus
                .replay(ReplayRequest {
                    subject: subject.clone(),
                    from,
                    until_ms: Some(until_ms),
                })
                .await
            {
                Ok(stream) => Some(stream),
                Err(e) if e.kind() == BusErrorKind::UnknownSubject => None,
                Err(e) => return Err(e),
            };
            streams.push(SubjectStream {
                stream,
                partitions: std::collections::BTreeMap::new(),
                buffered: 0,
            });
        }
        Ok(MergedReplay {
            streams,
            until_offset,
        })
    }

    /// Up to `max` next records in bus-time order; empty when every subject is read.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        let mut out = Vec::with_capacity(max);
        while out.len() < max {
            for s in &mut self.streams {
                while s.wants_more() {
                    let Some(stream) = s.stream.as_mut() else {
                        break;
                    };
                    let records = stream.next_batch(READ_BATCH_MAX).await?;
                    if records.is_empty() {
                        s.stream = None;
                        break;
                    }
                    for record in records {
                        if self
                            .until_offset
                            .is_some_and(|end| record.position.offset >= end)
                        {
                            continue;
                        }
                        s.buffered += 1;
                        s.partitions
                            .entry(record.position.partition)
                            .or_default()
                            .push_back(record);
                    }
                }
            }
            let next = self
                .streams
                .iter()
                .enumerate()
                .flat_map(|(i, s)| {
                    s.partitions
                        .iter()
                        .filter_map(move |(p, q)| q.front().map(|r| (r.timestamp_ms, i, *p)))
                })
                .min();
            let Some((_, i, partition)) = next else {
                break;
            };
            let s = &mut self.streams[i];
            if let Some(record) = s
                .partitions
                .get_mut(&partition)
                .and_then(VecDeque::pop_front)
            {
                s.buffered -= 1;
                out.push(record);
            }
        }
        Ok(out)
    }
}

/// Verifies `records` on `threads` threads, keeping their order.
pub fn check_parallel(
    context: &CheckContext,
    records: &[AuditRecord],
    threads: usize,
) -> Vec<Checked> {
    let threads = threads.max(1);
    let chunk = records.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = records
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|r| check_record(context, r))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Rebuilds the revocation history from `pki.revocation`, from its beginning to `until_ms`
/// (updates that do not verify are skipped here; the audit reports them where the range holds
/// them). Returns the history and how many updates it applied.
pub async fn revocation_history(
    bus: &dyn Bus,
    store: &TrustStore,
    until_ms: i64,
) -> Result<(RevocationHistory, u64), BusError> {
    let mut history = RevocationHistory::new();
    let mut applied = 0;
    let mut replay = match bus
        .replay(ReplayRequest {
            subject: subjects::PKI_REVOCATION.to_owned(),
            from: ReplayFrom::Beginning,
            until_ms: Some(until_ms),
        })
        .await
    {
        Ok(replay) => replay,
        Err(e) if e.kind() == BusErrorKind::UnknownSubject => return Ok((history, 0)),
        Err(e) => return Err(e),
    };
    loop {
        let records = replay.next_batch(READ_BATCH_MAX).await?;
        if records.is_empty() {
            break;
        }
        for record in records {
            if let Ok(update) = dcpipe_schemas::decode::<RevocationUpdate>(&record.payload)
                && history.apply(store, &update).is_ok()
            {
                applied += 1;
            }
        }
    }
    Ok((history, applied))
}

/// Audits a range of the record on `bus` against the trust anchors `store` (and the ledgers,
/// when given), calling `progress` after each batch. Returns the report, clean or not; an error
/// only when the audit could not run.
pub async fn run(
    bus: &dyn Bus,
    store: Arc<TrustStore>,
    ledgers: Option<&LedgerReconciler>,
    options: &AuditOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<AuditReport, AuditError> {
    let started = Instant::now();
    let audit_start_ms = crate::clock::system_now_ms();
    let (until_ms, until_offset) = match options.to {
        RangeEnd::TimeMs(ms) => (ms, None),
        RangeEnd::Offset(offset) => (audit_start_ms, Some(offset)),
    };
    let settling_from_ms = until_ms.saturating_sub(options.edge_ms);
    let mut report = AuditReport {
        bus: bus.kind().to_string(),
        range: describe_range(options),
        ledger_reconciled: ledgers.is_some(),
        ..AuditReport::default()
    };
    let (history, updates) = revocation_history(bus, &store, until_ms).await?;
    report.counts.revocation_updates = updates;
    let context = Arc::new(CheckContext::new(TimedVerifier::new(store, history)));
    let registry = vehicle::registry_history(bus, &context, until_ms).await?;
    let subjects = options.audited_subjects();
    let mut merged =
        MergedReplay::open(bus, &subjects, options.from, until_ms, until_offset).await?;
    let mut book_config = BookConfig {
        range_start_ms: match options.from {
            ReplayFrom::Beginning => None,
            ReplayFrom::TimeMs(ms) => Some(ms),
            ReplayFrom::Offset(_) => None,
        },
        edge_ms: options.edge_ms,
        institution: options.institution.clone(),
        ..BookConfig::default()
    };
    let mut book: Option<Book> = None;
    let mut tally = WalletTally::new();
    let mut pending: Option<tokio::task::JoinHandle<Vec<Checked>>> = None;
    let mut newest_ms = i64::MIN;
    let mut sample = Sample::new(CEILING_SAMPLE_RECORDS);
    loop {
        let records = merged.next_batch(VERIFY_BATCH_RECORDS).await?;
        let next = if records.is_empty() {
            None
        } else {
            for record in &records {
                report.counts.records += 1;
                *report
                    .counts
                    .records_by_subject
                    .entry(record.subject.clone())
                    .or_insert(0) += 1;
                newest_ms = newest_ms.max(record.timestamp_ms);
            }
            if book.is_none() {
                if matches!(options.from, ReplayFrom::Offset(n) if n > 1) {
                    book_config.range_start_ms = records.iter().map(|r| r.timestamp_ms).min();
                }
                let mut new_book = Book::new(book_config.clone());
                new_book.set_registry(registry.clone());
                new_book.set_vehicle_coverage(vehicle::Coverage::of(&subjects));
                book = Some(new_book);
            }
            let audit_records: Vec<AuditRecord> = records.iter().map(AuditRecord::of).collect();
            for record in &audit_records {
                sample.offer(record);
            }
            let context = Arc::clone(&context);
            let threads = options.threads;
            Some(tokio::task::spawn_blocking(move || {
                check_parallel(&context, &audit_records, threads)
            }))
        };
        if let (Some(previous), Some(book)) = (pending.take(), book.as_mut()) {
            let checked = previous.await.map_err(|e| {
                AuditError::new(AuditErrorKind::Input, format!("verification failed: {e}"))
            })?;
            for c in checked {
                book.apply(c, &mut report);
            }
            if let Some(ledgers) = ledgers {
                ledgers
                    .check(
                        &book.take_judged(),
                        settling_from_ms,
                        &mut tally,
                        &mut report,
                    )
                    .await?;
            } else {
                book.take_judged();
            }
            report.counts.open_payments_max = report
                .counts
                .open_payments_max
                .max(book.open_payments() as u64);
            report.counts.vehicle_state_max = report
                .counts
                .vehicle_state_max
                .max(book.vehicle_state() as u64);
            let elapsed = started.elapsed().as_secs_f64().max(1e-9);
            progress(&Progress {
                records: report.counts.records,
                records_per_s: report.counts.records as f64 / elapsed,
                open_payments: book.open_payments(),
                discrepancies: report.discrepancies_by_code.values().sum(),
            });
        }
        match next {
            Some(handle) => pending = Some(handle),
            None => break,
        }
    }
    if let Some(book) = book.as_mut() {
        book.finish(
            until_ms.min(newest_ms.saturating_add(1)).max(newest_ms),
            &mut report,
        );
        if let Some(ledgers) = ledgers {
            ledgers
                .check(
                    &book.take_judged(),
                    settling_from_ms,
                    &mut tally,
                    &mut report,
                )
                .await?;
        }
    }
    if let Some(ledgers) = ledgers {
        // A wallet is covered from its opening when the range starts at the record's
        // beginning, or an edge before the opening.
        let range_start_ms = book_config.range_start_ms;
        let edge_ms = options.edge_ms;
        let covers_opening = |opened_ms: i64| {
            range_start_ms.is_none_or(|from| from.saturating_add(edge_ms) <= opened_ms)
        };
        ledgers
            .check_balances(&tally, covers_opening, &mut report)
            .await?;
        ledgers.check_integrity(&mut report).await?;
    }
    let elapsed = started.elapsed();
    report.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    report.records_per_s = report.counts.records as f64 / elapsed.as_secs_f64().max(1e-9);
    // The ceiling of this range's mix, measured now that the machine does nothing else for
    // the audit: the same checks on the same threads, without reading or reconciling.
    let threads = options.threads;
    report.ceiling = tokio::task::spawn_blocking(move || sample.measure(&context, threads))
        .await
        .map_err(|e| {
            AuditError::new(AuditErrorKind::Input, format!("ceiling not measured: {e}"))
        })?;
    Ok(report)
}

fn describe_range(options: &AuditOptions) -> String {
    let from = match options.from {
        ReplayFrom::Beginning => "the beginning".to_owned(),
        ReplayFrom::Offset(n) => format!("sequence {n}"),
        ReplayFrom::TimeMs(ms) => dcpipe_schemas::rfc3339_of_ms(ms),
    };
    let to = match options.to {
        RangeEnd::TimeMs(ms) => dcpipe_schemas::rfc3339_of_ms(ms),
        RangeEnd::Offset(n) => format!("sequence {n}"),
    };
    format!("from {from} to {to}")
}

/// How often the command prints its progress line.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_tokens() {
        assert!(matches("txn.*.oi01", "txn.submit.oi01"));
        assert!(matches("txn.>", "txn.submit.oi01"));
        assert!(matches("settlement.clearing", "settlement.clearing"));
        assert!(!matches("txn.*", "txn.submit.oi01"));
        assert!(!matches("clearing.>", "txn.submit.oi01"));
    }

    /// A replay answering in the batches given, saying which partitions are still open.
    struct Scripted {
        batches: VecDeque<Vec<Record>>,
        partitions: Vec<u32>,
    }

    #[async_trait::async_trait]
    impl ReplayStream for Scripted {
        async fn next_batch(&mut self, _max: usize) -> Result<Vec<Record>, BusError> {
            let batch = self.batches.pop_front().unwrap_or_default();
            // A partition is read to its end once no later batch holds it.
            self.partitions.retain(|p| {
                self.batches
                    .iter()
                    .flatten()
                    .any(|r| r.position.partition == *p)
            });
            Ok(batch)
        }

        fn open_partitions(&self) -> Option<&[u32]> {
            Some(&self.partitions)
        }
    }

    fn record(partition: u32, offset: u64, timestamp_ms: i64) -> Record {
        Record {
            subject: "settlement.clearing".to_owned(),
            payload: bytes::Bytes::new(),
            key: None,
            msg_id: None,
            headers: Default::default(),
            position: dcpipe_connectors::bus::Position { partition, offset },
            timestamp_ms,
        }
    }

    #[tokio::test]
    async fn a_partition_the_broker_answers_for_late_is_merged_in_time_order() {
        // The broker answers partition 1 first, then partition 0 whose records are earlier.
        let stream = Scripted {
            batches: VecDeque::from([
                vec![record(1, 0, 20), record(1, 1, 40)],
                vec![record(0, 0, 10), record(0, 1, 30)],
            ]),
            partitions: vec![0, 1],
        };
        let mut merged = MergedReplay {
            streams: vec![SubjectStream {
                stream: Some(Box::new(stream)),
                partitions: std::collections::BTreeMap::new(),
                buffered: 0,
            }],
            until_offset: None,
        };
        let mut times = Vec::new();
        loop {
            let batch = merged.next_batch(2).await.expect("merged");
            if batch.is_empty() {
                break;
            }
            times.extend(batch.iter().map(|r| r.timestamp_ms));
        }
        assert_eq!(times, [10, 20, 30, 40]);
    }

    #[test]
    fn an_institution_reads_its_own_subjects_and_settlement() {
        let mut options = AuditOptions::new(vec!["oi01".into(), "oi02".into()], 0);
        options.institution = Some("oi02".into());
        let subjects = options.audited_subjects();
        assert!(subjects.contains(&"txn.submit.oi02".to_owned()));
        assert!(!subjects.contains(&"txn.submit.oi01".to_owned()));
        assert!(subjects.contains(&"settlement.instruction".to_owned()));
        options.subjects = vec!["settlement.>".into()];
        assert!(
            options
                .audited_subjects()
                .iter()
                .all(|s| s.starts_with("settlement."))
        );
    }
}
