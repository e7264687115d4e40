//! The protocol test vectors in `docs/test-vectors/protocol.json`: fixed keys, fixed nonces, the
//! expected signing inputs, transaction factors and signatures. Another implementation that
//! reproduces these bytes and verifies these signatures speaks dcpipe's protocol.
//!
//! After an intended protocol change, rewrite the file with
//! `DCPIPE_VECTORS_BLESS=1 cargo test -p dcpipe-pipeline --test protocol_vectors`
//! (signatures are re-made; ECDSA and SM2 signatures are randomized).

use std::path::PathBuf;

use dcpipe_pipeline::pki::{Algorithm, PrivateKey, PublicKey};
use dcpipe_pipeline::protocol::{FactorHash, FactorInput, payee_consent_bytes, transaction_factor};
use dcpipe_schemas::{Channel, Nonce, PartyRef, PaymentId};
use serde_json::{Value, json};

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/test-vectors/protocol.json")
}

fn scalar(byte: u8) -> [u8; 32] {
    let mut s = [byte; 32];
    s[0] = 0x01; // far below both curve orders
    s
}

struct Fixture {
    payment_id: PaymentId,
    payer: PartyRef,
    payee: PartyRef,
    payer_nonce: Nonce,
    payee_nonce: Nonce,
    payer_fp: [u8; 32],
    payee_fp: [u8; 32],
}

fn fixture() -> Fixture {
    Fixture {
        payment_id: PaymentId::from_bytes([
            0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f, 0x40, 0x01, 0x80, 0x02, 0x11, 0x22, 0x33, 0x44,
            0x55, 0x66,
        ]),
        payer: PartyRef {
            institution_id: "oi01".into(),
            wallet_id: "w-oi01-000001".into(),
        },
        payee: PartyRef {
            institution_id: "oi02".into(),
            wallet_id: "w-oi02-000002".into(),
        },
        payer_nonce: Nonce::from_bytes([0xa1; 32]),
        payee_nonce: Nonce::from_bytes([0xb2; 32]),
        payer_fp: [0xc3; 32],
        payee_fp: [0xd4; 32],
    }
}

fn factor_input(f: &Fixture) -> FactorInput<'_> {
    FactorInput {
        payment_id: &f.payment_id,
        payer: &f.payer,
        payee: &f.payee,
        amount_fen: 123_456,
        currency: "CNY",
        created_at_ms: 1_764_000_000_000,
        channel: Channel::Nfc,
        payer_nonce: &f.payer_nonce,
        payee_nonce: &f.payee_nonce,
        payer_certificate_fingerprint: &f.payer_fp,
        payee_certificate_fingerprint: &f.payee_fp,
    }
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        Algorithm::Sm2Sm3 => "sm2-sm3",
    }
}

const BOTH: [(Algorithm, FactorHash); 2] = [
    (Algorithm::EcdsaP256Sha256, FactorHash::Sha256),
    (Algorithm::Sm2Sm3, FactorHash::Sm3),
];

/// Builds the vectors, signing afresh.
fn make_vectors() -> Value {
    let f = fixture();
    let input = factor_input(&f);
    let mut cases = Vec::new();
    for (algorithm, hash) in BOTH {
        let payee_key = PrivateKey::from_scalar(algorithm, &scalar(0x22)).expect("payee key");
        let factor = transaction_factor(&input, hash);
        let consent = payee_consent_bytes(&factor);
        let signature = payee_key.sign(&consent).expect("signs");
        cases.push(json!({
            "algorithm": algorithm_name(algorithm),
            "payee_private_scalar": hex::encode(scalar(0x22)),
            "payee_public_key_sec1": hex::encode(payee_key.public_key().sec1_point()),
            "factor_hash": match hash { FactorHash::Sha256 => "SHA-256", FactorHash::Sm3 => "SM3" },
            "transaction_factor": hex::encode(factor.as_bytes()),
            "payee_consent_input": hex::encode(&consent),
            "payee_consent_signature": hex::encode(&signature),
        }));
    }
    json!({
        "description": "dcpipe protocol v1 test vectors: see docs/PROTOCOL.md",
        "factor_input": {
            "payment_id": hex::encode(f.payment_id.as_bytes()),
            "payer_institution_id": f.payer.institution_id,
            "payer_wallet_id": f.payer.wallet_id,
            "payee_institution_id": f.payee.institution_id,
            "payee_wallet_id": f.payee.wallet_id,
            "amount_fen": input.amount_fen,
            "currency": input.currency,
            "created_at_ms": input.created_at_ms,
            "channel": "NFC",
            "payer_nonce": hex::encode(f.payer_nonce.as_bytes()),
            "payee_nonce": hex::encode(f.payee_nonce.as_bytes()),
            "payer_certificate_fingerprint": hex::encode(f.payer_fp),
            "payee_certificate_fingerprint": hex::encode(f.payee_fp),
        },
        "factor_signing_input": hex::encode(input.signing_input().as_bytes()),
        "cases": cases,
    })
}

fn load() -> Value {
    let path = vectors_path();
    if std::env::var_os("DCPIPE_VECTORS_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&make_vectors()).expect("json") + "\n";
        std::fs::write(&path, text).expect("vectors written");
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("vectors parse")
}

fn field<'a>(value: &'a Value, name: &str) -> &'a str {
    value[name]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {name} missing"))
}

fn case(vectors: &Value, algorithm: Algorithm) -> Value {
    vectors["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["algorithm"] == algorithm_name(algorithm))
        .expect("case for algorithm")
        .clone()
}

#[test]
fn factor_signing_input_matches_the_vector() {
    let vectors = load();
    let f = fixture();
    assert_eq!(
        hex::encode(factor_input(&f).signing_input().as_bytes()),
        field(&vectors, "factor_signing_input")
    );
}

#[test]
fn transaction_factor_matches_the_vector_for_both_hashes() {
    let vectors = load();
    let f = fixture();
    for (algorithm, hash) in BOTH {
        let case = case(&vectors, algorithm);
        let factor = transaction_factor(&factor_input(&f), hash);
        assert_eq!(
            hex::encode(factor.as_bytes()),
            field(&case, "transaction_factor")
        );
        assert_eq!(
            hex::encode(payee_consent_bytes(&factor)),
            field(&case, "payee_consent_input")
        );
    }
}

#[test]
fn fixed_scalars_give_the_vector_public_keys() {
    let vectors = load();
    for (algorithm, _) in BOTH {
        let case = case(&vectors, algorithm);
        let scalar: [u8; 32] = hex::decode(field(&case, "payee_private_scalar"))
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        let key = PrivateKey::from_scalar(algorithm, &scalar).expect("key");
        assert_eq!(
            hex::encode(key.public_key().sec1_point()),
            field(&case, "payee_public_key_sec1")
        );
    }
}

#[test]
fn vector_signatures_verify_and_a_flipped_bit_does_not() {
    let vectors = load();
    for (algorithm, _) in BOTH {
        let case = case(&vectors, algorithm);
        let point = hex::decode(field(&case, "payee_public_key_sec1")).expect("hex");
        let key = PublicKey::from_sec1_point(algorithm, &point).expect("public key");
        let message = hex::decode(field(&case, "payee_consent_input")).expect("hex");
        let signature = hex::decode(field(&case, "payee_consent_signature")).expect("hex");
        key.verify(&message, &signature)
            .unwrap_or_else(|e| panic!("{algorithm:?} vector signature must verify: {e}"));
        let mut tampered = message.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(key.verify(&tampered, &signature).is_err(), "{algorithm:?}");
    }
}

#[test]
fn every_factor_field_changes_the_factor() {
    let f = fixture();
    let base = transaction_factor(&factor_input(&f), FactorHash::Sha256);
    let other_nonce = Nonce::from_bytes([0; 32]);
    let other_party = PartyRef {
        institution_id: "oi03".into(),
        wallet_id: "w-oi03-000003".into(),
    };
    let other_id = PaymentId::from_bytes([9; 16]);
    let changes: Vec<fn(&mut FactorInput<'_>)> = vec![
        |v| v.amount_fen += 1,
        |v| v.currency = "HKD",
        |v| v.created_at_ms += 1,
        |v| v.channel = Channel::Remote,
    ];
    let mut variants: Vec<FactorInput<'_>> = changes
        .into_iter()
        .map(|change| {
            let mut v = factor_input(&f);
            change(&mut v);
            v
        })
        .collect();
    for i in 0..6 {
        let mut v = factor_input(&f);
        match i {
            0 => v.payer_nonce = &other_nonce,
            1 => v.payee_nonce = &other_nonce,
            2 => v.payee = &other_party,
            3 => v.payer = &other_party,
            4 => v.payer_certificate_fingerprint = &f.payee_fp,
            _ => v.payment_id = &other_id,
        }
        variants.push(v);
    }
    for variant in variants {
        assert_ne!(
            transaction_factor(&variant, FactorHash::Sha256),
            base,
            "{variant:?}"
        );
    }
}
