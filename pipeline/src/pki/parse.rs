//! Reading a DER certificate into a [`Certificate`]: every field the verifier needs, decoded once.
//!
//! x509-cert decodes the TBSCertificate; the outer structure is decoded here so that the exact
//! signed bytes are kept (signatures are checked over the bytes received, never a re-encoding).
//! Parsing checks structure only (no signature, no time, no trust): see `verify` for that.

use std::fmt;
use std::sync::Arc;

use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier};
use der::{Decode as _, Encode as _, Tag, Tagged as _};
use spki::AlgorithmIdentifierRef;
use x509_cert::ext::pkix::name::DirectoryString;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectKeyIdentifier,
};
use x509_cert::{TbsCertificate, Version};

use super::digest::sha256;
use super::error::{CertError, CertErrorKind, KeyErrorKind};
use super::keys::{Algorithm, PublicKey};
use super::role::Role;

/// Largest certificate accepted, in DER bytes; ours are about 500. Checked before any decoding.
pub const CERTIFICATE_DER_BYTES_MAX: usize = 8 * 1024;
/// Longest id (CN, O) in bytes: the X.520 upper bound for a common name.
pub const ID_BYTES_MAX: usize = 64;
/// PEM label of certificates.
pub const CERTIFICATE_PEM_LABEL: &str = "CERTIFICATE";

pub(crate) const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
pub(crate) const OID_ORGANIZATION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
pub(crate) const OID_ORGANIZATIONAL_UNIT: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.5.4.11");

/// Whether `id` is usable as a CN/O: 1 to [`ID_BYTES_MAX`] bytes of `[A-Za-z0-9._-]`, starting
/// with a letter or digit. Ids also name directories and appear in logs and metrics, hence the
/// narrow alphabet (and no `.`/`..` path components).
pub fn is_valid_id(id: &str) -> bool {
    id.len() <= ID_BYTES_MAX
        && id.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }`, with the
/// TBS kept as raw bytes.
#[derive(der::Sequence)]
pub(crate) struct RawCertificate<'a> {
    pub(crate) tbs: AnyRef<'a>,
    pub(crate) signature_algorithm: AlgorithmIdentifierRef<'a>,
    pub(crate) signature: BitStringRef<'a>,
}

/// The key usages our profile uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyUsages {
    /// digitalSignature: end entities.
    pub digital_signature: bool,
    /// keyCertSign: CAs.
    pub key_cert_sign: bool,
    /// cRLSign: CAs.
    pub crl_sign: bool,
}

/// A parsed certificate of our profile. Cheap to clone; the DER and the parsed fields are shared.
#[derive(Clone)]
pub struct Certificate(Arc<Parsed>);

struct Parsed {
    der: Vec<u8>,
    tbs: Vec<u8>,
    fingerprint: [u8; 32],
    signature_algorithm: Algorithm,
    signature: Vec<u8>,
    serial: Vec<u8>,
    issuer_name: Vec<u8>,
    subject_name: Vec<u8>,
    id: String,
    role_name: String,
    role: Option<Role>,
    institution: String,
    valid_from_ms: i64,
    valid_until_ms: i64,
    is_ca: bool,
    path_len: Option<u8>,
    key_usage: Option<KeyUsages>,
    subject_key_id: Option<Vec<u8>>,
    authority_key_id: Option<Vec<u8>>,
    public_key: PublicKey,
}

impl Certificate {
    /// Parses a DER certificate. Never panics, whatever the bytes.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        parse(der).map(|parsed| Certificate(Arc::new(parsed)))
    }

    /// Parses a `CERTIFICATE` PEM document.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        let (label, der) = der::pem::decode_vec(pem.as_bytes())
            .map_err(|e| CertError::malformed(format!("PEM: {e}")))?;
        if label != CERTIFICATE_PEM_LABEL {
            return Err(CertError::malformed(format!(
                "PEM label {label:?} is not CERTIFICATE"
            )));
        }
        Certificate::from_der(&der)
    }

    /// `CERTIFICATE` PEM, LF line endings.
    pub fn to_pem(&self) -> String {
        // Base64 of a length-checked buffer cannot fail; an empty string would fail to parse.
        der::pem::encode_string(CERTIFICATE_PEM_LABEL, der::pem::LineEnding::LF, &self.0.der)
            .unwrap_or_default()
    }

    /// The DER bytes, as received or issued.
    pub fn der(&self) -> &[u8] {
        &self.0.der
    }

    /// SHA-256 of the DER: the certificate's identity in caches, revocation and messages.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.0.fingerprint
    }

    /// The serial number's content bytes (big-endian, positive).
    pub fn serial(&self) -> &[u8] {
        &self.0.serial
    }

    /// Subject CN: the institution, wallet, vehicle or entity id.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Subject OU as written.
    pub fn role_name(&self) -> &str {
        &self.0.role_name
    }

    /// The role, if the OU names one.
    pub fn role(&self) -> Option<Role> {
        self.0.role
    }

    /// Subject O: the institution id (`central-bank` for the central bank's certificates).
    pub fn institution(&self) -> &str {
        &self.0.institution
    }

    /// notBefore, in ms since the Unix epoch (X.509 times have whole seconds).
    pub fn valid_from_ms(&self) -> i64 {
        self.0.valid_from_ms
    }

    /// notAfter, in ms since the Unix epoch; the certificate is valid through this instant.
    pub fn valid_until_ms(&self) -> i64 {
        self.0.valid_until_ms
    }

    /// basicConstraints cA (false when the extension is absent).
    pub fn is_ca(&self) -> bool {
        self.0.is_ca
    }

    /// basicConstraints pathLenConstraint.
    pub fn path_len(&self) -> Option<u8> {
        self.0.path_len
    }

    /// keyUsage, if present.
    pub fn key_usage(&self) -> Option<KeyUsages> {
        self.0.key_usage
    }

    /// The subject public key, ready to verify.
    pub fn public_key(&self) -> &PublicKey {
        &self.0.public_key
    }

    /// The algorithm of the subject key.
    pub fn algorithm(&self) -> Algorithm {
        self.0.public_key.algorithm()
    }

    /// The algorithm the issuer signed this certificate with.
    pub fn signature_algorithm(&self) -> Algorithm {
        self.0.signature_algorithm
    }

    /// subjectKeyIdentifier, if present.
    pub fn subject_key_id(&self) -> Option<&[u8]> {
        self.0.subject_key_id.as_deref()
    }

    /// authorityKeyIdentifier keyIdentifier, if present.
    pub fn authority_key_id(&self) -> Option<&[u8]> {
        self.0.authority_key_id.as_deref()
    }

    /// Whether issuer and subject names are equal (a root).
    pub fn is_self_issued(&self) -> bool {
        self.0.issuer_name == self.0.subject_name
    }

    pub(crate) fn tbs(&self) -> &[u8] {
        &self.0.tbs
    }

    pub(crate) fn signature(&self) -> &[u8] {
        &self.0.signature
    }

    pub(crate) fn issuer_name(&self) -> &[u8] {
        &self.0.issuer_name
    }

    pub(crate) fn subject_name(&self) -> &[u8] {
        &self.0.subject_name
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.0.der == other.0.der
    }
}

impl Eq for Certificate {}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("id", &self.0.id)
            .field("role", &self.0.role_name)
            .field("institution", &self.0.institution)
            .field("algorithm", &self.algorithm())
            .field("serial", &hex::encode(&self.0.serial))
            .field("fingerprint", &hex::encode(self.0.fingerprint))
            .finish()
    }
}

fn der_error(what: &'static str) -> impl Fn(der::Error) -> CertError {
    move |e| CertError::malformed(format!("{what}: {e}"))
}

fn parse(der: &[u8]) -> Result<Parsed, CertError> {
    if der.len() > CERTIFICATE_DER_BYTES_MAX {
        return Err(CertError::new(
            CertErrorKind::TooLarge,
            format!("{} bytes, limit {CERTIFICATE_DER_BYTES_MAX}", der.len()),
        ));
    }
    let raw = RawCertificate::from_der(der).map_err(der_error("certificate"))?;
    if raw.tbs.tag() != Tag::Sequence {
        return Err(CertError::malformed("tbsCertificate is not a SEQUENCE"));
    }
    let tbs_der = raw.tbs.to_der().map_err(der_error("tbsCertificate"))?;
    let tbs = TbsCertificate::from_der(&tbs_der).map_err(der_error("tbsCertificate"))?;
    if tbs.version() != Version::V3 {
        return Err(CertError::malformed("version is not v3"));
    }

    // RFC 5280 §4.1.1.2: the outer and inner signature algorithms must be the same.
    let inner_alg = tbs.signature().to_der().map_err(der_error("signature"))?;
    let outer_alg = raw
        .signature_algorithm
        .to_der()
        .map_err(der_error("signatureAlgorithm"))?;
    if inner_alg != outer_alg {
        return Err(CertError::malformed(
            "signatureAlgorithm differs from tbsCertificate.signature",
        ));
    }
    let signature_algorithm = signature_algorithm(&raw.signature_algorithm)?;
    let signature = raw
        .signature
        .as_bytes()
        .ok_or_else(|| CertError::malformed("signatureValue has unused bits"))?
        .to_vec();

    let serial = tbs.serial_number().as_bytes().to_vec();
    if serial.is_empty() {
        return Err(CertError::malformed("empty serial number"));
    }
    let issuer_name = tbs.issuer().to_der().map_err(der_error("issuer"))?;
    let subject_name = tbs.subject().to_der().map_err(der_error("subject"))?;
    let subject = subject_attributes(tbs.subject())?;

    let validity = tbs.validity();
    let valid_from_ms = time_ms(validity.not_before)?;
    let valid_until_ms = time_ms(validity.not_after)?;
    let extensions = extensions(&tbs)?;
    let public_key = public_key(&tbs)?;

    Ok(Parsed {
        fingerprint: sha256(der),
        der: der.to_vec(),
        tbs: tbs_der,
        signature_algorithm,
        signature,
        serial,
        issuer_name,
        subject_name,
        role: subject.role_name.parse().ok(),
        id: subject.id,
        role_name: subject.role_name,
        institution: subject.institution,
        valid_from_ms,
        valid_until_ms,
        is_ca: extensions.is_ca,
        path_len: extensions.path_len,
        key_usage: extensions.key_usage,
        subject_key_id: extensions.subject_key_id,
        authority_key_id: extensions.authority_key_id,
        public_key,
    })
}

fn signature_algorithm(alg: &AlgorithmIdentifierRef<'_>) -> Result<Algorithm, CertError> {
    let algorithm = Algorithm::from_signature_oid(&alg.oid).ok_or_else(|| {
        CertError::new(
            CertErrorKind::UnsupportedAlgorithm,
            format!("signature algorithm {}", alg.oid),
        )
    })?;
    // RFC 5758: ecdsa-with-SHA256 has absent parameters. SM2-with-SM3 is written without
    // parameters by us; NULL is accepted for interoperability with other SM2 issuers.
    let parameters_ok = match (&alg.parameters, algorithm) {
        (None, _) => true,
        (Some(any), Algorithm::Sm2Sm3) => any.is_null(),
        (Some(_), Algorithm::EcdsaP256Sha256) => false,
    };
    if !parameters_ok {
        return Err(CertError::malformed(
            "unexpected signature algorithm parameters",
        ));
    }
    Ok(algorithm)
}

struct SubjectAttributes {
    id: String,
    role_name: String,
    institution: String,
}

fn subject_attributes(name: &x509_cert::name::Name) -> Result<SubjectAttributes, CertError> {
    let mut id = None;
    let mut role_name = None;
    let mut institution = None;
    for attribute in name.iter() {
        let slot = if attribute.oid == OID_COMMON_NAME {
            &mut id
        } else if attribute.oid == OID_ORGANIZATIONAL_UNIT {
            &mut role_name
        } else if attribute.oid == OID_ORGANIZATION {
            &mut institution
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(CertError::malformed(format!(
                "subject has more than one {}",
                attribute.oid
            )));
        }
        let value =
            DirectoryString::try_from(&attribute.value).map_err(der_error("subject attribute"))?;
        *slot = Some(value.value().into_owned());
    }
    let (Some(id), Some(role_name), Some(institution)) = (id, role_name, institution) else {
        return Err(CertError::malformed("subject lacks CN, OU or O"));
    };
    if !is_valid_id(&id) || !is_valid_id(&institution) {
        return Err(CertError::malformed("subject CN or O is not a valid id"));
    }
    if role_name.len() > ID_BYTES_MAX {
        return Err(CertError::malformed("subject OU too long"));
    }
    Ok(SubjectAttributes {
        id,
        role_name,
        institution,
    })
}

fn time_ms(time: x509_cert::time::Time) -> Result<i64, CertError> {
    i64::try_from(time.to_unix_duration().as_millis())
        .map_err(|_| CertError::malformed("time out of range"))
}

#[derive(Default)]
struct Extensions {
    is_ca: bool,
    path_len: Option<u8>,
    key_usage: Option<KeyUsages>,
    subject_key_id: Option<Vec<u8>>,
    authority_key_id: Option<Vec<u8>>,
}

fn extensions(tbs: &TbsCertificate) -> Result<Extensions, CertError> {
    use der::oid::AssociatedOid as _;

    let mut out = Extensions::default();
    let mut seen: Vec<&ObjectIdentifier> = Vec::new();
    for extension in tbs.extensions().map(|e| e.as_slice()).unwrap_or_default() {
        let oid = &extension.extn_id;
        if seen.contains(&oid) {
            return Err(CertError::malformed(format!("extension {oid} repeated")));
        }
        seen.push(oid);
        let value = extension.extn_value.as_bytes();
        if *oid == BasicConstraints::OID {
            let bc = BasicConstraints::from_der(value).map_err(der_error("basicConstraints"))?;
            out.is_ca = bc.ca;
            out.path_len = bc.path_len_constraint;
        } else if *oid == KeyUsage::OID {
            let ku = KeyUsage::from_der(value).map_err(der_error("keyUsage"))?;
            out.key_usage = Some(KeyUsages {
                digital_signature: ku.digital_signature(),
                key_cert_sign: ku.key_cert_sign(),
                crl_sign: ku.crl_sign(),
            });
        } else if *oid == SubjectKeyIdentifier::OID {
            let ski =
                SubjectKeyIdentifier::from_der(value).map_err(der_error("subjectKeyIdentifier"))?;
            out.subject_key_id = Some(ski.0.as_bytes().to_vec());
        } else if *oid == AuthorityKeyIdentifier::OID {
            let aki = AuthorityKeyIdentifier::from_der(value)
                .map_err(der_error("authorityKeyIdentifier"))?;
            out.authority_key_id = aki.key_identifier.map(|kid| kid.as_bytes().to_vec());
        } else if extension.critical {
            // RFC 5280 §4.2: a certificate with an unrecognized critical extension is rejected.
            return Err(CertError::new(
                CertErrorKind::UnknownCriticalExtension,
                format!("critical extension {oid}"),
            ));
        }
    }
    if out.path_len.is_some() && !out.is_ca {
        return Err(CertError::malformed(
            "pathLenConstraint on a non-CA certificate",
        ));
    }
    Ok(out)
}

fn public_key(tbs: &TbsCertificate) -> Result<PublicKey, CertError> {
    let spki = tbs.subject_public_key_info();
    PublicKey::from_spki(spki).map_err(|e| {
        let detail = format!(
            "subjectPublicKey: {e} (algorithm {}, parameters {:?})",
            spki.algorithm.oid,
            spki.algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
        );
        match e.kind() {
            KeyErrorKind::UnsupportedAlgorithm => {
                CertError::new(CertErrorKind::UnsupportedAlgorithm, detail)
            }
            _ => CertError::malformed(detail),
        }
    })
}
