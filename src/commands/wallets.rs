//! `dcpipe wallets` (or `dcpipe wallet`): opening wallets, and the remote control of offline
//! wallets (lock, unlock, limit changes, key rotation orders), bank operations.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use dcpipe_connectors::bus::{BusUrl, connect};
use dcpipe_connectors::ledger::offline::{
    FundingResult, OfflineOpenResult, OfflineOpening, PurseFunding,
};
use dcpipe_connectors::ledger::{
    BATCH_ITEMS_MAX, LedgerOptions, LedgerUrl, OpenResult, open_ledger,
};
use dcpipe_pipeline::clock::{Clock, SystemClock};
use dcpipe_pipeline::opening::parse_wallet_file;
use dcpipe_pipeline::payment::{Institution, PaymentPolicy};
use dcpipe_pipeline::pki::{
    ChainVerifier, KeyHolder, PkiDirectory, PkiLayout, RevocationSet, Role, read_certificate_pem,
};
use dcpipe_pipeline::wallet::remote::{
    command_message, command_symbol, issue_command, order_key_rotation,
};
use dcpipe_pipeline::wallet::stages::record::{limits_of, terms_of};
use dcpipe_pipeline::wallet::{Command, key_fingerprint, offline_limits_for_tier};
use dcpipe_schemas::CommandId;

use crate::settings::{BrokerArgs, Settings, parse_duration};

/// Wallet commands.
#[derive(Debug, Subcommand)]
pub(crate) enum WalletsCommand {
    /// Open wallets into an institution's ledger from a file of JSON lines (wallet_id, tier,
    /// opening_balance_fen, optional password_free_limit_fen; see docs/OPERATIONS.md). Each
    /// opening issues its balance and is recorded in the ledger. Idempotent: a wallet already
    /// opened on the same terms is left as it is; one opened on other terms is refused (exit 1).
    /// A file with a bad line opens nothing.
    Open(OpenArgs),
    /// Open a wallet for offline use: the platform records its wallet key (key version 1,
    /// from its certificate; no private key is read) and its tier's offline limits, and moves
    /// --purse-fen from its online balance into its purse account. Idempotent by --funding-id.
    Offline(OfflineArgs),
    /// Lock an offline wallet: a LOCK command signed by the institution signer is queued for
    /// it (it follows the wallet's next sync result, and is published now with --bus), and
    /// the lock binds at once: its online payments are refused (`payer.wallet_locked`), its
    /// offline payments made from now on are refused at sync. Idempotent by --command-id.
    Lock(ControlArgs),
    /// Unlock an offline wallet (a blacklisted one stays locked on the platform).
    Unlock(ControlArgs),
    /// Change an offline wallet's limits: a LIMIT_CHANGE command; the limits not given stay.
    Limit(LimitArgs),
    /// Order an offline wallet to rotate its key: recorded with the wallet, the order makes
    /// each accepted sync result carry KEY_ROTATION until a key set under a new key, certified
    /// by the institution's CA, is accepted (the platform then records the raised key version
    /// and the new key). Ordering again changes nothing.
    Rotate(RotateArgs),
}

impl WalletsCommand {
    /// The broker flags, for the commands that may publish.
    pub(crate) fn broker(&self) -> Option<&BrokerArgs> {
        match self {
            WalletsCommand::Open(_) | WalletsCommand::Offline(_) | WalletsCommand::Rotate(_) => {
                None
            }
            WalletsCommand::Lock(args) | WalletsCommand::Unlock(args) => Some(&args.broker),
            WalletsCommand::Limit(args) => Some(&args.control.broker),
        }
    }
}

/// Options of `dcpipe wallets offline`.
#[derive(Debug, clap::Args)]
pub(crate) struct OfflineArgs {
    /// The wallet's institution.
    #[arg(long, env = "DCPIPE_INSTITUTION")]
    institution: String,
    /// The wallet (opened online before).
    #[arg(long)]
    wallet: String,
    /// The wallet key's certificate (PEM), e.g. pki/wallets/<wallet>/wallet.crt.pem.
    #[arg(long, value_name = "FILE")]
    certificate: PathBuf,
    /// Moved from the online balance into the purse, in fen.
    #[arg(long)]
    purse_fen: i64,
    /// The ledgers: sqlite://DIR or postgres://user@host:port/db.
    #[arg(long, env = "DCPIPE_LEDGER")]
    ledger: Option<String>,
    /// The funding's id (a UUID): funding again with the same id moves nothing. A fresh one
    /// when not given.
    #[arg(long, value_name = "UUID")]
    funding_id: Option<String>,
}

/// Options of the remote control commands.
#[derive(Debug, clap::Args)]
pub(crate) struct ControlArgs {
    /// The wallet's institution, which signs the command.
    #[arg(long, env = "DCPIPE_INSTITUTION")]
    institution: String,
    /// The wallet.
    #[arg(long)]
    wallet: String,
    /// The ledgers: sqlite://DIR or postgres://user@host:port/db.
    #[arg(long, env = "DCPIPE_LEDGER")]
    ledger: Option<String>,
    /// The trust anchors: the trust/ directory of `dcpipe pki init`, or the PKI directory.
    #[arg(long, env = "DCPIPE_PKI", value_name = "DIR")]
    pki: PathBuf,
    /// The institution signer's directory (signer.crt.pem, signer.key.pem); taken from --pki
    /// when that is a whole PKI directory.
    #[arg(long, env = "DCPIPE_KEY", value_name = "DIR")]
    key: Option<PathBuf>,
    /// Also publish the command now on wallet.command.<institution>, for a wallet online.
    #[arg(long, env = "DCPIPE_BUS")]
    bus: Option<String>,
    /// The command's id (a UUID): issuing again with the same id changes nothing. A fresh
    /// one when not given.
    #[arg(long, value_name = "UUID")]
    command_id: Option<String>,
    /// Credentials, TLS and stream limits towards the broker.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
}

/// Options of `dcpipe wallets rotate`.
#[derive(Debug, clap::Args)]
pub(crate) struct RotateArgs {
    /// The wallet's institution.
    #[arg(long, env = "DCPIPE_INSTITUTION")]
    institution: String,
    /// The wallet (opened for offline use).
    #[arg(long)]
    wallet: String,
    /// The ledgers: sqlite://DIR or postgres://user@host:port/db.
    #[arg(long, env = "DCPIPE_LEDGER")]
    ledger: Option<String>,
}

/// Options of `dcpipe wallets limit`.
#[derive(Debug, clap::Args)]
pub(crate) struct LimitArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Most the purse may hold, in fen.
    #[arg(long)]
    purse_limit_fen: Option<i64>,
    /// Most one offline payment may be, in fen.
    #[arg(long)]
    single_payment_limit_fen: Option<i64>,
    /// Most the offline payments between two syncs may total, in fen.
    #[arg(long)]
    cumulative_limit_fen: Option<i64>,
    /// Most offline payments between two syncs.
    #[arg(long)]
    payments_per_sync_max: Option<i64>,
    /// The preset offline duration (e.g. 24h).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    offline_duration: Option<Duration>,
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
        WalletsCommand::Offline(args) => offline(args, settings).await,
        WalletsCommand::Lock(args) => control(args, ControlKind::Lock, settings).await,
        WalletsCommand::Unlock(args) => control(args, ControlKind::Unlock, settings).await,
        WalletsCommand::Limit(args) => {
            let kind = ControlKind::Limit {
                purse_limit_fen: args.purse_limit_fen,
                single_payment_limit_fen: args.single_payment_limit_fen,
                cumulative_limit_fen: args.cumulative_limit_fen,
                payments_per_sync_max: args.payments_per_sync_max,
                offline_duration_ms_max: args
                    .offline_duration
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            };
            control(args.control, kind, settings).await
        }
        WalletsCommand::Rotate(args) => rotate(args, settings).await,
    }
}

async fn rotate(args: RotateArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let ledger_url = ledger_url(args.ledger.as_deref(), settings)?;
    let ledger = open_ledger(&ledger_url, &args.institution, &LedgerOptions::default()).await?;
    let now_ms = SystemClock.now_ms();
    let Some(since_ms) = order_key_rotation(ledger.offline(), &args.wallet, now_ms).await? else {
        bail!(
            "{} keeps no offline record of wallet {}: nothing ordered",
            args.institution,
            args.wallet
        );
    };
    let record = ledger
        .offline()
        .offline_wallet(&args.wallet)
        .await?
        .with_context(|| format!("{} vanished", args.wallet))?;
    if since_ms == now_ms {
        println!(
            "{}: {} ordered to rotate its key (key version {} now); its next accepted sync result asks for a new key",
            args.institution, args.wallet, record.key_version
        );
    } else {
        println!(
            "{}: {} was ordered to rotate its key at {since_ms} ms already (key version {} now); nothing changed",
            args.institution, args.wallet, record.key_version
        );
    }
    tracing::info!(
        institution = %args.institution,
        wallet = %args.wallet,
        since_ms,
        key_version = record.key_version,
        "key rotation ordered"
    );
    Ok(ExitCode::SUCCESS)
}

async fn open(args: OpenArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let ledger_url = ledger_url(args.ledger.as_deref(), settings)?;
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

/// What a remote control command asks.
enum ControlKind {
    Lock,
    Unlock,
    Limit {
        purse_limit_fen: Option<i64>,
        single_payment_limit_fen: Option<i64>,
        cumulative_limit_fen: Option<i64>,
        payments_per_sync_max: Option<i64>,
        offline_duration_ms_max: Option<i64>,
    },
}

/// A UUID given in `flag`, as its 16 bytes.
fn parse_uuid(flag: &str, text: &str) -> anyhow::Result<[u8; 16]> {
    let hex_digits: String = text.chars().filter(|c| *c != '-').collect();
    hex::decode(&hex_digits)
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("--{flag} {text} is not a UUID"))
}

async fn offline(args: OfflineArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let ledger_url = ledger_url(args.ledger.as_deref(), settings)?;
    let funding_id = match &args.funding_id {
        Some(text) => parse_uuid("funding-id", text)?,
        None => *CommandId::random().as_bytes(),
    };
    let certificate = read_certificate_pem(&args.certificate)
        .with_context(|| format!("reading {}", args.certificate.display()))?;
    if certificate.role() != Some(Role::Wallet)
        || certificate.id() != args.wallet
        || certificate.institution() != args.institution
    {
        bail!(
            "{} is not the wallet key of {}/{}",
            args.certificate.display(),
            args.institution,
            args.wallet
        );
    }
    let spki = certificate.public_key().to_spki_der()?;
    let ledger = open_ledger(&ledger_url, &args.institution, &LedgerOptions::default()).await?;
    let wallet = ledger
        .wallet(&args.wallet)
        .await?
        .with_context(|| format!("{} has no wallet {}", args.institution, args.wallet))?;
    let tier = wallet.account.tier;
    let offline = ledger.offline();
    let opened = offline
        .open_offline(&[OfflineOpening {
            wallet_id: args.wallet.clone(),
            key_version: 1,
            key_fingerprint: key_fingerprint(&spki),
            last_sync_at_ms: SystemClock.now_ms(),
            limits: terms_of(&offline_limits_for_tier(tier)),
        }])
        .await?;
    if opened.first() == Some(&OfflineOpenResult::Conflict) {
        bail!(
            "{} was opened for offline use with another key: nothing changed",
            args.wallet
        );
    }
    let funded = offline
        .fund_purses(&[PurseFunding {
            funding_id,
            wallet_id: args.wallet.clone(),
            amount_fen: args.purse_fen,
        }])
        .await?;
    match funded.first() {
        Some(FundingResult::Funded { purse_fen }) => println!(
            "{}: {} open for offline use, {} fen moved into its purse (purse {purse_fen} fen), \
             funding {}",
            args.institution,
            args.wallet,
            args.purse_fen,
            hex::encode(funding_id)
        ),
        Some(FundingResult::Duplicate) => println!(
            "{}: {} open for offline use; funding {} was done before, nothing moved",
            args.institution,
            args.wallet,
            hex::encode(funding_id)
        ),
        other => bail!("{}: funding refused: {other:?}", args.wallet),
    }
    Ok(ExitCode::SUCCESS)
}

async fn control(
    args: ControlArgs,
    kind: ControlKind,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let ledger_url = ledger_url(args.ledger.as_deref(), settings)?;
    let command_id = match &args.command_id {
        Some(text) => CommandId::from_bytes(parse_uuid("command-id", text)?),
        None => CommandId::random(),
    };
    // The trust anchors and the institution signer: no other private key is read.
    let trust = args.pki.clone();
    let key_dir = args.key.clone().unwrap_or_else(|| {
        PkiLayout::new(&trust).signer_dir(KeyHolder::Institution(&args.institution))
    });
    let holder = args.institution.clone();
    let keys = tokio::task::spawn_blocking(move || {
        PkiDirectory::load_worker(&trust, &key_dir, KeyHolder::Institution(&holder)).with_context(
            || {
                format!(
                    "loading the trust anchors from {} and the signing key from {}",
                    trust.display(),
                    key_dir.display()
                )
            },
        )
    })
    .await??;
    let verifier = Arc::new(ChainVerifier::new(
        Arc::clone(&keys.trust_store),
        Arc::new(RevocationSet::new()),
    ));
    let ledger = open_ledger(&ledger_url, &args.institution, &LedgerOptions::default()).await?;
    let clock = Arc::new(SystemClock);
    let now_ms = clock.now_ms();
    let institution = Institution::new(
        args.institution.clone(),
        keys.signer,
        verifier,
        ledger,
        PaymentPolicy::default(),
        clock,
    );
    let command = match kind {
        ControlKind::Lock => Command::Lock,
        ControlKind::Unlock => Command::Unlock,
        ControlKind::Limit {
            purse_limit_fen,
            single_payment_limit_fen,
            cumulative_limit_fen,
            payments_per_sync_max,
            offline_duration_ms_max,
        } => {
            let record = institution
                .ledger
                .offline()
                .offline_wallet(&args.wallet)
                .await?
                .with_context(|| {
                    format!(
                        "{} keeps no offline record of wallet {}",
                        args.institution, args.wallet
                    )
                })?;
            let mut limits = limits_of(&record.limits);
            limits.purse_limit_fen = purse_limit_fen.unwrap_or(limits.purse_limit_fen);
            limits.single_payment_limit_fen =
                single_payment_limit_fen.unwrap_or(limits.single_payment_limit_fen);
            limits.cumulative_limit_fen =
                cumulative_limit_fen.unwrap_or(limits.cumulative_limit_fen);
            limits.payments_per_sync_max =
                payments_per_sync_max.unwrap_or(limits.payments_per_sync_max);
            limits.offline_duration_ms_max =
                offline_duration_ms_max.unwrap_or(limits.offline_duration_ms_max);
            Command::OfflineLimits(limits)
        }
    };
    let Some(signed) =
        issue_command(&institution, &args.wallet, command_id, &command, now_ms).await?
    else {
        bail!(
            "{} keeps no offline record of wallet {}: nothing issued",
            args.institution,
            args.wallet
        );
    };
    if args.bus.is_some() || settings.bus.is_some() {
        let bus_url = settings
            .bus_url(args.bus.as_deref())
            .map_err(anyhow::Error::msg)?;
        if bus_url != BusUrl::Embedded {
            let bus = connect(&bus_url, &settings.bus_options).await?;
            bus.publish(command_message(&institution, &signed)?).await?;
        }
    }
    println!(
        "{}: {} for {} issued as command {} (sequence {})",
        args.institution,
        command_symbol(signed.command),
        args.wallet,
        signed.command_id,
        signed.sequence
    );
    tracing::info!(
        institution = %args.institution,
        wallet = %args.wallet,
        command = ?signed.command,
        command_id = %signed.command_id,
        sequence = signed.sequence,
        "remote command issued"
    );
    Ok(ExitCode::SUCCESS)
}

/// The ledger URL of `--ledger`, or of the configuration.
fn ledger_url(flag: Option<&str>, settings: &Settings) -> anyhow::Result<LedgerUrl> {
    Ok(flag
        .or(settings.ledger.as_deref())
        .context("--ledger (or DCPIPE_LEDGER) is required")?
        .parse()?)
}
