//! Certificate revocations reach every worker through `pki.revocation`.
//!
//! An institution CA (or the root) signs a [`RevocationUpdate`] listing serials it issued; each
//! worker process consumes the subject in a group of its own from the beginning, checks the
//! update's signature against the CA in its trust store and adds the serials to the revocation
//! set its verifiers consult on every verification, cached chains included.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_schemas::{Digest32, RevocationUpdate, RevocationUpdateId, RevokedCertificate};

use crate::pki::{Certificate, CertifiedKey, ChainVerifier, KeyError, RevocationSet};
use crate::protocol::revocation_update_bytes;
use crate::runtime::{Input, Stage, StageError, Verdict};
use crate::subjects;

/// Name of this stage.
pub const STAGE: &str = "revocation";

/// Reason code of an update not signed by a CA of the trust store.
pub const REASON_UNKNOWN_ISSUER: &str = "revocation.unknown_issuer";
/// Reason code of an update whose signature does not verify.
pub const REASON_SIGNATURE_INVALID: &str = "revocation.signature_invalid";

/// Applies revocation updates to this process's revocation set.
#[derive(Debug)]
pub struct RevocationStage {
    verifier: Arc<ChainVerifier>,
    revocations: Arc<RevocationSet>,
    group: String,
}

impl RevocationStage {
    /// A stage feeding `revocations`, in its own consumer `group` (one per process: every
    /// process needs every update).
    pub fn new(
        verifier: Arc<ChainVerifier>,
        revocations: Arc<RevocationSet>,
        group: impl Into<String>,
    ) -> Self {
        RevocationStage {
            verifier,
            revocations,
            group: group.into(),
        }
    }

    fn apply(&self, update: &RevocationUpdate) -> Result<usize, Verdict> {
        let store = self.verifier.trust_store();
        let issuer = Certificate::from_der(&update.issuer_certificate).map_err(|e| {
            Verdict::dead_letter(REASON_UNKNOWN_ISSUER, format!("issuer certificate: {e}"))
        })?;
        let known = std::iter::once(store.root())
            .chain(store.institution_ca(issuer.institution()))
            .any(|ca| ca.der() == issuer.der());
        if !known || issuer.fingerprint() != update.issuer_fingerprint.as_bytes() {
            return Err(Verdict::dead_letter(
                REASON_UNKNOWN_ISSUER,
                "the issuer is not a CA of the trust store",
            ));
        }
        issuer
            .public_key()
            .verify(&revocation_update_bytes(update), &update.signature)
            .map_err(|e| Verdict::dead_letter(REASON_SIGNATURE_INVALID, e.to_string()))?;
        self.revocations
            .revoke_many(
                update
                    .revoked
                    .iter()
                    .map(|r| (*issuer.fingerprint(), r.serial.as_slice())),
            )
            .map_err(|e| Verdict::dead_letter(e.reason_code(), e.to_string()))
    }
}

#[async_trait]
impl Stage for RevocationStage {
    fn name(&self) -> &str {
        STAGE
    }

    fn subject(&self) -> String {
        subjects::PKI_REVOCATION.to_owned()
    }

    fn group(&self) -> String {
        self.group.clone()
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        Ok(batch
            .iter()
            .map(|input| {
                let update = match dcpipe_schemas::decode::<RevocationUpdate>(input.payload) {
                    Ok(update) => update,
                    Err(e) => return Verdict::undecodable(&e),
                };
                match self.apply(&update) {
                    Ok(added) => {
                        tracing::info!(sequence = update.sequence, added, "revocations applied");
                        metrics::counter!("dcpipe_pki_revocations_applied_total")
                            .increment(u64::try_from(added).unwrap_or(0));
                        Verdict::Done(Vec::new())
                    }
                    Err(verdict) => verdict,
                }
            })
            .collect())
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
    let mut update = RevocationUpdate {
        update_id: RevocationUpdateId::random(),
        sequence,
        issuer_fingerprint: Digest32::from_bytes(*issuer.certificate().fingerprint()),
        revoked: certificates
            .iter()
            .map(|c| RevokedCertificate {
                serial: c.serial().to_vec(),
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
