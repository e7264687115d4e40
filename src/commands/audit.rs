//! `dcpipe audit`: a range of the record re-verified message by message and reconciled with
//! settlement (and the ledgers, with `--ledger`). Needs only the trust anchors.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use dcpipe_connectors::bus::{Bus, NamespacedBus, ReplayFrom, connect};
use dcpipe_connectors::ledger::{Ledger, LedgerOptions, LedgerUrl, open_ledger};
use dcpipe_pipeline::audit::{
    self, AuditOptions, AuditReport, LedgerReconciler, PROGRESS_INTERVAL, RangeEnd,
};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::ops::tail::ReadUntil;
use dcpipe_pipeline::ops::trust_anchors;

use super::read_args::{parse_from, parse_until};
use crate::settings::{BrokerArgs, Settings, parse_duration};

/// Exit code when the record reconciles.
pub(crate) const EXIT_RECONCILED: u8 = 0;
/// Exit code when a discrepancy was found.
pub(crate) const EXIT_DISCREPANCIES: u8 = 1;
/// Exit code when the audit could not run.
pub(crate) const EXIT_COULD_NOT_RUN: u8 = 2;

/// Options of `dcpipe audit`.
#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    /// The bus: embedded, nats://host:port or kafka://host:port.
    #[arg(long, env = "DCPIPE_BUS")]
    bus: Option<String>,
    /// Credentials, TLS and stream limits towards the broker.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// Audit a run kept in a namespace of its own on the broker (as `demo --keep` prints it,
    /// e.g. demo-1a2b3c4d) instead of the deployment's subjects.
    #[arg(long, value_name = "PREFIX")]
    namespace: Option<String>,
    /// The trust anchors: `pki init`'s trust/ (or the PKI directory holding it). No private
    /// key is read.
    #[arg(long, env = "DCPIPE_PKI", value_name = "TRUST_ANCHORS")]
    pki: PathBuf,
    /// Reconcile with the institutions' ledgers too: sqlite://DIR or postgres://….
    #[arg(long, value_name = "URL")]
    ledger: Option<String>,
    /// Where the range starts: `beginning`, a time (2026-12-07T08:00:00Z) or a duration ago
    /// (15m).
    #[arg(long, value_parser = parse_from, conflicts_with = "from_seq")]
    from: Option<ReplayFrom>,
    /// Where the range starts, as a stream sequence (JetStream, embedded) or an offset in every
    /// partition (Kafka).
    #[arg(long, value_name = "N")]
    from_seq: Option<u64>,
    /// Where the range ends (exclusive): a time or a duration ago; the moment the audit
    /// started when not given.
    #[arg(long, value_parser = parse_until, conflicts_with = "to_seq")]
    to: Option<ReadUntil>,
    /// Where the range ends (exclusive), as a sequence or offset.
    #[arg(long, value_name = "N")]
    to_seq: Option<u64>,
    /// Only the subjects matching these patterns (`*` one token, `>` the rest), comma-separated.
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<String>,
    /// Only this institution's subjects (and settlement's).
    #[arg(long, value_name = "OI")]
    institution: Option<String>,
    /// Width of the range's edges: payments begun or still active this close to an edge and
    /// not whole in the range are partial, not discrepancies.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    edge: std::time::Duration,
    /// Where the JSON report is written.
    #[arg(long, value_name = "FILE")]
    report: PathBuf,
    /// Exit 2 when the range holds no message.
    #[arg(long)]
    require_messages: bool,
}

pub(crate) async fn run(args: AuditArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    match audit_command(&args, settings).await {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(e) => {
            eprintln!("audit could not run: {e:#}");
            Ok(ExitCode::from(EXIT_COULD_NOT_RUN))
        }
    }
}

async fn audit_command(args: &AuditArgs, settings: &Settings) -> anyhow::Result<u8> {
    let pki = args.pki.clone();
    let store = tokio::task::spawn_blocking(move || trust_anchors(&pki)).await??;
    let bus_url = settings
        .bus_url(args.bus.as_deref())
        .map_err(anyhow::Error::msg)?;
    let bus = connect(&bus_url, &settings.bus_options)
        .await
        .with_context(|| format!("connecting to {bus_url}"))?;
    let bus: Arc<dyn Bus> = match &args.namespace {
        None => bus,
        Some(prefix) => Arc::new(
            NamespacedBus::new(bus, prefix.as_str())
                .with_context(|| format!("--namespace {prefix}"))?,
        ),
    };
    let institutions: Vec<String> = store.institution_ids().map(str::to_owned).collect();
    let ledgers = match &args.ledger {
        None => None,
        Some(url) => {
            let url: LedgerUrl = url.parse()?;
            Some(open_ledgers(&url, &institutions).await?)
        }
    };
    let options = options_of(args, institutions)?;
    let report = audit_bus(bus.as_ref(), Arc::new(store), ledgers.as_ref(), &options).await?;
    print!("{}", report.table());
    std::fs::write(&args.report, report.to_json())
        .with_context(|| format!("writing {}", args.report.display()))?;
    println!("report written to {}", args.report.display());
    if args.require_messages && report.counts.records == 0 {
        eprintln!("the range holds no message (--require-messages)");
        return Ok(EXIT_COULD_NOT_RUN);
    }
    Ok(if report.is_clean() {
        EXIT_RECONCILED
    } else {
        EXIT_DISCREPANCIES
    })
}

/// The audit's options from the command line.
fn options_of(args: &AuditArgs, institutions: Vec<String>) -> anyhow::Result<AuditOptions> {
    let started_ms = system_now_ms();
    let mut options = AuditOptions::new(institutions, started_ms);
    options.from = match (args.from, args.from_seq) {
        (_, Some(n)) => ReplayFrom::Offset(n),
        (Some(from), None) => from,
        (None, None) => ReplayFrom::Beginning,
    };
    options.to = match (args.to, args.to_seq) {
        (_, Some(n)) => RangeEnd::Offset(n),
        (Some(ReadUntil::TimeMs(ms)), None) => RangeEnd::TimeMs(ms),
        (Some(ReadUntil::Offset(n)), None) => RangeEnd::Offset(n),
        (Some(ReadUntil::End) | None, None) => RangeEnd::TimeMs(started_ms),
    };
    if let Some(oi) = &args.institution
        && !options.institutions.contains(oi)
    {
        anyhow::bail!("--institution {oi}: no CA of the trust anchors is this institution's");
    }
    options.institution = args.institution.clone();
    options.subjects = args.subjects.clone();
    options.edge_ms = i64::try_from(args.edge.as_millis()).context("--edge is too long")?;
    Ok(options)
}

/// Opens each institution's ledger at `url`.
pub(crate) async fn open_ledgers(
    url: &LedgerUrl,
    institutions: &[String],
) -> anyhow::Result<LedgerReconciler> {
    let mut ledgers: BTreeMap<String, Arc<dyn Ledger>> = BTreeMap::new();
    for institution in institutions {
        let ledger = open_ledger(url, institution, &LedgerOptions::default())
            .await
            .with_context(|| format!("opening the ledger of {institution} at {url}"))?;
        ledgers.insert(institution.clone(), ledger);
    }
    Ok(LedgerReconciler::new(ledgers))
}

/// Runs the audit with a progress line on stderr (records, records/s, open payments).
pub(crate) async fn audit_bus(
    bus: &dyn Bus,
    store: Arc<dcpipe_pipeline::pki::TrustStore>,
    ledgers: Option<&LedgerReconciler>,
    options: &AuditOptions,
) -> anyhow::Result<AuditReport> {
    let mut last = Instant::now();
    let report = audit::run(bus, store, ledgers, options, |p| {
        if last.elapsed() >= PROGRESS_INTERVAL {
            last = Instant::now();
            eprint!(
                "\r  audited {:>10} records  {:>8.0} records/s  {:>7} open payments  {:>5} discrepancies",
                p.records, p.records_per_s, p.open_payments, p.discrepancies
            );
            let _ = std::io::stderr().flush();
        }
    })
    .await?;
    eprintln!(
        "\r  audited {:>10} records  {:>8.0} records/s{:40}",
        report.counts.records, report.records_per_s, ""
    );
    Ok(report)
}
