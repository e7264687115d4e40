//! The storm's wallets, reproducible from a seed and never all in memory: wallet `i` has an id,
//! an institution and a key derived from the seed and `i` alone, so that the ledgers can be
//! prepared for all of them chunk after chunk ([`Storm::open`]) and each chunk made again just
//! before it reconnects ([`Storm::chunk`]): certificates issued, offline payments made between
//! the chunk's wallets, key sets signed at the satellite moment of their reconnection.

use std::collections::HashMap;

use bytes::Bytes;
use dcpipe_connectors::ledger::WalletAccount;
use dcpipe_connectors::ledger::offline::{FundingResult, OfflineOpening, PurseFunding};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::network::Network;
use dcpipe_pipeline::pki::{
    Algorithm, CertificateTemplate, CertifiedKey, PrivateKey, Role, sha256,
};
use dcpipe_pipeline::protocol::{CHAIN_START, offline_payment_digest, offline_payment_id};
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::tier::TIER_4;
use dcpipe_pipeline::wallet::limits::{HOUR_MS, PAID_AT_SKEW_MS_MAX_DEFAULT};
use dcpipe_pipeline::wallet::stages::record::terms_of;
use dcpipe_pipeline::wallet::{
    HardWallet, SatelliteFix, WalletProvisioning, key_fingerprint, offline_limits_for_tier,
};
use dcpipe_schemas::{OfflineLimits, OfflinePayment, PartyRef, PaymentId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::ceiling::crypto_error;
use crate::error::{LoadTestError, LoadTestErrorKind};
use crate::run::ledger_error;

/// What each wallet moves into its purse before the outage: the tier-4 purse limit.
pub const PURSE_FEN: i64 = 100_000;
/// Most offline payments a wallet makes during the outage (each makes 0 to this many, evenly).
pub const PAYMENTS_PER_WALLET_MAX: usize = 20;
/// Largest offline payment, fen: twenty of them fit the purse and the cumulative limit.
pub const PAYMENT_FEN_MAX: i64 = PURSE_FEN / PAYMENTS_PER_WALLET_MAX as i64;
/// Wallets made together: payers and payees of the storm's payments are of one chunk.
pub const CHUNK_WALLETS: usize = 128;
/// How long before the storm the wallets last synchronized.
pub const OUTAGE_MS: i64 = HOUR_MS;
/// Prefix of the storm's wallet ids (`s-oi01-0000042`), apart from the network's own.
const ID_PREFIX: &str = "s";

/// A storm of `wallets` offline wallets spread over a network's institutions.
#[derive(Debug, Clone)]
pub struct Storm {
    seed: u64,
    wallets: usize,
    prefix: &'static str,
    institutions: Vec<String>,
    algorithms: Vec<Algorithm>,
    anchors: Vec<Vec<u8>>,
    last_sync_at_ms: i64,
    valid_from_ms: i64,
    valid_until_ms: i64,
    limits: OfflineLimits,
}

/// One wallet's reconnection: its key set, and what it must lead to.
#[derive(Debug, Clone)]
pub struct Reconnection {
    /// The wallet's number in the storm.
    pub index: usize,
    /// `wallet.keyset.<oi>`.
    pub subject: String,
    /// The wallet id (the message key).
    pub wallet_id: String,
    /// The encoded, signed key set.
    pub frame: Bytes,
    /// The offline payments this key set is the first to upload, each to clear once: the
    /// wallet's own, but for those its payee uploaded before, and those it received from
    /// payers that reconnect after it (wallets reconnect in the order of their numbers).
    pub payments: Vec<PaymentId>,
    /// Its purse once they cleared.
    pub purse_after_fen: i64,
}

/// A chunk of reconnections, in wallet order.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    /// The reconnections.
    pub reconnections: Vec<Reconnection>,
    /// Payments made from one institution to another.
    pub interbank: usize,
    /// Payments whose payee's wallet took them (the others only the payer uploads).
    pub received: usize,
}

impl Chunk {
    /// Offline payments in the chunk.
    pub fn payments(&self) -> usize {
        self.reconnections.iter().map(|r| r.payments.len()).sum()
    }
}

fn generate_error(what: &str, error: impl std::fmt::Display) -> LoadTestError {
    LoadTestError::new(LoadTestErrorKind::Generate, format!("{what}: {error}"))
}

impl Storm {
    /// `wallets` wallets of `network` from `seed`, last synchronized [`OUTAGE_MS`] before
    /// `now_ms`.
    pub fn new(network: &Network, seed: u64, wallets: usize, now_ms: i64) -> Self {
        Self::with_prefix(network, seed, wallets, now_ms, ID_PREFIX)
    }

    /// The same with ids starting with `prefix` (the ceiling's sample wallets are not the
    /// storm's).
    pub fn with_prefix(
        network: &Network,
        seed: u64,
        wallets: usize,
        now_ms: i64,
        prefix: &'static str,
    ) -> Self {
        let institutions: Vec<String> = network.institutions.keys().cloned().collect();
        let algorithms = institutions
            .iter()
            .map(|oi| {
                network
                    .pki
                    .institution(oi)
                    .map_or(Algorithm::EcdsaP256Sha256, |k| k.ca.key().algorithm())
            })
            .collect();
        let mut anchors = vec![network.pki.root().certificate().der().to_vec()];
        anchors.extend(
            network
                .pki
                .institutions()
                .map(|(_, keys)| keys.ca.certificate().der().to_vec()),
        );
        let manifest = network.pki.manifest();
        Storm {
            seed,
            wallets,
            prefix,
            institutions,
            algorithms,
            anchors,
            last_sync_at_ms: now_ms - OUTAGE_MS,
            valid_from_ms: manifest.valid_from_ms,
            valid_until_ms: manifest.valid_until_ms,
            limits: offline_limits_for_tier(TIER_4.number),
        }
    }

    /// Wallets in the storm.
    pub fn wallets(&self) -> usize {
        self.wallets
    }

    /// Chunks of [`CHUNK_WALLETS`] wallets (the last one shorter).
    pub fn chunks(&self) -> usize {
        self.wallets.div_ceil(CHUNK_WALLETS)
    }

    /// The institution of wallet `index`.
    pub fn institution(&self, index: usize) -> &str {
        &self.institutions[index % self.institutions.len()]
    }

    /// The id of wallet `index`.
    pub fn wallet_id(&self, index: usize) -> String {
        format!("{}-{}-{index:07}", self.prefix, self.institution(index))
    }

    /// The number of the wallet `wallet_id` names, if it is one of the storm's.
    pub fn index_of(&self, wallet_id: &str) -> Option<usize> {
        let rest = wallet_id.strip_prefix(self.prefix)?.strip_prefix('-')?;
        let (institution, number) = rest.rsplit_once('-')?;
        let index: usize = number.parse().ok()?;
        (index < self.wallets && self.institution(index) == institution).then_some(index)
    }

    /// The key of wallet `index`: a scalar drawn from the seed and the index.
    fn key(&self, index: usize) -> Result<PrivateKey, LoadTestError> {
        let algorithm = self.algorithms[index % self.algorithms.len()];
        for attempt in 0u8..16 {
            let mut input = b"dcpipe storm wallet".to_vec();
            input.extend_from_slice(&self.seed.to_be_bytes());
            input.extend_from_slice(&(index as u64).to_be_bytes());
            input.push(attempt);
            if let Ok(key) = PrivateKey::from_scalar(algorithm, &sha256(&input)) {
                return Ok(key);
            }
        }
        Err(generate_error(
            "a wallet key",
            "no valid scalar in 16 draws",
        ))
    }

    /// Opens every wallet at its institution, chunk after chunk: the online account holding
    /// [`PURSE_FEN`], the offline record under the wallet's key, and the purse funded from the
    /// account. `on_chunk` is told each chunk done.
    pub async fn open(
        &self,
        network: &Network,
        mut on_chunk: impl FnMut(usize),
    ) -> Result<(), LoadTestError> {
        for chunk in 0..self.chunks() {
            let range = chunk * CHUNK_WALLETS..((chunk + 1) * CHUNK_WALLETS).min(self.wallets);
            let mut by_institution: HashMap<&str, Vec<(String, [u8; 32])>> = HashMap::new();
            for index in range {
                let spki = self
                    .key(index)?
                    .public_key()
                    .to_spki_der()
                    .map_err(|e| generate_error("a wallet key", e))?;
                by_institution
                    .entry(self.institution(index))
                    .or_default()
                    .push((self.wallet_id(index), key_fingerprint(&spki)));
            }
            for (oi, wallets) in by_institution {
                let ledger = &network.institutions[oi].ledger;
                let accounts: Vec<WalletAccount> = wallets
                    .iter()
                    .map(|(id, _)| WalletAccount {
                        wallet_id: id.clone(),
                        institution_id: oi.to_owned(),
                        tier: TIER_4.number,
                        balance_fen: PURSE_FEN,
                        limits: TIER_4.limits,
                        locked: false,
                    })
                    .collect();
                ledger.open_wallets(&accounts).await.map_err(ledger_error)?;
                let openings: Vec<OfflineOpening> = wallets
                    .iter()
                    .map(|(id, fingerprint)| OfflineOpening {
                        wallet_id: id.clone(),
                        key_version: 1,
                        key_fingerprint: *fingerprint,
                        last_sync_at_ms: self.last_sync_at_ms,
                        limits: terms_of(&self.limits),
                    })
                    .collect();
                let offline = ledger.offline();
                offline
                    .open_offline(&openings)
                    .await
                    .map_err(ledger_error)?;
                let fundings: Vec<PurseFunding> = wallets
                    .iter()
                    .map(|(id, _)| PurseFunding {
                        funding_id: sha256(id.as_bytes())[..16].try_into().unwrap_or([0; 16]),
                        wallet_id: id.clone(),
                        amount_fen: PURSE_FEN,
                    })
                    .collect();
                let funded = offline.fund_purses(&fundings).await.map_err(ledger_error)?;
                if let Some(refused) = funded
                    .iter()
                    .find(|f| !matches!(f, FundingResult::Funded { .. }))
                {
                    return Err(ledger_error(format!(
                        "a storm purse not funded: {refused:?}"
                    )));
                }
            }
            on_chunk(chunk);
        }
        Ok(())
    }

    /// The records the platform holds of chunk `chunk`'s wallets once opened, for the ceiling
    /// (which keeps them in memory).
    pub fn opened_record(
        &self,
        index: usize,
    ) -> Result<dcpipe_pipeline::wallet::WalletRecord, LoadTestError> {
        let spki = self
            .key(index)?
            .public_key()
            .to_spki_der()
            .map_err(|e| crypto_error("a sample wallet key", e))?;
        Ok(dcpipe_pipeline::wallet::WalletRecord {
            party: PartyRef {
                institution_id: self.institution(index).to_owned(),
                wallet_id: self.wallet_id(index),
            },
            key_version: 1,
            key_fingerprint: key_fingerprint(&spki),
            last_sync_at_ms: self.last_sync_at_ms,
            counter: 0,
            chain_head: CHAIN_START,
            purse_fen: PURSE_FEN,
            limits: self.limits,
            locked_at_ms: None,
            blacklisted_at_ms: None,
            last_key_set: None,
            commands_applied_through: 0,
            blacklist_version: 0,
        })
    }

    /// Chunk `chunk` made with every key set signed at the satellite moment now.
    pub fn chunk(&self, network: &Network, chunk: usize) -> Result<Chunk, LoadTestError> {
        let now_ms = system_now_ms();
        self.chunk_at(network, chunk, |_| now_ms)
    }

    /// Chunk `chunk` made: each wallet certified by its institution's CA, its offline
    /// payments made to the chunk's wallets (0 to [`PAYMENTS_PER_WALLET_MAX`] each, 1 to
    /// [`PAYMENT_FEN_MAX`] fen, drawn from the seed) and received by their payees' wallets,
    /// then the key set of wallet `i` signed at the satellite moment `reconnects_at_ms(i)`,
    /// when it is to reconnect.
    pub fn chunk_at(
        &self,
        network: &Network,
        chunk: usize,
        reconnects_at_ms: impl Fn(usize) -> i64,
    ) -> Result<Chunk, LoadTestError> {
        let first = chunk * CHUNK_WALLETS;
        let end = (first + CHUNK_WALLETS).min(self.wallets);
        let mut rng = SmallRng::seed_from_u64(self.seed ^ (chunk as u64).wrapping_mul(0x9e37));
        let mut wallets = Vec::with_capacity(end - first);
        for index in first..end {
            let oi = self.institution(index);
            let wallet_id = self.wallet_id(index);
            let ca = &network
                .pki
                .institution(oi)
                .ok_or_else(|| generate_error("a storm wallet", format!("no CA of {oi}")))?
                .ca;
            let key = self.key(index)?;
            let template = CertificateTemplate::for_role(
                Role::Wallet,
                &wallet_id,
                oi,
                self.valid_from_ms,
                self.valid_until_ms,
            );
            let certificate = ca
                .issue(&template, key.public_key())
                .map_err(|e| generate_error("a wallet certificate", e))?;
            let key = CertifiedKey::new(certificate, key)
                .map_err(|e| generate_error("a wallet certificate", e))?;
            let wallet = HardWallet::provision(WalletProvisioning {
                party: PartyRef {
                    institution_id: oi.to_owned(),
                    wallet_id,
                },
                tier: TIER_4.number,
                key,
                key_version: 1,
                limits: self.limits,
                trust_anchors: self.anchors.clone(),
                last_sync_at_ms: self.last_sync_at_ms,
                counter: 0,
                chain_head: CHAIN_START,
                purse_fen: PURSE_FEN,
            })
            .map_err(|e| generate_error("a storm wallet", e))?;
            wallets.push(wallet);
        }
        let count = wallets.len();
        let mut made = Chunk::default();
        let mut payments: Vec<Vec<PaymentId>> = vec![Vec::new(); count];
        if count >= 2 {
            let mut at = self.last_sync_at_ms + 1_000;
            let step_ms = (OUTAGE_MS / 2) / (count * PAYMENTS_PER_WALLET_MAX) as i64;
            for payer in 0..count {
                for _ in 0..rng.random_range(0..=PAYMENTS_PER_WALLET_MAX) {
                    let payee = (payer + rng.random_range(1..count)) % count;
                    let amount = rng.random_range(1..=PAYMENT_FEN_MAX);
                    at += step_ms.max(1);
                    let payee_party = wallets[payee].party().clone();
                    let Ok(frame) =
                        wallets[payer].pay(&payee_party, amount, SatelliteFix { at_ms: at })
                    else {
                        continue;
                    };
                    let payment: OfflinePayment = dcpipe_schemas::decode(frame.as_bytes())
                        .map_err(|e| generate_error("an offline payment", e))?;
                    let payment_id = offline_payment_id(&offline_payment_digest(&payment));
                    if payment.payer.institution_id != payment.payee.institution_id {
                        made.interbank += 1;
                    }
                    let received = wallets[payee]
                        .receive(
                            frame.as_bytes(),
                            SatelliteFix { at_ms: at },
                            PAID_AT_SKEW_MS_MAX_DEFAULT,
                        )
                        .is_ok();
                    if received {
                        made.received += 1;
                    }
                    let first_upload = if received && payee < payer {
                        payee
                    } else {
                        payer
                    };
                    payments[first_upload].push(payment_id);
                }
            }
        }
        for ((offset, mut wallet), paid) in wallets.into_iter().enumerate().zip(payments) {
            let upload = wallet
                .key_set(SatelliteFix {
                    at_ms: reconnects_at_ms(first + offset),
                })
                .map_err(|e| generate_error("a key set", e))?;
            let party = wallet.party();
            made.reconnections.push(Reconnection {
                index: first + offset,
                subject: subjects::wallet_keyset(&party.institution_id),
                wallet_id: party.wallet_id.clone(),
                frame: Bytes::from(upload.frame),
                payments: paid,
                purse_after_fen: wallet.purse_fen(),
            });
        }
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_fit_twenty_payments_of_the_largest_amount() {
        let limits = offline_limits_for_tier(TIER_4.number);
        let most = PAYMENT_FEN_MAX * PAYMENTS_PER_WALLET_MAX as i64;
        assert!(most <= PURSE_FEN);
        assert!(PURSE_FEN <= limits.purse_limit_fen);
        assert!(most <= limits.cumulative_limit_fen);
        assert!(PAYMENTS_PER_WALLET_MAX as i64 <= limits.payments_per_sync_max);
        assert!(PAYMENT_FEN_MAX <= limits.single_payment_limit_fen);
        assert!(OUTAGE_MS < limits.offline_duration_ms_max);
    }
}
