//! Signed batches of vehicle telemetry (schema id 16): consecutive position reports of one
//! vehicle under one signature, chained to the previous batch by its digest, so that a verifier
//! spends one signature check per batch instead of one per report.

use serde::{Deserialize, Serialize};

use crate::{
    Digest32, PartyRef, check,
    codec::{Message, sealed::Sealed},
    error::CodecError,
    limits::{
        HEADING_CDEG_MAX, HORIZONTAL_ACCURACY_CM_MAX, SPEED_CM_PER_S_MAX,
        TELEMETRY_REPORTS_PER_BATCH_MAX, VEHICLE_CLASSES_MAX,
    },
};

/// One position report of a batch (Avro record `TelemetryFix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TelemetryFix {
    /// Latitude in 1e-7 degrees (WGS 84).
    pub latitude_e7: i32,
    /// Longitude in 1e-7 degrees (WGS 84).
    pub longitude_e7: i32,
    /// Horizontal accuracy (radius, 68% confidence) in centimetres, when the receiver gives it.
    pub horizontal_accuracy_cm: Option<i32>,
    /// Ground speed in centimetres per second.
    pub speed_cm_per_s: i32,
    /// Heading in hundredths of a degree clockwise from true north.
    pub heading_cdeg: i32,
    /// When the position was taken (Unix epoch milliseconds).
    pub recorded_at_ms: i64,
}

/// Consecutive position reports of one vehicle, signed once (schema id 16).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VehicleTelemetryBatch {
    /// Vehicle id, e.g. its VIN.
    pub vehicle_id: String,
    /// Toll vehicle class, 1 to [`VEHICLE_CLASSES_MAX`].
    pub vehicle_class: i32,
    /// The wallet that pays for the vehicle.
    pub wallet: PartyRef,
    /// Sequence number of `reports[0]`; report `i` has `first_sequence + i`.
    pub first_sequence: i64,
    /// Digest of the previous batch's signing input; zeros when `first_sequence` is 0.
    pub previous_batch_digest: Digest32,
    /// The reports, oldest first, with strictly rising times.
    pub reports: Vec<TelemetryFix>,
    /// DER certificate of the in-vehicle client.
    #[serde(with = "apache_avro::serde::bytes")]
    pub certificate: Vec<u8>,
    /// The client's signature over every other field.
    #[serde(with = "apache_avro::serde::bytes")]
    pub signature: Vec<u8>,
}

impl VehicleTelemetryBatch {
    /// Sequence number the vehicle's next batch starts at (`first_sequence` + number of
    /// reports); `None` if it would overflow, which `validate` refuses.
    pub fn next_sequence(&self) -> Option<i64> {
        i64::try_from(self.reports.len())
            .ok()
            .and_then(|n| self.first_sequence.checked_add(n))
    }
}

impl Sealed for VehicleTelemetryBatch {}

impl Message for VehicleTelemetryBatch {
    const NAME: &'static str = "VehicleTelemetryBatch";
    const SCHEMA_ID: u32 = 16;

    fn validate(&self) -> Result<(), CodecError> {
        check::id("vehicle_id", &self.vehicle_id)?;
        check::range(
            "vehicle_class",
            self.vehicle_class,
            1,
            VEHICLE_CLASSES_MAX as i32,
        )?;
        self.wallet.check("wallet")?;
        check::non_negative("first_sequence", self.first_sequence)?;
        if self.first_sequence == 0 && self.previous_batch_digest != Digest32::from_bytes([0; 32]) {
            return Err(CodecError::invalid_field(
                "previous_batch_digest",
                "must be zeros for the first batch (first_sequence 0)",
            ));
        }
        check::count(
            "reports",
            self.reports.len(),
            1,
            TELEMETRY_REPORTS_PER_BATCH_MAX,
        )?;
        if self.next_sequence().is_none() {
            return Err(CodecError::invalid_field(
                "first_sequence",
                "the last report's sequence overflows",
            ));
        }
        let mut previous_ms = None;
        for (index, fix) in self.reports.iter().enumerate() {
            fix.check()
                .map_err(|e| e.within(format_args!("reports[{index}]")))?;
            if previous_ms.is_some_and(|previous| fix.recorded_at_ms <= previous) {
                return Err(CodecError::invalid_field(
                    &format!("reports[{index}].recorded_at_ms"),
                    "must be after the report before it",
                ));
            }
            previous_ms = Some(fix.recorded_at_ms);
        }
        check::certificate("certificate", &self.certificate)?;
        check::signature("signature", &self.signature)
    }
}

impl TelemetryFix {
    fn check(&self) -> Result<(), CodecError> {
        check::position(self.latitude_e7, self.longitude_e7)?;
        if let Some(accuracy_cm) = self.horizontal_accuracy_cm {
            check::range(
                "horizontal_accuracy_cm",
                accuracy_cm,
                0,
                HORIZONTAL_ACCURACY_CM_MAX,
            )?;
        }
        check::range("speed_cm_per_s", self.speed_cm_per_s, 0, SPEED_CM_PER_S_MAX)?;
        check::range("heading_cdeg", self.heading_cdeg, 0, HEADING_CDEG_MAX)?;
        check::non_negative("recorded_at_ms", self.recorded_at_ms)
    }
}
