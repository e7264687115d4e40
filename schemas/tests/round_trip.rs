//! Every message survives encode and decode unchanged, in the documented frame layout.

mod fixtures;

use dcpipe_schemas::*;

/// Encodes `message`, checks the header, decodes it back and returns the frame.
fn round_trip<M: Message + PartialEq + std::fmt::Debug>(message: &M) -> Vec<u8> {
    let frame = encode(message).expect("encodes");
    assert_eq!(frame[0], MAGIC_BYTE);
    assert_eq!(&frame[1..HEADER_BYTES], &M::SCHEMA_ID.to_be_bytes());
    assert_eq!(schema_id(&frame), Ok(M::SCHEMA_ID));
    assert_eq!(decode::<M>(&frame).as_ref(), Ok(message));
    frame
}

macro_rules! round_trip_tests {
    ($($test:ident: $fixture:expr;)*) => {$(
        #[test]
        fn $test() {
            round_trip(&$fixture);
        }
    )*};
}

round_trip_tests! {
    transaction_envelope_round_trips: fixtures::transaction_envelope();
    transaction_envelope_with_pin_proof_round_trips: fixtures::transaction_envelope_with_pin();
    clearing_message_round_trips: fixtures::clearing_message();
    clearing_response_round_trips: fixtures::clearing_response();
    payment_outcome_round_trips: fixtures::payment_outcome();
    settlement_position_round_trips: fixtures::settlement_position("OI-ICBC", 50_000, 20_000);
    settlement_instruction_round_trips: fixtures::settlement_instruction();
    vehicle_telemetry_round_trips: fixtures::vehicle_telemetry();
    service_authorization_round_trips: fixtures::service_authorization();
    service_entity_round_trips: fixtures::service_entity();
    toll_entity_round_trips: fixtures::toll_entity();
    service_complete_report_round_trips: fixtures::service_complete_report();
    wallet_key_set_round_trips: fixtures::wallet_key_set();
    wallet_sync_result_round_trips: fixtures::wallet_sync_result();
    remote_control_command_round_trips: fixtures::remote_control_command();
    blacklist_command_round_trips: fixtures::blacklist_command();
    revocation_update_round_trips: fixtures::revocation_update();
    dead_letter_round_trips: fixtures::dead_letter();
}

#[test]
fn rejected_outcome_keeps_its_reason_code() {
    let outcome = PaymentOutcome {
        status: OutcomeStatus::Rejected,
        reason_code: Some("cert.expired".to_owned()),
        detail: "payer certificate expired".to_owned(),
        ..fixtures::payment_outcome()
    };
    let frame = round_trip(&outcome);
    let decoded: PaymentOutcome = decode(&frame).expect("decodes");
    assert_eq!(decoded.reason_code.as_deref(), Some("cert.expired"));
}

#[test]
fn extreme_values_round_trip() {
    let telemetry = VehicleTelemetry {
        vehicle_class: VEHICLE_CLASSES_MAX as i32,
        sequence: i64::MAX,
        latitude_e7: -LATITUDE_E7_MAX,
        longitude_e7: LONGITUDE_E7_MAX,
        speed_cm_per_s: SPEED_CM_PER_S_MAX,
        heading_cdeg: HEADING_CDEG_MAX,
        recorded_at_ms: i64::MAX,
        signature: Vec::new(),
        ..fixtures::vehicle_telemetry()
    };
    round_trip(&telemetry);
}

#[test]
fn envelope_frame_is_within_the_expected_size() {
    // Two ~500-byte certificates, two 71-byte signatures, nonces, factor and ids.
    let frame = round_trip(&fixtures::transaction_envelope());
    assert!(
        (1_200..1_400).contains(&frame.len()),
        "{} bytes",
        frame.len()
    );
    let with_pin = round_trip(&fixtures::transaction_envelope_with_pin());
    assert!(
        with_pin.len() > frame.len() + 480,
        "{} bytes",
        with_pin.len()
    );
}

#[test]
fn encode_into_appends_after_existing_bytes() {
    let outcome = fixtures::payment_outcome();
    let mut buffer = b"prefix".to_vec();
    encode_into(&outcome, &mut buffer).expect("encodes");
    assert_eq!(&buffer[..6], b"prefix");
    assert_eq!(buffer[6..], encode(&outcome).expect("encodes")[..]);
}

#[test]
fn encode_into_leaves_buffer_unchanged_on_error() {
    let mut bad = fixtures::payment_outcome();
    bad.amount_fen = 0;
    let mut buffer = b"kept".to_vec();
    let error = encode_into(&bad, &mut buffer).expect_err("zero amount");
    assert_eq!(error.kind(), CodecErrorKind::InvalidField);
    assert_eq!(buffer, b"kept");
}

#[test]
fn encoding_is_deterministic() {
    assert_eq!(
        encode(&fixtures::dead_letter()),
        encode(&fixtures::dead_letter())
    );
}

#[test]
fn dead_letter_keeps_a_whole_frame_of_the_largest_size() {
    let original = vec![0xab; FRAME_BYTES_MAX];
    let (kept, size) = DeadLetter::keep_original(&original);
    let letter = DeadLetter {
        original: kept,
        original_size_bytes: size,
        ..fixtures::dead_letter()
    };
    let frame = round_trip(&letter);
    assert!(frame.len() > FRAME_BYTES_MAX);
}

#[test]
fn dead_letter_cuts_an_oversized_original_and_keeps_its_length() {
    let original = vec![0xab; FRAME_BYTES_MAX * 3];
    let (kept, size) = DeadLetter::keep_original(&original);
    assert_eq!(kept.len(), DEAD_LETTER_ORIGINAL_BYTES_MAX);
    assert_eq!(size, (FRAME_BYTES_MAX * 3) as i64);
}
