//! Chain verification: from a leaf certificate to the central bank's root.
//!
//! Paths are short and fixed by the two-tier model: root → institution CA → end entity, or
//! root → (institution CA | settlement signer). The [`TrustStore`] holds the root and the
//! institution CAs, each checked against the root once when added (so their signatures are not
//! re-verified per message); [`ChainVerifier::verify`] checks a leaf against its issuer and
//! applies time, revocation and role checks for the caller, with a [`ChainCache`] in front.
//!
//! Checks applied to every certificate below the root (RFC 5280 §6.1, restricted to our
//! profile): issuer found by issuer name and authorityKeyIdentifier; signature by the issuer's
//! key with the issuer's algorithm; CA roles have cA=true and keyCertSign, end-entity roles
//! cA=false and digitalSignature; pathLenConstraint of the issuer; the issuer may issue the
//! role (root: institution CAs and the settlement signer; institution CA: everything else); the
//! subject's institution (O) is the issuer's; validity of every certificate of the chain at the
//! caller's time; no certificate of the chain revoked; the role (OU) is one the caller expects.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::cache::{CHAIN_CACHE_ENTRIES_DEFAULT, ChainCache};
use super::digest::sha256;
use super::error::{CertError, CertErrorKind};
use super::keys::{Algorithm, PublicKey};
use super::parse::{CERTIFICATE_DER_BYTES_MAX, Certificate};
use super::revocation::RevocationSet;
use super::role::{Role, RoleSet};

/// Metric: chains rejected, labelled by `reason` (the reason code).
pub const METRIC_CHAIN_REJECTIONS: &str = "dcpipe_pki_chain_rejections_total";
/// Metric: certificate signatures verified (cache misses that reached the signature check).
pub const METRIC_CERTIFICATE_SIGNATURE_CHECKS: &str =
    "dcpipe_pki_certificate_signature_checks_total";

/// (issuer fingerprint, serial) of one certificate of a chain, to look up in the revocation set.
type RevocationKey = ([u8; 32], Box<[u8]>);

/// A trusted issuer: the root, or an institution CA already verified against the root.
struct TrustedIssuer {
    certificate: Certificate,
    role: Role,
    /// Intersection of the validity periods of this certificate and its ancestors.
    chain_valid_from_ms: i64,
    chain_valid_until_ms: i64,
    /// Revocation keys of this certificate and its ancestors (the root has none).
    revocation_keys: Vec<RevocationKey>,
}

/// The trust anchors: the central bank's root, the institution CAs it issued, and the
/// settlement signer.
pub struct TrustStore {
    root: Arc<TrustedIssuer>,
    /// Issuers by subject name DER; several may share a name across key rotations.
    by_subject: HashMap<Vec<u8>, Vec<Arc<TrustedIssuer>>>,
    institutions: BTreeMap<String, Certificate>,
    settlement_signer: Option<Certificate>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("root", &self.root.certificate)
            .field("institutions", &self.institutions.keys())
            .field("settlement_signer", &self.settlement_signer.is_some())
            .finish()
    }
}

impl TrustStore {
    /// A store anchored at `root`, which must be a self-signed central-bank root CA.
    pub fn new(root: Certificate) -> Result<Self, CertError> {
        if root.role() != Some(Role::CentralBankRoot) {
            return Err(CertError::new(
                CertErrorKind::WrongRole,
                format!("root has role {:?}", root.role_name()),
            ));
        }
        if !root.is_self_issued() {
            return Err(CertError::new(
                CertErrorKind::WrongIssuer,
                "root is not self-issued",
            ));
        }
        check_ca_shape(&root, Role::CentralBankRoot)?;
        let ski = root
            .subject_key_id()
            .ok_or_else(|| CertError::malformed("root has no subjectKeyIdentifier"))?;
        if root.authority_key_id().is_some_and(|aki| aki != ski) {
            return Err(CertError::new(
                CertErrorKind::UnknownIssuer,
                "root authorityKeyIdentifier is not its own key",
            ));
        }
        check_signature(&root, root.public_key())?;
        let root = Arc::new(TrustedIssuer {
            chain_valid_from_ms: root.valid_from_ms(),
            chain_valid_until_ms: root.valid_until_ms(),
            revocation_keys: Vec::new(),
            role: Role::CentralBankRoot,
            certificate: root,
        });
        let mut by_subject = HashMap::new();
        by_subject.insert(
            root.certificate.subject_name().to_vec(),
            vec![Arc::clone(&root)],
        );
        Ok(TrustStore {
            root,
            by_subject,
            institutions: BTreeMap::new(),
            settlement_signer: None,
        })
    }

    /// Adds an institution CA after checking it against the root (signature, role, CA flag,
    /// keyUsage, pathLen, institution). Validity is checked at each verification, not here.
    pub fn add_institution_ca(&mut self, ca: Certificate) -> Result<(), CertError> {
        let issuer = self.find_issuer(&ca)?;
        if issuer.role != Role::CentralBankRoot {
            return Err(CertError::new(
                CertErrorKind::WrongIssuer,
                "institution CA not issued by the root",
            ));
        }
        let role = check_issued(&ca, issuer)?;
        if role != Role::InstitutionCa {
            return Err(CertError::new(
                CertErrorKind::WrongRole,
                format!("{role} is not an institution CA"),
            ));
        }
        // It will sit between the root and end entities: the root's pathLen must allow it.
        if issuer.certificate.path_len() == Some(0) {
            return Err(CertError::new(
                CertErrorKind::PathTooLong,
                "root pathLenConstraint 0 allows no institution CA",
            ));
        }
        if ca.subject_key_id().is_none() {
            return Err(CertError::malformed(
                "institution CA has no subjectKeyIdentifier",
            ));
        }
        check_signature(&ca, issuer.certificate.public_key())?;
        let mut revocation_keys = issuer.revocation_keys.clone();
        revocation_keys.push((*issuer.certificate.fingerprint(), ca.serial().into()));
        let entry = Arc::new(TrustedIssuer {
            chain_valid_from_ms: ca.valid_from_ms().max(issuer.chain_valid_from_ms),
            chain_valid_until_ms: ca.valid_until_ms().min(issuer.chain_valid_until_ms),
            revocation_keys,
            role,
            certificate: ca.clone(),
        });
        let same_name = self
            .by_subject
            .entry(ca.subject_name().to_vec())
            .or_default();
        same_name.retain(|existing| existing.certificate.subject_key_id() != ca.subject_key_id());
        same_name.push(entry);
        self.institutions.insert(ca.institution().to_owned(), ca);
        Ok(())
    }

    /// Records the central bank's settlement signer after checking it against the root.
    pub fn set_settlement_signer(&mut self, signer: Certificate) -> Result<(), CertError> {
        let issuer = self.find_issuer(&signer)?;
        let role = check_issued(&signer, issuer)?;
        if role != Role::SettlementSigner {
            return Err(CertError::new(
                CertErrorKind::WrongRole,
                format!("{role} is not the settlement signer"),
            ));
        }
        check_signature(&signer, issuer.certificate.public_key())?;
        self.settlement_signer = Some(signer);
        Ok(())
    }

    /// The root certificate.
    pub fn root(&self) -> &Certificate {
        &self.root.certificate
    }

    /// The (most recently added) CA certificate of an institution.
    pub fn institution_ca(&self, institution: &str) -> Option<&Certificate> {
        self.institutions.get(institution)
    }

    /// Ids of the institutions with a CA in the store, sorted.
    pub fn institution_ids(&self) -> impl Iterator<Item = &str> {
        self.institutions.keys().map(String::as_str)
    }

    /// The settlement signer's certificate, if set.
    pub fn settlement_signer(&self) -> Option<&Certificate> {
        self.settlement_signer.as_ref()
    }

    fn find_issuer(&self, certificate: &Certificate) -> Result<&Arc<TrustedIssuer>, CertError> {
        let unknown = || {
            CertError::new(
                CertErrorKind::UnknownIssuer,
                format!(
                    "no trusted issuer with this name and key id {}",
                    hex::encode(certificate.authority_key_id().unwrap_or_default())
                ),
            )
        };
        let candidates = self
            .by_subject
            .get(certificate.issuer_name())
            .ok_or_else(unknown)?;
        let found = match certificate.authority_key_id() {
            Some(aki) => candidates
                .iter()
                .find(|c| c.certificate.subject_key_id() == Some(aki)),
            None if candidates.len() == 1 => candidates.first(),
            None => None,
        };
        found.ok_or_else(unknown)
    }
}

/// CA shape of a certificate of a CA role: cA=true and keyCertSign.
fn check_ca_shape(certificate: &Certificate, role: Role) -> Result<(), CertError> {
    if !certificate.is_ca() {
        return Err(CertError::new(
            CertErrorKind::NotCa,
            format!("{role} certificate is not a CA (basicConstraints cA=false)"),
        ));
    }
    if !certificate.key_usage().is_some_and(|ku| ku.key_cert_sign) {
        return Err(CertError::new(
            CertErrorKind::KeyUsage,
            format!("{role} certificate lacks keyUsage keyCertSign"),
        ));
    }
    Ok(())
}

/// Every check of `child` against its (trusted) issuer except the signature. Returns the role.
fn check_issued(child: &Certificate, issuer: &TrustedIssuer) -> Result<Role, CertError> {
    let role = child.role().ok_or_else(|| {
        CertError::new(
            CertErrorKind::WrongRole,
            format!("unknown role {:?}", child.role_name()),
        )
    })?;
    if role.is_ca() {
        check_ca_shape(child, role)?;
    } else {
        if child.is_ca() {
            return Err(CertError::new(
                CertErrorKind::UnexpectedCa,
                format!("{role} certificate is marked as a CA"),
            ));
        }
        if !child.key_usage().is_some_and(|ku| ku.digital_signature) {
            return Err(CertError::new(
                CertErrorKind::KeyUsage,
                format!("{role} certificate lacks keyUsage digitalSignature"),
            ));
        }
    }
    let issuer_may_issue = match issuer.role {
        Role::CentralBankRoot => role.is_issued_by_root(),
        Role::InstitutionCa => !role.is_issued_by_root() && role != Role::CentralBankRoot,
        _ => false,
    };
    if !issuer_may_issue {
        return Err(CertError::new(
            CertErrorKind::WrongIssuer,
            format!("{} may not issue {role}", issuer.role),
        ));
    }
    let institution_ok = match role {
        // An institution CA is the institution: CN and O are both its id.
        Role::InstitutionCa => child.id() == child.institution(),
        _ => child.institution() == issuer.certificate.institution(),
    };
    if !institution_ok {
        return Err(CertError::new(
            CertErrorKind::InstitutionMismatch,
            format!(
                "{role} {} of institution {} issued by {}",
                child.id(),
                child.institution(),
                issuer.certificate.institution()
            ),
        ));
    }
    Ok(role)
}

/// The issuer's signature over `child`, with the algorithm of the issuer's key.
fn check_signature(child: &Certificate, issuer_key: &PublicKey) -> Result<(), CertError> {
    if child.signature_algorithm() != issuer_key.algorithm() {
        return Err(CertError::new(
            CertErrorKind::SignatureInvalid,
            format!(
                "signed with {} but the issuer key is {}",
                child.signature_algorithm(),
                issuer_key.algorithm()
            ),
        ));
    }
    issuer_key
        .verify_der(child.tbs(), child.signature())
        .map_err(|e| CertError::new(CertErrorKind::SignatureInvalid, e.reason_code()))
}

/// Who signed: the outcome of a successful verification. Cheap to clone (shared).
#[derive(Clone)]
pub struct VerifiedIdentity(Arc<Identity>);

struct Identity {
    role: Role,
    id: String,
    institution: String,
    public_key: PublicKey,
    fingerprint: [u8; 32],
    serial: Box<[u8]>,
    issuer_fingerprint: Option<[u8; 32]>,
    valid_from_ms: i64,
    valid_until_ms: i64,
    revocation_keys: Vec<RevocationKey>,
}

impl VerifiedIdentity {
    /// The certificate's role.
    pub fn role(&self) -> Role {
        self.0.role
    }

    /// Subject CN: institution, wallet, vehicle or entity id.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Subject O: the institution the subject belongs to.
    pub fn institution_id(&self) -> &str {
        &self.0.institution
    }

    /// The algorithm of the subject key (what its message signatures use).
    pub fn algorithm(&self) -> Algorithm {
        self.0.public_key.algorithm()
    }

    /// The subject key, parsed once, ready to verify message signatures.
    pub fn public_key(&self) -> &PublicKey {
        &self.0.public_key
    }

    /// SHA-256 of the leaf certificate's DER.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.0.fingerprint
    }

    /// The leaf's serial number.
    pub fn serial(&self) -> &[u8] {
        &self.0.serial
    }

    /// Fingerprint of the leaf's issuer (`None` when the leaf is the root itself).
    pub fn issuer_fingerprint(&self) -> Option<&[u8; 32]> {
        self.0.issuer_fingerprint.as_ref()
    }

    /// Start of the chain's validity: the latest notBefore of its certificates, in ms.
    pub fn valid_from_ms(&self) -> i64 {
        self.0.valid_from_ms
    }

    /// End of the chain's validity: the earliest notAfter of its certificates, in ms.
    pub fn valid_until_ms(&self) -> i64 {
        self.0.valid_until_ms
    }

    /// Every certificate of the chain below the root as (issuer fingerprint, serial): what a
    /// revocation names. An audit checks them against the revocations in force at a message's
    /// own time rather than now.
    pub fn revocation_keys(&self) -> impl Iterator<Item = (&[u8; 32], &[u8])> {
        self.0
            .revocation_keys
            .iter()
            .map(|(issuer, serial)| (issuer, &**serial))
    }
}

impl fmt::Debug for VerifiedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedIdentity")
            .field("role", &self.0.role)
            .field("id", &self.0.id)
            .field("institution", &self.0.institution)
            .field("algorithm", &self.algorithm())
            .field("fingerprint", &hex::encode(self.0.fingerprint))
            .field("valid_from_ms", &self.0.valid_from_ms)
            .field("valid_until_ms", &self.0.valid_until_ms)
            .finish()
    }
}

/// Counters of a [`ChainVerifier`] since construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerifierStats {
    /// Verifications answered from the cache.
    pub cache_hits: u64,
    /// Verifications that had to verify the chain.
    pub cache_misses: u64,
    /// Certificate signatures verified.
    pub signature_checks: u64,
    /// Chains in the cache now.
    pub cached_chains: usize,
}

/// Verifies leaf certificates against a [`TrustStore`] and a [`RevocationSet`], caching
/// verified chains. Share it between threads by reference or `Arc`.
#[derive(Debug)]
pub struct ChainVerifier {
    store: Arc<TrustStore>,
    revocations: Arc<RevocationSet>,
    cache: ChainCache,
    signature_checks: AtomicU64,
}

impl ChainVerifier {
    /// A verifier with a cache of [`CHAIN_CACHE_ENTRIES_DEFAULT`] chains.
    pub fn new(store: Arc<TrustStore>, revocations: Arc<RevocationSet>) -> Self {
        ChainVerifier::with_cache_capacity(store, revocations, CHAIN_CACHE_ENTRIES_DEFAULT)
    }

    /// A verifier whose cache holds at most `cache_entries` chains.
    pub fn with_cache_capacity(
        store: Arc<TrustStore>,
        revocations: Arc<RevocationSet>,
        cache_entries: usize,
    ) -> Self {
        ChainVerifier {
            store,
            revocations,
            cache: ChainCache::new(cache_entries),
            signature_checks: AtomicU64::new(0),
        }
    }

    /// Verifies `leaf_der` at `at_ms` for one of the `expected` roles, using the cache.
    pub fn verify(
        &self,
        leaf_der: &[u8],
        at_ms: i64,
        expected: impl Into<RoleSet>,
    ) -> Result<VerifiedIdentity, CertError> {
        let expected = expected.into();
        let outcome = self.verify_cached(leaf_der, at_ms, expected);
        if let Err(err) = &outcome {
            metrics::counter!(METRIC_CHAIN_REJECTIONS, "reason" => err.reason_code()).increment(1);
        }
        outcome
    }

    /// Like [`ChainVerifier::verify`] but always verifies the chain (audits, benchmarks).
    pub fn verify_uncached(
        &self,
        leaf_der: &[u8],
        at_ms: i64,
        expected: impl Into<RoleSet>,
    ) -> Result<VerifiedIdentity, CertError> {
        let outcome = self
            .verify_chain(leaf_der)
            .and_then(|identity| self.check_current(identity, at_ms, expected.into()));
        if let Err(err) = &outcome {
            metrics::counter!(METRIC_CHAIN_REJECTIONS, "reason" => err.reason_code()).increment(1);
        }
        outcome
    }

    /// The trust store.
    pub fn trust_store(&self) -> &TrustStore {
        &self.store
    }

    /// The revocation set consulted on every verification.
    pub fn revocations(&self) -> &RevocationSet {
        &self.revocations
    }

    /// The chain cache.
    pub fn cache(&self) -> &ChainCache {
        &self.cache
    }

    /// Counters since construction.
    pub fn stats(&self) -> VerifierStats {
        VerifierStats {
            cache_hits: self.cache.hits(),
            cache_misses: self.cache.misses(),
            signature_checks: self.signature_checks.load(Ordering::Relaxed),
            cached_chains: self.cache.len(),
        }
    }

    fn verify_cached(
        &self,
        leaf_der: &[u8],
        at_ms: i64,
        expected: RoleSet,
    ) -> Result<VerifiedIdentity, CertError> {
        if leaf_der.len() > CERTIFICATE_DER_BYTES_MAX {
            return Err(too_large(leaf_der.len()));
        }
        let fingerprint = sha256(leaf_der);
        let identity = match self.cache.get(&fingerprint) {
            Some(identity) => identity,
            None => {
                // Cached before the time, revocation and role checks: those are redone per call.
                let identity = self.verify_chain(leaf_der)?;
                self.cache.insert(identity.clone());
                identity
            }
        };
        self.check_current(identity, at_ms, expected)
    }

    /// Everything that does not depend on the caller: parse, issuer, structure, signature.
    fn verify_chain(&self, leaf_der: &[u8]) -> Result<VerifiedIdentity, CertError> {
        if leaf_der.len() > CERTIFICATE_DER_BYTES_MAX {
            return Err(too_large(leaf_der.len()));
        }
        let leaf = Certificate::from_der(leaf_der)?;
        if leaf == self.store.root.certificate {
            return Ok(identity_of(
                &leaf,
                Role::CentralBankRoot,
                &self.store.root,
                None,
            ));
        }
        let issuer = self.store.find_issuer(&leaf)?;
        let role = check_issued(&leaf, issuer)?;
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(METRIC_CERTIFICATE_SIGNATURE_CHECKS).increment(1);
        check_signature(&leaf, issuer.certificate.public_key())?;
        Ok(identity_of(&leaf, role, issuer, Some(issuer)))
    }

    fn check_current(
        &self,
        identity: VerifiedIdentity,
        at_ms: i64,
        expected: RoleSet,
    ) -> Result<VerifiedIdentity, CertError> {
        let inner = &identity.0;
        if !expected.contains(inner.role) {
            return Err(CertError::new(
                CertErrorKind::WrongRole,
                format!("{} where {expected} expected", inner.role),
            ));
        }
        if at_ms < inner.valid_from_ms {
            return Err(CertError::new(
                CertErrorKind::NotYetValid,
                format!(
                    "chain valid from {} ms, now {at_ms} ms",
                    inner.valid_from_ms
                ),
            ));
        }
        if at_ms > inner.valid_until_ms {
            return Err(CertError::new(
                CertErrorKind::Expired,
                format!(
                    "chain valid until {} ms, now {at_ms} ms",
                    inner.valid_until_ms
                ),
            ));
        }
        for (issuer, serial) in &inner.revocation_keys {
            if self.revocations.is_revoked(issuer, serial) {
                return Err(CertError::new(
                    CertErrorKind::Revoked,
                    format!("serial {} revoked", hex::encode(serial)),
                ));
            }
        }
        Ok(identity)
    }
}

fn too_large(len: usize) -> CertError {
    CertError::new(
        CertErrorKind::TooLarge,
        format!("{len} bytes, limit {CERTIFICATE_DER_BYTES_MAX}"),
    )
}

/// The identity of `leaf` whose chain above it is `chain` (the root itself when the leaf is
/// the root); `issuer` is `None` for the root.
fn identity_of(
    leaf: &Certificate,
    role: Role,
    chain: &TrustedIssuer,
    issuer: Option<&Arc<TrustedIssuer>>,
) -> VerifiedIdentity {
    let (valid_from_ms, valid_until_ms, revocation_keys) = match issuer {
        None => (
            chain.chain_valid_from_ms,
            chain.chain_valid_until_ms,
            Vec::new(),
        ),
        Some(issuer) => {
            let mut keys = issuer.revocation_keys.clone();
            keys.push((*issuer.certificate.fingerprint(), leaf.serial().into()));
            (
                leaf.valid_from_ms().max(issuer.chain_valid_from_ms),
                leaf.valid_until_ms().min(issuer.chain_valid_until_ms),
                keys,
            )
        }
    };
    VerifiedIdentity(Arc::new(Identity {
        role,
        id: leaf.id().to_owned(),
        institution: leaf.institution().to_owned(),
        public_key: leaf.public_key().clone(),
        fingerprint: *leaf.fingerprint(),
        serial: leaf.serial().into(),
        issuer_fingerprint: issuer.map(|i| *i.certificate.fingerprint()),
        valid_from_ms,
        valid_until_ms,
        revocation_keys,
    }))
}
