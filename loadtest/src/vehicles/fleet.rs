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
use dcpipe_connectors::bus::{
    Bus, BusErrorKind, Outgoing, ReplayFrom, ReplayRequest, dead_letter_subject,
};
use dcpipe_connectors::ledger::{PaymentId as LedgerPaymentId, PaymentRecord, PaymentState, Side};
use dcpipe_connectors::session::{ChargeRecord, SessionRecord};
use dcpipe_pipeline::network::{Network, WalletInfo};
use dcpipe_pipeline::payment::{commit, payee};
use dcpipe_pipeline::pki::{Algorithm, CertifiedKey, Role, SubjectSpec};
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::vehicle::backend::VehiclePolicy;
use dcpipe_pipeline::vehicle::signed::{
    service_authorization_bytes, service_complete_report_bytes, service_entity_bytes,
};
use dcpipe_pipeline::vehicle::telemetry::TelemetryBatcher;
use dcpipe_schemas::{
    AuthorizationId, ClearingMessage, ClearingResponse, DeadLetter, MeterUnit, PartyRef, PaymentId,
    ReportId, ServiceAuthorization, ServiceCompleteReport, ServiceKind, SessionId,
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
/// Dead letters read at once when a charge is not completed.
const DEAD_LETTERS_READ_MAX: usize = 512;
/// Reports are published once their session ended; how often the fleet looks.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The wallets the vehicles pay from, in the order they are handed out: those with the highest
/// daily limit, the last of the network's list first. The payment load sends most of its
/// payments from the first wallets (its hot wallets) and drives them to their daily limit; a
/// vehicle paying from one of them would see its charges rejected (`ledger.daily_limit`).
/// Wallets whose terminal was revoked are left out where the network is known
/// ([`terminal_in_force`]).
fn fleet_payers(wallets: &[WalletInfo]) -> Vec<&PartyRef> {
    let daily_max = wallets
        .iter()
        .map(|w| w.tier.limits.daily_limit_fen)
        .max()
        .unwrap_or(0);
    wallets
        .iter()
        .rev()
        .filter(|w| w.tier.limits.daily_limit_fen == daily_max)
        .map(|w| &w.party)
        .collect()
}

/// Whether a wallet's terminal certificate is still in force (not revoked): only such a
/// wallet can sign its vehicle's pre-authorizations.
fn terminal_in_force(network: &Network, wallet: &PartyRef) -> bool {
    let (Some(institution), Some(keys)) = (
        network.pki.institution(&wallet.institution_id),
        network.pki.wallet(&wallet.wallet_id),
    ) else {
        return false;
    };
    !network.revocations.is_revoked(
        institution.ca.certificate().fingerprint(),
        keys.terminal.certificate().serial(),
    )
}

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
    /// Charges its fixes may cause but need not: sessions that end too close to the last fix
    /// sent (or after it) for their end to be confirmed.
    maybe: Vec<ExpectedCharge>,
    /// Per charge of `trip.expected` then `maybe`: its station's report was published.
    reports_sent: Vec<bool>,
    /// The sessions whose station report was published: each one's charge is made by the
    /// institution after the report arrives, not when it is published.
    reported_sessions: Vec<[u8; 16]>,
}

/// One signed telemetry batch of a vehicle, framed, ready to publish.
#[derive(Debug, Clone)]
pub struct SignedBatch {
    /// `vehicle.telemetry.<oi>`.
    pub subject: String,
    /// The vehicle id (the ordering key).
    pub vehicle_id: String,
    /// The frame.
    pub frame: Bytes,
    /// Reports in the batch.
    pub reports: usize,
    /// Sequence of its first report.
    pub first_sequence: i64,
}

impl SignedBatch {
    /// The message to publish.
    pub fn outgoing(&self) -> Outgoing {
        Outgoing::new(self.subject.clone(), self.frame.clone())
            .with_key(self.vehicle_id.clone().into_bytes())
    }
}

/// A fleet registered on a network: the city's entities in the registry, each vehicle's
/// certificate issued and pre-authorizations held, its trip ready to be signed and sent.
pub struct Fleet {
    vehicles: Vec<Vehicle>,
    report: FleetReport,
    until: tokio::time::Instant,
}

/// Recorded time after a session's end before the last fix sent for its end to count as
/// confirmed (the exit hysteresis, stationary fix intervals and reception gaps fit in it).
pub const CUT_MARGIN_MS: i64 = 120_000;

/// Splits a trip's expected charges at its last fix sent (`cut_ms`): those that must have
/// happened, and those that may (entered before the cut, ended after it or too close to it).
fn split_at_cut(
    expected: Vec<ExpectedCharge>,
    cut_ms: i64,
) -> (Vec<ExpectedCharge>, Vec<ExpectedCharge>) {
    let mut must = Vec::new();
    let mut maybe = Vec::new();
    for charge in expected {
        if charge.exited_at_ms.saturating_add(CUT_MARGIN_MS) <= cut_ms {
            must.push(charge);
        } else if charge.entered_at_ms <= cut_ms {
            maybe.push(charge);
        }
    }
    (must, maybe)
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("vehicles", &self.vehicles.len())
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Registers a city of entities now and `config.vehicles` vehicles on `network` (vehicles
    /// enabled with [`fleet_policy`], stages running on `bus`): a trip each, in the past, at
    /// most `fixes_max` fixes of it sent, with a held pre-authorization for every entity on
    /// it. Waits at most `deadline` for the pipeline, from now until [`Fleet::finish`] returns.
    pub async fn prepare(
        network: &Network,
        bus: &Arc<dyn Bus>,
        config: &FleetConfig,
        fixes_max: Option<usize>,
        now_ms: i64,
        deadline: Duration,
    ) -> Result<Fleet, LoadTestError> {
        if network.vehicles.is_empty() {
            return Err(fleet_error("the network runs no vehicle stages"));
        }
        let until = tokio::time::Instant::now() + deadline;
        let institutions: Vec<String> = network.institutions.keys().cloned().collect();
        let mut city_config = CityConfig::district(config.seed);
        city_config.institutions = institutions.len();
        let city = City::generate(city_config);

        // The entities, paying into provisioned wallets of their institutions, signed by them.
        let mut wallets_of: BTreeMap<&str, Vec<&PartyRef>> = BTreeMap::new();
        for wallet in &network.wallets {
            wallets_of
                .entry(wallet.party.institution_id.as_str())
                .or_default()
                .push(&wallet.party);
        }
        let mut messages = Vec::new();
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
            messages.push(keyed(
                subjects::VEHICLE_REGISTRY.to_owned(),
                &entity.entity_id,
                frame_of(&entity)?,
            ));
        }
        publish_all(bus, messages).await?;
        let entities = city.sites().len();
        wait(until, "the registry holds the city", || {
            let registry = Arc::clone(&network.entity_registry);
            async move { Ok(registry.read().len() >= entities) }
        })
        .await?;

        // The vehicles: a trip each, in the past, with pre-authorizations for every entity on
        // it, all published before any is waited for.
        let payers: Vec<&PartyRef> = fleet_payers(&network.wallets)
            .into_iter()
            .filter(|payer| terminal_in_force(network, payer))
            .collect();
        if payers.is_empty() {
            return Err(fleet_error("the network has no wallets to pay from"));
        }
        let mut vehicles = Vec::with_capacity(config.vehicles);
        let mut report = FleetReport {
            vehicles: config.vehicles,
            entities,
            ..FleetReport::default()
        };
        let mut held_expected = Vec::with_capacity(config.vehicles);
        for v in 0..config.vehicles {
            let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(v as u64);
            let vehicle_id = format!("LFV{:014}", seed % 100_000_000_000_000);
            let probe = Trip::generate(&city, &TripConfig::typical(seed, &vehicle_id, 0));
            let sent = fixes_max.map_or(probe.fixes.len(), |n| n.min(probe.fixes.len()));
            let duration_ms = sent
                .checked_sub(1)
                .and_then(|last| probe.fixes.get(last))
                .map_or(0, |f| f.recorded_at_ms);
            let start_ms = now_ms - duration_ms - 120_000;
            let mut trip = Trip::generate(&city, &TripConfig::typical(seed, &vehicle_id, start_ms));
            let mut maybe = Vec::new();
            if sent < trip.fixes.len() {
                trip.fixes.truncate(sent);
                let cut_ms = trip.fixes.last().map_or(start_ms, |f| f.recorded_at_ms);
                let (must, may) = split_at_cut(std::mem::take(&mut trip.expected), cut_ms);
                trip.expected = must;
                maybe = may;
            }
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
            for expected in trip.expected.iter().chain(&maybe) {
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
            let mut messages = Vec::with_capacity(allowed.len());
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
                messages.push(keyed(
                    subjects::vehicle_authorization(&wallet.institution_id),
                    &vehicle_id,
                    frame_of(&authorization)?,
                ));
            }
            held_expected.push(allowed.len());
            publish_all(bus, messages).await?;
            report.expected += trip.expected.len();
            report.decoys += trip.passed_by.len();
            report.reports += trip.fixes.len();
            let reports_sent = vec![false; trip.expected.len() + maybe.len()];
            vehicles.push(Vehicle {
                trip,
                wallet,
                key,
                maybe,
                reports_sent,
                reported_sessions: Vec::new(),
            });
        }
        // Pre-authorizations held, looked up only for the vehicles still short of theirs.
        let mut waiting: Vec<usize> = (0..vehicles.len()).collect();
        loop {
            let mut still = Vec::new();
            for v in waiting {
                let vehicle = &vehicles[v];
                let held = network.vehicles[&vehicle.wallet.institution_id]
                    .store
                    .authorizations(&vehicle.trip.vehicle_id)
                    .await
                    .map_err(|e| fleet_error(e.to_string()))?
                    .len();
                if held < held_expected[v] {
                    still.push(v);
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= until {
                return Err(fleet_error(format!(
                    "timed out waiting until the pre-authorizations are held ({} vehicles short)",
                    waiting.len()
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(Fleet {
            vehicles,
            report,
            until,
        })
    }

    /// Vehicles, entities, expected charges, decoys and reports of the fleet, before any was
    /// sent.
    pub fn planned(&self) -> &FleetReport {
        &self.report
    }

    /// Per institution, the ids of its vehicles.
    pub fn vehicle_ids(&self) -> BTreeMap<String, Vec<String>> {
        let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for vehicle in &self.vehicles {
            ids.entry(vehicle.wallet.institution_id.clone())
                .or_default()
                .push(vehicle.trip.vehicle_id.clone());
        }
        ids
    }

    /// Every vehicle's telemetry, signed in batches of `reports_per_batch` (1 to
    /// [`dcpipe_schemas::TELEMETRY_REPORTS_PER_BATCH_MAX`]): per vehicle, its batches in order.
    pub fn sign_telemetry(
        &self,
        reports_per_batch: usize,
    ) -> Result<Vec<Vec<SignedBatch>>, LoadTestError> {
        if !(1..=dcpipe_schemas::TELEMETRY_REPORTS_PER_BATCH_MAX).contains(&reports_per_batch) {
            return Err(fleet_error(format!(
                "reports per batch must be 1 to {}",
                dcpipe_schemas::TELEMETRY_REPORTS_PER_BATCH_MAX
            )));
        }
        let mut signed = Vec::with_capacity(self.vehicles.len());
        for vehicle in &self.vehicles {
            let mut batcher = TelemetryBatcher::new(
                &vehicle.trip.vehicle_id,
                vehicle.trip.vehicle_class,
                vehicle.wallet.clone(),
                vehicle.key.certificate(),
                vehicle.key.key(),
            );
            let mut batches = Vec::new();
            for reports in vehicle.trip.fixes.chunks(reports_per_batch) {
                let batch = batcher
                    .seal(reports.to_vec())
                    .map_err(|e| fleet_error(format!("signing telemetry: {e}")))?;
                batches.push(SignedBatch {
                    subject: subjects::vehicle_telemetry(&vehicle.wallet.institution_id),
                    vehicle_id: vehicle.trip.vehicle_id.clone(),
                    frame: Bytes::from(frame_of(&batch)?),
                    reports: batch.reports.len(),
                    first_sequence: batch.first_sequence,
                });
            }
            signed.push(batches);
        }
        Ok(signed)
    }

    /// Waits until every vehicle's telemetry is applied (`telemetry_started`: when its first
    /// batch was published), has the stations report each metered session that ended, waits
    /// for the charges to be decided and checks them.
    pub async fn finish(
        mut self,
        network: &Network,
        bus: &Arc<dyn Bus>,
        telemetry_started: tokio::time::Instant,
        now_ms: i64,
    ) -> Result<FleetReport, LoadTestError> {
        let until = self.until;
        let mut report = self.report.clone();
        let vehicles = &mut self.vehicles;
        // Per institution, its vehicles and how many reports each sent.
        let mut sent: BTreeMap<&str, (Vec<String>, Vec<i64>)> = BTreeMap::new();
        for vehicle in vehicles.iter() {
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
                let behind = records.iter().zip(fixes).any(|(record, fixes)| {
                    record.as_ref().is_none_or(|r| r.next_sequence < *fixes)
                });
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
        drop(sent);

        // Stations report each metered session once it ended (the institution tells them its
        // id); a session that may not have ended is reported if it did.
        let mut stations: HashMap<String, CertifiedKey> = HashMap::new();
        loop {
            let mut waiting = 0;
            for vehicle in vehicles.iter_mut() {
                let store = &network.vehicles[&vehicle.wallet.institution_id].store;
                let sessions = store
                    .sessions(&vehicle.trip.vehicle_id)
                    .await
                    .map_err(|e| fleet_error(e.to_string()))?;
                let required = vehicle.trip.expected.len();
                for (i, expected) in vehicle
                    .trip
                    .expected
                    .iter()
                    .chain(&vehicle.maybe)
                    .enumerate()
                {
                    let Some(quantity_milli) = expected.quantity_milli else {
                        continue;
                    };
                    if vehicle.reports_sent[i] {
                        continue;
                    }
                    let ended = session_of(expected, &sessions)
                        .and_then(|s| s.exited_at_ms.map(|exited_at_ms| (s, exited_at_ms)));
                    let Some((session, exited_at_ms)) = ended else {
                        if i < required {
                            waiting += 1;
                        }
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
                    publish_all(
                        bus,
                        vec![keyed(
                            subjects::vehicle_report(&vehicle.wallet.institution_id),
                            &vehicle.trip.vehicle_id,
                            frame_of(&station_report)?,
                        )],
                    )
                    .await?;
                    vehicle.reports_sent[i] = true;
                    vehicle.reported_sessions.push(session.session_id);
                }
            }
            if waiting == 0 || tokio::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }

        // Every charge made, and decided.
        let expected_total = report.expected;
        let vehicles = &*vehicles;
        let _ = wait(
            until,
            "every expected charge is made and decided",
            || async {
                let mut counts = ChargeCounts::default();
                for vehicle in vehicles {
                    let charges = charges_of(network, vehicle).await?;
                    counts.reports_uncharged += vehicle
                        .reported_sessions
                        .iter()
                        .filter(|session| !charges.iter().any(|c| c.session_id == **session))
                        .count();
                    for charge in charges {
                        counts.made += 1;
                        if decision(network, &charge).await?.is_some() {
                            counts.decided += 1;
                        }
                    }
                }
                Ok(counts.settled(expected_total))
            },
        )
        .await;

        // The checks.
        for vehicle in vehicles {
            let charges = charges_of(network, vehicle).await?;
            let mut unpaired: Vec<&ChargeRecord> = charges.iter().collect();
            let sessions = network.vehicles[&vehicle.wallet.institution_id]
                .store
                .sessions(&vehicle.trip.vehicle_id)
                .await
                .map_err(|e| fleet_error(e.to_string()))?;
            let pairs = |expected: &ExpectedCharge, charge: &ChargeRecord| {
                let session = sessions.iter().find(|s| s.session_id == charge.session_id);
                charge.entity_id == expected.entity_id
                    && session.is_some_and(|s| {
                        (s.entered_at_ms - expected.entered_at_ms).abs() <= ENTRY_TOLERANCE_MS
                    })
                    && (charge.amount_fen - expected.amount_fen).abs() <= expected.tolerance_fen
            };
            for expected in &vehicle.trip.expected {
                match unpaired.iter().position(|charge| pairs(expected, charge)) {
                    Some(index) => {
                        unpaired.remove(index);
                    }
                    None => report.missing.push(format!(
                        "{} at {} ({} fen)",
                        vehicle.trip.vehicle_id, expected.entity_id, expected.amount_fen
                    )),
                }
            }
            for expected in &vehicle.maybe {
                if let Some(index) = unpaired.iter().position(|charge| pairs(expected, charge)) {
                    unpaired.remove(index);
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
                    _ => {
                        let outcome = payer_record(network, charge).await?.map_or_else(
                            || "no payment recorded".to_owned(),
                            |r| match r.reason_code {
                                Some(reason) => format!("{:?} ({reason})", r.state),
                                None => format!("{:?}", r.state),
                            },
                        );
                        let payee = payee_side(network, bus.as_ref(), charge).await?;
                        report.not_completed.push(format!(
                            "{} at {} from {}: {outcome}; payee {}: {payee}",
                            vehicle.trip.vehicle_id,
                            charge.entity_id,
                            charge.payer.wallet_id,
                            charge.payee.institution_id
                        ));
                    }
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
}

/// What the fleet's last wait counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ChargeCounts {
    /// Charges in the session stores.
    made: usize,
    /// Of them, committed or voided by the payer's institution.
    decided: usize,
    /// Station reports published whose session has no charge yet.
    reports_uncharged: usize,
}

impl ChargeCounts {
    /// Whether every charge is in and decided: at least the `expected` ones made, every one
    /// made decided, also those a cut trip may cause, and none still to come from a station
    /// report already published (its charge is made when the report arrives: counting only the
    /// charges made would judge the run before it, and find it undecided).
    fn settled(&self, expected: usize) -> bool {
        self.reports_uncharged == 0 && self.decided >= expected && self.decided == self.made
    }
}

/// Drives `config.vehicles` vehicles through a city of entities registered now, on `network`
/// (vehicles enabled with [`fleet_policy`], stages running on `bus`): every trip whole, all
/// its telemetry published at once; then checks the outcome. Waits at most `deadline` for
/// the pipeline.
pub async fn run_fleet(
    network: &Network,
    bus: &Arc<dyn Bus>,
    config: &FleetConfig,
    now_ms: i64,
    deadline: Duration,
) -> Result<FleetReport, LoadTestError> {
    let fleet = Fleet::prepare(network, bus, config, None, now_ms, deadline).await?;
    // All signed before the clock starts.
    let signed = fleet.sign_telemetry(FLEET_BATCH_REPORTS)?;
    let telemetry_started = tokio::time::Instant::now();
    for batches in signed {
        publish_all(bus, batches.iter().map(SignedBatch::outgoing).collect()).await?;
    }
    fleet.finish(network, bus, telemetry_started, now_ms).await
}

fn keyed(subject: String, key: &str, frame: Vec<u8>) -> Outgoing {
    Outgoing::new(subject, Bytes::from(frame)).with_key(key.as_bytes().to_vec())
}

async fn publish_all(bus: &Arc<dyn Bus>, messages: Vec<Outgoing>) -> Result<(), LoadTestError> {
    if messages.is_empty() {
        return Ok(());
    }
    bus.publish_many(messages)
        .await
        .map(|_| ())
        .map_err(|e| fleet_error(format!("publishing: {e}")))
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

/// The payer institution's record of a charge's payment, if any.
async fn payer_record(
    network: &Network,
    charge: &ChargeRecord,
) -> Result<Option<PaymentRecord>, LoadTestError> {
    network.institutions[&charge.payer.institution_id]
        .ledger
        .payment(&LedgerPaymentId(charge.payment_id.0), Side::Payer)
        .await
        .map_err(|e| fleet_error(e.to_string()))
}

/// What the payee's side holds of a charge's payment: the payee institution's record (its
/// state and reason) and the dead letters of the clearing path that name the payment (a
/// clearing message the payee's institution refused to read, an answer the payer's refused),
/// so that a charge left undecided explains itself.
async fn payee_side(
    network: &Network,
    bus: &dyn Bus,
    charge: &ChargeRecord,
) -> Result<String, LoadTestError> {
    let record = match network.institutions.get(&charge.payee.institution_id) {
        None => None,
        Some(institution) => institution
            .ledger
            .payment(&LedgerPaymentId(charge.payment_id.0), Side::Payee)
            .await
            .map_err(|e| fleet_error(e.to_string()))?,
    };
    let mut told = vec![record.map_or_else(
        || "no payment recorded".to_owned(),
        |r| match r.reason_code {
            Some(reason) => format!("{:?} ({reason})", r.state),
            None => format!("{:?}", r.state),
        },
    )];
    let payment_id = PaymentId::from_bytes(charge.payment_id.0);
    for stage in [payee::STAGE, commit::STAGE] {
        for letter in dead_letters(bus, stage).await? {
            // What the payee's institution could not read is a clearing message; what the
            // payer's could not, a clearing response.
            let names = if stage == payee::STAGE {
                dcpipe_schemas::decode::<ClearingMessage>(&letter.original).map(|m| m.payment_id)
            } else {
                dcpipe_schemas::decode::<ClearingResponse>(&letter.original).map(|r| r.payment_id)
            };
            if names.is_ok_and(|id| id == payment_id) {
                told.push(format!(
                    "dead letter at {stage}: {} ({})",
                    letter.reason_code, letter.detail
                ));
            }
        }
    }
    Ok(told.join("; "))
}

/// Every dead letter of `stage` on `bus` so far.
async fn dead_letters(bus: &dyn Bus, stage: &str) -> Result<Vec<DeadLetter>, LoadTestError> {
    let mut replay = match bus
        .replay(ReplayRequest {
            subject: dead_letter_subject(stage),
            from: ReplayFrom::Beginning,
            until_ms: None,
        })
        .await
    {
        Ok(replay) => replay,
        Err(e) if e.kind() == BusErrorKind::UnknownSubject => return Ok(Vec::new()),
        Err(e) => return Err(fleet_error(format!("reading dead letters: {e}"))),
    };
    let mut letters = Vec::new();
    loop {
        let records = replay
            .next_batch(DEAD_LETTERS_READ_MAX)
            .await
            .map_err(|e| fleet_error(format!("reading dead letters: {e}")))?;
        if records.is_empty() {
            return Ok(letters);
        }
        letters.extend(
            records
                .iter()
                .filter_map(|r| dcpipe_schemas::decode::<DeadLetter>(&r.payload).ok()),
        );
    }
}

/// The payer institution's final decision on a charge, if any.
async fn decision(
    network: &Network,
    charge: &ChargeRecord,
) -> Result<Option<PaymentState>, LoadTestError> {
    Ok(payer_record(network, charge)
        .await?
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

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(entity_id: &str, entered_at_ms: i64, exited_at_ms: i64) -> ExpectedCharge {
        ExpectedCharge {
            entity_id: entity_id.to_owned(),
            kind: ServiceKind::Parking,
            amount_fen: 100,
            tolerance_fen: 0,
            entered_at_ms,
            exited_at_ms,
            quantity_milli: None,
        }
    }

    #[test]
    fn vehicles_pay_from_the_highest_daily_limit_away_from_the_hot_wallets() {
        use dcpipe_pipeline::network::TIER_2_EVERY;
        use dcpipe_pipeline::tier::{TIER_2, TIER_4};
        let wallets: Vec<WalletInfo> = (0..200)
            .map(|n| WalletInfo {
                party: PartyRef {
                    institution_id: format!("oi{:02}", n % 4 + 1),
                    wallet_id: format!("w-{n:06}"),
                },
                tier: if n % TIER_2_EVERY == TIER_2_EVERY - 1 {
                    TIER_2
                } else {
                    TIER_4
                },
                opening_fen: 0,
            })
            .collect();
        let payers = fleet_payers(&wallets);
        assert_eq!(payers.len(), 20);
        assert_eq!(payers[0].wallet_id, "w-000199");
        assert_eq!(payers[1].wallet_id, "w-000189");
        // A dozen vehicles (the demo's) pay from the highest daily limit, none from a wallet
        // the payment load sends most of its traffic from.
        let hot = crate::payments::PaymentMix::default().hot_wallets;
        let hot: Vec<&PartyRef> = wallets.iter().take(hot).map(|w| &w.party).collect();
        for payer in payers.iter().take(12) {
            assert!(!hot.contains(payer), "{payer:?} is a hot wallet");
            let info = wallets.iter().find(|w| &w.party == *payer);
            assert_eq!(info.map(|w| w.tier.number), Some(TIER_2.number));
        }
    }

    #[test]
    fn charges_are_settled_only_once_every_published_report_has_its_charge() {
        // Three tolls expected, decided; a cut trip's parking charge made and decided; a cut
        // trip's fuel report published, its charge not made yet.
        let waiting = ChargeCounts {
            made: 4,
            decided: 4,
            reports_uncharged: 1,
        };
        assert!(!waiting.settled(3));
        // Made, not decided yet.
        let made = ChargeCounts {
            made: 5,
            decided: 4,
            reports_uncharged: 0,
        };
        assert!(!made.settled(3));
        let decided = ChargeCounts {
            made: 5,
            decided: 5,
            reports_uncharged: 0,
        };
        assert!(decided.settled(3));
        assert!(!decided.settled(6));
    }

    #[test]
    fn a_cut_trip_must_cause_what_ended_well_before_and_may_cause_what_it_cut() {
        let cut_ms = 1_000_000;
        let (must, maybe) = split_at_cut(
            vec![
                charge("ENDED", 100_000, cut_ms - CUT_MARGIN_MS),
                charge("ENDED-LATE", 200_000, cut_ms - CUT_MARGIN_MS + 1),
                charge("CUT", 900_000, cut_ms + 60_000),
                charge("AFTER", cut_ms + 1, cut_ms + 60_000),
            ],
            cut_ms,
        );
        let ids = |list: &[ExpectedCharge]| -> Vec<String> {
            list.iter().map(|c| c.entity_id.clone()).collect()
        };
        assert_eq!(ids(&must), ["ENDED"]);
        assert_eq!(ids(&maybe), ["ENDED-LATE", "CUT"]);
    }
}
