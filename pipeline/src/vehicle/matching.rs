//! What one telemetry batch does to a vehicle, decided in pure code: the decision a matching
//! worker takes between reading the vehicle's record from the session store and writing the
//! update back (`dcpipe_connectors::session`).
//!
//! The vehicle's state in the store is a [`MatchingState`]: its telemetry chain and its session
//! machine, as a JSON document. [`decide_telemetry`] checks the batch against the chain, runs
//! the fixes through the session machine, prices what ended (a parking stay at its exit, a toll
//! pass at once; charging and fuel wait for the station's report), picks the pre-authorization
//! each charge goes under, and returns the [`VehicleUpdate`] to commit at the version read.
//! When the commit answers `Stale`, the worker reads again and decides again: the chain then
//! says whether the batch was applied meanwhile (a duplicate), is next, or must wait for a gap.

use dcpipe_connectors::ledger::{Party, PaymentId as LedgerPaymentId};
use dcpipe_connectors::session::{
    ChargeRecord, SessionRecord, StoredAuthorization, VehicleRecord, VehicleUpdate,
};
use dcpipe_schemas::{
    AuthorizationId, PartyRef, PaymentId, ServiceKind, SessionEventKind, SessionId,
    VehicleSessionEvent, VehicleTelemetryBatch,
};
use serde::{Deserialize, Serialize};

use super::preauth::{ChargeRequest, HeldAuthorization, select_authorization};
use super::registry::EntityRegistry;
use super::session::{OpenSession, SessionConfig, SessionEvent, VehicleSessions};
use super::signed::{service_kind_symbol, session_payment_id};
use super::tariff::{parking_fee, toll_fee};
use super::telemetry::{SequenceVerdict, TelemetryChain, VerifiedBatch};
use crate::reason::Rejected;

/// What the session store keeps of a vehicle for matching, as its `state` document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchingState {
    /// The telemetry chain; `None` before the first batch.
    pub chain: Option<TelemetryChain>,
    /// The session machine.
    pub sessions: VehicleSessions,
}

impl MatchingState {
    /// The state stored in `record` (`None`: a vehicle never seen).
    pub fn from_record(record: Option<&VehicleRecord>) -> Result<Self, StateError> {
        match record {
            None => Ok(MatchingState::default()),
            Some(record) => serde_json::from_slice(&record.state)
                .map_err(|e| StateError(format!("vehicle {}: {e}", record.vehicle_id))),
        }
    }

    /// The document to store.
    pub fn to_document(&self) -> Vec<u8> {
        // Plain data with string keys: serializing it cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A stored state that does not read back: a defect or a foreign writer, not bad input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable matching state: {0}")]
pub struct StateError(String);

/// A charge that could not be made for a session that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCharge {
    /// The session.
    pub session_id: SessionId,
    /// The payment id the charge would have had.
    pub payment_id: PaymentId,
    /// The entity.
    pub entity_id: String,
    /// The vehicle's wallet.
    pub payer: PartyRef,
    /// The entity's wallet.
    pub payee: PartyRef,
    /// The fee, when it could be computed (0 when the tariff refused).
    pub amount_fen: i64,
    /// When the charge fell due.
    pub due_at_ms: i64,
    /// Why (`preauth.*`, `tariff.*`).
    pub refused: Rejected,
}

/// What to do with a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum TelemetryDecision {
    /// Commit this update at the version read.
    Apply {
        /// The update (state, sessions, charges).
        update: VehicleUpdate,
        /// The session events the batch caused, in order.
        events: Vec<SessionEvent>,
        /// Charges due but refused.
        refused_charges: Vec<RefusedCharge>,
        /// Reports skipped over an accepted gap.
        missing_reports: i64,
    },
    /// Applied before: acknowledge, nothing to do.
    Duplicate,
    /// Earlier reports are missing: hand the batch back and wait (a bounded time).
    Wait {
        /// The first missing sequence.
        missing_from: i64,
        /// The batch's first sequence.
        missing_until: i64,
    },
    /// Rejected (`telemetry.*`): a dead letter.
    Refuse(Rejected),
}

/// A held pre-authorization as the store keeps it, in the pipeline's terms.
pub fn held_authorization(stored: &StoredAuthorization) -> Option<HeldAuthorization> {
    let kind = [
        ServiceKind::Toll,
        ServiceKind::Parking,
        ServiceKind::Charging,
        ServiceKind::Fuel,
    ]
    .into_iter()
    .find(|k| service_kind_symbol(*k) == stored.hold.service_kind)?;
    Some(HeldAuthorization {
        authorization_id: AuthorizationId::from_bytes(stored.hold.authorization_id),
        vehicle_id: stored.hold.vehicle_id.clone(),
        entity_id: stored.hold.entity_id.clone(),
        service_kind: kind,
        max_amount_fen: stored.hold.max_amount_fen,
        charged_fen: stored.charged_fen,
        expires_at_ms: stored.hold.expires_at_ms,
    })
}

fn party(p: &PartyRef) -> Party {
    Party {
        institution_id: p.institution_id.clone(),
        wallet_id: p.wallet_id.clone(),
    }
}

/// The store's row of a session.
pub fn session_record(
    vehicle_id: &str,
    session: &OpenSession,
    exited_at_ms: Option<i64>,
) -> SessionRecord {
    SessionRecord {
        session_id: *session.session_id.as_bytes(),
        vehicle_id: vehicle_id.to_owned(),
        entity_id: session.entity_id.clone(),
        entity_version: session.entity_version,
        kind: service_kind_symbol(session.kind).to_owned(),
        payee: party(&session.entity_wallet),
        entered_at_ms: session.entered_at_ms,
        exited_at_ms,
        document: serde_json::to_vec(session).unwrap_or_default(),
    }
}

/// The session a stored row describes (its document), for a station's report.
pub fn open_session_of(record: &SessionRecord) -> Result<OpenSession, StateError> {
    serde_json::from_slice(&record.document)
        .map_err(|e| StateError(format!("session document: {e}")))
}

/// The announcement of `event` (docs/PROTOCOL.md §10.5): caused by the reports of the batch of
/// `batch` starting at `batch_first_sequence`, decided at `decided_at_ms`.
pub fn session_event_message(
    event: &SessionEvent,
    batch: &VehicleTelemetryBatch,
    decided_at_ms: i64,
) -> VehicleSessionEvent {
    let session = event.session();
    let (kind, occurred_at_ms) = match event {
        SessionEvent::Enter(_) => (SessionEventKind::Enter, session.entered_at_ms),
        SessionEvent::Exit { exited_at_ms, .. } => (SessionEventKind::Exit, *exited_at_ms),
        SessionEvent::Cross { exited_at_ms, .. } => (SessionEventKind::Cross, *exited_at_ms),
    };
    VehicleSessionEvent {
        event: kind,
        session_id: session.session_id,
        payment_id: session_payment_id(&session.session_id, session.entered_at_ms),
        vehicle_id: batch.vehicle_id.clone(),
        wallet: batch.wallet.clone(),
        entity_id: session.entity_id.clone(),
        entity_version: session.entity_version,
        service_kind: session.kind,
        entered_at_ms: session.entered_at_ms,
        occurred_at_ms,
        batch_first_sequence: batch.first_sequence,
        decided_at_ms,
    }
}

/// The fee of a session that ended at `exited_at_ms` for a vehicle of `vehicle_class`: a
/// toll pass or a parking stay; `None` for charging and fuel, which are charged on the
/// station's report.
pub fn ended_session_fee(
    session: &OpenSession,
    vehicle_class: i32,
    exited_at_ms: i64,
) -> Option<Result<i64, Rejected>> {
    match session.kind {
        ServiceKind::Toll => Some(toll_fee(&session.tariff, vehicle_class)),
        ServiceKind::Parking => Some(parking_fee(
            &session.tariff,
            session.entered_at_ms,
            exited_at_ms,
        )),
        ServiceKind::Charging | ServiceKind::Fuel => None,
    }
}

/// Decides what `batch` (verified as `verified`) does to the vehicle whose stored record is
/// `record`, with the registry in force, the pre-authorizations held for the vehicle, and
/// whether a gap before the batch is to be accepted (the worker waited long enough).
#[allow(clippy::too_many_arguments)]
pub fn decide_telemetry(
    record: Option<&VehicleRecord>,
    batch: &VehicleTelemetryBatch,
    verified: &VerifiedBatch,
    registry: &EntityRegistry,
    config: &SessionConfig,
    authorizations: &[HeldAuthorization],
    accept_gap: bool,
) -> Result<TelemetryDecision, StateError> {
    let mut state = MatchingState::from_record(record)?;
    let missing_reports = match TelemetryChain::check(state.chain.as_ref(), verified, accept_gap) {
        Err(refused) => return Ok(TelemetryDecision::Refuse(refused)),
        Ok(SequenceVerdict::Duplicate) => return Ok(TelemetryDecision::Duplicate),
        Ok(SequenceVerdict::Gap {
            missing_from,
            missing_until,
        }) => {
            return Ok(TelemetryDecision::Wait {
                missing_from,
                missing_until,
            });
        }
        Ok(SequenceVerdict::Apply { missing_reports }) => missing_reports,
    };
    let mut events = Vec::new();
    state.sessions.apply_all(
        &batch.vehicle_id,
        &batch.reports,
        registry,
        config,
        &mut events,
    );
    state.chain = Some(TelemetryChain::advanced(
        state.chain.as_ref(),
        verified,
        missing_reports,
    ));

    let mut held = authorizations.to_vec();
    let mut sessions = Vec::new();
    let mut charges = Vec::new();
    let mut refused_charges = Vec::new();
    for event in &events {
        let (session, exited_at_ms) = match event {
            SessionEvent::Enter(session) => {
                sessions.push(session_record(&batch.vehicle_id, session, None));
                continue;
            }
            SessionEvent::Exit {
                session,
                exited_at_ms,
            }
            | SessionEvent::Cross {
                session,
                exited_at_ms,
            } => (session, *exited_at_ms),
        };
        sessions.push(session_record(
            &batch.vehicle_id,
            session,
            Some(exited_at_ms),
        ));
        let Some(fee) = ended_session_fee(session, batch.vehicle_class, exited_at_ms) else {
            continue;
        };
        let amount_fen = fee.as_ref().map_or(0, |fee| *fee);
        let charge = fee.and_then(|amount_fen| {
            if amount_fen == 0 {
                return Ok(None);
            }
            let request = ChargeRequest {
                vehicle_id: &batch.vehicle_id,
                entity_id: &session.entity_id,
                service_kind: session.kind,
                amount_fen,
                due_at_ms: exited_at_ms,
            };
            let chosen = select_authorization(&held, &request)?;
            Ok(Some((chosen.authorization_id, amount_fen)))
        });
        match charge {
            Ok(None) => {}
            Ok(Some((authorization_id, amount_fen))) => {
                if let Some(h) = held
                    .iter_mut()
                    .find(|h| h.authorization_id == authorization_id)
                {
                    h.charged_fen += amount_fen;
                }
                charges.push(ChargeRecord {
                    payment_id: LedgerPaymentId(
                        *session_payment_id(&session.session_id, session.entered_at_ms).as_bytes(),
                    ),
                    session_id: *session.session_id.as_bytes(),
                    authorization_id: *authorization_id.as_bytes(),
                    vehicle_id: batch.vehicle_id.clone(),
                    entity_id: session.entity_id.clone(),
                    amount_fen,
                    payer: party(&batch.wallet),
                    payee: party(&session.entity_wallet),
                    due_at_ms: exited_at_ms,
                });
            }
            Err(refused) => refused_charges.push(RefusedCharge {
                session_id: session.session_id,
                payment_id: session_payment_id(&session.session_id, session.entered_at_ms),
                entity_id: session.entity_id.clone(),
                payer: batch.wallet.clone(),
                payee: session.entity_wallet.clone(),
                amount_fen,
                due_at_ms: exited_at_ms,
                refused,
            }),
        }
    }
    Ok(TelemetryDecision::Apply {
        update: VehicleUpdate {
            vehicle_id: batch.vehicle_id.clone(),
            expected_version: record.map(|r| r.version),
            batch_digest: *verified.digest.as_bytes(),
            next_sequence: verified.next_sequence,
            state: state.to_document(),
            sessions,
            charges,
        },
        events,
        refused_charges,
        missing_reports,
    })
}

#[cfg(test)]
mod tests {
    use dcpipe_schemas::{Digest32, Tariff, TelemetryFix};

    use super::*;
    use crate::vehicle::signed::session_id;

    const VEHICLE: &str = "LSVAU2180N2183294";
    const T0_MS: i64 = 1_764_000_000_000;

    fn party(institution: &str, wallet: &str) -> PartyRef {
        PartyRef {
            institution_id: institution.to_owned(),
            wallet_id: wallet.to_owned(),
        }
    }

    fn session() -> OpenSession {
        OpenSession {
            session_id: session_id(VEHICLE, "PARK-1", T0_MS),
            entity_id: "PARK-1".to_owned(),
            entity_version: 4,
            kind: ServiceKind::Parking,
            entity_wallet: party("oi02", "w-oi02-000001"),
            tariff: Tariff {
                toll: None,
                parking: None,
                metered: None,
            },
            entered_at_ms: T0_MS,
        }
    }

    fn batch() -> VehicleTelemetryBatch {
        VehicleTelemetryBatch {
            vehicle_id: VEHICLE.to_owned(),
            vehicle_class: 1,
            wallet: party("oi01", "w-oi01-000001"),
            first_sequence: 40,
            previous_batch_digest: Digest32::from_bytes([7; 32]),
            reports: vec![TelemetryFix {
                latitude_e7: 399_042_000,
                longitude_e7: 1_164_074_000,
                horizontal_accuracy_cm: None,
                speed_cm_per_s: 0,
                heading_cdeg: 0,
                recorded_at_ms: T0_MS + 600_000,
            }],
            certificate: Vec::new(),
            signature: Vec::new(),
        }
    }

    #[test]
    fn an_exit_is_announced_with_its_session_its_charge_and_its_batch() {
        let event = SessionEvent::Exit {
            session: session(),
            exited_at_ms: T0_MS + 540_000,
        };
        let message = session_event_message(&event, &batch(), T0_MS + 601_000);
        assert_eq!(message.event, SessionEventKind::Exit);
        assert_eq!(message.session_id, session().session_id);
        assert_eq!(
            message.payment_id,
            session_payment_id(&session().session_id, T0_MS)
        );
        assert_eq!(message.wallet, party("oi01", "w-oi01-000001"));
        assert_eq!(message.entity_version, 4);
        assert_eq!(message.occurred_at_ms, T0_MS + 540_000);
        assert_eq!(message.batch_first_sequence, 40);
        assert_eq!(message.decided_at_ms, T0_MS + 601_000);
        dcpipe_schemas::encode(&message).expect("a valid frame");
    }

    #[test]
    fn an_entry_happens_at_the_sessions_start() {
        let message =
            session_event_message(&SessionEvent::Enter(session()), &batch(), T0_MS + 601_000);
        assert_eq!(message.event, SessionEventKind::Enter);
        assert_eq!(message.occurred_at_ms, T0_MS);
        dcpipe_schemas::encode(&message).expect("a valid frame");
    }
}
