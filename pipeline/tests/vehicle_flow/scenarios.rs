//! Vehicle scenarios, each run on every backend.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dcpipe_connectors::bus::{Bus, ConsumerConfig, Outgoing, Position, dead_letter_subject};
use dcpipe_connectors::session::{ChargeRecord, SessionStore};
use dcpipe_pipeline::clock::{SystemClock, system_now_ms};
use dcpipe_pipeline::invariants::OutcomeCollector;
use dcpipe_pipeline::network::{Network, NetworkConfig};
use dcpipe_pipeline::pki::{Algorithm, CertifiedKey, Role, SubjectSpec};
use dcpipe_pipeline::runtime::{Input, MemberResult, Stage, Verdict};
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::vehicle::backend::VehiclePolicy;
use dcpipe_pipeline::vehicle::signed::{
    service_authorization_bytes, service_complete_report_bytes, service_entity_bytes,
    telemetry_report_bytes,
};
use dcpipe_pipeline::vehicle::stages::matching;
use dcpipe_pipeline::vehicle::tariff::parking_fee;
use dcpipe_pipeline::vehicle::telemetry::TelemetryBatcher;
use dcpipe_schemas::{
    AuthorizationId, DeadLetter, MeterUnit, OutcomeStatus, PartyRef, PaymentId, ReportId,
    ServiceAuthorization, ServiceCompleteReport, ServiceEntity, ServiceKind, SessionEventKind,
    SessionId, VehicleSessionEvent, VehicleTelemetry, VehicleTelemetryBatch,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::harness::{Backend, runner};
use crate::vehicle_fixtures::{Drive, Receiver, entity, rectangle};

/// How long a scenario waits for the pipeline before failing.
const DEADLINE: Duration = Duration::from_secs(90);
/// The institution holding the vehicles' wallets.
const VEHICLE_OI: &str = "oi01";
/// The institution holding the entities' wallets.
const ENTITY_OI: &str = "oi02";
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
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A network of two institutions with vehicles enabled, its stages running.
struct World {
    network: Network,
    bus: Arc<dyn Bus>,
    collector: OutcomeCollector,
    shutdown: CancellationToken,
    stages: Vec<JoinHandle<MemberResult>>,
    observers: Vec<JoinHandle<()>>,
    now_ms: i64,
}

impl World {
    async fn start(backend: &Backend) -> Self {
        let mut config = NetworkConfig::in_memory(2, 8);
        config.ledger = backend.ledger.clone();
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
        let shutdown = CancellationToken::new();
        let (collector, observers) = OutcomeCollector::spawn(
            Arc::clone(&backend.bus),
            network.institutions.keys().cloned(),
            "test-observer",
            shutdown.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("collector: {e}"));
        let mut world = World {
            network,
            bus: Arc::clone(&backend.bus),
            collector,
            shutdown,
            stages: Vec::new(),
            observers,
            now_ms: system_now_ms(),
        };
        world.spawn_stages();
        world.register_entities().await;
        world
    }

    /// Starts every stage (a new process's worth of members), stopping with `shutdown`.
    fn spawn_stages(&mut self) {
        self.stages = self
            .network
            .spawn(&self.bus, &runner(), &self.shutdown)
            .unwrap_or_else(|e| panic!("runner configuration: {e}"));
    }

    /// Kills every stage member at once, mid-work: nothing it held is acknowledged.
    async fn kill_stages(&mut self) {
        for handle in self.stages.drain(..) {
            handle.abort();
            let _ = handle.await;
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        for handle in self.stages.drain(..) {
            let _ = handle.await;
        }
        for handle in self.observers.drain(..) {
            let _ = handle.await;
        }
    }

    fn store(&self) -> &Arc<dyn SessionStore> {
        &self.network.vehicles[VEHICLE_OI].store
    }

    /// The `n`th wallet of an institution.
    fn wallet(&self, institution: &str, n: usize) -> PartyRef {
        self.network
            .wallets
            .iter()
            .filter(|w| w.party.institution_id == institution)
            .nth(n)
            .expect("wallet")
            .party
            .clone()
    }

    async fn publish(&self, subject: String, key: &str, frame: Vec<u8>) {
        self.bus
            .publish(Outgoing::new(subject, Bytes::from(frame)).with_key(key.as_bytes().to_vec()))
            .await
            .expect("published");
    }

    /// The parking lot, the toll strip and the charging station of the fixtures, each paying
    /// into a wallet of the entity institution, signed by its institution signer.
    async fn register_entities(&self) {
        let signer = &self.network.institutions[ENTITY_OI].signer;
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
            e.wallet = self.wallet(ENTITY_OI, n);
            e.updated_at_ms = self.now_ms - 3_600_000;
            self.publish_entity(e, signer).await;
        }
        let registry = Arc::clone(&self.network.entity_registry);
        eventually("the registry holds the three entities", || {
            let registry = Arc::clone(&registry);
            async move { registry.is_caught_up() && registry.read().len() == 3 }
        })
        .await;
    }

    /// Signs a registry entry with `signer` and publishes it, keyed by the entity.
    async fn publish_entity(&self, mut e: ServiceEntity, signer: &CertifiedKey) {
        e.certificate = signer.certificate().der().to_vec();
        e.signature = signer.key().sign(&service_entity_bytes(&e)).expect("signs");
        let frame = dcpipe_schemas::encode(&e).expect("encodes");
        let key = e.entity_id.clone();
        self.publish(subjects::VEHICLE_REGISTRY.to_owned(), &key, frame)
            .await;
    }

    /// A pre-authorization by `wallet` for `vehicle` at `entity`, up to `max_amount_fen`.
    async fn pre_authorize(
        &self,
        wallet: &PartyRef,
        vehicle: &str,
        entity_id: &str,
        kind: ServiceKind,
        max_amount_fen: i64,
    ) {
        let terminal = &self
            .network
            .pki
            .wallet(&wallet.wallet_id)
            .expect("wallet keys")
            .terminal;
        let mut authorization = ServiceAuthorization {
            authorization_id: AuthorizationId::random(),
            vehicle_id: vehicle.to_owned(),
            wallet: wallet.clone(),
            entity_id: entity_id.to_owned(),
            service_kind: kind,
            max_amount_fen,
            issued_at_ms: self.now_ms - 3_000_000,
            expires_at_ms: self.now_ms + 3_600_000,
            certificate: terminal.certificate().der().to_vec(),
            signature: Vec::new(),
        };
        authorization.signature = terminal
            .key()
            .sign(&service_authorization_bytes(&authorization))
            .expect("signs");
        let frame = dcpipe_schemas::encode(&authorization).expect("encodes");
        self.publish(subjects::vehicle_authorization(VEHICLE_OI), vehicle, frame)
            .await;
    }

    async fn held_count(&self, vehicle: &str) -> usize {
        self.store()
            .authorizations(vehicle)
            .await
            .expect("read")
            .len()
    }

    fn vehicle_key(&self, vehicle: &str) -> CertifiedKey {
        self.network
            .pki
            .issue(
                &SubjectSpec {
                    role: Role::Vehicle,
                    id: vehicle,
                    institution: VEHICLE_OI,
                    algorithm: Algorithm::EcdsaP256Sha256,
                },
                self.now_ms - 86_400_000,
                self.now_ms + 86_400_000,
            )
            .expect("vehicle certificate")
    }

    async fn publish_batches(&self, vehicle: &str, batches: &[VehicleTelemetryBatch]) {
        for batch in batches {
            let frame = dcpipe_schemas::encode(batch).expect("encodes");
            self.publish(subjects::vehicle_telemetry(VEHICLE_OI), vehicle, frame)
                .await;
        }
    }

    /// The session events announced for `vehicle`, once at least `count` were read, ordered
    /// by session start (members of a group may publish two batches' events out of order).
    async fn session_events(&self, vehicle: &str, count: usize) -> Vec<VehicleSessionEvent> {
        let mut consumer = self
            .bus
            .consumer(ConsumerConfig::new(
                subjects::vehicle_session(VEHICLE_OI),
                "test-session-events",
            ))
            .await
            .expect("consumer");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut events = Vec::new();
        while events.len() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} session events: {events:?}",
                events.len()
            );
            for delivery in consumer
                .fetch(64, Duration::from_millis(200))
                .await
                .expect("fetch")
            {
                let event: VehicleSessionEvent =
                    dcpipe_schemas::decode(&delivery.record.payload).expect("event decodes");
                if event.vehicle_id == vehicle {
                    events.push(event);
                }
                delivery.ack().await.expect("ack");
            }
        }
        events.sort_by_key(|e| (e.entered_at_ms, e.event != SessionEventKind::Enter));
        events
    }

    async fn charges(&self, vehicle: &str) -> Vec<ChargeRecord> {
        self.store().charges(vehicle).await.expect("read")
    }

    async fn wait_for_outcomes(&self, payment_ids: &[PaymentId]) {
        let ids = payment_ids.to_vec();
        assert!(
            self.collector
                .wait_until(DEADLINE, |book| {
                    ids.iter()
                        .all(|id| book.answers().any(|((p, _), _)| p == id))
                })
                .await,
            "outcomes of {payment_ids:?}"
        );
    }

    fn outcome_of(&self, payment_id: PaymentId) -> Vec<(OutcomeStatus, Option<String>, i64)> {
        self.collector.with_book(|book| {
            book.answers()
                .filter(|((p, _), _)| *p == payment_id)
                .map(|(_, a)| (a.status, a.reason_code.clone(), a.amount_fen))
                .collect()
        })
    }

    async fn wait_until_settled(&self) {
        let network = &self.network;
        eventually("money is settled and conserved", || async move {
            network
                .money()
                .await
                .expect("money")
                .is_settled_and_conserved()
        })
        .await;
    }
}

/// Fixes a GNSS receiver reports every 2 s with 1.5 m of noise.
fn receiver() -> Receiver {
    Receiver {
        sigma_m: 1.5,
        outlier_rate: 0.0,
        drop_rate: 0.0,
        interval_ms: 2_000,
    }
}

/// Signs `drive`'s fixes in batches of [`BATCH_REPORTS`].
fn sign(
    drive: &Drive,
    vehicle: &str,
    wallet: &PartyRef,
    key: &CertifiedKey,
) -> Vec<VehicleTelemetryBatch> {
    let mut batcher =
        TelemetryBatcher::new(vehicle, 1, wallet.clone(), key.certificate(), key.key());
    drive
        .fixes
        .chunks(BATCH_REPORTS)
        .map(|reports| batcher.seal(reports.to_vec()).expect("signs"))
        .collect()
}

/// A drive that starts `ago_ms` before now at `start`.
fn drive_from(now_ms: i64, ago_ms: i64, seed: u64, start: (f64, f64)) -> Drive {
    let mut drive = Drive::new(seed, receiver(), start);
    drive.t_ms = now_ms - ago_ms;
    drive
}

/// West along the road through the toll strip, into the parking lot for half an hour and
/// out, past the lot's north side without entering (a decoy), to the charging station for ten
/// minutes and away.
fn full_track(now_ms: i64) -> Drive {
    let mut drive = drive_from(now_ms, 48 * 60_000, 42, (1_400.0, 2.0));
    drive
        .to((600.0, 2.0), 25.0)
        .to((-60.0, 0.0), 12.0)
        .to((0.0, 5.0), 3.0)
        .stay(30 * 60_000, true)
        .to((60.0, 0.0), 3.0)
        .to((400.0, 0.0), 12.0)
        .to((400.0, 60.0), 5.0)
        .to((-400.0, 60.0), 12.0)
        .to((0.0, 460.0), 12.0)
        .to((0.0, 500.0), 3.0)
        .stay(10 * 60_000, true)
        .to((0.0, 560.0), 3.0)
        .to((0.0, 900.0), 12.0);
    drive
}

/// The station's signed report of what it delivered in `session_id`.
fn station_report(
    world: &World,
    vehicle: &str,
    session_id: SessionId,
    completed_at_ms: i64,
) -> ServiceCompleteReport {
    let station = world
        .network
        .pki
        .issue(
            &SubjectSpec {
                role: Role::ServiceEntity,
                id: "CHG-1",
                institution: ENTITY_OI,
                algorithm: Algorithm::EcdsaP256Sha256,
            },
            world.now_ms - 86_400_000,
            world.now_ms + 86_400_000,
        )
        .expect("station certificate");
    let mut report = ServiceCompleteReport {
        report_id: ReportId::random(),
        entity_id: "CHG-1".to_owned(),
        vehicle_id: vehicle.to_owned(),
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

fn payment_ids(charges: &[ChargeRecord]) -> Vec<PaymentId> {
    charges
        .iter()
        .map(|c| PaymentId::from_bytes(c.payment_id.0))
        .collect()
}

pub(crate) async fn a_noisy_track_is_charged_once_per_session_with_the_right_amounts(
    backend: &Backend,
) {
    const VEHICLE: &str = "LSVAU2180N2000001";
    let world = World::start(backend).await;
    let wallet = world.wallet(VEHICLE_OI, 0);
    for (entity_id, kind, max) in [
        ("TOLL-1", ServiceKind::Toll, 1_000),
        ("PARK-1", ServiceKind::Parking, 1_000),
        ("CHG-1", ServiceKind::Charging, 5_000),
    ] {
        world
            .pre_authorize(&wallet, VEHICLE, entity_id, kind, max)
            .await;
    }
    eventually("three pre-authorizations are held", || async {
        world.held_count(VEHICLE).await == 3
    })
    .await;

    let key = world.vehicle_key(VEHICLE);
    let drive = full_track(world.now_ms);
    let batches = sign(&drive, VEHICLE, &wallet, &key);
    world.publish_batches(VEHICLE, &batches).await;
    // A redelivery of a batch from the middle of the stay, after later ones.
    world.publish_batches(VEHICLE, &batches[20..21]).await;

    let store = Arc::clone(world.store());
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
    let entities: Vec<&str> = sessions.iter().map(|s| s.entity_id.as_str()).collect();
    assert_eq!(entities, ["TOLL-1", "PARK-1", "CHG-1"], "no decoy session");
    // The vehicle can follow its sessions: each event announced once, with the ids of the
    // session and of its charge.
    let events = world.session_events(VEHICLE, 5).await;
    let seen: Vec<(SessionEventKind, &str)> = events
        .iter()
        .map(|e| (e.event, e.entity_id.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (SessionEventKind::Cross, "TOLL-1"),
            (SessionEventKind::Enter, "PARK-1"),
            (SessionEventKind::Exit, "PARK-1"),
            (SessionEventKind::Enter, "CHG-1"),
            (SessionEventKind::Exit, "CHG-1"),
        ]
    );
    for event in &events {
        let session = sessions
            .iter()
            .find(|s| s.entity_id == event.entity_id)
            .expect("a session per event");
        assert_eq!(event.session_id.as_bytes(), &session.session_id);
        assert_eq!(event.entered_at_ms, session.entered_at_ms);
        assert_eq!(event.wallet, wallet);
    }
    let charging = &sessions[2];
    let report = station_report(
        &world,
        VEHICLE,
        SessionId::from_bytes(charging.session_id),
        charging.exited_at_ms.expect("ended"),
    );
    let frame = dcpipe_schemas::encode(&report).expect("encodes");
    // Delivered twice: one charge.
    for _ in 0..2 {
        world
            .publish(subjects::vehicle_report(VEHICLE_OI), VEHICLE, frame.clone())
            .await;
    }

    eventually("three charges", || async {
        world.charges(VEHICLE).await.len() == 3
    })
    .await;
    let charges = world.charges(VEHICLE).await;
    let parking = &sessions[1];
    let parking_tariff = entity(
        "PARK-1",
        ServiceKind::Parking,
        rectangle(0.0, 0.0, 80.0, 50.0),
    )
    .entity()
    .tariff
    .clone();
    let parking_expected = parking_fee(
        &parking_tariff,
        parking.entered_at_ms,
        parking.exited_at_ms.expect("ended"),
    )
    .expect("a fee");
    let amounts: Vec<(&str, i64)> = charges
        .iter()
        .map(|c| (c.entity_id.as_str(), c.amount_fen))
        .collect();
    assert_eq!(
        amounts,
        [
            ("TOLL-1", 500),
            ("PARK-1", parking_expected),
            ("CHG-1", CHARGED_KWH_MILLI * 150 / 1_000),
        ]
    );
    assert!(
        (150..=170).contains(&parking_expected),
        "half an hour with 15 free minutes: {parking_expected}"
    );
    for charge in &charges {
        assert_eq!(charge.payer.wallet_id, wallet.wallet_id);
        assert_eq!(charge.payee.institution_id, ENTITY_OI);
    }

    let ids = payment_ids(&charges);
    world.wait_for_outcomes(&ids).await;
    for (id, charge) in ids.iter().zip(&charges) {
        assert_eq!(
            world.outcome_of(*id),
            [(OutcomeStatus::Completed, None, charge.amount_fen)],
            "{}",
            charge.entity_id
        );
    }
    world.wait_until_settled().await;
    let payer_ledger = &world.network.institutions[VEHICLE_OI].ledger;
    let balance = payer_ledger
        .wallets(std::slice::from_ref(&wallet.wallet_id))
        .await
        .expect("read")[0]
        .clone()
        .expect("wallet")
        .account
        .balance_fen;
    let opening = world
        .network
        .wallets
        .iter()
        .find(|w| w.party == wallet)
        .expect("wallet")
        .opening_fen;
    let total: i64 = charges.iter().map(|c| c.amount_fen).sum();
    assert_eq!(balance, opening - total, "the wallet paid each charge once");
    assert!(world.collector.with_book(|b| b.violations(&[]).is_empty()));
    world
        .store()
        .verify_integrity()
        .await
        .expect("charges add up");
    world.stop().await;
}

pub(crate) async fn a_charge_above_the_pre_authorization_is_refused_and_moves_no_money(
    backend: &Backend,
) {
    const VEHICLE: &str = "LSVAU2180N2000002";
    let world = World::start(backend).await;
    let wallet = world.wallet(VEHICLE_OI, 1);
    // Half an hour costs about 160 fen; 100 are allowed.
    world
        .pre_authorize(&wallet, VEHICLE, "PARK-1", ServiceKind::Parking, 100)
        .await;
    eventually("the pre-authorization is held", || async {
        world.held_count(VEHICLE).await == 1
    })
    .await;
    let key = world.vehicle_key(VEHICLE);
    let mut drive = drive_from(world.now_ms, 35 * 60_000, 7, (-300.0, 0.0));
    drive
        .to((-60.0, 0.0), 12.0)
        .to((0.0, 5.0), 3.0)
        .stay(30 * 60_000, true)
        .to((60.0, 0.0), 3.0)
        .to((400.0, 0.0), 12.0);
    let batches = sign(&drive, VEHICLE, &wallet, &key);
    world.publish_batches(VEHICLE, &batches).await;

    let store = Arc::clone(world.store());
    eventually("the stay ended", || {
        let store = Arc::clone(&store);
        async move {
            store
                .sessions(VEHICLE)
                .await
                .expect("read")
                .iter()
                .any(|s| s.exited_at_ms.is_some())
        }
    })
    .await;
    let session = store.sessions(VEHICLE).await.expect("read").remove(0);
    let payment_id = dcpipe_pipeline::vehicle::signed::session_payment_id(
        &SessionId::from_bytes(session.session_id),
        session.entered_at_ms,
    );
    world.wait_for_outcomes(&[payment_id]).await;
    let outcome = world.outcome_of(payment_id);
    assert_eq!(outcome.len(), 1, "{outcome:?}");
    assert_eq!(outcome[0].0, OutcomeStatus::Rejected);
    assert_eq!(outcome[0].1.as_deref(), Some("preauth.exceeded"));
    assert!(outcome[0].2 > 100, "the fee refused: {}", outcome[0].2);
    assert!(
        world.charges(VEHICLE).await.is_empty(),
        "no charge recorded"
    );
    world.wait_until_settled().await;
    let money = world.network.money().await.expect("money");
    assert_eq!(money.balance_fen, money.opening_fen, "no money moved");
    world.stop().await;
}

pub(crate) async fn forged_telemetry_is_dead_lettered(backend: &Backend) {
    const VEHICLE: &str = "LSVAU2180N2000003";
    let world = World::start(backend).await;
    let wallet = world.wallet(VEHICLE_OI, 2);
    let key = world.vehicle_key(VEHICLE);
    let mut drive = drive_from(world.now_ms, 60_000, 3, (-300.0, 0.0));
    drive.to((-200.0, 0.0), 12.0);
    let mut batches = sign(&drive, VEHICLE, &wallet, &key);
    batches.truncate(1);
    // Moved after signing: the signature no longer covers the positions.
    batches[0].reports[0].latitude_e7 += 1_000;
    let frame = dcpipe_schemas::encode(&batches[0]).expect("encodes");
    world
        .publish(
            subjects::vehicle_telemetry(VEHICLE_OI),
            VEHICLE,
            frame.clone(),
        )
        .await;
    let mut consumer = world
        .bus
        .consumer(ConsumerConfig::new(
            dead_letter_subject(matching::STAGE),
            "test-dead-letters",
        ))
        .await
        .expect("consumer");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let letter = loop {
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        let batch = consumer
            .fetch(8, Duration::from_millis(200))
            .await
            .expect("fetch");
        if let Some(delivery) = batch.into_iter().next() {
            break dcpipe_schemas::decode::<DeadLetter>(&delivery.record.payload)
                .expect("dead letter decodes");
        }
    };
    assert_eq!(letter.original, frame);
    assert_eq!(letter.stage, matching::STAGE);
    assert_eq!(letter.reason_code, "telemetry.signature_invalid");
    assert!(
        world
            .store()
            .vehicles(&[VEHICLE.to_owned()])
            .await
            .expect("read")[0]
            .is_none(),
        "nothing of the vehicle recorded"
    );
    world.stop().await;
}

pub(crate) async fn a_killed_matching_worker_is_resumed_without_losing_the_entry_or_charging_twice(
    backend: &Backend,
) {
    const VEHICLE: &str = "LSVAU2180N2000004";
    let mut world = World::start(backend).await;
    let wallet = world.wallet(VEHICLE_OI, 3);
    world
        .pre_authorize(&wallet, VEHICLE, "PARK-1", ServiceKind::Parking, 1_000)
        .await;
    eventually("the pre-authorization is held", || async {
        world.held_count(VEHICLE).await == 1
    })
    .await;
    let key = world.vehicle_key(VEHICLE);
    let mut drive = drive_from(world.now_ms, 35 * 60_000, 11, (-300.0, 0.0));
    drive
        .to((-60.0, 0.0), 12.0)
        .to((0.0, 5.0), 3.0)
        .stay(30 * 60_000, true)
        .to((60.0, 0.0), 3.0)
        .to((400.0, 0.0), 12.0);
    let batches = sign(&drive, VEHICLE, &wallet, &key);
    let half = batches.len() / 2;
    world.publish_batches(VEHICLE, &batches[..half]).await;
    let store = Arc::clone(world.store());
    eventually("the entry is in the store", || {
        let store = Arc::clone(&store);
        async move { !store.sessions(VEHICLE).await.expect("read").is_empty() }
    })
    .await;
    let entered = store.sessions(VEHICLE).await.expect("read")[0].clone();
    assert_eq!(entered.exited_at_ms, None);

    // The worker dies mid-session; another process takes over from the store and the bus.
    world.kill_stages().await;
    world.publish_batches(VEHICLE, &batches[half..]).await;
    // One batch again, as a redelivery of what the dead worker held would be.
    world
        .publish_batches(VEHICLE, &batches[half - 1..half])
        .await;
    world.spawn_stages();

    eventually("one charge", || async {
        world.charges(VEHICLE).await.len() == 1
    })
    .await;
    let sessions = store.sessions(VEHICLE).await.expect("read");
    assert_eq!(sessions.len(), 1, "the session resumed, not restarted");
    assert_eq!(sessions[0].entered_at_ms, entered.entered_at_ms);
    let charges = world.charges(VEHICLE).await;
    let ids = payment_ids(&charges);
    world.wait_for_outcomes(&ids).await;
    assert_eq!(
        world.outcome_of(ids[0]),
        [(OutcomeStatus::Completed, None, charges[0].amount_fen)]
    );
    world.wait_until_settled().await;
    world.stop().await;
}

pub(crate) async fn registry_changes_are_in_force_without_a_restart(backend: &Backend) {
    let world = World::start(backend).await;
    let entity_signer = &world.network.institutions[ENTITY_OI].signer;
    let other_signer = &world.network.institutions[VEHICLE_OI].signer;
    let registry = Arc::clone(&world.network.entity_registry);
    let parking = registry
        .read()
        .get("PARK-1")
        .expect("registered")
        .entity()
        .clone();

    // Signed by the institution of another wallet than the entity's: refused, and the entry
    // in force stays.
    let mut forged = parking.clone();
    forged.version = 5;
    forged
        .tariff
        .parking
        .as_mut()
        .expect("parking tariff")
        .fen_per_minute = 1;
    world.publish_entity(forged, other_signer).await;
    // A newer tariff, and the toll strip taken out.
    let mut newer = parking.clone();
    newer.version = 2;
    newer.updated_at_ms += 1;
    newer
        .tariff
        .parking
        .as_mut()
        .expect("parking tariff")
        .fen_per_minute = 20;
    world.publish_entity(newer, entity_signer).await;
    let mut removed = registry
        .read()
        .get("TOLL-1")
        .expect("registered")
        .entity()
        .clone();
    removed.version = 2;
    removed.updated_at_ms += 1;
    removed.removed = true;
    world.publish_entity(removed, entity_signer).await;

    eventually("the new version and the removal are in force", || {
        let registry = Arc::clone(&registry);
        async move {
            let registry = registry.read();
            registry.get("PARK-1").is_some_and(|e| e.version() == 2)
                && registry.get("TOLL-1").is_none()
        }
    })
    .await;
    let (fen_per_minute, entities) = {
        let registry = registry.read();
        let in_force = registry.get("PARK-1").expect("in force");
        (
            in_force.tariff().parking.as_ref().map(|p| p.fen_per_minute),
            registry.len(),
        )
    };
    assert_eq!(fen_per_minute, Some(20), "the forged version 5 was refused");
    assert_eq!(entities, 2);
    world.stop().await;
}

pub(crate) async fn a_gap_holds_back_only_its_vehicle_and_version_1_reports_are_read(
    backend: &Backend,
) {
    const GAPPED: &str = "LSVAU2180N2000031";
    const INNOCENT: &str = "LSVAU2180N2000032";
    const VERSION_1: &str = "LSVAU2180N2000033";
    let world = World::start(backend).await;
    let wallet = world.wallet(VEHICLE_OI, 3);
    // Far from every entity: nothing to match, only the chains move.
    let mut drive = drive_from(world.now_ms, 300_000, 9, (3_000.0, 3_000.0));
    drive.to((4_200.0, 3_000.0), 12.0);
    let gapped = sign(&drive, GAPPED, &wallet, &world.vehicle_key(GAPPED));
    let innocent = sign(&drive, INNOCENT, &wallet, &world.vehicle_key(INNOCENT));
    assert!(gapped.len() >= 2, "a drive of two batches at least");
    let key = world.vehicle_key(VERSION_1);
    let fix = drive.fixes[0];
    let mut report = VehicleTelemetry {
        vehicle_id: VERSION_1.to_owned(),
        vehicle_class: 1,
        wallet: wallet.clone(),
        sequence: 0,
        latitude_e7: fix.latitude_e7,
        longitude_e7: fix.longitude_e7,
        speed_cm_per_s: fix.speed_cm_per_s,
        heading_cdeg: fix.heading_cdeg,
        recorded_at_ms: fix.recorded_at_ms,
        certificate: key.certificate().der().to_vec(),
        signature: Vec::new(),
    };
    report.signature = key
        .key()
        .sign(&telemetry_report_bytes(&report))
        .expect("signs");

    // One bus batch: the gapped vehicle's second batch (its first never came), an innocent
    // vehicle's first, a version 1 report.
    let frames = [
        dcpipe_schemas::encode(&gapped[1]).expect("encodes"),
        dcpipe_schemas::encode(&innocent[0]).expect("encodes"),
        dcpipe_schemas::encode(&report).expect("encodes"),
    ];
    let subject = subjects::vehicle_telemetry(VEHICLE_OI);
    let inputs: Vec<Input<'_>> = frames
        .iter()
        .enumerate()
        .map(|(i, frame)| Input {
            subject: &subject,
            payload: frame,
            delivery_count: 1,
            position: Position {
                partition: 0,
                offset: 1_000 + i as u64,
            },
        })
        .collect();
    let stage = matching::MatchingStage::new(Arc::clone(&world.network.vehicles[VEHICLE_OI]));
    let verdicts = stage.handle(&inputs).await.expect("decided");
    assert!(
        matches!(&verdicts[0], Verdict::Retry { why } if why.contains("missing")),
        "{:?}",
        verdicts[0]
    );
    assert!(matches!(verdicts[1], Verdict::Done(_)), "{:?}", verdicts[1]);
    assert!(matches!(verdicts[2], Verdict::Done(_)), "{:?}", verdicts[2]);
    let ids = [GAPPED, INNOCENT, VERSION_1].map(str::to_owned);
    let records = world.store().vehicles(&ids).await.expect("read");
    let next: Vec<Option<i64>> = records
        .iter()
        .map(|r| r.as_ref().map(|r| r.next_sequence))
        .collect();
    assert_eq!(
        next,
        [
            None,
            Some(i64::try_from(innocent[0].reports.len()).expect("small")),
            Some(1),
        ]
    );
    world.stop().await;
}
