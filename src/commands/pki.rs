//! `dcpipe pki`: the demo PKI on disk.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::pki::{AlgorithmChoice, DemoPkiOptions, PkiDirectory, init_pki_directory};

/// PKI commands.
#[derive(Debug, Subcommand)]
pub(crate) enum PkiCommand {
    /// Write a demo PKI as PEM files (private keys with mode 0600): the central bank's root and
    /// settlement signer, a CA and a signer per institution, and per wallet a terminal, a
    /// secure element and a wallet key.
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
    /// Summarize a PKI directory.
    Show {
        /// The directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

fn parse_algorithm(text: &str) -> Result<AlgorithmChoice, String> {
    text.parse().map_err(|e| format!("{e}"))
}

pub(crate) async fn run(command: PkiCommand) -> anyhow::Result<ExitCode> {
    match command {
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
        PkiCommand::Show { dir } => {
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
