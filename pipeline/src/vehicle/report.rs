//! Service-complete reports: a charging or fuel station's signed statement of what it
//! delivered in a session, from which the fee is computed.

use dcpipe_schemas::{Digest32, ServiceCompleteReport, ServiceKind};

use super::session::OpenSession;
use super::signed::{service_complete_report_bytes, service_complete_report_digest};
use super::tariff::metered_fee;
use crate::pki::{ChainVerifier, Role, VerifiedIdentity};
use crate::reason::{Reason, Rejected};

/// A report whose certificate and signature checked out.
#[derive(Debug, Clone)]
pub struct VerifiedReport {
    /// SHA-256 of what the station signed.
    pub digest: Digest32,
    /// The station's certificate, verified.
    pub station: VerifiedIdentity,
}

/// Checks a report: the certificate chains to the root with the `service-entity` role (valid
/// when delivery ended, not revoked now) and is the entity the report names; the signature
/// verifies.
pub fn verify_service_report(
    report: &ServiceCompleteReport,
    verifier: &ChainVerifier,
) -> Result<VerifiedReport, Rejected> {
    let station = verifier
        .verify(
            &report.certificate,
            report.completed_at_ms,
            Role::ServiceEntity,
        )
        .map_err(|e| {
            Rejected::new(
                Reason::Certificate(e.kind()),
                format!("station certificate: {e}"),
            )
        })?;
    if station.id() != report.entity_id {
        return Err(Rejected::new(
            Reason::ReportEntityMismatch,
            format!(
                "signed by entity {}, the report names {}",
                station.id(),
                report.entity_id
            ),
        ));
    }
    station
        .public_key()
        .verify(&service_complete_report_bytes(report), &report.signature)
        .map_err(|e| Rejected::new(Reason::ReportSignatureInvalid, e.to_string()))?;
    Ok(VerifiedReport {
        digest: service_complete_report_digest(report),
        station,
    })
}

/// The fee of a verified report for the session it names (`session`: the session the store
/// knows by that id, with the vehicle it belongs to; `None` if none): the session must exist,
/// be the reporting entity's, of a metered kind, and belong to the vehicle the report names;
/// the station's certificate must be of the institution holding the entity's wallet.
pub fn report_fee(
    report: &ServiceCompleteReport,
    verified: &VerifiedReport,
    session: Option<(&str, &OpenSession)>,
) -> Result<i64, Rejected> {
    let Some((vehicle_id, session)) = session else {
        return Err(Rejected::new(
            Reason::ReportUnknownSession,
            format!("no session {}", report.session_id),
        ));
    };
    let metered = matches!(session.kind, ServiceKind::Charging | ServiceKind::Fuel);
    if session.entity_id != report.entity_id
        || vehicle_id != report.vehicle_id
        || !metered
        || verified.station.institution_id() != session.entity_wallet.institution_id
    {
        return Err(Rejected::new(
            Reason::ReportWrongSession,
            format!(
                "session {} is vehicle {vehicle_id} at {} ({:?}); the report is from {} of {} for {}",
                report.session_id,
                session.entity_id,
                session.kind,
                report.entity_id,
                verified.station.institution_id(),
                report.vehicle_id
            ),
        ));
    }
    metered_fee(&session.tariff, report.unit, report.quantity_milli)
}
