//! Every way a frame or a message can be wrong is rejected with its own stable reason code.

mod fixtures;

use dcpipe_schemas::{apache_avro::writer::datum::GenericDatumWriter, *};

fn outcome_frame() -> Vec<u8> {
    encode(&fixtures::payment_outcome()).expect("fixture encodes")
}

fn expect_reason<M: Message + std::fmt::Debug>(frame: &[u8], reason: &str) -> CodecError {
    let error = decode::<M>(frame).expect_err("frame must be rejected");
    assert_eq!(error.reason_code(), reason, "{error}");
    error
}

/// A frame of `message` written with schema `id` without the contract checks, as a broken
/// producer in another language could write it.
fn unchecked_frame<M: Message>(message: &M) -> Vec<u8> {
    let writer = GenericDatumWriter::builder(M::schema())
        .human_readable(false)
        .build()
        .expect("writer");
    let mut frame = vec![MAGIC_BYTE];
    frame.extend_from_slice(&M::SCHEMA_ID.to_be_bytes());
    writer.write_ser(&mut frame, message).expect("writes");
    frame
}

// --- frame and header ---

#[test]
fn rejects_empty_frame() {
    expect_reason::<PaymentOutcome>(&[], "schema.truncated");
}

#[test]
fn rejects_frame_shorter_than_header() {
    expect_reason::<PaymentOutcome>(&[0, 0, 0, 4], "schema.truncated");
    assert_eq!(
        schema_id(&[0, 0, 0, 4]).map_err(|e| e.kind()),
        Err(CodecErrorKind::Truncated)
    );
}

#[test]
fn rejects_wrong_magic_byte() {
    let mut frame = outcome_frame();
    frame[0] = 1;
    expect_reason::<PaymentOutcome>(&frame, "schema.bad_magic");
    assert_eq!(
        schema_id(&frame).map_err(|e| e.kind()),
        Err(CodecErrorKind::BadMagic)
    );
}

#[test]
fn rejects_unknown_schema_id() {
    let mut frame = outcome_frame();
    frame[1..5].copy_from_slice(&99u32.to_be_bytes());
    let error = expect_reason::<PaymentOutcome>(&frame, "schema.unknown_id");
    assert!(error.detail().contains("99"), "{error}");
    assert_eq!(schema_id(&frame), Ok(99));
}

#[test]
fn rejects_schema_id_of_another_message() {
    let frame = encode(&fixtures::clearing_message()).expect("encodes");
    let error = expect_reason::<PaymentOutcome>(&frame, "schema.wrong_message");
    assert!(error.detail().contains("ClearingMessage"), "{error}");
}

#[test]
fn rejects_frame_over_the_limit() {
    let mut frame = outcome_frame();
    frame.resize(FRAME_BYTES_MAX + 1, 0);
    expect_reason::<PaymentOutcome>(&frame, "schema.too_large");
}

#[test]
fn dead_letter_limit_is_larger_but_still_enforced() {
    let mut frame = encode(&fixtures::dead_letter()).expect("encodes");
    frame.resize(DEAD_LETTER_FRAME_BYTES_MAX + 1, 0);
    expect_reason::<DeadLetter>(&frame, "schema.too_large");
}

// --- datum ---

#[test]
fn rejects_truncated_datum() {
    let frame = outcome_frame();
    for cut in [
        HEADER_BYTES,
        HEADER_BYTES + 1,
        frame.len() / 2,
        frame.len() - 1,
    ] {
        expect_reason::<PaymentOutcome>(&frame[..cut], "schema.truncated");
    }
}

#[test]
fn rejects_trailing_bytes() {
    let mut frame = outcome_frame();
    frame.push(0);
    expect_reason::<PaymentOutcome>(&frame, "schema.trailing_bytes");
}

#[test]
fn rejects_corrupted_length_prefix_before_reading_it() {
    // The payer certificate's length sits right after the fixed-size and short fields; find it
    // by its value (512, zig-zag 1024 = 0x80 0x08) and claim 2^62 bytes instead.
    let mut frame = encode(&fixtures::transaction_envelope()).expect("encodes");
    let at = frame
        .windows(2)
        .position(|w| w == [0x80, 0x08])
        .expect("length prefix of the 512-byte certificate");
    let huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
    frame.splice(at..at + 2, huge);
    let error = expect_reason::<TransactionEnvelope>(&frame, "schema.truncated");
    // The claimed length (2^62) is refused as such, before any buffer of that size exists.
    assert!(
        error.detail().contains("4611686018427387904 bytes"),
        "{error}"
    );
}

#[test]
fn rejects_enum_symbol_out_of_range() {
    // OutcomeStatus follows the 16-byte payment id and the 32-byte envelope digest: index 5
    // (zig-zag 10) does not exist.
    let mut frame = outcome_frame();
    frame[HEADER_BYTES + 48] = 10;
    let error = expect_reason::<PaymentOutcome>(&frame, "schema.invalid_datum");
    assert!(error.detail().contains("enum"), "{error}");
}

#[test]
fn rejects_string_that_is_not_utf8() {
    let mut frame = encode(&fixtures::settlement_position("OI-ICBC", 1, 1)).expect("encodes");
    let at = frame
        .windows(7)
        .position(|w| w == b"OI-ICBC")
        .expect("institution id bytes");
    frame[at] = 0xff;
    expect_reason::<SettlementPosition>(&frame, "schema.invalid_datum");
}

#[test]
fn rejects_negative_length() {
    // The detail string of the outcome starts after id (16), digest (32), status (1) and null
    // reason (1).
    let mut frame = outcome_frame();
    frame[HEADER_BYTES + 50] = 0x03; // zig-zag -2
    expect_reason::<PaymentOutcome>(&frame, "schema.invalid_datum");
}

// --- contract rules, on decode ---

#[test]
fn decode_rejects_negative_amount_from_another_producer() {
    let mut outcome = fixtures::payment_outcome();
    outcome.amount_fen = -100;
    let error = expect_reason::<PaymentOutcome>(&unchecked_frame(&outcome), "schema.invalid_field");
    assert!(error.detail().starts_with("amount_fen"), "{error}");
}

#[test]
fn decode_rejects_positions_that_do_not_sum_to_zero() {
    let mut instruction = fixtures::settlement_instruction();
    instruction.positions.pop();
    let error = expect_reason::<SettlementInstruction>(
        &unchecked_frame(&instruction),
        "schema.invalid_field",
    );
    assert!(error.detail().contains("sums to -15000"), "{error}");
}

// --- contract rules, on encode ---

fn encode_error<M: Message>(message: &M) -> CodecError {
    let error = encode(message).expect_err("message must be refused");
    assert_eq!(error.kind(), CodecErrorKind::InvalidField, "{error}");
    error
}

#[test]
fn refuses_zero_amount() {
    let mut envelope = fixtures::transaction_envelope();
    envelope.amount_fen = 0;
    assert!(encode_error(&envelope).detail().starts_with("amount_fen"));
}

#[test]
fn refuses_amount_above_the_limit() {
    let mut envelope = fixtures::transaction_envelope();
    envelope.amount_fen = AMOUNT_FEN_MAX + 1;
    assert!(encode_error(&envelope).detail().starts_with("amount_fen"));
}

#[test]
fn refuses_id_longer_than_the_limit() {
    let mut envelope = fixtures::transaction_envelope();
    envelope.payer.wallet_id = "7".repeat(ID_CHARS_MAX + 1);
    assert!(
        encode_error(&envelope)
            .detail()
            .starts_with("payer.wallet_id")
    );
}

#[test]
fn refuses_id_with_subject_separator() {
    let mut outcome = fixtures::payment_outcome();
    outcome.decided_by = "OI.BOC".to_owned();
    assert!(encode_error(&outcome).detail().starts_with("decided_by"));
}

#[test]
fn refuses_lower_case_currency() {
    let mut envelope = fixtures::transaction_envelope();
    envelope.currency = "cny".to_owned();
    assert!(encode_error(&envelope).detail().starts_with("currency"));
}

#[test]
fn refuses_certificate_above_the_limit() {
    let mut envelope = fixtures::transaction_envelope();
    envelope.payee_certificate = fixtures::certificate(1, CERTIFICATE_BYTES_MAX + 1);
    assert!(
        encode_error(&envelope)
            .detail()
            .starts_with("payee_certificate")
    );
}

#[test]
fn refuses_signature_above_the_limit() {
    let mut envelope = fixtures::transaction_envelope();
    envelope.payer_signature = vec![0; SIGNATURE_BYTES_MAX + 1];
    assert!(
        encode_error(&envelope)
            .detail()
            .starts_with("payer_signature")
    );
}

#[test]
fn refuses_rejection_without_reason_code() {
    let mut response = fixtures::clearing_response();
    response.reason_code = None;
    assert!(encode_error(&response).detail().starts_with("reason_code"));
}

#[test]
fn refuses_reason_code_on_acceptance() {
    let mut result = fixtures::wallet_sync_result();
    result.reason_code = Some("wallet.locked".to_owned());
    assert!(encode_error(&result).detail().starts_with("reason_code"));
}

#[test]
fn refuses_expiry_before_reservation() {
    let mut clearing = fixtures::clearing_message();
    clearing.expires_at_ms = clearing.reserved_at_ms;
    assert!(
        encode_error(&clearing)
            .detail()
            .starts_with("expires_at_ms")
    );
}

#[test]
fn refuses_net_that_is_not_credit_minus_debit() {
    let mut position = fixtures::settlement_position("OI-ICBC", 100, 300);
    position.net_fen = 100;
    assert!(encode_error(&position).detail().starts_with("net_fen"));
}

#[test]
fn refuses_two_positions_for_one_institution() {
    let mut instruction = fixtures::settlement_instruction();
    instruction.positions = vec![
        fixtures::settlement_position("OI-ICBC", 100, 0),
        fixtures::settlement_position("OI-ICBC", 0, 100),
    ];
    assert!(
        encode_error(&instruction)
            .detail()
            .starts_with("positions[1].institution_id")
    );
}

#[test]
fn refuses_position_of_another_window() {
    let mut instruction = fixtures::settlement_instruction();
    instruction.positions[2].window_id += 1;
    assert!(
        encode_error(&instruction)
            .detail()
            .starts_with("positions[2].window_id")
    );
}

#[test]
fn refuses_latitude_out_of_range() {
    let mut telemetry = fixtures::vehicle_telemetry();
    telemetry.latitude_e7 = LATITUDE_E7_MAX + 1;
    assert!(encode_error(&telemetry).detail().starts_with("latitude_e7"));
}

#[test]
fn refuses_vehicle_class_zero() {
    let mut telemetry = fixtures::vehicle_telemetry();
    telemetry.vehicle_class = 0;
    assert!(
        encode_error(&telemetry)
            .detail()
            .starts_with("vehicle_class")
    );
}

#[test]
fn refuses_geofence_with_two_points() {
    let mut entity = fixtures::service_entity();
    entity.geofence.truncate(2);
    assert!(encode_error(&entity).detail().starts_with("geofence"));
}

#[test]
fn refuses_entity_without_tariff_of_its_kind() {
    let mut entity = fixtures::toll_entity();
    entity.kind = ServiceKind::Fuel;
    assert!(encode_error(&entity).detail().starts_with("tariff"));
}

#[test]
fn refuses_telemetry_batch_whose_times_do_not_rise() {
    let mut batch = fixtures::vehicle_telemetry_batch();
    batch.reports[4].recorded_at_ms = batch.reports[3].recorded_at_ms;
    assert!(
        encode_error(&batch)
            .detail()
            .starts_with("reports[4].recorded_at_ms")
    );
}

#[test]
fn refuses_first_telemetry_batch_with_a_previous_digest() {
    let mut batch = fixtures::vehicle_telemetry_batch();
    batch.first_sequence = 0;
    assert!(
        encode_error(&batch)
            .detail()
            .starts_with("previous_batch_digest")
    );
    batch.previous_batch_digest = Digest32::from_bytes([0; 32]);
    encode(&batch).expect("a first batch chains to zeros");
}

#[test]
fn refuses_empty_and_oversized_telemetry_batches() {
    let mut batch = fixtures::vehicle_telemetry_batch();
    batch.reports.clear();
    assert!(encode_error(&batch).detail().starts_with("reports"));
    let fix = fixtures::vehicle_telemetry_batch().reports[0];
    batch.reports = (0..=TELEMETRY_REPORTS_PER_BATCH_MAX as i64)
        .map(|i| TelemetryFix {
            recorded_at_ms: fix.recorded_at_ms + i,
            ..fix
        })
        .collect();
    assert!(encode_error(&batch).detail().starts_with("reports"));
}

#[test]
fn refuses_telemetry_accuracy_out_of_range() {
    let mut batch = fixtures::vehicle_telemetry_batch();
    batch.reports[1].horizontal_accuracy_cm = Some(HORIZONTAL_ACCURACY_CM_MAX + 1);
    assert!(
        encode_error(&batch)
            .detail()
            .starts_with("reports[1].horizontal_accuracy_cm")
    );
}

#[test]
fn refuses_telemetry_batch_whose_last_sequence_overflows() {
    let mut batch = fixtures::vehicle_telemetry_batch();
    batch.first_sequence = i64::MAX - 3;
    assert!(encode_error(&batch).detail().starts_with("first_sequence"));
}

#[test]
fn refuses_limit_change_without_limits() {
    let mut command = fixtures::remote_control_command();
    command.limits = None;
    command.offline_limits = None;
    assert!(encode_error(&command).detail().starts_with("limits"));
}

#[test]
fn refuses_repeated_wallet_action() {
    let mut result = fixtures::wallet_sync_result();
    result.actions.push(WalletAction::ClockResync);
    assert!(encode_error(&result).detail().starts_with("actions"));
}

#[test]
fn refuses_serial_longer_than_rfc_5280_allows() {
    let mut update = fixtures::revocation_update();
    update.revoked[1].serial = vec![1; SERIAL_BYTES_MAX + 1];
    assert!(
        encode_error(&update)
            .detail()
            .starts_with("revoked[1].serial")
    );
}

#[test]
fn refuses_dead_letter_claiming_fewer_bytes_than_it_keeps() {
    let mut letter = fixtures::dead_letter();
    letter.original_size_bytes = 1;
    assert!(
        encode_error(&letter)
            .detail()
            .starts_with("original_size_bytes")
    );
}

#[test]
fn refuses_offline_payment_counter_zero() {
    let error = encode_error(&OfflinePayment {
        counter: 0,
        ..fixtures::offline_payment()
    });
    assert!(error.detail().starts_with("counter:"), "{error}");
}

#[test]
fn refuses_key_set_with_too_many_records() {
    let error = encode_error(&WalletKeySet {
        received: (1..=OFFLINE_PAYMENTS_PER_KEY_SET_MAX as i64 + 1)
            .map(fixtures::offline_payment_frame)
            .collect(),
        ..fixtures::wallet_key_set()
    });
    assert!(error.detail().starts_with("received:"), "{error}");
}

#[test]
fn refuses_key_set_with_an_empty_record() {
    let error = encode_error(&WalletKeySet {
        payments: vec![Frame(Vec::new())],
        ..fixtures::wallet_key_set()
    });
    assert!(error.detail().starts_with("payments:"), "{error}");
}

#[test]
fn refuses_sync_result_with_a_chain_head_but_no_counter() {
    let error = encode_error(&WalletSyncResult {
        counter: 0,
        ..fixtures::wallet_sync_result()
    });
    assert!(error.detail().starts_with("chain_head:"), "{error}");
}

#[test]
fn refuses_offline_limits_outside_limit_change() {
    let error = encode_error(&RemoteControlCommand {
        command: ControlCommand::Lock,
        limits: None,
        ..fixtures::remote_control_command()
    });
    assert!(error.detail().starts_with("offline_limits:"), "{error}");
}

#[test]
fn refuses_offline_limits_allowing_more_payments_than_a_key_set_carries() {
    let mut limits = fixtures::offline_limits();
    limits.payments_per_sync_max = OFFLINE_PAYMENTS_PER_KEY_SET_MAX as i64 + 1;
    let error = encode_error(&RemoteControlCommand {
        offline_limits: Some(limits),
        ..fixtures::remote_control_command()
    });
    assert!(
        error
            .detail()
            .starts_with("offline_limits.payments_per_sync_max:"),
        "{error}"
    );
}
