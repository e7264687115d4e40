//! The parties of the message vectors: one PKI per algorithm, every key from a fixed scalar, every
//! certificate valid from 2025 to 2049 (a re-blessed certificate keeps its keys, names and
//! validity; only its serial and signature are new).

use std::collections::BTreeMap;
use std::sync::Arc;

use dcpipe_pipeline::pki::{
    Algorithm, Certificate, CertificateTemplate, CertifiedKey, ChainVerifier, PrivateKey,
    RevocationSet, Role, SM2_DISTINGUISHING_ID, TrustStore, sm3,
};
use serde_json::{Value, json};

use super::{algorithm_name, scalar};

/// notBefore of every certificate: 2025-01-01T00:00:00Z.
pub(crate) const VALID_FROM_MS: i64 = 1_735_689_600_000;
/// notAfter of every certificate: 2049-12-31T23:59:59Z.
pub(crate) const VALID_UNTIL_MS: i64 = 2_524_607_999_000;

/// One party: its certificate's role and names, its issuer, and the byte of its fixed scalar.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartySpec {
    pub(crate) key: &'static str,
    pub(crate) role: Role,
    pub(crate) id: &'static str,
    pub(crate) institution: &'static str,
    pub(crate) issuer: Option<&'static str>,
    pub(crate) scalar_byte: u8,
}

const fn party(
    key: &'static str,
    role: Role,
    id: &'static str,
    institution: &'static str,
    issuer: Option<&'static str>,
    scalar_byte: u8,
) -> PartySpec {
    PartySpec {
        key,
        role,
        id,
        institution,
        issuer,
        scalar_byte,
    }
}

/// Issuers before the certificates they issue.
#[rustfmt::skip]
pub(crate) const PARTIES: [PartySpec; 9] = [
    //    key                     role                     CN               O               issuer           scalar
    party("root",                 Role::CentralBankRoot,   "central-bank",  "central-bank", None,            0x88),
    party("oi01_ca",              Role::InstitutionCa,     "oi01",          "oi01",         Some("root"),    0x77),
    party("oi02_ca",              Role::InstitutionCa,     "oi02",          "oi02",         Some("root"),    0x99),
    party("settlement_signer",    Role::SettlementSigner,  "settlement",    "central-bank", Some("root"),    0x66),
    party("oi01_signer",          Role::InstitutionSigner, "oi01",          "oi01",         Some("oi01_ca"), 0x44),
    party("oi02_signer",          Role::InstitutionSigner, "oi02",          "oi02",         Some("oi02_ca"), 0x55),
    party("payer_terminal",       Role::Terminal,          "w-oi01-000001", "oi01",         Some("oi01_ca"), 0x11),
    party("payer_secure_element", Role::SecureElement,     "w-oi01-000001", "oi01",         Some("oi01_ca"), 0x33),
    party("payee_terminal",       Role::Terminal,          "w-oi02-000002", "oi02",         Some("oi02_ca"), 0x22),
];

/// The keys and certificates of one algorithm's PKI.
pub(crate) struct World {
    pub(crate) algorithm: Algorithm,
    keys: BTreeMap<&'static str, CertifiedKey>,
}

impl World {
    /// The PKI of `algorithm`, keeping the certificates of `previous` (the vectors file) where
    /// they still hold the right key and names and chain to the root.
    pub(crate) fn build(algorithm: Algorithm, previous: Option<&Value>) -> World {
        let kept = World::issue(algorithm, previous);
        if kept.chains_verify() {
            kept
        } else {
            World::issue(algorithm, None)
        }
    }

    fn issue(algorithm: Algorithm, previous: Option<&Value>) -> World {
        let mut keys: BTreeMap<&'static str, CertifiedKey> = BTreeMap::new();
        for spec in PARTIES {
            let key = PrivateKey::from_scalar(algorithm, &scalar(spec.scalar_byte))
                .expect("fixed scalar is a key");
            let previous_der = previous.and_then(|p| {
                p["parties"][algorithm_name(algorithm)][spec.key]["certificate"].as_str()
            });
            let certificate = match kept_certificate(previous_der, &spec, &key) {
                Some(certificate) => certificate,
                None => {
                    let template = CertificateTemplate::for_role(
                        spec.role,
                        spec.id,
                        spec.institution,
                        VALID_FROM_MS,
                        VALID_UNTIL_MS,
                    );
                    match spec.issuer {
                        None => {
                            let root = CertifiedKey::self_signed(&template, key)
                                .expect("root certificate");
                            keys.insert(spec.key, root);
                            continue;
                        }
                        Some(issuer) => keys[issuer]
                            .issue(&template, key.public_key())
                            .expect("certificate issued"),
                    }
                }
            };
            keys.insert(
                spec.key,
                CertifiedKey::new(certificate, key).expect("key matches its certificate"),
            );
        }
        World { algorithm, keys }
    }

    /// A party's certificate and key.
    pub(crate) fn party(&self, key: &str) -> &CertifiedKey {
        self.keys
            .get(key)
            .unwrap_or_else(|| panic!("no party {key}"))
    }

    /// A chain verifier trusting this PKI's root, institution CAs and settlement signer.
    pub(crate) fn verifier(&self, revocations: &Arc<RevocationSet>) -> Option<ChainVerifier> {
        let mut store = TrustStore::new(self.party("root").certificate().clone()).ok()?;
        store
            .add_institution_ca(self.party("oi01_ca").certificate().clone())
            .ok()?;
        store
            .add_institution_ca(self.party("oi02_ca").certificate().clone())
            .ok()?;
        store
            .set_settlement_signer(self.party("settlement_signer").certificate().clone())
            .ok()?;
        Some(ChainVerifier::new(Arc::new(store), Arc::clone(revocations)))
    }

    /// Whether every end entity's chain verifies at the vectors' time.
    fn chains_verify(&self) -> bool {
        let Some(verifier) = self.verifier(&Arc::new(RevocationSet::new())) else {
            return false;
        };
        PARTIES
            .iter()
            .filter(|spec| !spec.role.is_ca())
            .all(|spec| {
                verifier
                    .verify(
                        self.party(spec.key).certificate().der(),
                        super::messages::CREATED_AT_MS,
                        spec.role,
                    )
                    .is_ok()
            })
    }

    /// The `parties` section of one algorithm.
    pub(crate) fn json(&self) -> Value {
        let mut parties = serde_json::Map::new();
        for spec in PARTIES {
            let party = self.party(spec.key);
            let certificate = party.certificate();
            parties.insert(
                spec.key.to_owned(),
                json!({
                    "role": spec.role.as_str(),
                    "subject": format!("O={}, OU={}, CN={}", spec.institution, spec.role.as_str(), spec.id),
                    "issued_by": spec.issuer.unwrap_or(spec.key),
                    "private_scalar": hex::encode(scalar(spec.scalar_byte)),
                    "public_key_sec1": hex::encode(party.key().public_key().sec1_point()),
                    "certificate": hex::encode(certificate.der()),
                    "certificate_fingerprint": hex::encode(certificate.fingerprint()),
                    "serial": hex::encode(certificate.serial()),
                }),
            );
        }
        Value::Object(parties)
    }
}

fn kept_certificate(
    previous_der: Option<&str>,
    spec: &PartySpec,
    key: &PrivateKey,
) -> Option<Certificate> {
    let certificate = Certificate::from_der(&hex::decode(previous_der?).ok()?).ok()?;
    let same = certificate.public_key() == key.public_key()
        && certificate.role() == Some(spec.role)
        && certificate.id() == spec.id
        && certificate.institution() == spec.institution
        && certificate.valid_from_ms() == VALID_FROM_MS
        && certificate.valid_until_ms() == VALID_UNTIL_MS;
    same.then_some(certificate)
}

/// SM2's Z of a public key (GB/T 32918.2, 5.5), computed here from the curve's published
/// parameters rather than by the signing library: SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA).
pub(crate) fn sm2_z(public_key_sec1: &[u8; 65]) -> [u8; 32] {
    const A: &str = "fffffffeffffffffffffffffffffffffffffffff00000000fffffffffffffffc";
    const B: &str = "28e9fa9e9d9f5e344d5a9e4bcf6509a7f39789f515ab8f92ddbcbd414d940e93";
    const GX: &str = "32c4ae2c1f1981195f9904466a39c9948fe30bbff2660be1715a4589334c74c7";
    const GY: &str = "bc3736a2f4f6779c59bdcee36b692153d0a9877cc62a474002df32e52139f0a0";
    let id = SM2_DISTINGUISHING_ID.as_bytes();
    let entl = u16::try_from(id.len() * 8).expect("short id");
    let mut data = entl.to_be_bytes().to_vec();
    data.extend_from_slice(id);
    for constant in [A, B, GX, GY] {
        data.extend(hex::decode(constant).expect("hex"));
    }
    data.extend_from_slice(&public_key_sec1[1..]);
    sm3(&data)
}
