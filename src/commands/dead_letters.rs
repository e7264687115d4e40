//! `dcpipe dead-letters`: list, show and redrive dead letters.

use std::process::ExitCode;

use anyhow::Context as _;
use dcpipe_connectors::bus::{Position, ReplayFrom, connect};
use dcpipe_pipeline::ops::dead_letters::{
    DeadLetterEntry, Redrive, Selection, list, parse_position, redrive,
};
use dcpipe_pipeline::ops::records::{json_line, parse_payment_id};
use dcpipe_pipeline::registry;
use dcpipe_schemas::{json_string, rfc3339_of_ms};

use super::read_args::{Output, parse_from, parse_until};
use crate::settings::{BrokerArgs, Settings};
use dcpipe_pipeline::ops::tail::ReadUntil;

/// What `dcpipe dead-letters` does.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// One line per dead letter: stage, reason code, original subject, position, and the
    /// original's message and payment id where it decodes.
    List(DeadLetterArgs),
    /// Every dead letter selected in full, as JSON lines: the record, the dead letter and its
    /// original decoded (or its bytes in hex and why they do not decode).
    Show(DeadLetterArgs),
    /// Publish the originals of the selected dead letters again on their original subjects,
    /// each once: a dead letter already redriven is reported and skipped.
    Redrive(RedriveArgs),
}

/// Which dead letters.
#[derive(Debug, clap::Args)]
pub(crate) struct DeadLetterArgs {
    /// The bus: embedded, nats://host:port or kafka://host:port.
    #[arg(long, env = "DCPIPE_BUS")]
    bus: Option<String>,
    /// Credentials, TLS and stream limits towards the broker.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// Stages whose dead letters are read (`deadletter.<stage>`), comma-separated; every
    /// stage and the revocation follower when not given.
    #[arg(long, env = "DCPIPE_STAGE", value_delimiter = ',')]
    stage: Vec<String>,
    /// Only these reason codes, comma-separated (e.g. schema.bad_magic).
    #[arg(
        long,
        env = "DCPIPE_REASON",
        value_delimiter = ',',
        value_name = "CODE"
    )]
    reason: Vec<String>,
    /// Only these positions on the dead-letter subject: OFFSET or PARTITION-OFFSET,
    /// comma-separated.
    #[arg(long, env = "DCPIPE_POSITION", value_delimiter = ',', value_parser = parse_position)]
    position: Vec<Position>,
    /// Only dead letters whose original is about this payment (UUID).
    #[arg(long, env = "DCPIPE_PAYMENT_ID", value_parser = parse_payment_id, value_name = "UUID")]
    payment_id: Option<[u8; 16]>,
    /// Where to start: `beginning`, a sequence or offset, a time or a duration ago.
    #[arg(long, env = "DCPIPE_FROM", value_parser = parse_from, default_value = "beginning")]
    from: ReplayFrom,
    /// Where to stop (exclusive): `end`, a time or a duration ago.
    #[arg(long, env = "DCPIPE_TO", value_parser = parse_until, default_value = "end")]
    to: ReadUntil,
    /// How `list` prints: a table, or one JSON object a line.
    #[arg(long, env = "DCPIPE_OUTPUT", value_enum, default_value = "table")]
    output: Output,
}

/// Which dead letters to redrive.
#[derive(Debug, clap::Args)]
pub(crate) struct RedriveArgs {
    #[command(flatten)]
    select: DeadLetterArgs,
    /// Redrive every dead letter selected; without it a redrive needs --position,
    /// --reason or --payment-id.
    #[arg(long, env = "DCPIPE_ALL")]
    all: bool,
    /// Say what would be redriven, and publish nothing.
    #[arg(long, env = "DCPIPE_DRY_RUN")]
    dry_run: bool,
}

impl DeadLettersCommand {
    /// The options that select dead letters.
    pub(crate) fn selection_args(&self) -> &DeadLetterArgs {
        match self {
            DeadLettersCommand::List(args) | DeadLettersCommand::Show(args) => args,
            DeadLettersCommand::Redrive(redrive) => &redrive.select,
        }
    }
}

impl DeadLetterArgs {
    fn selection(&self) -> anyhow::Result<Selection> {
        let stages = if self.stage.is_empty() {
            registry::names()
                .into_iter()
                .chain([dcpipe_pipeline::revocation::DEAD_LETTER_STAGE])
                .map(str::to_owned)
                .collect()
        } else {
            self.stage.clone()
        };
        let (until_ms, offset_end) = match self.to {
            ReadUntil::End => (None, None),
            ReadUntil::TimeMs(ms) => (Some(ms), None),
            ReadUntil::Offset(offset) => (None, Some(offset)),
        };
        anyhow::ensure!(
            offset_end.is_none(),
            "--to takes a time here (dead letters of several stages have no common offsets)"
        );
        Ok(Selection {
            stages,
            reasons: self.reason.clone(),
            positions: self.position.clone(),
            payment_id: self.payment_id,
            from: Some(self.from),
            until_ms,
        })
    }
}

pub(crate) async fn run(
    command: DeadLettersCommand,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let (args, redrive_args) = match &command {
        DeadLettersCommand::List(args) | DeadLettersCommand::Show(args) => (args, None),
        DeadLettersCommand::Redrive(r) => (&r.select, Some(r)),
    };
    let selection = args.selection()?;
    let bus_url = settings
        .bus_url(args.bus.as_deref())
        .map_err(anyhow::Error::msg)?;
    let bus = connect(&bus_url, &settings.bus_options)
        .await
        .with_context(|| format!("connecting to {bus_url}"))?;
    let entries = list(bus.as_ref(), &selection).await?;
    match (&command, redrive_args) {
        (DeadLettersCommand::List(_), _) => {
            if args.output == Output::Table {
                println!(
                    "{:<24} {:<28} {:<12} {:<28} {:<26} {:<10} original",
                    "time (UTC)", "dead letter", "stage", "reason", "subject", "position"
                );
            }
            for entry in &entries {
                match args.output {
                    Output::Table => println!("{}", table_row(entry)),
                    Output::Json => println!("{}", summary_json(entry)),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        (DeadLettersCommand::Show(_), _) => {
            for entry in &entries {
                println!("{}", json_line(&entry.record, &entry.decoded));
            }
            Ok(ExitCode::SUCCESS)
        }
        (DeadLettersCommand::Redrive(_), Some(r)) => {
            anyhow::ensure!(
                r.all
                    || !args.position.is_empty()
                    || !args.reason.is_empty()
                    || args.payment_id.is_some(),
                "say which dead letters to redrive: --position, --reason, --payment-id, or --all"
            );
            let mut refused = 0;
            for entry in &entries {
                let name = entry.name();
                if r.dry_run {
                    println!("would redrive {name} to {}", original_subject(entry));
                    continue;
                }
                match redrive(bus.as_ref(), entry).await? {
                    Redrive::Published {
                        subject,
                        position,
                        duplicate,
                    } => println!(
                        "redriven {name} to {subject} at {}/{}{}",
                        position.partition,
                        position.offset,
                        if duplicate {
                            " (the bus already held it: a concurrent redrive)"
                        } else {
                            ""
                        }
                    ),
                    Redrive::AlreadyRedriven { subject, position } => println!(
                        "already redriven {name}: on {subject} at {}/{}",
                        position.partition, position.offset
                    ),
                    Redrive::Refused(why) => {
                        refused += 1;
                        println!("not redriven {name}: {why}");
                    }
                }
            }
            Ok(if refused == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        (DeadLettersCommand::Redrive(_), None) => unreachable!("a redrive has its arguments"),
    }
}

fn original_subject(entry: &DeadLetterEntry) -> &str {
    entry.letter.as_ref().map_or("?", |l| l.subject.as_str())
}

fn original_summary(entry: &DeadLetterEntry) -> String {
    match &entry.decoded.original {
        Some(Ok(original)) => match original.payment_id() {
            Some(id) => format!(
                "{} {}",
                original.entry.message,
                dcpipe_schemas::PaymentId::from_bytes(id)
            ),
            None => original.entry.message.to_owned(),
        },
        Some(Err(e)) => format!("undecodable ({})", e.kind().reason_code()),
        None => "?".to_owned(),
    }
}

fn table_row(entry: &DeadLetterEntry) -> String {
    let (position, received) = match &entry.letter {
        Ok(l) => (format!("{}/{}", l.partition, l.offset), l.received_at_ms),
        Err(_) => ("?".to_owned(), entry.record.timestamp_ms),
    };
    format!(
        "{:<24} {:<28} {:<12} {:<28} {:<26} {:<10} {}",
        rfc3339_of_ms(received),
        format!(
            "{}/{}",
            entry.record.position.partition, entry.record.position.offset
        ),
        entry.stage(),
        entry.reason_code(),
        original_subject(entry),
        position,
        original_summary(entry)
    )
}

fn summary_json(entry: &DeadLetterEntry) -> String {
    let (partition, offset, detail) = match &entry.letter {
        Ok(l) => (i64::from(l.partition), l.offset, json_string(&l.detail)),
        Err(e) => (-1, -1, json_string(&e.to_string())),
    };
    format!(
        "{{\"dead_letter\":{},\"subject\":{},\"partition\":{},\"offset\":{},\"stage\":{},\"reason_code\":{},\"original_subject\":{},\"original_partition\":{partition},\"original_offset\":{offset},\"detail\":{detail},\"original\":{}}}",
        json_string(&entry.name()),
        json_string(&entry.record.subject),
        entry.record.position.partition,
        entry.record.position.offset,
        json_string(entry.stage()),
        json_string(entry.reason_code()),
        json_string(original_subject(entry)),
        json_string(&original_summary(entry)),
    )
}
