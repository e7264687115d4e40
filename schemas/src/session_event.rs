//! Session events of vehicles (schema id 28): what the institution holding a vehicle's wallet
//! announces on `vehicle.session.<oi>` once the telemetry that caused it is committed, so that
//! the in-vehicle client (and an operator) can follow its sessions as they happen.

use serde::{Deserialize, Serialize};

use crate::{
    PartyRef, PaymentId, ServiceKind, SessionId, check,
    codec::{Message, sealed::Sealed},
    error::CodecError,
};

/// What happened to a session (Avro enum `SessionEventKind`; Tile38's geofence words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionEventKind {
    /// A stay at a parking lot, charging or fuel station began.
    Enter,
    /// The stay ended.
    Exit,
    /// A toll pass: a session of no duration.
    Cross,
}

/// A session event (schema id 28). Not signed: it informs; the charge's outcome is the signed
/// record of money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VehicleSessionEvent {
    /// What happened.
    pub event: SessionEventKind,
    /// The session, derived from vehicle, entity and entry.
    pub session_id: SessionId,
    /// The id of the session's one charge, derived from the session.
    pub payment_id: PaymentId,
    /// The vehicle.
    pub vehicle_id: String,
    /// The wallet that pays for the vehicle.
    pub wallet: PartyRef,
    /// The service entity.
    pub entity_id: String,
    /// The entity's version in force at the session's start.
    pub entity_version: i64,
    /// What the entity sells.
    pub service_kind: ServiceKind,
    /// When the session started, by the reports' times.
    pub entered_at_ms: i64,
    /// When the event happened, by the reports' times: the start for
    /// [`SessionEventKind::Enter`], the end for the others.
    pub occurred_at_ms: i64,
    /// `first_sequence` of the telemetry batch whose reports caused the event.
    pub batch_first_sequence: i64,
    /// When the institution decided the batch, by its clock.
    pub decided_at_ms: i64,
}

impl Sealed for VehicleSessionEvent {}

impl Message for VehicleSessionEvent {
    const NAME: &'static str = "VehicleSessionEvent";
    const SCHEMA_ID: u32 = 28;

    fn validate(&self) -> Result<(), CodecError> {
        check::id("vehicle_id", &self.vehicle_id)?;
        self.wallet.check("wallet")?;
        check::id("entity_id", &self.entity_id)?;
        check::non_negative("entity_version", self.entity_version)?;
        check::non_negative("entered_at_ms", self.entered_at_ms)?;
        if self.event == SessionEventKind::Enter && self.occurred_at_ms != self.entered_at_ms {
            return Err(CodecError::invalid_field(
                "occurred_at_ms",
                "must equal entered_at_ms for ENTER",
            ));
        }
        if self.occurred_at_ms < self.entered_at_ms {
            return Err(CodecError::invalid_field(
                "occurred_at_ms",
                "must not be before entered_at_ms",
            ));
        }
        check::non_negative("batch_first_sequence", self.batch_first_sequence)?;
        check::non_negative("decided_at_ms", self.decided_at_ms)
    }
}
