//! `dcpipe`: the command that runs dcpipe's demo, workers, audits and load tests.

mod commands;
#[cfg(test)]
mod compose_check;
mod options;
mod settings;
mod telemetry;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser};

use crate::commands::Command;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use crate::settings::{GlobalArgs, Settings};

/// What `--version` prints after the name: the version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DCPIPE_COMMIT"),
    ")"
);

/// dcpipe: a message-bus pipeline for digital-currency payments.
///
/// Terminals, vehicles and wallets publish signed Avro messages onto NATS JetStream subjects or
/// Kafka topics (or the embedded in-process bus); stateless workers verify them, clear payments
/// between operating institutions and net settlement positions per window.
///
/// Start with `dcpipe demo`. Options come from flags, then DCPIPE_* environment variables, then
/// the TOML file given by --config.
#[derive(Debug, Parser)]
#[command(
    name = "dcpipe",
    version = VERSION,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    // Every flag also comes from its DCPIPE_* variable and from the file's key (options.rs).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = options::load_table(options::config_path(&args).as_ref())
        .and_then(|file| options::apply(Cli::command(), &file));
    let command = match command {
        Ok(command) => command,
        Err(message) => {
            eprintln!("dcpipe: {message}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::from_arg_matches(&command.get_matches_from(args)) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let mut global = cli.global.clone();
    if let Some(broker) = cli.command.broker() {
        broker.apply_to(&mut global);
    }
    let settings = match Settings::resolve(&global) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("dcpipe: {message}");
            return ExitCode::from(2);
        }
    };
    // The demo and the load test print their own reports; their logs stay quiet unless asked
    // for.
    let log_level = match (&cli.command, &cli.global.log_level) {
        (Command::Demo(_) | Command::Loadtest(_), None)
            if std::env::var_os("RUST_LOG").is_none() =>
        {
            "warn"
        }
        _ => settings.log_level.as_str(),
    };
    telemetry::init_logs(settings.log_format, log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dcpipe")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dcpipe: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(cli.command, Command::Worker(_)) {
        // The metrics port opens before the worker has loaded its keys, opened its ledgers and
        // connected: until it reports, it is not ready (an empty report would read as ready).
        telemetry::health().reach(
            dcpipe_pipeline::runtime::Component::Bus,
            dcpipe_pipeline::runtime::Reachability::Unreachable("starting".to_owned()),
        );
    }
    runtime.block_on(async move {
        if let Some(addr) = settings.metrics_addr
            && let Err(message) = telemetry::init_metrics(addr).await
        {
            eprintln!("dcpipe: {message}");
            return ExitCode::from(2);
        }
        match cli.command.run(&settings).await {
            Ok(code) => code,
            Err(e) => {
                // Printed once, with every cause ("loading the PKI from DIR: FILE: why"), not
                // also logged.
                eprintln!("dcpipe: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
