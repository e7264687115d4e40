//! The hard wallet: what a secure element holds and enforces while it is offline.
//!
//! A [`HardWallet`] has its own key (a `wallet` certificate issued by its institution's CA), a
//! key version, its last synchronization moment, an offline purse funded from its online balance
//! before it went offline, the trust anchors and blacklist it received at its last
//! synchronization, a counter and a hash chain over its offline payments, and its offline
//! limits. It pays ([`HardWallet::pay`]) and is paid ([`HardWallet::receive`]) without a
//! network, refusing with a typed reason whatever its limits forbid; when it reconnects it makes
//! its key set ([`HardWallet::key_set`]), applies the platform's signed answer
//! ([`HardWallet::apply_sync_result`]) and the remote commands that follow
//! ([`HardWallet::apply_command`]), each once and in order.
//!
//! The demo, the tests and the load test drive wallets through this type, so the bytes they
//! upload are exactly what a real wallet would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dcpipe_schemas::{
    ControlCommand, Digest32, Frame, OfflineLimits, OfflinePayment, OfflinePaymentSummary,
    PartyRef, RemoteControlCommand, SyncStatus, WalletAction, WalletKeySet, WalletSyncResult,
};

use super::control::verify_command;
use super::payment::{VerifiedOfflinePayment, verify_offline_payment_frame};
use super::sync::verify_sync_result;
use super::time::{SatelliteFix, offline_duration_ms};
use crate::pki::{
    CertError, Certificate, CertificateTemplate, CertifiedKey, ChainVerifier, IssueError, KeyError,
    PrivateKey, PublicKey, RevocationSet, Role, TrustStore,
};
use crate::protocol::{
    CHAIN_START, anchors_digest, key_set_digest, offline_payment_bytes, offline_payment_digest,
    wallet_key_set_bytes,
};
use crate::reason::{Reason, Rejected};
use crate::terminal::CURRENCY;

/// Most payments a wallet keeps received and not yet acknowledged by the platform: as many as
/// one key set carries.
pub const RECEIVED_PENDING_MAX: usize = dcpipe_schemas::OFFLINE_PAYMENTS_PER_KEY_SET_MAX;

/// Chains a wallet's own verifier caches: a wallet meets few payers between two syncs.
const WALLET_CHAIN_CACHE_ENTRIES: usize = 256;

/// What a wallet is given when it is provisioned, or restored from the platform's record.
#[derive(Debug)]
pub struct WalletProvisioning {
    /// The wallet and its institution.
    pub party: PartyRef,
    /// Its tier.
    pub tier: u8,
    /// Its wallet key and certificate (role `wallet`).
    pub key: CertifiedKey,
    /// The version of that key (1 at issuance).
    pub key_version: i32,
    /// Its offline limits.
    pub limits: OfflineLimits,
    /// DER certificates of the trust anchors: the central bank root and the institution CAs.
    pub trust_anchors: Vec<Vec<u8>>,
    /// Its last synchronization with the platform.
    pub last_sync_at_ms: i64,
    /// Its offline counter and chain head as the platform recorded them (0 and
    /// [`CHAIN_START`] for a new wallet).
    pub counter: i64,
    /// See `counter`.
    pub chain_head: Digest32,
    /// The purse balance (what the platform recorded).
    pub purse_fen: i64,
}

/// Why a wallet could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The trust anchors do not form a trust store (no root, a CA not issued by it…).
    #[error("trust anchors: {0}")]
    TrustAnchors(#[source] CertError),
    /// The key is not a wallet key of this wallet.
    #[error("the key's certificate is {role}/{institution}/{id}, not this wallet's wallet key")]
    WrongKey {
        /// Its role.
        role: String,
        /// Its institution.
        institution: String,
        /// Its id.
        id: String,
    },
    /// The key could not sign.
    #[error("signing: {0}")]
    Signing(#[from] KeyError),
    /// The purse cannot take the amount.
    #[error("the purse would hold {would_hold_fen} fen, above its limit of {limit_fen}")]
    PurseLimit {
        /// What it would hold.
        would_hold_fen: i64,
        /// Its limit.
        limit_fen: i64,
    },
    /// An amount that is not positive.
    #[error("amount {0} fen is not positive")]
    InvalidAmount(i64),
    /// A key set cannot be made without a satellite fix later than the last sync.
    #[error("satellite moment {satellite_at_ms} is before the last sync {last_sync_at_ms}")]
    TimeBeforeLastSync {
        /// The fix.
        satellite_at_ms: i64,
        /// The last sync.
        last_sync_at_ms: i64,
    },
    /// A record could not be encoded (a defect: the wallet made it).
    #[error("encoding: {0}")]
    Encoding(#[from] dcpipe_schemas::CodecError),
    /// A certificate for a rotated key came while the wallet had made no new key.
    #[error("no key rotation is waiting for a certificate")]
    NoRotationPending,
    /// The certificate offered for the new key does not chain, as a wallet certificate, to the
    /// wallet's trust anchors.
    #[error("the new key's certificate: {0}")]
    RotationCertificate(#[source] CertError),
    /// The certificate offered for the new key certifies another key.
    #[error("the certificate is not for the key the wallet made")]
    RotationKeyMismatch,
    /// A wallet key is certified by the wallet's own institution's CA only.
    #[error("the CA of {ca_institution} cannot certify a wallet key of {wallet_institution}")]
    NotTheInstitutionCa {
        /// The CA's institution (or role, when it is no institution CA).
        ca_institution: String,
        /// The wallet's institution.
        wallet_institution: String,
    },
    /// The institution's CA could not issue the certificate.
    #[error("issuing: {0}")]
    Issue(#[from] IssueError),
}

/// Why a wallet refuses to pay. Nothing was signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayRefusal {
    /// The wallet is locked (remote LOCK, or fraud evidence at its last sync).
    #[error("the wallet is locked")]
    Locked,
    /// The wallet is synchronizing: its key set is out and not answered yet.
    #[error("a key set is waiting for its answer")]
    Synchronizing,
    /// Offline longer than the tier's preset: the wallet must synchronize first.
    #[error("offline for {offline_ms} ms, more than the preset {max_ms} ms")]
    OfflineTooLong {
        /// Satellite moment − last sync.
        offline_ms: i64,
        /// The preset.
        max_ms: i64,
    },
    /// The satellite moment is before the last synchronization (a bad fix).
    #[error("the satellite moment is before the last synchronization")]
    TimeBeforeLastSync,
    /// Not a positive amount.
    #[error("amount {0} fen is not positive")]
    InvalidAmount(i64),
    /// The purse holds less than the amount.
    #[error("the purse holds {purse_fen} fen")]
    PurseInsufficient {
        /// What it holds.
        purse_fen: i64,
    },
    /// Above the single offline payment limit.
    #[error("above the single offline payment limit of {limit_fen} fen")]
    SinglePaymentLimit {
        /// The limit.
        limit_fen: i64,
    },
    /// As many offline payments as allowed between two synchronizations were made.
    #[error("{limit} offline payments since the last sync already")]
    PaymentCountLimit {
        /// The limit.
        limit: i64,
    },
    /// The amount would take the offline total since the last sync over its limit.
    #[error("{paid_fen} fen paid offline since the last sync; the limit is {limit_fen}")]
    CumulativeLimit {
        /// Paid since the last sync.
        paid_fen: i64,
        /// The limit.
        limit_fen: i64,
    },
    /// The payee is on the wallet's blacklist.
    #[error("the payee is blacklisted")]
    PayeeBlacklisted,
    /// A wallet does not pay itself.
    #[error("a wallet does not pay itself")]
    SelfPayment,
    /// The key could not sign.
    #[error("signing failed")]
    Signing,
}

impl PayRefusal {
    /// A stable name for reports (`purse_insufficient`); not a protocol reason code: these
    /// refusals happen on the device and never reach the platform.
    pub fn as_str(&self) -> &'static str {
        match self {
            PayRefusal::Locked => "locked",
            PayRefusal::Synchronizing => "synchronizing",
            PayRefusal::OfflineTooLong { .. } => "offline_too_long",
            PayRefusal::TimeBeforeLastSync => "time_before_last_sync",
            PayRefusal::InvalidAmount(_) => "invalid_amount",
            PayRefusal::PurseInsufficient { .. } => "purse_insufficient",
            PayRefusal::SinglePaymentLimit { .. } => "single_payment_limit",
            PayRefusal::PaymentCountLimit { .. } => "payment_count_limit",
            PayRefusal::CumulativeLimit { .. } => "cumulative_limit",
            PayRefusal::PayeeBlacklisted => "payee_blacklisted",
            PayRefusal::SelfPayment => "self_payment",
            PayRefusal::Signing => "signing",
        }
    }
}

/// Why a payee's wallet refuses an offline payment handed to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveRefusal {
    /// The payment fails a check; the reason is a protocol code (`offline.*`, `cert.*`,
    /// `schema.*`).
    #[error("{0}")]
    Refused(Rejected),
    /// The wallet holds as many unacknowledged received payments as a key set carries: it must
    /// synchronize first.
    #[error("{held} received payments wait for a sync")]
    Full {
        /// How many it holds.
        held: usize,
    },
}

/// A payment the payee's wallet took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Accepted now.
    New {
        /// Its offline-payment digest.
        digest: Digest32,
        /// Its amount.
        amount_fen: i64,
    },
    /// Handed over again: the wallet holds it already.
    AlreadyHeld,
}

/// One of the wallet's own payments since its last sync.
#[derive(Debug, Clone)]
struct Made {
    frame: Frame,
    amount_fen: i64,
}

/// A payment received and not yet acknowledged.
#[derive(Debug, Clone)]
struct Held {
    frame: Frame,
    digest: Digest32,
}

/// A key set made and not answered yet: resent byte for byte until its answer arrives.
#[derive(Debug, Clone)]
pub struct KeySetUpload {
    /// The key set.
    pub key_set: WalletKeySet,
    /// Its frame.
    pub frame: Vec<u8>,
    /// Its key-set digest, which the answer names.
    pub digest: Digest32,
}

/// What applying a sync result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncApplied {
    /// Accepted or rejected.
    pub status: SyncStatus,
    /// The reason of a rejection.
    pub reason_code: Option<String>,
    /// The actions the wallet took or must take (CLOCK_RESYNC: set the device clock to
    /// `platform_time_at_ms`).
    pub actions: Vec<WalletAction>,
    /// The platform's time.
    pub platform_time_at_ms: i64,
    /// How many remote commands follow.
    pub pending_commands: i64,
    /// Whether the platform's chain (counter, head) differs from the wallet's: a defect or a
    /// tampered wallet; the platform's record stands.
    pub chain_mismatch: bool,
}

/// Why a sync result was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncResultError {
    /// Not authentic, or not from the wallet's institution.
    #[error("{0}")]
    Refused(Rejected),
    /// It answers another key set than the one waiting (an old answer delivered again).
    #[error("the result answers another key set")]
    NotForThisUpload,
}

/// What applying a remote command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandApplied {
    /// Applied now.
    Applied(ControlCommand),
    /// Its sequence was applied before: nothing to do (a redelivery).
    AlreadyApplied,
}

/// A hard wallet (see the module documentation).
#[derive(Debug)]
pub struct HardWallet {
    party: PartyRef,
    tier: u8,
    key: CertifiedKey,
    key_version: i32,
    limits: OfflineLimits,
    trust_anchors: Vec<Vec<u8>>,
    verifier: Arc<ChainVerifier>,
    blacklist: BTreeSet<String>,
    last_sync_at_ms: i64,
    purse_fen: i64,
    counter: i64,
    chain_head: Digest32,
    made: Vec<Made>,
    received: Vec<Held>,
    /// Received digests by (payer institution, payer wallet, counter): a payee's own
    /// double-spend check.
    received_slots: BTreeMap<(String, String, i64), Digest32>,
    locked: bool,
    rotation_due: bool,
    /// The new key made for a rotation, waiting for its certificate.
    rotation_key: Option<PrivateKey>,
    commands_applied_through: i64,
    pending: Option<KeySetUpload>,
}

fn verifier_of(anchors: &[Vec<u8>]) -> Result<Arc<ChainVerifier>, CertError> {
    let certificates = anchors
        .iter()
        .map(|der| Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()?;
    let root = certificates
        .iter()
        .find(|c| c.role() == Some(Role::CentralBankRoot))
        .cloned()
        .ok_or_else(|| CertError::malformed("no central bank root among the trust anchors"))?;
    let mut store = TrustStore::new(root)?;
    for ca in certificates
        .into_iter()
        .filter(|c| c.role() == Some(Role::InstitutionCa))
    {
        store.add_institution_ca(ca)?;
    }
    Ok(Arc::new(ChainVerifier::with_cache_capacity(
        Arc::new(store),
        Arc::new(RevocationSet::new()),
        WALLET_CHAIN_CACHE_ENTRIES,
    )))
}

impl HardWallet {
    /// A wallet as provisioned (or restored from the platform's record of it).
    pub fn provision(provisioning: WalletProvisioning) -> Result<HardWallet, WalletError> {
        check_key(&provisioning.party, &provisioning.key)?;
        let verifier =
            verifier_of(&provisioning.trust_anchors).map_err(WalletError::TrustAnchors)?;
        Ok(HardWallet {
            party: provisioning.party,
            tier: provisioning.tier,
            key: provisioning.key,
            key_version: provisioning.key_version,
            limits: provisioning.limits,
            trust_anchors: provisioning.trust_anchors,
            verifier,
            blacklist: BTreeSet::new(),
            last_sync_at_ms: provisioning.last_sync_at_ms,
            purse_fen: provisioning.purse_fen,
            counter: provisioning.counter,
            chain_head: provisioning.chain_head,
            made: Vec::new(),
            received: Vec::new(),
            received_slots: BTreeMap::new(),
            locked: false,
            rotation_due: false,
            rotation_key: None,
            commands_applied_through: 0,
            pending: None,
        })
    }

    /// The wallet.
    pub fn party(&self) -> &PartyRef {
        &self.party
    }

    /// Its tier.
    pub fn tier(&self) -> u8 {
        self.tier
    }

    /// Its wallet key and certificate.
    pub fn key(&self) -> &CertifiedKey {
        &self.key
    }

    /// The version of its key.
    pub fn key_version(&self) -> i32 {
        self.key_version
    }

    /// Its offline limits.
    pub fn limits(&self) -> &OfflineLimits {
        &self.limits
    }

    /// The purse balance.
    pub fn purse_fen(&self) -> i64 {
        self.purse_fen
    }

    /// The last synchronization moment.
    pub fn last_sync_at_ms(&self) -> i64 {
        self.last_sync_at_ms
    }

    /// The counter of its last offline payment (0 before the first).
    pub fn counter(&self) -> i64 {
        self.counter
    }

    /// The offline-payment digest of its last offline payment ([`CHAIN_START`] before the
    /// first).
    pub fn chain_head(&self) -> Digest32 {
        self.chain_head
    }

    /// Whether it is locked.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Whether the platform asked for a new key.
    pub fn rotation_due(&self) -> bool {
        self.rotation_due
    }

    /// The blacklist received at its last synchronization.
    pub fn blacklist(&self) -> &BTreeSet<String> {
        &self.blacklist
    }

    /// The sequence of the last remote command it applied.
    pub fn commands_applied_through(&self) -> i64 {
        self.commands_applied_through
    }

    /// How many of its own payments since the last sync, and their total.
    pub fn made_since_sync(&self) -> (usize, i64) {
        (
            self.made.len(),
            self.made.iter().map(|m| m.amount_fen).sum(),
        )
    }

    /// How many received payments wait for the platform's acknowledgement.
    pub fn received_pending(&self) -> usize {
        self.received.len()
    }

    /// The key set waiting for its answer, if any.
    pub fn pending_upload(&self) -> Option<&KeySetUpload> {
        self.pending.as_ref()
    }

    /// The verifier built from its trust anchors.
    pub fn verifier(&self) -> &Arc<ChainVerifier> {
        &self.verifier
    }

    /// Adds `amount_fen` to the purse. The money has already moved from the wallet's online
    /// balance to its purse in the institution's ledger: this is the device's half.
    pub fn fund_purse(&mut self, amount_fen: i64) -> Result<(), WalletError> {
        if amount_fen <= 0 {
            return Err(WalletError::InvalidAmount(amount_fen));
        }
        let would_hold_fen = self.purse_fen.saturating_add(amount_fen);
        if would_hold_fen > self.limits.purse_limit_fen {
            return Err(WalletError::PurseLimit {
                would_hold_fen,
                limit_fen: self.limits.purse_limit_fen,
            });
        }
        self.purse_fen = would_hold_fen;
        Ok(())
    }

    /// Whether it is offline longer than its tier's preset at the satellite moment `fix`: it
    /// then makes its key set and pays no more until it synchronizes.
    pub fn offline_too_long(&self, fix: SatelliteFix) -> bool {
        offline_duration_ms(self.last_sync_at_ms, fix.at_ms) > self.limits.offline_duration_ms_max
    }

    /// Whether it has something to synchronize at `fix`: payments made or received, or an
    /// offline duration past the preset (then the key set is due even without payments).
    pub fn needs_sync(&self, fix: SatelliteFix) -> bool {
        !self.made.is_empty() || !self.received.is_empty() || self.offline_too_long(fix)
    }

    /// Pays `amount_fen` to `payee` offline at the satellite moment `fix`: checks every limit,
    /// signs the payment with the wallet key, advances the counter and the chain and takes the
    /// amount from the purse. The frame is what the payee's wallet receives.
    pub fn pay(
        &mut self,
        payee: &PartyRef,
        amount_fen: i64,
        fix: SatelliteFix,
    ) -> Result<Frame, PayRefusal> {
        if self.locked {
            return Err(PayRefusal::Locked);
        }
        if self.pending.is_some() {
            return Err(PayRefusal::Synchronizing);
        }
        if fix.at_ms < self.last_sync_at_ms {
            return Err(PayRefusal::TimeBeforeLastSync);
        }
        let offline_ms = offline_duration_ms(self.last_sync_at_ms, fix.at_ms);
        if offline_ms > self.limits.offline_duration_ms_max {
            return Err(PayRefusal::OfflineTooLong {
                offline_ms,
                max_ms: self.limits.offline_duration_ms_max,
            });
        }
        if payee == &self.party {
            return Err(PayRefusal::SelfPayment);
        }
        if self.blacklist.contains(&payee.wallet_id) {
            return Err(PayRefusal::PayeeBlacklisted);
        }
        if amount_fen <= 0 {
            return Err(PayRefusal::InvalidAmount(amount_fen));
        }
        if amount_fen > self.limits.single_payment_limit_fen {
            return Err(PayRefusal::SinglePaymentLimit {
                limit_fen: self.limits.single_payment_limit_fen,
            });
        }
        let (count, paid_fen) = self.made_since_sync();
        if i64::try_from(count).unwrap_or(i64::MAX) >= self.limits.payments_per_sync_max {
            return Err(PayRefusal::PaymentCountLimit {
                limit: self.limits.payments_per_sync_max,
            });
        }
        if paid_fen.saturating_add(amount_fen) > self.limits.cumulative_limit_fen {
            return Err(PayRefusal::CumulativeLimit {
                paid_fen,
                limit_fen: self.limits.cumulative_limit_fen,
            });
        }
        if amount_fen > self.purse_fen {
            return Err(PayRefusal::PurseInsufficient {
                purse_fen: self.purse_fen,
            });
        }
        let mut payment = OfflinePayment {
            payer: self.party.clone(),
            payee: payee.clone(),
            amount_fen,
            currency: CURRENCY.to_owned(),
            counter: self.counter + 1,
            previous_hash: self.chain_head,
            paid_at_ms: fix.at_ms,
            payer_certificate: self.key.certificate().der().to_vec(),
            signature: Vec::new(),
        };
        let input = offline_payment_bytes(&payment);
        payment.signature = self
            .key
            .key()
            .sign(&input)
            .map_err(|_| PayRefusal::Signing)?;
        let frame = Frame(dcpipe_schemas::encode(&payment).map_err(|_| PayRefusal::Signing)?);
        self.counter = payment.counter;
        self.chain_head = Digest32::from_bytes(crate::pki::sha256(&input));
        self.purse_fen -= amount_fen;
        self.made.push(Made {
            frame: frame.clone(),
            amount_fen,
        });
        Ok(frame)
    }

    /// Takes an offline payment handed over by a payer's wallet at the satellite moment `fix`:
    /// decodes and verifies it with the trust anchors of the last sync (chain, role, signature),
    /// checks that it pays this wallet, that the payer is not on the blacklist, that its time is
    /// plausible and that the payer did not use its counter for another payment already
    /// presented here.
    pub fn receive(
        &mut self,
        frame: &[u8],
        fix: SatelliteFix,
        paid_at_skew_ms_max: i64,
    ) -> Result<Received, ReceiveRefusal> {
        let verified =
            verify_offline_payment_frame(frame, &self.verifier).map_err(ReceiveRefusal::Refused)?;
        let VerifiedOfflinePayment {
            payment, digest, ..
        } = verified;
        let refuse =
            |reason, detail: String| ReceiveRefusal::Refused(Rejected::new(reason, detail));
        if payment.payee != self.party {
            return Err(refuse(
                Reason::OfflineWrongPayee,
                format!(
                    "the payment pays {}/{}",
                    payment.payee.institution_id, payment.payee.wallet_id
                ),
            ));
        }
        if self.blacklist.contains(&payment.payer.wallet_id) {
            return Err(refuse(
                Reason::OfflinePayerBlacklisted,
                format!("payer {} is blacklisted", payment.payer.wallet_id),
            ));
        }
        let skew_ms = payment
            .paid_at_ms
            .saturating_sub(fix.at_ms)
            .saturating_abs();
        if skew_ms > paid_at_skew_ms_max {
            return Err(refuse(
                Reason::OfflineTimeInvalid,
                format!("paid {skew_ms} ms from this wallet's satellite moment"),
            ));
        }
        let slot = (
            payment.payer.institution_id.clone(),
            payment.payer.wallet_id.clone(),
            payment.counter,
        );
        match self.received_slots.get(&slot) {
            Some(held) if *held == digest => return Ok(Received::AlreadyHeld),
            Some(_) => {
                return Err(refuse(
                    Reason::OfflineDoubleSpend,
                    format!(
                        "payer {} used counter {} for another payment",
                        payment.payer.wallet_id, payment.counter
                    ),
                ));
            }
            None => {}
        }
        if self.received.len() >= RECEIVED_PENDING_MAX {
            return Err(ReceiveRefusal::Full {
                held: self.received.len(),
            });
        }
        self.received_slots.insert(slot, digest);
        self.received.push(Held {
            frame: Frame(frame.to_vec()),
            digest,
        });
        Ok(Received::New {
            digest,
            amount_fen: payment.amount_fen,
        })
    }

    /// The key set to publish on reconnection at the satellite moment `fix`: the one still
    /// waiting for its answer if there is one (resent byte for byte), else a new one over the
    /// payments made and received since the last sync, signed with the wallet key.
    pub fn key_set(&mut self, fix: SatelliteFix) -> Result<KeySetUpload, WalletError> {
        if let Some(pending) = &self.pending {
            return Ok(pending.clone());
        }
        if fix.at_ms < self.last_sync_at_ms {
            return Err(WalletError::TimeBeforeLastSync {
                satellite_at_ms: fix.at_ms,
                last_sync_at_ms: self.last_sync_at_ms,
            });
        }
        let (count, total_fen) = self.made_since_sync();
        let mut key_set = WalletKeySet {
            wallet_id: self.party.wallet_id.clone(),
            institution_id: self.party.institution_id.clone(),
            key_version: self.key_version,
            public_key: self
                .key
                .certificate()
                .public_key()
                .to_spki_der()
                .map_err(WalletError::Signing)?,
            last_sync_at_ms: self.last_sync_at_ms,
            satellite_at_ms: fix.at_ms,
            offline_duration_ms: offline_duration_ms(self.last_sync_at_ms, fix.at_ms),
            offline_payments: OfflinePaymentSummary {
                count: i64::try_from(count).unwrap_or(i64::MAX),
                total_fen,
                chain_head: if count == 0 {
                    CHAIN_START
                } else {
                    self.chain_head
                },
            },
            certificate: self.key.certificate().der().to_vec(),
            signature: Vec::new(),
            payments: self.made.iter().map(|m| m.frame.clone()).collect(),
            received: self.received.iter().map(|h| h.frame.clone()).collect(),
            purse_fen: self.purse_fen,
            commands_applied_through: self.commands_applied_through,
            anchors_digest: Some(anchors_digest(self.trust_anchors.iter().map(Vec::as_slice))),
        };
        let received: Vec<Digest32> = self.received.iter().map(|h| h.digest).collect();
        let input = wallet_key_set_bytes(&key_set, &received);
        key_set.signature = self.key.key().sign(&input)?;
        let frame = dcpipe_schemas::encode(&key_set)?;
        let upload = KeySetUpload {
            key_set,
            frame,
            digest: key_set_digest(&input),
        };
        self.pending = Some(upload.clone());
        Ok(upload)
    }

    /// Applies the platform's answer to the waiting key set, after checking that the wallet's
    /// institution signed it. Accepted: the wallet takes the platform's moment as its last
    /// sync, drops the payments the set carried (the platform holds them now), and applies the
    /// new limits, blacklist, trust anchors and actions. Rejected: it keeps its payments and
    /// makes a new key set next time.
    pub fn apply_sync_result(
        &mut self,
        result: &WalletSyncResult,
        institution_verifier: &ChainVerifier,
    ) -> Result<SyncApplied, SyncResultError> {
        verify_sync_result(result, &self.party, institution_verifier)
            .map_err(SyncResultError::Refused)?;
        let Some(pending) = &self.pending else {
            return Err(SyncResultError::NotForThisUpload);
        };
        if result.key_set_digest != Some(pending.digest) {
            return Err(SyncResultError::NotForThisUpload);
        }
        let carried_made = pending.key_set.payments.len();
        let carried_received = pending.key_set.received.len();
        self.pending = None;
        let mut chain_mismatch = false;
        if result.status == SyncStatus::Accepted {
            self.last_sync_at_ms = result.platform_time_at_ms;
            self.made.drain(..carried_made.min(self.made.len()));
            for held in self
                .received
                .drain(..carried_received.min(self.received.len()))
            {
                self.received_slots
                    .retain(|_, digest| *digest != held.digest);
            }
            chain_mismatch = result.counter != self.counter
                || result.chain_head.unwrap_or(CHAIN_START) != self.chain_head;
            self.purse_fen = result.purse_fen;
            if let Some(limits) = result.offline_limits {
                self.limits = limits;
            }
            if result.actions.contains(&WalletAction::BlacklistUpdate) {
                self.blacklist = result.blacklist.iter().cloned().collect();
            }
            if !result.trust_anchors.is_empty() {
                let anchors: Vec<Vec<u8>> =
                    result.trust_anchors.iter().map(|a| a.0.clone()).collect();
                if let Ok(verifier) = verifier_of(&anchors) {
                    self.verifier = verifier;
                    self.trust_anchors = anchors;
                }
            }
        }
        if result.actions.contains(&WalletAction::Lock) {
            self.locked = true;
        }
        if result.actions.contains(&WalletAction::KeyRotation) {
            self.rotation_due = true;
        }
        Ok(SyncApplied {
            status: result.status,
            reason_code: result.reason_code.clone(),
            actions: result.actions.clone(),
            platform_time_at_ms: result.platform_time_at_ms,
            pending_commands: result.pending_commands,
            chain_mismatch,
        })
    }

    /// Applies a remote command after checking that the wallet's institution signed it for this
    /// wallet: each sequence number once, and only the next one (a command ahead of it is
    /// refused with `remote.out_of_order` and applies when delivered again in turn).
    pub fn apply_command(
        &mut self,
        command: &RemoteControlCommand,
        institution_verifier: &ChainVerifier,
    ) -> Result<CommandApplied, Rejected> {
        verify_command(command, &self.party, institution_verifier)?;
        if command.sequence <= self.commands_applied_through {
            return Ok(CommandApplied::AlreadyApplied);
        }
        if command.sequence != self.commands_applied_through + 1 {
            return Err(Rejected::new(
                Reason::RemoteOutOfOrder,
                format!(
                    "command {} arrived before {}",
                    command.sequence,
                    self.commands_applied_through + 1
                ),
            ));
        }
        match command.command {
            ControlCommand::Lock => self.locked = true,
            ControlCommand::Unlock => self.locked = false,
            ControlCommand::LimitChange => {
                if let Some(limits) = command.offline_limits {
                    self.limits = limits;
                }
            }
            ControlCommand::BlacklistUpdate => {
                self.blacklist = command.blacklist.iter().cloned().collect();
            }
        }
        self.commands_applied_through = command.sequence;
        Ok(CommandApplied::Applied(command.command))
    }

    /// Takes a new wallet key (issued by its institution's CA after a KEY_ROTATION action): its
    /// version is one more than the last. The payments already made stay signed by the old key.
    pub fn rotate_key(&mut self, key: CertifiedKey) -> Result<(), WalletError> {
        check_key(&self.party, &key)?;
        self.key = key;
        self.key_version += 1;
        self.rotation_due = false;
        self.rotation_key = None;
        Ok(())
    }

    /// The first half of a key rotation, in the secure element: makes a new key of the
    /// algorithm of the current one and keeps it, and returns what the wallet's institution
    /// needs to certify it. Asked again before the certificate came, it returns the same key
    /// (a request lost on the way is sent again). The wallet keeps paying with its current key
    /// until [`HardWallet::complete_key_rotation`].
    pub fn request_key_rotation(&mut self) -> Result<KeyRotationRequest, WalletError> {
        if self.rotation_key.is_none() {
            self.rotation_key = Some(PrivateKey::generate(self.key.certificate().algorithm())?);
        }
        let public_key = self
            .rotation_key
            .as_ref()
            .map(|key| key.public_key().clone())
            .ok_or(WalletError::NoRotationPending)?;
        Ok(KeyRotationRequest {
            party: self.party.clone(),
            key_version: self.key_version + 1,
            public_key,
        })
    }

    /// The second half of a key rotation: takes the certificate its institution's CA issued for
    /// the key made by [`HardWallet::request_key_rotation`], after checking it with the wallet's
    /// own trust anchors at `at_ms` — a `wallet` certificate of this wallet, chaining through
    /// its institution's CA to the root, for that very key. The new key signs from now on,
    /// under a key version one higher: the next key set carries both, and the payments made
    /// before stay signed by the old key.
    pub fn complete_key_rotation(
        &mut self,
        certificate_der: &[u8],
        at_ms: i64,
    ) -> Result<(), WalletError> {
        let Some(key) = self.rotation_key.as_ref() else {
            return Err(WalletError::NoRotationPending);
        };
        let certificate =
            Certificate::from_der(certificate_der).map_err(WalletError::RotationCertificate)?;
        if certificate.public_key() != key.public_key() {
            return Err(WalletError::RotationKeyMismatch);
        }
        self.verifier
            .verify(certificate_der, at_ms, Role::Wallet)
            .map_err(WalletError::RotationCertificate)?;
        check_certificate(&self.party, &certificate)?;
        let key = self
            .rotation_key
            .take()
            .ok_or(WalletError::NoRotationPending)?;
        self.rotate_key(CertifiedKey::new(certificate, key)?)
    }

    /// The offline payments it made since the last sync, as frames, oldest first.
    pub fn made_frames(&self) -> impl Iterator<Item = &Frame> {
        self.made.iter().map(|m| &m.frame)
    }

    /// The digest the wallet's next payment will chain from.
    pub fn next_previous_hash(&self) -> Digest32 {
        self.chain_head
    }

    /// Forgets every payment made since the last sync and rewinds its counter, purse and chain
    /// to the state before them: what a tampered secure element does to spend its purse twice.
    /// Only the load test's and the tests' double spender calls it.
    pub fn rewind_for_double_spending(
        &mut self,
        counter: i64,
        chain_head: Digest32,
        purse_fen: i64,
    ) {
        self.made.clear();
        self.counter = counter;
        self.chain_head = chain_head;
        self.purse_fen = purse_fen;
    }
}

/// A new wallet key a wallet made for a rotation, for its institution's CA to certify.
#[derive(Debug, Clone)]
pub struct KeyRotationRequest {
    /// The wallet.
    pub party: PartyRef,
    /// The key version the key will have (the current one + 1).
    pub key_version: i32,
    /// The new public key.
    pub public_key: PublicKey,
}

/// The institution's side of a key rotation: its CA (`ca`, the institution CA of the wallet's
/// institution, issued by the root) certifies the new key as the wallet key of the requesting
/// wallet, valid from `valid_from_ms` to `valid_until_ms`. Another institution's CA refuses.
pub fn certify_rotated_key(
    ca: &CertifiedKey,
    request: &KeyRotationRequest,
    valid_from_ms: i64,
    valid_until_ms: i64,
) -> Result<Certificate, WalletError> {
    certify_wallet_key(
        ca,
        &request.party,
        &request.public_key,
        valid_from_ms,
        valid_until_ms,
    )
}

/// Issues the wallet certificate of `party` for `public_key` as its institution's CA (`ca`,
/// issued by the root), valid from `valid_from_ms` to `valid_until_ms`; the CA of another
/// institution, or a key that is not an institution CA's, refuses. What `dcpipe pki
/// certify-wallet-key` does with a key a wallet handed in.
pub fn certify_wallet_key(
    ca: &CertifiedKey,
    party: &PartyRef,
    public_key: &PublicKey,
    valid_from_ms: i64,
    valid_until_ms: i64,
) -> Result<Certificate, WalletError> {
    let issuer = ca.certificate();
    if issuer.role() != Some(Role::InstitutionCa) || issuer.institution() != party.institution_id {
        return Err(WalletError::NotTheInstitutionCa {
            ca_institution: if issuer.role() == Some(Role::InstitutionCa) {
                issuer.institution().to_owned()
            } else {
                issuer.role_name().to_owned()
            },
            wallet_institution: party.institution_id.clone(),
        });
    }
    let template = CertificateTemplate::for_role(
        Role::Wallet,
        &party.wallet_id,
        &party.institution_id,
        valid_from_ms,
        valid_until_ms,
    );
    Ok(ca.issue(&template, public_key)?)
}

/// Checks that `key` is a wallet key of `party`.
fn check_key(party: &PartyRef, key: &CertifiedKey) -> Result<(), WalletError> {
    check_certificate(party, key.certificate())
}

/// Checks that `certificate` is a wallet certificate of `party`.
fn check_certificate(party: &PartyRef, certificate: &Certificate) -> Result<(), WalletError> {
    if certificate.role() != Some(Role::Wallet)
        || certificate.id() != party.wallet_id
        || certificate.institution() != party.institution_id
    {
        return Err(WalletError::WrongKey {
            role: certificate.role_name().to_owned(),
            institution: certificate.institution().to_owned(),
            id: certificate.id().to_owned(),
        });
    }
    Ok(())
}

/// The digest of an offline payment frame the wallet made (for tests and the load test).
pub fn digest_of_frame(frame: &Frame) -> Option<Digest32> {
    dcpipe_schemas::decode::<OfflinePayment>(frame.as_bytes())
        .ok()
        .map(|payment| offline_payment_digest(&payment))
}

/// A second handle on a certified key (the private key copied through its PKCS#8 form): for
/// the simulations that hand a wallet its key while a PKI directory keeps the original.
pub fn copied_key(key: &CertifiedKey) -> Result<CertifiedKey, WalletError> {
    let der = key.key().to_pkcs8_der().map_err(WalletError::Signing)?;
    let private = crate::pki::PrivateKey::from_pkcs8_der(&der).map_err(WalletError::Signing)?;
    CertifiedKey::new(key.certificate().clone(), private).map_err(|e| WalletError::WrongKey {
        role: e.to_string(),
        institution: key.certificate().institution().to_owned(),
        id: key.certificate().id().to_owned(),
    })
}
