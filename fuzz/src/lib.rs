//! What the fuzz targets share: the fixed PKI of the protocol's test vectors
//! (docs/test-vectors/protocol.json) as a chain verifier, and the time those vectors were
//! made, so that the valid messages of the seed corpora pass every check and the fuzzer starts
//! from the deepest paths.

use std::sync::{Arc, OnceLock};

use dcpipe_pipeline::pki::{Certificate, ChainVerifier, RevocationSet, TrustStore};
use serde_json::Value;

/// The protocol's test vectors.
const VECTORS: &str = include_str!("../../docs/test-vectors/protocol.json");

/// When the vectors' payment was made (`factor_input.created_at_ms`): the stages' `now`.
pub const NOW_MS: i64 = 1_764_000_000_000;

/// The institution whose stages the decisions run as (the vectors' payer's).
pub const INSTITUTION: &str = "oi01";

/// The institution of the vectors' payee.
pub const PAYEE_INSTITUTION: &str = "oi02";

fn vectors() -> &'static Value {
    static VALUE: OnceLock<Value> = OnceLock::new();
    VALUE.get_or_init(|| serde_json::from_str(VECTORS).expect("protocol.json is JSON"))
}

/// The certificate of `party` (`root`, `oi01_ca`, …) under `algorithm`
/// (`ecdsa-p256-sha256`, `sm2-sm3`), DER.
pub fn certificate_der(algorithm: &str, party: &str) -> Vec<u8> {
    let hex_text = vectors()["parties"][algorithm][party]["certificate"]
        .as_str()
        .unwrap_or_else(|| panic!("no certificate of {party} under {algorithm}"));
    hex::decode(hex_text).expect("hex")
}

fn certificate(algorithm: &str, party: &str) -> Certificate {
    Certificate::from_der(&certificate_der(algorithm, party)).expect("a vector certificate")
}

/// A verifier trusting the vectors' root, both institution CAs and the settlement signer of
/// `algorithm`, with nothing revoked.
pub fn verifier_for(algorithm: &str) -> ChainVerifier {
    let mut store = TrustStore::new(certificate(algorithm, "root")).expect("root");
    for ca in ["oi01_ca", "oi02_ca"] {
        store
            .add_institution_ca(certificate(algorithm, ca))
            .expect("institution CA");
    }
    store
        .set_settlement_signer(certificate(algorithm, "settlement_signer"))
        .expect("settlement signer");
    ChainVerifier::new(Arc::new(store), Arc::new(RevocationSet::new()))
}

/// The verifier of the ECDSA P-256 vectors, built once.
pub fn verifier() -> &'static ChainVerifier {
    static VERIFIER: OnceLock<ChainVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| verifier_for("ecdsa-p256-sha256"))
}

/// The verifier of the SM2 vectors, built once.
pub fn verifier_sm2() -> &'static ChainVerifier {
    static VERIFIER: OnceLock<ChainVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| verifier_for("sm2-sm3"))
}

/// The Confluent frames of the vectors' signed messages, by name, for both algorithms: the
/// seeds the corpora start from.
pub fn vector_frames() -> Vec<(String, Vec<u8>)> {
    let mut frames = Vec::new();
    let Some(signed) = vectors()["signed"].as_object() else {
        return frames;
    };
    for (algorithm, entries) in signed {
        let Some(entries) = entries.as_object() else {
            continue;
        };
        for (name, entry) in entries {
            if let Some(frame) = entry["frame"].as_str() {
                frames.push((
                    format!("{algorithm}-{name}"),
                    hex::decode(frame).expect("hex"),
                ));
            }
        }
    }
    frames
}
