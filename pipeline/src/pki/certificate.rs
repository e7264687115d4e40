//! Issuing certificates of the dcpipe profile.
//!
//! The TBSCertificate is assembled and DER-encoded here from x509-cert's field types, signed
//! with ring (P-256) or sm2 (SM2), and wrapped; the result is parsed back before it is returned,
//! so an issued certificate always satisfies the parser the verifier uses. The profile (names,
//! extensions, OIDs) is described in the `pki` module documentation.

use std::time::Duration;

use der::Encode as _;
use der::asn1::{Any, AnyRef, BitStringRef, OctetString, Utf8StringRef};
use spki::{AlgorithmIdentifierOwned, AlgorithmIdentifierRef, SubjectPublicKeyInfoOwned};
use x509_cert::Version;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages as X509KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::name::{RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use super::error::{IssueError, IssueErrorKind};
use super::keys::{Algorithm, PrivateKey, PublicKey};
use super::parse::{
    Certificate, OID_COMMON_NAME, OID_ORGANIZATION, OID_ORGANIZATIONAL_UNIT, RawCertificate,
    is_valid_id,
};
use super::role::Role;
use ring::rand::SecureRandom as _;

/// Length of the random serial numbers, in bytes (126 bits of randomness, always positive).
pub const SERIAL_BYTES: usize = 16;
/// Subject CN and O of the central bank's certificates.
pub const CENTRAL_BANK_ID: &str = "central-bank";
/// Subject CN of the central bank's settlement signer.
pub const SETTLEMENT_SIGNER_ID: &str = "settlement";
/// pathLenConstraint of the root: one level of institution CAs below it.
pub const ROOT_PATH_LEN: u8 = 1;
/// pathLenConstraint of institution CAs: they issue end entities only.
pub const INSTITUTION_CA_PATH_LEN: u8 = 0;

/// The keyUsage bits a certificate carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsageProfile {
    /// keyCertSign | cRLSign: certification authorities.
    CertificateAuthority,
    /// digitalSignature: end entities.
    DigitalSignature,
}

/// What goes into a certificate besides keys, serial and issuer. Fields are public so tests can
/// craft certificates outside the profile; [`CertificateTemplate::for_role`] gives the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateTemplate {
    /// Subject OU.
    pub role: Role,
    /// Subject CN.
    pub id: String,
    /// Subject O.
    pub institution: String,
    /// notBefore, ms since the Unix epoch (rounded down to the second).
    pub valid_from_ms: i64,
    /// notAfter, ms since the Unix epoch (rounded down to the second).
    pub valid_until_ms: i64,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// basicConstraints pathLenConstraint (CAs only).
    pub path_len: Option<u8>,
    /// keyUsage; `None` leaves the extension out.
    pub key_usage: Option<KeyUsageProfile>,
}

impl CertificateTemplate {
    /// The profile's template for `role`: CA flag, pathLen and keyUsage follow from the role.
    pub fn for_role(
        role: Role,
        id: &str,
        institution: &str,
        valid_from_ms: i64,
        valid_until_ms: i64,
    ) -> Self {
        let (path_len, key_usage) = match role {
            Role::CentralBankRoot => (Some(ROOT_PATH_LEN), KeyUsageProfile::CertificateAuthority),
            Role::InstitutionCa => (
                Some(INSTITUTION_CA_PATH_LEN),
                KeyUsageProfile::CertificateAuthority,
            ),
            _ => (None, KeyUsageProfile::DigitalSignature),
        };
        CertificateTemplate {
            role,
            id: id.to_owned(),
            institution: institution.to_owned(),
            valid_from_ms,
            valid_until_ms,
            is_ca: role.is_ca(),
            path_len,
            key_usage: Some(key_usage),
        }
    }
}

/// A certificate with its private key: an issuer, or an end entity that signs messages.
#[derive(Debug)]
pub struct CertifiedKey {
    certificate: Certificate,
    key: PrivateKey,
}

impl CertifiedKey {
    /// Pairs a certificate with its key; fails if the key is not the certificate's.
    pub fn new(certificate: Certificate, key: PrivateKey) -> Result<Self, IssueError> {
        if certificate.public_key() != key.public_key() {
            return Err(IssueError::new(
                IssueErrorKind::Key,
                "private key does not match the certificate's public key",
            ));
        }
        Ok(CertifiedKey { certificate, key })
    }

    /// The certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// A new self-signed central-bank root with a fresh key.
    pub fn self_signed_root(
        algorithm: Algorithm,
        valid_from_ms: i64,
        valid_until_ms: i64,
    ) -> Result<Self, IssueError> {
        let template = CertificateTemplate::for_role(
            Role::CentralBankRoot,
            CENTRAL_BANK_ID,
            CENTRAL_BANK_ID,
            valid_from_ms,
            valid_until_ms,
        );
        CertifiedKey::self_signed(&template, PrivateKey::generate(algorithm)?)
    }

    /// A self-signed certificate for `key` from any template (roots, and crafted test roots).
    pub fn self_signed(
        template: &CertificateTemplate,
        key: PrivateKey,
    ) -> Result<Self, IssueError> {
        let subject_name = subject_name(template)?;
        let key_id = key.public_key().key_identifier();
        let certificate = build(
            template,
            key.public_key(),
            &subject_name,
            &subject_name,
            &key_id,
            &key,
        )?;
        Ok(CertifiedKey { certificate, key })
    }

    /// Issues a certificate for `subject_key`, signed by this (CA) certificate's key.
    pub fn issue(
        &self,
        template: &CertificateTemplate,
        subject_key: &PublicKey,
    ) -> Result<Certificate, IssueError> {
        if !self.certificate.is_ca() {
            return Err(IssueError::new(
                IssueErrorKind::Issuer,
                format!("{} is not a CA", self.certificate.id()),
            ));
        }
        let issuer_key_id = self.certificate.subject_key_id().ok_or_else(|| {
            IssueError::new(IssueErrorKind::Issuer, "issuer has no subjectKeyIdentifier")
        })?;
        build(
            template,
            subject_key,
            &subject_name(template)?,
            self.certificate.subject_name(),
            issuer_key_id,
            &self.key,
        )
    }

    /// Generates a key of `algorithm` and issues its certificate.
    pub fn issue_with_new_key(
        &self,
        template: &CertificateTemplate,
        algorithm: Algorithm,
    ) -> Result<CertifiedKey, IssueError> {
        let key = PrivateKey::generate(algorithm)?;
        let certificate = self.issue(template, key.public_key())?;
        Ok(CertifiedKey { certificate, key })
    }
}

/// The TBSCertificate as we encode it: the issuer and subject names are given as DER so that a
/// child's issuer is byte-for-byte its issuer's subject.
#[derive(der::Sequence)]
struct TbsToSign<'a> {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    version: Version,
    serial_number: SerialNumber,
    signature: AlgorithmIdentifierOwned,
    issuer: AnyRef<'a>,
    validity: Validity,
    subject: AnyRef<'a>,
    subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT")]
    extensions: Vec<Extension>,
}

fn encoding(what: &'static str) -> impl Fn(der::Error) -> IssueError {
    move |e| IssueError::new(IssueErrorKind::Encoding, format!("{what}: {e}"))
}

fn build(
    template: &CertificateTemplate,
    subject_key: &PublicKey,
    subject_name: &[u8],
    issuer_name: &[u8],
    issuer_key_id: &[u8],
    issuer_key: &PrivateKey,
) -> Result<Certificate, IssueError> {
    let signature_algorithm = AlgorithmIdentifierOwned {
        oid: issuer_key.algorithm().signature_oid(),
        parameters: None,
    };
    let tbs = TbsToSign {
        version: Version::V3,
        serial_number: random_serial()?,
        signature: signature_algorithm.clone(),
        issuer: AnyRef::try_from(issuer_name).map_err(encoding("issuer name"))?,
        validity: validity(template)?,
        subject: AnyRef::try_from(subject_name).map_err(encoding("subject name"))?,
        subject_public_key_info: subject_key.spki()?,
        extensions: extensions(template, subject_key, issuer_key_id)?,
    }
    .to_der()
    .map_err(encoding("tbsCertificate"))?;

    let signature = issuer_key.sign_der(&tbs)?;
    let certificate = RawCertificate {
        tbs: AnyRef::try_from(tbs.as_slice()).map_err(encoding("tbsCertificate"))?,
        signature_algorithm: AlgorithmIdentifierRef {
            oid: signature_algorithm.oid,
            parameters: None,
        },
        signature: BitStringRef::from_bytes(&signature).map_err(encoding("signature"))?,
    }
    .to_der()
    .map_err(encoding("certificate"))?;
    Certificate::from_der(&certificate).map_err(|e| {
        IssueError::new(
            IssueErrorKind::Encoding,
            format!("issued certificate does not parse: {e}"),
        )
    })
}

/// Subject name, most significant first: O, OU, CN (printed as `CN=..,OU=..,O=..`).
fn subject_name(template: &CertificateTemplate) -> Result<Vec<u8>, IssueError> {
    for id in [&template.id, &template.institution] {
        if !is_valid_id(id) {
            return Err(IssueError::new(
                IssueErrorKind::InvalidId,
                format!(
                    "{id:?} is not 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit"
                ),
            ));
        }
    }
    let mut name = RdnSequence::default();
    for (oid, value) in [
        (OID_ORGANIZATION, template.institution.as_str()),
        (OID_ORGANIZATIONAL_UNIT, template.role.as_str()),
        (OID_COMMON_NAME, template.id.as_str()),
    ] {
        let value = Any::encode_from(&Utf8StringRef::new(value).map_err(encoding("name"))?)
            .map_err(encoding("name"))?;
        let mut rdn = RelativeDistinguishedName::default();
        rdn.insert(AttributeTypeAndValue { oid, value })
            .map_err(encoding("name"))?;
        name.push(rdn);
    }
    name.to_der().map_err(encoding("name"))
}

fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; SERIAL_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IssueError::new(IssueErrorKind::Key, "system random failed"))?;
    // Top bit clear (positive without a pad byte), next bit set (no leading zero byte): the
    // encoding is always exactly SERIAL_BYTES long.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::new(&bytes).map_err(encoding("serial"))
}

fn validity(template: &CertificateTemplate) -> Result<Validity, IssueError> {
    if template.valid_from_ms < 0 || template.valid_until_ms < template.valid_from_ms {
        return Err(IssueError::new(
            IssueErrorKind::InvalidValidity,
            format!(
                "validity {}..{} ms is empty or before 1970",
                template.valid_from_ms, template.valid_until_ms
            ),
        ));
    }
    let time = |ms: i64| -> Result<Time, IssueError> {
        let seconds = u64::try_from(ms / 1000)
            .map_err(|_| IssueError::new(IssueErrorKind::InvalidValidity, "negative time"))?;
        der::DateTime::from_unix_duration(Duration::from_secs(seconds))
            .map(Time::from)
            .map_err(|e| IssueError::new(IssueErrorKind::InvalidValidity, e.to_string()))
    };
    Ok(Validity::new(
        time(template.valid_from_ms)?,
        time(template.valid_until_ms)?,
    ))
}

fn extension(
    value: &impl der::Encode,
    oid: der::asn1::ObjectIdentifier,
    critical: bool,
) -> Result<Extension, IssueError> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der().map_err(encoding("extension"))?)
            .map_err(encoding("extension"))?,
    })
}

fn extensions(
    template: &CertificateTemplate,
    subject_key: &PublicKey,
    issuer_key_id: &[u8],
) -> Result<Vec<Extension>, IssueError> {
    use der::oid::AssociatedOid as _;

    let octets = |bytes: &[u8]| OctetString::new(bytes).map_err(encoding("key identifier"));
    let mut out = vec![extension(
        &BasicConstraints {
            ca: template.is_ca,
            path_len_constraint: template.path_len,
        },
        BasicConstraints::OID,
        true,
    )?];
    if let Some(profile) = template.key_usage {
        let bits = match profile {
            KeyUsageProfile::CertificateAuthority => {
                X509KeyUsages::KeyCertSign | X509KeyUsages::CRLSign
            }
            KeyUsageProfile::DigitalSignature => X509KeyUsages::DigitalSignature.into(),
        };
        out.push(extension(&KeyUsage(bits), KeyUsage::OID, true)?);
    }
    out.push(extension(
        &SubjectKeyIdentifier(octets(&subject_key.key_identifier())?),
        SubjectKeyIdentifier::OID,
        false,
    )?);
    out.push(extension(
        &AuthorityKeyIdentifier {
            key_identifier: Some(octets(issuer_key_id)?),
            ..Default::default()
        },
        AuthorityKeyIdentifier::OID,
        false,
    )?);
    Ok(out)
}
