//! The schema table: every schema id, the message and version it stands for, and its `.avsc`.
//!
//! Ids are stable forever: an id is never reused or reassigned, and a new version of a message
//! gets a new id (see docs/SCHEMAS.md for the evolution rules). Schemas are parsed once, on first
//! use, together with everything the codec needs per id, so the hot path never parses JSON or
//! resolves names.

use std::sync::LazyLock;

use apache_avro::{Schema, reader::datum::GenericDatumReader, writer::datum::GenericDatumWriter};

use crate::prescan::Shape;

/// One row of the schema table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaEntry {
    /// The schema id carried in bytes 1..5 of every frame.
    pub id: u32,
    /// The message the schema describes, e.g. `TransactionEnvelope`.
    pub message: &'static str,
    /// The version of that message, from 1.
    pub version: u32,
    /// The schema as Avro JSON (the content of `schemas/avsc/<message>.avsc`).
    pub avsc: &'static str,
}

/// Every schema id in use. docs/SCHEMAS.md repeats this table; a test keeps them equal.
#[rustfmt::skip]
pub const SCHEMA_TABLE: [SchemaEntry; 22] = [
    //    id  message                  version  schema
    entry( 1, "TransactionEnvelope",   1, include_str!("../avsc/transaction_envelope.avsc")),
    entry( 2, "ClearingMessage",       1, include_str!("../avsc/clearing_message.avsc")),
    entry( 3, "ClearingResponse",      1, include_str!("../avsc/clearing_response.avsc")),
    entry( 4, "PaymentOutcome",        1, include_str!("../avsc/payment_outcome.avsc")),
    entry( 5, "SettlementPosition",    1, include_str!("../avsc/settlement_position.avsc")),
    entry( 6, "SettlementInstruction", 1, include_str!("../avsc/settlement_instruction.avsc")),
    entry( 7, "VehicleTelemetry",      1, include_str!("../avsc/vehicle_telemetry.avsc")),
    entry( 8, "ServiceAuthorization",  1, include_str!("../avsc/service_authorization.avsc")),
    entry( 9, "ServiceEntity",         1, include_str!("../avsc/service_entity.avsc")),
    entry(10, "ServiceCompleteReport", 1, include_str!("../avsc/service_complete_report.avsc")),
    entry(11, "WalletKeySet",          1, include_str!("../avsc/wallet_key_set.avsc")),
    entry(12, "WalletSyncResult",      1, include_str!("../avsc/wallet_sync_result.avsc")),
    entry(13, "RemoteControlCommand",  1, include_str!("../avsc/remote_control_command.avsc")),
    entry(14, "RevocationUpdate",      1, include_str!("../avsc/revocation_update.avsc")),
    entry(15, "DeadLetter",            1, include_str!("../avsc/dead_letter.avsc")),
    entry(16, "VehicleTelemetryBatch", 1, include_str!("../avsc/vehicle_telemetry_batch.avsc")),
    entry(17, "ServiceEntity",         2, include_str!("../avsc/service_entity_v2.avsc")),
    entry(24, "WalletKeySet",          2, include_str!("../avsc/wallet_key_set_v2.avsc")),
    entry(25, "OfflinePayment",        1, include_str!("../avsc/offline_payment.avsc")),
    entry(26, "WalletSyncResult",      2, include_str!("../avsc/wallet_sync_result_v2.avsc")),
    entry(27, "RemoteControlCommand",  2, include_str!("../avsc/remote_control_command_v2.avsc")),
    entry(28, "VehicleSessionEvent",   1, include_str!("../avsc/vehicle_session_event.avsc")),
];

const fn entry(id: u32, message: &'static str, version: u32, avsc: &'static str) -> SchemaEntry {
    SchemaEntry {
        id,
        message,
        version,
        avsc,
    }
}

/// Schemas that exist only in this crate's tests: a second version of a message, to prove
/// that readers and writers of neighbouring versions understand each other.
#[cfg(test)]
pub(crate) const TEST_TABLE: [SchemaEntry; 1] = [entry(
    crate::evolution_tests::PAYMENT_OUTCOME_V2_ID,
    "PaymentOutcome",
    2,
    include_str!("../testdata/payment_outcome_v2.avsc"),
)];
#[cfg(not(test))]
const TEST_TABLE: [SchemaEntry; 0] = [];

/// The row of schema `id`, if the id is in use.
pub fn schema_entry(id: u32) -> Option<&'static SchemaEntry> {
    entries().find(|e| e.id == id)
}

fn entries() -> impl Iterator<Item = &'static SchemaEntry> {
    SCHEMA_TABLE.iter().chain(TEST_TABLE.iter())
}

/// Everything the codec needs for one schema id, built once.
pub(crate) struct Compiled {
    pub(crate) entry: &'static SchemaEntry,
    pub(crate) schema: &'static Schema,
    /// The schema's layout, for checking a datum before the Avro library reads it.
    pub(crate) shape: Shape,
    pub(crate) writer: GenericDatumWriter<'static>,
    /// Reads data written with this schema into the same schema (no resolution).
    pub(crate) reader: GenericDatumReader<'static>,
}

/// A reader of data written with one version of a message into another version of it.
struct Resolver {
    writer_id: u32,
    reader_id: u32,
    reader: GenericDatumReader<'static>,
}

// The table is compiled into the binary and every schema is parsed by a test, so a failure
// here is a build defect, not bad input: it is reported at first use, with the schema id.
static SCHEMAS: LazyLock<Vec<(&'static SchemaEntry, Schema)>> = LazyLock::new(|| {
    entries()
        .map(|e| match Schema::parse_str(e.avsc) {
            Ok(schema) => (e, schema),
            Err(error) => panic!("schema {} ({}) does not parse: {error}", e.id, e.message),
        })
        .collect()
});

static COMPILED: LazyLock<Vec<Compiled>> = LazyLock::new(|| {
    SCHEMAS
        .iter()
        .map(|(entry, schema)| compile(entry, schema))
        .collect()
});

static RESOLVERS: LazyLock<Vec<Resolver>> = LazyLock::new(|| {
    let mut resolvers = Vec::new();
    for (writer_entry, writer_schema) in SCHEMAS.iter() {
        for (reader_entry, reader_schema) in SCHEMAS.iter() {
            if writer_entry.message == reader_entry.message && writer_entry.id != reader_entry.id {
                let reader = GenericDatumReader::builder(writer_schema)
                    .reader_schema(reader_schema)
                    .human_readable(false)
                    .build()
                    .unwrap_or_else(|error| {
                        panic!(
                            "no reader from schema {} to {}: {error}",
                            writer_entry.id, reader_entry.id
                        )
                    });
                resolvers.push(Resolver {
                    writer_id: writer_entry.id,
                    reader_id: reader_entry.id,
                    reader,
                });
            }
        }
    }
    resolvers
});

fn compile(entry: &'static SchemaEntry, schema: &'static Schema) -> Compiled {
    let fail = |what: &str, error: &dyn std::fmt::Display| -> ! {
        panic!("schema {} ({}): {what}: {error}", entry.id, entry.message)
    };
    let shape = Shape::compile(schema).unwrap_or_else(|e| fail("layout", &e));
    let writer = GenericDatumWriter::builder(schema)
        .human_readable(false)
        .build()
        .unwrap_or_else(|e| fail("writer", &e));
    let reader = GenericDatumReader::builder(schema)
        .human_readable(false)
        .build()
        .unwrap_or_else(|e| fail("reader", &e));
    Compiled {
        entry,
        schema,
        shape,
        writer,
        reader,
    }
}

/// The compiled schema of `id`, if the id is in use.
pub(crate) fn compiled(id: u32) -> Option<&'static Compiled> {
    let all = &*COMPILED;
    // Production ids are 1..=N in table order: try the direct slot before scanning.
    let slot = usize::try_from(id).ok().and_then(|i| i.checked_sub(1));
    match slot.and_then(|i| all.get(i)) {
        Some(c) if c.entry.id == id => Some(c),
        _ => all.iter().find(|c| c.entry.id == id),
    }
}

/// A reader from schema `writer_id` to schema `reader_id` of the same message.
pub(crate) fn resolver(
    writer_id: u32,
    reader_id: u32,
) -> Option<&'static GenericDatumReader<'static>> {
    RESOLVERS
        .iter()
        .find(|r| r.writer_id == writer_id && r.reader_id == reader_id)
        .map(|r| &r.reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_ascending_from_one() {
        // Flows take ranges of ids (offline wallets 24 to 31), so the table may have gaps.
        assert_eq!(SCHEMA_TABLE[0].id, 1);
        for pair in SCHEMA_TABLE.windows(2) {
            assert!(
                pair[0].id < pair[1].id,
                "{} after {}",
                pair[1].id,
                pair[0].id
            );
        }
        let mut ids: Vec<u32> = entries().map(|e| e.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), SCHEMA_TABLE.len() + TEST_TABLE.len());
    }

    #[test]
    fn every_schema_parses_and_names_its_message() {
        for entry in entries() {
            let schema = Schema::parse_str(entry.avsc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", entry.message));
            let Schema::Record(record) = &schema else {
                panic!("{} is not a record", entry.message);
            };
            assert_eq!(record.name.name(), entry.message);
            assert_eq!(record.name.namespace(), Some("dcpipe.v1"));
        }
        assert_eq!(COMPILED.len(), SCHEMA_TABLE.len() + TEST_TABLE.len());
    }

    #[test]
    fn every_field_has_a_doc() {
        fn visit(value: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::Array(fields)) = map.get("fields") {
                        for field in fields {
                            let name = field.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                            let here = format!("{path}.{name}");
                            if field
                                .get("doc")
                                .and_then(|d| d.as_str())
                                .is_none_or(str::is_empty)
                            {
                                missing.push(here.clone());
                            }
                            if let Some(ty) = field.get("type") {
                                visit(ty, &here, missing);
                            }
                        }
                    }
                    let named = matches!(
                        map.get("type").and_then(|t| t.as_str()),
                        Some("record" | "enum" | "fixed")
                    );
                    if named && map.get("doc").is_none() {
                        missing.push(format!("{path} (type)"));
                    }
                    for key in ["items", "values"] {
                        if let Some(inner) = map.get(key) {
                            visit(inner, path, missing);
                        }
                    }
                }
                serde_json::Value::Array(branches) => {
                    for branch in branches {
                        visit(branch, path, missing);
                    }
                }
                _ => {}
            }
        }
        let mut missing = Vec::new();
        for entry in entries() {
            let json: serde_json::Value = serde_json::from_str(entry.avsc)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", entry.message));
            visit(&json, entry.message, &mut missing);
        }
        assert!(missing.is_empty(), "without doc: {missing:?}");
    }

    #[test]
    fn compiled_lookup_finds_every_id_and_no_other() {
        for entry in entries() {
            assert_eq!(compiled(entry.id).map(|c| c.entry.id), Some(entry.id));
        }
        assert!(compiled(0).is_none());
        let unused = SCHEMA_TABLE.iter().map(|e| e.id).max().unwrap_or(0) + 1;
        assert!(compiled(unused).is_none());
        assert!(compiled(u32::MAX).is_none());
    }
}
