//! `dcpipe wallets`: opening wallets, a bank operation.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use dcpipe_connectors::ledger::{
    BATCH_ITEMS_MAX, LedgerOptions, LedgerUrl, OpenResult, open_ledger,
};
use dcpipe_pipeline::opening::parse_wallet_file;

use crate::settings::Settings;

/// Wallet commands.
#[derive(Debug, Subcommand)]
pub(crate) enum WalletsCommand {
    /// Open wallets into an institution's ledger from a file of JSON lines (wallet_id, tier,
    /// opening_balance_fen, optional password_free_limit_fen; see docs/OPERATIONS.md). Each
    /// opening issues its balance and is recorded in the ledger. Idempotent: a wallet already
    /// opened on the same terms is left as it is; one opened on other terms is refused (exit 1).
    /// A file with a bad line opens nothing.
    Open(OpenArgs),
}

/// Options of `dcpipe wallets open`.
#[derive(Debug, clap::Args)]
pub(crate) struct OpenArgs {
    /// The institution whose ledger receives the wallets.
    #[arg(long, env = "DCPIPE_INSTITUTION")]
    institution: String,
    /// The ledgers: sqlite://DIR or postgres://user@host:port/db.
    #[arg(long, env = "DCPIPE_LEDGER")]
    ledger: Option<String>,
    /// The wallet file (JSON lines).
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
}

pub(crate) async fn run(command: WalletsCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    match command {
        WalletsCommand::Open(args) => open(args, settings).await,
    }
}

async fn open(args: OpenArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let ledger_url: LedgerUrl = args
        .ledger
        .as_deref()
        .or(settings.ledger.as_deref())
        .context("--ledger (or DCPIPE_LEDGER) is required")?
        .parse()?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let lines = match parse_wallet_file(&args.institution, &text) {
        Ok(lines) => lines,
        Err(errors) => {
            for error in &errors {
                eprintln!("dcpipe: {}: {error}", args.file.display());
            }
            bail!(
                "{} bad lines in {}: nothing opened",
                errors.len(),
                args.file.display()
            );
        }
    };
    let ledger = open_ledger(&ledger_url, &args.institution, &LedgerOptions::default()).await?;
    let issued_before = ledger.issued_total_fen().await?;
    let (mut opened, mut repeated, mut conflicts) = (0usize, 0usize, 0usize);
    for chunk in lines.chunks(BATCH_ITEMS_MAX) {
        let accounts: Vec<_> = chunk.iter().map(|(_, account)| account.clone()).collect();
        let results = ledger.open_wallets(&accounts).await?;
        for ((line, account), result) in chunk.iter().zip(results) {
            match result {
                OpenResult::Created => opened += 1,
                OpenResult::AlreadyOpen => repeated += 1,
                OpenResult::Conflict => {
                    conflicts += 1;
                    eprintln!(
                        "dcpipe: {} line {line}: wallet {} was opened on other terms (tier, opening balance or limits); refused, nothing changed",
                        args.file.display(),
                        account.wallet_id
                    );
                }
            }
        }
    }
    let issued_fen = ledger.issued_total_fen().await? - issued_before;
    println!(
        "{}: {opened} wallets opened ({issued_fen} fen issued), {repeated} already open on the same terms, {conflicts} refused",
        args.institution
    );
    tracing::info!(
        institution = %args.institution,
        opened,
        repeated,
        conflicts,
        issued_fen,
        "wallets opened"
    );
    Ok(if conflicts > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
