//! A stored record as one line of JSON or as a row of a table.
//!
//! The JSON line carries where the record is and what it holds:
//!
//! ```text
//! {"subject":"txn.result.oi01","partition":0,"offset":12,"timestamp_ms":…,"timestamp_rfc3339":"…",
//!  "msg_id":"…","key":"…","headers":{…},"schema_id":4,"message":"PaymentOutcome","version":1,
//!  "value":{…the message, fields as in its schema…}}
//! ```
//!
//! A payload that does not decode gives `"error":{"reason_code":"schema.…","detail":"…"}` and
//! `"bytes":"<hex>"` in place of the message; a dead letter also gives its original decoded
//! (`"original":{"schema_id":…,"message":…,"value":{…}}`) or, when that does not decode, the
//! reason (`"original_error"`): its bytes are in `value.original` either way.

use std::fmt::Write as _;

use dcpipe_connectors::bus::Record;
use dcpipe_schemas::apache_avro::types::Value;
use dcpipe_schemas::{AnyMessage, CodecError, decode_any, json_string, rfc3339_of_ms};

/// What a record's payload holds.
#[derive(Debug)]
pub struct Decoded {
    /// The message, or why it does not decode.
    pub message: Result<AnyMessage, CodecError>,
    /// For a dead letter: its original, or why that does not decode.
    pub original: Option<Result<AnyMessage, CodecError>>,
}

impl Decoded {
    /// Decodes a payload (never fails: what does not decode is kept as an error).
    pub fn of(payload: &[u8]) -> Self {
        let message = decode_any(payload);
        let original = message.as_ref().ok().and_then(|m| {
            (m.entry.message == "DeadLetter").then(|| match m.field("original") {
                Some(Value::Bytes(bytes)) => decode_any(bytes),
                _ => decode_any(&[]),
            })
        });
        Decoded { message, original }
    }

    /// The payment id the record is about: its own, or its original's for a dead letter.
    pub fn payment_id(&self) -> Option<[u8; 16]> {
        let own = self.message.as_ref().ok().and_then(AnyMessage::payment_id);
        own.or_else(|| {
            self.original
                .as_ref()
                .and_then(|o| o.as_ref().ok())
                .and_then(AnyMessage::payment_id)
        })
    }
}

/// One JSON line (without the newline) for `record`.
pub fn json_line(record: &Record, decoded: &Decoded) -> String {
    let mut out = String::with_capacity(512);
    let position = record.position;
    let _ = write!(
        out,
        "{{\"subject\":{},\"partition\":{},\"offset\":{},\"timestamp_ms\":{},\"timestamp_rfc3339\":{}",
        json_string(&record.subject),
        position.partition,
        position.offset,
        record.timestamp_ms,
        json_string(&rfc3339_of_ms(record.timestamp_ms)),
    );
    out.push_str(",\"msg_id\":");
    match &record.msg_id {
        Some(id) => out.push_str(&json_string(id)),
        None => out.push_str("null"),
    }
    out.push_str(",\"key\":");
    match &record.key {
        Some(key) => out.push_str(&json_string(&hex::encode(key))),
        None => out.push_str("null"),
    }
    out.push_str(",\"headers\":{");
    for (i, (name, value)) in record.headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}:{}", json_string(name), json_string(value));
    }
    out.push('}');
    match &decoded.message {
        Ok(message) => {
            out.push(',');
            write_message(&mut out, message);
        }
        Err(error) => {
            out.push(',');
            write_error(&mut out, "error", error);
            let _ = write!(
                out,
                ",\"bytes\":{}",
                json_string(&hex::encode(&record.payload))
            );
        }
    }
    match &decoded.original {
        Some(Ok(original)) => {
            out.push_str(",\"original\":{");
            write_message(&mut out, original);
            out.push('}');
        }
        Some(Err(error)) => {
            out.push(',');
            write_error(&mut out, "original_error", error);
        }
        None => {}
    }
    out.push('}');
    out
}

fn write_message(out: &mut String, message: &AnyMessage) {
    let _ = write!(
        out,
        "\"schema_id\":{},\"message\":{},\"version\":{},\"value\":{}",
        message.entry.id,
        json_string(message.entry.message),
        message.entry.version,
        message.to_json()
    );
}

fn write_error(out: &mut String, name: &str, error: &CodecError) {
    let _ = write!(
        out,
        "\"{name}\":{{\"reason_code\":{},\"detail\":{}}}",
        json_string(error.kind().reason_code()),
        json_string(&error.to_string())
    );
}

/// The header of [`table_row`]'s table.
pub const TABLE_HEADER: &str = "time (UTC)               subject                    position      message                summary";

/// One row of a table for people: time, subject, position, message and the fields that say
/// the most about it (payment id, status, reason, amount, stage, window).
pub fn table_row(record: &Record, decoded: &Decoded) -> String {
    let position = format!("{}/{}", record.position.partition, record.position.offset);
    let (message, summary) = match &decoded.message {
        Ok(message) => {
            let mut summary = summarize(message);
            if let Some(original) = &decoded.original {
                let _ = match original {
                    Ok(o) => write!(summary, " original={} {}", o.entry.message, summarize(o)),
                    Err(e) => write!(summary, " original={}", e.kind().reason_code()),
                };
            }
            (message.entry.message.to_owned(), summary)
        }
        Err(e) => (
            "(undecodable)".to_owned(),
            format!("{} {} bytes", e.kind().reason_code(), record.payload.len()),
        ),
    };
    format!(
        "{:<24} {:<26} {:<13} {:<22} {}",
        rfc3339_of_ms(record.timestamp_ms),
        record.subject,
        position,
        message,
        summary.trim()
    )
}

/// The fields of a message worth a glance, as `name=value` pairs.
fn summarize(message: &AnyMessage) -> String {
    const FIELDS: [&str; 12] = [
        "payment_id",
        "status",
        "reason_code",
        "amount_fen",
        "stage",
        "subject",
        "window_id",
        "institution_id",
        "net_fen",
        "sequence",
        "decided_by",
        "detail",
    ];
    let mut out = String::new();
    for name in FIELDS {
        let Some(value) = message.field(name) else {
            continue;
        };
        let text = match value {
            Value::Union(_, inner) if matches!(**inner, Value::Null) => continue,
            Value::Union(_, inner) => scalar(inner),
            other => scalar(other),
        };
        if let Some(text) = text {
            let _ = write!(out, "{name}={text} ");
        }
    }
    if let Some(Value::Array(positions)) = message.field("positions") {
        let _ = write!(out, "positions={} ", positions.len());
    }
    out.trim_end().to_owned()
}

fn scalar(value: &Value) -> Option<String> {
    Some(match value {
        Value::Int(n) => n.to_string(),
        Value::Long(n) | Value::TimestampMillis(n) => n.to_string(),
        Value::String(s) | Value::Enum(_, s) => {
            if s.chars().count() > 60 {
                format!("{:?}", s.chars().take(60).collect::<String>() + "…")
            } else if s.contains(' ') {
                format!("{s:?}")
            } else {
                s.clone()
            }
        }
        Value::Fixed(16, bytes) => uuid_text(bytes),
        _ => return None,
    })
}

fn uuid_text(bytes: &[u8]) -> String {
    let mut array = [0u8; 16];
    array.copy_from_slice(&bytes[..16]);
    dcpipe_schemas::PaymentId::from_bytes(array).to_string()
}

/// Parses a payment id in UUID text form (or 32 hex digits).
pub fn parse_payment_id(text: &str) -> Result<[u8; 16], String> {
    let digits: String = text.chars().filter(|c| *c != '-').collect();
    let bytes = hex::decode(&digits).map_err(|_| format!("{text:?} is not a UUID"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{text:?} is not a UUID (16 bytes)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use dcpipe_connectors::bus::Position;
    use dcpipe_schemas::{DeadLetter, SettlementPosition, encode};

    fn record(payload: Vec<u8>) -> Record {
        Record {
            subject: "deadletter.payer".into(),
            payload: Bytes::from(payload),
            key: Some(Bytes::from_static(b"k")),
            msg_id: None,
            headers: vec![("dcpipe-dead-letter-stage".into(), "payer".into())],
            position: Position {
                partition: 1,
                offset: 42,
            },
            timestamp_ms: 1_728_000_000_000,
        }
    }

    fn letter(original: Vec<u8>) -> Vec<u8> {
        encode(&DeadLetter {
            original_size_bytes: i64::try_from(original.len()).expect("small"),
            original,
            subject: "txn.submit.oi01".into(),
            stage: "payer".into(),
            reason_code: "schema.bad_magic".into(),
            detail: "bad".into(),
            delivery_count: 1,
            partition: 0,
            offset: 3,
            received_at_ms: 1_728_000_000_000,
            headers: Default::default(),
        })
        .expect("encodes")
    }

    #[test]
    fn a_dead_letter_shows_its_original_decoded_or_why_not() {
        let position = SettlementPosition {
            window_id: 1,
            window_start_at_ms: 0,
            window_end_at_ms: 60_000,
            institution_id: "oi01".into(),
            net_fen: 0,
            debit_fen: 5,
            credit_fen: 5,
            clearing_count: 1,
        };
        let r = record(letter(encode(&position).expect("encodes")));
        let line = json_line(&r, &Decoded::of(&r.payload));
        let value: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(value["message"], "DeadLetter");
        assert_eq!(value["offset"], 42);
        assert_eq!(value["partition"], 1);
        assert_eq!(value["key"], "6b");
        assert_eq!(value["value"]["reason_code"], "schema.bad_magic");
        assert_eq!(value["original"]["message"], "SettlementPosition");
        assert_eq!(value["original"]["value"]["debit_fen"], 5);

        let r = record(letter(b"junk".to_vec()));
        let line = json_line(&r, &Decoded::of(&r.payload));
        let value: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(value["original_error"]["reason_code"], "schema.bad_magic");
        assert_eq!(value["value"]["original"], hex::encode(b"junk"));
        assert!(table_row(&r, &Decoded::of(&r.payload)).contains("original=schema.bad_magic"));
    }

    #[test]
    fn a_payload_that_does_not_decode_is_shown_in_hex() {
        let r = record(b"\x00\x00\x00\x03\xe7".to_vec());
        let decoded = Decoded::of(&r.payload);
        let value: serde_json::Value =
            serde_json::from_str(&json_line(&r, &decoded)).expect("json");
        assert_eq!(value["error"]["reason_code"], "schema.unknown_id");
        assert_eq!(value["bytes"], "00000003e7");
        assert!(value.get("value").is_none());
        assert_eq!(decoded.payment_id(), None);
        assert!(table_row(&r, &decoded).contains("(undecodable)"));
    }

    #[test]
    fn payment_ids_parse_in_text_or_hex() {
        let id = [0x01; 16];
        assert_eq!(
            parse_payment_id("01010101-0101-0101-0101-010101010101"),
            Ok(id)
        );
        assert_eq!(parse_payment_id(&"01".repeat(16)), Ok(id));
        assert!(parse_payment_id("0101").is_err());
        assert!(parse_payment_id("not-a-uuid").is_err());
    }
}
