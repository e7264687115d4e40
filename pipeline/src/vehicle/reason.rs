//! Why a vehicle message, registry entry, pre-authorization or charge is refused: one stable
//! code per reason, listed in docs/PROTOCOL.md ("Vehicles").
//!
//! Codes are part of the contract: never renamed, never reused. Certificate failures keep the
//! `cert.*` codes of the PKI.

use std::fmt;

use crate::pki::CertErrorKind;

/// A reason something of the vehicle flow is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VehicleReason {
    /// A certificate failed its chain check (`cert.*`).
    Certificate(CertErrorKind),

    /// Telemetry sent to an institution that does not hold the vehicle's wallet.
    TelemetryWrongInstitution,
    /// A report's time is too far ahead of the platform clock, or too old.
    TelemetryClockSkew,
    /// The in-vehicle client's certificate is not the vehicle, or not of the wallet's
    /// institution.
    TelemetryVehicleMismatch,
    /// The batch signature does not verify.
    TelemetrySignatureInvalid,
    /// The batch starts after the vehicle's next expected sequence: earlier reports are
    /// missing (the batch waits a bounded time for them).
    TelemetrySequenceGap,
    /// The batch starts before the vehicle's next expected sequence and is not a batch already
    /// applied.
    TelemetrySequenceReplayed,
    /// The batch has the first sequence of a batch already applied, with other content (the
    /// vehicle signed two histories).
    TelemetrySequenceConflict,
    /// The batch continues the sequence but names another previous batch than the one applied.
    TelemetryChainBroken,
    /// The batch's first report is not later than the last report applied.
    TelemetryTimeNotRising,

    /// A registry entry without certificate or signature (every version 1 entry).
    EntityUnsigned,
    /// The registry entry's signature does not verify.
    EntitySignatureInvalid,
    /// The registry entry is not signed by the institution that holds the entity's wallet.
    EntityWrongSigner,
    /// A registry entry older than (or as old as) the version in force.
    EntityStaleVersion,
    /// The version in force was registered before with other content.
    EntityVersionConflict,
    /// The geofence is not a simple polygon of positive area within the size bound.
    EntityInvalidGeofence,
    /// The registry holds its maximum number of entities.
    EntityRegistryFull,

    /// A pre-authorization sent to an institution that does not hold the paying wallet.
    PreauthWrongInstitution,
    /// The signing certificate is not of the wallet the pre-authorization names.
    PreauthWalletMismatch,
    /// The pre-authorization's signature does not verify.
    PreauthSignatureInvalid,
    /// The pre-authorization has expired.
    PreauthExpired,
    /// The pre-authorization is issued too far in the future.
    PreauthNotYetValid,
    /// The pre-authorization's lifetime is longer than allowed.
    PreauthLifetimeTooLong,
    /// The charge is for another entity than the pre-authorization's.
    PreauthWrongEntity,
    /// The charge is for another service than the pre-authorization's.
    PreauthWrongService,
    /// The charge is for another vehicle than the pre-authorization's.
    PreauthVehicleMismatch,
    /// The charge exceeds the remaining pre-authorized amount.
    PreauthExceeded,
    /// No pre-authorization is held for the entity.
    PreauthMissing,

    /// The vehicle class has no fee in the toll tariff.
    TariffVehicleClass,
    /// The report's unit is not the tariff's.
    TariffUnitMismatch,
    /// The fee overflows or exceeds the largest amount.
    TariffOverflow,
    /// The entity version has no tariff of its kind.
    TariffMissing,
    /// The stay is longer than a fee is computed for.
    TariffStayTooLong,
    /// The stay ends before it starts.
    TariffTimeReversed,

    /// The service-complete report's signature does not verify.
    ReportSignatureInvalid,
    /// The report's certificate is not the entity it names.
    ReportEntityMismatch,
    /// The report names a session the institution does not know.
    ReportUnknownSession,
    /// The report comes from another entity, or names another vehicle, than the session's.
    ReportWrongSession,
}

impl VehicleReason {
    /// Every reason except the certificate ones (those follow [`CertErrorKind`]).
    pub const NON_CERTIFICATE: [VehicleReason; 37] = [
        VehicleReason::TelemetryWrongInstitution,
        VehicleReason::TelemetryClockSkew,
        VehicleReason::TelemetryVehicleMismatch,
        VehicleReason::TelemetrySignatureInvalid,
        VehicleReason::TelemetrySequenceGap,
        VehicleReason::TelemetrySequenceReplayed,
        VehicleReason::TelemetrySequenceConflict,
        VehicleReason::TelemetryChainBroken,
        VehicleReason::TelemetryTimeNotRising,
        VehicleReason::EntityUnsigned,
        VehicleReason::EntitySignatureInvalid,
        VehicleReason::EntityWrongSigner,
        VehicleReason::EntityStaleVersion,
        VehicleReason::EntityVersionConflict,
        VehicleReason::EntityInvalidGeofence,
        VehicleReason::EntityRegistryFull,
        VehicleReason::PreauthWrongInstitution,
        VehicleReason::PreauthWalletMismatch,
        VehicleReason::PreauthSignatureInvalid,
        VehicleReason::PreauthExpired,
        VehicleReason::PreauthNotYetValid,
        VehicleReason::PreauthLifetimeTooLong,
        VehicleReason::PreauthWrongEntity,
        VehicleReason::PreauthWrongService,
        VehicleReason::PreauthVehicleMismatch,
        VehicleReason::PreauthExceeded,
        VehicleReason::PreauthMissing,
        VehicleReason::TariffVehicleClass,
        VehicleReason::TariffUnitMismatch,
        VehicleReason::TariffOverflow,
        VehicleReason::TariffMissing,
        VehicleReason::TariffStayTooLong,
        VehicleReason::TariffTimeReversed,
        VehicleReason::ReportSignatureInvalid,
        VehicleReason::ReportEntityMismatch,
        VehicleReason::ReportUnknownSession,
        VehicleReason::ReportWrongSession,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            VehicleReason::Certificate(kind) => kind.reason_code(),
            VehicleReason::TelemetryWrongInstitution => "telemetry.wrong_institution",
            VehicleReason::TelemetryClockSkew => "telemetry.clock_skew",
            VehicleReason::TelemetryVehicleMismatch => "telemetry.vehicle_mismatch",
            VehicleReason::TelemetrySignatureInvalid => "telemetry.signature_invalid",
            VehicleReason::TelemetrySequenceGap => "telemetry.sequence_gap",
            VehicleReason::TelemetrySequenceReplayed => "telemetry.sequence_replayed",
            VehicleReason::TelemetrySequenceConflict => "telemetry.sequence_conflict",
            VehicleReason::TelemetryChainBroken => "telemetry.chain_broken",
            VehicleReason::TelemetryTimeNotRising => "telemetry.time_not_rising",
            VehicleReason::EntityUnsigned => "entity.unsigned",
            VehicleReason::EntitySignatureInvalid => "entity.signature_invalid",
            VehicleReason::EntityWrongSigner => "entity.wrong_signer",
            VehicleReason::EntityStaleVersion => "entity.stale_version",
            VehicleReason::EntityVersionConflict => "entity.version_conflict",
            VehicleReason::EntityInvalidGeofence => "entity.invalid_geofence",
            VehicleReason::EntityRegistryFull => "entity.registry_full",
            VehicleReason::PreauthWrongInstitution => "preauth.wrong_institution",
            VehicleReason::PreauthWalletMismatch => "preauth.wallet_mismatch",
            VehicleReason::PreauthSignatureInvalid => "preauth.signature_invalid",
            VehicleReason::PreauthExpired => "preauth.expired",
            VehicleReason::PreauthNotYetValid => "preauth.not_yet_valid",
            VehicleReason::PreauthLifetimeTooLong => "preauth.lifetime_too_long",
            VehicleReason::PreauthWrongEntity => "preauth.wrong_entity",
            VehicleReason::PreauthWrongService => "preauth.wrong_service",
            VehicleReason::PreauthVehicleMismatch => "preauth.vehicle_mismatch",
            VehicleReason::PreauthExceeded => "preauth.exceeded",
            VehicleReason::PreauthMissing => "preauth.missing",
            VehicleReason::TariffVehicleClass => "tariff.vehicle_class",
            VehicleReason::TariffUnitMismatch => "tariff.unit_mismatch",
            VehicleReason::TariffOverflow => "tariff.overflow",
            VehicleReason::TariffMissing => "tariff.missing",
            VehicleReason::TariffStayTooLong => "tariff.stay_too_long",
            VehicleReason::TariffTimeReversed => "tariff.time_reversed",
            VehicleReason::ReportSignatureInvalid => "report.signature_invalid",
            VehicleReason::ReportEntityMismatch => "report.entity_mismatch",
            VehicleReason::ReportUnknownSession => "report.unknown_session",
            VehicleReason::ReportWrongSession => "report.wrong_session",
        }
    }
}

impl fmt::Display for VehicleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal: the reason, and a human-readable detail (not stable; never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The reason.
    pub reason: VehicleReason,
    /// What exactly failed.
    pub detail: String,
}

impl Refused {
    /// A refusal.
    pub fn new(reason: VehicleReason, detail: impl Into<String>) -> Self {
        Refused {
            reason,
            detail: detail.into(),
        }
    }

    /// The stable code of the reason.
    pub fn code(&self) -> &'static str {
        self.reason.code()
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.code(), self.detail)
    }
}

impl std::error::Error for Refused {}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn codes_are_unique_dotted_and_in_their_families() {
        let mut seen = HashSet::new();
        for reason in VehicleReason::NON_CERTIFICATE {
            let code = reason.code();
            let family = code.split('.').next().unwrap_or_default();
            assert!(
                ["telemetry", "entity", "preauth", "tariff", "report"].contains(&family),
                "{code}"
            );
            assert!(
                code.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'),
                "{code}"
            );
            assert!(seen.insert(code), "duplicate code {code}");
        }
        assert_eq!(
            VehicleReason::Certificate(CertErrorKind::Revoked).code(),
            "cert.revoked"
        );
    }

    #[test]
    fn the_protocol_lists_every_code() {
        let protocol = include_str!("../../../docs/PROTOCOL.md");
        for reason in VehicleReason::NON_CERTIFICATE {
            assert!(
                protocol.contains(&format!("| `{}` |", reason.code())),
                "docs/PROTOCOL.md lacks {}",
                reason.code()
            );
        }
    }
}
