//! Synchronization, the platform's side: verifying a wallet's key set against what the platform
//! recorded of the wallet, deciding the new record and the actions, and the signed answer.
//!
//! [`verify_key_set`] is pure and public, with typed results: the stages, the audit and the load
//! test's crypto ceiling call it. Its checks, in order (docs/PROTOCOL.md, "Offline wallets"):
//!
//! 1. the key set is for this institution (`wallet.wrong_institution`, dead-lettered: nobody
//!    here can answer for another institution), and the platform has a record of the wallet
//!    (`wallet.unknown`);
//! 2. it is the key set last accepted, delivered again: the stored answer is sent again
//!    ([`KeySetVerdict::Duplicate`]);
//! 3. the satellite moment is within the bound of the platform clock
//!    (`wallet.satellite_time_skew`);
//! 4. the wallet certificate chains to the root with role `wallet`, valid at the satellite
//!    moment and not revoked (`cert.*`), is the wallet named and holds the key carried
//!    (`wallet.certificate_mismatch`); the wallet's signature (`wallet.signature_invalid`).
//!    Under a key version above the recorded one (a rotation), a certificate that does not make
//!    the new key a wallet key issued by the wallet's institution's CA — another institution's
//!    CA issued it, or no CA of the trust store, or for another role — is
//!    `wallet.rotation_uncertified`;
//! 5. the wallet is not blacklisted (`wallet.blacklisted`);
//! 6. the key version never goes down (`wallet.key_version_lowered`), and the key is the one
//!    recorded for it, or a new key under a higher version (a rotation) (`wallet.key_unknown`);
//! 7. the last synchronization is the one recorded: earlier is a replay
//!    (`wallet.keyset_replayed`), anything else, or a duration that is not satellite moment −
//!    last sync, is inconsistent (`wallet.duration_inconsistent`);
//! 8. its own payments: each a valid frame (`wallet.record_malformed`) paid by this wallet with
//!    one of its wallet keys (`wallet.record_foreign`), verifying (`offline.*`, `cert.*`), made
//!    between the last sync and the satellite moment (`offline.time_invalid`), continuing the
//!    hash chain from the recorded counter and head (`wallet.chain_broken`);
//! 9. the summary equals the records: count, total, head (`wallet.summary_mismatch`).
//!
//! A failure of any of these rejects the key set as a whole. Received payments are checked one
//! by one; one that fails is refused on its own (listed in the answer) and the others clear.

use dcpipe_schemas::{
    Der, Digest32, OfflineLimits, OfflinePayment, PartyRef, PaymentId, RefusedPayment, SyncStatus,
    WalletAction, WalletKeySet, WalletSyncResult,
};

use super::double_spend::PaymentToClear;
use super::limits::SyncPolicy;
use super::payment::{VerifiedOfflinePayment, verify_offline_payment};
use super::time::offline_duration_ms;
use crate::pki::{
    CertErrorKind, CertifiedKey, ChainVerifier, KeyError, Role, VerifiedIdentity, sha256,
};
use crate::protocol::{
    CHAIN_START, key_set_digest, offline_payment_digest, offline_payment_id, wallet_key_set_bytes,
    wallet_sync_result_bytes,
};
use crate::reason::{Reason, Rejected};

/// What the platform records of one of its wallets between two synchronizations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletRecord {
    /// The wallet.
    pub party: PartyRef,
    /// The version of the key the platform holds for it.
    pub key_version: i32,
    /// SHA-256 of that key's DER SubjectPublicKeyInfo.
    pub key_fingerprint: [u8; 32],
    /// The wallet's last synchronization (the platform time of the last accepted answer).
    pub last_sync_at_ms: i64,
    /// The counter of the last payment of the wallet's chain the platform holds (0: none).
    pub counter: i64,
    /// That payment's offline-payment digest ([`CHAIN_START`] when none).
    pub chain_head: Digest32,
    /// The purse the platform records: funded, minus the wallet's payments it cleared.
    pub purse_fen: i64,
    /// The wallet's offline limits.
    pub limits: OfflineLimits,
    /// Since when the wallet is locked, if it is.
    pub locked_at_ms: Option<i64>,
    /// Since when the wallet is blacklisted (fraud evidence), if it is.
    pub blacklisted_at_ms: Option<i64>,
    /// The key-set digest of the last key set accepted.
    pub last_key_set: Option<Digest32>,
    /// The last remote command the wallet said it applied.
    pub commands_applied_through: i64,
    /// The version of the blacklist the wallet was last sent.
    pub blacklist_version: i64,
}

/// SHA-256 of a DER SubjectPublicKeyInfo: how the platform records a wallet key.
pub fn key_fingerprint(public_key_der: &[u8]) -> [u8; 32] {
    sha256(public_key_der)
}

/// Why a key set was refused, and whether anyone can be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRejection {
    /// The reason and detail.
    pub rejected: Rejected,
    /// False when no answer can be made here (a key set for another institution): it is
    /// dead-lettered instead.
    pub answerable: bool,
}

/// A received payment the platform will not clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedReceived {
    /// Its payment id (for a frame that does not decode: derived from SHA-256 of the frame).
    pub payment_id: PaymentId,
    /// Why.
    pub rejected: Rejected,
}

/// A key set whose every check passed.
#[derive(Debug, Clone)]
pub struct VerifiedKeySet {
    /// Its key-set digest.
    pub digest: Digest32,
    /// The wallet's certificate, verified.
    pub wallet: VerifiedIdentity,
    /// A new key under a higher version: its version and fingerprint.
    pub rotation: Option<(i32, [u8; 32])>,
    /// Its own payments, verified and chained, in counter order.
    pub payments: Vec<VerifiedOfflinePayment>,
    /// Its received payments that verified and pay this wallet (duplicates removed).
    pub received: Vec<VerifiedOfflinePayment>,
    /// Its received payments refused.
    pub refused: Vec<RefusedReceived>,
    /// Satellite moment − last sync.
    pub offline_duration_ms: i64,
    /// Own payments beyond the wallet's offline limits: evidence of a tampered wallet (the
    /// payments still clear).
    pub limit_violations: Vec<String>,
    /// The key set's satellite moment.
    pub satellite_at_ms: i64,
    /// The last remote command the wallet applied.
    pub commands_applied_through: i64,
    /// The digest of the anchors the wallet holds.
    pub anchors_digest: Option<Digest32>,
}

/// What the platform makes of a key set.
#[derive(Debug, Clone)]
pub enum KeySetVerdict {
    /// The key set accepted last, delivered again: send the stored answer again, change
    /// nothing.
    Duplicate,
    /// Refused as a whole.
    Rejected(SyncRejection),
    /// Every check passed.
    Verified(Box<VerifiedKeySet>),
}

/// When a payer's wallet was locked or blacklisted, as far as this platform knows: payments it
/// made from then on are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PayerStanding {
    /// Locked since.
    pub locked_at_ms: Option<i64>,
    /// Blacklisted since.
    pub blacklisted_at_ms: Option<i64>,
}

impl PayerStanding {
    /// Why a payment made at `paid_at_ms` by this payer is refused, if it is.
    pub fn refuses(&self, paid_at_ms: i64) -> Option<Reason> {
        if self.blacklisted_at_ms.is_some_and(|at| paid_at_ms >= at) {
            Some(Reason::OfflinePayerBlacklisted)
        } else if self.locked_at_ms.is_some_and(|at| paid_at_ms >= at) {
            Some(Reason::OfflinePayerLocked)
        } else {
            None
        }
    }
}

fn reject(reason: Reason, detail: impl Into<String>) -> KeySetVerdict {
    KeySetVerdict::Rejected(SyncRejection {
        rejected: Rejected::new(reason, detail),
        answerable: true,
    })
}

/// Verifies a key set received by `institution` at `now_ms` against the platform's `record` of
/// the wallet (see the module documentation for the checks and their order). `payer_standing`
/// tells whether the payers of received payments were locked or blacklisted.
pub fn verify_key_set(
    set: &WalletKeySet,
    record: Option<&WalletRecord>,
    institution: &str,
    verifier: &ChainVerifier,
    policy: &SyncPolicy,
    now_ms: i64,
    payer_standing: &dyn Fn(&PartyRef) -> PayerStanding,
) -> KeySetVerdict {
    if set.institution_id != institution {
        return KeySetVerdict::Rejected(SyncRejection {
            rejected: Rejected::new(
                Reason::WalletWrongInstitution,
                format!(
                    "the wallet is held by {}, not {institution}",
                    set.institution_id
                ),
            ),
            answerable: false,
        });
    }
    let Some(record) = record else {
        return reject(
            Reason::WalletUnknown,
            format!("no offline record of wallet {}", set.wallet_id),
        );
    };
    let input = key_set_input(set);
    let digest = key_set_digest(&input);
    if record.last_key_set == Some(digest) {
        return KeySetVerdict::Duplicate;
    }
    let skew_ms = set.satellite_at_ms.saturating_sub(now_ms).saturating_abs();
    if skew_ms > policy.satellite_skew_ms_max {
        return reject(
            Reason::WalletSatelliteTimeSkew,
            format!(
                "satellite moment is {skew_ms} ms from the platform clock (at most {})",
                policy.satellite_skew_ms_max
            ),
        );
    }
    // A raised key version brings a new key: its certificate must make it a wallet key of
    // this wallet issued by the wallet's institution's CA, or the rotation is refused as such.
    let rotating = set.key_version > record.key_version;
    let wallet = match verifier.verify(&set.certificate, set.satellite_at_ms, Role::Wallet) {
        Ok(identity) => identity,
        Err(e) if rotating && !certifies_institution_key(e.kind()) => {
            return reject(
                Reason::WalletRotationUncertified,
                format!("the new key of version {}: {e}", set.key_version),
            );
        }
        Err(e) => {
            return reject(
                Reason::Certificate(e.kind()),
                format!("wallet certificate: {e}"),
            );
        }
    };
    if rotating && wallet.institution_id() != set.institution_id {
        return reject(
            Reason::WalletRotationUncertified,
            format!(
                "the new key of version {} is certified for {}, not {}",
                set.key_version,
                wallet.institution_id(),
                set.institution_id
            ),
        );
    }
    if wallet.id() != set.wallet_id || wallet.institution_id() != set.institution_id {
        return reject(
            Reason::WalletCertificateMismatch,
            format!(
                "the certificate is {}/{}, the key set names {}/{}",
                wallet.institution_id(),
                wallet.id(),
                set.institution_id,
                set.wallet_id
            ),
        );
    }
    match wallet.public_key().to_spki_der() {
        Ok(der) if der == set.public_key => {}
        _ => {
            return reject(
                Reason::WalletCertificateMismatch,
                "public_key is not the certificate's key",
            );
        }
    }
    if let Err(e) = wallet.public_key().verify(&input, &set.signature) {
        return reject(Reason::WalletSignature, e.to_string());
    }
    if record.blacklisted_at_ms.is_some() {
        return reject(Reason::WalletBlacklisted, "the wallet is blacklisted");
    }
    let fingerprint = key_fingerprint(&set.public_key);
    let rotation = if set.key_version < record.key_version {
        return reject(
            Reason::WalletKeyVersionLowered,
            format!(
                "key version {} below the recorded {}",
                set.key_version, record.key_version
            ),
        );
    } else if set.key_version == record.key_version {
        if fingerprint != record.key_fingerprint {
            return reject(
                Reason::WalletKeyUnknown,
                format!("not the key recorded for version {}", set.key_version),
            );
        }
        None
    } else if fingerprint == record.key_fingerprint {
        return reject(
            Reason::WalletKeyUnknown,
            "a higher key version for the key already recorded",
        );
    } else {
        Some((set.key_version, fingerprint))
    };
    if set.last_sync_at_ms < record.last_sync_at_ms {
        return reject(
            Reason::WalletKeySetReplayed,
            format!(
                "made after the sync of {}, before the last one of {}",
                set.last_sync_at_ms, record.last_sync_at_ms
            ),
        );
    }
    let duration_ms = offline_duration_ms(set.last_sync_at_ms, set.satellite_at_ms);
    if set.last_sync_at_ms != record.last_sync_at_ms
        || set.satellite_at_ms < set.last_sync_at_ms
        || set.offline_duration_ms != duration_ms
    {
        return reject(
            Reason::WalletDurationInconsistent,
            format!(
                "last sync {} and duration {} ms; the platform recorded {} and the satellite \
                 moment gives {duration_ms} ms",
                set.last_sync_at_ms, set.offline_duration_ms, record.last_sync_at_ms
            ),
        );
    }
    let payments = match verify_own_payments(set, record, verifier) {
        Ok(payments) => payments,
        Err(rejected) => {
            return KeySetVerdict::Rejected(SyncRejection {
                rejected,
                answerable: true,
            });
        }
    };
    let total_fen: i64 = payments.iter().map(|p| p.payment.amount_fen).sum();
    let head = payments.last().map_or(CHAIN_START, |p| p.digest);
    let count = i64::try_from(payments.len()).unwrap_or(i64::MAX);
    if set.offline_payments.count != count
        || set.offline_payments.total_fen != total_fen
        || set.offline_payments.chain_head != head
    {
        return reject(
            Reason::WalletSummaryMismatch,
            format!(
                "summary says {} payments, {} fen; the records hold {count}, {total_fen} fen",
                set.offline_payments.count, set.offline_payments.total_fen
            ),
        );
    }
    let limit_violations = limit_violations(&payments, record);
    let party = PartyRef {
        institution_id: set.institution_id.clone(),
        wallet_id: set.wallet_id.clone(),
    };
    let (received, refused) = check_received(set, &party, verifier, payer_standing);
    KeySetVerdict::Verified(Box::new(VerifiedKeySet {
        digest,
        wallet,
        rotation,
        payments,
        received,
        refused,
        offline_duration_ms: duration_ms,
        limit_violations,
        satellite_at_ms: set.satellite_at_ms,
        commands_applied_through: set.commands_applied_through,
        anchors_digest: set.anchors_digest,
    }))
}

/// Whether a chain failure of this kind leaves the certificate issued by the right CA (it is
/// expired, revoked, malformed…): the failure is then told as it is, a `cert.*` code. The other
/// kinds say the key is not certified by the wallet's institution as a wallet key: another
/// institution's CA issued it, no CA of the trust store did, or not for the role `wallet`.
fn certifies_institution_key(kind: CertErrorKind) -> bool {
    !matches!(
        kind,
        CertErrorKind::UnknownIssuer
            | CertErrorKind::SignatureInvalid
            | CertErrorKind::WrongIssuer
            | CertErrorKind::InstitutionMismatch
            | CertErrorKind::WrongRole
    )
}

/// The key set's signing input. A received frame enters by the offline-payment digest of the
/// payment it carries; one that does not decode (refused on its own later) enters by the
/// SHA-256 of its bytes, which no wallet signs, so such a set fails its signature check.
pub fn key_set_input(set: &WalletKeySet) -> Vec<u8> {
    let received: Vec<Digest32> = set
        .received
        .iter()
        .map(|frame| {
            dcpipe_schemas::decode::<OfflinePayment>(frame.as_bytes())
                .map(|p| offline_payment_digest(&p))
                .unwrap_or_else(|_| Digest32::from_bytes(sha256(frame.as_bytes())))
        })
        .collect();
    wallet_key_set_bytes(set, &received)
}

/// Step 8: the wallet's own payments, chained from the record.
fn verify_own_payments(
    set: &WalletKeySet,
    record: &WalletRecord,
    verifier: &ChainVerifier,
) -> Result<Vec<VerifiedOfflinePayment>, Rejected> {
    let mut verified = Vec::with_capacity(set.payments.len());
    let mut counter = record.counter;
    let mut head = record.chain_head;
    for (index, frame) in set.payments.iter().enumerate() {
        let payment: OfflinePayment = dcpipe_schemas::decode(frame.as_bytes()).map_err(|e| {
            Rejected::new(
                Reason::WalletRecordMalformed,
                format!("payments[{index}]: {e}"),
            )
        })?;
        if payment.payer.wallet_id != set.wallet_id
            || payment.payer.institution_id != set.institution_id
        {
            return Err(Rejected::new(
                Reason::WalletRecordForeign,
                format!(
                    "payments[{index}] is paid by {}/{}",
                    payment.payer.institution_id, payment.payer.wallet_id
                ),
            ));
        }
        let payment = verify_offline_payment(&payment, verifier).map_err(|mut rejected| {
            if rejected.reason == Reason::OfflinePartyMismatch {
                rejected.reason = Reason::WalletRecordForeign;
            }
            rejected.detail = format!("payments[{index}]: {}", rejected.detail);
            rejected
        })?;
        if payment.payment.counter != counter + 1 || payment.payment.previous_hash != head {
            return Err(Rejected::new(
                Reason::WalletChainBroken,
                format!(
                    "payments[{index}] has counter {} after {counter}, or does not chain from \
                     its head",
                    payment.payment.counter
                ),
            ));
        }
        if payment.payment.paid_at_ms < set.last_sync_at_ms
            || payment.payment.paid_at_ms > set.satellite_at_ms
        {
            return Err(Rejected::new(
                Reason::OfflineTimeInvalid,
                format!(
                    "payments[{index}] was paid at {}, outside the offline period",
                    payment.payment.paid_at_ms
                ),
            ));
        }
        counter = payment.payment.counter;
        head = payment.digest;
        verified.push(payment);
    }
    Ok(verified)
}

/// The wallet's own payments beyond its offline limits, as evidence.
fn limit_violations(payments: &[VerifiedOfflinePayment], record: &WalletRecord) -> Vec<String> {
    let limits = &record.limits;
    let mut violations = Vec::new();
    let mut paid_fen = 0i64;
    for (index, verified) in payments.iter().enumerate() {
        let payment = &verified.payment;
        paid_fen = paid_fen.saturating_add(payment.amount_fen);
        if payment.amount_fen > limits.single_payment_limit_fen {
            violations.push(format!("payments[{index}] above the single payment limit"));
        }
        if i64::try_from(index).unwrap_or(i64::MAX) >= limits.payments_per_sync_max {
            violations.push(format!("payments[{index}] beyond the payments per sync"));
        }
        if paid_fen > limits.cumulative_limit_fen {
            violations.push(format!("payments[{index}] beyond the cumulative limit"));
        }
        if payment.paid_at_ms.saturating_sub(record.last_sync_at_ms)
            > limits.offline_duration_ms_max
        {
            violations.push(format!(
                "payments[{index}] paid past the preset offline duration"
            ));
        }
    }
    violations
}

/// Checks the received payments one by one.
fn check_received(
    set: &WalletKeySet,
    party: &PartyRef,
    verifier: &ChainVerifier,
    payer_standing: &dyn Fn(&PartyRef) -> PayerStanding,
) -> (Vec<VerifiedOfflinePayment>, Vec<RefusedReceived>) {
    let mut accepted: Vec<VerifiedOfflinePayment> = Vec::new();
    let mut refused = Vec::new();
    for frame in &set.received {
        let payment: OfflinePayment = match dcpipe_schemas::decode(frame.as_bytes()) {
            Ok(payment) => payment,
            Err(e) => {
                refused.push(RefusedReceived {
                    payment_id: offline_payment_id(&Digest32::from_bytes(sha256(frame.as_bytes()))),
                    rejected: Rejected::new(Reason::Schema(e.kind()), e.to_string()),
                });
                continue;
            }
        };
        let verified = match verify_offline_payment(&payment, verifier) {
            Ok(verified) => verified,
            Err(rejected) => {
                refused.push(RefusedReceived {
                    payment_id: offline_payment_id(&offline_payment_digest(&payment)),
                    rejected,
                });
                continue;
            }
        };
        let refusal = if &payment.payee != party {
            Some(Rejected::new(
                Reason::OfflineWrongPayee,
                format!(
                    "it pays {}/{}",
                    payment.payee.institution_id, payment.payee.wallet_id
                ),
            ))
        } else {
            payer_standing(&payment.payer)
                .refuses(payment.paid_at_ms)
                .map(|reason| Rejected::new(reason, format!("payer {}", payment.payer.wallet_id)))
        };
        match refusal {
            Some(rejected) => refused.push(RefusedReceived {
                payment_id: verified.payment_id,
                rejected,
            }),
            None if accepted.iter().any(|a| a.digest == verified.digest) => {}
            None => accepted.push(verified),
        }
    }
    (accepted, refused)
}

/// What the platform knows besides the wallet's record when it decides.
#[derive(Debug, Clone, Copy)]
pub struct SyncContext<'a> {
    /// The blacklist every wallet must hold, and its version.
    pub blacklist: &'a [String],
    /// Incremented whenever the blacklist changes.
    pub blacklist_version: i64,
    /// The trust anchors (root and institution CAs), DER.
    pub trust_anchors: &'a [Der],
    /// Their digest ([`crate::protocol::anchors_digest`]).
    pub anchors_digest: Digest32,
    /// Remote commands waiting for the wallet after the one it last applied.
    pub pending_commands: i64,
    /// The policy.
    pub policy: &'a SyncPolicy,
    /// Whether the institution ordered the wallet to rotate its key (and no key set under a
    /// new key was accepted since).
    pub rotation_ordered: bool,
    /// The platform clock.
    pub now_ms: i64,
}

/// The platform's decision on a verified key set.
#[derive(Debug, Clone)]
pub struct SyncDecision {
    /// The wallet's record after this sync, before its own payments are cleared (the clearing
    /// sets the purse, and locks and blacklists the wallet on evidence).
    pub record: WalletRecord,
    /// The wallet's own payments to clear, in counter order: the purse pays them, and the
    /// double-spending rule decides ([`super::clear_payer_payments`]). Payments made after the
    /// wallet was locked are not among them but among `refused`.
    pub own_payments: Vec<PaymentToClear>,
    /// Received payments to clear at their payers' institutions.
    pub received: Vec<VerifiedOfflinePayment>,
    /// Payments refused (received ones, and own ones made after a lock).
    pub refused: Vec<RefusedPayment>,
    /// The actions, before the clearing adds LOCK on evidence.
    pub actions: Vec<WalletAction>,
    /// Send the blacklist.
    pub send_blacklist: bool,
    /// Send the trust anchors.
    pub send_anchors: bool,
    /// Whether the wallet's own payments hold evidence already (limits exceeded).
    pub evidence: Vec<String>,
}

/// Decides what an accepted key set changes: the record (last sync = now, the chain advanced
/// over the payments, the key rotated), which payments clear, which are refused, and the
/// actions for the wallet. `KEY_ROTATION` asks the wallet for a new key when the institution
/// ordered it or the wallet was offline longer than the policy's bound, until a key set under a
/// new key is accepted.
pub fn decide_sync(
    record: &WalletRecord,
    verified: &VerifiedKeySet,
    context: &SyncContext<'_>,
) -> SyncDecision {
    let mut next = record.clone();
    next.last_sync_at_ms = context.now_ms;
    next.last_key_set = Some(verified.digest);
    next.commands_applied_through = verified
        .commands_applied_through
        .max(record.commands_applied_through);
    if let Some((version, fingerprint)) = verified.rotation {
        next.key_version = version;
        next.key_fingerprint = fingerprint;
    }
    if let Some(last) = verified.payments.last() {
        next.counter = last.payment.counter;
        next.chain_head = last.digest;
    }
    let mut own_payments = Vec::new();
    let mut refused: Vec<RefusedPayment> = verified
        .refused
        .iter()
        .map(|r| RefusedPayment {
            payment_id: r.payment_id,
            reason_code: r.rejected.reason.as_str().to_owned(),
        })
        .collect();
    for payment in &verified.payments {
        let after_lock = record
            .locked_at_ms
            .is_some_and(|at| payment.payment.paid_at_ms >= at);
        if after_lock {
            refused.push(RefusedPayment {
                payment_id: payment.payment_id,
                reason_code: Reason::OfflinePayerLocked.as_str().to_owned(),
            });
        } else {
            own_payments.push(PaymentToClear {
                payment_id: payment.payment_id,
                digest: payment.digest,
                counter: payment.payment.counter,
                amount_fen: payment.payment.amount_fen,
            });
        }
    }
    refused.truncate(dcpipe_schemas::REFUSED_PAYMENTS_MAX);
    let mut actions = Vec::new();
    if verified.offline_duration_ms > record.limits.offline_duration_ms_max {
        actions.push(WalletAction::ClockResync);
    }
    let rotation_wanted = context.rotation_ordered
        || verified.offline_duration_ms > context.policy.key_rotation_offline_ms;
    if verified.rotation.is_none() && rotation_wanted {
        actions.push(WalletAction::KeyRotation);
    }
    if record.locked_at_ms.is_some() || !verified.limit_violations.is_empty() {
        actions.push(WalletAction::Lock);
    }
    let send_blacklist = record.blacklist_version < context.blacklist_version;
    if send_blacklist {
        actions.push(WalletAction::BlacklistUpdate);
        next.blacklist_version = context.blacklist_version;
    }
    SyncDecision {
        record: next,
        own_payments,
        received: verified.received.clone(),
        refused,
        actions,
        send_blacklist,
        send_anchors: verified.anchors_digest != Some(context.anchors_digest),
        evidence: verified.limit_violations.clone(),
    }
}

/// The answer to an accepted key set, before it is signed: `record` is the wallet's record
/// after the sync and its clearing (purse, lock), `fraud` whether the clearing found evidence
/// (then the answer adds LOCK and, the blacklist having grown, BLACKLIST_UPDATE).
pub fn accepted_result(
    decision: &SyncDecision,
    record: &WalletRecord,
    fraud: bool,
    context: &SyncContext<'_>,
) -> WalletSyncResult {
    let mut actions = decision.actions.clone();
    let mut blacklist = Vec::new();
    if fraud && !actions.contains(&WalletAction::Lock) {
        actions.push(WalletAction::Lock);
    }
    if decision.send_blacklist || fraud {
        if !actions.contains(&WalletAction::BlacklistUpdate) {
            actions.push(WalletAction::BlacklistUpdate);
        }
        blacklist = context
            .blacklist
            .iter()
            .take(dcpipe_schemas::BLACKLIST_ENTRIES_MAX)
            .cloned()
            .collect();
    }
    WalletSyncResult {
        wallet_id: record.party.wallet_id.clone(),
        institution_id: record.party.institution_id.clone(),
        key_version: record.key_version,
        status: SyncStatus::Accepted,
        reason_code: None,
        actions,
        platform_time_at_ms: context.now_ms,
        institution_certificate: Vec::new(),
        institution_signature: Vec::new(),
        key_set_digest: Some(decision.record.last_key_set.unwrap_or(CHAIN_START)),
        counter: record.counter,
        chain_head: (record.counter > 0).then_some(record.chain_head),
        purse_fen: record.purse_fen,
        offline_limits: Some(record.limits),
        blacklist,
        trust_anchors: if decision.send_anchors {
            context
                .trust_anchors
                .iter()
                .take(dcpipe_schemas::TRUST_ANCHORS_MAX)
                .cloned()
                .collect()
        } else {
            Vec::new()
        },
        refused: decision.refused.clone(),
        pending_commands: context.pending_commands,
    }
}

/// The answer to a rejected key set, before it is signed: the platform's record unchanged.
pub fn rejected_result(
    set: &WalletKeySet,
    record: Option<&WalletRecord>,
    rejected: &Rejected,
    now_ms: i64,
) -> WalletSyncResult {
    let digest = key_set_digest(&key_set_input(set));
    WalletSyncResult {
        wallet_id: set.wallet_id.clone(),
        institution_id: set.institution_id.clone(),
        key_version: record.map_or(0, |r| r.key_version),
        status: SyncStatus::Rejected,
        reason_code: Some(rejected.reason.as_str().to_owned()),
        actions: Vec::new(),
        platform_time_at_ms: now_ms,
        institution_certificate: Vec::new(),
        institution_signature: Vec::new(),
        key_set_digest: Some(digest),
        counter: record.map_or(0, |r| r.counter),
        chain_head: record.filter(|r| r.counter > 0).map(|r| r.chain_head),
        purse_fen: record.map_or(0, |r| r.purse_fen),
        offline_limits: None,
        blacklist: Vec::new(),
        trust_anchors: Vec::new(),
        refused: Vec::new(),
        pending_commands: 0,
    }
}

/// Signs a sync result with the institution signer's key (its certificate goes in the result).
pub fn sign_sync_result(
    mut result: WalletSyncResult,
    signer: &CertifiedKey,
) -> Result<WalletSyncResult, KeyError> {
    result.institution_certificate = signer.certificate().der().to_vec();
    result.institution_signature = signer.key().sign(&wallet_sync_result_bytes(&result))?;
    Ok(result)
}

/// Checks a sync result as its wallet does: for this wallet, signed by an institution signer of
/// the wallet's own institution whose chain verifies at the result's time.
pub fn verify_sync_result(
    result: &WalletSyncResult,
    wallet: &PartyRef,
    verifier: &ChainVerifier,
) -> Result<(), Rejected> {
    if result.wallet_id != wallet.wallet_id || result.institution_id != wallet.institution_id {
        return Err(Rejected::new(
            Reason::RemoteWrongWallet,
            format!(
                "the result is for {}/{}",
                result.institution_id, result.wallet_id
            ),
        ));
    }
    let signer = super::control::verify_wallet_institution_signer(
        &result.institution_certificate,
        result.platform_time_at_ms,
        wallet,
        verifier,
    )?;
    signer
        .public_key()
        .verify(
            &wallet_sync_result_bytes(result),
            &result.institution_signature,
        )
        .map_err(|e| Rejected::new(Reason::InstitutionSignature, e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pki::{
        AlgorithmChoice, CertificateTemplate, DemoPkiOptions, PkiDirectory, PrivateKey,
        RevocationSet, SpecialCertificate, SubjectSpec,
    };
    use crate::wallet::device::{
        HardWallet, WalletError, WalletProvisioning, certify_rotated_key, copied_key,
    };
    use crate::wallet::limits::OFFLINE_TIER_4;
    use crate::wallet::time::SatelliteFix;

    /// Two institutions; wallet 0 of the first institution, with key version 1 recorded.
    struct Setup {
        pki: PkiDirectory,
        verifier: Arc<ChainVerifier>,
        anchors: Vec<Vec<u8>>,
        party: PartyRef,
        other_institution: String,
        record: WalletRecord,
        t0: i64,
    }

    fn setup() -> Setup {
        let t0 = crate::clock::system_now_ms();
        let pki = PkiDirectory::generate(&DemoPkiOptions::new(2, 2, AlgorithmChoice::P256, t0))
            .expect("PKI");
        let (wallet_id, keys) = pki.wallets().next().expect("wallet");
        let party = PartyRef {
            institution_id: keys.institution.clone(),
            wallet_id: wallet_id.to_owned(),
        };
        let other_institution = pki
            .institutions()
            .map(|(id, _)| id.to_owned())
            .find(|id| *id != party.institution_id)
            .expect("two institutions");
        let spki = keys
            .wallet
            .certificate()
            .public_key()
            .to_spki_der()
            .expect("spki");
        let record = WalletRecord {
            party: party.clone(),
            key_version: 1,
            key_fingerprint: key_fingerprint(&spki),
            last_sync_at_ms: t0,
            counter: 0,
            chain_head: CHAIN_START,
            purse_fen: 0,
            limits: OFFLINE_TIER_4,
            locked_at_ms: None,
            blacklisted_at_ms: None,
            last_key_set: None,
            commands_applied_through: 0,
            blacklist_version: 0,
        };
        let mut anchors = vec![pki.root().certificate().der().to_vec()];
        anchors.extend(
            pki.institutions()
                .map(|(_, k)| k.ca.certificate().der().to_vec()),
        );
        let verifier = Arc::new(ChainVerifier::new(
            Arc::clone(pki.trust_store()),
            Arc::new(RevocationSet::new()),
        ));
        Setup {
            pki,
            verifier,
            anchors,
            party,
            other_institution,
            record,
            t0,
        }
    }

    impl Setup {
        /// The wallet holding `key` under `key_version`, at the recorded last sync.
        fn wallet(&self, key: CertifiedKey, key_version: i32) -> HardWallet {
            HardWallet::provision(WalletProvisioning {
                party: self.party.clone(),
                tier: 4,
                key,
                key_version,
                limits: OFFLINE_TIER_4,
                trust_anchors: self.anchors.clone(),
                last_sync_at_ms: self.t0,
                counter: 0,
                chain_head: CHAIN_START,
                purse_fen: 0,
            })
            .expect("provisioned")
        }

        fn original_key(&self) -> CertifiedKey {
            copied_key(&self.pki.wallet(&self.party.wallet_id).expect("keys").wallet).expect("copy")
        }

        /// What the platform makes of the key set `wallet` makes a second after t0.
        fn verdict(&self, wallet: &mut HardWallet) -> KeySetVerdict {
            let at_ms = self.t0 + 1_000;
            let set = wallet
                .key_set(SatelliteFix { at_ms })
                .expect("key set")
                .key_set;
            verify_key_set(
                &set,
                Some(&self.record),
                &self.party.institution_id,
                &self.verifier,
                &SyncPolicy::default(),
                at_ms,
                &|_| PayerStanding::default(),
            )
        }

        /// A wallet certificate naming this wallet and `institution` as its O, for a fresh key,
        /// issued by the CA of `issuer`.
        fn issued_by(&self, issuer: &str, institution: &str) -> CertifiedKey {
            let ca = &self.pki.institution(issuer).expect("institution").ca;
            let template = CertificateTemplate::for_role(
                Role::Wallet,
                &self.party.wallet_id,
                institution,
                self.t0 - 60_000,
                self.t0 + 86_400_000,
            );
            let key = PrivateKey::generate(crate::pki::Algorithm::EcdsaP256Sha256).expect("key");
            let certificate = ca.issue(&template, key.public_key()).expect("issued");
            CertifiedKey::new(certificate, key).expect("pair")
        }
    }

    fn refused_with(verdict: KeySetVerdict, reason: Reason) {
        match verdict {
            KeySetVerdict::Rejected(rejection) => {
                assert_eq!(rejection.rejected.reason, reason, "{}", rejection.rejected);
                assert!(rejection.answerable);
            }
            other => panic!("expected {reason}, got {other:?}"),
        }
    }

    #[test]
    fn a_new_key_certified_by_the_wallets_institution_under_a_raised_version_is_a_rotation() {
        let setup = setup();
        let mut wallet = setup.wallet(setup.original_key(), 1);
        let request = wallet.request_key_rotation().expect("a new key");
        assert_eq!(request.key_version, 2);
        // Asked again before the certificate came: the same key.
        assert_eq!(
            wallet.request_key_rotation().expect("again").public_key,
            request.public_key
        );
        let ca = &setup
            .pki
            .institution(&setup.party.institution_id)
            .expect("institution")
            .ca;
        let certificate =
            certify_rotated_key(ca, &request, setup.t0 - 60_000, setup.t0 + 86_400_000)
                .expect("certified");
        wallet
            .complete_key_rotation(certificate.der(), setup.t0)
            .expect("rotated");
        assert_eq!(wallet.key_version(), 2);
        let spki = request.public_key.to_spki_der().expect("spki");
        match setup.verdict(&mut wallet) {
            KeySetVerdict::Verified(verified) => {
                assert_eq!(verified.rotation, Some((2, key_fingerprint(&spki))));
            }
            other => panic!("expected a rotation, got {other:?}"),
        }
    }

    #[test]
    fn a_raised_version_whose_key_the_wallets_institution_did_not_certify_is_refused() {
        let setup = setup();
        let own = setup.party.institution_id.clone();
        let other = setup.other_institution.clone();
        // Issued by the other institution's CA, naming the wallet's institution.
        let mut wallet = setup.wallet(setup.issued_by(&other, &own), 2);
        refused_with(
            setup.verdict(&mut wallet),
            Reason::WalletRotationUncertified,
        );
        // Issued by a CA no trust store knows.
        let rogue = setup
            .pki
            .issue_special(
                SpecialCertificate::UnknownIssuer,
                &SubjectSpec {
                    role: Role::Wallet,
                    id: &setup.party.wallet_id,
                    institution: &own,
                    algorithm: crate::pki::Algorithm::EcdsaP256Sha256,
                },
                setup.t0,
                &RevocationSet::new(),
            )
            .expect("rogue");
        let mut wallet = setup.wallet(rogue, 2);
        refused_with(
            setup.verdict(&mut wallet),
            Reason::WalletRotationUncertified,
        );
        // Under the recorded version, the same certificates are what they are.
        let mut wallet = setup.wallet(setup.issued_by(&other, &own), 1);
        refused_with(
            setup.verdict(&mut wallet),
            Reason::Certificate(CertErrorKind::InstitutionMismatch),
        );
    }

    #[test]
    fn a_raised_version_certified_for_another_institution_is_refused_as_uncertified() {
        let setup = setup();
        let other = setup.other_institution.clone();
        // A wallet certificate of the other institution, for a wallet of the same id. The
        // device itself refuses a key of another institution, so the set is made by hand.
        let foreign = setup.issued_by(&other, &other);
        let mut wallet = setup.wallet(setup.original_key(), 2);
        let at_ms = setup.t0 + 1_000;
        let mut set = wallet
            .key_set(SatelliteFix { at_ms })
            .expect("key set")
            .key_set;
        set.certificate = foreign.certificate().der().to_vec();
        set.public_key = foreign
            .certificate()
            .public_key()
            .to_spki_der()
            .expect("spki");
        set.signature = foreign.key().sign(&key_set_input(&set)).expect("signs");
        let verdict = verify_key_set(
            &set,
            Some(&setup.record),
            &setup.party.institution_id,
            &setup.verifier,
            &SyncPolicy::default(),
            at_ms,
            &|_| PayerStanding::default(),
        );
        refused_with(verdict, Reason::WalletRotationUncertified);
    }

    #[test]
    fn a_lower_key_version_is_refused() {
        let setup = setup();
        let mut record = setup.record.clone();
        record.key_version = 3;
        let mut wallet = setup.wallet(setup.original_key(), 2);
        let at_ms = setup.t0 + 1_000;
        let set = wallet
            .key_set(SatelliteFix { at_ms })
            .expect("key set")
            .key_set;
        let verdict = verify_key_set(
            &set,
            Some(&record),
            &setup.party.institution_id,
            &setup.verifier,
            &SyncPolicy::default(),
            at_ms,
            &|_| PayerStanding::default(),
        );
        refused_with(verdict, Reason::WalletKeyVersionLowered);
    }

    #[test]
    fn an_order_asks_for_a_new_key_until_one_is_accepted() {
        let setup = setup();
        let mut wallet = setup.wallet(setup.original_key(), 1);
        let KeySetVerdict::Verified(verified) = setup.verdict(&mut wallet) else {
            panic!("verified");
        };
        let policy = SyncPolicy::default();
        let context = |rotation_ordered| SyncContext {
            blacklist: &[],
            blacklist_version: 0,
            trust_anchors: &[],
            anchors_digest: CHAIN_START,
            pending_commands: 0,
            policy: &policy,
            rotation_ordered,
            now_ms: setup.t0 + 1_000,
        };
        let ordered = decide_sync(&setup.record, &verified, &context(true));
        assert!(ordered.actions.contains(&WalletAction::KeyRotation));
        let not_ordered = decide_sync(&setup.record, &verified, &context(false));
        assert!(!not_ordered.actions.contains(&WalletAction::KeyRotation));
        // The key set under the new key: the record takes it, no more asking.
        let mut rotated = (*verified).clone();
        rotated.rotation = Some((2, [7; 32]));
        let decision = decide_sync(&setup.record, &rotated, &context(true));
        assert!(!decision.actions.contains(&WalletAction::KeyRotation));
        assert_eq!(
            (decision.record.key_version, decision.record.key_fingerprint),
            (2, [7; 32])
        );
    }

    #[test]
    fn a_wallet_takes_only_a_certificate_of_its_new_key_from_its_institutions_ca() {
        let setup = setup();
        let own = setup.party.institution_id.clone();
        let other = setup.other_institution.clone();
        let mut wallet = setup.wallet(setup.original_key(), 1);
        // No new key made yet.
        assert!(matches!(
            wallet.complete_key_rotation(setup.issued_by(&own, &own).certificate().der(), setup.t0),
            Err(WalletError::NoRotationPending)
        ));
        let request = wallet.request_key_rotation().expect("a new key");
        // Another institution's CA does not certify it.
        let other_ca = &setup.pki.institution(&other).expect("other").ca;
        assert!(matches!(
            certify_rotated_key(other_ca, &request, setup.t0, setup.t0 + 86_400_000),
            Err(WalletError::NotTheInstitutionCa { .. })
        ));
        // A certificate of another key.
        assert!(matches!(
            wallet.complete_key_rotation(setup.issued_by(&own, &own).certificate().der(), setup.t0),
            Err(WalletError::RotationKeyMismatch)
        ));
        // The new key certified by the other institution's CA in the wallet's name.
        let template = CertificateTemplate::for_role(
            Role::Wallet,
            &setup.party.wallet_id,
            &own,
            setup.t0 - 60_000,
            setup.t0 + 86_400_000,
        );
        let forged = other_ca
            .issue(&template, &request.public_key)
            .expect("issued");
        assert!(matches!(
            wallet.complete_key_rotation(forged.der(), setup.t0),
            Err(WalletError::RotationCertificate(_))
        ));
        // Nothing changed: the old key still signs, under version 1.
        assert_eq!(wallet.key_version(), 1);
        let ca = &setup.pki.institution(&own).expect("own").ca;
        let certificate =
            certify_rotated_key(ca, &request, setup.t0 - 60_000, setup.t0 + 86_400_000)
                .expect("certified");
        wallet
            .complete_key_rotation(certificate.der(), setup.t0)
            .expect("rotated");
        assert_eq!(wallet.key_version(), 2);
        assert_eq!(wallet.key().certificate().public_key(), &request.public_key);
    }
}
