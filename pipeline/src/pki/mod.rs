//! Certificates and signatures: who may sign what, and proof that they did.
//!
//! Every message of the system is signed by a key whose X.509 certificate chains to the central
//! bank's root: terminals, secure elements and wallets through their institution's CA,
//! institution signers likewise, the settlement signer directly. This module issues those
//! certificates (for the demo PKI and tests), verifies chains ([`ChainVerifier`], with a bounded
//! cache so each chain's signatures are checked once), keeps the revocation set, signs and
//! verifies messages ([`PrivateKey`], [`PublicKey`]) and reads and writes PEM files.
//!
//! Two algorithms, chosen per certificate: ECDSA P-256 with SHA-256 (ring) and SM2 with SM3
//! (RustCrypto `sm2`/`sm3`). x509-cert, der and spki only decode and encode structures; building,
//! signing and all signature checks are ours.
//!
//! # Certificate profile
//!
//! - X.509 v3, DER. Serial: 16 random bytes from the system RNG, top bit 0 and next bit 1
//!   (positive, always 16 content bytes).
//! - Names: `O=<institution>, OU=<role>, CN=<id>` (RDN order O, OU, CN; each a UTF8String).
//!   Role names: `central-bank-root`, `institution-ca`, `institution-signer`,
//!   `settlement-signer`, `terminal`, `secure-element`, `wallet`, `vehicle`, `service-entity`.
//!   The root is `CN=central-bank, OU=central-bank-root, O=central-bank`; the settlement signer
//!   `CN=settlement, OU=settlement-signer, O=central-bank`; an institution CA and signer have
//!   CN = O = the institution id. Ids are 1-64 characters of `[A-Za-z0-9._-]`, starting with a
//!   letter or digit. The issuer name is the issuer's subject, byte for byte.
//! - Validity: UTCTime through 2049, GeneralizedTime after (RFC 5280), whole seconds; given in
//!   ms and rounded down. Both bounds are inclusive.
//! - subjectPublicKeyInfo: id-ecPublicKey (1.2.840.10045.2.1) with namedCurve prime256v1
//!   (1.2.840.10045.3.1.7) or SM2 (1.2.156.10197.1.301); uncompressed point (65 bytes).
//! - signatureAlgorithm: ecdsa-with-SHA256 (1.2.840.10045.4.3.2) or SM2-with-SM3
//!   (1.2.156.10197.1.501), parameters absent (NULL also accepted for SM2 on input). The
//!   signature is DER `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`. SM2 signatures use
//!   the distinguishing ID `1234567812345678` (Z = SM3(ENTL || ID || a || b || xG || yG || xA ||
//!   yA), signed digest SM3(Z || TBSCertificate)).
//! - Extensions, in this order:
//!   - basicConstraints (2.5.29.19), critical: root cA=TRUE, pathLen 1; institution CA cA=TRUE,
//!     pathLen 0; end entities cA absent (FALSE).
//!   - keyUsage (2.5.29.15), critical: CAs keyCertSign | cRLSign; end entities
//!     digitalSignature.
//!   - subjectKeyIdentifier (2.5.29.14): SHA-1 of the subjectPublicKey BIT STRING contents (the
//!     65-byte point), RFC 5280 §4.2.1.2 method 1.
//!   - authorityKeyIdentifier (2.5.29.35): keyIdentifier = the issuer's subjectKeyIdentifier
//!     (the root's own on the root).
//!
//! Message signatures (not certificates) are the fixed 64-byte `r || s`, big-endian 32 bytes
//! each: ECDSA over SHA-256(message), or SM2 over SM3(Z || message) with the same default ID.
//!
//! Fingerprints are SHA-256 of the certificate DER.

mod cache;
mod certificate;
mod digest;
mod error;
mod generate;
mod keys;
mod parse;
mod revocation;
mod role;
mod sm2_verify;
mod store;
mod verify;

pub use cache::{
    CHAIN_CACHE_ENTRIES_DEFAULT, ChainCache, METRIC_CHAIN_CACHE_HITS, METRIC_CHAIN_CACHE_MISSES,
};
pub use certificate::{
    CENTRAL_BANK_ID, CertificateTemplate, CertifiedKey, INSTITUTION_CA_PATH_LEN, KeyUsageProfile,
    ROOT_PATH_LEN, SERIAL_BYTES, SETTLEMENT_SIGNER_ID,
};
pub use digest::{DIGEST_BYTES, sha256, sm3};
pub use error::{
    CertError, CertErrorKind, IssueError, IssueErrorKind, KeyError, KeyErrorKind, SignatureError,
    SignatureErrorKind, StoreError, StoreErrorKind,
};
pub use generate::{
    AlgorithmChoice, DEMO_VALIDITY_AFTER_NOW_MS, DEMO_VALIDITY_BEFORE_NOW_MS, DemoPkiOptions,
    INSTITUTIONS_MAX, InstitutionKeys, MANIFEST_FORMAT_VERSION, Manifest, ManifestInstitution,
    ManifestWallet, PkiDirectory, SpecialCertificate, SubjectSpec, WALLETS_MAX, WalletKeys,
    institution_id, wallet_id,
};
pub use keys::{
    Algorithm, PRIVATE_KEY_PEM_LABEL, PUBLIC_KEY_PEM_LABEL, PUBLIC_POINT_BYTES, PrivateKey,
    PublicKey, SCALAR_BYTES, SIGNATURE_BYTES, SM2_DISTINGUISHING_ID,
};
pub use parse::{
    CERTIFICATE_DER_BYTES_MAX, CERTIFICATE_PEM_LABEL, Certificate, ID_BYTES_MAX, KeyUsages,
    is_valid_id,
};
pub use revocation::{REVOKED_SERIALS_MAX, RevocationSet, RevocationSetFull};
pub use role::{Role, RoleSet, UnknownRole};
pub use store::{
    KeyHolder, MANIFEST_BYTES_MAX, MANIFEST_FILE, PEM_FILE_BYTES_MAX, PRIVATE_KEY_FILE_MODE,
    PUBLIC_FILE_MODE, PkiLayout, TRUST_DIR, TRUST_INSTITUTIONS_MAX, TrustLayout, WorkerKeys,
    init_pki_directory, read_certificate_pem, read_private_key_pem, read_public_key_pem,
    read_trust_anchors, signer_pair, write_certificate_pem, write_private_key_pem,
};
pub use verify::{
    ChainVerifier, METRIC_CERTIFICATE_SIGNATURE_CHECKS, METRIC_CHAIN_REJECTIONS, TrustStore,
    VerifiedIdentity, VerifierStats,
};

#[cfg(test)]
mod tests;
