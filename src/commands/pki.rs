//! `dcpipe pki`: the demo PKI on disk.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use clap::builder::PossibleValuesParser;
use dcpipe_connectors::bus::{BusUrl, Outgoing, connect};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::pki::{
    AlgorithmChoice, CertifiedKey, DemoPkiOptions, PkiDirectory, init_pki_directory,
    read_certificate_pem, read_private_key_pem, read_public_key_pem, write_certificate_pem,
};
use dcpipe_pipeline::revocation::{
    REVOCATION_REASONS, next_revocation_sequence, revocation_update_of_serials,
};
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::wallet::certify_wallet_key;
use dcpipe_schemas::{PartyRef, rfc3339_of_ms};

use crate::settings::{BrokerArgs, Settings, parse_duration};

/// PKI commands.
#[derive(Debug, Subcommand)]
pub(crate) enum PkiCommand {
    /// Write a demo PKI as PEM files (private keys with mode 0600), one directory per party:
    /// root/ (offline), settlement/, institutions/<oi>/ca/, institutions/<oi>/signer/,
    /// wallets/<id>/ (terminal, secure element and wallet keys: for terminals), and trust/
    /// (certificates only: the root, the institution CAs, the settlement signer).
    Init {
        /// Directory to create (must not hold a PKI already).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Operating institutions (oi01, oi02, …).
        #[arg(long, default_value_t = 4)]
        institutions: usize,
        /// Wallets, spread round-robin over the institutions.
        #[arg(long, default_value_t = 1000)]
        wallets: usize,
        /// Certificate algorithms: p256 (ECDSA P-256 with SHA-256), sm2 (SM2 with SM3), or
        /// mixed (alternating per institution and per wallet).
        #[arg(long, default_value = "p256", value_parser = parse_algorithm)]
        algorithm: AlgorithmChoice,
    },
    /// Revoke certificates as the CA that issued them: sign a RevocationUpdate with the CA's
    /// key (--ca DIR/ca.key.pem) and publish it on pki.revocation, where every worker applies it.
    /// The update takes the next sequence of this CA found on the bus.
    Revoke(Box<RevokeArgs>),
    /// Certify a wallet's new key as its institution's CA, for a key rotation (`dcpipe
    /// wallets rotate`): read the PUBLIC KEY PEM file the wallet made, issue the wallet
    /// certificate of --wallet for it, valid from an hour ago for --valid-for, and write it to
    /// --out (a new file), for the wallet. The CA's key is the only secret read.
    CertifyWalletKey(CertifyWalletKeyArgs),
    /// Summarize a PKI directory (its manifest.toml and every party's files, checked).
    Show {
        /// The PKI directory written by `pki init --out` (read, like every other --pki).
        #[arg(long, env = "DCPIPE_PKI", value_name = "DIR", alias = "dir")]
        pki: PathBuf,
    },
}

/// Options of `dcpipe pki revoke`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "cert"])))]
pub(crate) struct RevokeArgs {
    /// The issuing CA's party directory, holding ca.crt.pem and ca.key.pem (institutions/<oi>/ca
    /// for the institution's wallets and signer, root for an institution CA).
    #[arg(long, env = "DCPIPE_CA", value_name = "DIR")]
    ca: PathBuf,
    /// Serial of the certificate to revoke, in hex (the content octets of its DER INTEGER).
    #[arg(long, env = "DCPIPE_SERIAL", value_name = "HEX")]
    serial: Option<String>,
    /// The certificate to revoke (PEM).
    #[arg(long, env = "DCPIPE_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Why (an RFC 5280 CRLReason name: keyCompromise, superseded, cessationOfOperation, …).
    #[arg(long, env = "DCPIPE_REASON", value_parser = PossibleValuesParser::new(REVOCATION_REASONS))]
    reason: String,
    /// The bus: nats://host:port or kafka://host:port.
    #[arg(long, env = "DCPIPE_BUS")]
    bus: Option<String>,
    /// Credentials and TLS towards the broker.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
}

/// Options of `dcpipe pki certify-wallet-key`.
#[derive(Debug, clap::Args)]
pub(crate) struct CertifyWalletKeyArgs {
    /// The institution CA's party directory, holding ca.crt.pem and ca.key.pem
    /// (institutions/<oi>/ca): the wallet's institution.
    #[arg(long, env = "DCPIPE_CA", value_name = "DIR")]
    ca: PathBuf,
    /// The wallet whose new key this is.
    #[arg(long)]
    wallet: String,
    /// The new public key (PUBLIC KEY PEM: SubjectPublicKeyInfo, P-256 or SM2).
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,
    /// Where to write the certificate (PEM; must not exist).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// How long the certificate is valid.
    #[arg(long, default_value = "730d", value_parser = parse_duration, value_name = "DURATION")]
    valid_for: Duration,
}

/// How far before now a certificate issued here starts to be valid: a wallet whose satellite
/// moment runs a little behind the CA's clock can use it at once.
const CERTIFIED_BEFORE_NOW: Duration = Duration::from_secs(3600);

fn parse_algorithm(text: &str) -> Result<AlgorithmChoice, String> {
    text.parse().map_err(|e| format!("{e}"))
}

pub(crate) async fn run(command: PkiCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    match command {
        PkiCommand::Revoke(args) => revoke(*args, settings).await,
        PkiCommand::CertifyWalletKey(args) => certify_wallet_key_file(&args),
        PkiCommand::Init {
            out,
            institutions,
            wallets,
            algorithm,
        } => {
            let started = std::time::Instant::now();
            let options = DemoPkiOptions::new(institutions, wallets, algorithm, system_now_ms());
            let pki = tokio::task::spawn_blocking(move || {
                init_pki_directory(&out, &options).map(|p| (p, out))
            })
            .await??;
            let (pki, out) = pki;
            println!(
                "wrote a {} PKI for {} institutions and {} wallets to {} in {:.1} s",
                algorithm.as_str(),
                pki.manifest().institutions.len(),
                pki.manifest().wallets.len(),
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        PkiCommand::Show { pki: dir } => {
            let pki = tokio::task::spawn_blocking(move || PkiDirectory::load(&dir)).await??;
            let manifest = pki.manifest();
            println!("algorithm choice: {}", manifest.algorithm.as_str());
            for institution in &manifest.institutions {
                let wallets = manifest
                    .wallets
                    .iter()
                    .filter(|w| w.institution == institution.id)
                    .count();
                println!(
                    "{:<8} {:<6} {wallets} wallets",
                    institution.id, institution.algorithm
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn revoke(args: RevokeArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let bus_url = settings
        .bus_url(args.bus.as_deref())
        .map_err(anyhow::Error::msg)?;
    if bus_url == BusUrl::Embedded {
        bail!(
            "revocations reach workers through a shared bus: --bus nats://host:port or kafka://host:port"
        );
    }
    let ca = read_ca(&args.ca)?;
    let serial = match (&args.serial, &args.cert) {
        (Some(hex_serial), _) => hex::decode(hex_serial.trim())
            .ok()
            .filter(|s| !s.is_empty())
            .with_context(|| format!("--serial {hex_serial}: expected hex digits"))?,
        (None, Some(path)) => {
            let certificate = read_certificate_pem(path)?;
            if certificate.institution() != ca.certificate().institution()
                && ca.certificate().institution() != "central-bank"
            {
                bail!(
                    "{} was issued under {}, not by the CA of {}",
                    path.display(),
                    certificate.institution(),
                    ca.certificate().institution()
                );
            }
            certificate.serial().to_vec()
        }
        (None, None) => bail!("--serial or --cert is required"),
    };
    let bus = connect(&bus_url, &settings.bus_options).await?;
    let sequence = next_revocation_sequence(bus.as_ref(), ca.certificate().fingerprint()).await?;
    let update = revocation_update_of_serials(
        &ca,
        std::slice::from_ref(&serial),
        &args.reason,
        sequence,
        system_now_ms(),
    )?;
    let receipt = bus
        .publish(
            Outgoing::new(subjects::PKI_REVOCATION, dcpipe_schemas::encode(&update)?)
                .with_msg_id(update.update_id.to_string()),
        )
        .await?;
    println!(
        "revoked serial {} of {} ({}): update {} sequence {sequence} published on {} at {}:{}",
        hex::encode(&serial),
        ca.certificate().institution(),
        args.reason,
        update.update_id,
        subjects::PKI_REVOCATION,
        receipt.position.partition,
        receipt.position.offset
    );
    Ok(ExitCode::SUCCESS)
}

/// The CA of a party directory: its certificate and key, checked to belong together.
fn read_ca(dir: &Path) -> anyhow::Result<CertifiedKey> {
    let certificate = read_certificate_pem(&dir.join("ca.crt.pem"))?;
    let key = read_private_key_pem(&dir.join("ca.key.pem"))?;
    CertifiedKey::new(certificate, key)
        .with_context(|| format!("{}: the key is not the CA's", dir.display()))
}

fn certify_wallet_key_file(args: &CertifyWalletKeyArgs) -> anyhow::Result<ExitCode> {
    let ca = read_ca(&args.ca)?;
    let public_key = read_public_key_pem(&args.public_key)?;
    let party = PartyRef {
        institution_id: ca.certificate().institution().to_owned(),
        wallet_id: args.wallet.clone(),
    };
    let now_ms = system_now_ms();
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let certificate = certify_wallet_key(
        &ca,
        &party,
        &public_key,
        now_ms.saturating_sub(millis(CERTIFIED_BEFORE_NOW)),
        now_ms.saturating_add(millis(args.valid_for)),
    )
    .with_context(|| format!("certifying {}", args.public_key.display()))?;
    write_certificate_pem(&args.out, &certificate)?;
    println!(
        "certified the {} key of wallet {} of {}: serial {}, valid until {}, written to {}",
        public_key.algorithm().as_str(),
        party.wallet_id,
        party.institution_id,
        hex::encode(certificate.serial()),
        rfc3339_of_ms(certificate.valid_until_ms()),
        args.out.display()
    );
    tracing::info!(
        institution = %party.institution_id,
        wallet = %party.wallet_id,
        serial = %hex::encode(certificate.serial()),
        "wallet key certified"
    );
    Ok(ExitCode::SUCCESS)
}
