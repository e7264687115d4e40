//! Signing and verifying keys for the two algorithms of the system.
//!
//! ECDSA P-256 with SHA-256 signs and verifies with ring (the fastest verifier available to us).
//! SM2 with SM3 signs with the RustCrypto `sm2` crate (constant-time) and verifies with our own
//! faster, variable-time verifier (`super::sm2_verify`: verification handles public data only),
//! both with the default distinguishing identifier [`SM2_DISTINGUISHING_ID`].
//!
//! Message signatures are the fixed 64-byte `r || s` form (short and of constant size on the
//! wire); certificate signatures are DER `ECDSA-Sig-Value`, as X.509 requires. Private keys are
//! stored as PKCS#8 (`PRIVATE KEY` PEM), readable by OpenSSL.
//!
//! P-256 signatures are randomized (ring mixes a fresh random value into the nonce); SM2
//! signatures use deterministic nonces (RFC 6979 construction with SM3), which needs no RNG at
//! signing time and is as safe.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use der::asn1::{Any, BitString, ObjectIdentifier};
use der::zeroize::Zeroizing;
use der::{Decode as _, Encode as _};
use p256::elliptic_curve::sec1::ToSec1Point as _;
use ring::rand::SecureRandom as _;
use ring::signature::{self as ring_sig, KeyPair as _};
use serde::{Deserialize, Serialize};
use sm2::dsa::signature::Signer as _;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use super::digest::sha1_key_identifier;
use super::error::{KeyError, KeyErrorKind, SignatureError, SignatureErrorKind};
use super::sm2_verify::Sm2VerifyingKey;

/// Size of a message signature: `r || s`, 32 bytes each, big-endian.
pub const SIGNATURE_BYTES: usize = 64;
/// Size of a private scalar.
pub const SCALAR_BYTES: usize = 32;
/// Size of an uncompressed SEC1 public point (`04 || x || y`).
pub const PUBLIC_POINT_BYTES: usize = 65;
/// The SM2 distinguishing identifier (GB/T 35276 default), hashed into every SM2 signature.
pub const SM2_DISTINGUISHING_ID: &str = "1234567812345678";
/// Attempts at drawing a valid random scalar before giving up (each fails with probability
/// below 2^-32).
const KEYGEN_ATTEMPTS_MAX: usize = 8;
/// PEM label of PKCS#8 private keys.
pub const PRIVATE_KEY_PEM_LABEL: &str = "PRIVATE KEY";
/// PEM label of a public key (SubjectPublicKeyInfo, RFC 7468 §13).
pub const PUBLIC_KEY_PEM_LABEL: &str = "PUBLIC KEY";

/// id-ecPublicKey (RFC 5480).
pub(crate) const OID_EC_PUBLIC_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// prime256v1 / secp256r1 (RFC 5480).
pub(crate) const OID_CURVE_P256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// SM2 curve (GM/T 0006).
pub(crate) const OID_CURVE_SM2: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.156.10197.1.301");
/// ecdsa-with-SHA256 (RFC 5758).
pub(crate) const OID_ECDSA_WITH_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// SM2-with-SM3 (GM/T 0006).
pub(crate) const OID_SM2_WITH_SM3: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.156.10197.1.501");

/// The SM2 group order minus one, big-endian: a secret scalar equal to it has no inverse of
/// `1 + d` and cannot sign.
const SM2_ORDER_MINUS_ONE: [u8; SCALAR_BYTES] = [
    0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x72, 0x03, 0xdf, 0x6b, 0x21, 0xc6, 0x05, 0x2b, 0x53, 0xbb, 0xf4, 0x09, 0x39, 0xd5, 0x41, 0x22,
];

/// A signature algorithm, chosen per certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA over NIST P-256 with SHA-256.
    #[serde(rename = "p256")]
    EcdsaP256Sha256,
    /// SM2 digital signature with SM3 (GB/T 32918, GB/T 32905).
    #[serde(rename = "sm2")]
    Sm2Sm3,
}

impl Algorithm {
    /// Both algorithms.
    pub const ALL: [Algorithm; 2] = [Algorithm::EcdsaP256Sha256, Algorithm::Sm2Sm3];

    /// Short stable name: `p256` or `sm2` (manifest files, command line, metrics labels).
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::EcdsaP256Sha256 => "p256",
            Algorithm::Sm2Sm3 => "sm2",
        }
    }

    /// The other algorithm (used to alternate algorithms deterministically).
    pub const fn other(self) -> Algorithm {
        match self {
            Algorithm::EcdsaP256Sha256 => Algorithm::Sm2Sm3,
            Algorithm::Sm2Sm3 => Algorithm::EcdsaP256Sha256,
        }
    }

    pub(crate) const fn curve_oid(self) -> ObjectIdentifier {
        match self {
            Algorithm::EcdsaP256Sha256 => OID_CURVE_P256,
            Algorithm::Sm2Sm3 => OID_CURVE_SM2,
        }
    }

    pub(crate) const fn signature_oid(self) -> ObjectIdentifier {
        match self {
            Algorithm::EcdsaP256Sha256 => OID_ECDSA_WITH_SHA256,
            Algorithm::Sm2Sm3 => OID_SM2_WITH_SM3,
        }
    }

    pub(crate) fn from_curve_oid(oid: &ObjectIdentifier) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|alg| alg.curve_oid() == *oid)
    }

    pub(crate) fn from_signature_oid(oid: &ObjectIdentifier) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|alg| alg.signature_oid() == *oid)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|alg| alg.as_str() == s)
            .ok_or(KeyError::new(
                KeyErrorKind::UnsupportedAlgorithm,
                "algorithm name is neither p256 nor sm2",
            ))
    }
}

/// A public key, parsed and validated once, ready to verify signatures.
///
/// Cloning is cheap (the SM2 key, with its precomputed identity hash `Z` and table of multiples,
/// is shared).
#[derive(Clone)]
pub struct PublicKey {
    point: [u8; PUBLIC_POINT_BYTES],
    verifier: Verifier,
}

#[derive(Clone)]
enum Verifier {
    /// ring parses the point at each verification (cheap next to the verification itself); the
    /// point was validated on the curve when the key was built.
    P256,
    Sm2(Arc<Sm2VerifyingKey>),
}

impl PublicKey {
    /// A key from an uncompressed SEC1 point (`04 || x || y`), checked to be on the curve.
    pub fn from_sec1_point(algorithm: Algorithm, point: &[u8]) -> Result<Self, KeyError> {
        let point: [u8; PUBLIC_POINT_BYTES] = point.try_into().map_err(|_| {
            KeyError::new(
                KeyErrorKind::Malformed,
                "public key is not a 65-byte uncompressed point",
            )
        })?;
        if point[0] != 0x04 {
            return Err(KeyError::new(
                KeyErrorKind::Malformed,
                "public key is not an uncompressed point",
            ));
        }
        let verifier = match algorithm {
            Algorithm::EcdsaP256Sha256 => {
                p256::PublicKey::from_sec1_bytes(&point)
                    .map_err(|_| KeyError::new(KeyErrorKind::Malformed, "not a point on P-256"))?;
                Verifier::P256
            }
            Algorithm::Sm2Sm3 => {
                // The crate decodes and validates the point as before; the verifier checks it
                // again on its own arithmetic.
                sm2::PublicKey::from_sec1_bytes(&point)
                    .map_err(|_| KeyError::new(KeyErrorKind::Malformed, "not a point on SM2"))?;
                let key = Sm2VerifyingKey::from_sec1_point(&point, SM2_DISTINGUISHING_ID)
                    .ok_or(KeyError::new(KeyErrorKind::Malformed, "not a point on SM2"))?;
                Verifier::Sm2(Arc::new(key))
            }
        };
        Ok(PublicKey { point, verifier })
    }

    /// The public half of an SM2 signing key.
    fn from_sm2(key: &sm2::dsa::VerifyingKey) -> Result<Self, KeyError> {
        PublicKey::from_sec1_point(Algorithm::Sm2Sm3, &key.to_sec1_bytes())
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.verifier {
            Verifier::P256 => Algorithm::EcdsaP256Sha256,
            Verifier::Sm2(_) => Algorithm::Sm2Sm3,
        }
    }

    /// The uncompressed SEC1 point.
    pub fn sec1_point(&self) -> &[u8; PUBLIC_POINT_BYTES] {
        &self.point
    }

    /// The key identifier used in subjectKeyIdentifier / authorityKeyIdentifier: SHA-1 of the
    /// subjectPublicKey bits (RFC 5280 §4.2.1.2, method 1).
    pub fn key_identifier(&self) -> [u8; 20] {
        sha1_key_identifier(&self.point)
    }

    /// DER SubjectPublicKeyInfo: id-ecPublicKey with the curve OID as parameter.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, KeyError> {
        self.spki()?
            .to_der()
            .map_err(|_| KeyError::new(KeyErrorKind::Encoding, "SubjectPublicKeyInfo encoding"))
    }

    /// `PUBLIC KEY` PEM (SubjectPublicKeyInfo), LF line endings, as OpenSSL writes it: how a
    /// wallet hands a new key to its institution's CA (`dcpipe pki certify-wallet-key`).
    pub fn to_spki_pem(&self) -> Result<String, KeyError> {
        let der = self.to_spki_der()?;
        der::pem::encode_string(PUBLIC_KEY_PEM_LABEL, der::pem::LineEnding::LF, &der)
            .map_err(|_| KeyError::new(KeyErrorKind::Encoding, "PEM encoding"))
    }

    /// A key from a DER SubjectPublicKeyInfo: id-ecPublicKey with the P-256 or SM2 curve
    /// named, an uncompressed point on it.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let info = SubjectPublicKeyInfoOwned::from_der(der)
            .map_err(|_| KeyError::new(KeyErrorKind::Malformed, "not a SubjectPublicKeyInfo"))?;
        PublicKey::from_spki(&info)
    }

    /// A key from a `PUBLIC KEY` PEM document.
    pub fn from_spki_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = der::pem::decode_vec(pem.as_bytes())
            .map_err(|_| KeyError::new(KeyErrorKind::Malformed, "not a PEM document"))?;
        if label != PUBLIC_KEY_PEM_LABEL {
            return Err(KeyError::new(
                KeyErrorKind::Malformed,
                "PEM label is not PUBLIC KEY",
            ));
        }
        PublicKey::from_spki_der(&der)
    }

    /// A key from a parsed SubjectPublicKeyInfo (a `PUBLIC KEY` file's or a certificate's).
    pub(crate) fn from_spki(info: &SubjectPublicKeyInfoOwned) -> Result<Self, KeyError> {
        let malformed = |detail| KeyError::new(KeyErrorKind::Malformed, detail);
        if info.algorithm.oid != OID_EC_PUBLIC_KEY {
            return Err(KeyError::new(
                KeyErrorKind::UnsupportedAlgorithm,
                "public key is not an elliptic-curve key",
            ));
        }
        let curve = info
            .algorithm
            .parameters
            .as_ref()
            .ok_or(malformed("EC public key without named curve"))?
            .decode_as::<ObjectIdentifier>()
            .map_err(|_| malformed("EC public key parameters are not a named curve"))?;
        let algorithm = Algorithm::from_curve_oid(&curve).ok_or(KeyError::new(
            KeyErrorKind::UnsupportedAlgorithm,
            "public key is on a curve other than P-256 and SM2",
        ))?;
        let point = info
            .subject_public_key
            .as_bytes()
            .ok_or(malformed("subjectPublicKey has unused bits"))?;
        PublicKey::from_sec1_point(algorithm, point)
    }

    pub(crate) fn spki(&self) -> Result<SubjectPublicKeyInfoOwned, KeyError> {
        let encoding = |_| KeyError::new(KeyErrorKind::Encoding, "SubjectPublicKeyInfo encoding");
        Ok(SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: OID_EC_PUBLIC_KEY,
                parameters: Some(
                    Any::encode_from(&self.algorithm().curve_oid()).map_err(encoding)?,
                ),
            },
            subject_public_key: BitString::from_bytes(&self.point).map_err(encoding)?,
        })
    }

    /// Verifies a 64-byte `r || s` message signature.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        if signature.len() != SIGNATURE_BYTES {
            return Err(SignatureError::new(SignatureErrorKind::Malformed));
        }
        match &self.verifier {
            Verifier::P256 => {
                ring_sig::UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_FIXED, &self.point)
                    .verify(message, signature)
                    .map_err(|_| SignatureError::new(SignatureErrorKind::Invalid))
            }
            Verifier::Sm2(key) => {
                let signature = sm2::dsa::Signature::from_slice(signature)
                    .map_err(|_| SignatureError::new(SignatureErrorKind::Malformed))?;
                sm2_verdict(key.verify(message, &signature))
            }
        }
    }

    /// Verifies a DER `ECDSA-Sig-Value` signature (the certificate encoding).
    pub(crate) fn verify_der(
        &self,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        match &self.verifier {
            Verifier::P256 => {
                ring_sig::UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_ASN1, &self.point)
                    .verify(message, signature)
                    .map_err(|_| SignatureError::new(SignatureErrorKind::Invalid))
            }
            Verifier::Sm2(key) => {
                let signature = sm2::dsa::Signature::from_der(signature)
                    .map_err(|_| SignatureError::new(SignatureErrorKind::Malformed))?;
                sm2_verdict(key.verify(message, &signature))
            }
        }
    }
}

fn sm2_verdict(valid: bool) -> Result<(), SignatureError> {
    if valid {
        Ok(())
    } else {
        Err(SignatureError::new(SignatureErrorKind::Invalid))
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.algorithm() == other.algorithm() && self.point == other.point
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm())
            .field("key_id", &hex::encode(self.key_identifier()))
            .finish()
    }
}

/// A private signing key. Its `Debug` output shows the algorithm and public key id only.
pub struct PrivateKey {
    signer: Signer,
    public: PublicKey,
}

enum Signer {
    P256 {
        pair: Box<ring_sig::EcdsaKeyPair>,
        /// Kept to export PKCS#8, which ring cannot do; wiped on drop.
        scalar: Zeroizing<[u8; SCALAR_BYTES]>,
    },
    Sm2(Box<sm2::dsa::SigningKey>),
}

impl PrivateKey {
    /// A fresh key from the operating system's secure random generator.
    pub fn generate(algorithm: Algorithm) -> Result<Self, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        match algorithm {
            // ring's own generator (one fast base-point multiplication); its PKCS#8 output is
            // read back for the scalar that export needs.
            Algorithm::EcdsaP256Sha256 => {
                let document = ring_sig::EcdsaKeyPair::generate_pkcs8(
                    &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &rng,
                )
                .map_err(|_| KeyError::new(KeyErrorKind::Random, "P-256 key generation failed"))?;
                PrivateKey::from_pkcs8_der(document.as_ref())
            }
            Algorithm::Sm2Sm3 => {
                for _ in 0..KEYGEN_ATTEMPTS_MAX {
                    let mut scalar = Zeroizing::new([0u8; SCALAR_BYTES]);
                    rng.fill(scalar.as_mut_slice())
                        .map_err(|_| KeyError::new(KeyErrorKind::Random, "system random failed"))?;
                    // A draw outside [1, n-2] is drawn again: uniform over usable scalars.
                    if let Ok(key) = PrivateKey::from_scalar(algorithm, &scalar) {
                        return Ok(key);
                    }
                }
                Err(KeyError::new(
                    KeyErrorKind::Random,
                    "no valid scalar drawn from the system random generator",
                ))
            }
        }
    }

    /// A key from a fixed 32-byte big-endian scalar; for checked-in test vectors.
    pub fn from_scalar(
        algorithm: Algorithm,
        scalar: &[u8; SCALAR_BYTES],
    ) -> Result<Self, KeyError> {
        match algorithm {
            Algorithm::EcdsaP256Sha256 => {
                let secret = p256::SecretKey::from_slice(scalar).map_err(|_| {
                    KeyError::new(KeyErrorKind::Malformed, "scalar out of range for P-256")
                })?;
                let point = secret.public_key().to_sec1_point(false);
                PrivateKey::p256(scalar, point.as_bytes())
            }
            Algorithm::Sm2Sm3 => {
                if *scalar == SM2_ORDER_MINUS_ONE {
                    return Err(KeyError::new(
                        KeyErrorKind::Malformed,
                        "scalar n-1 cannot sign with SM2",
                    ));
                }
                let secret = sm2::SecretKey::from_slice(scalar).map_err(|_| {
                    KeyError::new(KeyErrorKind::Malformed, "scalar out of range for SM2")
                })?;
                let signing = sm2::dsa::SigningKey::new(SM2_DISTINGUISHING_ID, &secret)
                    .map_err(|_| KeyError::new(KeyErrorKind::Malformed, "SM2 key rejected"))?;
                let public = PublicKey::from_sm2(signing.verifying_key())?;
                Ok(PrivateKey {
                    signer: Signer::Sm2(Box::new(signing)),
                    public,
                })
            }
        }
    }

    /// A P-256 key from its scalar and public point; ring checks that they belong together.
    fn p256(scalar: &[u8; SCALAR_BYTES], point: &[u8]) -> Result<Self, KeyError> {
        let pair = ring_sig::EcdsaKeyPair::from_private_key_and_public_key(
            &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            scalar,
            point,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|_| KeyError::new(KeyErrorKind::Malformed, "P-256 key rejected"))?;
        let public =
            PublicKey::from_sec1_point(Algorithm::EcdsaP256Sha256, pair.public_key().as_ref())?;
        Ok(PrivateKey {
            signer: Signer::P256 {
                pair: Box::new(pair),
                scalar: Zeroizing::new(*scalar),
            },
            public,
        })
    }

    /// A key from a DER PKCS#8 `PrivateKeyInfo` (id-ecPublicKey with the P-256 or SM2 curve;
    /// RFC 5915 ECPrivateKey inside). An embedded public key must match the private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let malformed = |detail| KeyError::new(KeyErrorKind::Malformed, detail);
        let info = sm2::pkcs8::PrivateKeyInfoRef::try_from(der)
            .map_err(|_| malformed("not a PKCS#8 PrivateKeyInfo"))?;
        if info.algorithm.oid != OID_EC_PUBLIC_KEY {
            return Err(KeyError::new(
                KeyErrorKind::UnsupportedAlgorithm,
                "PKCS#8 key is not an elliptic-curve key",
            ));
        }
        let curve = info
            .algorithm
            .parameters_oid()
            .map_err(|_| malformed("PKCS#8 key has no named curve"))?;
        let algorithm = Algorithm::from_curve_oid(&curve).ok_or(KeyError::new(
            KeyErrorKind::UnsupportedAlgorithm,
            "PKCS#8 key is on a curve other than P-256 and SM2",
        ))?;
        let ec = EcPrivateKey::from_der(info.private_key.as_bytes())
            .map_err(|_| malformed("not an RFC 5915 ECPrivateKey"))?;
        if ec.version != 1 || ec.parameters.is_some_and(|oid| oid != curve) {
            return Err(malformed(
                "ECPrivateKey version or curve is not the expected one",
            ));
        }
        let scalar: Zeroizing<[u8; SCALAR_BYTES]> = Zeroizing::new(
            ec.private_key
                .as_bytes()
                .try_into()
                .map_err(|_| malformed("private key is not 32 bytes"))?,
        );
        let embedded = ec
            .public_key
            .map(|bits| {
                bits.as_bytes()
                    .ok_or(malformed("public key has unused bits"))
            })
            .transpose()?;
        let key = match (algorithm, embedded) {
            // With the public point at hand ring needs one multiplication to check it.
            (Algorithm::EcdsaP256Sha256, Some(point)) => PrivateKey::p256(&scalar, point)?,
            _ => PrivateKey::from_scalar(algorithm, &scalar)?,
        };
        if embedded.is_some_and(|point| point != key.public.point.as_slice()) {
            return Err(malformed(
                "embedded public key does not match the private key",
            ));
        }
        Ok(key)
    }

    /// A key from a `PRIVATE KEY` PEM document.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = der::pem::decode_vec(pem.as_bytes())
            .map_err(|_| KeyError::new(KeyErrorKind::Malformed, "not a PEM document"))?;
        let der = Zeroizing::new(der);
        if label != PRIVATE_KEY_PEM_LABEL {
            return Err(KeyError::new(
                KeyErrorKind::Malformed,
                "PEM label is not PRIVATE KEY",
            ));
        }
        PrivateKey::from_pkcs8_der(&der)
    }

    /// DER PKCS#8 `PrivateKeyInfo` with an RFC 5915 ECPrivateKey inside (public key included,
    /// curve named in the AlgorithmIdentifier), as OpenSSL writes and reads it.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let encoding = |_| KeyError::new(KeyErrorKind::Encoding, "PKCS#8 encoding");
        let scalar = Zeroizing::new(match &self.signer {
            Signer::P256 { scalar, .. } => **scalar,
            Signer::Sm2(signing) => signing.to_bytes().into(),
        });
        let ec = Zeroizing::new(
            EcPrivateKey {
                version: 1,
                private_key: der::asn1::OctetStringRef::new(scalar.as_slice()).map_err(encoding)?,
                parameters: None,
                public_key: Some(
                    der::asn1::BitStringRef::from_bytes(&self.public.point).map_err(encoding)?,
                ),
            }
            .to_der()
            .map_err(encoding)?,
        );
        let curve = self.algorithm().curve_oid();
        let info = sm2::pkcs8::PrivateKeyInfoRef::new(
            spki::AlgorithmIdentifierRef {
                oid: OID_EC_PUBLIC_KEY,
                parameters: Some((&curve).into()),
            },
            der::asn1::OctetStringRef::new(&ec).map_err(encoding)?,
        );
        Ok(Zeroizing::new(info.to_der().map_err(encoding)?))
    }

    /// `PRIVATE KEY` PEM (PKCS#8), LF line endings.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let der = self.to_pkcs8_der()?;
        der::pem::encode_string(PRIVATE_KEY_PEM_LABEL, der::pem::LineEnding::LF, &der)
            .map(Zeroizing::new)
            .map_err(|_| KeyError::new(KeyErrorKind::Encoding, "PEM encoding"))
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.public.algorithm()
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `message`; returns the 64-byte `r || s` signature.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.signer {
            Signer::P256 { pair, .. } => pair
                .sign(&ring::rand::SystemRandom::new(), message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| KeyError::new(KeyErrorKind::Signing, "P-256 signing failed")),
            Signer::Sm2(signing) => signing
                .try_sign(message)
                .map(|signature| signature.to_bytes().to_vec())
                .map_err(|_| KeyError::new(KeyErrorKind::Signing, "SM2 signing failed")),
        }
    }

    /// Signs `message`; returns a DER `ECDSA-Sig-Value` (the certificate encoding).
    pub(crate) fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let fixed = self.sign(message)?;
        fixed_to_der(&fixed)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm())
            .field("key_id", &hex::encode(self.public.key_identifier()))
            .finish_non_exhaustive()
    }
}

/// RFC 5915 `ECPrivateKey`, the content of an EC PKCS#8 key.
#[derive(der::Sequence)]
struct EcPrivateKey<'a> {
    version: u8,
    private_key: &'a der::asn1::OctetStringRef,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    parameters: Option<ObjectIdentifier>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    public_key: Option<der::asn1::BitStringRef<'a>>,
}

/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 5480 / GM/T 0009).
#[derive(der::Sequence)]
struct EcdsaSigValue<'a> {
    r: der::asn1::UintRef<'a>,
    s: der::asn1::UintRef<'a>,
}

/// Converts a 64-byte `r || s` signature to DER.
fn fixed_to_der(fixed: &[u8]) -> Result<Vec<u8>, KeyError> {
    let encoding = |_| KeyError::new(KeyErrorKind::Encoding, "signature DER encoding");
    let (r, s) = fixed.split_at(SIGNATURE_BYTES / 2);
    EcdsaSigValue {
        r: der::asn1::UintRef::new(r).map_err(encoding)?,
        s: der::asn1::UintRef::new(s).map_err(encoding)?,
    }
    .to_der()
    .map_err(encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_scalar(byte: u8) -> [u8; SCALAR_BYTES] {
        let mut scalar = [byte; SCALAR_BYTES];
        scalar[0] = 0x01;
        scalar
    }

    #[test]
    fn a_public_key_goes_through_a_public_key_pem_file_unchanged() {
        for algorithm in [Algorithm::EcdsaP256Sha256, Algorithm::Sm2Sm3] {
            let key = PrivateKey::from_scalar(algorithm, &fixed_scalar(7)).expect("key");
            let pem = key.public_key().to_spki_pem().expect("pem");
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
            let back = PublicKey::from_spki_pem(&pem).expect("parsed");
            assert_eq!(back.algorithm(), algorithm);
            assert_eq!(back.sec1_point(), key.public_key().sec1_point());
            let signature = key.sign(b"rotated").expect("signature");
            assert!(back.verify(b"rotated", &signature).is_ok());
        }
    }

    #[test]
    fn a_public_key_file_of_another_kind_or_curve_is_refused_with_its_kind() {
        let key =
            PrivateKey::from_scalar(Algorithm::EcdsaP256Sha256, &fixed_scalar(3)).expect("key");
        // A private key file is not a public key file.
        let private = key.to_pkcs8_pem().expect("pkcs8");
        assert_eq!(
            PublicKey::from_spki_pem(&private).unwrap_err().kind(),
            KeyErrorKind::Malformed
        );
        assert_eq!(
            PublicKey::from_spki_pem("not pem").unwrap_err().kind(),
            KeyErrorKind::Malformed
        );
        // An Ed25519 key (RFC 8410): not an elliptic-curve key of ours.
        let mut ed25519 = hex::decode("302a300506032b6570032100").expect("hex");
        ed25519.extend([9u8; 32]);
        assert_eq!(
            PublicKey::from_spki_der(&ed25519).unwrap_err().kind(),
            KeyErrorKind::UnsupportedAlgorithm
        );
        // id-ecPublicKey on secp384r1.
        let mut spki = key.public_key().spki().expect("spki");
        spki.algorithm.parameters =
            Some(Any::encode_from(&ObjectIdentifier::new_unwrap("1.3.132.0.34")).expect("oid"));
        assert_eq!(
            PublicKey::from_spki_der(&spki.to_der().expect("der"))
                .unwrap_err()
                .kind(),
            KeyErrorKind::UnsupportedAlgorithm
        );
        // A point that is not on the curve.
        let mut spki = key.public_key().spki().expect("spki");
        let mut point = *key.public_key().sec1_point();
        point[64] ^= 1;
        spki.subject_public_key = BitString::from_bytes(&point).expect("bits");
        assert_eq!(
            PublicKey::from_spki_der(&spki.to_der().expect("der"))
                .unwrap_err()
                .kind(),
            KeyErrorKind::Malformed
        );
    }

    #[test]
    fn signatures_are_64_bytes_and_verify_for_both_algorithms() {
        for algorithm in Algorithm::ALL {
            let key = PrivateKey::generate(algorithm).expect("generate");
            let signature = key.sign(b"clearing message").expect("sign");
            assert_eq!(signature.len(), SIGNATURE_BYTES, "{algorithm}");
            assert_eq!(
                key.public_key().verify(b"clearing message", &signature),
                Ok(())
            );
        }
    }

    #[test]
    fn rejects_signature_over_another_message() {
        for algorithm in Algorithm::ALL {
            let key = PrivateKey::generate(algorithm).expect("generate");
            let signature = key.sign(b"amount 100").expect("sign");
            let err = key
                .public_key()
                .verify(b"amount 900", &signature)
                .expect_err("must fail");
            assert_eq!(err.reason_code(), "signature.invalid", "{algorithm}");
        }
    }

    #[test]
    fn rejects_signature_of_wrong_length() {
        for algorithm in Algorithm::ALL {
            let key = PrivateKey::generate(algorithm).expect("generate");
            let err = key
                .public_key()
                .verify(b"m", &[1u8; 63])
                .expect_err("short");
            assert_eq!(err.kind(), SignatureErrorKind::Malformed);
        }
    }

    #[test]
    fn rejects_signature_by_another_key() {
        for algorithm in Algorithm::ALL {
            let signer = PrivateKey::generate(algorithm).expect("generate");
            let other = PrivateKey::generate(algorithm).expect("generate");
            let signature = signer.sign(b"m").expect("sign");
            assert!(other.public_key().verify(b"m", &signature).is_err());
        }
    }

    #[test]
    fn fixed_scalar_gives_the_same_public_key_every_time() {
        for algorithm in Algorithm::ALL {
            let a = PrivateKey::from_scalar(algorithm, &fixed_scalar(7)).expect("a");
            let b = PrivateKey::from_scalar(algorithm, &fixed_scalar(7)).expect("b");
            assert_eq!(a.public_key(), b.public_key());
        }
    }

    #[test]
    fn sm2_signature_of_fixed_key_is_deterministic() {
        let key = PrivateKey::from_scalar(Algorithm::Sm2Sm3, &fixed_scalar(9)).expect("key");
        assert_eq!(
            key.sign(b"vector").expect("a"),
            key.sign(b"vector").expect("b")
        );
    }

    #[test]
    fn rejects_zero_and_out_of_range_scalars() {
        for algorithm in Algorithm::ALL {
            let zero = PrivateKey::from_scalar(algorithm, &[0u8; SCALAR_BYTES]).expect_err("0");
            assert_eq!(zero.kind(), KeyErrorKind::Malformed);
            let big = PrivateKey::from_scalar(algorithm, &[0xffu8; SCALAR_BYTES]).expect_err("n+");
            assert_eq!(big.kind(), KeyErrorKind::Malformed);
        }
        let n_minus_1 =
            PrivateKey::from_scalar(Algorithm::Sm2Sm3, &SM2_ORDER_MINUS_ONE).expect_err("n-1");
        assert_eq!(n_minus_1.kind(), KeyErrorKind::Malformed);
    }

    #[test]
    fn pkcs8_pem_round_trip_keeps_the_key() {
        for algorithm in Algorithm::ALL {
            let key = PrivateKey::generate(algorithm).expect("generate");
            let pem = key.to_pkcs8_pem().expect("pem");
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let back = PrivateKey::from_pkcs8_pem(&pem).expect("parse");
            assert_eq!(back.public_key(), key.public_key());
            let signature = back.sign(b"after reload").expect("sign");
            assert_eq!(key.public_key().verify(b"after reload", &signature), Ok(()));
        }
    }

    /// PKCS#8 of `key` with the embedded public point replaced (or left out with `None`).
    fn pkcs8_with_point(key: &PrivateKey, point: Option<&[u8]>) -> Vec<u8> {
        let der = key.to_pkcs8_der().expect("der");
        let info = sm2::pkcs8::PrivateKeyInfoRef::try_from(der.as_slice()).expect("info");
        let ec = EcPrivateKey::from_der(info.private_key.as_bytes()).expect("ec");
        let ec = EcPrivateKey {
            public_key: point.map(|p| der::asn1::BitStringRef::from_bytes(p).expect("bits")),
            ..ec
        }
        .to_der()
        .expect("ec der");
        sm2::pkcs8::PrivateKeyInfoRef::new(
            info.algorithm,
            der::asn1::OctetStringRef::new(&ec).expect("octets"),
        )
        .to_der()
        .expect("info der")
    }

    #[test]
    fn rejects_pkcs8_whose_public_key_is_another_keys() {
        for algorithm in Algorithm::ALL {
            let key = PrivateKey::generate(algorithm).expect("key");
            let other = PrivateKey::generate(algorithm).expect("other");
            let der = pkcs8_with_point(&key, Some(other.public_key().sec1_point()));
            let err = PrivateKey::from_pkcs8_der(&der).expect_err("mismatch");
            assert_eq!(err.kind(), KeyErrorKind::Malformed, "{algorithm}");
        }
    }

    #[test]
    fn reads_pkcs8_without_embedded_public_key() {
        for algorithm in Algorithm::ALL {
            let key = PrivateKey::generate(algorithm).expect("key");
            let der = pkcs8_with_point(&key, None);
            let back = PrivateKey::from_pkcs8_der(&der).expect("reads");
            assert_eq!(back.public_key(), key.public_key(), "{algorithm}");
        }
    }

    #[test]
    fn pkcs8_names_the_curve_of_each_algorithm() {
        for algorithm in Algorithm::ALL {
            let key = PrivateKey::generate(algorithm).expect("generate");
            let der = key.to_pkcs8_der().expect("der");
            let info = sm2::pkcs8::PrivateKeyInfoRef::try_from(der.as_slice()).expect("info");
            assert_eq!(info.algorithm.oid, OID_EC_PUBLIC_KEY);
            assert_eq!(
                info.algorithm.parameters_oid().expect("curve"),
                algorithm.curve_oid()
            );
        }
    }

    #[test]
    fn rejects_pem_with_another_label() {
        let key = PrivateKey::generate(Algorithm::EcdsaP256Sha256).expect("generate");
        let pem = key
            .to_pkcs8_pem()
            .expect("pem")
            .replace("PRIVATE KEY", "PUBLIC KEY");
        let err = PrivateKey::from_pkcs8_pem(&pem).expect_err("label");
        assert_eq!(err.kind(), KeyErrorKind::Malformed);
    }

    #[test]
    fn rejects_point_off_the_curve() {
        for algorithm in Algorithm::ALL {
            let mut point = [0u8; PUBLIC_POINT_BYTES];
            point[0] = 0x04;
            point[64] = 1;
            let err = PublicKey::from_sec1_point(algorithm, &point).expect_err("off curve");
            assert_eq!(err.kind(), KeyErrorKind::Malformed);
        }
    }

    #[test]
    fn der_signature_verifies_as_certificate_signature() {
        for algorithm in Algorithm::ALL {
            let key = PrivateKey::generate(algorithm).expect("generate");
            let der = key.sign_der(b"tbs").expect("sign");
            assert_eq!(der[0], 0x30, "DER SEQUENCE");
            assert_eq!(key.public_key().verify_der(b"tbs", &der), Ok(()));
            assert!(key.public_key().verify_der(b"tbs2", &der).is_err());
        }
    }

    #[test]
    fn debug_output_holds_no_key_material() {
        let key =
            PrivateKey::from_scalar(Algorithm::EcdsaP256Sha256, &fixed_scalar(5)).expect("key");
        let shown = format!("{key:?}");
        assert!(!shown.contains(&hex::encode(fixed_scalar(5))));
        assert!(shown.contains("EcdsaP256Sha256"));
    }
}
