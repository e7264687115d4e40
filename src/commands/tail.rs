//! `dcpipe tail`: read or follow a subject, decoded.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use dcpipe_connectors::bus::{BusKind, ReplayFrom, connect, is_subject_pattern};
use dcpipe_pipeline::ops::records::{TABLE_HEADER, json_line, parse_payment_id, table_row};
use dcpipe_pipeline::ops::tail::{ReadUntil, TailOptions, tail};
use tokio_util::sync::CancellationToken;

use super::read_args::{Output, parse_from, parse_until};
use crate::settings::{BrokerArgs, Settings};

/// Options of `dcpipe tail`.
#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// The subject, e.g. txn.result.oi01; on NATS a pattern such as `txn.result.*` or
    /// `deadletter.>` (any token but the first).
    subject: String,
    /// The bus: embedded, nats://host:port or kafka://host:port.
    #[arg(long, env = "DCPIPE_BUS")]
    bus: Option<String>,
    /// Credentials, TLS and stream limits towards the broker.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// Where to start: `beginning`, a stream sequence or Kafka offset (42), a time
    /// (2026-12-07T08:00:00Z) or a duration ago (15m).
    #[arg(long, env = "DCPIPE_FROM", value_parser = parse_from, default_value = "beginning")]
    from: ReplayFrom,
    /// Where to stop (exclusive): `end`, a sequence or offset, a time or a duration ago.
    #[arg(long, env = "DCPIPE_TO", value_parser = parse_until, default_value = "end")]
    to: ReadUntil,
    /// Keep reading what is published next, until interrupted.
    #[arg(long, env = "DCPIPE_FOLLOW")]
    follow: bool,
    /// Only messages about this payment (UUID): its own, or a dead letter's original.
    #[arg(long, env = "DCPIPE_PAYMENT_ID", value_parser = parse_payment_id, value_name = "UUID")]
    payment_id: Option<[u8; 16]>,
    /// Stop after this many messages.
    #[arg(long, env = "DCPIPE_LIMIT", value_name = "N")]
    limit: Option<u64>,
    /// How messages are printed: a table, or one JSON object a line.
    #[arg(long, env = "DCPIPE_OUTPUT", value_enum, default_value = "table")]
    output: Output,
}

pub(crate) async fn run(args: TailArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let bus_url = settings
        .bus_url(args.bus.as_deref())
        .map_err(anyhow::Error::msg)?;
    let bus = connect(&bus_url, &settings.bus_options)
        .await
        .with_context(|| format!("connecting to {bus_url}"))?;
    if is_subject_pattern(&args.subject) && bus.kind() != BusKind::Nats {
        anyhow::bail!(
            "{}: only NATS reads subject patterns; on {} name one subject",
            args.subject,
            bus.kind()
        );
    }
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        super::worker::wait_for_termination().await;
        stopper.cancel();
    });
    let options = TailOptions {
        subject: args.subject,
        from: args.from,
        until: args.to,
        follow: args.follow,
        payment_id: args.payment_id,
        limit: args.limit,
    };
    let mut out = std::io::stdout().lock();
    if args.output == Output::Table {
        writeln!(out, "{TABLE_HEADER}")?;
    }
    let mut failed = None;
    tail(bus.as_ref(), &options, &stop, |record, decoded| {
        let line = match args.output {
            Output::Json => json_line(record, decoded),
            Output::Table => table_row(record, decoded),
        };
        if failed.is_none()
            && let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush())
        {
            // A closed pipe (`| head`) ends the read.
            failed = Some(e);
            stop.cancel();
        }
    })
    .await?;
    match failed {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
