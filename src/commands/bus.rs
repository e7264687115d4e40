//! `dcpipe bus`: provisioning the bus.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use dcpipe_connectors::bus::{BusUrl, SubjectSpec, connect};
use dcpipe_pipeline::provision::{SubjectState, provision_subjects};
use dcpipe_pipeline::registry;

use crate::settings::{BrokerArgs, Settings};

/// Bus commands.
#[derive(Debug, Subcommand)]
pub(crate) enum BusCommand {
    /// Create every stream (NATS) or topic (Kafka) of the protocol for these institutions, with
    /// the configured storage, replicas, retention and partitions. Idempotent: reports each
    /// subject as created, exists (as configured) or differs (and how); never changes a live
    /// stream. Exits 1 when a subject differs from the configuration.
    Init(InitArgs),
}

/// Options of `dcpipe bus init`.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// The bus: nats://host:port or kafka://host:port.
    #[arg(long, env = "DCPIPE_BUS")]
    bus: Option<String>,
    /// Credentials, TLS and stream limits towards the broker.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// The operating institutions of the network, comma-separated (oi01,oi02).
    #[arg(
        long,
        env = "DCPIPE_INSTITUTIONS",
        value_delimiter = ',',
        required = true,
        value_name = "ID,…"
    )]
    institutions: Vec<String>,
    /// Partitions of each Kafka topic (the other buses keep one ordered log per subject).
    #[arg(long, env = "DCPIPE_PARTITIONS", default_value_t = SubjectSpec::PARTITIONS_DEFAULT)]
    partitions: u32,
    /// Report what would be created, create nothing.
    #[arg(long)]
    dry_run: bool,
}

pub(crate) async fn run(command: BusCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    match command {
        BusCommand::Init(args) => init(args, settings).await,
    }
}

async fn init(args: InitArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let bus_url = settings
        .bus_url(args.bus.as_deref())
        .map_err(anyhow::Error::msg)?;
    if bus_url == BusUrl::Embedded {
        bail!(
            "the embedded bus lives inside one process and needs no provisioning: --bus nats://host:port or kafka://host:port"
        );
    }
    let mut institutions = args.institutions.clone();
    institutions.sort();
    institutions.dedup();
    let bus = connect(&bus_url, &settings.bus_options).await?;
    let reports = provision_subjects(
        bus.as_ref(),
        registry::network_subjects(&institutions),
        args.partitions,
        args.dry_run,
    )
    .await?;
    let mut differ = 0;
    for report in &reports {
        println!("{report}");
        if matches!(report.state, SubjectState::Differs(_)) {
            differ += 1;
        }
    }
    let count = |state: &str| reports.iter().filter(|r| r.state.as_str() == state).count();
    println!(
        "{} subjects on {bus_url}: {} created, {} would be created, {} exist as configured, {differ} differ",
        reports.len(),
        count("created"),
        count("would-create"),
        count("exists"),
    );
    if differ > 0 {
        eprintln!(
            "dcpipe: {differ} subjects exist otherwise than configured; change them with the broker's tools (nats stream edit, kafka-topics --alter) or change the configuration"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
