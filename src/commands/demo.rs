//! `dcpipe demo`: real signed payments flowing between banks, in one command.
//!
//! Provisions a PKI, four institutions with their ledgers and a thousand wallets, runs every
//! stage and synthetic terminals for a while, injects the bad cases a bank must withstand, and
//! then holds the run to the invariants: every submission answered exactly once, money
//! conserved, settlement equal to what cleared. The exit code says whether they held.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use dcpipe_connectors::bus::{
    Bus, ConsumerConfig, NamespacedBus, Outgoing, ReplayFrom, ReplayRequest, connect,
    dead_letter_subject,
};
use dcpipe_connectors::ledger::{LedgerUrl, SettlementConfig};
use dcpipe_loadtest::payments::{PaymentGenerator, PaymentMix};
use dcpipe_loadtest::vehicles::{FleetConfig, fleet_policy, run_fleet};
use dcpipe_loadtest::wallet_flow::{WalletFlowConfig, run_wallet_flow};
use dcpipe_pipeline::clock::{SystemClock, system_now_ms};
use dcpipe_pipeline::invariants::{OutcomeCollector, Submission};
use dcpipe_pipeline::network::{Network, NetworkConfig};
use dcpipe_pipeline::payment::payer;
use dcpipe_pipeline::pki::{
    AlgorithmChoice, CertErrorKind, INSTITUTIONS_MAX, Role, SpecialCertificate, SubjectSpec,
    TrustLayout, WALLETS_MAX,
};
use dcpipe_pipeline::reason::Reason;
use dcpipe_pipeline::revocation::revocation_update;
use dcpipe_pipeline::runtime::RunnerConfig;
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::terminal::{PaymentRequest, PinEntry, Terminal, Touch};
use dcpipe_schemas::{
    Channel, DeadLetter, OutcomeStatus, PaymentId, SettlementInstruction, TransactionEnvelope,
};
use tokio_util::sync::CancellationToken;

use crate::settings::{BrokerArgs, Settings, parse_duration};

/// How long the demo waits for the pipeline to answer and settle after the traffic stops.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// How long an interrupted demo waits for the answers to what it sent.
const INTERRUPTED_DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Options of `dcpipe demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// The bus: embedded (default), nats://host:port or kafka://host:port.
    #[arg(long, env = "DCPIPE_BUS")]
    bus: Option<String>,
    /// Credentials, TLS and stream limits towards the broker.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// The ledgers: sqlite://DIR or postgres://user@host:port/db (default: SQLite files in a
    /// new temporary directory).
    #[arg(long, env = "DCPIPE_LEDGER")]
    ledger: Option<String>,
    /// Operating institutions.
    #[arg(long, default_value_t = 4)]
    institutions: usize,
    /// Wallets, all institutions together.
    #[arg(long, default_value_t = 1000)]
    wallets: usize,
    /// How long synthetic terminals pay, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Payments per second the terminals submit.
    #[arg(long, default_value_t = 300)]
    rate: u32,
    /// Certificate algorithms: p256, sm2 or mixed.
    #[arg(long, default_value = "p256", value_parser = parse_algorithm)]
    algorithm: AlgorithmChoice,
    /// Seed of the synthetic traffic (same seed, same payments).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Settlement window length, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    settlement_window: Duration,
    /// Partitions of each Kafka topic.
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Flows to run: payments, and beside them synthetic vehicles paying where they are and
    /// offline wallets paying each other and reconnecting.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "payments,vehicles,wallets"
    )]
    flows: Vec<DemoFlow>,
    /// Wallets taken offline (with the wallets flow), spread over the institutions.
    #[arg(long, default_value_t = 16)]
    offline_wallets: usize,
    /// Synthetic vehicles (with the vehicles flow), each on one recorded trip through a city.
    #[arg(long, default_value_t = 12)]
    vehicles: usize,
    /// On a broker, keep the run's streams or topics (and their consumers) at the end, for an
    /// audit of the run; by default they are removed.
    #[arg(long)]
    keep: bool,
    /// Write the run's trust anchors (certificates of the root, the settlement signer and the
    /// institution CAs; no private key) into DIR, a new directory: with `--keep` and
    /// `--ledger`, what `dcpipe audit --pki DIR` needs to audit the run after it ended.
    #[arg(long, value_name = "DIR")]
    trust_out: Option<std::path::PathBuf>,
    /// At the end, audit the run as `dcpipe audit` would (every message re-verified, payments,
    /// settlement and ledgers reconciled) and hold the run to it: one more check.
    #[arg(long)]
    audit: bool,
}

/// A flow the demo runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DemoFlow {
    /// Payments between terminals, with the injected bad cases.
    Payments,
    /// Vehicles charged by toll gantries, parking lots, charging and fuel stations.
    Vehicles,
    /// Offline wallets: purses, offline payments, key sets on reconnection, a double spender,
    /// forged and replayed key sets, a remote command.
    Wallets,
}

impl DemoArgs {
    /// Refuses what the demo cannot run with, before anything is created or provisioned.
    fn validate(&self) -> anyhow::Result<()> {
        // The injected cases pay across institutions and between wallets of one.
        let institutions_min = 2;
        if !(institutions_min..=INSTITUTIONS_MAX).contains(&self.institutions) {
            anyhow::bail!(
                "--institutions {} refused: the demo needs {institutions_min} to {INSTITUTIONS_MAX}",
                self.institutions
            );
        }
        let wallets_min = 2 * self.institutions;
        if !(wallets_min..=WALLETS_MAX).contains(&self.wallets) {
            anyhow::bail!(
                "--wallets {} refused: {} institutions need {wallets_min} to {WALLETS_MAX} \
                 (two per institution at least)",
                self.wallets,
                self.institutions
            );
        }
        if self.rate == 0 {
            anyhow::bail!("--rate 0 refused: at least one payment per second");
        }
        if self.duration.is_zero() {
            anyhow::bail!("--duration 0 refused: the terminals must pay for some time");
        }
        if self.settlement_window.is_zero() {
            anyhow::bail!("--settlement-window 0 refused");
        }
        if self.partitions == 0 {
            anyhow::bail!("--partitions 0 refused: at least one partition per topic");
        }
        if !self.flows.contains(&DemoFlow::Payments) {
            anyhow::bail!(
                "--flows without payments refused: the demo's checks are held to the payments"
            );
        }
        if self.flows.contains(&DemoFlow::Vehicles) && self.vehicles == 0 {
            anyhow::bail!("--vehicles 0 refused with the vehicles flow");
        }
        if self.flows.contains(&DemoFlow::Wallets)
            && !(4..=dcpipe_loadtest::wallet_flow::FLOW_WALLETS_MAX).contains(&self.offline_wallets)
        {
            anyhow::bail!(
                "--offline-wallets {} refused: 4 to {} with the wallets flow",
                self.offline_wallets,
                dcpipe_loadtest::wallet_flow::FLOW_WALLETS_MAX
            );
        }
        Ok(())
    }
}

fn parse_algorithm(text: &str) -> Result<AlgorithmChoice, String> {
    text.parse().map_err(|e| format!("{e}"))
}

/// An injected bad case and the reason code it must be rejected with.
struct Injected {
    what: &'static str,
    submission: Submission,
    /// `None`: must get the same answer as the submission it repeats.
    expected: Option<Reason>,
    repeats: Option<Submission>,
}

pub(crate) async fn run(args: DemoArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    args.validate()?;
    // Ctrl-C stops the traffic; what was sent is still answered (briefly) and reported.
    let interrupted = super::interrupt::on_interrupt();
    let started = Instant::now();
    let bus_url = settings
        .bus_url(args.bus.as_deref())
        .map_err(anyhow::Error::msg)?;
    let mut temporary_ledgers = None;
    let ledger_url: LedgerUrl = match args.ledger.as_deref().or(settings.ledger.as_deref()) {
        Some(url) => url.parse()?,
        None => {
            let dir = tempfile::Builder::new().prefix("dcpipe-demo-").tempdir()?;
            let url = LedgerUrl::SqliteDir(dir.path().to_path_buf());
            temporary_ledgers = Some(dir);
            url
        }
    };
    println!("dcpipe demo: bus {bus_url}, ledgers {ledger_url}");

    let mut config = NetworkConfig::in_memory(args.institutions, args.wallets);
    config.algorithm = args.algorithm;
    config.ledger = ledger_url;
    config.settlement = SettlementConfig {
        window_ms: i64::try_from(args.settlement_window.as_millis()).unwrap_or(i64::MAX),
    };
    config.settlement_grace_ms = 500;
    let mut network = Network::provision(&config, Arc::new(SystemClock))
        .await
        .context("provisioning the network")?;
    if let Some(dir) = &args.trust_out {
        network
            .pki
            .write_trust_anchors(&TrustLayout::new(dir))
            .with_context(|| format!("writing the trust anchors into {}", dir.display()))?;
        println!("  trust anchors written to {}", dir.display());
    }
    let with_vehicles = args.flows.contains(&DemoFlow::Vehicles);
    if with_vehicles {
        network
            .enable_vehicles(&config.ledger, &config.ledger_options, fleet_policy())
            .await
            .context("opening the session stores")?;
    }
    println!(
        "  {} institutions, {} wallets, {} certificates; ledgers opened with {} in {:.1} s",
        network.institutions.len(),
        network.wallets.len(),
        args.algorithm.as_str(),
        cny(network.opening_total_fen()),
        started.elapsed().as_secs_f64()
    );

    // On a broker, the run lives in a namespace of its own: it never joins a deployment's
    // consumer group nor touches its subjects, and it removes what it created at its end.
    let run_id = format!("{:08x}", rand_u32());
    let broker = connect(&bus_url, &settings.bus_options).await?;
    let namespace = if bus_url == dcpipe_connectors::bus::BusUrl::Embedded {
        None
    } else {
        Some(Arc::new(NamespacedBus::new(
            Arc::clone(&broker),
            format!("demo-{run_id}"),
        )?))
    };
    let bus: Arc<dyn Bus> = match &namespace {
        Some(namespace) => {
            println!("  namespace {} on the broker", namespace.prefix());
            Arc::clone(namespace) as Arc<dyn Bus>
        }
        None => broker,
    };
    // Whatever fails from here on, the run's namespace is removed all the same (unless kept),
    // and the stages are stopped first.
    let shutdown = CancellationToken::new();
    let outcome: anyhow::Result<ExitCode> = async {
        let partitions = if matches!(bus_url, dcpipe_connectors::bus::BusUrl::Kafka(_)) {
            args.partitions
        } else {
            1
        };
        network.ensure_subjects(bus.as_ref(), partitions).await?;
        let runner = RunnerConfig {
            fetch_wait: Duration::from_millis(20),
            ack_wait: Duration::from_secs(10),
            retry_delay: Duration::from_millis(200),
            ..RunnerConfig::default()
        };
        let mut stage_handles = network.spawn(&bus, &runner, &shutdown)?;
        let (collector, collector_handles) = OutcomeCollector::spawn(
            Arc::clone(&bus),
            network.institutions.keys().cloned(),
            &format!("demo-{run_id}-observer"),
            shutdown.clone(),
        )
        .await?;
        let run_started_ms = system_now_ms();

        // Traffic, with the bad cases injected a third of the way in.
        println!(
            "  paying for {:.0} s at {} payments/s …",
            args.duration.as_secs_f64(),
            args.rate
        );
        let traffic = async {
            let mut generator = PaymentGenerator::new(&network, PaymentMix::default(), args.seed);
            let mut submitted: Vec<Submission> = Vec::new();
            let tick = Duration::from_millis(50);
            let per_tick = (f64::from(args.rate) * tick.as_secs_f64()).max(1.0);
            let mut owed = 0.0;
            let mut interval = tokio::time::interval(tick);
            let traffic_started = Instant::now();
            let mut last_progress = Instant::now();
            while traffic_started.elapsed() < args.duration {
                tokio::select! {
                    () = interrupted.cancelled() => break,
                    _ = interval.tick() => {}
                }
                owed += per_tick;
                let mut batch = Vec::new();
                while owed >= 1.0 {
                    owed -= 1.0;
                    let generated = generator.next(system_now_ms())?;
                    submitted.push(generated.submission);
                    batch.push(generated.outgoing());
                }
                bus.publish_many(batch).await?;
                if last_progress.elapsed() >= Duration::from_secs(1) {
                    last_progress = Instant::now();
                    let answered = collector.with_book(|b| b.answers_all_count(&submitted));
                    eprintln!(
                        "  t={:>4.1}s submitted {:>6} answered {:>6}",
                        traffic_started.elapsed().as_secs_f64(),
                        submitted.len(),
                        answered
                    );
                }
            }
            Ok::<_, anyhow::Error>(submitted)
        };
        let injection = async {
            tokio::select! {
                () = interrupted.cancelled() => return Ok((Vec::new(), 0)),
                () = tokio::time::sleep(args.duration / 3) => {}
            }
            inject_bad_cases(&network, &bus, &collector).await
        };
        let (traffic, injection) = tokio::join!(traffic, injection);
        let mut submitted = traffic?;
        let (injected, dead_letters_expected) = injection?;
        submitted.extend(injected.iter().map(|c| c.submission));

        // Vehicles: recorded trips through a city, replayed at once, each charge checked.
        let fleet = if with_vehicles && !interrupted.is_cancelled() {
            println!("  driving {} vehicles through a city …", args.vehicles);
            Some(
                run_fleet(
                    &network,
                    &bus,
                    &FleetConfig {
                        seed: args.seed,
                        vehicles: args.vehicles,
                    },
                    system_now_ms(),
                    DRAIN_DEADLINE,
                )
                .await
                .context("driving the vehicles")?,
            )
        } else {
            None
        };

        // Offline wallets: purses, offline payments, reconnection, the injected cases.
        let wallet_flow = if args.flows.contains(&DemoFlow::Wallets) && !interrupted.is_cancelled()
        {
            println!(
                "  taking {} wallets offline and reconnecting them …",
                args.offline_wallets
            );
            Some(
                run_wallet_flow(
                    &network,
                    &bus,
                    &collector,
                    &WalletFlowConfig {
                        seed: args.seed,
                        wallets: args.offline_wallets,
                    },
                    DRAIN_DEADLINE,
                )
                .await
                .context("running the offline wallets")?,
            )
        } else {
            None
        };

        // Drain: every submission answered, nothing in flight, every window settled.
        let was_interrupted = interrupted.is_cancelled();
        let drain = if was_interrupted {
            INTERRUPTED_DRAIN_DEADLINE
        } else {
            DRAIN_DEADLINE
        };
        let answered_all = collector
            .wait_until(drain, |book| book.answers_all(&submitted))
            .await;
        let money = wait_until_settled(&network, drain).await?;
        let expected_net = collector.with_book(|book| {
            let mut net = book.expected_net_positions(&submitted);
            for (institution, fen) in fleet
                .iter()
                .flat_map(|f| &f.interbank_net)
                .chain(wallet_flow.iter().flat_map(|w| &w.interbank_net))
            {
                *net.entry(institution.clone()).or_insert(0) += fen;
            }
            net.retain(|_, v| *v != 0);
            net
        });
        let settled = collect_settlement(
            &bus,
            &run_id,
            run_started_ms,
            &expected_net,
            drain,
            &shutdown,
        )
        .await?;
        let dead_letters = count_dead_letters(&bus, run_started_ms, dead_letters_expected).await?;
        shutdown.cancel();
        for handle in stage_handles.drain(..) {
            let _ = handle.await;
        }
        for handle in collector_handles {
            let _ = handle.await;
        }
        // The record as it stands, audited before the namespace is removed.
        let audit_report = if args.audit && !was_interrupted {
            println!("  auditing the run …");
            Some(audit_run(&network, &bus).await?)
        } else {
            None
        };
        if let Some(namespace) = &namespace {
            if args.keep {
                println!(
                    "  kept the run's streams or topics: {}-*",
                    namespace.prefix()
                );
                if let Some(trust) = &args.trust_out {
                    // Ledgers in a temporary directory are gone when the demo ends.
                    let ledger = if temporary_ledgers.is_none() {
                        format!(" --ledger {}", config.ledger)
                    } else {
                        String::new()
                    };
                    println!(
                        "  audit it with: dcpipe audit --bus {bus_url} --namespace {} --pki {}\
                         {ledger} --report audit.json",
                        namespace.prefix(),
                        trust.display()
                    );
                }
            } else {
                let removed = namespace
                    .remove_created()
                    .await
                    .context("removing the run's streams or topics")?;
                println!("  removed the run's {removed} streams or topics");
            }
        }

        // Report.
        if was_interrupted {
            println!();
            println!(
                "INTERRUPTED after {:.1} s: the summary covers what was sent until then",
                started.elapsed().as_secs_f64()
            );
        }
        let unique: std::collections::HashSet<Submission> = submitted.iter().copied().collect();
        let (counts, violations) = collector.with_book(|book| {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            for submission in &unique {
                if let Some(answer) = book.answer(submission) {
                    let key = match answer.status {
                        OutcomeStatus::Completed => "COMPLETED".to_owned(),
                        OutcomeStatus::Rejected => answer.reason_code.clone().unwrap_or_default(),
                    };
                    *counts.entry(key).or_insert(0) += 1;
                }
            }
            let submitted_unique: Vec<Submission> = unique.iter().copied().collect();
            (counts, book.violations(&submitted_unique))
        });
        println!();
        println!(
            "submitted            {:>7}  ({} distinct)",
            submitted.len(),
            unique.len()
        );
        println!(
            "completed            {:>7}",
            counts.get("COMPLETED").copied().unwrap_or(0)
        );
        let rejected: u64 = counts
            .iter()
            .filter(|(k, _)| k.as_str() != "COMPLETED")
            .map(|(_, v)| v)
            .sum();
        println!("rejected             {rejected:>7}");
        for (code, n) in counts.iter().filter(|(k, _)| k.as_str() != "COMPLETED") {
            println!("  {code:<26} {n:>5}");
        }
        println!("dead letters         {:>7}", dead_letters.len());
        for (code, n) in count_by(&dead_letters) {
            println!("  {code:<26} {n:>5}");
        }
        println!(
            "settlement           {:>7} windows of {:.0} s, {} interbank clearings",
            settled.windows,
            args.settlement_window.as_secs_f64(),
            settled.clearings
        );
        for (institution, net) in &settled.net {
            println!("  {institution:<10} net {:>16}", cny_signed(*net));
        }

        if let Some(fleet) = &fleet {
            println!(
                "vehicles             {:>7}  ({} reports, {} entities)",
                fleet.vehicles, fleet.reports, fleet.entities
            );
            println!(
                "  charges            {:>7}  of {} expected, {} completed, {}",
                fleet.charged,
                fleet.expected,
                fleet.completed,
                cny(fleet.charged_fen)
            );
            println!("  decoys passed      {:>7}", fleet.decoys);
            if let Some(ms) = fleet.telemetry_applied_ms {
                println!(
                    "  telemetry applied  {:>7} ms  ({:.0} reports/s: verified, matched, committed)",
                    ms,
                    fleet.reports as f64 * 1_000.0 / ms.max(1) as f64
                );
            }
            for failure in fleet.failures().iter().take(10) {
                println!("  {failure}");
            }
        }
        if let Some(flow) = &wallet_flow {
            println!(
                "offline wallets      {:>7}  ({} key sets answered)",
                flow.wallets, flow.key_sets_answered
            );
            println!(
                "  offline payments   {:>7}  of {} made completed, {} refused (payee locked), loss accounts {}",
                flow.payments_completed,
                flow.payments_made,
                flow.payments_refused_payee_locked,
                cny_signed(flow.loss_fen)
            );
            for failure in flow.failures.iter().take(10) {
                println!("  {failure}");
            }
        }
        let mut checks: Vec<(bool, String)> = Vec::new();
        if let Some(flow) = &wallet_flow {
            checks.push((
                flow.payments_completed + flow.payments_refused_payee_locked == flow.payments_made
                    && flow.failures.is_empty(),
                format!(
                    "every offline payment cleared once ({} completed, {} refused to the locked \
                     double spender, of {})",
                    flow.payments_completed,
                    flow.payments_refused_payee_locked,
                    flow.payments_made
                ),
            ));
            checks.push((
                flow.purses_reconciled == flow.wallets,
                format!(
                    "purses reconcile: the platform's and the wallets' ({} of {})",
                    flow.purses_reconciled, flow.wallets
                ),
            ));
            checks.push((
                flow.double_spender_caught,
                format!(
                    "the double spender caught, locked and blacklisted; the excess on the loss \
                     account ({})",
                    cny_signed(flow.loss_fen)
                ),
            ));
            checks.push((
                flow.forged_refused && flow.replay_refused,
                "forged and replayed key sets refused (wallet.signature_invalid, \
                 wallet.keyset_replayed)"
                    .to_owned(),
            ));
            checks.push((
                flow.command_applied_once,
                "a command issued while its wallet was offline applied once after reconnection"
                    .to_owned(),
            ));
        }
        if let Some(fleet) = &fleet {
            checks.push((
                fleet.missing.is_empty()
                    && fleet.unexpected.is_empty()
                    && fleet.not_completed.is_empty(),
                format!(
                    "every expected vehicle charge happened once with its amount ({} of {}, {} \
                     without a cause, {} not completed)",
                    fleet.expected - fleet.missing.len(),
                    fleet.expected,
                    fleet.unexpected.len(),
                    fleet.not_completed.len()
                ),
            ));
            checks.push((
                fleet.decoys_charged.is_empty(),
                format!(
                    "no decoy charged ({} entities driven past, {} charged)",
                    fleet.decoys,
                    fleet.decoys_charged.len()
                ),
            ));
            checks.push((
                fleet.above_preauth.is_empty(),
                "no charge above its pre-authorization".to_owned(),
            ));
        }
        checks.push((
            answered_all && violations.is_empty(),
            format!(
                "every submission got exactly one outcome ({} of {} answered, {} violations)",
                unique.len()
                    - violations
                        .iter()
                        .filter(|v| matches!(v, dcpipe_pipeline::invariants::Violation::Unanswered(_)))
                        .count(),
                unique.len(),
                violations.len()
            ),
        ));
        checks.push((
            money.is_settled_and_conserved(),
            format!(
                "money conserved: {} opening, {} now ({} in offline purses), {} loss \
                 accounts, {} held, {} pending",
                cny(money.opening_fen),
                cny(money.balance_fen),
                cny(money.purses_fen),
                cny_signed(money.loss_fen),
                cny(money.held_fen),
                cny(money.pending_credit_fen)
            ),
        ));
        checks.push((
            settled.net == expected_net && settled.windows_balanced,
            "settlement nets equal the completed interbank payments; every window sums to zero"
                .to_owned(),
        ));
        let injected_ok = collector.with_book(|book| {
            injected
                .iter()
                .filter(|case| {
                    let answer = book.answer(&case.submission);
                    let good = match (case.expected, case.repeats) {
                        (Some(code), _) => {
                            answer.is_some_and(|a| a.reason_code.as_deref() == Some(code.as_str()))
                        }
                        (None, Some(first)) => {
                            answer.is_some()
                                && answer.map(|a| (a.status, a.reason_code.clone()))
                                    == book
                                        .answer(&first)
                                        .map(|a| (a.status, a.reason_code.clone()))
                        }
                        (None, None) => false,
                    };
                    if !good {
                        println!(
                            "  injected {:<28} got {:?}",
                            case.what,
                            answer.map(|a| (a.status, a.reason_code.clone()))
                        );
                    }
                    good
                })
                .count()
        });
        checks.push((
            injected_ok == injected.len() && (!injected.is_empty() || was_interrupted),
            format!(
                "injected bad cases answered as they must be ({injected_ok} of {})",
                injected.len()
            ),
        ));
        checks.push((
            dead_letters.len() == dead_letters_expected,
            format!(
                "undecodable input dead-lettered with its bytes ({} of {dead_letters_expected})",
                dead_letters.len()
            ),
        ));
        if let Some(report) = &audit_report {
            println!();
            print!("{}", report.table());
            checks.push((
                report.is_clean(),
                format!(
                    "the audit of the run reconciles ({} records re-verified, {} payments \
                     judged, {} discrepancies)",
                    report.counts.records,
                    report.counts.payments_judged,
                    report.discrepancies_by_code.values().sum::<u64>()
                ),
            ));
        }
        println!();
        println!("checks");
        let mut all_ok = true;
        for (ok, what) in &checks {
            all_ok &= ok;
            println!("  [{}] {what}", if *ok { "ok" } else { "FAILED" });
        }
        for violation in violations.iter().take(10) {
            println!("  violation: {violation:?}");
        }
        println!("done in {:.1} s", started.elapsed().as_secs_f64());
        Ok(if was_interrupted {
            println!("interrupted: partial run");
            ExitCode::from(super::interrupt::EXIT_INTERRUPTED)
        } else if all_ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
    .await;
    if let Err(e) = &outcome {
        shutdown.cancel();
        if let Some(namespace) = namespace.as_ref().filter(|_| !args.keep) {
            match namespace.remove_created().await {
                Ok(removed) => {
                    eprintln!("  failed ({e:#}): removed the run's {removed} streams or topics")
                }
                Err(removal) => eprintln!(
                    "  failed ({e:#}), and removing the run's streams or topics failed too: \
                     {removal}"
                ),
            }
        }
    }
    outcome
}

/// Audits what the run left on `bus` (from its beginning to now), with the network's ledgers.
async fn audit_run(
    network: &Network,
    bus: &Arc<dyn Bus>,
) -> anyhow::Result<dcpipe_pipeline::audit::AuditReport> {
    let ledgers = dcpipe_pipeline::audit::LedgerReconciler::new(
        network
            .institutions
            .iter()
            .map(|(id, institution)| (id.clone(), Arc::clone(&institution.ledger)))
            .collect(),
    );
    let mut options = dcpipe_pipeline::audit::AuditOptions::new(
        network.institutions.keys().cloned().collect(),
        system_now_ms() + 1,
    );
    // The stages have stopped: nothing at the end of the run is still in flight.
    options.edge_ms = 0;
    super::audit::audit_bus(
        bus.as_ref(),
        Arc::clone(network.pki.trust_store()),
        Some(&ledgers),
        &options,
    )
    .await
}

fn rand_u32() -> u32 {
    let nonce = dcpipe_pipeline::terminal::fresh_nonce()
        .map(|n| *n.as_bytes())
        .unwrap_or([7; 32]);
    u32::from_be_bytes([nonce[0], nonce[1], nonce[2], nonce[3]])
}

fn cny(fen: i64) -> String {
    format!("{}.{:02} CNY", fen / 100, (fen % 100).abs())
}

fn cny_signed(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "+" };
    format!("{sign}{}.{:02} CNY", (fen / 100).abs(), (fen % 100).abs())
}

fn count_by(letters: &[DeadLetter]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for letter in letters {
        *counts.entry(letter.reason_code.clone()).or_insert(0) += 1;
    }
    counts
}

/// Publishes the bad cases a bank must withstand; returns them with their expected answers,
/// and how many dead letters they should cause.
async fn inject_bad_cases(
    network: &Network,
    bus: &Arc<dyn Bus>,
    collector: &OutcomeCollector,
) -> anyhow::Result<(Vec<Injected>, usize)> {
    let now_ms = system_now_ms();
    let wallets = &network.wallets;
    // Two wallets at different institutions that the generator uses rarely (not hot).
    let payer = &wallets[wallets.len() - 1].party;
    let payee = wallets
        .iter()
        .rev()
        .find(|w| w.party.institution_id != payer.institution_id)
        .map(|w| &w.party)
        .context("the demo needs two institutions")?;
    let payer_terminal = network
        .terminal(&payer.wallet_id)
        .context("payer terminal")?;
    let payee_terminal = network
        .terminal(&payee.wallet_id)
        .context("payee terminal")?;
    let request = |amount_fen: i64, created_at_ms: i64, pin: PinEntry| PaymentRequest {
        payment_id: PaymentId::time_ordered(),
        amount_fen,
        channel: Channel::Nfc,
        created_at_ms,
        pin,
    };
    let touch = Touch::connect(payer_terminal, payee_terminal, &network.verifier, now_ms)?;
    let mut cases = Vec::new();
    let mut envelopes: Vec<TransactionEnvelope> = Vec::new();
    let push = |cases: &mut Vec<Injected>,
                envelopes: &mut Vec<TransactionEnvelope>,
                what,
                envelope: TransactionEnvelope,
                expected,
                repeats| {
        cases.push(Injected {
            what,
            submission: Submission::of_envelope(&envelope),
            expected,
            repeats,
        });
        envelopes.push(envelope);
    };

    let mut forged = touch.negotiate(&request(12_300, now_ms, PinEntry::WhenRequired))?;
    forged.payer_signature[5] ^= 0x01;
    push(
        &mut cases,
        &mut envelopes,
        "forged signature",
        forged,
        Some(Reason::PayerSignature),
        None,
    );

    let large = touch.negotiate(&request(150_000, now_ms, PinEntry::Never))?;
    push(
        &mut cases,
        &mut envelopes,
        "large amount without PIN",
        large,
        Some(Reason::PinRequired),
        None,
    );

    let skewed = touch.negotiate(&request(
        4_200,
        now_ms - 10 * 60 * 1000,
        PinEntry::WhenRequired,
    ))?;
    push(
        &mut cases,
        &mut envelopes,
        "clock ten minutes behind",
        skewed,
        Some(Reason::ClockSkew),
        None,
    );

    // A certificate that expired yesterday.
    let keys = network.pki.wallet(&payer.wallet_id).context("payer keys")?;
    let expired = network.pki.issue_special(
        SpecialCertificate::Expired,
        &SubjectSpec {
            role: Role::Terminal,
            id: &payer.wallet_id,
            institution: &payer.institution_id,
            algorithm: keys.terminal.certificate().algorithm(),
        },
        now_ms,
        &network.revocations,
    )?;
    let expired_terminal = Terminal {
        user: &expired,
        ..payer_terminal
    };
    let expired_envelope = Touch::unchecked(expired_terminal, payee_terminal)
        .negotiate(&request(5_500, now_ms, PinEntry::WhenRequired))?;
    push(
        &mut cases,
        &mut envelopes,
        "expired certificate",
        expired_envelope,
        Some(Reason::Certificate(CertErrorKind::Expired)),
        None,
    );

    // An honest payment, then the same envelope again (a replay) and its id with other
    // content (a conflicting resubmission).
    let honest = touch.negotiate(&request(3_300, now_ms, PinEntry::WhenRequired))?;
    let honest_submission = Submission::of_envelope(&honest);
    publish(bus, std::slice::from_ref(&honest)).await?;
    await_answers(collector, &[honest_submission]).await?;
    push(
        &mut cases,
        &mut envelopes,
        "replayed payment",
        honest.clone(),
        None,
        Some(honest_submission),
    );
    let conflicting = touch.negotiate(&PaymentRequest {
        payment_id: honest.payment_id,
        amount_fen: 33_000,
        channel: Channel::Nfc,
        created_at_ms: system_now_ms(),
        pin: PinEntry::WhenRequired,
    })?;
    push(
        &mut cases,
        &mut envelopes,
        "conflicting resubmission",
        conflicting,
        Some(Reason::Conflict),
        None,
    );
    // These are answered before the payer's certificate is revoked below.
    publish(bus, &envelopes).await?;
    let so_far: Vec<Submission> = cases.iter().map(|c| c.submission).collect();
    await_answers(collector, &so_far).await?;

    // Revoke the payer's terminal certificate through the bus, as its institution would.
    let institution = network
        .pki
        .institution(&payer.institution_id)
        .context("payer institution")?;
    // In force from when it is issued, not from when the injection began: what the terminal
    // signed before stays good (an audit judges each message at its own time).
    let update = revocation_update(
        &institution.ca,
        &[keys.terminal.certificate()],
        "keyCompromise",
        1,
        system_now_ms(),
    )?;
    bus.publish(Outgoing::new(
        subjects::PKI_REVOCATION,
        dcpipe_schemas::encode(&update)?,
    ))
    .await?;
    let ca_fingerprint = *institution.ca.certificate().fingerprint();
    let serial = keys.terminal.certificate().serial().to_vec();
    let deadline = Instant::now() + DRAIN_DEADLINE;
    while !network.revocations.is_revoked(&ca_fingerprint, &serial) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the revocation was not applied in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let revoked = Touch::unchecked(payer_terminal, payee_terminal).negotiate(&request(
        6_600,
        system_now_ms(),
        PinEntry::WhenRequired,
    ))?;
    publish(bus, std::slice::from_ref(&revoked)).await?;
    push(
        &mut cases,
        &mut envelopes,
        "revoked certificate",
        revoked,
        Some(Reason::Certificate(CertErrorKind::Revoked)),
        None,
    );

    // Bytes that are not an envelope at all.
    bus.publish(Outgoing::new(
        subjects::txn_submit(&payer.institution_id),
        Bytes::from_static(b"\x00\x00\x00\x00\x01this is not an envelope"),
    ))
    .await?;
    Ok((cases, 1))
}

async fn await_answers(
    collector: &OutcomeCollector,
    submissions: &[Submission],
) -> anyhow::Result<()> {
    anyhow::ensure!(
        collector
            .wait_until(DRAIN_DEADLINE, |book| book.answers_all(submissions))
            .await,
        "the pipeline did not answer within {DRAIN_DEADLINE:?}"
    );
    Ok(())
}

async fn publish(bus: &Arc<dyn Bus>, envelopes: &[TransactionEnvelope]) -> anyhow::Result<()> {
    let mut messages = Vec::new();
    for envelope in envelopes {
        messages.push(
            Outgoing::new(
                subjects::txn_submit(&envelope.payer.institution_id),
                dcpipe_schemas::encode(envelope)?,
            )
            .with_key(envelope.payer.wallet_id.clone().into_bytes()),
        );
    }
    bus.publish_many(messages).await?;
    Ok(())
}

async fn wait_until_settled(
    network: &Network,
    within: Duration,
) -> anyhow::Result<dcpipe_pipeline::network::MoneyReport> {
    let deadline = Instant::now() + within;
    loop {
        let money = network.money().await?;
        if (money.held_fen == 0 && money.pending_credit_fen == 0) || Instant::now() >= deadline {
            return Ok(money);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What settlement published for this run.
struct Settled {
    windows: usize,
    clearings: i64,
    net: BTreeMap<String, i64>,
    windows_balanced: bool,
}

async fn collect_settlement(
    bus: &Arc<dyn Bus>,
    run_id: &str,
    since_ms: i64,
    expected: &BTreeMap<String, i64>,
    within: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<Settled> {
    let mut consumer = bus
        .consumer(ConsumerConfig::new(
            subjects::SETTLEMENT_INSTRUCTION,
            format!("demo-{run_id}-settlement"),
        ))
        .await?;
    let mut settled = Settled {
        windows: 0,
        clearings: 0,
        net: BTreeMap::new(),
        windows_balanced: true,
    };
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && !shutdown.is_cancelled() {
        for delivery in consumer.fetch(256, Duration::from_millis(200)).await? {
            let instruction: SettlementInstruction =
                dcpipe_schemas::decode(&delivery.record.payload)?;
            if instruction.window_end_at_ms > since_ms {
                settled.windows += 1;
                settled.windows_balanced &=
                    instruction.positions.iter().map(|p| p.net_fen).sum::<i64>() == 0;
                for position in &instruction.positions {
                    *settled
                        .net
                        .entry(position.institution_id.clone())
                        .or_insert(0) += position.net_fen;
                    settled.clearings += position.clearing_count;
                }
            }
            delivery.ack().await?;
        }
        let mut net = settled.net.clone();
        net.retain(|_, v| *v != 0);
        if &net == expected {
            break;
        }
    }
    settled.clearings /= 2;
    settled.net.retain(|_, v| *v != 0);
    Ok(settled)
}

/// The dead letters of the payer stage since the run began, read by replay (no consumer group
/// to join); read again until `expected` are there or the deadline passes.
async fn count_dead_letters(
    bus: &Arc<dyn Bus>,
    since_ms: i64,
    expected: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut replay = bus
            .replay(ReplayRequest {
                subject: dead_letter_subject(payer::STAGE),
                from: ReplayFrom::TimeMs(since_ms),
                until_ms: None,
            })
            .await?;
        let mut letters = Vec::new();
        loop {
            let records = replay.next_batch(256).await?;
            if records.is_empty() {
                break;
            }
            for record in records {
                letters.push(dcpipe_schemas::decode::<DeadLetter>(&record.payload)?);
            }
        }
        if letters.len() >= expected || Instant::now() >= deadline {
            return Ok(letters);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
