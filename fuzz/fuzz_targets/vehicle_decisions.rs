//! The vehicle stages' checks on arbitrary bytes: a telemetry batch (matching stage), a
//! registry entry (every follower of vehicle.registry) and a service-complete report (report
//! stage), against the vectors' PKI at the vectors' time. Accepted or refused with a reason
//! code, never a panic.
#![no_main]

use dcpipe_fuzz::{INSTITUTION, NOW_MS, verifier};
use dcpipe_pipeline::vehicle::registry::verify_entity;
use dcpipe_pipeline::vehicle::report::verify_service_report;
use dcpipe_pipeline::vehicle::telemetry::{TelemetryPolicy, verify_telemetry_batch};
use dcpipe_schemas::{ServiceCompleteReport, ServiceEntity, VehicleTelemetryBatch, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let verifier = verifier();
    if let Ok(batch) = decode::<VehicleTelemetryBatch>(data) {
        let policy = TelemetryPolicy::default();
        if let Err(rejected) =
            verify_telemetry_batch(&batch, INSTITUTION, verifier, &policy, NOW_MS)
        {
            assert!(!rejected.reason.as_str().is_empty());
        }
    }
    if let Ok(entity) = decode::<ServiceEntity>(data)
        && let Err(rejected) = verify_entity(&entity, verifier)
    {
        assert!(!rejected.reason.as_str().is_empty());
    }
    if let Ok(report) = decode::<ServiceCompleteReport>(data)
        && let Err(rejected) = verify_service_report(&report, verifier)
    {
        assert!(!rejected.reason.as_str().is_empty());
    }
});
