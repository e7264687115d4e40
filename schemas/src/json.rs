//! Any frame as one line of JSON, for people and for `jq`: what operators' tools print.
//!
//! A frame of any schema in the table is read with its writer schema (after the same structural
//! check the codec makes, so no input makes it allocate without bound or panic) into a generic
//! Avro value and written as one JSON object:
//!
//! - record fields in the order of the schema, under their Avro names;
//! - `bytes` and `fixed` values as lower-case hex, except the 16-byte `Uuid` type (payment ids
//!   and the other ids), written in its RFC 9562 text form as in message ids;
//! - enum symbols as their names, a union as the value of its branch (`null` when absent), maps
//!   with their keys in order;
//! - a `timestamp-millis` field `x_ms` keeps its number and gains a neighbour `x_rfc3339` with
//!   the same instant as RFC 3339 text in UTC (`x` without an `_ms` suffix gains `x_rfc3339`).
//!
//! The contract rules of [`Message::validate`](crate::Message::validate) are not applied: a
//! message that breaks one is still shown as it is, which is what an operator looking at it
//! needs.

use std::fmt::Write as _;

use apache_avro::Schema;
use apache_avro::types::Value;

use crate::codec::{HEADER_BYTES, schema_id};
use crate::error::{CodecError, CodecErrorKind};
use crate::limits::{
    DEAD_LETTER_FRAME_BYTES_MAX, FRAME_BYTES_MAX, WALLET_KEY_SET_FRAME_BYTES_MAX,
    WALLET_SYNC_RESULT_FRAME_BYTES_MAX,
};
use crate::registry::{self, SchemaEntry};

/// Largest frame [`decode_any`] reads: the largest limit of any message.
pub const ANY_FRAME_BYTES_MAX: usize = max(
    max(FRAME_BYTES_MAX, DEAD_LETTER_FRAME_BYTES_MAX),
    max(
        WALLET_KEY_SET_FRAME_BYTES_MAX,
        WALLET_SYNC_RESULT_FRAME_BYTES_MAX,
    ),
);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// The name of the Avro fixed type that holds UUIDs.
const UUID_TYPE: &str = "Uuid";

/// A frame read with its writer schema, whatever message it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct AnyMessage {
    /// The schema row of the frame's id.
    pub entry: &'static SchemaEntry,
    /// The datum as a generic Avro value (a record).
    pub value: Value,
}

impl AnyMessage {
    /// A top-level field of the record, by name.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match &self.value {
            Value::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The 16 bytes of the top-level `payment_id`, if the message has one.
    pub fn payment_id(&self) -> Option<[u8; 16]> {
        match self.field("payment_id") {
            Some(Value::Fixed(16, bytes)) => bytes.as_slice().try_into().ok(),
            _ => None,
        }
    }

    /// The value as one line of JSON (no newline), as described in the module documentation.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(256);
        let schema = registry::compiled(self.entry.id).map(|c| c.schema);
        let mut names = Names::new();
        if let Some(schema) = schema {
            collect_names(schema, &mut names);
        }
        write_value(&mut out, &self.value, schema, &names);
        out
    }
}

/// Reads a frame of any schema in the table.
///
/// # Errors
///
/// As [`decode`](crate::decode), except that the contract rules are not checked and any known
/// schema id is accepted: [`TooLarge`](CodecErrorKind::TooLarge) beyond
/// [`ANY_FRAME_BYTES_MAX`], [`Truncated`](CodecErrorKind::Truncated),
/// [`BadMagic`](CodecErrorKind::BadMagic), [`UnknownSchemaId`](CodecErrorKind::UnknownSchemaId),
/// [`InvalidDatum`](CodecErrorKind::InvalidDatum),
/// [`TrailingBytes`](CodecErrorKind::TrailingBytes).
pub fn decode_any(frame: &[u8]) -> Result<AnyMessage, CodecError> {
    if frame.len() > ANY_FRAME_BYTES_MAX {
        return Err(CodecError::new(
            CodecErrorKind::TooLarge,
            format!(
                "frame of {} bytes exceeds {ANY_FRAME_BYTES_MAX} bytes",
                frame.len()
            ),
        ));
    }
    let id = schema_id(frame)?;
    let compiled = registry::compiled(id).ok_or_else(|| {
        CodecError::new(
            CodecErrorKind::UnknownSchemaId,
            format!("schema id {id} is not in the table"),
        )
    })?;
    let mut datum = &frame[HEADER_BYTES..];
    compiled.shape.check(datum)?;
    let value = compiled
        .reader
        .read_value(&mut datum)
        .map_err(|e| CodecError::new(CodecErrorKind::InvalidDatum, e.to_string()))?;
    if !datum.is_empty() {
        return Err(CodecError::new(
            CodecErrorKind::TrailingBytes,
            format!("{} bytes left unread", datum.len()),
        ));
    }
    Ok(AnyMessage {
        entry: compiled.entry,
        value,
    })
}

/// The named types of a schema, by their short name (the table's schemas use one namespace).
type Names<'s> = std::collections::HashMap<&'s str, &'s Schema>;

fn collect_names<'s>(schema: &'s Schema, names: &mut Names<'s>) {
    match schema {
        Schema::Record(record) => {
            names.insert(record.name.name(), schema);
            for field in &record.fields {
                collect_names(&field.schema, names);
            }
        }
        Schema::Fixed(fixed) => {
            names.insert(fixed.name.name(), schema);
        }
        Schema::Enum(e) => {
            names.insert(e.name.name(), schema);
        }
        Schema::Array(array) => collect_names(&array.items, names),
        Schema::Map(map) => collect_names(&map.types, names),
        Schema::Union(union) => {
            for variant in union.variants() {
                collect_names(variant, names);
            }
        }
        _ => {}
    }
}

/// Writes `value` as JSON; `schema` (when known) names fixed types and record fields.
fn write_value(out: &mut String, value: &Value, schema: Option<&Schema>, names: &Names<'_>) {
    // Look through references and unions to the schema of this value.
    let schema = schema.and_then(|s| match s {
        Schema::Ref { name } => names.get(name.name()).copied(),
        _ => Some(s),
    });
    let schema = schema.and_then(|s| match (s, value) {
        (Schema::Union(union), Value::Union(index, _)) => usize::try_from(*index)
            .ok()
            .and_then(|i| union.variants().get(i))
            .and_then(|v| match v {
                Schema::Ref { name } => names.get(name.name()).copied(),
                _ => Some(v),
            }),
        _ => Some(s),
    });
    match value {
        Value::Null => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) | Value::Date(n) | Value::TimeMillis(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Long(n)
        | Value::TimestampMillis(n)
        | Value::TimestampMicros(n)
        | Value::TimestampNanos(n)
        | Value::LocalTimestampMillis(n)
        | Value::LocalTimestampMicros(n)
        | Value::LocalTimestampNanos(n)
        | Value::TimeMicros(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Float(x) => write_float(out, f64::from(*x)),
        Value::Double(x) => write_float(out, *x),
        Value::Bytes(bytes) => write_string(out, &hex::encode(bytes)),
        Value::Fixed(size, bytes) => {
            let is_uuid = matches!(schema, Some(Schema::Fixed(f)) if f.name.name() == UUID_TYPE);
            if is_uuid && *size == 16 {
                let id = uuid::Uuid::from_slice(bytes).unwrap_or_default();
                write_string(out, &id.hyphenated().to_string());
            } else {
                write_string(out, &hex::encode(bytes));
            }
        }
        Value::String(text) | Value::Enum(_, text) => write_string(out, text),
        Value::Uuid(id) => write_string(out, &id.hyphenated().to_string()),
        Value::Union(_, inner) => write_value(out, inner, schema, names),
        Value::Array(items) => {
            let item_schema = match schema {
                Some(Schema::Array(array)) => Some(array.items.as_ref()),
                _ => None,
            };
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, item_schema, names);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            let value_schema = match schema {
                Some(Schema::Map(map)) => Some(map.types.as_ref()),
                _ => None,
            };
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, &entries[key], value_schema, names);
            }
            out.push('}');
        }
        Value::Record(fields) => {
            let field_schemas = match schema {
                Some(Schema::Record(record)) => Some(&record.fields),
                _ => None,
            };
            out.push('{');
            for (i, (name, field)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let field_schema = field_schemas
                    .and_then(|fs| fs.iter().find(|f| &f.name == name))
                    .map(|f| &f.schema);
                write_string(out, name);
                out.push(':');
                write_value(out, field, field_schema, names);
                if let Some(ms) = timestamp_ms(field) {
                    out.push(',');
                    write_string(out, &rfc3339_name(name));
                    out.push(':');
                    write_string(out, &rfc3339_of_ms(ms));
                }
            }
            out.push('}');
        }
        // Not used by any schema of the table; written as text rather than lost.
        Value::Decimal(_) | Value::BigDecimal(_) | Value::Duration(_) => {
            write_string(out, &format!("{value:?}"));
        }
    }
}

/// The milliseconds of a `timestamp-millis` value, also inside an optional union.
fn timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::TimestampMillis(ms) => Some(*ms),
        Value::Union(_, inner) => timestamp_ms(inner),
        _ => None,
    }
}

/// `created_at_ms` → `created_at_rfc3339`; `at` → `at_rfc3339`.
fn rfc3339_name(field: &str) -> String {
    format!("{}_rfc3339", field.strip_suffix("_ms").unwrap_or(field))
}

fn write_float(out: &mut String, x: f64) {
    if x.is_finite() {
        let _ = write!(out, "{x}");
    } else {
        out.push_str("null");
    }
}

/// Writes a JSON string literal.
fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes `text` as a JSON string literal (quotes and escapes included).
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    write_string(&mut out, text);
    out
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC with milliseconds,
/// e.g. `2024-10-04T00:00:00.000Z`. Covers every `i64` without overflow.
pub fn rfc3339_of_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let ms_of_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s, milli) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Channel, DeadLetter, Digest32, Nonce, PartyRef, PaymentId, SettlementPosition,
        TransactionEnvelope, encode,
    };

    fn json(frame: &[u8]) -> serde_json::Value {
        let line = decode_any(frame).expect("decodes").to_json();
        assert!(!line.contains('\n'), "one line: {line}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    #[test]
    fn times_are_written_in_rfc3339_beside_their_milliseconds() {
        assert_eq!(rfc3339_of_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_of_ms(1_728_000_060_123), "2024-10-04T00:01:00.123Z");
        assert_eq!(rfc3339_of_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_of_ms(-1), "1969-12-31T23:59:59.999Z");
        // Every i64 formats without overflow.
        let _ = rfc3339_of_ms(i64::MIN);
        let _ = rfc3339_of_ms(i64::MAX);
        let position = SettlementPosition {
            window_id: 28_800,
            window_start_at_ms: 1_728_000_000_000,
            window_end_at_ms: 1_728_000_060_000,
            institution_id: "oi01".to_owned(),
            net_fen: -1_500,
            debit_fen: 2_000,
            credit_fen: 500,
            clearing_count: 3,
        };
        let value = json(&encode(&position).expect("encodes"));
        assert_eq!(value["window_start_at_ms"], 1_728_000_000_000_i64);
        assert_eq!(value["window_start_at_rfc3339"], "2024-10-04T00:00:00.000Z");
        assert_eq!(value["net_fen"], -1_500);
        assert_eq!(value["institution_id"], "oi01");
    }

    #[test]
    fn fields_keep_the_schema_order_ids_are_uuids_and_bytes_hex() {
        let payment_id = PaymentId::from_bytes([0x01; 16]);
        let envelope = TransactionEnvelope {
            payment_id,
            payer: PartyRef {
                institution_id: "oi01".into(),
                wallet_id: "w1".into(),
            },
            payee: PartyRef {
                institution_id: "oi02".into(),
                wallet_id: "w2".into(),
            },
            amount_fen: 1_234,
            currency: "CNY".into(),
            created_at_ms: 1_728_000_000_000,
            channel: Channel::Nfc,
            payer_nonce: Nonce::from_bytes([0xab; 32]),
            payee_nonce: Nonce::from_bytes([0xcd; 32]),
            transaction_factor: Digest32::from_bytes([0xef; 32]),
            payer_certificate: vec![0x30, 0x01],
            payee_certificate: vec![0x30, 0x02],
            payee_signature: vec![0x11; 64],
            pin_proof: None,
            payer_signature: vec![0x22; 64],
        };
        let frame = encode(&envelope).expect("encodes");
        let any = decode_any(&frame).expect("decodes");
        assert_eq!(any.entry.message, "TransactionEnvelope");
        assert_eq!(any.payment_id(), Some(*payment_id.as_bytes()));
        let line = any.to_json();
        let order: Vec<usize> = [
            "\"payment_id\"",
            "\"payer\"",
            "\"amount_fen\"",
            "\"pin_proof\"",
        ]
        .iter()
        .map(|k| line.find(k).expect(k))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["payment_id"], "01010101-0101-0101-0101-010101010101");
        assert_eq!(value["payer"]["wallet_id"], "w1");
        assert_eq!(value["channel"], "NFC");
        assert_eq!(value["payer_nonce"], "ab".repeat(32));
        assert_eq!(value["payer_certificate"], "3001");
        assert_eq!(value["pin_proof"], serde_json::Value::Null);
        assert_eq!(value["created_at_rfc3339"], "2024-10-04T00:00:00.000Z");
    }

    #[test]
    fn maps_and_control_characters_are_valid_json() {
        let letter = DeadLetter {
            original: b"\x00\x00\x00\x00\x01oops".to_vec(),
            original_size_bytes: 9,
            subject: "txn.submit.oi01".into(),
            stage: "payer".into(),
            reason_code: "schema.invalid_datum".into(),
            detail: "a \"quoted\"\nline\u{1}".into(),
            delivery_count: 1,
            partition: 0,
            offset: 7,
            received_at_ms: 1_728_000_000_000,
            headers: [
                ("b".to_owned(), "2".to_owned()),
                ("a".to_owned(), "1".to_owned()),
            ]
            .into_iter()
            .collect(),
        };
        let value = json(&encode(&letter).expect("encodes"));
        assert_eq!(value["original"], "00000000016f6f7073");
        assert_eq!(value["detail"], "a \"quoted\"\nline\u{1}");
        assert_eq!(value["headers"]["a"], "1");
        assert_eq!(value["offset"], 7);
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let kind = |frame: &[u8]| decode_any(frame).expect_err("refused").kind();
        assert_eq!(kind(b""), CodecErrorKind::Truncated);
        assert_eq!(kind(b"\x01\x00\x00\x00\x01"), CodecErrorKind::BadMagic);
        assert_eq!(
            kind(b"\x00\x00\x00\x03\xe7\x00"),
            CodecErrorKind::UnknownSchemaId
        );
        assert!(matches!(
            kind(b"\x00\x00\x00\x00\x01this is not an envelope"),
            CodecErrorKind::InvalidDatum
                | CodecErrorKind::Truncated
                | CodecErrorKind::TrailingBytes
        ));
        assert_eq!(
            kind(&vec![0; ANY_FRAME_BYTES_MAX + 1]),
            CodecErrorKind::TooLarge
        );
    }
}
