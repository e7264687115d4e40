//! A crafted input for each refusal of the vehicle flow's verification functions, with real
//! certificates: each is refused with its stable code, and the genuine input next to it passes.

mod vehicle_fixtures;

use std::sync::Arc;

use dcpipe_pipeline::pki::{
    Algorithm, AlgorithmChoice, CertifiedKey, ChainVerifier, DemoPkiOptions, PkiDirectory,
    RevocationSet, Role, SpecialCertificate, SubjectSpec,
};
use dcpipe_pipeline::reason::{Reason, Rejected};
use dcpipe_pipeline::vehicle::preauth::{PreauthPolicy, verify_authorization};
use dcpipe_pipeline::vehicle::registry::{EntityRegistry, verify_entity};
use dcpipe_pipeline::vehicle::report::{report_fee, verify_service_report};
use dcpipe_pipeline::vehicle::session::OpenSession;
use dcpipe_pipeline::vehicle::signed::{
    service_authorization_bytes, service_complete_report_bytes, service_entity_bytes, session_id,
};
use dcpipe_pipeline::vehicle::telemetry::{
    SequenceVerdict, TelemetryBatcher, TelemetryChain, TelemetryPolicy, verify_telemetry_batch,
};
use dcpipe_schemas::{
    AuthorizationId, MeterUnit, PartyRef, ReportId, ServiceAuthorization, ServiceCompleteReport,
    ServiceEntity, ServiceKind, TelemetryFix, VehicleTelemetryBatch,
};
use vehicle_fixtures::{T0_MS, entity, rectangle};

const OI: &str = "oi01";
const VEHICLE: &str = "LSVAU2180N2183294";
const NOW_MS: i64 = T0_MS + 60_000;

struct Pki {
    pki: PkiDirectory,
    revocations: Arc<RevocationSet>,
    verifier: ChainVerifier,
}

fn pki() -> Pki {
    let pki = PkiDirectory::generate(&DemoPkiOptions::new(2, 2, AlgorithmChoice::Mixed, T0_MS))
        .expect("PKI");
    let revocations = Arc::new(RevocationSet::new());
    let verifier = ChainVerifier::new(Arc::clone(pki.trust_store()), Arc::clone(&revocations));
    Pki {
        pki,
        revocations,
        verifier,
    }
}

fn spec<'a>(role: Role, id: &'a str, institution: &'a str) -> SubjectSpec<'a> {
    SubjectSpec {
        role,
        id,
        institution,
        algorithm: Algorithm::Sm2Sm3,
    }
}

impl Pki {
    fn issue(&self, role: Role, id: &str, institution: &str) -> CertifiedKey {
        self.pki
            .issue(
                &spec(role, id, institution),
                T0_MS - 86_400_000,
                T0_MS + 86_400_000,
            )
            .expect("issues")
    }

    fn special(&self, kind: SpecialCertificate, role: Role, id: &str) -> CertifiedKey {
        self.pki
            .issue_special(kind, &spec(role, id, OI), NOW_MS, &self.revocations)
            .expect("issues")
    }
}

fn wallet() -> PartyRef {
    PartyRef {
        institution_id: OI.to_owned(),
        wallet_id: "w-oi01-000001".to_owned(),
    }
}

fn fixes(from_ms: i64, n: i64) -> Vec<TelemetryFix> {
    (0..n)
        .map(|i| TelemetryFix {
            latitude_e7: 399_042_000 + i as i32,
            longitude_e7: 1_164_074_000,
            horizontal_accuracy_cm: Some(500),
            speed_cm_per_s: 100,
            heading_cdeg: 0,
            recorded_at_ms: from_ms + 1_000 * i,
        })
        .collect()
}

fn batches(key: &CertifiedKey, count: usize) -> Vec<VehicleTelemetryBatch> {
    let mut batcher = TelemetryBatcher::new(VEHICLE, 1, wallet(), key.certificate(), key.key());
    (0..count)
        .map(|i| {
            batcher
                .seal(fixes(T0_MS + 10_000 * i as i64, 5))
                .expect("signs")
        })
        .collect()
}

fn verify_batch(p: &Pki, batch: &VehicleTelemetryBatch) -> Result<(), Rejected> {
    verify_telemetry_batch(batch, OI, &p.verifier, &TelemetryPolicy::default(), NOW_MS).map(|_| ())
}

fn reason(result: Result<(), Rejected>) -> Reason {
    result.expect_err("refused").reason
}

#[test]
fn telemetry_refusals_have_their_codes() {
    let p = pki();
    let vehicle = p.issue(Role::Vehicle, VEHICLE, OI);
    let genuine = batches(&vehicle, 1).remove(0);
    verify_batch(&p, &genuine).expect("a genuine batch verifies");

    let mut forged = genuine.clone();
    forged.reports[0].latitude_e7 += 1;
    assert_eq!(
        reason(verify_batch(&p, &forged)),
        Reason::TelemetrySignatureInvalid
    );
    let mut unsigned = genuine.clone();
    unsigned.signature.clear();
    assert_eq!(
        reason(verify_batch(&p, &unsigned)),
        Reason::TelemetrySignatureInvalid
    );

    let mut elsewhere = genuine.clone();
    elsewhere.wallet.institution_id = "oi02".to_owned();
    assert_eq!(
        reason(verify_batch(&p, &elsewhere)),
        Reason::TelemetryWrongInstitution
    );

    let other = p.issue(Role::Vehicle, "ANOTHER-VEHICLE", OI);
    let mut batcher = TelemetryBatcher::new(VEHICLE, 1, wallet(), other.certificate(), other.key());
    let impostor = batcher.seal(fixes(T0_MS, 3)).expect("signs");
    assert_eq!(
        reason(verify_batch(&p, &impostor)),
        Reason::TelemetryVehicleMismatch
    );
    let foreign = p.issue(Role::Vehicle, VEHICLE, "oi02");
    let mut batcher =
        TelemetryBatcher::new(VEHICLE, 1, wallet(), foreign.certificate(), foreign.key());
    let enrolled_elsewhere = batcher.seal(fixes(T0_MS, 3)).expect("signs");
    assert_eq!(
        reason(verify_batch(&p, &enrolled_elsewhere)),
        Reason::TelemetryVehicleMismatch
    );

    let terminal = p.special(SpecialCertificate::WrongRole, Role::Vehicle, VEHICLE);
    let mut batcher =
        TelemetryBatcher::new(VEHICLE, 1, wallet(), terminal.certificate(), terminal.key());
    let wrong_role = batcher.seal(fixes(T0_MS, 3)).expect("signs");
    assert_eq!(
        reason(verify_batch(&p, &wrong_role)).as_str(),
        "cert.wrong_role"
    );
    for (kind, code) in [
        (SpecialCertificate::Revoked, "cert.revoked"),
        (SpecialCertificate::UnknownIssuer, "cert.unknown_issuer"),
    ] {
        let key = p.special(kind, Role::Vehicle, VEHICLE);
        let batch = batches(&key, 1).remove(0);
        assert_eq!(reason(verify_batch(&p, &batch)).as_str(), code);
    }

    let mut batcher =
        TelemetryBatcher::new(VEHICLE, 1, wallet(), vehicle.certificate(), vehicle.key());
    let ahead = batcher.seal(fixes(NOW_MS + 3 * 60_000, 2)).expect("signs");
    assert_eq!(reason(verify_batch(&p, &ahead)), Reason::TelemetryClockSkew);
    let stale = batcher
        .seal(fixes(NOW_MS - 2 * 3_600_000, 2))
        .expect("signs");
    assert_eq!(reason(verify_batch(&p, &stale)), Reason::TelemetryClockSkew);
}

#[test]
fn the_chain_tells_next_duplicate_gap_replay_conflict_and_break() {
    let p = pki();
    let vehicle = p.issue(Role::Vehicle, VEHICLE, OI);
    let chain_of = |batches: &[VehicleTelemetryBatch]| {
        let mut chain = None;
        for batch in batches {
            let verified =
                verify_telemetry_batch(batch, OI, &p.verifier, &TelemetryPolicy::default(), NOW_MS)
                    .expect("verifies");
            assert!(matches!(
                TelemetryChain::check(chain.as_ref(), &verified, false),
                Ok(SequenceVerdict::Apply { .. })
            ));
            chain = Some(TelemetryChain::advanced(chain.as_ref(), &verified, 0));
        }
        chain
    };
    let verify = |batch: &VehicleTelemetryBatch| {
        verify_telemetry_batch(batch, OI, &p.verifier, &TelemetryPolicy::default(), NOW_MS)
            .expect("verifies")
    };
    let all = batches(&vehicle, 4);
    let chain = chain_of(&all[..2]);
    let check = |batch: &VehicleTelemetryBatch, accept_gap| {
        TelemetryChain::check(chain.as_ref(), &verify(batch), accept_gap)
    };
    assert_eq!(
        check(&all[2], false),
        Ok(SequenceVerdict::Apply { missing_reports: 0 })
    );
    assert_eq!(check(&all[1], false), Ok(SequenceVerdict::Duplicate));
    assert_eq!(
        check(&all[3], false),
        Ok(SequenceVerdict::Gap {
            missing_from: 10,
            missing_until: 15
        })
    );
    assert_eq!(
        check(&all[3], true),
        Ok(SequenceVerdict::Apply { missing_reports: 5 })
    );
    // The first batch of a vehicle never seen waits for sequence 0.
    assert_eq!(
        TelemetryChain::check(None, &verify(&all[1]), false),
        Ok(SequenceVerdict::Gap {
            missing_from: 0,
            missing_until: 5
        })
    );

    // A second history: the vehicle re-signs sequence 5 with other reports.
    let mut fork =
        TelemetryBatcher::new(VEHICLE, 1, wallet(), vehicle.certificate(), vehicle.key())
            .resume(5, all[0].previous_batch_digest);
    let forked = fork.seal(fixes(T0_MS + 10_500, 5)).expect("signs");
    let code = |batch: &VehicleTelemetryBatch| check(batch, false).expect_err("refused").reason;
    assert_eq!(code(&forked), Reason::TelemetrySequenceConflict);
    // Older than what the chain remembers.
    let mut old = TelemetryBatcher::new(VEHICLE, 1, wallet(), vehicle.certificate(), vehicle.key())
        .resume(3, all[0].previous_batch_digest);
    assert_eq!(
        code(&old.seal(fixes(T0_MS + 1, 2)).expect("signs")),
        Reason::TelemetrySequenceReplayed
    );
    // The next sequence naming another previous batch.
    let mut broken =
        TelemetryBatcher::new(VEHICLE, 1, wallet(), vehicle.certificate(), vehicle.key())
            .resume(10, all[0].previous_batch_digest);
    assert_eq!(
        code(&broken.seal(fixes(T0_MS + 20_000, 2)).expect("signs")),
        Reason::TelemetryChainBroken
    );
    // The next sequence with a time that goes back.
    let mut back =
        TelemetryBatcher::new(VEHICLE, 1, wallet(), vehicle.certificate(), vehicle.key())
            .resume(10, chain.as_ref().expect("chain").last_digest);
    assert_eq!(
        code(&back.seal(fixes(T0_MS + 1_000, 2)).expect("signs")),
        Reason::TelemetryTimeNotRising
    );
}

fn signed_entity(signer: &CertifiedKey, mut entity: ServiceEntity) -> ServiceEntity {
    entity.certificate = signer.certificate().der().to_vec();
    entity.signature = signer
        .key()
        .sign(&service_entity_bytes(&entity))
        .expect("signs");
    entity
}

fn charging_station() -> ServiceEntity {
    let mut e = entity(
        "CHG-1",
        ServiceKind::Charging,
        rectangle(0.0, 500.0, 30.0, 30.0),
    )
    .entity()
    .clone();
    e.updated_at_ms = T0_MS;
    e
}

#[test]
fn registry_entries_must_be_signed_by_the_institution_of_the_wallet() {
    let p = pki();
    let oi02 = &p.pki.institution("oi02").expect("oi02").signer;
    let genuine = signed_entity(oi02, charging_station());
    verify_entity(&genuine, &p.verifier).expect("signed by the wallet's institution");

    let unsigned = charging_station();
    let code = |e: &ServiceEntity| verify_entity(e, &p.verifier).expect_err("refused").reason;
    assert_eq!(code(&unsigned), Reason::EntityUnsigned);
    let oi01 = &p.pki.institution(OI).expect("oi01").signer;
    assert_eq!(
        code(&signed_entity(oi01, charging_station())),
        Reason::EntityWrongSigner
    );
    let mut forged = genuine.clone();
    forged.wallet.wallet_id = "w-oi02-attacker".to_owned();
    assert_eq!(code(&forged), Reason::EntitySignatureInvalid);
    let station_key = p.issue(Role::ServiceEntity, "CHG-1", "oi02");
    assert_eq!(
        code(&signed_entity(&station_key, charging_station())).as_str(),
        "cert.wrong_role"
    );
    let mut bow_tie = charging_station();
    bow_tie.geofence.swap(1, 2);
    assert_eq!(
        code(&signed_entity(oi02, bow_tie)),
        Reason::EntityInvalidGeofence
    );
}

fn registry_with_station(p: &Pki) -> EntityRegistry {
    let oi02 = &p.pki.institution("oi02").expect("oi02").signer;
    let mut registry = EntityRegistry::new();
    registry
        .apply(verify_entity(&signed_entity(oi02, charging_station()), &p.verifier).expect("ok"))
        .expect("registers");
    registry
}

fn authorization(signer: &CertifiedKey) -> ServiceAuthorization {
    let mut a = ServiceAuthorization {
        authorization_id: AuthorizationId::from_bytes([7; 16]),
        vehicle_id: VEHICLE.to_owned(),
        wallet: PartyRef {
            institution_id: OI.to_owned(),
            wallet_id: signer.certificate().id().to_owned(),
        },
        entity_id: "CHG-1".to_owned(),
        service_kind: ServiceKind::Charging,
        max_amount_fen: 30_000,
        issued_at_ms: T0_MS,
        expires_at_ms: T0_MS + 4 * 3_600_000,
        certificate: signer.certificate().der().to_vec(),
        signature: Vec::new(),
    };
    a.signature = signer
        .key()
        .sign(&service_authorization_bytes(&a))
        .expect("signs");
    a
}

fn resign(signer: &CertifiedKey, mut a: ServiceAuthorization) -> ServiceAuthorization {
    a.signature = signer
        .key()
        .sign(&service_authorization_bytes(&a))
        .expect("signs");
    a
}

#[test]
fn pre_authorization_refusals_have_their_codes() {
    let p = pki();
    let registry = registry_with_station(&p);
    let terminal = &p.pki.wallet("w-oi01-000001").expect("wallet").terminal;
    let wallet_key = &p.pki.wallet("w-oi01-000001").expect("wallet").wallet;
    let policy = PreauthPolicy::default();
    let verify = |a: &ServiceAuthorization, now_ms| {
        verify_authorization(a, OI, &registry, &p.verifier, &policy, now_ms)
            .map(|_| ())
            .map_err(|r| r.reason)
    };
    verify(&authorization(terminal), NOW_MS).expect("signed by the wallet's terminal");
    verify(&authorization(wallet_key), NOW_MS).expect("signed by the wallet's own key");

    let genuine = authorization(terminal);
    let mut forged = genuine.clone();
    forged.max_amount_fen *= 10;
    assert_eq!(
        verify(&forged, NOW_MS),
        Err(Reason::PreauthSignatureInvalid)
    );
    assert_eq!(
        verify(&genuine, genuine.expires_at_ms + 1),
        Err(Reason::PreauthExpired)
    );
    assert_eq!(
        verify(&genuine, genuine.issued_at_ms - 3 * 60_000),
        Err(Reason::PreauthNotYetValid)
    );
    let mut long = genuine.clone();
    long.expires_at_ms = long.issued_at_ms + 8 * 86_400_000;
    assert_eq!(
        verify(&resign(terminal, long), NOW_MS),
        Err(Reason::PreauthLifetimeTooLong)
    );
    let mut elsewhere = genuine.clone();
    elsewhere.entity_id = "NOT-REGISTERED".to_owned();
    assert_eq!(
        verify(&resign(terminal, elsewhere), NOW_MS),
        Err(Reason::PreauthWrongEntity)
    );
    let mut fuel = genuine.clone();
    fuel.service_kind = ServiceKind::Fuel;
    assert_eq!(
        verify(&resign(terminal, fuel), NOW_MS),
        Err(Reason::PreauthWrongService)
    );
    let mut other_wallet = genuine.clone();
    other_wallet.wallet.wallet_id = "w-oi01-000003".to_owned();
    assert_eq!(
        verify(&resign(terminal, other_wallet), NOW_MS),
        Err(Reason::PreauthWalletMismatch)
    );
    let mut other_institution = genuine.clone();
    other_institution.wallet.institution_id = "oi02".to_owned();
    assert_eq!(
        verify(&resign(terminal, other_institution), NOW_MS),
        Err(Reason::PreauthWrongInstitution)
    );
    let secure_element = &p
        .pki
        .wallet("w-oi01-000001")
        .expect("wallet")
        .secure_element;
    assert_eq!(
        verify(&authorization(secure_element), NOW_MS).map_err(|r| r.as_str()),
        Err("cert.wrong_role")
    );
}

#[test]
fn report_refusals_have_their_codes() {
    let p = pki();
    let station = p.issue(Role::ServiceEntity, "CHG-1", "oi02");
    let mut report = ServiceCompleteReport {
        report_id: ReportId::from_bytes([9; 16]),
        entity_id: "CHG-1".to_owned(),
        vehicle_id: VEHICLE.to_owned(),
        session_id: session_id(VEHICLE, "CHG-1", T0_MS),
        unit: MeterUnit::Kwh,
        quantity_milli: 42_750,
        completed_at_ms: T0_MS + 3_600_000,
        certificate: station.certificate().der().to_vec(),
        signature: Vec::new(),
    };
    report.signature = station
        .key()
        .sign(&service_complete_report_bytes(&report))
        .expect("signs");
    let verified = verify_service_report(&report, &p.verifier).expect("genuine");
    let e = charging_station();
    let session = OpenSession {
        session_id: report.session_id,
        entity_id: "CHG-1".to_owned(),
        entity_version: e.version,
        kind: ServiceKind::Charging,
        entity_wallet: e.wallet.clone(),
        tariff: e.tariff.clone(),
        entered_at_ms: T0_MS,
    };
    assert_eq!(
        report_fee(&report, &verified, Some((VEHICLE, &session))),
        Ok(6_413),
        "42.750 kWh at 1.50 CNY, rounded up"
    );
    let code = |r: Result<i64, Rejected>| r.expect_err("refused").reason;
    assert_eq!(
        code(report_fee(&report, &verified, None)),
        Reason::ReportUnknownSession
    );
    assert_eq!(
        code(report_fee(&report, &verified, Some(("ANOTHER", &session)))),
        Reason::ReportWrongSession
    );
    let mut parking = session.clone();
    parking.kind = ServiceKind::Parking;
    assert_eq!(
        code(report_fee(&report, &verified, Some((VEHICLE, &parking)))),
        Reason::ReportWrongSession
    );
    let mut forged = report.clone();
    forged.quantity_milli *= 2;
    assert_eq!(
        verify_service_report(&forged, &p.verifier)
            .expect_err("forged")
            .reason,
        Reason::ReportSignatureInvalid
    );
    let mut other_entity = report.clone();
    other_entity.entity_id = "CHG-2".to_owned();
    other_entity.signature = station
        .key()
        .sign(&service_complete_report_bytes(&other_entity))
        .expect("signs");
    assert_eq!(
        verify_service_report(&other_entity, &p.verifier)
            .expect_err("not this station")
            .reason,
        Reason::ReportEntityMismatch
    );
    // A station of another institution than the entity's wallet.
    let foreign = p.issue(Role::ServiceEntity, "CHG-1", OI);
    let mut from_foreign = report.clone();
    from_foreign.certificate = foreign.certificate().der().to_vec();
    from_foreign.signature = foreign
        .key()
        .sign(&service_complete_report_bytes(&from_foreign))
        .expect("signs");
    let verified = verify_service_report(&from_foreign, &p.verifier).expect("chain is fine");
    assert_eq!(
        code(report_fee(
            &from_foreign,
            &verified,
            Some((VEHICLE, &session))
        )),
        Reason::ReportWrongSession
    );
}
