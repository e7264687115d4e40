//! The offline wallets' test vectors, `docs/test-vectors/wallets.json`: for ECDSA P-256 and SM2,
//! an offline payment, the payer's key set carrying it (and the payee's, carrying it as
//! received), the sync result answering it, and a remote control command, made with the fixed
//! keys of the protocol vectors' PKI plus two wallet keys. Each entry holds the Confluent frame,
//! the signing input, the digest the algorithm signs (with SM2's Z), the signature and the
//! signer's certificate; the payment also its offline-payment digest and payment id, the key set
//! its key-set digest.
//!
//! The tests rebuild every signing input from the decoded frame with the production builders,
//! verify every signature with the certificate the message carries, and check that a flipped bit
//! fails. After an intended change, rewrite the file with
//! `DCPIPE_VECTORS_BLESS=1 cargo test -p dcpipe-pipeline --test wallet_vectors`; signatures and
//! certificates that still hold are kept.

// The PKI of the protocol vectors; this test uses part of it.
#[allow(dead_code)]
#[path = "protocol_vectors/world.rs"]
mod world;

/// What the shared world module needs of its crate.
mod messages {
    /// The moment of the vectors: 2025-11-24T16:00:00Z.
    pub(crate) const CREATED_AT_MS: i64 = 1_764_000_000_000;
}

use std::path::PathBuf;

use dcpipe_pipeline::pki::{
    Algorithm, Certificate, CertificateTemplate, CertifiedKey, PrivateKey, Role, sha256, sm3,
};
use dcpipe_pipeline::protocol::{
    CHAIN_START, offline_payment_bytes, offline_payment_digest, offline_payment_id,
    remote_control_command_bytes, wallet_key_set_bytes, wallet_sync_result_bytes,
};
use dcpipe_pipeline::wallet::{OFFLINE_TIER_4, key_set_input};
use dcpipe_schemas::{
    CommandId, ControlCommand, Digest32, Frame, OfflinePayment, OfflinePaymentSummary, PartyRef,
    RefusedPayment, RemoteControlCommand, SyncStatus, WalletAction, WalletKeySet, WalletSyncResult,
};
use serde_json::{Value, json};

use messages::CREATED_AT_MS;
use world::{VALID_FROM_MS, VALID_UNTIL_MS, World, sm2_z};

pub(crate) fn scalar(byte: u8) -> [u8; 32] {
    let mut s = [byte; 32];
    s[0] = 0x01;
    s
}

pub(crate) fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        Algorithm::Sm2Sm3 => "sm2-sm3",
    }
}

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/test-vectors/wallets.json")
}

const PAYER: (&str, &str, u8) = ("oi01", "w-oi01-000001", 0x12);
const PAYEE: (&str, &str, u8) = ("oi02", "w-oi02-000002", 0x23);

fn party((institution, wallet, _): (&str, &str, u8)) -> PartyRef {
    PartyRef {
        institution_id: institution.to_owned(),
        wallet_id: wallet.to_owned(),
    }
}

/// A wallet key of the vectors, its certificate kept from `previous` when it still holds.
fn wallet_key(
    world: &World,
    (institution, wallet, byte): (&str, &str, u8),
    previous: Option<&Value>,
) -> CertifiedKey {
    let algorithm = world.algorithm;
    let key = PrivateKey::from_scalar(algorithm, &scalar(byte)).expect("key");
    let kept = previous
        .and_then(|p| p["wallets"][algorithm_name(algorithm)][wallet]["certificate"].as_str())
        .and_then(|h| hex::decode(h).ok())
        .and_then(|der| Certificate::from_der(&der).ok())
        .filter(|c| {
            c.public_key() == key.public_key()
                && c.role() == Some(Role::Wallet)
                && c.id() == wallet
                && c.valid_from_ms() == VALID_FROM_MS
                && world
                    .verifier(&std::sync::Arc::new(
                        dcpipe_pipeline::pki::RevocationSet::new(),
                    ))
                    .is_some_and(|v| v.verify(c.der(), CREATED_AT_MS, Role::Wallet).is_ok())
        });
    let certificate = kept.unwrap_or_else(|| {
        world
            .party(&format!("{institution}_ca"))
            .issue(
                &CertificateTemplate::for_role(
                    Role::Wallet,
                    wallet,
                    institution,
                    VALID_FROM_MS,
                    VALID_UNTIL_MS,
                ),
                key.public_key(),
            )
            .expect("issued")
    });
    CertifiedKey::new(certificate, key).expect("matches")
}

/// Signs `input` with `key`, keeping the signature of `previous` at `pointer` if it verifies.
fn signature(previous: Option<&Value>, pointer: &str, key: &CertifiedKey, input: &[u8]) -> Vec<u8> {
    previous
        .and_then(|p| p.pointer(pointer))
        .and_then(Value::as_str)
        .and_then(|h| hex::decode(h).ok())
        .filter(|s| key.key().public_key().verify(input, s).is_ok())
        .unwrap_or_else(|| key.key().sign(input).expect("signs"))
}

fn entry(
    algorithm: Algorithm,
    key: &CertifiedKey,
    frame: &[u8],
    input: &[u8],
    sig: &[u8],
) -> Value {
    let mut value = json!({
        "frame": hex::encode(frame),
        "signing_input": hex::encode(input),
        "signature": hex::encode(sig),
        "signer_certificate": hex::encode(key.certificate().der()),
    });
    match algorithm {
        Algorithm::EcdsaP256Sha256 => value["signed_digest"] = json!(hex::encode(sha256(input))),
        Algorithm::Sm2Sm3 => {
            let z = sm2_z(key.key().public_key().sec1_point());
            value["sm2_z"] = json!(hex::encode(z));
            value["signed_digest"] = json!(hex::encode(sm3(&[&z[..], input].concat())));
        }
    }
    value
}

/// The protocol vectors, whose PKI (root, CAs, signers) these vectors share.
fn protocol_vectors() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/test-vectors/protocol.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("protocol.json")).expect("JSON")
}

fn make(previous: Option<&Value>) -> Value {
    let protocol = protocol_vectors();
    let mut per_algorithm = serde_json::Map::new();
    let mut wallets = serde_json::Map::new();
    for algorithm in Algorithm::ALL {
        let name = algorithm_name(algorithm);
        let mut signed = serde_json::Map::new();
        let world = World::build(algorithm, Some(&protocol));
        let payer_key = wallet_key(&world, PAYER, previous);
        let payee_key = wallet_key(&world, PAYEE, previous);
        let at = |k: &str| format!("/signed/{name}/{k}/signature");

        let mut payment = OfflinePayment {
            payer: party(PAYER),
            payee: party(PAYEE),
            amount_fen: 12_345,
            currency: "CNY".to_owned(),
            counter: 1,
            previous_hash: CHAIN_START,
            paid_at_ms: CREATED_AT_MS,
            payer_certificate: payer_key.certificate().der().to_vec(),
            signature: Vec::new(),
        };
        let input = offline_payment_bytes(&payment);
        payment.signature = signature(previous, &at("offline_payment"), &payer_key, &input);
        let frame = dcpipe_schemas::encode(&payment).expect("encodes");
        let digest = offline_payment_digest(&payment);
        let mut value = entry(algorithm, &payer_key, &frame, &input, &payment.signature);
        value["offline_payment_digest"] = json!(hex::encode(digest.as_bytes()));
        value["payment_id"] = json!(offline_payment_id(&digest).to_string());
        signed.insert("offline_payment".to_owned(), value);

        let last_sync = CREATED_AT_MS - 3_600_000;
        let mut key_set = WalletKeySet {
            wallet_id: PAYER.1.to_owned(),
            institution_id: PAYER.0.to_owned(),
            key_version: 1,
            public_key: payer_key
                .certificate()
                .public_key()
                .to_spki_der()
                .expect("spki"),
            last_sync_at_ms: last_sync,
            satellite_at_ms: CREATED_AT_MS + 60_000,
            offline_duration_ms: CREATED_AT_MS + 60_000 - last_sync,
            offline_payments: OfflinePaymentSummary {
                count: 1,
                total_fen: 12_345,
                chain_head: digest,
            },
            certificate: payer_key.certificate().der().to_vec(),
            signature: Vec::new(),
            payments: vec![Frame(frame.clone())],
            received: Vec::new(),
            purse_fen: 87_655,
            commands_applied_through: 0,
            anchors_digest: None,
        };
        let input = wallet_key_set_bytes(&key_set, &[]);
        key_set.signature = signature(previous, &at("payer_key_set"), &payer_key, &input);
        let set_frame = dcpipe_schemas::encode(&key_set).expect("encodes");
        let mut value = entry(
            algorithm,
            &payer_key,
            &set_frame,
            &input,
            &key_set.signature,
        );
        value["key_set_digest"] = json!(hex::encode(sha256(&input)));
        signed.insert("payer_key_set".to_owned(), value);

        let mut payee_set = WalletKeySet {
            wallet_id: PAYEE.1.to_owned(),
            institution_id: PAYEE.0.to_owned(),
            public_key: payee_key
                .certificate()
                .public_key()
                .to_spki_der()
                .expect("spki"),
            offline_payments: OfflinePaymentSummary {
                count: 0,
                total_fen: 0,
                chain_head: CHAIN_START,
            },
            certificate: payee_key.certificate().der().to_vec(),
            payments: Vec::new(),
            received: vec![Frame(frame)],
            purse_fen: 0,
            commands_applied_through: 2,
            anchors_digest: Some(dcpipe_pipeline::protocol::anchors_digest([
                world.party("root").certificate().der(),
                world.party("oi01_ca").certificate().der(),
                world.party("oi02_ca").certificate().der(),
            ])),
            ..key_set.clone()
        };
        let input = wallet_key_set_bytes(&payee_set, &[digest]);
        payee_set.signature = signature(previous, &at("payee_key_set"), &payee_key, &input);
        let mut value = entry(
            algorithm,
            &payee_key,
            &dcpipe_schemas::encode(&payee_set).expect("encodes"),
            &input,
            &payee_set.signature,
        );
        value["key_set_digest"] = json!(hex::encode(sha256(&input)));
        signed.insert("payee_key_set".to_owned(), value);

        let signer = world.party("oi01_signer");
        let mut result = WalletSyncResult {
            wallet_id: PAYER.1.to_owned(),
            institution_id: PAYER.0.to_owned(),
            key_version: 1,
            status: SyncStatus::Accepted,
            reason_code: None,
            actions: vec![WalletAction::BlacklistUpdate],
            platform_time_at_ms: CREATED_AT_MS + 60_250,
            institution_certificate: signer.certificate().der().to_vec(),
            institution_signature: Vec::new(),
            key_set_digest: Some(Digest32::from_bytes(sha256(&key_set_input(&key_set)))),
            counter: 1,
            chain_head: Some(digest),
            purse_fen: 87_655,
            offline_limits: Some(OFFLINE_TIER_4),
            blacklist: vec!["w-oi02-000666".to_owned()],
            trust_anchors: Vec::new(),
            refused: vec![RefusedPayment {
                payment_id: offline_payment_id(&Digest32::from_bytes([0x5c; 32])),
                reason_code: "offline.payer_locked".to_owned(),
            }],
            pending_commands: 1,
        };
        let input = wallet_sync_result_bytes(&result);
        result.institution_signature =
            signature(previous, &at("wallet_sync_result"), signer, &input);
        signed.insert(
            "wallet_sync_result".to_owned(),
            entry(
                algorithm,
                signer,
                &dcpipe_schemas::encode(&result).expect("encodes"),
                &input,
                &result.institution_signature,
            ),
        );

        let mut command = RemoteControlCommand {
            command_id: CommandId::from_bytes([0x0c; 16]),
            wallet_id: PAYER.1.to_owned(),
            institution_id: PAYER.0.to_owned(),
            command: ControlCommand::LimitChange,
            limits: None,
            blacklist: Vec::new(),
            issued_at_ms: CREATED_AT_MS + 30_000,
            institution_certificate: signer.certificate().der().to_vec(),
            institution_signature: Vec::new(),
            sequence: 1,
            offline_limits: Some(OFFLINE_TIER_4),
        };
        let input = remote_control_command_bytes(&command);
        command.institution_signature =
            signature(previous, &at("remote_control_command"), signer, &input);
        signed.insert(
            "remote_control_command".to_owned(),
            entry(
                algorithm,
                signer,
                &dcpipe_schemas::encode(&command).expect("encodes"),
                &input,
                &command.institution_signature,
            ),
        );

        let mut keys = serde_json::Map::new();
        for (spec, key) in [(PAYER, &payer_key), (PAYEE, &payee_key)] {
            keys.insert(
                spec.1.to_owned(),
                json!({
                    "private_scalar": hex::encode(scalar(spec.2)),
                    "public_key_sec1": hex::encode(key.key().public_key().sec1_point()),
                    "certificate": hex::encode(key.certificate().der()),
                }),
            );
        }
        wallets.insert(name.to_owned(), Value::Object(keys));
        per_algorithm.insert(name.to_owned(), Value::Object(signed));
    }
    json!({
        "description": "dcpipe protocol v1 test vectors for the offline wallets: see docs/PROTOCOL.md, section Offline wallets. The institution signers and CAs are those of protocol.json's parties (same fixed scalars); the wallet keys are below. Per algorithm: an offline payment of 123.45 CNY from w-oi01-000001 to w-oi02-000002 (counter 1), the payer's key set carrying it, the payee's key set carrying it as received, the sync result answering the payer's key set, and a LIMIT_CHANGE command. Each entry: the Confluent frame, the signing input, the digest the algorithm signs (SHA-256 of the input for ECDSA P-256; SM3 of Z then the input for SM2, with Z), the 64-byte r||s signature and the signer's certificate.",
        "wallets": wallets,
        "signed": per_algorithm,
    })
}

fn load() -> Value {
    static VECTORS: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    VECTORS
        .get_or_init(|| {
            let path = vectors_path();
            let previous: Option<Value> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            if std::env::var_os("DCPIPE_VECTORS_BLESS").is_some() {
                let blessed = make(previous.as_ref());
                if Some(&blessed) != previous.as_ref() {
                    std::fs::write(
                        &path,
                        serde_json::to_string_pretty(&blessed).expect("json") + "\n",
                    )
                    .expect("written");
                }
                return blessed;
            }
            previous.unwrap_or_else(|| panic!("{} missing; bless it", path.display()))
        })
        .clone()
}

fn hex_at(value: &Value, key: &str) -> Vec<u8> {
    hex::decode(
        value[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing")),
    )
    .expect("hex")
}

#[test]
fn the_vectors_are_what_the_production_code_builds() {
    let vectors = load();
    assert_eq!(
        make(Some(&vectors)),
        vectors,
        "docs/test-vectors/wallets.json is not what the code builds; bless it after an intended change"
    );
}

/// A receiver decodes each frame, rebuilds its signing input and verifies the signature with
/// the certificate the message carries; a flipped bit of the input or signature fails.
#[test]
fn every_frame_carries_its_vector_input_and_signature() {
    let vectors = load();
    for algorithm in Algorithm::ALL {
        let signed = &vectors["signed"][algorithm_name(algorithm)];
        let mut checked = 0;
        for (name, entry) in signed.as_object().expect("entries") {
            let frame = hex_at(entry, "frame");
            let (input, certificate, signature) = match name.as_str() {
                "offline_payment" => {
                    let m: OfflinePayment = dcpipe_schemas::decode(&frame).expect(name);
                    let digest = offline_payment_digest(&m);
                    assert_eq!(hex_at(entry, "offline_payment_digest"), digest.as_bytes());
                    assert_eq!(
                        entry["payment_id"],
                        json!(offline_payment_id(&digest).to_string())
                    );
                    (offline_payment_bytes(&m), m.payer_certificate, m.signature)
                }
                "payer_key_set" | "payee_key_set" => {
                    let m: WalletKeySet = dcpipe_schemas::decode(&frame).expect(name);
                    let input = key_set_input(&m);
                    assert_eq!(hex_at(entry, "key_set_digest"), sha256(&input));
                    (input, m.certificate, m.signature)
                }
                "wallet_sync_result" => {
                    let m: WalletSyncResult = dcpipe_schemas::decode(&frame).expect(name);
                    (
                        wallet_sync_result_bytes(&m),
                        m.institution_certificate,
                        m.institution_signature,
                    )
                }
                "remote_control_command" => {
                    let m: RemoteControlCommand = dcpipe_schemas::decode(&frame).expect(name);
                    (
                        remote_control_command_bytes(&m),
                        m.institution_certificate,
                        m.institution_signature,
                    )
                }
                other => panic!("unknown entry {other}"),
            };
            assert_eq!(hex_at(entry, "signing_input"), input, "{name}");
            assert_eq!(hex_at(entry, "signature"), signature, "{name}");
            let key = Certificate::from_der(&certificate).expect("certificate");
            key.public_key()
                .verify(&input, &signature)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut tampered = input.clone();
            tampered[input.len() / 2] ^= 1;
            assert!(
                key.public_key().verify(&tampered, &signature).is_err(),
                "{name}"
            );
            let digest = hex_at(entry, "signed_digest");
            match algorithm {
                Algorithm::EcdsaP256Sha256 => assert_eq!(digest, sha256(&input), "{name}"),
                Algorithm::Sm2Sm3 => {
                    let z = sm2_z(key.public_key().sec1_point());
                    assert_eq!(hex_at(entry, "sm2_z"), z, "{name}");
                    assert_eq!(digest, sm3(&[&z[..], &input].concat()), "{name}");
                }
            }
            checked += 1;
        }
        assert_eq!(checked, 5, "{algorithm:?}");
    }
}
