//! Chains verified as they stood at a message's own time: valid then, and not revoked as of
//! then. Workers check revocation against the set in force now; an audit reads a past record,
//! so a certificate revoked after a message was signed does not make the message bad, and one
//! revoked before does.
//!
//! The history is rebuilt from `pki.revocation` (in the range and before it): each verified
//! update names serials with the time their CA revoked them.

use std::collections::HashMap;
use std::sync::Arc;

use dcpipe_schemas::RevocationUpdate;

use crate::pki::{
    CertError, CertErrorKind, ChainVerifier, RevocationSet, RoleSet, TrustStore, VerifiedIdentity,
};
use crate::reason::Reason;
use crate::revocation::verify_update;

/// Serials most held in a history, like the workers' revocation set.
pub const HISTORY_SERIALS_MAX: usize = crate::pki::REVOKED_SERIALS_MAX;

/// When each certificate was revoked: (issuer fingerprint, serial) → the earliest revocation
/// time any verified update gave it.
#[derive(Debug, Default, Clone)]
pub struct RevocationHistory {
    revoked_at_ms: HashMap<([u8; 32], Box<[u8]>), i64>,
}

impl RevocationHistory {
    /// An empty history.
    pub fn new() -> Self {
        RevocationHistory::default()
    }

    /// Records that `serial` of `issuer` is revoked from `revoked_at_ms` on; the earliest time
    /// given wins. False when the history is full and the entry is new.
    pub fn record(&mut self, issuer: [u8; 32], serial: &[u8], revoked_at_ms: i64) -> bool {
        let key = (issuer, Box::from(serial));
        if let Some(at) = self.revoked_at_ms.get_mut(&key) {
            *at = (*at).min(revoked_at_ms);
            return true;
        }
        if self.revoked_at_ms.len() >= HISTORY_SERIALS_MAX {
            return false;
        }
        self.revoked_at_ms.insert(key, revoked_at_ms);
        true
    }

    /// Checks `update` against `store` and records its serials. Returns how many it names.
    pub fn apply(
        &mut self,
        store: &TrustStore,
        update: &RevocationUpdate,
    ) -> Result<usize, (Reason, String)> {
        let issuer = verify_update(store, update)?;
        for revoked in &update.revoked {
            if !self.record(
                *issuer.fingerprint(),
                &revoked.serial,
                revoked.revoked_at_ms,
            ) {
                return Err((
                    Reason::RevocationFull,
                    format!("the history holds {HISTORY_SERIALS_MAX} serials"),
                ));
            }
        }
        Ok(update.revoked.len())
    }

    /// When `serial` of `issuer` was revoked, if it was.
    pub fn revoked_at_ms(&self, issuer: &[u8; 32], serial: &[u8]) -> Option<i64> {
        self.revoked_at_ms
            .get(&(*issuer, Box::from(serial)))
            .copied()
    }

    /// Serials recorded.
    pub fn len(&self) -> usize {
        self.revoked_at_ms.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.revoked_at_ms.is_empty()
    }
}

/// A chain verifier that judges revocation at the time it is given, from a
/// [`RevocationHistory`].
#[derive(Debug)]
pub struct TimedVerifier {
    /// Verifies chains with no revocation applied (the history is applied after).
    chains: ChainVerifier,
    history: RevocationHistory,
}

impl TimedVerifier {
    /// A verifier over `store` with `history`.
    pub fn new(store: Arc<TrustStore>, history: RevocationHistory) -> Self {
        TimedVerifier {
            chains: ChainVerifier::new(store, Arc::new(RevocationSet::new())),
            history,
        }
    }

    /// The chain verifier without revocations, for the checks the stages share (they take a
    /// [`ChainVerifier`]); follow each with [`TimedVerifier::check_revocation`].
    pub fn chains(&self) -> &ChainVerifier {
        &self.chains
    }

    /// The revocation history.
    pub fn history(&self) -> &RevocationHistory {
        &self.history
    }

    /// Verifies `der` for one of `roles`, valid at `at_ms` and not revoked as of `at_ms`.
    pub fn verify(
        &self,
        der: &[u8],
        at_ms: i64,
        roles: impl Into<RoleSet>,
    ) -> Result<VerifiedIdentity, CertError> {
        let identity = self.chains.verify(der, at_ms, roles)?;
        self.check_revocation(&identity, at_ms)?;
        Ok(identity)
    }

    /// Fails when a certificate of `identity`'s chain was revoked before `at_ms` (a message of
    /// the very millisecond of the revocation is still good: the revocation is in force after
    /// it).
    pub fn check_revocation(
        &self,
        identity: &VerifiedIdentity,
        at_ms: i64,
    ) -> Result<(), CertError> {
        for (issuer, serial) in identity.revocation_keys() {
            if let Some(revoked_at_ms) = self.history.revoked_at_ms(issuer, serial)
                && revoked_at_ms < at_ms
            {
                return Err(CertError::new(
                    CertErrorKind::Revoked,
                    format!(
                        "serial {} revoked at {revoked_at_ms} ms, used at {at_ms} ms",
                        hex::encode(serial)
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{AlgorithmChoice, DemoPkiOptions, PkiDirectory, Role};

    const NOW_MS: i64 = 1_800_000_000_000;

    fn pki() -> PkiDirectory {
        PkiDirectory::generate(&DemoPkiOptions::new(2, 2, AlgorithmChoice::P256, NOW_MS))
            .expect("demo PKI")
    }

    #[test]
    fn a_certificate_is_good_until_its_revocation_and_bad_after_it() {
        let pki = pki();
        let (_, keys) = pki.institutions().next().expect("an institution");
        let signer = keys.signer.certificate();
        let mut history = RevocationHistory::new();
        let ca = pki
            .trust_store()
            .institution_ca(signer.institution())
            .expect("its CA");
        assert!(history.record(*ca.fingerprint(), signer.serial(), NOW_MS));
        let verifier = TimedVerifier::new(Arc::clone(pki.trust_store()), history);
        assert!(
            verifier
                .verify(signer.der(), NOW_MS, Role::InstitutionSigner)
                .is_ok()
        );
        let err = verifier
            .verify(signer.der(), NOW_MS + 1, Role::InstitutionSigner)
            .expect_err("revoked from then");
        assert_eq!(err.kind(), CertErrorKind::Revoked);
    }

    #[test]
    fn the_earliest_revocation_time_wins() {
        let mut history = RevocationHistory::new();
        history.record([1; 32], &[7], 500);
        history.record([1; 32], &[7], 300);
        history.record([1; 32], &[7], 900);
        assert_eq!(history.revoked_at_ms(&[1; 32], &[7]), Some(300));
        assert_eq!(history.revoked_at_ms(&[2; 32], &[7]), None);
        assert_eq!(history.len(), 1);
    }
}
