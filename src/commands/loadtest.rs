//! `dcpipe loadtest`: drives the whole pipeline with synthetic terminals and reports how fast
//! it went against what the hardware allows.
//!
//! Prints a progress bar while it runs, then a table; writes the JSON report (`--report`) and
//! an SVG plot of throughput and latency over time (`--plot`, by default next to the report).
//! Exits non-zero when the run is invalid: a submission without exactly one answer, counts that
//! do not add up, or money not conserved. With `--vehicles N` it drives synthetic vehicles
//! instead of payments (`dcpipe_loadtest::vehicles::run_vehicles`): reports per second applied,
//! report → session event and session end → outcome latencies, the fleet's checks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dcpipe_connectors::bus::EmbeddedConfig;
use dcpipe_loadtest::measure::SeriesPoint;
use dcpipe_loadtest::payments::PaymentMix;
use dcpipe_loadtest::plot::{check_plot_path, write_plot};
use dcpipe_loadtest::{LedgerChoice, LoadConfig, Mode, RampConfig, SustainCriterion};
use dcpipe_pipeline::pki::AlgorithmChoice;

use crate::settings::parse_duration;
use crate::settings::{BrokerArgs, Settings};

/// Bytes in a MiB.
const MIB: usize = 1024 * 1024;
/// Largest per-subject retention of the embedded bus the load test accepts, MiB.
const EMBEDDED_SUBJECT_MIB_MAX: usize = 4096;
/// Flags whose value is a secret, hidden in the command line the report records.
const SECRET_FLAGS: &[&str] = &["--nats-password"];
/// Words that make a `--kafka-property` value secret.
const SECRET_PROPERTY_WORDS: &[&str] = &["password", "secret", "jaas", "token"];

/// Options of `dcpipe loadtest`.
#[derive(Debug, clap::Args)]
pub(crate) struct LoadtestArgs {
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
    /// open: a fixed rate; ramp: rising steps until one is not sustainable; closed: a fixed
    /// number of payments in flight (maximum throughput).
    #[arg(long, default_value = "open", value_parser = parse_mode)]
    mode: Mode,
    /// Payments per second offered (open mode).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How long load is offered (open and closed mode), e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Trimmed from the figures at the start.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    /// Trimmed from the figures at the end.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    cooldown: Duration,
    /// Payments in flight (closed mode).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Rate of the ramp's first step.
    #[arg(long, default_value_t = 200)]
    ramp_start: u32,
    /// Rate added at each ramp step.
    #[arg(long, default_value_t = 200)]
    ramp_step: u32,
    /// Length of each ramp step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ramp_step_duration: Duration,
    /// Highest rate the ramp tries.
    #[arg(long, default_value_t = 100_000)]
    ramp_max: u32,
    /// Sustainable: achieved at least this share of the offered rate.
    #[arg(long, default_value_t = 0.95)]
    sustain_achieved: f64,
    /// Sustainable: p99 latency at most this long.
    #[arg(long, default_value = "200ms", value_parser = parse_duration, value_name = "DURATION")]
    sustain_p99: Duration,
    /// Sustainable: at most this share of a step's payments unanswered at its end.
    #[arg(long, default_value_t = 0.05)]
    sustain_backlog: f64,
    /// After the ramp, one step at this share of the highest sustainable rate (0: none).
    #[arg(long, default_value_t = 0.8)]
    ramp_confirm: f64,
    /// Operating institutions.
    #[arg(long, default_value_t = 4)]
    institutions: usize,
    /// Wallets, all institutions together.
    #[arg(long, default_value_t = 1000)]
    wallets: usize,
    /// Certificate algorithms: p256, sm2 or mixed.
    #[arg(long, default_value = "p256", value_parser = parse_algorithm)]
    algorithm: AlgorithmChoice,
    /// Seed of the synthetic traffic (same seed, same payments).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of submissions with a forged payer signature.
    #[arg(long, default_value_t = 0.0)]
    bad_share: f64,
    /// Share of submissions repeating an earlier envelope.
    #[arg(long, default_value_t = 0.0)]
    duplicate_share: f64,
    /// Share of submissions reusing an earlier payment id with other content.
    #[arg(long, default_value_t = 0.0)]
    conflict_share: f64,
    /// Share of payments between two institutions.
    #[arg(long, default_value_t = 0.8)]
    interbank_share: f64,
    /// Wallets that send most of the traffic.
    #[arg(long, default_value_t = 20)]
    hot_wallets: usize,
    /// Share of payments sent from the hot wallets (they soon reach their daily limits).
    #[arg(long, default_value_t = 0.5)]
    hot_share: f64,
    /// Share of payments above the password-free limit (with a PIN proof).
    #[arg(long, default_value_t = 0.02)]
    large_share: f64,
    /// Partitions of each Kafka topic.
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Cores the run uses (threads of the crypto ceiling); default: all.
    #[arg(long)]
    cores: Option<usize>,
    /// How long each ceiling is measured.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    ceiling_duration: Duration,
    /// How long the end of the run waits for the last answers and for money to settle.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Embedded bus: MiB each subject retains (acknowledged messages beyond are dropped oldest
    /// first; unacknowledged ones make publishers wait).
    #[arg(long, default_value_t = 2)]
    embedded_subject_mib: usize,
    /// Use this PKI directory (written by `dcpipe pki init`) instead of generating one; its
    /// institutions and wallets replace --institutions and --wallets.
    #[arg(long, value_name = "DIR")]
    pki: Option<PathBuf>,
    /// The stages run as `dcpipe worker` processes on the same bus, PKI and ledgers: this
    /// process only produces, observes and measures (needs --pki, --ledger and a broker).
    #[arg(long)]
    external_workers: bool,
    /// Members of each stage's consumer group in this process.
    #[arg(long, default_value_t = 1)]
    stage_concurrency: usize,
    /// Most messages a stage decides together.
    #[arg(long, default_value_t = 256)]
    batch_max: usize,
    /// A stage's delivery not acknowledged within this time is delivered again.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ack_wait: Duration,
    /// Drive this many synthetic vehicles instead of payments: each replays a trip through a
    /// synthetic city of toll gantries, parking lots, charging and fuel stations (open mode;
    /// --duration, --warmup and --cooldown apply, --rate does not).
    #[arg(long, default_value_t = 0)]
    vehicles: usize,
    /// With --vehicles: the interval between two reports of a vehicle (the load offers
    /// vehicles / interval reports per second).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    report_interval: Duration,
    /// With --vehicles: reports a vehicle signs and publishes together.
    #[arg(long, default_value_t = dcpipe_loadtest::config::TELEMETRY_BATCH_DEFAULT)]
    telemetry_batch: usize,
    /// A reconnection storm instead of payments: this many offline wallets (the benchmarks
    /// use 100000) come back after an outage at --rate key sets per second, each with 0 to 20
    /// offline payments; the wallets are made first, on all cores, and kept in a temporary
    /// file (open mode; --warmup and --cooldown apply, --duration does not).
    #[arg(long, default_value_t = 0, value_name = "N")]
    offline_wallets: usize,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the plot here (.svg); default: next to the report.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// On a broker, keep the run's streams or topics (the run works in a namespace of its own,
    /// loadtest-<run id>) at the end, for an audit of the run; by default they are removed.
    #[arg(long)]
    keep: bool,
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse().map_err(|e| format!("{e}"))
}

fn parse_algorithm(text: &str) -> Result<AlgorithmChoice, String> {
    text.parse().map_err(|e| format!("{e}"))
}

/// The command line with secrets (passwords, secret Kafka properties, a password in a URL)
/// replaced by `***`.
fn redacted_command_line(args: &[String]) -> String {
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for arg in args {
        if hide_next {
            out.push("***".to_owned());
            hide_next = false;
            continue;
        }
        if SECRET_FLAGS.contains(&arg.as_str()) {
            hide_next = true;
            out.push(arg.clone());
            continue;
        }
        if let Some(flag) = SECRET_FLAGS
            .iter()
            .find(|f| arg.starts_with(&format!("{f}=")))
        {
            out.push(format!("{flag}=***"));
            continue;
        }
        let lower = arg.to_ascii_lowercase();
        if let Some((key, _)) = arg.split_once('=')
            && SECRET_PROPERTY_WORDS
                .iter()
                .any(|w| key.to_ascii_lowercase().contains(w))
            && !arg.starts_with("--")
        {
            out.push(format!("{key}=***"));
            continue;
        }
        if let (Some(scheme_end), Some(at)) = (lower.find("://"), arg.find('@'))
            && let Some(colon) = arg[scheme_end + 3..at].find(':')
        {
            let user_end = scheme_end + 3 + colon;
            out.push(format!("{}:***{}", &arg[..user_end], &arg[at..]));
            continue;
        }
        out.push(arg.clone());
    }
    out.join(" ")
}

/// Makes sure `path` can be written once the run ends: its directory exists (created if
/// missing), it is not a directory, and a file can be created beside it.
fn prepare_output(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    anyhow::ensure!(
        !path.is_dir(),
        "{}: a directory; give a file name",
        path.display()
    );
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create its directory", path.display()))?;
    tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: its directory is not writable", path.display()))?;
    Ok(())
}

pub(crate) async fn run(args: LoadtestArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let bus = settings
        .bus_url(args.bus.as_deref())
        .map_err(anyhow::Error::msg)?;
    let ledger = match args.ledger.as_deref().or(settings.ledger.as_deref()) {
        Some(url) => LedgerChoice::Url(url.parse()?),
        None => LedgerChoice::Temporary,
    };
    anyhow::ensure!(
        (1..=EMBEDDED_SUBJECT_MIB_MAX).contains(&args.embedded_subject_mib),
        "--embedded-subject-mib must be 1 to {EMBEDDED_SUBJECT_MIB_MAX}"
    );
    let plot = args
        .plot
        .clone()
        .or_else(|| args.report.as_ref().map(|r| r.with_extension("svg")));
    if let Some(path) = &plot {
        check_plot_path(path)?;
    }
    // Checked, their directories created, before the run: not found unwritable at its end.
    for path in args.report.iter().chain(&plot) {
        prepare_output(path)?;
    }
    let mut bus_options = settings.bus_options.clone();
    let subject_bytes_max = args.embedded_subject_mib * MIB;
    bus_options.embedded = EmbeddedConfig {
        subject_bytes_max,
        // About 1 KiB per message: the message limit follows the byte limit.
        subject_messages_max: subject_bytes_max / 1024,
        dedup_entries_max: subject_bytes_max / 1024,
        ..EmbeddedConfig::default()
    };
    let config = LoadConfig {
        bus,
        bus_options,
        partitions: args.partitions,
        ledger,
        mode: args.mode,
        rate: args.rate,
        duration: args.duration,
        warmup: args.warmup,
        cooldown: args.cooldown,
        concurrency: args.concurrency,
        ramp: RampConfig {
            start_rate: args.ramp_start,
            step_rate: args.ramp_step,
            step_duration: args.ramp_step_duration,
            max_rate: args.ramp_max,
            criterion: SustainCriterion {
                achieved_ratio_min: args.sustain_achieved,
                p99_ms_max: args.sustain_p99.as_secs_f64() * 1000.0,
                backlog_ratio_max: args.sustain_backlog,
            },
            confirm_share: args.ramp_confirm,
        },
        institutions: args.institutions,
        wallets: args.wallets,
        algorithm: args.algorithm,
        seed: args.seed,
        mix: PaymentMix {
            interbank_share: args.interbank_share,
            large_share: args.large_share,
            duplicate_share: args.duplicate_share,
            conflict_share: args.conflict_share,
            forged_share: args.bad_share,
            hot_wallets: args.hot_wallets,
            hot_share: args.hot_share,
        },
        cores: args
            .cores
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        ceiling_duration: args.ceiling_duration,
        drain_timeout: args.drain_timeout,
        pki_dir: args.pki.clone(),
        external_workers: args.external_workers,
        stage_concurrency: args.stage_concurrency,
        batch_max: args.batch_max,
        ack_wait: args.ack_wait,
        progress: !args.no_progress,
        keep: args.keep,
        vehicles: args.vehicles,
        report_interval: args.report_interval,
        telemetry_batch: args.telemetry_batch,
        offline_wallets: args.offline_wallets,
        command_line: redacted_command_line(&std::env::args().collect::<Vec<_>>()),
        start_at_ms: None,
    };
    config.check()?;
    if config.vehicles > 0 {
        return run_vehicles(&config, &args, plot.as_deref()).await;
    }
    if config.offline_wallets > 0 {
        return run_storm(&config, &args, plot.as_deref()).await;
    }
    eprintln!(
        "dcpipe loadtest: {} mode on {}, ledgers {}",
        config.mode.as_str(),
        config.bus,
        config.ledger.kind()
    );
    // Ctrl-C stops the load; the report then covers the run so far, marked interrupted.
    let interrupted = super::interrupt::on_interrupt();
    let report = dcpipe_loadtest::run_until(&config, &interrupted).await?;
    let title = format!(
        "dcpipe loadtest: {} on {}, {} ({})",
        report.mode, report.bus, report.mix.algorithm, report.ledger
    );
    let window = (report.warmup_s, report.duration_s - report.cooldown_s);
    conclude(
        &report.table(),
        args.report.as_deref(),
        |path| report.write_json(path),
        plot.as_deref()
            .map(|path| (path, title, &report.series[..], window)),
        interrupted.is_cancelled(),
        report.valid,
    )
}

/// A plot to write: its file, title, points and measured window (seconds).
type PlotOf<'a> = (&'a std::path::Path, String, &'a [SeriesPoint], (f64, f64));

/// Prints a run's table, writes its report and its plot, and returns its exit code.
fn conclude(
    table: &str,
    report_path: Option<&std::path::Path>,
    write_json: impl FnOnce(&std::path::Path) -> Result<(), dcpipe_loadtest::LoadTestError>,
    plot: Option<PlotOf<'_>>,
    interrupted: bool,
    valid: bool,
) -> anyhow::Result<ExitCode> {
    println!("{table}");
    if let Some(path) = report_path {
        write_json(path)?;
        println!("report written to {}", path.display());
    }
    if let Some((path, title, series, window)) = plot {
        write_plot(path, &title, series, window)?;
        println!("plot written to {}", path.display());
    }
    Ok(if interrupted {
        ExitCode::from(super::interrupt::EXIT_INTERRUPTED)
    } else if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `dcpipe loadtest --vehicles N`: the vehicle flow's load, its table, report and plot.
async fn run_vehicles(
    config: &LoadConfig,
    args: &LoadtestArgs,
    plot: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    eprintln!(
        "dcpipe loadtest: {} vehicles, a report every {:?} ({:.0} reports/s) on {}, ledgers {}",
        config.vehicles,
        config.report_interval,
        config.report_rate(),
        config.bus,
        config.ledger.kind()
    );
    let interrupted = super::interrupt::on_interrupt();
    let report = dcpipe_loadtest::vehicles::run_vehicles(config, &interrupted).await?;
    let title = format!(
        "dcpipe loadtest: {} vehicles on {} ({}): reports/s, report → session event",
        report.vehicles, report.bus, report.ledger
    );
    let window = (report.warmup_s, report.duration_s - report.cooldown_s);
    conclude(
        &report.table(),
        args.report.as_deref(),
        |path| report.write_json(path),
        plot.map(|path| (path, title, &report.series[..], window)),
        interrupted.is_cancelled(),
        report.valid,
    )
}

/// `dcpipe loadtest --offline-wallets N`: the reconnection storm, its table, report and plot.
async fn run_storm(
    config: &LoadConfig,
    args: &LoadtestArgs,
    plot: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    eprintln!(
        "dcpipe loadtest: {} offline wallets reconnecting at {} key sets/s on {}, ledgers {}",
        config.offline_wallets,
        config.rate,
        config.bus,
        config.ledger.kind()
    );
    let interrupted = super::interrupt::on_interrupt();
    let report = dcpipe_loadtest::storm::run_storm(config, &interrupted).await?;
    let title = format!(
        "dcpipe loadtest: {} offline wallets on {} ({}): key sets/s, reconnection → sync result",
        report.offline_wallets, report.bus, report.ledger
    );
    let window = (report.warmup_s, report.duration_s - report.cooldown_s);
    conclude(
        &report.table(),
        args.report.as_deref(),
        |path| report.write_json(path),
        plot.map(|path| (path, title, &report.series[..], window)),
        interrupted.is_cancelled(),
        report.valid,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn hides_a_nats_password_flag_value() {
        let line =
            redacted_command_line(&args(&["dcpipe", "--nats-password", "hunter2", "loadtest"]));
        assert_eq!(line, "dcpipe --nats-password *** loadtest");
        let line = redacted_command_line(&args(&["dcpipe", "--nats-password=hunter2"]));
        assert_eq!(line, "dcpipe --nats-password=***");
    }

    #[test]
    fn hides_secret_kafka_properties() {
        let line = redacted_command_line(&args(&["--kafka-property", "sasl.password=x"]));
        assert_eq!(line, "--kafka-property sasl.password=***");
    }

    #[test]
    fn hides_a_password_in_a_url() {
        let line = redacted_command_line(&args(&["--ledger", "postgres://me:secret@db:5432/x"]));
        assert_eq!(line, "--ledger postgres://me:***@db:5432/x");
    }

    #[test]
    fn keeps_ordinary_arguments() {
        let line = redacted_command_line(&args(&[
            "loadtest",
            "--rate",
            "500",
            "--bus",
            "nats://127.0.0.1:4222",
        ]));
        assert_eq!(line, "loadtest --rate 500 --bus nats://127.0.0.1:4222");
    }
}
