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
    offline_payment_round_trips: fixtures::offline_payment();
    empty_key_set_round_trips: fixtures::wallet_key_set_v1();
    rejected_sync_result_round_trips: WalletSyncResult {
        status: SyncStatus::Rejected,
        reason_code: Some("wallet.chain_broken".to_owned()),
        counter: 0,
        chain_head: None,
        ..fixtures::wallet_sync_result()
    };
    offline_limit_change_round_trips: RemoteControlCommand {
        limits: None,
        ..fixtures::remote_control_command()
    };
    vehicle_telemetry_batch_round_trips: fixtures::vehicle_telemetry_batch();
    vehicle_session_event_round_trips: fixtures::vehicle_session_event();
    vehicle_enter_event_round_trips: VehicleSessionEvent {
        event: SessionEventKind::Enter,
        occurred_at_ms: fixtures::vehicle_session_event().entered_at_ms,
        ..fixtures::vehicle_session_event()
    };
    removed_service_entity_round_trips: ServiceEntity {
        removed: true,
        ..fixtures::service_entity()
    };
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
    let mut letter = DeadLetter {
        original: vec![0xab; FRAME_BYTES_MAX],
        ..fixtures::dead_letter()
    };
    letter.truncate_to_limits();
    assert_eq!(letter.original.len(), FRAME_BYTES_MAX);
    assert_eq!(letter.original_size_bytes, FRAME_BYTES_MAX as i64);
    let frame = round_trip(&letter);
    assert!(frame.len() > FRAME_BYTES_MAX);
}

#[test]
fn dead_letter_of_oversized_input_is_cut_to_fit_and_keeps_the_length() {
    // Every field at or beyond its limit: after the cut the letter must still encode.
    let mut letter = DeadLetter {
        original: vec![0xab; FRAME_BYTES_MAX * 3],
        subject: "s".repeat(SUBJECT_BYTES_MAX * 2),
        stage: "s".repeat(ID_CHARS_MAX),
        reason_code: "r".repeat(REASON_CODE_CHARS_MAX),
        detail: "é".repeat(DETAIL_BYTES_MAX),
        headers: (0..HEADERS_MAX * 2)
            .map(|i| {
                let name = format!("h{i:03}{}", "n".repeat(HEADER_BYTES_MAX * 2));
                (name, "v".repeat(HEADER_BYTES_MAX * 2))
            })
            .chain([(String::new(), "dropped".to_owned())])
            .collect(),
        ..fixtures::dead_letter()
    };
    letter.truncate_to_limits();
    assert_eq!(letter.original.len(), DEAD_LETTER_ORIGINAL_BYTES_MAX);
    assert_eq!(letter.original_size_bytes, (FRAME_BYTES_MAX * 3) as i64);
    assert_eq!(letter.subject.len(), SUBJECT_BYTES_MAX);
    assert_eq!(letter.detail.len(), DETAIL_BYTES_MAX);
    assert_eq!(letter.headers.len(), HEADERS_MAX);
    assert!(letter.headers.keys().all(|name| name.starts_with('h')));
    // 64 KiB original plus 32 cut headers of 1 KiB still fit the dead-letter limit.
    let frame = round_trip(&letter);
    assert!(frame.len() <= DEAD_LETTER_FRAME_BYTES_MAX);
}

// With every collection and byte string at its limit, each message still fits its frame: the
// limits are consistent, so a valid message is never refused for its size.

fn longest_id(i: usize) -> String {
    format!("{i:04}{}", "9".repeat(ID_CHARS_MAX - 4))
}

fn largest_certificate() -> Vec<u8> {
    fixtures::certificate(1, CERTIFICATE_BYTES_MAX)
}

#[test]
fn largest_envelope_fits_its_frame() {
    let envelope = TransactionEnvelope {
        payer: PartyRef {
            institution_id: longest_id(1),
            wallet_id: longest_id(2),
        },
        payee: PartyRef {
            institution_id: longest_id(3),
            wallet_id: longest_id(4),
        },
        amount_fen: AMOUNT_FEN_MAX,
        payer_certificate: largest_certificate(),
        payee_certificate: largest_certificate(),
        payee_signature: vec![7; SIGNATURE_BYTES_MAX],
        pin_proof: Some(PinProof {
            secure_element_certificate: largest_certificate(),
            verified_at_ms: i64::MAX,
            signature: vec![7; SIGNATURE_BYTES_MAX],
        }),
        payer_signature: vec![7; SIGNATURE_BYTES_MAX],
        ..fixtures::transaction_envelope()
    };
    let frame = round_trip(&envelope);
    assert!(frame.len() < FRAME_BYTES_MAX / 4, "{} bytes", frame.len());
}

#[test]
fn largest_settlement_instruction_fits_its_frame() {
    let positions = (0..POSITIONS_MAX)
        .map(|i| {
            let mut position = fixtures::settlement_position(&longest_id(i), i64::MAX, i64::MAX);
            position.window_id = i64::MAX;
            position.window_start_at_ms = i64::MAX - 1;
            position.window_end_at_ms = i64::MAX;
            position.clearing_count = i64::MAX;
            position
        })
        .collect();
    let instruction = SettlementInstruction {
        window_id: i64::MAX,
        window_start_at_ms: i64::MAX - 1,
        window_end_at_ms: i64::MAX,
        positions,
        late_clearing_count: i64::MAX,
        late_amount_fen: i64::MAX,
        issued_at_ms: i64::MAX,
        issuer_certificate: largest_certificate(),
        signature: vec![7; SIGNATURE_BYTES_MAX],
        ..fixtures::settlement_instruction()
    };
    round_trip(&instruction);
}

#[test]
fn largest_revocation_update_fits_its_frame() {
    let revoked = (0..REVOKED_PER_UPDATE_MAX)
        .map(|i| RevokedCertificate {
            serial: vec![(i % 251) as u8 + 1; SERIAL_BYTES_MAX],
            revoked_at_ms: i64::MAX,
            reason: "privilegeWithdrawn".to_owned(),
        })
        .collect();
    let update = RevocationUpdate {
        revoked,
        issuer_certificate: largest_certificate(),
        signature: vec![7; SIGNATURE_BYTES_MAX],
        ..fixtures::revocation_update()
    };
    round_trip(&update);
}

#[test]
fn largest_blacklist_command_fits_its_frame() {
    let command = RemoteControlCommand {
        blacklist: (0..BLACKLIST_ENTRIES_MAX).map(longest_id).collect(),
        institution_certificate: largest_certificate(),
        institution_signature: vec![7; SIGNATURE_BYTES_MAX],
        ..fixtures::blacklist_command()
    };
    round_trip(&command);
}

#[test]
fn largest_service_entity_fits_its_frame() {
    let entity = ServiceEntity {
        name: "站".repeat(NAME_BYTES_MAX / 3),
        geofence: vec![
            GeoPoint {
                latitude_e7: -LATITUDE_E7_MAX,
                longitude_e7: -LONGITUDE_E7_MAX
            };
            GEOFENCE_POINTS_MAX
        ],
        tariff: Tariff {
            toll: Some(TollTariff {
                fen_by_vehicle_class: vec![AMOUNT_FEN_MAX; VEHICLE_CLASSES_MAX],
            }),
            ..fixtures::service_entity().tariff
        },
        certificate: vec![0x30; CERTIFICATE_BYTES_MAX],
        signature: vec![0x5a; SIGNATURE_BYTES_MAX],
        ..fixtures::service_entity()
    };
    round_trip(&entity);
}

fn largest_offline_payment_frame(counter: i64) -> Frame {
    let payment = OfflinePayment {
        payer: fixtures::party(&longest_id(1), &longest_id(2)),
        payee: fixtures::party(&longest_id(3), &longest_id(4)),
        amount_fen: AMOUNT_FEN_MAX,
        counter,
        paid_at_ms: i64::MAX,
        payer_certificate: largest_certificate(),
        signature: vec![7; SIGNATURE_BYTES_MAX],
        ..fixtures::offline_payment()
    };
    Frame(round_trip(&payment))
}

#[test]
fn largest_key_set_fits_its_frame() {
    let records: Vec<Frame> = (1..=OFFLINE_PAYMENTS_PER_KEY_SET_MAX as i64)
        .map(|counter| largest_offline_payment_frame(i64::MAX - counter))
        .collect();
    assert!(
        records
            .iter()
            .all(|r| r.as_bytes().len() < FRAME_BYTES_MAX / 8)
    );
    let set = WalletKeySet {
        wallet_id: longest_id(5),
        institution_id: longest_id(6),
        key_version: i32::MAX,
        public_key: vec![4; PUBLIC_KEY_BYTES_MAX],
        last_sync_at_ms: i64::MAX,
        satellite_at_ms: i64::MAX,
        offline_duration_ms: i64::MAX,
        offline_payments: OfflinePaymentSummary {
            count: i64::MAX,
            total_fen: i64::MAX,
            chain_head: Digest32::from_bytes([9; 32]),
        },
        certificate: largest_certificate(),
        signature: vec![7; SIGNATURE_BYTES_MAX],
        payments: records.clone(),
        received: records,
        purse_fen: AMOUNT_FEN_MAX,
        commands_applied_through: i64::MAX,
        anchors_digest: Some(Digest32::from_bytes([3; 32])),
    };
    let frame = round_trip(&set);
    assert!(
        frame.len() <= WALLET_KEY_SET_FRAME_BYTES_MAX,
        "{} bytes",
        frame.len()
    );
}

#[test]
fn largest_sync_result_fits_its_frame() {
    let result = WalletSyncResult {
        wallet_id: longest_id(1),
        institution_id: longest_id(2),
        key_version: i32::MAX,
        status: SyncStatus::Rejected,
        reason_code: Some("w".repeat(REASON_CODE_CHARS_MAX - 2) + ".x"),
        actions: vec![
            WalletAction::ClockResync,
            WalletAction::KeyRotation,
            WalletAction::Lock,
            WalletAction::BlacklistUpdate,
        ],
        platform_time_at_ms: i64::MAX,
        institution_certificate: largest_certificate(),
        institution_signature: vec![7; SIGNATURE_BYTES_MAX],
        key_set_digest: Some(Digest32::from_bytes([1; 32])),
        counter: i64::MAX,
        chain_head: Some(Digest32::from_bytes([2; 32])),
        purse_fen: AMOUNT_FEN_MAX,
        offline_limits: Some(OfflineLimits {
            purse_limit_fen: AMOUNT_FEN_MAX,
            single_payment_limit_fen: AMOUNT_FEN_MAX,
            cumulative_limit_fen: AMOUNT_FEN_MAX,
            payments_per_sync_max: OFFLINE_PAYMENTS_PER_KEY_SET_MAX as i64,
            offline_duration_ms_max: i64::MAX,
        }),
        blacklist: (0..BLACKLIST_ENTRIES_MAX).map(longest_id).collect(),
        trust_anchors: (0..TRUST_ANCHORS_MAX)
            .map(|_| Der(largest_certificate()))
            .collect(),
        refused: (0..REFUSED_PAYMENTS_MAX)
            .map(|i| RefusedPayment {
                payment_id: PaymentId::from_bytes([i as u8; 16]),
                reason_code: "r".repeat(REASON_CODE_CHARS_MAX - 2) + ".x",
            })
            .collect(),
        pending_commands: i64::MAX,
    };
    let frame = round_trip(&result);
    assert!(
        frame.len() <= WALLET_SYNC_RESULT_FRAME_BYTES_MAX,
        "{} bytes",
        frame.len()
    );
}

#[test]
fn largest_telemetry_batch_fits_its_frame() {
    let fix = TelemetryFix {
        latitude_e7: -LATITUDE_E7_MAX,
        longitude_e7: -LONGITUDE_E7_MAX,
        horizontal_accuracy_cm: Some(HORIZONTAL_ACCURACY_CM_MAX),
        speed_cm_per_s: SPEED_CM_PER_S_MAX,
        heading_cdeg: HEADING_CDEG_MAX,
        recorded_at_ms: i64::MAX - TELEMETRY_REPORTS_PER_BATCH_MAX as i64,
    };
    let batch = VehicleTelemetryBatch {
        vehicle_id: "V".repeat(ID_CHARS_MAX),
        wallet: fixtures::party(&"I".repeat(ID_CHARS_MAX), &"W".repeat(ID_CHARS_MAX)),
        first_sequence: i64::MAX - TELEMETRY_REPORTS_PER_BATCH_MAX as i64,
        reports: (0..TELEMETRY_REPORTS_PER_BATCH_MAX as i64)
            .map(|i| TelemetryFix {
                recorded_at_ms: fix.recorded_at_ms + i,
                ..fix
            })
            .collect(),
        certificate: vec![0x30; CERTIFICATE_BYTES_MAX],
        signature: vec![0x5a; SIGNATURE_BYTES_MAX],
        ..fixtures::vehicle_telemetry_batch()
    };
    let frame = round_trip(&batch);
    assert!(frame.len() <= FRAME_BYTES_MAX, "{} bytes", frame.len());
}
