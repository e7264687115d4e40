//! `dcpipe worker`: one stage of one institution as its own process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use clap::builder::{PossibleValue, PossibleValuesParser};
use dcpipe_connectors::bus::{BusUrl, connect};
use dcpipe_connectors::ledger::{
    LedgerOptions, LedgerUrl, SettlementConfig, open_ledger, open_settlement,
};
use dcpipe_pipeline::clock::SystemClock;
use dcpipe_pipeline::network::copy_certified_key;
use dcpipe_pipeline::payment::{Institution, PaymentPolicy};
use dcpipe_pipeline::pki::{ChainVerifier, PkiDirectory, RevocationSet};
use dcpipe_pipeline::provision::check_subjects;
use dcpipe_pipeline::registry::{self, Build};
use dcpipe_pipeline::revocation::RevocationFollower;
use dcpipe_pipeline::runtime::{
    Component, ConfigErrorKind, Reachability, RunnerConfig, Stage, StageRunner,
};
use dcpipe_pipeline::settlement::{CentralBank, GRACE_MS_DEFAULT};
use tokio_util::sync::CancellationToken;

use crate::settings::Settings;

/// The stages a worker can run: every registered stage, with its summary for `--help`.
fn stage_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        registry::stages()
            .into_iter()
            .map(|d| PossibleValue::new(d.name).help(d.summary)),
    )
}

/// Options of `dcpipe worker`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// Which stage to run.
    #[arg(value_parser = stage_names())]
    stage: String,
    /// The institution whose stage this is (all stages but settlement).
    #[arg(long, env = "DCPIPE_INSTITUTION")]
    institution: Option<String>,
    /// The bus: nats://host:port or kafka://host:port (the embedded bus lives inside one
    /// process, so a worker cannot use it).
    #[arg(long, env = "DCPIPE_BUS")]
    bus: Option<String>,
    /// The ledgers: sqlite://DIR or postgres://user@host:port/db.
    #[arg(long, env = "DCPIPE_LEDGER")]
    ledger: Option<String>,
    /// The PKI directory written by `dcpipe pki init`.
    #[arg(long, env = "DCPIPE_PKI", value_name = "DIR")]
    pki: PathBuf,
    /// Members of the stage's consumer group in this process (batches decided in parallel).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Messages decided together (one ledger transaction), at most what a ledger takes in one
    /// transaction (4096).
    #[arg(long, default_value_t = RunnerConfig::BATCH_MAX_DEFAULT)]
    batch: usize,
    /// A delivery not acked within this many ms is delivered again (to this or another process
    /// of the stage): how soon the work of a crashed process is taken over.
    #[arg(long, default_value_t = 30_000)]
    ack_wait_ms: u64,
    /// Settlement window length in ms (settlement stage).
    #[arg(long, default_value_t = SettlementConfig::default().window_ms)]
    settlement_window_ms: i64,
    /// Grace after a window's end before it closes, in ms (settlement stage).
    #[arg(long, default_value_t = GRACE_MS_DEFAULT)]
    settlement_grace_ms: i64,
}

pub(crate) async fn run(args: WorkerArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    // Checked before anything is opened or provisioned.
    let descriptor = registry::stage(&args.stage).with_context(|| {
        format!(
            "no stage {}; the stages are {}",
            args.stage,
            registry::names().join(", ")
        )
    })?;
    let runner = RunnerConfig {
        batch_max: args.batch,
        concurrency: args.concurrency,
        ack_wait: std::time::Duration::from_millis(args.ack_wait_ms),
        ..RunnerConfig::default()
    };
    runner.validate().map_err(|e| {
        let flag = match e.kind() {
            ConfigErrorKind::BatchMax => format!("--batch {}", args.batch),
            ConfigErrorKind::Concurrency => format!("--concurrency {}", args.concurrency),
            ConfigErrorKind::AckWait | ConfigErrorKind::FetchWait | ConfigErrorKind::Linger => {
                format!("--ack-wait-ms {}", args.ack_wait_ms)
            }
            other => other.to_string(),
        };
        anyhow!("{flag} refused: {}", e.message())
    })?;
    let bus_url = settings
        .bus_url(args.bus.as_deref())
        .map_err(anyhow::Error::msg)?;
    if bus_url == BusUrl::Embedded {
        bail!("a worker process needs a shared bus: --bus nats://host:port or kafka://host:port");
    }
    let ledger_url: LedgerUrl = args
        .ledger
        .as_deref()
        .or(settings.ledger.as_deref())
        .context("--ledger (or DCPIPE_LEDGER) is required")?
        .parse()?;
    let dir = args.pki.clone();
    let pki = tokio::task::spawn_blocking(move || PkiDirectory::load_institutions(&dir))
        .await?
        .with_context(|| format!("loading the PKI from {}", args.pki.display()))?;
    let revocations = Arc::new(RevocationSet::new());
    let verifier = Arc::new(ChainVerifier::new(
        Arc::clone(pki.trust_store()),
        Arc::clone(&revocations),
    ));
    let clock = Arc::new(SystemClock);
    let options = LedgerOptions::default();

    let stage: Arc<dyn Stage> = match descriptor.build {
        Build::CentralBank(build) => {
            let store = open_settlement(
                &ledger_url,
                SettlementConfig {
                    window_ms: args.settlement_window_ms,
                },
                &options,
            )
            .await?;
            build(Arc::new(CentralBank {
                signer: copy_certified_key(pki.settlement_signer())?,
                verifier: Arc::clone(&verifier),
                store,
                clock,
                grace_ms: args.settlement_grace_ms,
            }))
        }
        Build::Institution(build) => {
            let id = args
                .institution
                .clone()
                .with_context(|| format!("--institution is required for stage {}", args.stage))?;
            let keys = pki
                .institution(&id)
                .with_context(|| format!("no institution {id} in the PKI"))?;
            let ledger = open_ledger(&ledger_url, &id, &options).await?;
            if ledger.wallet_count().await? == 0 {
                // A worker pointed at the wrong database is noticed at start.
                tracing::warn!(
                    institution = %id,
                    ledger = %ledger_url,
                    "the ledger holds no wallets: every payment will be refused; open them with `dcpipe wallets open --institution {id} --ledger URL --file FILE`"
                );
            }
            build(Arc::new(Institution::new(
                id,
                copy_certified_key(&keys.signer)?,
                Arc::clone(&verifier),
                ledger,
                PaymentPolicy::default(),
                clock,
            )))
        }
    };

    // Not ready until the stage's members have joined their group on a connected bus.
    let health = crate::telemetry::health();
    health.reach(
        Component::Bus,
        Reachability::Unreachable("connecting".to_owned()),
    );
    let bus = connect(&bus_url, &settings.bus_options).await?;
    // Workers create no stream: a bus that was not provisioned is refused before any member
    // joins, with the command that provisions it.
    let institutions: Vec<String> = pki.institutions().map(|(id, _)| id.to_owned()).collect();
    check_subjects(bus.as_ref(), descriptor.needs(stage.owner(), &institutions)).await?;
    let shutdown = CancellationToken::new();
    let follower = RevocationFollower::new(Arc::clone(&verifier), revocations);
    tokio::spawn(follower.run(Arc::clone(&bus), shutdown.clone()));
    let stopper = shutdown.clone();
    tokio::spawn(async move {
        wait_for_termination().await;
        tracing::info!("stopping");
        stopper.cancel();
    });
    tracing::info!(stage = stage.name(), owner = stage.owner(), subject = %stage.subject(), bus = %bus_url, ledger = %ledger_url, "worker starting");
    // Returns at shutdown, or once every member has stopped on a fatal failure: a process that
    // can take no more work exits, and its supervisor decides what comes next.
    StageRunner::run(bus, stage, &runner, &health, &shutdown)
        .await
        .map_err(|e| anyhow!("every member of the stage stopped: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn wait_for_termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
