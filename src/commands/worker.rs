//! `dcpipe worker`: one stage of one institution as its own process.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::builder::{PossibleValue, PossibleValuesParser};
use dcpipe_connectors::bus::{Bus, BusErrorKind, BusUrl, connect};
use dcpipe_connectors::ledger::{
    LedgerOptions, LedgerUrl, SettlementConfig, open_ledger, open_settlement,
};
use dcpipe_connectors::session::open_session_store;
use dcpipe_pipeline::clock::SystemClock;
use dcpipe_pipeline::payment::{Institution, PaymentPolicy};
use dcpipe_pipeline::pki::{
    CHAIN_CACHE_ENTRIES_DEFAULT, ChainVerifier, KeyHolder, PkiDirectory, PkiLayout, RevocationSet,
    TRUST_DIR,
};
use dcpipe_pipeline::provision::{CheckError, check_subjects};
use dcpipe_pipeline::registry::{self, Build};
use dcpipe_pipeline::revocation::RevocationFollower;
use dcpipe_pipeline::runtime::{
    Component, ConfigErrorKind, Health, Reachability, RunnerConfig, Stage, StageErrorKind,
    StageRunner, bus_failure_kind,
};
use dcpipe_pipeline::settlement::CentralBank;
use dcpipe_pipeline::vehicle::backend::{
    RegistryFollower, RegistryView, VehicleInstitution, VehiclePolicy,
};
use tokio_util::sync::CancellationToken;

use crate::settings::{BrokerArgs, Settings, parse_duration};

/// The stages a worker can run: every registered stage, with its summary for `--help`.
fn stage_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        registry::stages()
            .into_iter()
            .map(|d| PossibleValue::new(d.name).help(d.summary)),
    )
}

/// First pause between two connection attempts while the bus is unreachable at start.
const CONNECT_RETRY_DELAY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between two connection attempts at start.
const CONNECT_RETRY_DELAY_MAX: Duration = Duration::from_secs(2);

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
    /// Credentials, TLS and stream limits towards the broker.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// The ledgers: sqlite://DIR or postgres://user@host:port/db.
    #[arg(long, env = "DCPIPE_LEDGER")]
    ledger: Option<String>,
    /// The trust anchors: the trust/ directory of `dcpipe pki init` (certificates only), or
    /// the PKI directory holding it.
    #[arg(long, env = "DCPIPE_PKI", value_name = "DIR")]
    pki: PathBuf,
    /// This worker's own signer directory (signer.crt.pem, signer.key.pem): the PKI's
    /// institutions/<oi>/signer, or settlement for the settlement stage. Without it, taken from
    /// --pki when that is a whole PKI directory.
    #[arg(long, env = "DCPIPE_KEY", value_name = "DIR")]
    key: Option<PathBuf>,
    /// Members of the stage's consumer group in this process (batches decided in parallel).
    #[arg(long, env = "DCPIPE_CONCURRENCY", default_value_t = 1)]
    concurrency: usize,
    /// Messages decided together (one ledger transaction), at most what a ledger takes in one
    /// transaction (4096).
    #[arg(long, env = "DCPIPE_BATCH_MAX", default_value_t = RunnerConfig::BATCH_MAX_DEFAULT)]
    batch_max: usize,
    /// A delivery not acked within this time is delivered again (to this or another process
    /// of the stage): how soon the work of a crashed process is taken over.
    #[arg(long, env = "DCPIPE_ACK_WAIT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    ack_wait: Duration,
    /// Settlement window length (settlement stage), at most 24h.
    #[arg(long, env = "DCPIPE_SETTLEMENT_WINDOW", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    settlement_window: Duration,
    /// Grace after a window's end before it closes (settlement stage).
    #[arg(long, env = "DCPIPE_SETTLEMENT_GRACE", default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    settlement_grace: Duration,
    /// Largest difference between an envelope's time and this institution's clock
    /// (`txn.clock_skew` beyond it).
    #[arg(long, env = "DCPIPE_CLOCK_SKEW", default_value = "2m", value_parser = parse_duration, value_name = "DURATION")]
    clock_skew: Duration,
    /// How long a reservation waits for the payee's institution before it is voided
    /// (`txn.timeout`).
    #[arg(long, env = "DCPIPE_RESERVATION_TTL", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    reservation_ttl: Duration,
    /// Largest difference between a PIN proof's time and its envelope's time.
    #[arg(long, env = "DCPIPE_PIN_PROOF_WINDOW", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pin_proof_window: Duration,
    /// The payee's institution refuses a clearing message with less than this left before its
    /// reservation expires.
    #[arg(long, env = "DCPIPE_EXPIRY_MARGIN", default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    expiry_margin: Duration,
    /// Verified certificate chains kept in this process's cache (validity and revocation are
    /// still checked on every use).
    #[arg(long, env = "DCPIPE_CHAIN_CACHE_ENTRIES", default_value_t = CHAIN_CACHE_ENTRIES_DEFAULT, value_name = "N")]
    chain_cache_entries: usize,
}

/// A duration in whole milliseconds, refused beyond what an i64 holds.
fn ms(flag: &str, duration: Duration) -> anyhow::Result<i64> {
    i64::try_from(duration.as_millis()).map_err(|_| anyhow!("--{flag} {duration:?} is too long"))
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
        batch_max: args.batch_max,
        concurrency: args.concurrency,
        ack_wait: args.ack_wait,
        ..RunnerConfig::default()
    };
    let policy = PaymentPolicy {
        clock_skew_ms_max: ms("clock-skew", args.clock_skew)?,
        reservation_ttl_ms: ms("reservation-ttl", args.reservation_ttl)?,
        pin_proof_age_ms_max: ms("pin-proof-window", args.pin_proof_window)?,
        expiry_margin_ms: ms("expiry-margin", args.expiry_margin)?,
    };
    let settlement_window_ms = ms("settlement-window", args.settlement_window)?;
    let settlement_grace_ms = ms("settlement-grace", args.settlement_grace)?;
    runner.validate().map_err(|e| {
        let flag = match e.kind() {
            ConfigErrorKind::BatchMax => format!("--batch-max {}", args.batch_max),
            ConfigErrorKind::Concurrency => format!("--concurrency {}", args.concurrency),
            ConfigErrorKind::AckWait | ConfigErrorKind::FetchWait | ConfigErrorKind::Linger => {
                format!("--ack-wait {:?}", args.ack_wait)
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
    // The trust anchors and this worker's own signing key: no other private key is read.
    let institution = match descriptor.build {
        Build::CentralBank(_) => None,
        Build::Institution(_) | Build::Vehicle(_) => Some(
            args.institution
                .clone()
                .with_context(|| format!("--institution is required for stage {}", args.stage))?,
        ),
    };
    let trust = args.pki.clone();
    let key_dir = args.key.clone();
    let holder_id = institution.clone();
    let keys = tokio::task::spawn_blocking(move || {
        let holder = match &holder_id {
            Some(id) => KeyHolder::Institution(id),
            None => KeyHolder::Settlement,
        };
        let key_dir = match key_dir {
            Some(dir) => dir,
            None if trust.join(TRUST_DIR).is_dir() => PkiLayout::new(&trust).signer_dir(holder),
            None => bail!(
                "--key is required: this worker's signer directory ({})",
                match holder {
                    KeyHolder::Institution(id) => format!("institutions/{id}/signer"),
                    KeyHolder::Settlement => "settlement".to_owned(),
                }
            ),
        };
        PkiDirectory::load_worker(&trust, &key_dir, holder).with_context(|| {
            format!(
                "loading the trust anchors from {} and the signing key from {}",
                trust.display(),
                key_dir.display()
            )
        })
    })
    .await??;
    let revocations = Arc::new(RevocationSet::new());
    let verifier = Arc::new(ChainVerifier::with_cache_capacity(
        Arc::clone(&keys.trust_store),
        Arc::clone(&revocations),
        args.chain_cache_entries,
    ));
    let clock = Arc::new(SystemClock);
    let options = LedgerOptions::default();
    // The service entities a vehicle stage matches against, followed from the bus.
    let entity_registry = Arc::new(RegistryView::new());

    let stage: Arc<dyn Stage> = match descriptor.build {
        Build::CentralBank(build) => {
            let store = open_settlement(
                &ledger_url,
                SettlementConfig {
                    window_ms: settlement_window_ms,
                },
                &options,
            )
            .await?;
            build(Arc::new(CentralBank {
                signer: keys.signer,
                verifier: Arc::clone(&verifier),
                store,
                clock,
                grace_ms: settlement_grace_ms,
            }))
        }
        Build::Institution(_) | Build::Vehicle(_) => {
            let id = institution.unwrap_or_default();
            let ledger = open_ledger(&ledger_url, &id, &options).await?;
            if ledger.wallet_count().await? == 0 {
                // A worker pointed at the wrong database is noticed: at start and in /readyz.
                let warning = format!(
                    "the ledger holds no wallets: every payment will be refused; open them with `dcpipe wallets open --institution {id} --ledger URL --file FILE`"
                );
                tracing::warn!(institution = %id, ledger = %ledger_url, "{warning}");
                crate::telemetry::health().warn(Component::Ledger(id.clone()), warning);
            }
            let institution = Arc::new(Institution::new(
                id.clone(),
                keys.signer,
                Arc::clone(&verifier),
                ledger,
                policy.clone(),
                clock,
            ));
            match descriptor.build {
                Build::Vehicle(build) => {
                    let store = open_session_store(&ledger_url, &id, &options).await?;
                    build(Arc::new(VehicleInstitution {
                        institution,
                        store,
                        registry: Arc::clone(&entity_registry),
                        policy: VehiclePolicy::default(),
                    }))
                }
                Build::Institution(build) => build(institution),
                Build::CentralBank(_) => unreachable!("matched above"),
            }
        }
    };

    // Not ready until the stage's members have joined their group on a connected bus.
    let health = crate::telemetry::health();
    health.reach(
        Component::Bus,
        Reachability::Unreachable("connecting".to_owned()),
    );
    // Workers create no stream: a bus that was not provisioned is refused before any member
    // joins, with the command that provisions it.
    let needs = descriptor.needs(stage.owner(), &keys.institutions);
    let Some(bus) = connect_until_reachable(&bus_url, settings, &health, &needs).await? else {
        tracing::info!("stopped before the bus was reachable");
        return Ok(ExitCode::SUCCESS);
    };
    let shutdown = CancellationToken::new();
    let follower = RevocationFollower::new(Arc::clone(&verifier), revocations);
    tokio::spawn(follower.run(Arc::clone(&bus), shutdown.clone()));
    if matches!(descriptor.build, Build::Vehicle(_)) {
        let follower = RegistryFollower::new(Arc::clone(&verifier), entity_registry);
        tokio::spawn(follower.run(Arc::clone(&bus), shutdown.clone()));
    }
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

/// Connects to the bus and checks that it holds the subjects in `needs`, again and again while
/// the bus is unreachable or does not answer (a broker down, a cluster electing a stream
/// leader): a worker started (or restarted by its supervisor) then waits instead of exiting,
/// and says why in `/readyz`. Any other failure (options, credentials, TLS, subjects missing)
/// ends the worker. `None` when SIGINT or SIGTERM came first.
async fn connect_until_reachable(
    bus_url: &BusUrl,
    settings: &Settings,
    health: &Health,
    needs: &BTreeSet<String>,
) -> anyhow::Result<Option<Arc<dyn Bus>>> {
    let mut delay = CONNECT_RETRY_DELAY_MIN;
    let terminated = wait_for_termination();
    tokio::pin!(terminated);
    let mut connected: Option<Arc<dyn Bus>> = None;
    loop {
        let why = match &connected {
            None => match connect(bus_url, &settings.bus_options).await {
                Ok(bus) => {
                    connected = Some(bus);
                    continue;
                }
                Err(e) if e.kind() == BusErrorKind::Connect => e.to_string(),
                Err(e) => return Err(e.into()),
            },
            Some(bus) => match check_subjects(bus.as_ref(), needs.iter().cloned()).await {
                Ok(()) => return Ok(connected),
                Err(CheckError::Bus(e))
                    if bus_failure_kind(e.kind()) == StageErrorKind::Transient =>
                {
                    format!("checking the subjects: {e}")
                }
                Err(e) => return Err(e.into()),
            },
        };
        // Reported before it is logged: whoever reads the log finds /readyz saying it.
        health.reach(Component::Bus, Reachability::Unreachable(why.clone()));
        tracing::warn!(bus = %bus_url, error = %why, retry_in = ?delay, "the bus is unreachable; connecting again");
        tokio::select! {
            () = &mut terminated => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(CONNECT_RETRY_DELAY_MAX);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Probe {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn the_defaults_are_the_named_constants() {
        let args = Probe::try_parse_from(["worker", "payer", "--pki", "p"])
            .expect("parses")
            .worker;
        let ms = |d: Duration| i64::try_from(d.as_millis()).expect("fits");
        assert_eq!(
            ms(args.settlement_window),
            SettlementConfig::default().window_ms
        );
        assert_eq!(
            ms(args.settlement_grace),
            dcpipe_pipeline::settlement::GRACE_MS_DEFAULT
        );
        assert_eq!(
            args.ack_wait,
            dcpipe_connectors::bus::ConsumerConfig::ACK_WAIT_DEFAULT
        );
        let policy = PaymentPolicy::default();
        assert_eq!(ms(args.clock_skew), policy.clock_skew_ms_max);
        assert_eq!(ms(args.reservation_ttl), policy.reservation_ttl_ms);
        assert_eq!(ms(args.pin_proof_window), policy.pin_proof_age_ms_max);
        assert_eq!(ms(args.expiry_margin), policy.expiry_margin_ms);
        assert_eq!(args.batch_max, RunnerConfig::BATCH_MAX_DEFAULT);
        assert_eq!(args.chain_cache_entries, CHAIN_CACHE_ENTRIES_DEFAULT);
    }
}
