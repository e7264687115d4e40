//! The set of revoked certificates, read on every verification and updated at run time.
//!
//! Entries are (issuer fingerprint, serial): a serial is unique per issuer (RFC 5280 §4.1.2.2),
//! and the issuer's fingerprint names the issuer unambiguously even across key rotations.
//! Readers load an immutable snapshot through `arc-swap` (no lock, no contention with other
//! readers); writers copy, modify and publish a new snapshot. Revocations are rare and
//! verifications are not, so the copy is the right side to pay.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::parse::Certificate;

/// Most revoked serials held; a revocation beyond it is refused rather than growing without
/// bound.
pub const REVOKED_SERIALS_MAX: usize = 1_000_000;

/// A revocation could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the revocation set holds {REVOKED_SERIALS_MAX} serials")]
pub struct RevocationSetFull;

impl RevocationSetFull {
    /// The stable reason code.
    pub const fn reason_code(&self) -> &'static str {
        crate::reason::Reason::RevocationFull.as_str()
    }
}

type Snapshot = HashMap<[u8; 32], HashSet<Box<[u8]>>>;

/// Revoked serials per issuer fingerprint. Shared by reference (`Arc`) between the verifiers
/// and whoever applies revocations.
#[derive(Debug, Default)]
pub struct RevocationSet {
    snapshot: ArcSwap<Snapshot>,
}

impl RevocationSet {
    /// An empty set.
    pub fn new() -> Self {
        RevocationSet::default()
    }

    /// Revokes `serial` of `issuer_fingerprint`. Returns whether it was not revoked before.
    pub fn revoke(
        &self,
        issuer_fingerprint: &[u8; 32],
        serial: &[u8],
    ) -> Result<bool, RevocationSetFull> {
        self.revoke_many([(*issuer_fingerprint, serial)])
            .map(|added| added == 1)
    }

    /// Revokes `certificate`, issued by `issuer`. Returns whether it was not revoked before.
    pub fn revoke_certificate(
        &self,
        certificate: &Certificate,
        issuer: &Certificate,
    ) -> Result<bool, RevocationSetFull> {
        self.revoke(issuer.fingerprint(), certificate.serial())
    }

    /// Revokes a batch in one update (one snapshot copy, however many entries). Returns how
    /// many were new. All or nothing: if the batch would pass the limit, nothing is added.
    pub fn revoke_many<'a>(
        &self,
        entries: impl IntoIterator<Item = ([u8; 32], &'a [u8])>,
    ) -> Result<usize, RevocationSetFull> {
        let entries: Vec<([u8; 32], &[u8])> = entries.into_iter().collect();
        let mut outcome = Ok(0);
        self.snapshot.rcu(|current| {
            let mut next: Snapshot = Snapshot::clone(current);
            let mut total: usize = next.values().map(HashSet::len).sum();
            let mut added = 0;
            for (issuer, serial) in &entries {
                let serials = next.entry(*issuer).or_default();
                if serials.contains(*serial) {
                    continue;
                }
                if total >= REVOKED_SERIALS_MAX {
                    outcome = Err(RevocationSetFull);
                    return Arc::clone(current);
                }
                serials.insert(Box::from(*serial));
                total += 1;
                added += 1;
            }
            outcome = Ok(added);
            Arc::new(next)
        });
        outcome
    }

    /// Whether `serial` of `issuer_fingerprint` is revoked. Lock-free.
    pub fn is_revoked(&self, issuer_fingerprint: &[u8; 32], serial: &[u8]) -> bool {
        let snapshot = self.snapshot.load();
        snapshot
            .get(issuer_fingerprint)
            .is_some_and(|serials| serials.contains(serial))
    }

    /// Number of revoked serials.
    pub fn len(&self) -> usize {
        self.snapshot.load().values().map(HashSet::len).sum()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_serial_is_found_only_under_its_issuer() {
        let set = RevocationSet::new();
        assert_eq!(set.revoke(&[1; 32], &[0x40, 7]), Ok(true));
        assert!(set.is_revoked(&[1; 32], &[0x40, 7]));
        assert!(!set.is_revoked(&[2; 32], &[0x40, 7]));
        assert!(!set.is_revoked(&[1; 32], &[0x40, 8]));
    }

    #[test]
    fn revoking_twice_counts_once() {
        let set = RevocationSet::new();
        assert_eq!(set.revoke(&[1; 32], &[9]), Ok(true));
        assert_eq!(set.revoke(&[1; 32], &[9]), Ok(false));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn concurrent_revocations_are_all_kept() {
        let set = Arc::new(RevocationSet::new());
        std::thread::scope(|scope| {
            for thread in 0..4u8 {
                let set = Arc::clone(&set);
                scope.spawn(move || {
                    for serial in 0..250u16 {
                        let bytes = serial.to_be_bytes();
                        set.revoke(&[thread; 32], &bytes).expect("room");
                        assert!(set.is_revoked(&[thread; 32], &bytes));
                    }
                });
            }
        });
        assert_eq!(set.len(), 1000);
    }

    #[test]
    fn refuses_revocations_past_the_limit_without_partial_update() {
        let set = RevocationSet::new();
        let serials: Vec<[u8; 4]> = (0..REVOKED_SERIALS_MAX as u32)
            .map(u32::to_be_bytes)
            .collect();
        let added = set
            .revoke_many(serials.iter().map(|s| ([3; 32], s.as_slice())))
            .expect("fits");
        assert_eq!(added, REVOKED_SERIALS_MAX);
        assert_eq!(set.revoke(&[4; 32], &[1]), Err(RevocationSetFull));
        assert!(!set.is_revoked(&[4; 32], &[1]));
        assert_eq!(set.len(), REVOKED_SERIALS_MAX);
    }
}
