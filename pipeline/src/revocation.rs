//! Certificate revocations reach every worker through `pki.revocation`.
//!
//! An institution CA (or the root) signs a [`RevocationUpdate`] listing serials it issued; each
//! worker process follows the subject from the beginning ([`RevocationFollower`]), checks each
//! update's signature against the CA in its trust store and adds the serials to the revocation
//! set its verifiers consult on every verification, cached chains included.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dcpipe_connectors::bus::{
    Bus, BusError, BusErrorKind, Follow, Outgoing, Record, ReplayFrom, ReplayRequest, SubjectSpec,
    dead_letter_subject, header,
};
use dcpipe_schemas::{
    DeadLetter, Digest32, RevocationUpdate, RevocationUpdateId, RevokedCertificate,
};
use tokio_util::sync::CancellationToken;

use crate::pki::{Certificate, CertifiedKey, ChainVerifier, KeyError, RevocationSet, TrustStore};
use crate::protocol::revocation_update_bytes;
use crate::reason::Reason;
use crate::runtime::{Follower, keep_following};
use crate::subjects;

/// Follows `pki.revocation` and applies every update to this process's revocation set.
///
/// It reads the subject with one long-lived follower ([`Bus::follow`]), not in a consumer
/// group and not by a replay per look: every process needs every update, a group per process
/// would leave a durable consumer behind on the broker at each restart, and a replay per look
/// made one broker consumer per process every few hundred milliseconds.
#[derive(Debug)]
pub struct RevocationFollower {
    verifier: Arc<ChainVerifier>,
    revocations: Arc<RevocationSet>,
    /// Next offset to read, per partition: what a new follower reads again is skipped.
    next: HashMap<u32, u64>,
    /// Updates read (applied or refused).
    updates_read: usize,
}

/// Longest wait of one read for a new update (a shutdown interrupts it).
pub const FOLLOW_WAIT: Duration = Duration::from_secs(1);

/// The stage name of the follower's dead letters (`deadletter.revocation`).
pub const DEAD_LETTER_STAGE: &str = "revocation";

/// Records read per batch.
const READ_BATCH_MAX: usize = 256;

impl RevocationFollower {
    /// A follower feeding `revocations`.
    pub fn new(verifier: Arc<ChainVerifier>, revocations: Arc<RevocationSet>) -> Self {
        RevocationFollower {
            verifier,
            revocations,
            next: HashMap::new(),
            updates_read: 0,
        }
    }

    /// Updates read so far, applied or refused.
    pub fn updates_read(&self) -> usize {
        self.updates_read
    }

    /// Reads what `follow` has (waiting up to `wait` for it) and applies it; returns how many
    /// serials were new. An update that fails its checks is dead-lettered on `bus` with its
    /// original bytes and its `revocation.*` (or `schema.*`) reason, logged and counted, and
    /// skipped. On an error, follow again: what was read is skipped, and an update whose dead
    /// letter could not be stored is read (and dead-lettered, under the same message id) again.
    pub async fn read(
        &mut self,
        follow: &mut dyn Follow,
        bus: &dyn Bus,
        wait: Duration,
    ) -> Result<usize, BusError> {
        let mut added = 0;
        for record in follow.next_batch(READ_BATCH_MAX, wait).await? {
            let next = self.next.get(&record.position.partition).copied();
            if next.is_some_and(|next| record.position.offset < next) {
                continue;
            }
            match dcpipe_schemas::decode::<RevocationUpdate>(&record.payload)
                .map_err(|e| (Reason::Schema(e.kind()), e.to_string()))
                .and_then(|update| self.apply(&update).map(|n| (update.sequence, n)))
            {
                Ok((sequence, n)) => {
                    tracing::info!(sequence, added = n, "revocations applied");
                    metrics::counter!("dcpipe_pki_revocations_applied_total")
                        .increment(u64::try_from(n).unwrap_or(0));
                    added += n;
                }
                Err((reason, detail)) => {
                    tracing::warn!(%reason, %detail, "revocation update refused; dead-lettered");
                    dead_letter(bus, &record, reason, &detail).await?;
                    metrics::counter!("dcpipe_pki_revocation_updates_refused_total", "reason" => reason.as_str()).increment(1);
                }
            }
            self.next
                .insert(record.position.partition, record.position.offset + 1);
            self.updates_read += 1;
        }
        Ok(added)
    }

    /// Follows `pki.revocation` until `shutdown` is cancelled, following again with a backoff
    /// when the bus fails.
    pub async fn run(mut self, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
        keep_following("revocations", &mut self, bus.as_ref(), &shutdown).await;
    }

    fn apply(&self, update: &RevocationUpdate) -> Result<usize, (Reason, String)> {
        let issuer = verify_update(self.verifier.trust_store(), update)?;
        self.revocations
            .revoke_many(
                update
                    .revoked
                    .iter()
                    .map(|r| (*issuer.fingerprint(), r.serial.as_slice())),
            )
            .map_err(|e| (Reason::RevocationFull, e.to_string()))
    }
}

/// Checks a revocation update: its issuer is the root or an institution CA of `store`, named by
/// its fingerprint, and its signature verifies. Returns the issuer. Workers apply what passes;
/// the audit rebuilds the revocation history from it.
pub fn verify_update(
    store: &TrustStore,
    update: &RevocationUpdate,
) -> Result<Certificate, (Reason, String)> {
    let issuer = Certificate::from_der(&update.issuer_certificate).map_err(|e| {
        (
            Reason::RevocationUnknownIssuer,
            format!("issuer certificate: {e}"),
        )
    })?;
    let known = std::iter::once(store.root())
        .chain(store.institution_ca(issuer.institution()))
        .any(|ca| ca.der() == issuer.der());
    if !known || issuer.fingerprint() != update.issuer_fingerprint.as_bytes() {
        return Err((
            Reason::RevocationUnknownIssuer,
            "the issuer is not a CA of the trust store".to_owned(),
        ));
    }
    issuer
        .public_key()
        .verify(&revocation_update_bytes(update), &update.signature)
        .map_err(|e| (Reason::RevocationSignatureInvalid, e.to_string()))?;
    Ok(issuer)
}

impl Follower for RevocationFollower {
    /// One reader, read until the bus fails.
    async fn follow_until_error(&mut self, bus: &dyn Bus) -> BusError {
        let mut follow = match bus.follow(subjects::PKI_REVOCATION).await {
            Ok(follow) => follow,
            Err(e) => return e,
        };
        loop {
            if let Err(e) = self.read(follow.as_mut(), bus, FOLLOW_WAIT).await {
                return e;
            }
        }
    }
}

/// Publishes the dead letter of a refused update on `deadletter.revocation`. Every process
/// follows the subject and refuses the same update: the message id, the update's position, lets
/// the bus keep one dead letter per update (within its duplicate window).
async fn dead_letter(
    bus: &dyn Bus,
    record: &Record,
    reason: Reason,
    detail: &str,
) -> Result<(), BusError> {
    let mut letter = DeadLetter {
        original: record.payload.to_vec(),
        original_size_bytes: i64::try_from(record.payload.len()).unwrap_or(i64::MAX),
        subject: record.subject.clone(),
        stage: DEAD_LETTER_STAGE.to_owned(),
        reason_code: reason.as_str().to_owned(),
        detail: detail.to_owned(),
        delivery_count: 1,
        partition: i32::try_from(record.position.partition).unwrap_or(i32::MAX),
        offset: i64::try_from(record.position.offset).unwrap_or(i64::MAX),
        received_at_ms: crate::clock::system_now_ms(),
        headers: record.headers.iter().cloned().collect(),
    };
    letter.truncate_to_limits();
    let payload = dcpipe_schemas::encode(&letter).map_err(|e| {
        BusError::new(
            BusErrorKind::Publish,
            format!("dead letter does not encode: {e}"),
        )
    })?;
    let subject = dead_letter_subject(DEAD_LETTER_STAGE);
    bus.ensure_subject(&SubjectSpec::new(subject.clone()))
        .await?;
    let msg_id = format!(
        "{subject}/{}/{}",
        record.position.partition, record.position.offset
    );
    bus.publish(
        Outgoing::new(subject, Bytes::from(payload))
            .with_msg_id(msg_id)
            .with_header(header::DEAD_LETTER_STAGE, DEAD_LETTER_STAGE)
            .with_header(header::DEAD_LETTER_REASON, reason.as_str())
            .with_header(header::DEAD_LETTER_SUBJECT, record.subject.clone()),
    )
    .await?;
    metrics::counter!("dcpipe_dead_letters_total", "stage" => DEAD_LETTER_STAGE, "reason" => reason.as_str()).increment(1);
    Ok(())
}

/// A revocation update for `certificates`, all issued by `issuer`, signed by the issuer.
pub fn revocation_update(
    issuer: &CertifiedKey,
    certificates: &[&Certificate],
    reason: &str,
    sequence: i64,
    now_ms: i64,
) -> Result<RevocationUpdate, KeyError> {
    let serials: Vec<Vec<u8>> = certificates.iter().map(|c| c.serial().to_vec()).collect();
    revocation_update_of_serials(issuer, &serials, reason, sequence, now_ms)
}

/// The reasons a revocation may give: RFC 5280's CRLReason names.
pub const REVOCATION_REASONS: [&str; 10] = [
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "removeFromCRL",
    "privilegeWithdrawn",
    "aACompromise",
];

/// The sequence the next update of the CA whose certificate has `issuer_fingerprint` takes:
/// one more than the highest of its updates on `pki.revocation` (read by replay, outside any
/// group), 1 for its first.
pub async fn next_revocation_sequence(
    bus: &dyn Bus,
    issuer_fingerprint: &[u8; 32],
) -> Result<i64, BusError> {
    let mut replay = bus
        .replay(ReplayRequest {
            subject: subjects::PKI_REVOCATION.to_owned(),
            from: ReplayFrom::Beginning,
            until_ms: None,
        })
        .await?;
    let mut highest = 0;
    loop {
        let records = replay.next_batch(READ_BATCH_MAX).await?;
        if records.is_empty() {
            return Ok(highest + 1);
        }
        for record in records {
            if let Ok(update) = dcpipe_schemas::decode::<RevocationUpdate>(&record.payload)
                && update.issuer_fingerprint.as_bytes() == issuer_fingerprint
            {
                highest = highest.max(update.sequence);
            }
        }
    }
}

/// A revocation update for certificates of `issuer` named by their serials (the content
/// octets of their DER INTEGER, PROTOCOL.md §8), signed by the issuer.
pub fn revocation_update_of_serials(
    issuer: &CertifiedKey,
    serials: &[Vec<u8>],
    reason: &str,
    sequence: i64,
    now_ms: i64,
) -> Result<RevocationUpdate, KeyError> {
    let mut update = RevocationUpdate {
        update_id: RevocationUpdateId::random(),
        sequence,
        issuer_fingerprint: Digest32::from_bytes(*issuer.certificate().fingerprint()),
        revoked: serials
            .iter()
            .map(|serial| RevokedCertificate {
                serial: serial.clone(),
                revoked_at_ms: now_ms,
                reason: reason.to_owned(),
            })
            .collect(),
        issued_at_ms: now_ms,
        issuer_certificate: issuer.certificate().der().to_vec(),
        signature: Vec::new(),
    };
    update.signature = issuer.key().sign(&revocation_update_bytes(&update))?;
    Ok(update)
}
