//! Schema evolution: readers and writers of neighbouring versions of a message understand each
//! other. Version 2 of `PaymentOutcome` exists only in this crate's tests (schema
//! `testdata/payment_outcome_v2.avsc`, registered under a test-only id); it adds one field with
//! a default, the only change the evolution rules allow.

use apache_avro::{Schema, schema_compatibility::SchemaCompatibility};
use serde::{Deserialize, Serialize};

use crate::{
    CodecErrorKind, Message, OutcomeStatus, PartyRef, PaymentId, PaymentOutcome,
    codec::sealed::Sealed, decode, encode, error::CodecError, registry,
};

/// Test-only schema id of `PaymentOutcome` v2; far from the production ids.
pub(crate) const PAYMENT_OUTCOME_V2_ID: u32 = 900_004;

/// `PaymentOutcome` version 2: version 1 plus `settlement_window_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "PaymentOutcome")]
struct PaymentOutcomeV2 {
    #[serde(flatten)]
    v1: PaymentOutcome,
    settlement_window_id: Option<i64>,
}

impl Sealed for PaymentOutcomeV2 {}

impl Message for PaymentOutcomeV2 {
    const NAME: &'static str = "PaymentOutcome";
    const SCHEMA_ID: u32 = PAYMENT_OUTCOME_V2_ID;

    fn validate(&self) -> Result<(), CodecError> {
        self.v1.validate()
    }
}

fn outcome_v1() -> PaymentOutcome {
    PaymentOutcome {
        payment_id: PaymentId::from_bytes([7; 16]),
        envelope_digest: crate::Digest32::from_bytes([8; 32]),
        status: OutcomeStatus::Completed,
        reason_code: None,
        detail: "cleared".to_owned(),
        payer: PartyRef {
            institution_id: "OI-ICBC".to_owned(),
            wallet_id: "0021000012345678".to_owned(),
        },
        payee: PartyRef {
            institution_id: "OI-BOC".to_owned(),
            wallet_id: "0031000087654321".to_owned(),
        },
        amount_fen: 12_345,
        currency: "CNY".to_owned(),
        decided_at_ms: 1_728_000_000_123,
        decided_by: "OI-BOC".to_owned(),
        stage: "clearing".to_owned(),
        institution_certificate: vec![0x30, 0x82, 0x01, 0x00],
        institution_signature: vec![9; 64],
    }
}

#[test]
fn reader_on_v2_fills_the_default_for_v1_data() {
    let frame = encode(&outcome_v1()).expect("v1 encodes");
    let read: PaymentOutcomeV2 = decode(&frame).expect("v2 reads v1");
    assert_eq!(read.v1, outcome_v1());
    assert_eq!(read.settlement_window_id, None);
}

#[test]
fn reader_on_v1_skips_the_field_added_in_v2() {
    let v2 = PaymentOutcomeV2 {
        v1: outcome_v1(),
        settlement_window_id: Some(28_800),
    };
    let frame = encode(&v2).expect("v2 encodes");
    assert_eq!(&frame[1..5], &PAYMENT_OUTCOME_V2_ID.to_be_bytes());
    let read: PaymentOutcome = decode(&frame).expect("v1 reads v2");
    assert_eq!(read, outcome_v1());
}

#[test]
fn v2_frame_is_still_rejected_as_another_message() {
    let frame = encode(&PaymentOutcomeV2 {
        v1: outcome_v1(),
        settlement_window_id: None,
    })
    .expect("v2 encodes");
    let error = decode::<crate::ClearingMessage>(&frame).expect_err("not a clearing message");
    assert_eq!(error.kind(), CodecErrorKind::WrongMessage);
}

#[test]
fn contract_rules_apply_to_resolved_data() {
    let mut bad = outcome_v1();
    bad.amount_fen = -1;
    let v2 = PaymentOutcomeV2 {
        v1: bad,
        settlement_window_id: None,
    };
    // Written without validation, as a broken producer in another language might.
    let compiled = registry::compiled(PAYMENT_OUTCOME_V2_ID).expect("v2 registered");
    let mut frame = vec![0];
    frame.extend_from_slice(&PAYMENT_OUTCOME_V2_ID.to_be_bytes());
    compiled.writer.write_ser(&mut frame, &v2).expect("writes");
    let error = decode::<PaymentOutcome>(&frame).expect_err("negative amount");
    assert_eq!(error.kind(), CodecErrorKind::InvalidField);
    assert!(
        error.detail().starts_with("amount_fen"),
        "{}",
        error.detail()
    );
}

#[test]
fn all_versions_of_a_message_are_mutually_readable() {
    let schemas: Vec<(&registry::SchemaEntry, Schema)> = registry::SCHEMA_TABLE
        .iter()
        .chain(registry::TEST_TABLE.iter())
        .map(|e| (e, Schema::parse_str(e.avsc).expect("parses")))
        .collect();
    let mut pairs = 0;
    for (a, schema_a) in &schemas {
        for (b, schema_b) in &schemas {
            if a.message == b.message && a.id < b.id {
                SchemaCompatibility::mutual_read(schema_a, schema_b).unwrap_or_else(|e| {
                    panic!(
                        "{} v{} and v{} disagree: {e}",
                        a.message, a.version, b.version
                    )
                });
                pairs += 1;
            }
        }
    }
    assert!(pairs >= 1, "at least the test version pair is checked");
}

#[test]
fn renaming_a_field_breaks_compatibility() {
    // The rule "never rename" is not a style choice: a renamed field without a default is
    // unreadable by the old reader.
    let v1 = PaymentOutcome::schema();
    let renamed = registry::SCHEMA_TABLE[3]
        .avsc
        .replace("\"decided_by\"", "\"decider\"");
    let renamed = Schema::parse_str(&renamed).expect("renamed schema parses");
    assert!(SchemaCompatibility::can_read(&renamed, v1).is_err());
}
