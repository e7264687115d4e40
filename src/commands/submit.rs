//! `dcpipe submit`: one payment made as a pair of terminals would, and its outcome.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use dcpipe_connectors::bus::connect;
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::ops::submit::{SubmitOptions, WalletTerminal, submit};
use dcpipe_pipeline::ops::{records::parse_payment_id, verifier};
use dcpipe_pipeline::terminal::PASSWORD_FREE_LIMIT_FEN_DEFAULT;
use dcpipe_schemas::{Channel, OutcomeStatus, PaymentId, json_string};

use super::read_args::Output;
use crate::settings::{BrokerArgs, Settings, parse_duration};

/// Options of `dcpipe submit`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// The bus: embedded, nats://host:port or kafka://host:port.
    #[arg(long, env = "DCPIPE_BUS")]
    bus: Option<String>,
    /// Credentials, TLS and stream limits towards the broker.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// The trust anchors: `pki init`'s trust/ (or the PKI directory holding it); they verify
    /// both terminals' certificates and the outcome's signature.
    #[arg(long, env = "DCPIPE_PKI", value_name = "DIR")]
    pki: PathBuf,
    /// The payer's wallet directory (terminal.{crt,key}.pem, secure-element.{crt,key}.pem).
    #[arg(long, env = "DCPIPE_PAYER", value_name = "DIR")]
    payer: PathBuf,
    /// The payee's wallet directory.
    #[arg(long, env = "DCPIPE_PAYEE", value_name = "DIR")]
    payee: PathBuf,
    /// Amount in fen (1 CNY = 100 fen).
    #[arg(long, env = "DCPIPE_AMOUNT_FEN", value_name = "FEN")]
    amount_fen: i64,
    /// How the terminals met.
    #[arg(long, env = "DCPIPE_CHANNEL", value_parser = parse_channel, default_value = "nfc")]
    channel: Channel,
    /// The payment id (UUID); a new time-ordered one when not given. Submitting again with the
    /// same id and a higher --submission asks for the outcome of the same payment.
    #[arg(long, env = "DCPIPE_PAYMENT_ID", value_parser = parse_payment_id, value_name = "UUID")]
    payment_id: Option<[u8; 16]>,
    /// Which submission of this payment this is, from 1: the last part of the message id
    /// (`txn.submit.<oi>/<payment id>/<n>`).
    #[arg(long, env = "DCPIPE_SUBMISSION", default_value_t = 1, value_name = "N")]
    submission: u32,
    /// Above this amount the payer's secure element adds a PIN proof (the wallet's
    /// password-free limit).
    #[arg(long, env = "DCPIPE_PASSWORD_FREE_LIMIT_FEN", default_value_t = PASSWORD_FREE_LIMIT_FEN_DEFAULT, value_name = "FEN")]
    password_free_limit_fen: i64,
    /// Longest wait for the outcome.
    #[arg(long, env = "DCPIPE_TIMEOUT", value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    timeout: Duration,
    /// How the result is printed: a line for people, or one JSON object.
    #[arg(long, env = "DCPIPE_OUTPUT", value_enum, default_value = "table")]
    output: Output,
}

fn parse_channel(text: &str) -> Result<Channel, String> {
    match text.to_ascii_lowercase().as_str() {
        "nfc" => Ok(Channel::Nfc),
        "bluetooth" => Ok(Channel::Bluetooth),
        "remote" => Ok(Channel::Remote),
        _ => Err(format!("{text:?}: nfc, bluetooth or remote")),
    }
}

/// Exit code of a payment that was rejected.
pub(crate) const EXIT_REJECTED: u8 = 3;
/// Exit code of a submission that got no outcome in time.
pub(crate) const EXIT_TIMED_OUT: u8 = 4;
/// Exit code of an outcome whose institution signature does not verify.
pub(crate) const EXIT_UNVERIFIED: u8 = 5;

pub(crate) async fn run(args: SubmitArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let (pki, payer_dir, payee_dir) = (args.pki.clone(), args.payer.clone(), args.payee.clone());
    let (verifier, payer, payee) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            verifier(&pki)?,
            WalletTerminal::load(&payer_dir)?,
            WalletTerminal::load(&payee_dir)?,
        ))
    })
    .await??;
    let bus_url = settings
        .bus_url(args.bus.as_deref())
        .map_err(anyhow::Error::msg)?;
    let bus = connect(&bus_url, &settings.bus_options)
        .await
        .with_context(|| format!("connecting to {bus_url}"))?;
    let options = SubmitOptions {
        amount_fen: args.amount_fen,
        channel: args.channel,
        payment_id: args
            .payment_id
            .map_or_else(PaymentId::time_ordered, PaymentId::from_bytes),
        submission: args.submission,
        created_at_ms: system_now_ms(),
        password_free_limit_fen: args.password_free_limit_fen,
        timeout: args.timeout,
    };
    let report = submit(bus.as_ref(), &verifier, &payer, &payee, &options).await?;
    let payment_id = report.envelope.payment_id.to_string();
    let (status, reason, verified) = match &report.outcome {
        Some((outcome, verified)) => (
            match outcome.status {
                OutcomeStatus::Completed => "COMPLETED",
                OutcomeStatus::Rejected => "REJECTED",
            },
            outcome.reason_code.clone(),
            *verified,
        ),
        None => ("TIMED_OUT", None, false),
    };
    match args.output {
        Output::Json => println!(
            "{{\"payment_id\":{},\"msg_id\":{},\"subject\":{},\"partition\":{},\"offset\":{},\"duplicate\":{},\"envelope_digest\":{},\"status\":{},\"reason_code\":{},\"outcome_signature_verified\":{},\"outcome\":{}}}",
            json_string(&payment_id),
            json_string(&report.msg_id),
            json_string(&report.subject),
            report.receipt.position.partition,
            report.receipt.position.offset,
            report.receipt.duplicate,
            json_string(&report.submission.envelope_digest.to_string()),
            json_string(status),
            reason
                .as_deref()
                .map_or_else(|| "null".to_owned(), json_string),
            verified,
            match &report.outcome {
                Some((outcome, _)) =>
                    dcpipe_schemas::decode_any(&dcpipe_schemas::encode(outcome)?)?.to_json(),
                None => "null".to_owned(),
            }
        ),
        Output::Table => {
            println!(
                "payment {payment_id}: {} → {}, {} fen, published on {} at {}/{} (message id {})",
                report.envelope.payer.wallet_id,
                report.envelope.payee.wallet_id,
                report.envelope.amount_fen,
                report.subject,
                report.receipt.position.partition,
                report.receipt.position.offset,
                report.msg_id
            );
            match &report.outcome {
                Some((outcome, verified)) => println!(
                    "{status}{} decided by {} ({}){}",
                    reason.map(|r| format!(" {r}")).unwrap_or_default(),
                    outcome.decided_by,
                    outcome.detail,
                    if *verified {
                        ""
                    } else {
                        "; the outcome's signature does NOT verify"
                    }
                ),
                None => println!(
                    "no outcome on txn.result.{} within {:?}",
                    report.envelope.payer.institution_id, args.timeout
                ),
            }
        }
    }
    Ok(match (&report.outcome, verified) {
        (Some((o, _)), true) if o.status == OutcomeStatus::Completed => ExitCode::SUCCESS,
        (Some(_), false) => ExitCode::from(EXIT_UNVERIFIED),
        (Some(_), true) => ExitCode::from(EXIT_REJECTED),
        (None, _) => ExitCode::from(EXIT_TIMED_OUT),
    })
}
