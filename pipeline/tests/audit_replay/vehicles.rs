//! A recorded vehicle run (flow 3: registry, pre-authorizations, telemetry, a station's report,
//! session events and three charges through the clearing path and settlement), audited clean,
//! then tampered with step by step: after each tamper the audit finds exactly the
//! discrepancies of the tampers so far, each with its code.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dcpipe_connectors::bus::{Bus, Outgoing, Record, ReplayFrom};
use dcpipe_connectors::ledger::SettlementConfig;
use dcpipe_connectors::session::ChargeRecord;
use dcpipe_pipeline::audit::{AuditCode, AuditReport};
use dcpipe_pipeline::clock::{SystemClock, system_now_ms};
use dcpipe_pipeline::network::{Network, NetworkConfig};
use dcpipe_pipeline::ops::follow::SubjectReader;
use dcpipe_pipeline::pki::{Algorithm, CertifiedKey, Role, SubjectSpec};
use dcpipe_pipeline::protocol::clearing_message_bytes;
use dcpipe_pipeline::runtime::MemberResult;
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::vehicle::backend::VehiclePolicy;
use dcpipe_pipeline::vehicle::signed::{
    charge_digest, service_authorization_bytes, service_complete_report_bytes,
    service_entity_bytes, session_id, session_payment_id,
};
use dcpipe_pipeline::vehicle::telemetry::TelemetryBatcher;
use dcpipe_schemas::{
    AuthorizationId, ClearingMessage, MeterUnit, OutcomeStatus, PartyRef, PaymentId,
    PaymentOutcome, ReportId, ServiceAuthorization, ServiceCompleteReport, ServiceEntity,
    ServiceKind, SessionEventKind, SessionId, SettlementInstruction, VehicleSessionEvent,
    VehicleTelemetryBatch,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::harness::{Backend, TEST_WINDOW_MS, runner};
use crate::scenarios::{assert_found, audit_record};
use crate::vehicle_fixtures::{Drive, Receiver, entity, rectangle};

/// How long the run may take to charge, answer and settle.
const DEADLINE: Duration = Duration::from_secs(90);
/// The institution holding the vehicle's wallet.
const VEHICLE_OI: &str = "oi01";
/// The institution holding the entities' wallets.
const ENTITY_OI: &str = "oi02";
const VEHICLE: &str = "LSVAU2180N2000009";
/// Reports per signed batch.
const BATCH_REPORTS: usize = 20;
/// What the charging station reports: 20 kWh at 1.50 CNY.
const CHARGED_KWH_MILLI: i64 = 20_000;

/// Polls `condition` until it holds or the deadline passes.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_all(bus: &dyn Bus, subject: &str) -> Vec<Record> {
    SubjectReader::new(subject, ReplayFrom::Beginning, None)
        .poll(bus, usize::MAX)
        .await
        .expect("read")
}

async fn publish(bus: &dyn Bus, subject: String, key: &str, frame: Vec<u8>) {
    bus.publish(Outgoing::new(subject, Bytes::from(frame)).with_key(key.as_bytes().to_vec()))
        .await
        .expect("published");
}

fn wallet(network: &Network, institution: &str, n: usize) -> PartyRef {
    network
        .wallets
        .iter()
        .filter(|w| w.party.institution_id == institution)
        .nth(n)
        .expect("wallet")
        .party
        .clone()
}

fn issue(network: &Network, role: Role, id: &str, institution: &str, now_ms: i64) -> CertifiedKey {
    network
        .pki
        .issue(
            &SubjectSpec {
                role,
                id,
                institution,
                algorithm: Algorithm::EcdsaP256Sha256,
            },
            now_ms - 86_400_000,
            now_ms + 86_400_000,
        )
        .expect("certificate")
}

/// West along the road through the toll strip, into the parking lot for half an hour and
/// out, to the charging station for ten minutes and away: a pass, a stay and a charging
/// session.
fn track(now_ms: i64) -> Drive {
    let mut drive = Drive::new(
        42,
        Receiver {
            sigma_m: 1.5,
            outlier_rate: 0.0,
            drop_rate: 0.0,
            interval_ms: 2_000,
        },
        (1_400.0, 2.0),
    );
    drive.t_ms = now_ms - 48 * 60_000;
    drive
        .to((600.0, 2.0), 25.0)
        .to((-60.0, 0.0), 12.0)
        .to((0.0, 5.0), 3.0)
        .stay(30 * 60_000, true)
        .to((60.0, 0.0), 3.0)
        .to((400.0, 0.0), 12.0)
        .to((-400.0, 60.0), 12.0)
        .to((0.0, 460.0), 12.0)
        .to((0.0, 500.0), 3.0)
        .stay(10 * 60_000, true)
        .to((0.0, 560.0), 3.0)
        .to((0.0, 900.0), 12.0);
    drive
}

fn signed_report(
    station: &CertifiedKey,
    session_id: SessionId,
    completed_at_ms: i64,
) -> ServiceCompleteReport {
    let mut report = ServiceCompleteReport {
        report_id: ReportId::random(),
        entity_id: "CHG-1".to_owned(),
        vehicle_id: VEHICLE.to_owned(),
        session_id,
        unit: MeterUnit::Kwh,
        quantity_milli: CHARGED_KWH_MILLI,
        completed_at_ms,
        certificate: station.certificate().der().to_vec(),
        signature: Vec::new(),
    };
    report.signature = station
        .key()
        .sign(&service_complete_report_bytes(&report))
        .expect("signs");
    report
}

async fn audit_of(bus: &dyn Bus, network: &Network) -> AuditReport {
    audit_record(bus, network, None).await
}

fn sign_clearing(message: &mut ClearingMessage, signer: &CertifiedKey) {
    message.institution_signature = signer
        .key()
        .sign(&clearing_message_bytes(message))
        .expect("signs");
}

/// Publishes the entry and exit events of a parking stay of `VEHICLE` at PARK-1.
async fn publish_stay(
    bus: &dyn Bus,
    payer: &PartyRef,
    session: &SessionId,
    payment_id: PaymentId,
    entered_at_ms: i64,
    exited_at_ms: i64,
) {
    for (kind, occurred_at_ms) in [
        (SessionEventKind::Enter, entered_at_ms),
        (SessionEventKind::Exit, exited_at_ms),
    ] {
        let event = VehicleSessionEvent {
            event: kind,
            session_id: *session,
            payment_id,
            vehicle_id: VEHICLE.to_owned(),
            wallet: payer.clone(),
            entity_id: "PARK-1".to_owned(),
            entity_version: 1,
            service_kind: ServiceKind::Parking,
            entered_at_ms,
            occurred_at_ms,
            batch_first_sequence: 0,
            decided_at_ms: system_now_ms(),
        };
        publish(
            bus,
            subjects::vehicle_session(VEHICLE_OI),
            VEHICLE,
            dcpipe_schemas::encode(&event).expect("encodes"),
        )
        .await;
    }
}

/// Signs a (tampered) charge's clearing message as the vehicle's institution and publishes it.
async fn publish_charge(
    bus: &dyn Bus,
    subject: &str,
    message: &mut ClearingMessage,
    signer: &CertifiedKey,
) {
    sign_clearing(message, signer);
    publish(
        bus,
        subject.to_owned(),
        VEHICLE,
        dcpipe_schemas::encode(&*message).expect("encodes"),
    )
    .await;
}

pub(crate) async fn a_clean_vehicle_record_reconciles_and_each_vehicle_tamper_is_found(
    backend: &mut Backend,
) {
    let mut config = NetworkConfig::in_memory(2, 8);
    config.ledger = backend.ledger.clone();
    config.settlement = SettlementConfig {
        window_ms: TEST_WINDOW_MS,
    };
    config.settlement_grace_ms = 200;
    let mut network = Network::provision(&config, Arc::new(SystemClock))
        .await
        .unwrap_or_else(|e| panic!("provisioning: {e}"));
    network
        .enable_vehicles(
            &config.ledger,
            &config.ledger_options,
            VehiclePolicy::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("session stores: {e}"));
    network
        .ensure_subjects(backend.bus.as_ref(), backend.partitions)
        .await
        .unwrap_or_else(|e| panic!("creating subjects: {e}"));
    let bus = Arc::clone(&backend.bus);
    let shutdown = CancellationToken::new();
    let stages: Vec<JoinHandle<MemberResult>> = network
        .spawn(&bus, &runner(), &shutdown)
        .unwrap_or_else(|e| panic!("runner configuration: {e}"));
    let now_ms = system_now_ms();

    // The registry: a parking lot, a toll strip and a charging station paying into wallets
    // of the entity institution, signed by its institution signer.
    let entity_signer = &network.institutions[ENTITY_OI].signer;
    for (n, (id, kind, fence)) in [
        (
            "PARK-1",
            ServiceKind::Parking,
            rectangle(0.0, 0.0, 80.0, 50.0),
        ),
        (
            "TOLL-1",
            ServiceKind::Toll,
            rectangle(1_000.0, 0.0, 60.0, 24.0),
        ),
        (
            "CHG-1",
            ServiceKind::Charging,
            rectangle(0.0, 500.0, 30.0, 30.0),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut e: ServiceEntity = entity(id, kind, fence).entity().clone();
        e.wallet = wallet(&network, ENTITY_OI, n);
        e.updated_at_ms = now_ms - 3_600_000;
        e.certificate = entity_signer.certificate().der().to_vec();
        e.signature = entity_signer
            .key()
            .sign(&service_entity_bytes(&e))
            .expect("signs");
        let frame = dcpipe_schemas::encode(&e).expect("encodes");
        publish(
            bus.as_ref(),
            subjects::VEHICLE_REGISTRY.to_owned(),
            id,
            frame,
        )
        .await;
    }
    let registry = Arc::clone(&network.entity_registry);
    eventually("the registry holds the three entities", || {
        let registry = Arc::clone(&registry);
        async move { registry.is_caught_up() && registry.read().len() == 3 }
    })
    .await;

    // Pre-authorizations by the vehicle's wallet.
    let payer = wallet(&network, VEHICLE_OI, 0);
    let terminal = &network
        .pki
        .wallet(&payer.wallet_id)
        .expect("wallet keys")
        .terminal;
    let mut parking_authorization = None;
    for (entity_id, kind, max_amount_fen) in [
        ("TOLL-1", ServiceKind::Toll, 1_000),
        ("PARK-1", ServiceKind::Parking, 1_000),
        ("CHG-1", ServiceKind::Charging, 5_000),
    ] {
        let mut a = ServiceAuthorization {
            authorization_id: AuthorizationId::random(),
            vehicle_id: VEHICLE.to_owned(),
            wallet: payer.clone(),
            entity_id: entity_id.to_owned(),
            service_kind: kind,
            max_amount_fen,
            issued_at_ms: now_ms - 3_000_000,
            expires_at_ms: now_ms + 3_600_000,
            certificate: terminal.certificate().der().to_vec(),
            signature: Vec::new(),
        };
        a.signature = terminal
            .key()
            .sign(&service_authorization_bytes(&a))
            .expect("signs");
        if kind == ServiceKind::Parking {
            parking_authorization = Some(a.clone());
        }
        let frame = dcpipe_schemas::encode(&a).expect("encodes");
        publish(
            bus.as_ref(),
            subjects::vehicle_authorization(VEHICLE_OI),
            VEHICLE,
            frame,
        )
        .await;
    }
    let parking_authorization = parking_authorization.expect("parking");
    let store = Arc::clone(&network.vehicles[VEHICLE_OI].store);
    eventually("three pre-authorizations are held", || {
        let store = Arc::clone(&store);
        async move { store.authorizations(VEHICLE).await.expect("read").len() == 3 }
    })
    .await;

    // The drive, signed in batches; one batch delivered again after later ones.
    let key = issue(&network, Role::Vehicle, VEHICLE, VEHICLE_OI, now_ms);
    let drive = track(now_ms);
    let mut batcher =
        TelemetryBatcher::new(VEHICLE, 1, payer.clone(), key.certificate(), key.key());
    let batches: Vec<VehicleTelemetryBatch> = drive
        .fixes
        .chunks(BATCH_REPORTS)
        .map(|reports| batcher.seal(reports.to_vec()).expect("signs"))
        .collect();
    let telemetry = subjects::vehicle_telemetry(VEHICLE_OI);
    for batch in batches.iter().chain(&batches[20..21]) {
        let frame = dcpipe_schemas::encode(batch).expect("encodes");
        publish(bus.as_ref(), telemetry.clone(), VEHICLE, frame).await;
    }
    eventually("the charging session ended", || {
        let store = Arc::clone(&store);
        async move {
            store
                .sessions(VEHICLE)
                .await
                .expect("read")
                .iter()
                .any(|s| s.entity_id == "CHG-1" && s.exited_at_ms.is_some())
        }
    })
    .await;
    let sessions = store.sessions(VEHICLE).await.expect("read");
    let charging = sessions
        .iter()
        .find(|s| s.entity_id == "CHG-1")
        .expect("charging session");
    let station = issue(&network, Role::ServiceEntity, "CHG-1", ENTITY_OI, now_ms);
    let station_report = signed_report(
        &station,
        SessionId::from_bytes(charging.session_id),
        charging.exited_at_ms.expect("ended"),
    );
    let report_frame = dcpipe_schemas::encode(&station_report).expect("encodes");
    publish(
        bus.as_ref(),
        subjects::vehicle_report(VEHICLE_OI),
        VEHICLE,
        report_frame,
    )
    .await;

    // Three charges, completed, settled.
    eventually("three charges", || {
        let store = Arc::clone(&store);
        async move { store.charges(VEHICLE).await.expect("read").len() == 3 }
    })
    .await;
    let charges: Vec<ChargeRecord> = store.charges(VEHICLE).await.expect("read");
    let ids: Vec<PaymentId> = charges
        .iter()
        .map(|c| PaymentId::from_bytes(c.payment_id.0))
        .collect();
    let results = subjects::txn_result(VEHICLE_OI);
    eventually("each charge completed", || {
        let (bus, results, ids) = (Arc::clone(&bus), results.clone(), ids.clone());
        async move {
            let outcomes: Vec<PaymentOutcome> = read_all(bus.as_ref(), &results)
                .await
                .iter()
                .filter_map(|r| dcpipe_schemas::decode(&r.payload).ok())
                .collect();
            ids.iter().all(|id| {
                outcomes
                    .iter()
                    .any(|o| o.payment_id == *id && o.status == OutcomeStatus::Completed)
            })
        }
    })
    .await;
    eventually("each charge settled", || {
        let bus = Arc::clone(&bus);
        async move {
            let settled: i64 = read_all(bus.as_ref(), subjects::SETTLEMENT_INSTRUCTION)
                .await
                .iter()
                .filter_map(|r| dcpipe_schemas::decode::<SettlementInstruction>(&r.payload).ok())
                .map(|i| i.positions.iter().map(|p| p.clearing_count).sum::<i64>() / 2)
                .sum();
            settled >= 3
        }
    })
    .await;
    eventually("five session events", || {
        let bus = Arc::clone(&bus);
        async move {
            read_all(bus.as_ref(), &subjects::vehicle_session(VEHICLE_OI))
                .await
                .len()
                >= 5
        }
    })
    .await;
    shutdown.cancel();
    for handle in stages {
        let _ = handle.await;
    }

    // Clean: every record verified, each charge reconciled with its session.
    let report = audit_of(bus.as_ref(), &network).await;
    let mut expected: BTreeMap<AuditCode, u64> = BTreeMap::new();
    assert_found(&report, &expected, "the clean run");
    let c = &report.counts;
    assert_eq!(c.vehicle_charges_checked, 3, "{report:#?}");
    assert_eq!(c.vehicle_charges_partial, 0);
    assert_eq!(c.vehicle_telemetry_batches, batches.len() as u64);
    assert_eq!(c.vehicle_telemetry_duplicates, 1);
    assert_eq!(c.vehicle_telemetry_reports_missing, 0);
    assert_eq!(c.vehicle_session_events, 5);
    assert_eq!(c.vehicle_entities_refused, 0);
    assert_eq!(c.payments_completed, 3);
    // State per vehicle, session, report, charge and pre-authorization, not per record: one
    // vehicle, three sessions, a report, three charges, three pre-authorizations.
    assert!(c.vehicle_state_max <= 11, "{report:#?}");

    // A forged telemetry batch: a position moved after the vehicle signed.
    let mut forged = batches[5].clone();
    forged.reports[3].latitude_e7 += 1_000;
    publish(
        bus.as_ref(),
        telemetry.clone(),
        VEHICLE,
        dcpipe_schemas::encode(&forged).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::VehicleTelemetrySignatureInvalid, 1);
    assert_found(
        &audit_of(bus.as_ref(), &network).await,
        &expected,
        "a forged telemetry batch",
    );

    // Another history, signed by the vehicle: authentic, but its chain refuses it.
    let mut replayed =
        TelemetryBatcher::new(VEHICLE, 1, payer.clone(), key.certificate(), key.key());
    let mut other_fixes = batches[0].reports.clone();
    other_fixes[0].latitude_e7 += 1_000;
    let other_history = replayed.seal(other_fixes).expect("signs");
    publish(
        bus.as_ref(),
        telemetry.clone(),
        VEHICLE,
        dcpipe_schemas::encode(&other_history).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::VehicleTelemetryOutOfSequence, 1);
    assert_found(
        &audit_of(bus.as_ref(), &network).await,
        &expected,
        "a batch out of its vehicle's sequence",
    );

    // A session event whose payment id is not derived from its session.
    let mut misnamed = read_all(bus.as_ref(), &subjects::vehicle_session(VEHICLE_OI))
        .await
        .iter()
        .find_map(|r| dcpipe_schemas::decode::<VehicleSessionEvent>(&r.payload).ok())
        .expect("a session event");
    misnamed.payment_id = PaymentId::random();
    publish(
        bus.as_ref(),
        subjects::vehicle_session(VEHICLE_OI),
        VEHICLE,
        dcpipe_schemas::encode(&misnamed).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::VehicleSessionInvalid, 1);
    assert_found(
        &audit_of(bus.as_ref(), &network).await,
        &expected,
        "a misnamed session event",
    );

    // A station report whose energy was changed after the station signed.
    let mut inflated = station_report.clone();
    inflated.quantity_milli *= 2;
    publish(
        bus.as_ref(),
        subjects::vehicle_report(VEHICLE_OI),
        VEHICLE,
        dcpipe_schemas::encode(&inflated).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::VehicleReportForged, 1);
    assert_found(
        &audit_of(bus.as_ref(), &network).await,
        &expected,
        "a tampered station report",
    );

    // The charges' clearing messages, to forge charges from (signed by the vehicle's
    // institution: authentic, wrong).
    let clearing_subject = subjects::clearing_request(ENTITY_OI);
    let parking_charge = charges
        .iter()
        .find(|c| c.entity_id == "PARK-1")
        .expect("parking charge");
    let parking_clearing: ClearingMessage = read_all(bus.as_ref(), &clearing_subject)
        .await
        .iter()
        .filter_map(|r| dcpipe_schemas::decode::<ClearingMessage>(&r.payload).ok())
        .find(|m| m.payment_id.as_bytes() == &parking_charge.payment_id.0)
        .expect("the parking charge's clearing message");
    let vehicle_signer = &network.institutions[VEHICLE_OI].signer;

    // A stay the record shows (its events), charged more than the tariff: 40 minutes with
    // 15 free at 10 fen a minute are 250 fen, charged 400 (under its own charge digest).
    let entered_at_ms = now_ms - 20 * 60_000;
    let exited_at_ms = entered_at_ms + 40 * 60_000 - 1;
    let stay = session_id(VEHICLE, "PARK-1", entered_at_ms);
    let stay_payment = session_payment_id(&stay, entered_at_ms);
    publish_stay(
        bus.as_ref(),
        &payer,
        &stay,
        stay_payment,
        entered_at_ms,
        exited_at_ms,
    )
    .await;
    let mut overcharged = parking_clearing.clone();
    overcharged.payment_id = stay_payment;
    overcharged.amount_fen = 400;
    overcharged.envelope_digest = charge_digest(
        &stay_payment,
        stay.as_bytes(),
        parking_authorization.authorization_id.as_bytes(),
        VEHICLE,
        &overcharged.payer,
        &overcharged.payee,
        400,
        exited_at_ms,
    );
    publish_charge(
        bus.as_ref(),
        &clearing_subject,
        &mut overcharged,
        vehicle_signer,
    )
    .await;
    // Its clearing message has no answer either.
    expected.insert(AuditCode::VehicleChargeAmountMismatch, 1);
    expected.insert(AuditCode::OutcomeMissing, 1);
    assert_found(
        &audit_of(bus.as_ref(), &network).await,
        &expected,
        "a charge above the tariff",
    );

    // A charge under the parking pre-authorization for a session that never happened.
    let mut invented = parking_clearing.clone();
    invented.payment_id = PaymentId::random();
    invented.amount_fen = 100;
    publish_charge(
        bus.as_ref(),
        &clearing_subject,
        &mut invented,
        vehicle_signer,
    )
    .await;
    expected.insert(AuditCode::VehicleChargeWithoutSession, 1);
    expected.insert(AuditCode::OutcomeMissing, 2);
    assert_found(
        &audit_of(bus.as_ref(), &network).await,
        &expected,
        "a charge without a session",
    );

    // Another stay the record shows, charged its fee but under the digest of another charge.
    let entered_at_ms = now_ms - 10 * 60_000;
    let exited_at_ms = entered_at_ms + 40 * 60_000 - 1;
    let second_stay = session_id(VEHICLE, "PARK-1", entered_at_ms);
    let second_payment = session_payment_id(&second_stay, entered_at_ms);
    publish_stay(
        bus.as_ref(),
        &payer,
        &second_stay,
        second_payment,
        entered_at_ms,
        exited_at_ms,
    )
    .await;
    let mut misdigested = parking_clearing.clone();
    misdigested.payment_id = second_payment;
    misdigested.amount_fen = 250;
    publish_charge(
        bus.as_ref(),
        &clearing_subject,
        &mut misdigested,
        vehicle_signer,
    )
    .await;
    expected.insert(AuditCode::VehicleChargeMismatch, 1);
    expected.insert(AuditCode::OutcomeMissing, 3);
    assert_found(
        &audit_of(bus.as_ref(), &network).await,
        &expected,
        "a charge under another charge's digest",
    );

    // The parking stay charged a second time, with other terms.
    let mut again = parking_clearing.clone();
    again.amount_fen += 10;
    publish_charge(bus.as_ref(), &clearing_subject, &mut again, vehicle_signer).await;
    expected.insert(AuditCode::VehicleChargeTwice, 1);
    assert_found(
        &audit_of(bus.as_ref(), &network).await,
        &expected,
        "a second charge for one session",
    );
}
