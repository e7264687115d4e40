//! A fleet of synthetic vehicles driven through a running network's vehicle stages, and the
//! checks of what came out: every charge the trips must cause made exactly once with its
//! amount, no entity a vehicle only drove past charged, no charge above its
//! pre-authorization, every charge cleared, money conserved.
//!
//! The trips are recorded drives replayed at once: their fixes lie in the past (up to the
//! longest trip), so the network's telemetry policy must accept reports that old
//! ([`fleet_policy`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dcpipe_connectors::bus::{Bus, Outgoing};
use dcpipe_connectors::ledger::{PaymentId as LedgerPaymentId, PaymentState, Side};
use dcpipe_connectors::session::{ChargeRecord, SessionRecord};
use dcpipe_pipeline::network::Network;
use dcpipe_pipeline::pki::{Algorithm, CertifiedKey, Role, SubjectSpec};
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::vehicle::backend::VehiclePolicy;
use dcpipe_pipeline::vehicle::signed::{
    service_authorization_bytes, service_complete_report_bytes, service_entity_bytes,
};
use dcpipe_pipeline::vehicle::telemetry::TelemetryBatcher;
use dcpipe_schemas::{
    AuthorizationId, MeterUnit, PartyRef, ReportId, ServiceAuthorization, ServiceCompleteReport,
    ServiceKind, SessionId,
};

use super::{City, CityConfig, ExpectedCharge, Trip, TripConfig};
use crate::error::{LoadTestError, LoadTestErrorKind};

/// Reports per signed telemetry batch.
pub const FLEET_BATCH_REPORTS: usize = 32;
/// Oldest report the fleet's network accepts: a day, the longest replayed trip.
pub const FLEET_TELEMETRY_AGE_MS_MAX: i64 = 24 * 60 * 60 * 1_000;
/// What each pre-authorization allows beyond the charges the trip must cause, in fen.
pub const PREAUTH_MARGIN_FEN: i64 = 10_000;
/// How far a found session's entry may lie from the trip's true entry, in ms.
const ENTRY_TOLERANCE_MS: i64 = 60_000;
/// Reports are published once their session ended; how often the fleet looks.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The vehicle policy of a network that replays recorded trips: reports up to a day old.
pub fn fleet_policy() -> VehiclePolicy {
    let mut policy = VehiclePolicy::default();
    policy.telemetry.age_ms_max = FLEET_TELEMETRY_AGE_MS_MAX;
    policy
}

/// What to drive.
#[derive(Debug, Clone, Copy)]
pub struct FleetConfig {
    /// The seed of the city and the trips.
    pub seed: u64,
    /// Vehicles, each on one trip.
    pub vehicles: usize,
}

/// What a fleet run found.
#[derive(Debug, Clone, Default)]
pub struct FleetReport {
    /// Vehicles driven.
    pub vehicles: usize,
    /// Entities in the city.
    pub entities: usize,
    /// Telemetry reports published.
    pub reports: usize,
    /// From the first telemetry batch published to every vehicle's last one applied (verified,
    /// matched, sessions and charges committed), in ms; `None` if that did not happen in time.
    pub telemetry_applied_ms: Option<u64>,
    /// Charges the trips must cause.
    pub expected: usize,
    /// Charges made.
    pub charged: usize,
    /// Charges completed (committed by the vehicle's institution).
    pub completed: usize,
    /// Entities driven past without entering.
    pub decoys: usize,
    /// Sum of the charges, in fen.
    pub charged_fen: i64,
    /// Expected charges not made (or made with another amount).
    pub missing: Vec<String>,
    /// Charges made without a cause.
    pub unexpected: Vec<String>,
    /// Charges of entities a vehicle only drove past.
    pub decoys_charged: Vec<String>,
    /// Charges not completed.
    pub not_completed: Vec<String>,
    /// Pre-authorizations charged above their maximum (the stores' integrity checks).
    pub above_preauth: Vec<String>,
    /// What the completed charges between two institutions add to each one's net settlement
    /// position, in fen (the payer's institution pays, the entity's receives).
    pub interbank_net: BTreeMap<String, i64>,
}

impl FleetReport {
    /// Every check that failed, one line each; empty when the run is right.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for (what, list) in [
            ("expected charge missing", &self.missing),
            ("charge without a cause", &self.unexpected),
            ("decoy charged", &self.decoys_charged),
            ("charge not completed", &self.not_completed),
            ("above the pre-authorization", &self.above_preauth),
        ] {
            failures.extend(list.iter().map(|item| format!("{what}: {item}")));
        }
        failures
    }
}

fn fleet_error(detail: impl Into<String>) -> LoadTestError {
    LoadTestError::new(LoadTestErrorKind::Generate, detail.into())
}

/// One vehicle of the fleet.
struct Vehicle {
    trip: Trip,
    wallet: PartyRef,
    key: CertifiedKey,
    reports_sent: Vec<bool>,
}

/// Drives `config.vehicles` vehicles through a city of entities registered now, on `network`
/// (vehicles enabled with [`fleet_policy`], stages running on `bus`), and checks the outcome.
/// Waits at most `deadline` for the pipeline.
pub async fn run_fleet(
    network: &Network,
    bus: &Arc<dyn Bus>,
    config: &FleetConfig,
    now_ms: i64,
    deadline: Duration,
) -> Result<FleetReport, LoadTestError> {
    if network.vehicles.is_empty() {
        return Err(fleet_error("the network runs no vehicle stages"));
    }
    let until = tokio::time::Instant::now() + deadline;
    let institutions: Vec<String> = network.institutions.keys().cloned().collect();
    let mut city_config = CityConfig::district(config.seed);
    city_config.institutions = institutions.len();
    let city = City::generate(city_config);
    let publish = |subject: String, key: String, frame: Vec<u8>| {
        let bus = Arc::clone(bus);
        async move {
            bus.publish(Outgoing::new(subject, Bytes::from(frame)).with_key(key.into_bytes()))
                .await
                .map_err(|e| fleet_error(format!("publishing: {e}")))
        }
    };

    // The entities, paying into provisioned wallets of their institutions, signed by them.
    let mut wallets_of: BTreeMap<&str, Vec<&PartyRef>> = BTreeMap::new();
    for wallet in &network.wallets {
        wallets_of
            .entry(wallet.party.institution_id.as_str())
            .or_default()
            .push(&wallet.party);
    }
    for (n, site) in city.sites().iter().enumerate() {
        let mut entity = site.entity.clone();
        let candidates = wallets_of
            .get(entity.wallet.institution_id.as_str())
            .ok_or_else(|| fleet_error("an entity of an institution without wallets"))?;
        entity.wallet = candidates[n % candidates.len()].clone();
        entity.updated_at_ms = now_ms - 3_600_000;
        let signer = &network.institutions[&entity.wallet.institution_id].signer;
        entity.certificate = signer.certificate().der().to_vec();
        entity.signature = signer
            .key()
            .sign(&service_entity_bytes(&entity))
            .map_err(|e| fleet_error(format!("signing an entity: {e}")))?;
        let frame = frame_of(&entity)?;
        publish(
            subjects::VEHICLE_REGISTRY.to_owned(),
            entity.entity_id.clone(),
            frame,
        )
        .await?;
    }
    let entities = city.sites().len();
    wait(until, "the registry holds the city", || {
        let registry = Arc::clone(&network.entity_registry);
        async move { Ok(registry.read().len() >= entities) }
    })
    .await?;

    // The vehicles: a trip each, in the past, with pre-authorizations for every entity on it.
    let payers: Vec<&PartyRef> = network.wallets.iter().map(|w| &w.party).collect();
    let mut vehicles = Vec::with_capacity(config.vehicles);
    let mut report = FleetReport {
        vehicles: config.vehicles,
        entities,
        ..FleetReport::default()
    };
    for v in 0..config.vehicles {
        let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(v as u64);
        let vehicle_id = format!("LFV{:014}", seed % 100_000_000_000_000);
        let probe = Trip::generate(&city, &TripConfig::typical(seed, &vehicle_id, 0));
        let duration_ms = probe.fixes.last().map_or(0, |f| f.recorded_at_ms);
        let start_ms = now_ms - duration_ms - 120_000;
        let trip = Trip::generate(&city, &TripConfig::typical(seed, &vehicle_id, start_ms));
        let wallet = payers[v % payers.len()].clone();
        let key = network
            .pki
            .issue(
                &SubjectSpec {
                    role: Role::Vehicle,
                    id: &vehicle_id,
                    institution: &wallet.institution_id,
                    algorithm: Algorithm::EcdsaP256Sha256,
                },
                start_ms - 60_000,
                now_ms + 86_400_000,
            )
            .map_err(|e| fleet_error(format!("vehicle certificate: {e}")))?;
        let mut allowed: BTreeMap<&str, (ServiceKind, i64)> = BTreeMap::new();
        for expected in &trip.expected {
            let entry = allowed
                .entry(expected.entity_id.as_str())
                .or_insert((expected.kind, PREAUTH_MARGIN_FEN));
            entry.1 += expected.amount_fen + expected.tolerance_fen;
        }
        for decoy in &trip.passed_by {
            if let Some(site) = city.sites().iter().find(|s| &s.entity.entity_id == decoy) {
                allowed
                    .entry(decoy.as_str())
                    .or_insert((site.kind(), PREAUTH_MARGIN_FEN));
            }
        }
        let terminal = &network
            .pki
            .wallet(&wallet.wallet_id)
            .ok_or_else(|| fleet_error("a wallet without keys"))?
            .terminal;
        for (entity_id, (kind, max_amount_fen)) in &allowed {
            let mut authorization = ServiceAuthorization {
                authorization_id: AuthorizationId::random(),
                vehicle_id: vehicle_id.clone(),
                wallet: wallet.clone(),
                entity_id: (*entity_id).to_owned(),
                service_kind: *kind,
                max_amount_fen: *max_amount_fen,
                issued_at_ms: start_ms - 60_000,
                expires_at_ms: now_ms + 3_600_000,
                certificate: terminal.certificate().der().to_vec(),
                signature: Vec::new(),
            };
            authorization.signature = terminal
                .key()
                .sign(&service_authorization_bytes(&authorization))
                .map_err(|e| fleet_error(format!("signing a pre-authorization: {e}")))?;
            let frame = frame_of(&authorization)?;
            publish(
                subjects::vehicle_authorization(&wallet.institution_id),
                vehicle_id.clone(),
                frame,
            )
            .await?;
        }
        let held = allowed.len();
        let store = Arc::clone(&network.vehicles[&wallet.institution_id].store);
        let id = vehicle_id.clone();
        wait(until, "the pre-authorizations are held", || {
            let (store, id) = (Arc::clone(&store), id.clone());
            async move {
                Ok(store
                    .authorizations(&id)
                    .await
                    .map_err(|e| fleet_error(e.to_string()))?
                    .len()
                    >= held)
            }
        })
        .await?;
        report.expected += trip.expected.len();
        report.decoys += trip.passed_by.len();
        report.reports += trip.fixes.len();
        let reports_sent = vec![false; trip.expected.len()];
        vehicles.push(Vehicle {
            trip,
            wallet,
            key,
            reports_sent,
        });
    }

    // The telemetry, signed in batches (all signed before the clock starts).
    let mut signed = Vec::with_capacity(vehicles.len());
    for vehicle in &vehicles {
        let mut batcher = TelemetryBatcher::new(
            &vehicle.trip.vehicle_id,
            vehicle.trip.vehicle_class,
            vehicle.wallet.clone(),
            vehicle.key.certificate(),
            vehicle.key.key(),
        );
        for reports in vehicle.trip.fixes.chunks(FLEET_BATCH_REPORTS) {
            let batch = batcher
                .seal(reports.to_vec())
                .map_err(|e| fleet_error(format!("signing telemetry: {e}")))?;
            signed.push((
                subjects::vehicle_telemetry(&vehicle.wallet.institution_id),
                vehicle.trip.vehicle_id.clone(),
                frame_of(&batch)?,
            ));
        }
    }
    let telemetry_started = tokio::time::Instant::now();
    for (subject, key, frame) in signed {
        publish(subject, key, frame).await?;
    }
    // Per institution, its vehicles and how many reports each sent.
    let mut sent: BTreeMap<&str, (Vec<String>, Vec<i64>)> = BTreeMap::new();
    for vehicle in &vehicles {
        let entry = sent
            .entry(vehicle.wallet.institution_id.as_str())
            .or_default();
        entry.0.push(vehicle.trip.vehicle_id.clone());
        entry
            .1
            .push(i64::try_from(vehicle.trip.fixes.len()).unwrap_or(i64::MAX));
    }
    let applied = wait(until, "every vehicle's telemetry is applied", || async {
        for (institution, (ids, fixes)) in &sent {
            let records = network.vehicles[*institution]
                .store
                .vehicles(ids)
                .await
                .map_err(|e| fleet_error(e.to_string()))?;
            let behind = records
                .iter()
                .zip(fixes)
                .any(|(record, fixes)| record.as_ref().is_none_or(|r| r.next_sequence < *fixes));
            if behind {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await;
    report.telemetry_applied_ms = applied
        .is_ok()
        .then(|| u64::try_from(telemetry_started.elapsed().as_millis()).unwrap_or(u64::MAX));

    // Stations report each metered session once it ended (the institution tells them its id).
    let mut stations: HashMap<String, CertifiedKey> = HashMap::new();
    loop {
        let mut waiting = 0;
        for vehicle in &mut vehicles {
            let store = &network.vehicles[&vehicle.wallet.institution_id].store;
            let sessions = store
                .sessions(&vehicle.trip.vehicle_id)
                .await
                .map_err(|e| fleet_error(e.to_string()))?;
            for (i, expected) in vehicle.trip.expected.iter().enumerate() {
                let Some(quantity_milli) = expected.quantity_milli else {
                    continue;
                };
                if vehicle.reports_sent[i] {
                    continue;
                }
                let Some(session) = session_of(expected, &sessions) else {
                    waiting += 1;
                    continue;
                };
                let Some(exited_at_ms) = session.exited_at_ms else {
                    waiting += 1;
                    continue;
                };
                let station = station_key(network, &mut stations, session, now_ms)?;
                let mut station_report = ServiceCompleteReport {
                    report_id: ReportId::random(),
                    entity_id: session.entity_id.clone(),
                    vehicle_id: vehicle.trip.vehicle_id.clone(),
                    session_id: SessionId::from_bytes(session.session_id),
                    unit: if expected.kind == ServiceKind::Charging {
                        MeterUnit::Kwh
                    } else {
                        MeterUnit::Litre
                    },
                    quantity_milli,
                    completed_at_ms: exited_at_ms,
                    certificate: station.certificate().der().to_vec(),
                    signature: Vec::new(),
                };
                station_report.signature = station
                    .key()
                    .sign(&service_complete_report_bytes(&station_report))
                    .map_err(|e| fleet_error(format!("signing a report: {e}")))?;
                let frame = frame_of(&station_report)?;
                publish(
                    subjects::vehicle_report(&vehicle.wallet.institution_id),
                    vehicle.trip.vehicle_id.clone(),
                    frame,
                )
                .await?;
                vehicle.reports_sent[i] = true;
            }
        }
        if waiting == 0 || tokio::time::Instant::now() >= until {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    // Every charge made, and decided.
    let expected_total = report.expected;
    let _ = wait(
        until,
        "every expected charge is made and decided",
        || async {
            let mut decided = 0;
            for vehicle in &vehicles {
                for charge in charges_of(network, vehicle).await? {
                    if decision(network, &charge).await?.is_some() {
                        decided += 1;
                    }
                }
            }
            Ok(decided >= expected_total)
        },
    )
    .await;

    // The checks.
    for vehicle in &vehicles {
        let charges = charges_of(network, vehicle).await?;
        let mut unpaired: Vec<&ChargeRecord> = charges.iter().collect();
        let sessions = network.vehicles[&vehicle.wallet.institution_id]
            .store
            .sessions(&vehicle.trip.vehicle_id)
            .await
            .map_err(|e| fleet_error(e.to_string()))?;
        for expected in &vehicle.trip.expected {
            let found = unpaired.iter().position(|charge| {
                let session = sessions.iter().find(|s| s.session_id == charge.session_id);
                charge.entity_id == expected.entity_id
                    && session.is_some_and(|s| {
                        (s.entered_at_ms - expected.entered_at_ms).abs() <= ENTRY_TOLERANCE_MS
                    })
                    && (charge.amount_fen - expected.amount_fen).abs() <= expected.tolerance_fen
            });
            match found {
                Some(index) => {
                    unpaired.remove(index);
                }
                None => report.missing.push(format!(
                    "{} at {} ({} fen)",
                    vehicle.trip.vehicle_id, expected.entity_id, expected.amount_fen
                )),
            }
        }
        for charge in unpaired {
            report.unexpected.push(format!(
                "{} at {} ({} fen)",
                vehicle.trip.vehicle_id, charge.entity_id, charge.amount_fen
            ));
        }
        for charge in &charges {
            if vehicle.trip.passed_by.contains(&charge.entity_id) {
                report.decoys_charged.push(format!(
                    "{} at {}",
                    vehicle.trip.vehicle_id, charge.entity_id
                ));
            }
            report.charged += 1;
            report.charged_fen += charge.amount_fen;
            match decision(network, charge).await? {
                Some(PaymentState::Committed) => {
                    report.completed += 1;
                    if charge.payer.institution_id != charge.payee.institution_id {
                        *report
                            .interbank_net
                            .entry(charge.payer.institution_id.clone())
                            .or_insert(0) -= charge.amount_fen;
                        *report
                            .interbank_net
                            .entry(charge.payee.institution_id.clone())
                            .or_insert(0) += charge.amount_fen;
                    }
                }
                other => report.not_completed.push(format!(
                    "{} at {}: {other:?}",
                    vehicle.trip.vehicle_id, charge.entity_id
                )),
            }
        }
    }
    for (id, vehicles) in &network.vehicles {
        if let Err(e) = vehicles.store.verify_integrity().await {
            report.above_preauth.push(format!("{id}: {e}"));
        }
    }
    Ok(report)
}

fn frame_of<M: dcpipe_schemas::Message>(message: &M) -> Result<Vec<u8>, LoadTestError> {
    dcpipe_schemas::encode(message).map_err(|e| fleet_error(format!("encoding: {e}")))
}

/// The stored session of an expected charge: its entity, entered closest to the true entry.
fn session_of<'s>(
    expected: &ExpectedCharge,
    sessions: &'s [SessionRecord],
) -> Option<&'s SessionRecord> {
    sessions
        .iter()
        .filter(|s| {
            s.entity_id == expected.entity_id
                && (s.entered_at_ms - expected.entered_at_ms).abs() <= ENTRY_TOLERANCE_MS
        })
        .min_by_key(|s| (s.entered_at_ms - expected.entered_at_ms).abs())
}

fn station_key<'k>(
    network: &Network,
    stations: &'k mut HashMap<String, CertifiedKey>,
    session: &SessionRecord,
    now_ms: i64,
) -> Result<&'k CertifiedKey, LoadTestError> {
    if !stations.contains_key(&session.entity_id) {
        let key = network
            .pki
            .issue(
                &SubjectSpec {
                    role: Role::ServiceEntity,
                    id: &session.entity_id,
                    institution: &session.payee.institution_id,
                    algorithm: Algorithm::EcdsaP256Sha256,
                },
                now_ms - 86_400_000,
                now_ms + 86_400_000,
            )
            .map_err(|e| fleet_error(format!("station certificate: {e}")))?;
        stations.insert(session.entity_id.clone(), key);
    }
    stations
        .get(&session.entity_id)
        .ok_or_else(|| fleet_error("a station key just issued"))
}

async fn charges_of(
    network: &Network,
    vehicle: &Vehicle,
) -> Result<Vec<ChargeRecord>, LoadTestError> {
    network.vehicles[&vehicle.wallet.institution_id]
        .store
        .charges(&vehicle.trip.vehicle_id)
        .await
        .map_err(|e| fleet_error(e.to_string()))
}

/// The payer institution's final decision on a charge, if any.
async fn decision(
    network: &Network,
    charge: &ChargeRecord,
) -> Result<Option<PaymentState>, LoadTestError> {
    let record = network.institutions[&charge.payer.institution_id]
        .ledger
        .payment(&LedgerPaymentId(charge.payment_id.0), Side::Payer)
        .await
        .map_err(|e| fleet_error(e.to_string()))?;
    Ok(record
        .map(|r| r.state)
        .filter(|s| matches!(s, PaymentState::Committed | PaymentState::Voided)))
}

/// Polls `condition` until it holds or `until` passes.
async fn wait<F, Fut>(
    until: tokio::time::Instant,
    what: &str,
    mut condition: F,
) -> Result<(), LoadTestError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, LoadTestError>>,
{
    loop {
        if condition().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= until {
            return Err(fleet_error(format!("timed out waiting until {what}")));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
