//! Property tests: random and mutated frames never make decoding panic, and any valid message
//! round-trips.
//!
//! Mutations model what a bus can deliver from a broken or hostile producer: flipped bits,
//! truncation, corrupted length prefixes, swapped schema ids, inserted and appended bytes.

mod fixtures;

use std::sync::LazyLock;

use dcpipe_schemas::*;
use proptest::{collection::vec, prelude::*, sample::Index};

static FRAMES: LazyLock<Vec<(&'static str, Vec<u8>)>> = LazyLock::new(fixtures::all_frames);

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Truncate(Index),
    /// Overwrites bytes with a long varint, as a corrupted length prefix or count.
    CorruptVarint(Index, i64),
    SwapId(u32),
    Insert(Index, u8),
    Append(Vec<u8>),
    SetByte(Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), any::<i64>()).prop_map(|(i, v)| Mutation::CorruptVarint(i, v)),
        1 => prop_oneof![0u32..20, Just(900_004), any::<u32>()].prop_map(Mutation::SwapId),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
    ]
}

fn zigzag_varint(value: i64) -> Vec<u8> {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (raw & 0x7f) as u8;
        raw >>= 7;
        if raw == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn apply(frame: &mut Vec<u8>, mutation: &Mutation) {
    if frame.is_empty() {
        return;
    }
    match mutation {
        Mutation::FlipBit(at, bit) => {
            let at = at.index(frame.len());
            frame[at] ^= 1 << bit;
        }
        Mutation::Truncate(at) => frame.truncate(at.index(frame.len())),
        Mutation::CorruptVarint(at, value) => {
            // Past the header, where the datum's lengths and counts live.
            if frame.len() > HEADER_BYTES {
                let at = HEADER_BYTES + at.index(frame.len() - HEADER_BYTES);
                let bytes = zigzag_varint(*value);
                let end = (at + bytes.len()).min(frame.len());
                frame.splice(at..end, bytes);
            }
        }
        Mutation::SwapId(id) => {
            if frame.len() >= HEADER_BYTES {
                frame[1..HEADER_BYTES].copy_from_slice(&id.to_be_bytes());
            }
        }
        Mutation::Insert(at, byte) => {
            let at = at.index(frame.len() + 1);
            frame.insert(at, *byte);
        }
        Mutation::Append(bytes) => frame.extend_from_slice(bytes),
        Mutation::SetByte(at, byte) => {
            let at = at.index(frame.len());
            frame[at] = *byte;
        }
    }
}

/// Decoding `frame` as `name` either succeeds (and then round-trips, checked inside
/// `decode_as`) or fails with one of the codec's reason codes.
fn assert_typed_outcome(name: &str, frame: &[u8]) -> Result<(), TestCaseError> {
    if let Err(error) = fixtures::decode_as(name, frame) {
        prop_assert!(CodecErrorKind::ALL.contains(&error.kind()));
        prop_assert!(error.reason_code().starts_with("schema."));
        prop_assert!(!error.detail().is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_frames_decode_or_fail_typed(
        pick in any::<Index>(),
        as_other in any::<Index>(),
        decode_as_other in proptest::bool::weighted(0.2),
        mutations in vec(mutation(), 1..4),
    ) {
        let (name, frame) = &FRAMES[pick.index(FRAMES.len())];
        let mut mutated = frame.clone();
        for mutation in &mutations {
            apply(&mut mutated, mutation);
        }
        let target = if decode_as_other { FRAMES[as_other.index(FRAMES.len())].0 } else { name };
        assert_typed_outcome(target, &mutated)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_behind_a_valid_header_fail_typed(
        pick in any::<Index>(),
        datum in vec(any::<u8>(), 0..2_048),
    ) {
        let (name, frame) = &FRAMES[pick.index(FRAMES.len())];
        let mut random = frame[..HEADER_BYTES].to_vec();
        random.extend_from_slice(&datum);
        assert_typed_outcome(name, &random)?;
    }

    #[test]
    fn valid_frames_round_trip_byte_for_byte(pick in any::<Index>()) {
        let (name, frame) = &FRAMES[pick.index(FRAMES.len())];
        let again = fixtures::decode_as(name, frame);
        prop_assert_eq!(again.as_ref(), Ok(frame));
    }
}

// --- random valid content ---

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

fn party() -> impl Strategy<Value = PartyRef> {
    (id(), id()).prop_map(|(institution_id, wallet_id)| PartyRef {
        institution_id,
        wallet_id,
    })
}

fn bytes(min: usize, max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), min..=max)
}

prop_compose! {
    fn envelope()(
        payment_id in any::<[u8; 16]>(),
        payer in party(),
        payee in party(),
        amount_fen in 1..=AMOUNT_FEN_MAX,
        created_at_ms in 0..i64::MAX,
        channel in prop_oneof![Just(Channel::Nfc), Just(Channel::Bluetooth), Just(Channel::Remote)],
        nonces in any::<([u8; 32], [u8; 32])>(),
        payer_certificate in bytes(1, 1_200),
        payee_certificate in bytes(1, 1_200),
        factor in any::<[u8; 32]>(),
        payee_signature in bytes(0, 72),
        pin_proof in proptest::option::of((bytes(1, 600), 0..i64::MAX, bytes(0, 72))),
        payer_signature in bytes(0, 72),
    ) -> TransactionEnvelope {
        TransactionEnvelope {
            payment_id: PaymentId::from_bytes(payment_id),
            payer,
            payee,
            amount_fen,
            currency: "CNY".to_owned(),
            created_at_ms,
            channel,
            payer_nonce: Nonce::from_bytes(nonces.0),
            payee_nonce: Nonce::from_bytes(nonces.1),
            payer_certificate,
            payee_certificate,
            transaction_factor: Digest32::from_bytes(factor),
            payee_signature,
            pin_proof: pin_proof.map(|(secure_element_certificate, verified_at_ms, signature)| PinProof {
                secure_element_certificate,
                verified_at_ms,
                signature,
            }),
            payer_signature,
        }
    }
}

prop_compose! {
    fn telemetry()(
        vehicle_id in id(),
        vehicle_class in 1..=VEHICLE_CLASSES_MAX as i32,
        wallet in party(),
        sequence in 0..i64::MAX,
        latitude_e7 in -LATITUDE_E7_MAX..=LATITUDE_E7_MAX,
        longitude_e7 in -LONGITUDE_E7_MAX..=LONGITUDE_E7_MAX,
        speed_cm_per_s in 0..=SPEED_CM_PER_S_MAX,
        heading_cdeg in 0..=HEADING_CDEG_MAX,
        recorded_at_ms in 0..i64::MAX,
        certificate in bytes(1, 1_000),
        signature in bytes(0, 72),
    ) -> VehicleTelemetry {
        VehicleTelemetry {
            vehicle_id, vehicle_class, wallet, sequence, latitude_e7, longitude_e7,
            speed_cm_per_s, heading_cdeg, recorded_at_ms, certificate, signature,
        }
    }
}

prop_compose! {
    fn instruction()(
        nets in vec((0..AMOUNT_FEN_MAX, 0..AMOUNT_FEN_MAX, 0..10_000i64), 1..40),
        late in (0..1_000i64, 0..AMOUNT_FEN_MAX),
    ) -> SettlementInstruction {
        // Balance the last position so that the nets sum to zero.
        let mut positions: Vec<SettlementPosition> = nets
            .iter()
            .enumerate()
            .map(|(i, &(debit_fen, credit_fen, clearing_count))| SettlementPosition {
                clearing_count,
                ..fixtures::settlement_position(&format!("OI-{i}"), debit_fen, credit_fen)
            })
            .collect();
        let sum: i64 = positions.iter().map(|p| p.net_fen).sum();
        let last = positions.len();
        positions.push(fixtures::settlement_position(
            &format!("OI-{last}"),
            sum.max(0),
            (-sum).max(0),
        ));
        SettlementInstruction {
            positions,
            late_clearing_count: late.0,
            late_amount_fen: late.1,
            ..fixtures::settlement_instruction()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_valid_envelope_round_trips(message in envelope()) {
        let frame = encode(&message).expect("valid envelope encodes");
        prop_assert_eq!(decode::<TransactionEnvelope>(&frame), Ok(message));
    }

    #[test]
    fn any_valid_telemetry_round_trips(message in telemetry()) {
        let frame = encode(&message).expect("valid telemetry encodes");
        prop_assert_eq!(decode::<VehicleTelemetry>(&frame), Ok(message));
    }

    #[test]
    fn any_balanced_instruction_round_trips(message in instruction()) {
        let frame = encode(&message).expect("balanced instruction encodes");
        prop_assert_eq!(decode::<SettlementInstruction>(&frame), Ok(message));
    }
}

/// Every single-bit flip of every byte of every fixture frame, exhaustively: each decodes or
/// fails typed, and together they reach every datum-level rejection.
#[test]
fn every_single_bit_flip_decodes_or_fails_typed() {
    use std::collections::BTreeMap;
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (name, frame) in FRAMES.iter() {
        for at in 0..frame.len() {
            for bit in 0..8 {
                let mut flipped = frame.clone();
                flipped[at] ^= 1 << bit;
                let outcome = match fixtures::decode_as(name, &flipped) {
                    Ok(_) => "ok",
                    Err(error) => error.reason_code(),
                };
                *outcomes.entry(outcome).or_default() += 1;
            }
        }
    }
    for expected in [
        "ok",
        "schema.bad_magic",
        "schema.unknown_id",
        "schema.wrong_message",
        "schema.truncated",
        "schema.invalid_datum",
        "schema.trailing_bytes",
        "schema.invalid_field",
    ] {
        assert!(
            outcomes.contains_key(expected),
            "no flip gave {expected}: {outcomes:?}"
        );
    }
}
