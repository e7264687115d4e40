//! The subcommands of `dcpipe`.

mod audit;
mod bus;
mod dead_letters;
mod demo;
mod interrupt;
mod loadtest;
mod pki;
mod read_args;
mod schemas;

mod settlement;
mod submit;
mod tail;
mod wallets;
mod worker;

use std::process::ExitCode;

use clap::Subcommand;

use crate::settings::{BrokerArgs, Settings};

/// What `dcpipe` does.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the payment demo: 4 institutions, 1,000 wallets, synthetic terminals and injected
    /// bad cases, then print the outcomes, the settlement positions and the invariant checks.
    /// Exits non-zero when a check fails. Runs on the embedded bus unless --bus says otherwise.
    Demo(demo::DemoArgs),
    /// Drive the pipeline with synthetic terminals (open loop, ramp or closed loop) and report
    /// throughput, latency and memory against the crypto and bus ceilings measured first.
    Loadtest(Box<loadtest::LoadtestArgs>),
    /// Run one stage of one institution (or the central bank's settlement) as its own process;
    /// several processes share a stage's load.
    Worker(worker::WorkerArgs),
    /// Provision the bus: create every stream or topic of the protocol, report drift.
    #[command(subcommand)]
    Bus(bus::BusCommand),
    /// Create and inspect the demo PKI (central bank root, institution CAs, wallet keys).
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Open wallets into an institution's ledger from a file: the only way money enters. Lock,
    /// unlock and change the limits of offline wallets by signed remote commands.
    #[command(subcommand, alias = "wallet")]
    Wallets(wallets::WalletsCommand),
    /// List the Avro schemas and their stable ids (Confluent wire format), or show one.
    Schemas(schemas::SchemasArgs),
    /// Read or follow a subject, decoded: a table, or JSON lines for jq. Reads by replay: no
    /// consumer group, no committed offset.
    Tail(tail::TailArgs),
    /// Make one payment from two wallets' key files as their terminals would, publish it and
    /// wait for its outcome. Exits 3 when rejected, 4 without an outcome in time.
    Submit(submit::SubmitArgs),
    /// List, show and redrive dead letters.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Settlement windows, instructions and positions, verified (signature, zero sum).
    Settlement(settlement::SettlementArgs),
    /// Re-verify every message of a time or sequence range and reconcile it with settlement
    /// (and the ledgers). Exits 0 when it reconciles, 1 on a discrepancy, 2 when it cannot run.
    Audit(audit::AuditArgs),
}

impl Command {
    /// The broker flags of the command, if it uses a broker.
    pub(crate) fn broker(&self) -> Option<&BrokerArgs> {
        match self {
            Command::Demo(args) => Some(&args.broker),
            Command::Loadtest(args) => Some(&args.broker),
            Command::Worker(args) => Some(&args.broker),
            Command::Bus(bus::BusCommand::Init(args)) => Some(&args.broker),
            Command::Tail(args) => Some(&args.broker),
            Command::Submit(args) => Some(&args.broker),
            Command::DeadLetters(command) => Some(&command.selection_args().broker),
            Command::Settlement(args) => Some(&args.broker),
            Command::Audit(args) => Some(&args.broker),
            Command::Pki(pki::PkiCommand::Revoke(args)) => Some(&args.broker),
            Command::Wallets(command) => command.broker(),
            Command::Pki(_) | Command::Schemas(_) => None,
        }
    }

    /// Runs the command.
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        match self {
            Command::Demo(args) => demo::run(args, settings).await,
            Command::Loadtest(args) => loadtest::run(*args, settings).await,
            Command::Worker(args) => worker::run(args, settings).await,
            Command::Bus(command) => bus::run(command, settings).await,
            Command::Pki(command) => pki::run(command, settings).await,
            Command::Wallets(command) => wallets::run(command, settings).await,
            Command::Schemas(args) => schemas::run(args),
            Command::Tail(args) => tail::run(args, settings).await,
            Command::Submit(args) => submit::run(args, settings).await,
            Command::DeadLetters(command) => dead_letters::run(command, settings).await,
            Command::Settlement(args) => settlement::run(args, settings).await,
            Command::Audit(args) => audit::run(args, settings).await,
        }
    }
}
