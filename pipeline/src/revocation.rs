//! Certificate revocations reach every worker through `pki.revocation`.
//!
//! An institution CA (or the root) signs a [`RevocationUpdate`] listing serials it issued; each
//! worker process follows the subject from the beginning ([`RevocationFollower`]), checks each
//! update's signature against the CA in its trust store and adds the serials to the revocation
//! set its verifiers consult on every verification, cached chains included.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dcpipe_connectors::bus::{Bus, BusError, ReplayFrom, ReplayRequest};
use dcpipe_schemas::{Digest32, RevocationUpdate, RevocationUpdateId, RevokedCertificate};
use tokio_util::sync::CancellationToken;

use crate::pki::{Certificate, CertifiedKey, ChainVerifier, KeyError, RevocationSet};
use crate::protocol::revocation_update_bytes;
use crate::reason::Reason;
use crate::subjects;

/// Follows `pki.revocation` and applies every update to this process's revocation set.
///
/// It reads the subject by replay, not in a consumer group: every process needs every update,
/// and a group per process would leave a durable consumer behind on the broker at each restart.
#[derive(Debug)]
pub struct RevocationFollower {
    verifier: Arc<ChainVerifier>,
    revocations: Arc<RevocationSet>,
    /// Next offset to read, per partition.
    next: HashMap<u32, u64>,
    /// Bus time of the newest update read.
    newest_ms: Option<i64>,
}

/// How often the follower looks for new updates.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// How far before the newest update read each poll starts again, so that an update stored
/// with a slightly earlier bus time (another partition, another broker clock) is not missed.
pub const FOLLOW_OVERLAP_MS: i64 = 5 * 60 * 1000;

/// Records read per replay batch.
const REPLAY_BATCH_MAX: usize = 256;

impl RevocationFollower {
    /// A follower feeding `revocations`.
    pub fn new(verifier: Arc<ChainVerifier>, revocations: Arc<RevocationSet>) -> Self {
        RevocationFollower {
            verifier,
            revocations,
            next: HashMap::new(),
            newest_ms: None,
        }
    }

    /// Applies every update published since the last call; returns how many serials were new.
    /// Updates that fail their checks are logged and counted, and skipped.
    pub async fn poll(&mut self, bus: &dyn Bus) -> Result<usize, BusError> {
        // By time, not offset: on Kafka an offset would apply to every partition, and a
        // partition never seen yet would be skipped. Records already read are skipped by their
        // position.
        let from = match self.newest_ms {
            None => ReplayFrom::Beginning,
            Some(newest_ms) => ReplayFrom::TimeMs(newest_ms - FOLLOW_OVERLAP_MS),
        };
        let mut replay = bus
            .replay(ReplayRequest {
                subject: subjects::PKI_REVOCATION.to_owned(),
                from,
                until_ms: None,
            })
            .await?;
        let mut added = 0;
        loop {
            let records = replay.next_batch(REPLAY_BATCH_MAX).await?;
            if records.is_empty() {
                return Ok(added);
            }
            for record in records {
                let next = self.next.entry(record.position.partition).or_insert(0);
                if record.position.offset < *next {
                    continue;
                }
                *next = record.position.offset + 1;
                self.newest_ms = Some(self.newest_ms.unwrap_or(i64::MIN).max(record.timestamp_ms));
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
                        tracing::warn!(%reason, %detail, "revocation update refused");
                        metrics::counter!("dcpipe_pki_revocation_updates_refused_total", "reason" => reason.as_str()).increment(1);
                    }
                }
            }
        }
    }

    /// Polls every [`FOLLOW_INTERVAL`] until `shutdown` is cancelled.
    pub async fn run(mut self, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(FOLLOW_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => {
                    if let Err(e) = self.poll(bus.as_ref()).await {
                        tracing::warn!(error = %e, "revocations not read; retried");
                    }
                }
            }
        }
    }

    fn apply(&self, update: &RevocationUpdate) -> Result<usize, (Reason, String)> {
        let store = self.verifier.trust_store();
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
        let records = replay.next_batch(REPLAY_BATCH_MAX).await?;
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
