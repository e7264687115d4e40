//! `dcpipe settlement`: windows, instructions and positions, verified.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use dcpipe_connectors::bus::{ReplayFrom, connect};
use dcpipe_pipeline::ops::settlement::read;
use dcpipe_pipeline::ops::tail::ReadUntil;
use dcpipe_pipeline::ops::verifier;
use dcpipe_schemas::{json_string, rfc3339_of_ms};

use super::read_args::{Output, parse_from, parse_until};
use crate::settings::{BrokerArgs, Settings};

/// Options of `dcpipe settlement`.
#[derive(Debug, clap::Args)]
pub(crate) struct SettlementArgs {
    /// The bus: embedded, nats://host:port or kafka://host:port.
    #[arg(long, env = "DCPIPE_BUS")]
    bus: Option<String>,
    /// Credentials, TLS and stream limits towards the broker.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// The trust anchors: `pki init`'s trust/ (or the PKI directory holding it); they verify
    /// the settlement signer.
    #[arg(long, env = "DCPIPE_PKI", value_name = "DIR")]
    pki: PathBuf,
    /// Institutions whose published positions are checked against the signed instructions,
    /// comma-separated; every institution of the trust anchors when not given.
    #[arg(long, env = "DCPIPE_INSTITUTION", value_delimiter = ',')]
    institution: Vec<String>,
    /// Where to start: `beginning`, a sequence or offset, a time or a duration ago.
    #[arg(long, env = "DCPIPE_FROM", value_parser = parse_from, default_value = "beginning")]
    from: ReplayFrom,
    /// Where to stop (exclusive): `end`, a time or a duration ago.
    #[arg(long, env = "DCPIPE_TO", value_parser = parse_until, default_value = "end")]
    to: ReadUntil,
    /// How the report is printed: a table, or one JSON object a line.
    #[arg(long, env = "DCPIPE_OUTPUT", value_enum, default_value = "table")]
    output: Output,
}

/// Exit code when an instruction or a position does not verify.
pub(crate) const EXIT_UNVERIFIED: u8 = 5;

pub(crate) async fn run(args: SettlementArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let until_ms = match args.to {
        ReadUntil::End => None,
        ReadUntil::TimeMs(ms) => Some(ms),
        ReadUntil::Offset(_) => anyhow::bail!("--to takes a time here, not an offset"),
    };
    let pki = args.pki.clone();
    let verifier = tokio::task::spawn_blocking(move || verifier(&pki)).await??;
    let institutions = if args.institution.is_empty() {
        verifier
            .trust_store()
            .institution_ids()
            .map(str::to_owned)
            .collect()
    } else {
        args.institution.clone()
    };
    let bus_url = settings
        .bus_url(args.bus.as_deref())
        .map_err(anyhow::Error::msg)?;
    let bus = connect(&bus_url, &settings.bus_options)
        .await
        .with_context(|| format!("connecting to {bus_url}"))?;
    let report = read(bus.as_ref(), &verifier, &institutions, args.from, until_ms).await?;
    let verdict = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    for checked in &report.instructions {
        let position = checked.record.position;
        match (&checked.instruction, args.output) {
            (Ok(i), Output::Table) => {
                println!(
                    "window {} [{} .. {}) instruction {} at {}/{}: signature {}, zero sum {}, {} late clearings ({} fen)",
                    i.window_id,
                    rfc3339_of_ms(i.window_start_at_ms),
                    rfc3339_of_ms(i.window_end_at_ms),
                    i.instruction_id,
                    position.partition,
                    position.offset,
                    verdict(&checked.signature),
                    verdict(&checked.zero_sum),
                    i.late_clearing_count,
                    i.late_amount_fen
                );
                for p in &i.positions {
                    println!(
                        "    {:<10} net {:>16} fen  debit {:>16}  credit {:>16}  {} clearings",
                        p.institution_id, p.net_fen, p.debit_fen, p.credit_fen, p.clearing_count
                    );
                }
            }
            (Ok(i), Output::Json) => {
                let positions: Vec<String> = i
                    .positions
                    .iter()
                    .map(|p| {
                        format!(
                            "{{\"institution_id\":{},\"net_fen\":{},\"debit_fen\":{},\"credit_fen\":{},\"clearing_count\":{}}}",
                            json_string(&p.institution_id), p.net_fen, p.debit_fen, p.credit_fen, p.clearing_count
                        )
                    })
                    .collect();
                println!(
                    "{{\"kind\":\"instruction\",\"partition\":{},\"offset\":{},\"instruction_id\":{},\"window_id\":{},\"window_start_at_ms\":{},\"window_start_at_rfc3339\":{},\"window_end_at_ms\":{},\"window_end_at_rfc3339\":{},\"late_clearing_count\":{},\"late_amount_fen\":{},\"positions\":[{}],\"signature\":{},\"zero_sum\":{},\"verified\":{}}}",
                    position.partition,
                    position.offset,
                    json_string(&i.instruction_id.to_string()),
                    i.window_id,
                    i.window_start_at_ms,
                    json_string(&rfc3339_of_ms(i.window_start_at_ms)),
                    i.window_end_at_ms,
                    json_string(&rfc3339_of_ms(i.window_end_at_ms)),
                    i.late_clearing_count,
                    i.late_amount_fen,
                    positions.join(","),
                    json_string(&verdict(&checked.signature)),
                    json_string(&verdict(&checked.zero_sum)),
                    checked.verified()
                );
            }
            (Err(e), Output::Table) => println!(
                "instruction at {}/{} does not decode: {e}",
                position.partition, position.offset
            ),
            (Err(e), Output::Json) => println!(
                "{{\"kind\":\"instruction\",\"partition\":{},\"offset\":{},\"error\":{},\"verified\":false}}",
                position.partition,
                position.offset,
                json_string(e)
            ),
        }
    }
    for checked in &report.positions {
        let (window, institution, net) = match &checked.position {
            Ok(p) => (
                p.window_id.to_string(),
                p.institution_id.clone(),
                p.net_fen.to_string(),
            ),
            Err(_) => ("?".into(), "?".into(), "?".into()),
        };
        match args.output {
            Output::Table => println!(
                "position {} at {}/{}: window {window} {institution} net {net} fen: {}",
                checked.record.subject,
                checked.record.position.partition,
                checked.record.position.offset,
                verdict(&checked.matches)
            ),
            Output::Json => println!(
                "{{\"kind\":\"position\",\"subject\":{},\"partition\":{},\"offset\":{},\"window_id\":{},\"institution_id\":{},\"net_fen\":{},\"matches_instruction\":{},\"verified\":{}}}",
                json_string(&checked.record.subject),
                checked.record.position.partition,
                checked.record.position.offset,
                json_string(&window),
                json_string(&institution),
                json_string(&net),
                json_string(&verdict(&checked.matches)),
                checked.matches.is_ok()
            ),
        }
    }
    if args.output == Output::Table {
        println!(
            "{} instructions, {} positions: {}",
            report.instructions.len(),
            report.positions.len(),
            if report.all_verified() {
                "all verified"
            } else {
                "NOT all verified"
            }
        );
    }
    Ok(if report.all_verified() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNVERIFIED)
    })
}
