//! A complete demo PKI: central-bank root and settlement signer, institution CAs and signers,
//! and three keys per wallet (terminal, secure element, wallet), generated in memory.
//!
//! [`PkiDirectory`] is the in-memory form; `store` writes it to and reads it from the directory
//! layout used by `dcpipe pki init`. Special certificates for tests (expired, not yet valid,
//! revoked, wrong role, unknown issuer) are issued from the same material.
//!
//! Ids: institutions `oi01`..`oiNN` (N ≤ [`INSTITUTIONS_MAX`]); wallets are spread round-robin
//! over institutions (global wallet j, from 0, goes to institution `j mod N` with number
//! `j div N + 1`) and named `w-<oi>-<number on 6 digits>`.
//!
//! Algorithm choice `mixed` alternates deterministically: the root and settlement signer are
//! P-256; institution number k (from 1) is P-256 when k is odd and SM2 when k is even, and its
//! signer follows it; a wallet with an odd number uses its institution's algorithm and a wallet
//! with an even number the other one. Every combination of issuer and subject algorithm occurs
//! as soon as there are two institutions with two wallets each.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::certificate::{
    CENTRAL_BANK_ID, CertificateTemplate, CertifiedKey, SETTLEMENT_SIGNER_ID,
};
use super::error::{IssueError, IssueErrorKind, KeyError, KeyErrorKind};
use super::keys::{Algorithm, PrivateKey};
use super::revocation::RevocationSet;
use super::role::Role;
use super::verify::TrustStore;

/// Most institutions of a demo PKI (ids have two digits).
pub const INSTITUTIONS_MAX: usize = 99;
/// Most wallets of a demo PKI, all institutions together (wallet numbers have six digits).
pub const WALLETS_MAX: usize = 1_000_000;
/// Version of manifest.toml written by this code.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// Default validity of demo certificates before `now` (tolerates clocks running behind).
pub const DEMO_VALIDITY_BEFORE_NOW_MS: i64 = 24 * 3600 * 1000;
/// Default validity of demo certificates after `now`: two years.
pub const DEMO_VALIDITY_AFTER_NOW_MS: i64 = 2 * 365 * 24 * 3600 * 1000;
/// How far special certificates sit outside their validity (expired a day ago, valid in a day).
const SPECIAL_OFFSET_MS: i64 = 24 * 3600 * 1000;
/// Threads used to generate wallets (capped by the machine's parallelism).
const GENERATION_THREADS_MAX: usize = 8;

/// Which algorithms a demo PKI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmChoice {
    /// Everything ECDSA P-256.
    P256,
    /// Everything SM2/SM3.
    Sm2,
    /// Alternating, per the rule in the module documentation.
    Mixed,
}

impl AlgorithmChoice {
    /// `p256`, `sm2` or `mixed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AlgorithmChoice::P256 => "p256",
            AlgorithmChoice::Sm2 => "sm2",
            AlgorithmChoice::Mixed => "mixed",
        }
    }

    /// Algorithm of the root and the settlement signer.
    pub const fn root(self) -> Algorithm {
        match self {
            AlgorithmChoice::Sm2 => Algorithm::Sm2Sm3,
            AlgorithmChoice::P256 | AlgorithmChoice::Mixed => Algorithm::EcdsaP256Sha256,
        }
    }

    /// Algorithm of institution number `number` (from 1) and of its signer.
    pub const fn institution(self, number: usize) -> Algorithm {
        match self {
            AlgorithmChoice::Mixed if number.is_multiple_of(2) => Algorithm::Sm2Sm3,
            AlgorithmChoice::Mixed => Algorithm::EcdsaP256Sha256,
            _ => self.root(),
        }
    }

    /// Algorithm of wallet number `number` (from 1) of an institution using `institution`.
    pub const fn wallet(self, institution: Algorithm, number: usize) -> Algorithm {
        match self {
            AlgorithmChoice::Mixed if number.is_multiple_of(2) => institution.other(),
            _ => institution,
        }
    }
}

impl fmt::Display for AlgorithmChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AlgorithmChoice {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "p256" => Ok(AlgorithmChoice::P256),
            "sm2" => Ok(AlgorithmChoice::Sm2),
            "mixed" => Ok(AlgorithmChoice::Mixed),
            _ => Err(KeyError::new(
                KeyErrorKind::UnsupportedAlgorithm,
                "algorithm choice is not p256, sm2 or mixed",
            )),
        }
    }
}

/// Id of institution number `number` (from 1): `oi01`.
pub fn institution_id(number: usize) -> String {
    format!("oi{number:02}")
}

/// Id of wallet number `number` (from 1) of `institution`: `w-oi01-000001`.
pub fn wallet_id(institution: &str, number: usize) -> String {
    format!("w-{institution}-{number:06}")
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPkiOptions {
    /// Number of institutions, 1 to [`INSTITUTIONS_MAX`].
    pub institutions: usize,
    /// Number of wallets, all institutions together, 0 to [`WALLETS_MAX`].
    pub wallets: usize,
    /// Algorithms.
    pub algorithm: AlgorithmChoice,
    /// notBefore of every certificate, ms since the Unix epoch.
    pub valid_from_ms: i64,
    /// notAfter of every certificate, ms since the Unix epoch.
    pub valid_until_ms: i64,
}

impl DemoPkiOptions {
    /// Options with the default validity around `now_ms` (a day before to two years after).
    pub fn new(
        institutions: usize,
        wallets: usize,
        algorithm: AlgorithmChoice,
        now_ms: i64,
    ) -> Self {
        DemoPkiOptions {
            institutions,
            wallets,
            algorithm,
            valid_from_ms: now_ms.saturating_sub(DEMO_VALIDITY_BEFORE_NOW_MS).max(0),
            valid_until_ms: now_ms.saturating_add(DEMO_VALIDITY_AFTER_NOW_MS),
        }
    }

    fn check(&self) -> Result<(), IssueError> {
        if !(1..=INSTITUTIONS_MAX).contains(&self.institutions) {
            return Err(IssueError::new(
                IssueErrorKind::LimitExceeded,
                format!(
                    "{} institutions, allowed 1 to {INSTITUTIONS_MAX}",
                    self.institutions
                ),
            ));
        }
        if self.wallets > WALLETS_MAX {
            return Err(IssueError::new(
                IssueErrorKind::LimitExceeded,
                format!("{} wallets, allowed up to {WALLETS_MAX}", self.wallets),
            ));
        }
        Ok(())
    }
}

/// manifest.toml: what a PKI directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The algorithm choice it was generated with.
    pub algorithm: AlgorithmChoice,
    /// Algorithm of the root and settlement signer.
    pub root_algorithm: Algorithm,
    /// notBefore of the generated certificates, ms.
    pub valid_from_ms: i64,
    /// notAfter of the generated certificates, ms.
    pub valid_until_ms: i64,
    /// Institutions, in id order.
    pub institutions: Vec<ManifestInstitution>,
    /// Wallets, in generation order.
    pub wallets: Vec<ManifestWallet>,
}

/// One institution of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestInstitution {
    /// `oi01`...
    pub id: String,
    /// Algorithm of its CA and signer.
    pub algorithm: Algorithm,
}

/// One wallet of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestWallet {
    /// `w-oi01-000001`...
    pub id: String,
    /// The institution holding it.
    pub institution: String,
    /// Algorithm of its three keys.
    pub algorithm: Algorithm,
}

/// An institution's CA and signer.
#[derive(Debug)]
pub struct InstitutionKeys {
    /// The institution CA (issued by the root).
    pub ca: CertifiedKey,
    /// The institution signer (issued by the CA).
    pub signer: CertifiedKey,
}

/// A wallet's three keys, all issued by its institution's CA.
#[derive(Debug)]
pub struct WalletKeys {
    /// The institution holding the wallet.
    pub institution: String,
    /// The user terminal.
    pub terminal: CertifiedKey,
    /// The secure element (PIN-verification proofs).
    pub secure_element: CertifiedKey,
    /// The wallet key (key sets).
    pub wallet: CertifiedKey,
}

/// Who a certificate is issued to (the subject fields and key algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectSpec<'a> {
    /// Subject OU.
    pub role: Role,
    /// Subject CN.
    pub id: &'a str,
    /// Subject O; for roles issued by an institution CA, also selects the CA.
    pub institution: &'a str,
    /// Algorithm of the new key.
    pub algorithm: Algorithm,
}

/// Special certificates for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialCertificate {
    /// Valid until a day before `at_ms`.
    Expired,
    /// Valid from a day after `at_ms`.
    NotYetValid,
    /// Valid, and its serial added to the given revocation set.
    Revoked,
    /// Valid, but issued for another role than requested: [`Role::Vehicle`], or
    /// [`Role::Terminal`] when a vehicle was requested.
    WrongRole,
    /// Valid, but issued by a fresh CA with the same names as the real ones and another key,
    /// which no trust store knows.
    UnknownIssuer,
}

/// A demo PKI in memory: keys, certificates and the trust store built from them.
#[derive(Debug)]
pub struct PkiDirectory {
    pub(crate) manifest: Manifest,
    pub(crate) root: CertifiedKey,
    pub(crate) settlement: CertifiedKey,
    pub(crate) institutions: BTreeMap<String, InstitutionKeys>,
    pub(crate) wallets: BTreeMap<String, WalletKeys>,
    pub(crate) trust_store: Arc<TrustStore>,
}

impl PkiDirectory {
    /// Generates a PKI in memory. Wallets are generated on up to
    /// `min(GENERATION_THREADS_MAX, available parallelism)` threads.
    pub fn generate(options: &DemoPkiOptions) -> Result<Self, IssueError> {
        options.check()?;
        let (from, until) = (options.valid_from_ms, options.valid_until_ms);
        let choice = options.algorithm;
        let root = CertifiedKey::self_signed_root(choice.root(), from, until)?;
        let settlement = root.issue_with_new_key(
            &CertificateTemplate::for_role(
                Role::SettlementSigner,
                SETTLEMENT_SIGNER_ID,
                CENTRAL_BANK_ID,
                from,
                until,
            ),
            choice.root(),
        )?;

        let mut manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            algorithm: choice,
            root_algorithm: choice.root(),
            valid_from_ms: from,
            valid_until_ms: until,
            institutions: Vec::with_capacity(options.institutions),
            wallets: Vec::with_capacity(options.wallets),
        };
        let mut institutions = BTreeMap::new();
        for number in 1..=options.institutions {
            let id = institution_id(number);
            let algorithm = choice.institution(number);
            let ca = root.issue_with_new_key(
                &CertificateTemplate::for_role(Role::InstitutionCa, &id, &id, from, until),
                algorithm,
            )?;
            let signer = ca.issue_with_new_key(
                &CertificateTemplate::for_role(Role::InstitutionSigner, &id, &id, from, until),
                algorithm,
            )?;
            manifest.institutions.push(ManifestInstitution {
                id: id.clone(),
                algorithm,
            });
            institutions.insert(id, InstitutionKeys { ca, signer });
        }
        for index in 0..options.wallets {
            let institution = &manifest.institutions[index % options.institutions];
            let number = index / options.institutions + 1;
            manifest.wallets.push(ManifestWallet {
                id: wallet_id(&institution.id, number),
                institution: institution.id.clone(),
                algorithm: choice.wallet(institution.algorithm, number),
            });
        }
        let wallets = generate_wallets(&manifest.wallets, &institutions, from, until)?;
        let trust_store = build_trust_store(&root, &settlement, &institutions)
            .map_err(|e| IssueError::new(IssueErrorKind::Encoding, e.to_string()))?;
        Ok(PkiDirectory {
            manifest,
            root,
            settlement,
            institutions,
            wallets,
            trust_store: Arc::new(trust_store),
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The root CA with its key.
    pub fn root(&self) -> &CertifiedKey {
        &self.root
    }

    /// The settlement signer with its key.
    pub fn settlement_signer(&self) -> &CertifiedKey {
        &self.settlement
    }

    /// An institution's CA and signer.
    pub fn institution(&self, id: &str) -> Option<&InstitutionKeys> {
        self.institutions.get(id)
    }

    /// All institutions, in id order.
    pub fn institutions(&self) -> impl Iterator<Item = (&str, &InstitutionKeys)> {
        self.institutions
            .iter()
            .map(|(id, keys)| (id.as_str(), keys))
    }

    /// A wallet's keys.
    pub fn wallet(&self, id: &str) -> Option<&WalletKeys> {
        self.wallets.get(id)
    }

    /// All wallets, in id order.
    pub fn wallets(&self) -> impl Iterator<Item = (&str, &WalletKeys)> {
        self.wallets.iter().map(|(id, keys)| (id.as_str(), keys))
    }

    /// The trust store: root, institution CAs and settlement signer, all checked.
    pub fn trust_store(&self) -> &Arc<TrustStore> {
        &self.trust_store
    }

    /// Issues a new certificate and key for `subject` (vehicles, service entities, more
    /// terminals...): by the root for root-issued roles, else by the subject institution's CA.
    pub fn issue(
        &self,
        subject: &SubjectSpec<'_>,
        valid_from_ms: i64,
        valid_until_ms: i64,
    ) -> Result<CertifiedKey, IssueError> {
        self.issue_as(subject, subject.role, valid_from_ms, valid_until_ms)
    }

    /// Issues one of the [`SpecialCertificate`]s for `subject`, relative to `at_ms`. `Revoked`
    /// adds the serial to `revocations`.
    pub fn issue_special(
        &self,
        kind: SpecialCertificate,
        subject: &SubjectSpec<'_>,
        at_ms: i64,
        revocations: &RevocationSet,
    ) -> Result<CertifiedKey, IssueError> {
        let (from, until) = (self.manifest.valid_from_ms, self.manifest.valid_until_ms);
        match kind {
            SpecialCertificate::Expired => self.issue(
                subject,
                from.min(at_ms - 2 * SPECIAL_OFFSET_MS).max(0),
                at_ms - SPECIAL_OFFSET_MS,
            ),
            SpecialCertificate::NotYetValid => self.issue(
                subject,
                at_ms + SPECIAL_OFFSET_MS,
                until.max(at_ms + 2 * SPECIAL_OFFSET_MS),
            ),
            SpecialCertificate::Revoked => {
                let issued = self.issue(subject, from, until)?;
                let issuer = self.issuer_for(subject.role, subject.institution)?;
                revocations
                    .revoke_certificate(issued.certificate(), issuer.certificate())
                    .map_err(|e| IssueError::new(IssueErrorKind::LimitExceeded, e.to_string()))?;
                Ok(issued)
            }
            SpecialCertificate::WrongRole => {
                let decoy = if subject.role == Role::Vehicle {
                    Role::Terminal
                } else {
                    Role::Vehicle
                };
                self.issue_as(subject, decoy, from, until)
            }
            SpecialCertificate::UnknownIssuer => self.issue_by_rogue_root(subject, from, until),
        }
    }

    fn issue_as(
        &self,
        subject: &SubjectSpec<'_>,
        role: Role,
        valid_from_ms: i64,
        valid_until_ms: i64,
    ) -> Result<CertifiedKey, IssueError> {
        let template = CertificateTemplate::for_role(
            role,
            subject.id,
            subject.institution,
            valid_from_ms,
            valid_until_ms,
        );
        self.issuer_for(role, subject.institution)?
            .issue_with_new_key(&template, subject.algorithm)
    }

    /// Issues `subject` under a fresh root (and institution CA) carrying the same names as the
    /// real ones but other keys.
    fn issue_by_rogue_root(
        &self,
        subject: &SubjectSpec<'_>,
        from: i64,
        until: i64,
    ) -> Result<CertifiedKey, IssueError> {
        let root = self.root.certificate();
        let rogue_root = CertifiedKey::self_signed(
            &CertificateTemplate::for_role(
                Role::CentralBankRoot,
                root.id(),
                root.institution(),
                from,
                until,
            ),
            PrivateKey::generate(self.root.key().algorithm())?,
        )?;
        let template = CertificateTemplate::for_role(
            subject.role,
            subject.id,
            subject.institution,
            from,
            until,
        );
        if subject.role.is_issued_by_root() {
            return rogue_root.issue_with_new_key(&template, subject.algorithm);
        }
        let rogue_ca = rogue_root.issue_with_new_key(
            &CertificateTemplate::for_role(
                Role::InstitutionCa,
                subject.institution,
                subject.institution,
                from,
                until,
            ),
            subject.algorithm,
        )?;
        rogue_ca.issue_with_new_key(&template, subject.algorithm)
    }

    fn issuer_for(&self, role: Role, institution: &str) -> Result<&CertifiedKey, IssueError> {
        if role.is_issued_by_root() {
            return Ok(&self.root);
        }
        self.institutions
            .get(institution)
            .map(|keys| &keys.ca)
            .ok_or_else(|| {
                IssueError::new(
                    IssueErrorKind::Issuer,
                    format!("no institution {institution:?}"),
                )
            })
    }
}

pub(crate) fn build_trust_store(
    root: &CertifiedKey,
    settlement: &CertifiedKey,
    institutions: &BTreeMap<String, InstitutionKeys>,
) -> Result<TrustStore, super::error::CertError> {
    let mut store = TrustStore::new(root.certificate().clone())?;
    for keys in institutions.values() {
        store.add_institution_ca(keys.ca.certificate().clone())?;
    }
    store.set_settlement_signer(settlement.certificate().clone())?;
    Ok(store)
}

fn generate_wallets(
    wallets: &[ManifestWallet],
    institutions: &BTreeMap<String, InstitutionKeys>,
    from: i64,
    until: i64,
) -> Result<BTreeMap<String, WalletKeys>, IssueError> {
    let generate_one = |spec: &ManifestWallet| -> Result<(String, WalletKeys), IssueError> {
        let ca = &institutions
            .get(&spec.institution)
            .ok_or_else(|| {
                IssueError::new(
                    IssueErrorKind::Issuer,
                    format!("no institution {:?}", spec.institution),
                )
            })?
            .ca;
        let issue = |role| {
            ca.issue_with_new_key(
                &CertificateTemplate::for_role(role, &spec.id, &spec.institution, from, until),
                spec.algorithm,
            )
        };
        let keys = WalletKeys {
            institution: spec.institution.clone(),
            terminal: issue(Role::Terminal)?,
            secure_element: issue(Role::SecureElement)?,
            wallet: issue(Role::Wallet)?,
        };
        Ok((spec.id.clone(), keys))
    };

    let generated = parallel_map(wallets, generate_one, || {
        IssueError::new(IssueErrorKind::Key, "wallet generation thread panicked")
    })?;
    Ok(generated.into_iter().collect())
}

/// `f` over `items` on up to `min(GENERATION_THREADS_MAX, available parallelism)` threads, in
/// order; the first error wins. Key generation and PKCS#8 parsing are CPU-bound, so thousands of
/// wallets are worth spreading over the cores.
pub(crate) fn parallel_map<T, U, E>(
    items: &[T],
    f: impl Fn(&T) -> Result<U, E> + Sync,
    panicked: impl Fn() -> E,
) -> Result<Vec<U>, E>
where
    T: Sync,
    U: Send,
    E: Send,
{
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, GENERATION_THREADS_MAX);
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    let parts: Vec<Result<Vec<U>, E>> = std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect()))
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or_else(|_| Err(panicked())))
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}
