//! The institution holding a vehicle's wallet matches its telemetry to service entities: each
//! batch is verified, decided against the vehicle's record in the session store
//! ([`decide_telemetry`]) and committed at the version read; the charges of sessions that ended
//! leave through the clearing path.
//!
//! A bus batch may hold several telemetry batches of one vehicle: they are decided and
//! committed in their order, one per round, the batches of different vehicles of a round in one
//! store transaction. A commit answered *stale* (another member got there first) is read and
//! decided again. A telemetry batch after a gap is handed back ([`Verdict::Retry`]) with the
//! later batches of its vehicle, so that the missing one is applied meanwhile, while the other
//! vehicles' batches of the bus batch complete; from its
//! [`super::super::backend::VehiclePolicy::gap_deliveries_max`]th delivery on, the gap is
//! accepted. A version 1 report (schema 7) is read as a batch of one. Batches already applied are acknowledged, their charges cleared again (a no-op
//! for the ledger unless the worker that applied them stopped before clearing).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::Outgoing;
use dcpipe_connectors::session::{UpdateResult, VehicleUpdate};
use dcpipe_schemas::{
    CodecError, Message, SessionEventKind, VehicleSessionEvent, VehicleTelemetry,
    VehicleTelemetryBatch,
};

use super::registry_ready;
use crate::reason::Reason;
use crate::registry::{Build, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict};
use crate::subjects;
use crate::vehicle::backend::VehicleInstitution;
use crate::vehicle::charging::{clear_charges, redrive_charges, refused_charge_outcomes};
use crate::vehicle::matching::{
    TelemetryDecision, decide_telemetry, held_authorization, session_event_message,
};
use crate::vehicle::telemetry::{
    VerifiedBatch, report_as_batch, verify_telemetry_batch, verify_telemetry_report,
};

/// Name of this stage.
pub const STAGE: &str = "vehicle-matching";

/// Reads and decisions of one telemetry batch in one delivery before the bus batch is handed
/// back (transient): other members keep committing first.
pub const STALE_ATTEMPTS_MAX: u32 = 16;

inventory::submit! {
    StageDescriptor {
        name: STAGE,
        summary: "the wallet institution's matching of telemetry: sessions, fees, charges",
        flow: Flow::Vehicle,
        consumes: subjects::vehicle_telemetry,
        // Session events to the vehicles; charges: clearing messages to the entities'
        // institutions; refusals to both.
        publishes: |owner, institutions| {
            std::iter::once(subjects::vehicle_session(owner))
                .chain(
                    institutions
                        .iter()
                        .flat_map(|oi| [subjects::clearing_request(oi), subjects::txn_result(oi)]),
                )
                .collect()
        },
        build: Build::Vehicle(|vehicles| Arc::new(MatchingStage::new(vehicles))),
    }
}

/// The matching of telemetry.
#[derive(Debug, Clone)]
pub struct MatchingStage {
    vehicles: Arc<VehicleInstitution>,
}

impl MatchingStage {
    /// The stage for an institution's vehicle back-end.
    pub fn new(vehicles: Arc<VehicleInstitution>) -> Self {
        MatchingStage { vehicles }
    }
}

/// A telemetry frame as read: a signed batch, or a version 1 report signed alone.
enum Telemetry {
    Batch(VehicleTelemetryBatch),
    Report(VehicleTelemetry),
}

/// Reads a frame of either version by its schema id: a version 1 report (schema 7) is still
/// read, as a batch of one (docs/PROTOCOL.md §10.2).
fn read_telemetry(frame: &[u8]) -> Result<Telemetry, CodecError> {
    if dcpipe_schemas::schema_id(frame)? == VehicleTelemetry::SCHEMA_ID {
        dcpipe_schemas::decode(frame).map(Telemetry::Report)
    } else {
        dcpipe_schemas::decode(frame).map(Telemetry::Batch)
    }
}

/// A verified telemetry batch waiting for its turn.
struct Pending {
    index: usize,
    batch: VehicleTelemetryBatch,
    verified: VerifiedBatch,
    accept_gap: bool,
    attempts: u32,
}

#[async_trait]
impl Stage for MatchingStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        &self.vehicles.institution.id
    }

    fn subject(&self) -> String {
        subjects::vehicle_telemetry(&self.vehicles.institution.id)
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        let vehicles = &self.vehicles;
        registry_ready(&vehicles.registry).await?;
        let inst = &vehicles.institution;
        let now_ms = inst.clock.now_ms();
        let mut verdicts: Vec<Option<Verdict>> = batch.iter().map(|_| None).collect();
        // Per vehicle, its batches in bus order.
        let mut queues: BTreeMap<String, VecDeque<Pending>> = BTreeMap::new();
        for (index, input) in batch.iter().enumerate() {
            let read = match read_telemetry(input.payload) {
                Ok(read) => read,
                Err(e) => {
                    verdicts[index] = Some(Verdict::undecodable(&e));
                    continue;
                }
            };
            let verified = match &read {
                Telemetry::Batch(batch) => verify_telemetry_batch(
                    batch,
                    &inst.id,
                    &inst.verifier,
                    &vehicles.policy.telemetry,
                    now_ms,
                ),
                Telemetry::Report(report) => verify_telemetry_report(
                    report,
                    &inst.id,
                    &inst.verifier,
                    &vehicles.policy.telemetry,
                    now_ms,
                ),
            };
            let telemetry = match read {
                Telemetry::Batch(batch) => batch,
                Telemetry::Report(report) => report_as_batch(&report),
            };
            match verified {
                Err(rejected) => {
                    verdicts[index] = Some(Verdict::dead_letter(rejected.reason, rejected.detail));
                }
                Ok(verified) => queues
                    .entry(telemetry.vehicle_id.clone())
                    .or_default()
                    .push_back(Pending {
                        index,
                        accept_gap: input.delivery_count >= vehicles.policy.gap_deliveries_max,
                        batch: telemetry,
                        verified,
                        attempts: 0,
                    }),
            }
        }

        while queues.values().any(|q| !q.is_empty()) {
            let heads: Vec<&Pending> = queues.values().filter_map(VecDeque::front).collect();
            let vehicle_ids: Vec<String> =
                heads.iter().map(|p| p.batch.vehicle_id.clone()).collect();
            let records = vehicles.store.vehicles(&vehicle_ids).await?;
            let mut held = Vec::with_capacity(heads.len());
            for vehicle_id in &vehicle_ids {
                held.push(
                    vehicles
                        .store
                        .authorizations(vehicle_id)
                        .await?
                        .iter()
                        .filter_map(held_authorization)
                        .collect::<Vec<_>>(),
                );
            }
            let decisions: Vec<TelemetryDecision> = {
                let registry = vehicles.registry.read();
                heads
                    .iter()
                    .zip(&records)
                    .zip(&held)
                    .map(|((pending, record), held)| {
                        decide_telemetry(
                            record.as_ref(),
                            &pending.batch,
                            &pending.verified,
                            &registry,
                            &vehicles.policy.sessions,
                            held,
                            pending.accept_gap,
                        )
                        .map_err(|e| StageError::fatal(e.to_string()))
                    })
                    .collect::<Result<_, _>>()?
            };

            // What to commit, and what was decided without a commit.
            let mut updates: Vec<VehicleUpdate> = Vec::new();
            let mut applying: Vec<(String, TelemetryDecision)> = Vec::new();
            for (vehicle_id, decision) in vehicle_ids.iter().zip(decisions) {
                let queue = queues.get_mut(vehicle_id).expect("a queue per head");
                let position = batch[queue.front().expect("a head").index].position;
                match decision {
                    TelemetryDecision::Apply { ref update, .. } => {
                        updates.push(update.clone());
                        applying.push((vehicle_id.clone(), decision));
                    }
                    TelemetryDecision::Duplicate => {
                        let pending = queue.pop_front().expect("a head");
                        metrics::counter!("dcpipe_vehicle_telemetry_duplicates_total", "institution" => inst.id.clone()).increment(1);
                        // The worker that applied it may have stopped before clearing.
                        let outputs =
                            redrive_charges(vehicles, vehicle_id, position, now_ms, STAGE).await?;
                        verdicts[pending.index] = Some(Verdict::Done(outputs));
                    }
                    TelemetryDecision::Wait {
                        missing_from,
                        missing_until,
                    } => {
                        // Only this vehicle's batches wait; the others of the bus batch go on.
                        let why = format!(
                            "vehicle {vehicle_id}: reports {missing_from} to {} are missing; \
                             handed back until they arrive",
                            missing_until - 1
                        );
                        for pending in queue.drain(..) {
                            verdicts[pending.index] = Some(Verdict::Retry { why: why.clone() });
                        }
                    }
                    TelemetryDecision::Refuse(rejected) => {
                        let pending = queue.pop_front().expect("a head");
                        verdicts[pending.index] =
                            Some(Verdict::dead_letter(rejected.reason, rejected.detail));
                    }
                }
            }
            if updates.is_empty() {
                continue;
            }
            let results = vehicles.store.commit(&updates).await?;
            if results.len() != updates.len() {
                return Err(StageError::fatal(
                    "the session store returned fewer results than updates",
                ));
            }
            for ((vehicle_id, decision), result) in applying.into_iter().zip(results) {
                let queue = queues.get_mut(&vehicle_id).expect("a queue per head");
                let TelemetryDecision::Apply {
                    update,
                    events,
                    refused_charges,
                    missing_reports,
                } = decision
                else {
                    continue;
                };
                match result {
                    UpdateResult::Applied { .. } | UpdateResult::AlreadyApplied { .. } => {
                        let pending = queue.pop_front().expect("a head");
                        let position = batch[pending.index].position;
                        let mut outputs: Vec<Outgoing> = Vec::with_capacity(events.len());
                        for event in &events {
                            metrics::counter!("dcpipe_vehicle_session_events_total", "institution" => inst.id.clone(), "event" => event.name()).increment(1);
                            tracing::debug!(vehicle = %vehicle_id, entity = %event.session().entity_id, event = event.name(), "session event");
                            outputs.push(session_event_output(
                                &inst.id,
                                &session_event_message(event, &pending.batch, now_ms),
                            )?);
                        }
                        if missing_reports > 0 {
                            tracing::warn!(vehicle = %vehicle_id, missing_reports, "telemetry gap accepted");
                        }
                        outputs.extend(
                            clear_charges(vehicles, &update.charges, position, now_ms, STAGE)
                                .await?,
                        );
                        outputs.extend(refused_charge_outcomes(
                            vehicles,
                            &refused_charges,
                            &vehicle_id,
                            now_ms,
                            STAGE,
                        )?);
                        verdicts[pending.index] = Some(Verdict::Done(outputs));
                    }
                    // Another member committed first, or the pre-authorizations changed under
                    // the decision: read and decide again.
                    UpdateResult::Stale { .. }
                    | UpdateResult::ChargeConflict { .. }
                    | UpdateResult::AuthorizationRefused { .. } => {
                        let pending = queue.front_mut().expect("a head");
                        pending.attempts += 1;
                        if pending.attempts >= STALE_ATTEMPTS_MAX {
                            return Err(StageError::transient(format!(
                                "vehicle {vehicle_id}: still stale after {} reads ({result:?})",
                                pending.attempts
                            )));
                        }
                    }
                }
            }
        }
        verdicts
            .into_iter()
            .map(|v| v.ok_or_else(|| StageError::fatal("a telemetry batch left undecided")))
            .collect()
    }
}

/// The message announcing a session event on `vehicle.session.<oi>`, keyed by the vehicle id;
/// its message id (`vehicle.session.<oi>/<session id>/<enter|exit|cross>`) lets the bus drop a
/// copy published again.
fn session_event_output(
    institution: &str,
    event: &VehicleSessionEvent,
) -> Result<Outgoing, StageError> {
    let frame = dcpipe_schemas::encode(event).map_err(|e| {
        StageError::item(
            Reason::Schema(e.kind()),
            format!("a session event does not encode: {e}"),
        )
    })?;
    let subject = subjects::vehicle_session(institution);
    let word = match event.event {
        SessionEventKind::Enter => "enter",
        SessionEventKind::Exit => "exit",
        SessionEventKind::Cross => "cross",
    };
    let msg_id = format!("{subject}/{}/{word}", event.session_id);
    Ok(Outgoing::new(subject, frame)
        .with_key(event.vehicle_id.clone().into_bytes())
        .with_msg_id(msg_id))
}
