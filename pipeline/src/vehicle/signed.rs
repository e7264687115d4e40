//! The bytes each signature of the vehicle flow covers (docs/PROTOCOL.md, "Vehicles"), in the
//! signing encoding of §3, and the ids derived from them. Each builder follows its layout in
//! `protocol::layout` (checked step by step in debug builds).
//!
//! Certificates enter as their SHA-256 fingerprints; a signature never covers itself. Each
//! message has its own domain tag, so a signature made for one never verifies as another.

use dcpipe_schemas::{
    Digest32, MeterUnit, PartyRef, PaymentId, ServiceAuthorization, ServiceCompleteReport,
    ServiceEntity, ServiceKind, SessionId, Tariff, TelemetryFix, VehicleTelemetry,
    VehicleTelemetryBatch,
};

use crate::pki::sha256;
use crate::protocol::layout::{
    SERVICE_AUTHORIZATION, SERVICE_COMPLETE_REPORT, SERVICE_ENTITY, VEHICLE_TELEMETRY,
    VEHICLE_TELEMETRY_BATCH,
};
use crate::protocol::{SigningInput, certificate_fingerprint};

/// Domain tag of the session id derivation.
pub const TAG_SESSION_ID: &str = "dcpipe/v1/vehicle-session";
/// Domain tag of the derivation of a session's payment id.
pub const TAG_SESSION_PAYMENT_ID: &str = "dcpipe/v1/vehicle-charge";

/// Domain tag of the digest that names a charge's terms on the clearing path.
pub const TAG_CHARGE_DIGEST: &str = "dcpipe/v1/vehicle-charge-terms";

/// The digest a vehicle's first batch chains to.
pub const GENESIS_BATCH_DIGEST: Digest32 = Digest32::from_bytes([0; 32]);

fn party(input: &mut SigningInput, party: &PartyRef) {
    input.string(&party.institution_id).string(&party.wallet_id);
}

/// The Avro symbol of a service kind.
pub fn service_kind_symbol(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Toll => "TOLL",
        ServiceKind::Parking => "PARKING",
        ServiceKind::Charging => "CHARGING",
        ServiceKind::Fuel => "FUEL",
    }
}

/// The Avro symbol of a meter unit.
pub fn meter_unit_symbol(unit: MeterUnit) -> &'static str {
    match unit {
        MeterUnit::Kwh => "KWH",
        MeterUnit::Litre => "LITRE",
    }
}

fn fix(input: &mut SigningInput, fix: &TelemetryFix) {
    input
        .i32(fix.latitude_e7)
        .i32(fix.longitude_e7)
        .present(fix.horizontal_accuracy_cm.is_some());
    if let Some(accuracy_cm) = fix.horizontal_accuracy_cm {
        input.i32(accuracy_cm);
    }
    input
        .i32(fix.speed_cm_per_s)
        .i32(fix.heading_cdeg)
        .i64(fix.recorded_at_ms);
}

/// What the in-vehicle client signs on a telemetry batch.
pub fn telemetry_batch_bytes(batch: &VehicleTelemetryBatch) -> Vec<u8> {
    let mut input = SigningInput::of(&VEHICLE_TELEMETRY_BATCH);
    input.string(&batch.vehicle_id).i32(batch.vehicle_class);
    party(&mut input, &batch.wallet);
    input
        .i64(batch.first_sequence)
        .fixed(batch.previous_batch_digest.as_bytes())
        .count(batch.reports.len());
    for report in &batch.reports {
        fix(&mut input, report);
    }
    input.fixed(&certificate_fingerprint(&batch.certificate));
    input.into_bytes()
}

/// The batch digest: SHA-256 of what the vehicle signed. The vehicle's next batch names it in
/// `previous_batch_digest`, and a verifier keeps it to tell a redelivery from a second history.
pub fn telemetry_batch_digest(batch: &VehicleTelemetryBatch) -> Digest32 {
    Digest32::from_bytes(sha256(&telemetry_batch_bytes(batch)))
}

/// What the in-vehicle client signs on one version 1 report.
pub fn telemetry_report_bytes(report: &VehicleTelemetry) -> Vec<u8> {
    let mut input = SigningInput::of(&VEHICLE_TELEMETRY);
    input.string(&report.vehicle_id).i32(report.vehicle_class);
    party(&mut input, &report.wallet);
    input
        .i64(report.sequence)
        .i32(report.latitude_e7)
        .i32(report.longitude_e7)
        .i32(report.speed_cm_per_s)
        .i32(report.heading_cdeg)
        .i64(report.recorded_at_ms)
        .fixed(&certificate_fingerprint(&report.certificate));
    input.into_bytes()
}

fn tariff(input: &mut SigningInput, tariff: &Tariff) {
    input.present(tariff.toll.is_some());
    if let Some(toll) = &tariff.toll {
        input.count(toll.fen_by_vehicle_class.len());
        for fen in &toll.fen_by_vehicle_class {
            input.i64(*fen);
        }
    }
    input.present(tariff.parking.is_some());
    if let Some(parking) = &tariff.parking {
        input
            .i64(parking.fen_per_minute)
            .i32(parking.free_minutes)
            .i64(parking.daily_cap_fen);
    }
    input.present(tariff.metered.is_some());
    if let Some(metered) = &tariff.metered {
        input
            .string(meter_unit_symbol(metered.unit))
            .i64(metered.fen_per_unit);
    }
}

/// What the institution signer signs on a registry entry (ServiceEntity version 2).
pub fn service_entity_bytes(entity: &ServiceEntity) -> Vec<u8> {
    let mut input = SigningInput::of(&SERVICE_ENTITY);
    input
        .string(&entity.entity_id)
        .string(service_kind_symbol(entity.kind))
        .string(&entity.name);
    party(&mut input, &entity.wallet);
    input.count(entity.geofence.len());
    for point in &entity.geofence {
        input.i32(point.latitude_e7).i32(point.longitude_e7);
    }
    tariff(&mut input, &entity.tariff);
    input
        .i64(entity.version)
        .i64(entity.updated_at_ms)
        .present(entity.removed)
        .fixed(&certificate_fingerprint(&entity.certificate));
    input.into_bytes()
}

/// The entry digest: SHA-256 of what the institution signed; tells a repeated entry from
/// another one under the same version.
pub fn service_entity_digest(entity: &ServiceEntity) -> Digest32 {
    Digest32::from_bytes(sha256(&service_entity_bytes(entity)))
}

/// What the paying wallet signs on a pre-authorization.
pub fn service_authorization_bytes(authorization: &ServiceAuthorization) -> Vec<u8> {
    let mut input = SigningInput::of(&SERVICE_AUTHORIZATION);
    input
        .fixed(authorization.authorization_id.as_bytes())
        .string(&authorization.vehicle_id);
    party(&mut input, &authorization.wallet);
    input
        .string(&authorization.entity_id)
        .string(service_kind_symbol(authorization.service_kind))
        .i64(authorization.max_amount_fen)
        .i64(authorization.issued_at_ms)
        .i64(authorization.expires_at_ms)
        .fixed(&certificate_fingerprint(&authorization.certificate));
    input.into_bytes()
}

/// The pre-authorization digest: SHA-256 of what the wallet signed.
pub fn service_authorization_digest(authorization: &ServiceAuthorization) -> Digest32 {
    Digest32::from_bytes(sha256(&service_authorization_bytes(authorization)))
}

/// What a charging or fuel station signs on a service-complete report.
pub fn service_complete_report_bytes(report: &ServiceCompleteReport) -> Vec<u8> {
    let mut input = SigningInput::of(&SERVICE_COMPLETE_REPORT);
    input
        .fixed(report.report_id.as_bytes())
        .string(&report.entity_id)
        .string(&report.vehicle_id)
        .fixed(report.session_id.as_bytes())
        .string(meter_unit_symbol(report.unit))
        .i64(report.quantity_milli)
        .i64(report.completed_at_ms)
        .fixed(&certificate_fingerprint(&report.certificate));
    input.into_bytes()
}

/// The report digest: SHA-256 of what the station signed.
pub fn service_complete_report_digest(report: &ServiceCompleteReport) -> Digest32 {
    Digest32::from_bytes(sha256(&service_complete_report_bytes(report)))
}

/// A UUID of version 7 whose 48-bit time is `at_ms` and whose other bits come from `digest`:
/// derived ids are reproducible by anyone and still sort by time like the payment ids of
/// terminals (docs/PROTOCOL.md §2).
fn time_ordered_from(at_ms: i64, digest: &[u8; 32]) -> [u8; 16] {
    let mut id = [0u8; 16];
    // Moments are never negative (the codec refuses them); 48 bits last until year 10889.
    let ms = u64::try_from(at_ms).unwrap_or(0) & 0xffff_ffff_ffff;
    id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    id[6..].copy_from_slice(&digest[..10]);
    id[6] = (id[6] & 0x0f) | 0x70;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// The id of a vehicle's session at an entity, from the vehicle, the entity and the moment of
/// entry (for a toll pass, the moment of the crossing): every matching process derives the
/// same id, so a restarted worker resumes the same session.
pub fn session_id(vehicle_id: &str, entity_id: &str, entered_at_ms: i64) -> SessionId {
    let mut input = SigningInput::new(TAG_SESSION_ID);
    input
        .string(vehicle_id)
        .string(entity_id)
        .i64(entered_at_ms);
    SessionId::from_bytes(time_ordered_from(entered_at_ms, &sha256(input.as_bytes())))
}

/// The payment id of a session's one charge: derived from the session, so a redelivery or a
/// restarted worker cannot charge twice.
pub fn session_payment_id(session_id: &SessionId, entered_at_ms: i64) -> PaymentId {
    let mut input = SigningInput::new(TAG_SESSION_PAYMENT_ID);
    input.fixed(session_id.as_bytes());
    PaymentId::from_bytes(time_ordered_from(entered_at_ms, &sha256(input.as_bytes())))
}

/// What a charge is, named on the clearing path (the clearing message's and the outcome's
/// `envelope_digest`, the ledger record's digest): the payment id, the session, the
/// pre-authorization, both wallets, the amount and when it fell due. The same payment id with
/// other terms is a conflict.
#[allow(clippy::too_many_arguments)]
pub fn charge_digest(
    payment_id: &PaymentId,
    session_id: &[u8; 16],
    authorization_id: &[u8; 16],
    vehicle_id: &str,
    payer: &PartyRef,
    payee: &PartyRef,
    amount_fen: i64,
    due_at_ms: i64,
) -> Digest32 {
    let mut input = SigningInput::new(TAG_CHARGE_DIGEST);
    input
        .fixed(payment_id.as_bytes())
        .fixed(session_id)
        .fixed(authorization_id)
        .string(vehicle_id);
    party(&mut input, payer);
    party(&mut input, payee);
    input.i64(amount_fen).i64(due_at_ms);
    Digest32::from_bytes(sha256(input.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_version_7_and_carry_the_entry_time() {
        let at_ms = 1_764_000_000_123;
        let session = session_id("V-1", "PARK-1", at_ms);
        let uuid = session.to_uuid();
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        let (seconds, nanos) = uuid.get_timestamp().expect("v7").to_unix();
        assert_eq!(
            seconds * 1_000 + u64::from(nanos) / 1_000_000,
            1_764_000_000_123
        );
        let payment = session_payment_id(&session, at_ms);
        assert_eq!(payment.to_uuid().get_version_num(), 7);
        assert_ne!(payment.as_bytes(), session.as_bytes());
    }

    #[test]
    fn session_ids_differ_by_vehicle_entity_and_entry() {
        let base = session_id("V-1", "PARK-1", 1_000);
        assert_eq!(base, session_id("V-1", "PARK-1", 1_000));
        assert_ne!(base, session_id("V-2", "PARK-1", 1_000));
        assert_ne!(base, session_id("V-1", "PARK-2", 1_000));
        assert_ne!(base, session_id("V-1", "PARK-1", 1_001));
        // Length prefixes keep ids that share a concatenation apart.
        assert_ne!(session_id("V-1P", "ARK-1", 1_000), base);
    }
}
