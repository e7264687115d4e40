//! The vehicle-flow test vectors in `docs/test-vectors/vehicle.json`: fixed messages, the
//! expected signing inputs and digests, derived ids, and signatures by fixed keys for both
//! algorithms. Another implementation that reproduces these bytes and verifies these
//! signatures speaks the vehicle part of the protocol.
//!
//! After an intended protocol change, rewrite the file with
//! `DCPIPE_VECTORS_BLESS=1 cargo test -p dcpipe-pipeline --test vehicle_vectors`
//! (signatures are re-made; ECDSA signatures are randomized).

use std::path::PathBuf;

use dcpipe_pipeline::pki::{Algorithm, PrivateKey, PublicKey, sha256};
use dcpipe_pipeline::vehicle::signed::{
    charge_digest, service_authorization_bytes, service_complete_report_bytes,
    service_entity_bytes, session_id, session_payment_id, telemetry_batch_bytes,
    telemetry_batch_digest, telemetry_report_bytes,
};
use dcpipe_schemas::{
    AuthorizationId, Digest32, GeoPoint, MeterUnit, MeteredTariff, PartyRef, ReportId,
    ServiceAuthorization, ServiceCompleteReport, ServiceEntity, ServiceKind, SessionId, Tariff,
    TelemetryFix, VehicleTelemetry, VehicleTelemetryBatch,
};
use serde_json::{Value, json};

const VEHICLE: &str = "LSVAU2180N2183294";
const T0_MS: i64 = 1_764_000_000_000;

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/test-vectors/vehicle.json")
}

fn scalar(byte: u8) -> [u8; 32] {
    let mut s = [byte; 32];
    s[0] = 0x01;
    s
}

fn wallet() -> PartyRef {
    PartyRef {
        institution_id: "oi01".into(),
        wallet_id: "w-oi01-000001".into(),
    }
}

/// A stand-in for a DER certificate: signing inputs take its SHA-256 only.
fn certificate(tag: &str) -> Vec<u8> {
    format!("certificate of {tag}").into_bytes()
}

fn batch() -> VehicleTelemetryBatch {
    VehicleTelemetryBatch {
        vehicle_id: VEHICLE.into(),
        vehicle_class: 2,
        wallet: wallet(),
        first_sequence: 40,
        previous_batch_digest: Digest32::from_bytes([0x5c; 32]),
        reports: vec![
            TelemetryFix {
                latitude_e7: 399_042_100,
                longitude_e7: 1_164_073_900,
                horizontal_accuracy_cm: Some(350),
                speed_cm_per_s: 2_500,
                heading_cdeg: 9_000,
                recorded_at_ms: T0_MS,
            },
            TelemetryFix {
                latitude_e7: 399_042_125,
                longitude_e7: 1_164_074_170,
                horizontal_accuracy_cm: None,
                speed_cm_per_s: 2_510,
                heading_cdeg: 9_010,
                recorded_at_ms: T0_MS + 1_000,
            },
        ],
        certificate: certificate("vehicle"),
        signature: Vec::new(),
    }
}

fn report_v1() -> VehicleTelemetry {
    VehicleTelemetry {
        vehicle_id: VEHICLE.into(),
        vehicle_class: 2,
        wallet: wallet(),
        sequence: 7,
        latitude_e7: -338_688_000,
        longitude_e7: 1_512_093_000,
        speed_cm_per_s: 0,
        heading_cdeg: 35_999,
        recorded_at_ms: T0_MS,
        certificate: certificate("vehicle"),
        signature: Vec::new(),
    }
}

fn entity() -> ServiceEntity {
    ServiceEntity {
        entity_id: "CHG-BJ-0042".into(),
        kind: ServiceKind::Charging,
        name: "朝阳充电站 42".into(),
        wallet: PartyRef {
            institution_id: "oi02".into(),
            wallet_id: "w-oi02-000042".into(),
        },
        geofence: vec![
            GeoPoint {
                latitude_e7: 399_040_000,
                longitude_e7: 1_164_070_000,
            },
            GeoPoint {
                latitude_e7: 399_040_000,
                longitude_e7: 1_164_072_000,
            },
            GeoPoint {
                latitude_e7: 399_042_000,
                longitude_e7: 1_164_072_000,
            },
        ],
        tariff: Tariff {
            toll: None,
            parking: None,
            metered: Some(MeteredTariff {
                unit: MeterUnit::Kwh,
                fen_per_unit: 150,
            }),
        },
        version: 3,
        updated_at_ms: T0_MS - 86_400_000,
        removed: false,
        certificate: certificate("institution signer oi02"),
        signature: Vec::new(),
    }
}

fn authorization() -> ServiceAuthorization {
    ServiceAuthorization {
        authorization_id: AuthorizationId::from_bytes([0x33; 16]),
        vehicle_id: VEHICLE.into(),
        wallet: wallet(),
        entity_id: "CHG-BJ-0042".into(),
        service_kind: ServiceKind::Charging,
        max_amount_fen: 30_000,
        issued_at_ms: T0_MS,
        expires_at_ms: T0_MS + 4 * 3_600_000,
        certificate: certificate("terminal w-oi01-000001"),
        signature: Vec::new(),
    }
}

fn report() -> ServiceCompleteReport {
    ServiceCompleteReport {
        report_id: ReportId::from_bytes([0x44; 16]),
        entity_id: "CHG-BJ-0042".into(),
        vehicle_id: VEHICLE.into(),
        session_id: SessionId::from_bytes([0x55; 16]),
        unit: MeterUnit::Kwh,
        quantity_milli: 42_750,
        completed_at_ms: T0_MS + 3_600_000,
        certificate: certificate("service entity CHG-BJ-0042"),
        signature: Vec::new(),
    }
}

/// Each signed message: its name and its signing input.
fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("telemetry_batch", telemetry_batch_bytes(&batch())),
        ("telemetry_report_v1", telemetry_report_bytes(&report_v1())),
        ("service_entity", service_entity_bytes(&entity())),
        (
            "service_authorization",
            service_authorization_bytes(&authorization()),
        ),
        (
            "service_complete_report",
            service_complete_report_bytes(&report()),
        ),
    ]
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        Algorithm::Sm2Sm3 => "sm2-sm3",
    }
}

fn make_vectors() -> Value {
    let messages: Vec<Value> = inputs()
        .into_iter()
        .map(|(name, input)| {
            let signatures: Vec<Value> = Algorithm::ALL
                .into_iter()
                .map(|algorithm| {
                    let key = PrivateKey::from_scalar(algorithm, &scalar(0x22)).expect("key");
                    json!({
                        "algorithm": algorithm_name(algorithm),
                        "signature": hex::encode(key.sign(&input).expect("signs")),
                    })
                })
                .collect();
            json!({
                "message": name,
                "signing_input": hex::encode(&input),
                "sha256": hex::encode(sha256(&input)),
                "signatures": signatures,
            })
        })
        .collect();
    let keys: Vec<Value> = Algorithm::ALL
        .into_iter()
        .map(|algorithm| {
            let key = PrivateKey::from_scalar(algorithm, &scalar(0x22)).expect("key");
            json!({
                "algorithm": algorithm_name(algorithm),
                "private_scalar": hex::encode(scalar(0x22)),
                "public_key_sec1": hex::encode(key.public_key().sec1_point()),
            })
        })
        .collect();
    let session = session_id(VEHICLE, "PARK-BJ-0007", T0_MS + 12_345);
    json!({
        "description": "dcpipe protocol v1, vehicles: see docs/PROTOCOL.md, Vehicles. Certificates are stand-ins (their UTF-8 text below); signing inputs take their SHA-256.",
        "certificates": {
            "vehicle": "certificate of vehicle",
            "institution_signer": "certificate of institution signer oi02",
            "wallet_terminal": "certificate of terminal w-oi01-000001",
            "service_entity": "certificate of service entity CHG-BJ-0042",
        },
        "keys": keys,
        "messages": messages,
        "telemetry_batch_digest": hex::encode(telemetry_batch_digest(&batch()).as_bytes()),
        "derived_ids": {
            "vehicle_id": VEHICLE,
            "entity_id": "PARK-BJ-0007",
            "entered_at_ms": T0_MS + 12_345,
            "session_id": session.to_string(),
            "payment_id": session_payment_id(&session, T0_MS + 12_345).to_string(),
        },
        "charge": {
            "authorization_id": hex::encode(CHARGE_AUTHORIZATION_ID),
            "payee": { "institution_id": "oi02", "wallet_id": "w-oi02-000002" },
            "amount_fen": CHARGE_AMOUNT_FEN,
            "due_at_ms": CHARGE_DUE_AT_MS,
            "charge_digest": hex::encode(charge_digest_vector(&session).as_bytes()),
        },
    })
}

/// The terms of the charge of the derived session, in the vectors.
const CHARGE_AUTHORIZATION_ID: [u8; 16] = [0x11; 16];
const CHARGE_AMOUNT_FEN: i64 = 1_234;
const CHARGE_DUE_AT_MS: i64 = T0_MS + 1_812_345;

fn charge_digest_vector(session: &SessionId) -> Digest32 {
    charge_digest(
        &session_payment_id(session, T0_MS + 12_345),
        session.as_bytes(),
        &CHARGE_AUTHORIZATION_ID,
        VEHICLE,
        &wallet(),
        &PartyRef {
            institution_id: "oi02".to_owned(),
            wallet_id: "w-oi02-000002".to_owned(),
        },
        CHARGE_AMOUNT_FEN,
        CHARGE_DUE_AT_MS,
    )
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

fn message<'a>(vectors: &'a Value, name: &str) -> &'a Value {
    vectors["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["message"] == name)
        .unwrap_or_else(|| panic!("no vector for {name}"))
}

#[test]
fn signing_inputs_and_digests_match_the_vectors() {
    let vectors = load();
    for (name, input) in inputs() {
        let vector = message(&vectors, name);
        assert_eq!(hex::encode(&input), vector["signing_input"], "{name}");
        assert_eq!(hex::encode(sha256(&input)), vector["sha256"], "{name}");
    }
    assert_eq!(
        hex::encode(telemetry_batch_digest(&batch()).as_bytes()),
        vectors["telemetry_batch_digest"]
    );
    assert_eq!(
        vectors["telemetry_batch_digest"],
        message(&vectors, "telemetry_batch")["sha256"]
    );
}

#[test]
fn derived_ids_match_the_vectors() {
    let vectors = load();
    let session = session_id(VEHICLE, "PARK-BJ-0007", T0_MS + 12_345);
    assert_eq!(session.to_string(), vectors["derived_ids"]["session_id"]);
    assert_eq!(
        session_payment_id(&session, T0_MS + 12_345).to_string(),
        vectors["derived_ids"]["payment_id"]
    );
    assert_eq!(
        hex::encode(charge_digest_vector(&session).as_bytes()),
        vectors["charge"]["charge_digest"]
    );
}

#[test]
fn vector_signatures_verify_and_a_flipped_bit_does_not() {
    let vectors = load();
    for algorithm in Algorithm::ALL {
        let key = vectors["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["algorithm"] == algorithm_name(algorithm))
            .expect("key of the algorithm");
        let point = hex::decode(key["public_key_sec1"].as_str().expect("hex")).expect("hex");
        let public = PublicKey::from_sec1_point(algorithm, &point).expect("public key");
        let scalar: [u8; 32] = hex::decode(key["private_scalar"].as_str().expect("hex"))
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        assert_eq!(
            PrivateKey::from_scalar(algorithm, &scalar)
                .expect("key")
                .public_key(),
            &public
        );
        for (name, input) in inputs() {
            let signature = message(&vectors, name)["signatures"]
                .as_array()
                .expect("signatures")
                .iter()
                .find(|s| s["algorithm"] == algorithm_name(algorithm))
                .and_then(|s| s["signature"].as_str())
                .map(|s| hex::decode(s).expect("hex"))
                .expect("signature");
            public
                .verify(&input, &signature)
                .unwrap_or_else(|e| panic!("{name} {algorithm:?}: {e}"));
            let mut tampered = input.clone();
            let last = tampered.len() - 1;
            tampered[last] ^= 1;
            assert!(public.verify(&tampered, &signature).is_err(), "{name}");
        }
    }
}

#[test]
fn every_batch_field_changes_the_signing_input() {
    let base = telemetry_batch_bytes(&batch());
    let changes: Vec<fn(&mut VehicleTelemetryBatch)> = vec![
        |b| b.vehicle_id.push('X'),
        |b| b.vehicle_class += 1,
        |b| b.wallet.wallet_id.push('X'),
        |b| b.first_sequence += 1,
        |b| b.previous_batch_digest = Digest32::from_bytes([0; 32]),
        |b| b.reports[0].latitude_e7 += 1,
        |b| b.reports[0].longitude_e7 += 1,
        |b| b.reports[0].horizontal_accuracy_cm = None,
        |b| b.reports[1].horizontal_accuracy_cm = Some(0),
        |b| b.reports[1].speed_cm_per_s += 1,
        |b| b.reports[1].heading_cdeg += 1,
        |b| b.reports[1].recorded_at_ms += 1,
        |b| {
            b.reports.pop();
        },
        |b| b.certificate.push(0),
    ];
    for (i, change) in changes.into_iter().enumerate() {
        let mut changed = batch();
        change(&mut changed);
        assert_ne!(telemetry_batch_bytes(&changed), base, "change {i}");
    }
    let mut signed = batch();
    signed.signature = vec![1; 64];
    assert_eq!(
        telemetry_batch_bytes(&signed),
        base,
        "the signature is not signed"
    );
}
