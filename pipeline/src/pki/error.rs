//! Typed PKI errors, one type per area, each with a stable `reason_code()`.
//!
//! Reason codes are part of the external contract: they go to dead-letter records and metrics
//! labels, so they never change once published. Details are for people and may change.

use std::borrow::Cow;
use std::path::PathBuf;

/// Why a certificate (chain) was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertErrorKind {
    /// Not a well-formed DER X.509 v3 certificate of our profile.
    Malformed,
    /// Larger than [`crate::pki::CERTIFICATE_DER_BYTES_MAX`].
    TooLarge,
    /// No issuer with the certificate's issuer name and authority key identifier is trusted.
    UnknownIssuer,
    /// The issuer's signature over the certificate does not verify.
    SignatureInvalid,
    /// A certificate of the chain is not valid yet at the verification time.
    NotYetValid,
    /// A certificate of the chain has expired at the verification time.
    Expired,
    /// A certificate of the chain is in the revocation set.
    Revoked,
    /// A certificate that must be a CA (an issuer, or a CA role) is not one.
    NotCa,
    /// A CA certificate was presented where an end entity was expected, or an end-entity role
    /// is marked as a CA.
    UnexpectedCa,
    /// keyUsage is missing or lacks keyCertSign (issuers) or digitalSignature (end entities).
    KeyUsage,
    /// The certificate's role (OU) is unknown or not one the caller accepts.
    WrongRole,
    /// The issuer may not issue this role (e.g. a terminal issued directly by the root).
    WrongIssuer,
    /// The certificate's institution (O) does not match its issuing CA's institution.
    InstitutionMismatch,
    /// The key or signature algorithm is neither ECDSA P-256/SHA-256 nor SM2/SM3.
    UnsupportedAlgorithm,
    /// A pathLenConstraint of the chain is exceeded.
    PathTooLong,
    /// The certificate carries a critical extension this verifier does not process.
    UnknownCriticalExtension,
}

impl CertErrorKind {
    /// The stable reason code, e.g. `cert.expired` (the table is [`crate::reason::Reason`]).
    pub const fn reason_code(self) -> &'static str {
        crate::reason::Reason::Certificate(self).as_str()
    }
}

/// A certificate or chain was rejected; match on [`CertError::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", kind.reason_code())]
pub struct CertError {
    kind: CertErrorKind,
    detail: Cow<'static, str>,
}

impl CertError {
    /// An error of `kind` with a human-readable detail.
    pub fn new(kind: CertErrorKind, detail: impl Into<Cow<'static, str>>) -> Self {
        CertError {
            kind,
            detail: detail.into(),
        }
    }

    /// What went wrong, for matching.
    pub fn kind(&self) -> CertErrorKind {
        self.kind
    }

    /// The stable reason code, e.g. `cert.revoked`.
    pub fn reason_code(&self) -> &'static str {
        self.kind.reason_code()
    }

    /// Human-readable detail (not stable).
    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub(crate) fn malformed(detail: impl Into<Cow<'static, str>>) -> Self {
        CertError::new(CertErrorKind::Malformed, detail)
    }
}

/// Why a message signature was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureErrorKind {
    /// Not a 64-byte r||s signature with r and s in range.
    Malformed,
    /// Well-formed but does not verify under the key.
    Invalid,
}

impl SignatureErrorKind {
    /// The stable reason code.
    pub const fn reason_code(self) -> &'static str {
        match self {
            SignatureErrorKind::Malformed => "signature.malformed",
            SignatureErrorKind::Invalid => "signature.invalid",
        }
    }
}

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", kind.reason_code())]
pub struct SignatureError {
    kind: SignatureErrorKind,
}

impl SignatureError {
    pub(crate) const fn new(kind: SignatureErrorKind) -> Self {
        SignatureError { kind }
    }

    /// What went wrong, for matching.
    pub fn kind(&self) -> SignatureErrorKind {
        self.kind
    }

    /// The stable reason code, e.g. `signature.invalid`.
    pub fn reason_code(&self) -> &'static str {
        self.kind.reason_code()
    }
}

/// Why a key could not be generated, read, written or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyErrorKind {
    /// Not a valid key encoding (PKCS#8, SEC1 point, scalar out of range).
    Malformed,
    /// The key is for a curve or algorithm other than P-256 and SM2.
    UnsupportedAlgorithm,
    /// The secure random number generator failed.
    Random,
    /// The signing operation failed.
    Signing,
    /// The key could not be encoded.
    Encoding,
}

impl KeyErrorKind {
    /// The stable reason code.
    pub const fn reason_code(self) -> &'static str {
        match self {
            KeyErrorKind::Malformed => "key.malformed",
            KeyErrorKind::UnsupportedAlgorithm => "key.unsupported_algorithm",
            KeyErrorKind::Random => "key.random_failure",
            KeyErrorKind::Signing => "key.signing_failed",
            KeyErrorKind::Encoding => "key.encoding_failed",
        }
    }
}

/// A key operation failed. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", kind.reason_code())]
pub struct KeyError {
    kind: KeyErrorKind,
    detail: &'static str,
}

impl KeyError {
    pub(crate) const fn new(kind: KeyErrorKind, detail: &'static str) -> Self {
        KeyError { kind, detail }
    }

    /// What went wrong, for matching.
    pub fn kind(&self) -> KeyErrorKind {
        self.kind
    }

    /// The stable reason code, e.g. `key.malformed`.
    pub fn reason_code(&self) -> &'static str {
        self.kind.reason_code()
    }
}

/// Why a certificate could not be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IssueErrorKind {
    /// An id (CN, O) is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    InvalidId,
    /// The validity interval is empty, negative or outside the years X.509 can encode.
    InvalidValidity,
    /// A count or size is above its named limit.
    LimitExceeded,
    /// The issuer cannot issue this certificate (not a CA, unknown institution).
    Issuer,
    /// Key generation or signing failed.
    Key,
    /// DER encoding failed, or the result did not parse back.
    Encoding,
}

impl IssueErrorKind {
    /// The stable reason code.
    pub const fn reason_code(self) -> &'static str {
        match self {
            IssueErrorKind::InvalidId => "issue.invalid_id",
            IssueErrorKind::InvalidValidity => "issue.invalid_validity",
            IssueErrorKind::LimitExceeded => "issue.limit_exceeded",
            IssueErrorKind::Issuer => "issue.issuer",
            IssueErrorKind::Key => "issue.key",
            IssueErrorKind::Encoding => "issue.encoding",
        }
    }
}

/// Issuing a certificate failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", kind.reason_code())]
pub struct IssueError {
    kind: IssueErrorKind,
    detail: Cow<'static, str>,
}

impl IssueError {
    pub(crate) fn new(kind: IssueErrorKind, detail: impl Into<Cow<'static, str>>) -> Self {
        IssueError {
            kind,
            detail: detail.into(),
        }
    }

    /// What went wrong, for matching.
    pub fn kind(&self) -> IssueErrorKind {
        self.kind
    }

    /// The stable reason code, e.g. `issue.invalid_id`.
    pub fn reason_code(&self) -> &'static str {
        self.kind.reason_code()
    }
}

impl From<KeyError> for IssueError {
    fn from(err: KeyError) -> Self {
        IssueError::new(IssueErrorKind::Key, err.to_string())
    }
}

/// Why reading or writing PKI files failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// A file could not be read or written.
    Io,
    /// A file is not the PEM document expected (label, base64).
    Pem,
    /// manifest.toml is missing, unreadable or inconsistent.
    Manifest,
    /// A private key file is invalid.
    Key,
    /// A certificate file is invalid, or a certificate does not fit the layout.
    Certificate,
    /// A private key does not belong to the certificate next to it.
    KeyMismatch,
    /// The output directory already holds a PKI; nothing is overwritten.
    AlreadyExists,
    /// Issuing the PKI failed.
    Issue,
}

impl StoreErrorKind {
    /// The stable reason code.
    pub const fn reason_code(self) -> &'static str {
        match self {
            StoreErrorKind::Io => "store.io",
            StoreErrorKind::Pem => "store.pem",
            StoreErrorKind::Manifest => "store.manifest",
            StoreErrorKind::Key => "store.key",
            StoreErrorKind::Certificate => "store.certificate",
            StoreErrorKind::KeyMismatch => "store.key_mismatch",
            StoreErrorKind::AlreadyExists => "store.already_exists",
            StoreErrorKind::Issue => "store.issue",
        }
    }
}

/// A PKI directory could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}: {detail}", kind.reason_code(), path.display())]
pub struct StoreError {
    kind: StoreErrorKind,
    path: PathBuf,
    detail: String,
}

impl StoreError {
    pub(crate) fn new(
        kind: StoreErrorKind,
        path: impl Into<PathBuf>,
        detail: impl Into<String>,
    ) -> Self {
        StoreError {
            kind,
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// What went wrong, for matching.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The stable reason code, e.g. `store.key_mismatch`.
    pub fn reason_code(&self) -> &'static str {
        self.kind.reason_code()
    }

    /// The file or directory concerned.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}
