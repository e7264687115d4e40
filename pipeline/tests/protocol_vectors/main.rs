//! The protocol test vectors in `docs/test-vectors/protocol.json`. Another implementation that
//! reproduces these bytes and verifies these signatures speaks dcpipe's protocol.
//!
//! - `factor_input`, `factor_signing_input`, `cases`: the transaction factor over fixed
//!   fingerprints, for both hashes, and the payee's consent;
//! - `parties`: per algorithm, a PKI whose every key comes from a fixed scalar, with the
//!   certificates (root, institution CAs and signers, the settlement signer, two terminals and a
//!   secure element);
//! - `signed`: per algorithm, one payment from the touch to settlement and a revocation: each
//!   entry names its layout, its signer and the values of the fields it signs; it holds the
//!   signing input, the digest the algorithm signs (with SM2's Z), the signature, and for whole
//!   messages the Confluent frame and the envelope and submission digests;
//! - `layouts`: every signing input's tag and fields, from `pipeline/src/protocol/layout.rs`.
//!
//! The tests rebuild every byte with the production builders, write every input again from its
//! layout with an independent encoder, verify every signature (and its digest with the curve
//! libraries directly), and run the payer institution's checks on the envelope frames.
//!
//! After an intended protocol change, rewrite the file with
//! `DCPIPE_VECTORS_BLESS=1 cargo test -p dcpipe-pipeline --test protocol_vectors`. Signatures
//! and certificates that still hold are kept (ECDSA and SM2 signatures are randomized, so
//! signing again would change every one); the others are made afresh.

mod messages;
mod reference;
mod world;

use std::path::PathBuf;
use std::sync::Arc;

use dcpipe_pipeline::payment::{PaymentPolicy, verify_envelope};
use dcpipe_pipeline::pki::{
    Algorithm, Certificate, PrivateKey, PublicKey, RevocationSet, Role, sha256, sm3,
};
use dcpipe_pipeline::protocol::{
    FactorHash, FactorInput, clearing_message_bytes, clearing_response_bytes, payee_consent_bytes,
    payer_envelope_bytes, payment_outcome_bytes, revocation_update_bytes,
    settlement_instruction_bytes, transaction_factor,
};
use dcpipe_schemas::{
    Channel, ClearingMessage, ClearingResponse, Nonce, PartyRef, PaymentId, PaymentOutcome,
    RevocationUpdate, SettlementInstruction, TransactionEnvelope,
};
use serde_json::{Value, json};

use messages::CREATED_AT_MS;
use world::{PARTIES, World};

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

/// The signature in `previous` at `pointer` if it still verifies over `input` with `key`, else a
/// fresh one.
fn kept_or_signed(
    previous: Option<&Value>,
    pointer: &str,
    key: &PrivateKey,
    input: &[u8],
) -> Vec<u8> {
    previous
        .and_then(|p| p.pointer(pointer))
        .and_then(Value::as_str)
        .and_then(|h| hex::decode(h).ok())
        .filter(|signature| key.public_key().verify(input, signature).is_ok())
        .unwrap_or_else(|| key.sign(input).expect("signs"))
}

/// Builds the vectors, keeping from `previous` what still holds.
fn make_vectors(previous: Option<&Value>) -> Value {
    let f = fixture();
    let input = factor_input(&f);
    let mut cases = Vec::new();
    for (index, (algorithm, hash)) in BOTH.into_iter().enumerate() {
        let payee_key = PrivateKey::from_scalar(algorithm, &scalar(0x22)).expect("payee key");
        let factor = transaction_factor(&input, hash);
        let consent = payee_consent_bytes(&factor);
        let signature = kept_or_signed(
            previous,
            &format!("/cases/{index}/payee_consent_signature"),
            &payee_key,
            &consent,
        );
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
    let mut parties = serde_json::Map::new();
    let mut signed = serde_json::Map::new();
    for (algorithm, _) in BOTH {
        let world = World::build(algorithm, previous);
        parties.insert(algorithm_name(algorithm).to_owned(), world.json());
        signed.insert(
            algorithm_name(algorithm).to_owned(),
            messages::message_vectors(&world, previous),
        );
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
        "messages_description": "parties: per algorithm, a PKI of fixed keys (scalars, SEC1 public keys, DER certificates valid 2025-01-01 to 2049-12-31). signed: per algorithm, one payment of 1,234.56 CNY from oi01 to oi02 (the transaction factor, the payee's consent, the PIN proof, the payer's envelope with and without the proof, the clearing message and response, the completed outcome, an outcome refusing the envelope without proof as three minutes late, the settlement instruction of its window) and a revocation of the payer's terminal and secure element. Each entry names its layout and signer, gives the values of the signed fields (fixed values, bytes and certificate fingerprints in hex), the signing input, the digest the algorithm signs (SHA-256 of the input for ECDSA P-256; SM3 of Z then the input for SM2, with Z), the 64-byte r||s signature and, for whole messages, the Confluent frame. layouts: every signing input's tag and fields, in order.",
        "layouts": reference::layouts_json(),
        "parties": parties,
        "signed": signed,
    })
}

/// The vectors file, blessed first (once per run) when `DCPIPE_VECTORS_BLESS` is set.
fn load() -> Value {
    static VECTORS: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    VECTORS.get_or_init(read_or_bless).clone()
}

fn read_or_bless() -> Value {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let vectors: Value = serde_json::from_str(&text).expect("vectors parse");
    if std::env::var_os("DCPIPE_VECTORS_BLESS").is_some() {
        let blessed = make_vectors(Some(&vectors));
        if blessed != vectors {
            let text = serde_json::to_string_pretty(&blessed).expect("json") + "\n";
            std::fs::write(&path, text).expect("vectors written");
        }
        return blessed;
    }
    vectors
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

// ---------------------------------------------------------------------------------------------
// The message vectors
// ---------------------------------------------------------------------------------------------

fn section<'a>(vectors: &'a Value, name: &str, algorithm: Algorithm) -> &'a Value {
    let value = &vectors[name][algorithm_name(algorithm)];
    assert!(
        value.is_object(),
        "vectors lack {name}/{}",
        algorithm_name(algorithm)
    );
    value
}

/// The bytes of a hex string of the vectors.
fn hex_of(value: &Value, what: &str) -> Vec<u8> {
    hex::decode(
        value
            .as_str()
            .unwrap_or_else(|| panic!("vector field {what}: missing or not a string")),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Every signed entry of one algorithm: (name, entry).
fn signed_entries(vectors: &Value, algorithm: Algorithm) -> Vec<(String, Value)> {
    section(vectors, "signed", algorithm)
        .as_object()
        .expect("entries")
        .iter()
        .filter(|(_, entry)| entry.get("signature").is_some())
        .map(|(name, entry)| (name.clone(), entry.clone()))
        .collect()
}

fn signer_key(vectors: &Value, algorithm: Algorithm, entry: &Value) -> PublicKey {
    let signer = entry["signed_by"].as_str().expect("signed_by");
    let party = &section(vectors, "parties", algorithm)[signer];
    PublicKey::from_sec1_point(algorithm, &hex_of(&party["public_key_sec1"], signer))
        .expect("public key")
}

/// Everything in the file is what the production code builds from the fixed fields and keys:
/// signing inputs, factors, digests, frames, public keys, layouts (a signature or certificate
/// is kept only if it still verifies, so this also checks each of them).
#[test]
fn the_vectors_are_what_the_production_code_builds() {
    let vectors = load();
    let rebuilt = make_vectors(Some(&vectors));
    for (key, value) in rebuilt.as_object().expect("object") {
        assert_eq!(
            &vectors[key], value,
            "docs/test-vectors/protocol.json, section {key}, is not what the code builds; \
             after an intended change, rewrite it with DCPIPE_VECTORS_BLESS=1"
        );
    }
    assert_eq!(vectors, rebuilt);
}

#[test]
fn every_signing_input_is_written_again_from_its_layout_alone() {
    let vectors = load();
    for (algorithm, _) in BOTH {
        for (name, entry) in section(&vectors, "signed", algorithm)
            .as_object()
            .expect("entries")
        {
            let layout = reference::layout_named(entry["layout"].as_str().expect("layout"));
            assert_eq!(
                hex::encode(reference::encode(layout, &entry["fields"])),
                entry["signing_input"].as_str().expect("signing_input"),
                "{name} ({algorithm:?})"
            );
        }
    }
}

#[test]
fn every_vector_signature_verifies_and_a_flipped_bit_does_not() {
    let vectors = load();
    for (algorithm, _) in BOTH {
        for (name, entry) in signed_entries(&vectors, algorithm) {
            let key = signer_key(&vectors, algorithm, &entry);
            let input = hex_of(&entry["signing_input"], &name);
            let signature = hex_of(&entry["signature"], &name);
            key.verify(&input, &signature)
                .unwrap_or_else(|e| panic!("{name} ({algorithm:?}) must verify: {e}"));
            for bit in [0, input.len() * 8 - 1] {
                let mut tampered = input.clone();
                tampered[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    key.verify(&tampered, &signature).is_err(),
                    "{name}: input bit {bit}"
                );
            }
            let mut tampered = signature.clone();
            tampered[40] ^= 0x10;
            assert!(key.verify(&input, &tampered).is_err(), "{name}: signature");
        }
    }
}

/// The digest each entry says is signed is what the curve libraries verify as a prehash, and
/// SM2's Z is the one of GB/T 32918 for the signer's key.
#[test]
fn signed_digests_are_what_each_algorithm_signs() {
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    let vectors = load();
    for (algorithm, _) in BOTH {
        for (name, entry) in signed_entries(&vectors, algorithm) {
            let key = signer_key(&vectors, algorithm, &entry);
            let input = hex_of(&entry["signing_input"], &name);
            let digest = hex_of(&entry["signed_digest"], &name);
            let signature = hex_of(&entry["signature"], &name);
            match algorithm {
                Algorithm::EcdsaP256Sha256 => {
                    assert_eq!(digest, sha256(&input), "{name}");
                    let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(key.sec1_point())
                        .expect("P-256 key");
                    let signature = p256::ecdsa::Signature::from_slice(&signature).expect("r||s");
                    verifying
                        .verify_prehash(&digest, &signature)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                Algorithm::Sm2Sm3 => {
                    let z = world::sm2_z(key.sec1_point());
                    assert_eq!(hex_of(&entry["sm2_z"], &name), z, "{name}: Z");
                    assert_eq!(digest, sm3(&[&z[..], &input].concat()), "{name}: e");
                    let verifying = sm2::dsa::VerifyingKey::from_sec1_bytes(
                        dcpipe_pipeline::pki::SM2_DISTINGUISHING_ID,
                        key.sec1_point(),
                    )
                    .expect("SM2 key");
                    let signature = sm2::dsa::Signature::from_slice(&signature).expect("r||s");
                    verifying
                        .verify_prehash(&digest, &signature)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
        }
    }
}

#[test]
fn vector_certificates_hold_the_vector_keys_and_chain_to_the_vector_root() {
    let vectors = load();
    for (algorithm, _) in BOTH {
        let parties = section(&vectors, "parties", algorithm);
        let world = World::build(algorithm, Some(&vectors));
        let verifier = world
            .verifier(&Arc::new(RevocationSet::new()))
            .expect("trust store of the vector PKI");
        for spec in PARTIES {
            let party = &parties[spec.key];
            let der = hex_of(&party["certificate"], spec.key);
            let certificate = Certificate::from_der(&der).expect("certificate parses");
            let scalar: [u8; 32] = hex_of(&party["private_scalar"], spec.key)
                .try_into()
                .expect("32 bytes");
            let key = PrivateKey::from_scalar(algorithm, &scalar).expect("key");
            assert_eq!(certificate.public_key(), key.public_key(), "{}", spec.key);
            assert_eq!(
                hex::encode(key.public_key().sec1_point()),
                party["public_key_sec1"].as_str().expect("sec1"),
                "{}",
                spec.key
            );
            assert_eq!(
                hex::encode(sha256(&der)),
                party["certificate_fingerprint"]
                    .as_str()
                    .expect("fingerprint"),
                "{}",
                spec.key
            );
            if !spec.role.is_ca() {
                verifier
                    .verify(&der, CREATED_AT_MS, spec.role)
                    .unwrap_or_else(|e| panic!("{} ({algorithm:?}): {e}", spec.key));
            }
        }
    }
}

#[test]
fn envelope_frames_pass_every_check_of_the_payer_institution() {
    let vectors = load();
    for (algorithm, _) in BOTH {
        let world = World::build(algorithm, Some(&vectors));
        let verifier = world
            .verifier(&Arc::new(RevocationSet::new()))
            .expect("trust store");
        let signed = section(&vectors, "signed", algorithm);
        for (name, pin_verified) in [
            ("payer_envelope", true),
            ("payer_envelope_without_pin_proof", false),
        ] {
            let frame = hex_of(&signed[name]["frame"], name);
            let envelope: TransactionEnvelope =
                dcpipe_schemas::decode(&frame).expect("frame decodes");
            let verified = verify_envelope(
                &envelope,
                "oi01",
                &verifier,
                &PaymentPolicy::default(),
                CREATED_AT_MS + 1_000,
            )
            .unwrap_or_else(|e| panic!("{name} ({algorithm:?}): {e:?}"));
            assert_eq!(verified.pin_verified, pin_verified, "{name}");
            assert_eq!(
                hex::encode(verified.digest.as_bytes()),
                signed[name]["envelope_digest"].as_str().expect("digest"),
                "{name}"
            );
            assert_eq!(
                hex::encode(sha256(&payer_envelope_bytes(&envelope))),
                signed[name]["envelope_digest"].as_str().expect("digest"),
                "{name}: SHA-256 of the payer-envelope signing input"
            );
            assert_eq!(
                hex::encode(sha256(&frame)),
                signed[name]["submission_digest"].as_str().expect("digest"),
                "{name}: SHA-256 of the frame"
            );
            assert_eq!(
                hex::encode(payer_envelope_bytes(&envelope)),
                signed[name]["signing_input"].as_str().expect("input"),
                "{name}"
            );
        }
    }
}

/// A receiver decodes each frame, rebuilds the signing input from the decoded message and
/// checks the signature with the key of the certificate the message carries.
#[test]
fn every_message_frame_carries_its_vector_signature() {
    fn check<M: dcpipe_schemas::Message>(
        entry: &Value,
        name: &str,
        input: impl Fn(&M) -> Vec<u8>,
        certificate: impl Fn(&M) -> &[u8],
        signature: impl Fn(&M) -> &[u8],
    ) {
        let message: M = dcpipe_schemas::decode(&hex_of(&entry["frame"], name)).expect(name);
        let bytes = input(&message);
        assert_eq!(
            hex::encode(&bytes),
            entry["signing_input"].as_str().expect("input"),
            "{name}"
        );
        let certificate = Certificate::from_der(certificate(&message)).expect(name);
        certificate
            .public_key()
            .verify(&bytes, signature(&message))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let vectors = load();
    for (algorithm, _) in BOTH {
        let signed = section(&vectors, "signed", algorithm);
        check::<ClearingMessage>(
            &signed["clearing_message"],
            "clearing_message",
            clearing_message_bytes,
            |m| &m.institution_certificate,
            |m| &m.institution_signature,
        );
        check::<ClearingResponse>(
            &signed["clearing_response"],
            "clearing_response",
            clearing_response_bytes,
            |m| &m.institution_certificate,
            |m| &m.institution_signature,
        );
        for name in [
            "payment_outcome",
            "payment_outcome_unauthenticated_rejection",
        ] {
            check::<PaymentOutcome>(
                &signed[name],
                name,
                payment_outcome_bytes,
                |m| &m.institution_certificate,
                |m| &m.institution_signature,
            );
        }
        check::<SettlementInstruction>(
            &signed["settlement_instruction"],
            "settlement_instruction",
            settlement_instruction_bytes,
            |m| &m.issuer_certificate,
            |m| &m.signature,
        );
        check::<RevocationUpdate>(
            &signed["revocation_update"],
            "revocation_update",
            revocation_update_bytes,
            |m| &m.issuer_certificate,
            |m| &m.signature,
        );
    }
}

/// The refusal of a late envelope names the envelope by the SHA-256 of its frame.
#[test]
fn an_unauthenticated_rejection_carries_the_submission_digest() {
    let vectors = load();
    for (algorithm, _) in BOTH {
        let signed = section(&vectors, "signed", algorithm);
        let late = &signed["payer_envelope_without_pin_proof"];
        let refusal = &signed["payment_outcome_unauthenticated_rejection"];
        assert_eq!(
            refusal["fields"]["envelope_digest"], late["submission_digest"],
            "{algorithm:?}"
        );
        assert_ne!(late["submission_digest"], late["envelope_digest"]);
    }
}

/// A serial in a revocation update is the certificate's DER INTEGER content, and applied to a
/// verifier's revocation set it revokes exactly the certificates it names.
#[test]
fn revocation_serials_are_the_der_integer_content_of_the_certificate_serial() {
    let vectors = load();
    for (algorithm, _) in BOTH {
        let world = World::build(algorithm, Some(&vectors));
        let entry = &section(&vectors, "signed", algorithm)["revocation_update"];
        let update: RevocationUpdate =
            dcpipe_schemas::decode(&hex_of(&entry["frame"], "revocation_update")).expect("decodes");
        assert_eq!(update.sequence, 1, "an issuer's first update");
        let revocations = Arc::new(RevocationSet::new());
        let verifier = world.verifier(&revocations).expect("trust store");
        for revoked in &update.revoked {
            revocations
                .revoke(update.issuer_fingerprint.as_bytes(), &revoked.serial)
                .expect("room");
        }
        for (party, role, is_revoked) in [
            ("payer_terminal", Role::Terminal, true),
            ("payer_secure_element", Role::SecureElement, true),
            ("payee_terminal", Role::Terminal, false),
        ] {
            let certificate = world.party(party).certificate();
            let serial = certificate.serial();
            let mut der_integer = vec![0x02, u8::try_from(serial.len()).expect("short")];
            der_integer.extend_from_slice(serial);
            assert!(
                certificate
                    .der()
                    .windows(der_integer.len())
                    .any(|w| w == der_integer.as_slice()),
                "{party}: the serial is the INTEGER's content in the DER"
            );
            let result = verifier.verify(certificate.der(), CREATED_AT_MS, role);
            assert_eq!(result.is_err(), is_revoked, "{party} ({algorithm:?})");
            if let Err(e) = result {
                assert_eq!(e.kind().reason_code(), "cert.revoked", "{party}");
            }
        }
    }
}
