//! The Rust types, the `.avsc` files, the schema table and docs/SCHEMAS.md agree.

mod fixtures;

use std::{collections::BTreeSet, fs, path::Path};

use dcpipe_schemas::{
    apache_avro::{Schema, reader::datum::GenericDatumReader, types::Value},
    *,
};

/// The datum of `frame` read generically with the schema of its id: what a consumer in another
/// language sees, independent of the Rust types.
fn generic_value(frame: &[u8]) -> (Value, &'static Schema) {
    let id = schema_id(frame).expect("header");
    let entry = schema_entry(id).expect("known id");
    let schema: &'static Schema =
        Box::leak(Box::new(Schema::parse_str(entry.avsc).expect("parses")));
    let mut datum = &frame[HEADER_BYTES..];
    let value = GenericDatumReader::builder(schema)
        .build()
        .expect("reader")
        .read_value(&mut datum)
        .expect("generic read");
    assert!(datum.is_empty(), "generic reader consumed the whole datum");
    (value, schema)
}

#[test]
fn every_message_type_matches_its_table_row() {
    macro_rules! check_row {
        ($ty:ident, $value:expr) => {{
            let entry = schema_entry(<$ty as Message>::SCHEMA_ID).expect("in the table");
            assert_eq!(entry.message, <$ty as Message>::NAME);
            let latest = SCHEMA_TABLE
                .iter()
                .filter(|e| e.message == entry.message)
                .map(|e| e.version)
                .max();
            assert_eq!(
                Some(entry.version),
                latest,
                "{} writes its latest version",
                entry.message
            );
            assert_eq!(
                <$ty as Message>::schema(),
                &Schema::parse_str(entry.avsc).expect("parses")
            );
        }};
    }
    for_each_message!(check_row);
}

#[test]
fn every_type_writes_data_its_avsc_reads_generically() {
    macro_rules! check_type {
        ($ty:ident, $value:expr) => {{
            let frame = encode(&$value).expect("encodes");
            let (value, schema) = generic_value(&frame);
            assert!(
                value.validate(schema),
                "{} datum matches its schema",
                stringify!($ty)
            );
            let Value::Record(fields) = value else {
                panic!("{} is not a record", stringify!($ty));
            };
            let Schema::Record(record) = schema else {
                panic!("{} schema is not a record", stringify!($ty));
            };
            let read: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
            let declared: Vec<&str> = record.fields.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(read, declared, "{} fields", stringify!($ty));
        }};
    }
    for_each_message!(check_type);
}

#[test]
fn money_fields_are_long_and_named_fen() {
    for entry in SCHEMA_TABLE {
        let json: serde_json::Value = serde_json::from_str(entry.avsc).expect("JSON");
        let mut stack = vec![json];
        while let Some(node) = stack.pop() {
            match node {
                serde_json::Value::Object(map) => {
                    if let (Some(name), Some(ty)) =
                        (map.get("name").and_then(|n| n.as_str()), map.get("type"))
                    {
                        let name = name.to_owned();
                        if name.ends_with("_fen") {
                            assert_eq!(ty, "long", "{}.{name}", entry.message);
                        }
                        if name.ends_with("_at_ms") {
                            assert_eq!(
                                ty.get("logicalType").and_then(|l| l.as_str()),
                                Some("timestamp-millis"),
                                "{}.{name}",
                                entry.message
                            );
                        }
                        assert_ne!(ty, "float", "{}.{name}", entry.message);
                        assert_ne!(ty, "double", "{}.{name}", entry.message);
                    }
                    stack.extend(map.into_iter().map(|(_, v)| v));
                }
                serde_json::Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
    }
}

#[test]
fn avsc_directory_holds_exactly_the_table() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("avsc");
    let on_disk: BTreeSet<String> = fs::read_dir(&dir)
        .expect("avsc directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk.len(), SCHEMA_TABLE.len());
    for entry in SCHEMA_TABLE {
        let matching = on_disk
            .iter()
            .filter(|file| fs::read_to_string(dir.join(file)).expect("readable") == entry.avsc)
            .count();
        assert_eq!(matching, 1, "{} has one .avsc file", entry.message);
    }
}

#[test]
fn docs_list_the_same_schema_ids() {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SCHEMAS.md"))
        .expect("docs/SCHEMAS.md");
    for entry in SCHEMA_TABLE {
        let row = format!("| {} | {} | {} |", entry.id, entry.message, entry.version);
        assert!(doc.contains(&row), "docs/SCHEMAS.md lacks the row `{row}`");
    }
}

#[test]
fn docs_list_every_reason_code() {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SCHEMAS.md"))
        .expect("docs/SCHEMAS.md");
    for kind in CodecErrorKind::ALL {
        assert!(doc.contains(&format!("`{}`", kind.reason_code())), "{kind}");
    }
}

/// The Parsing Canonical Form of every schema (what an Avro reader and writer must agree on:
/// names, types, fields, symbols, sizes; no docs, no defaults), pinned by its CRC-64-AVRO
/// fingerprint. Editing the doc strings of an `.avsc` leaves these alone; a change here is a
/// wire change and needs a new schema id (docs/SCHEMAS.md, "Evolution").
const CANONICAL_FORM_FINGERPRINTS: [(u32, &str); 22] = [
    (1, "7b3ffe5b4cad7aa1"),
    (2, "988d7611fe76ceb3"),
    (3, "247d2f5dcc63e473"),
    (4, "a6a64ab8714a6979"),
    (5, "1d811189d55e9b8c"),
    (6, "bb42bf3339a47659"),
    (7, "353c31c5622fa60a"),
    (8, "e3160c4ca00e2415"),
    (9, "f0759d8250ae0f47"),
    (10, "3fd6a70c71dd77bb"),
    (11, "adec91872aaec1bc"),
    (12, "d8e7776cfd09396b"),
    (13, "db59bb3a3fce672e"),
    (14, "df6595fa9cec74d5"),
    (15, "6048614372481e4c"),
    (16, "02637a68d7e9ed57"),
    (17, "878923ad5132b264"),
    (24, "ae35779a3eeb9e40"),
    (25, "b089540cf429508b"),
    (26, "daf9e17049c1c4f2"),
    (27, "8d403a9b60f74f93"),
    (28, "7102ec5bf17896ad"),
];

#[test]
fn canonical_forms_are_pinned() {
    use dcpipe_schemas::apache_avro::rabin::Rabin;
    let actual: Vec<(u32, String)> = SCHEMA_TABLE
        .iter()
        .map(|entry| {
            let schema = Schema::parse_str(entry.avsc).expect("parses");
            (entry.id, schema.fingerprint::<Rabin>().to_string())
        })
        .collect();
    let pinned: Vec<(u32, String)> = CANONICAL_FORM_FINGERPRINTS
        .iter()
        .map(|(id, fingerprint)| (*id, (*fingerprint).to_owned()))
        .collect();
    assert_eq!(actual, pinned);
}

/// The frames of the fixtures, byte for byte, as committed in `testdata/frames/`. They pin the
/// wire format: a change to a schema, to the codec or to the Avro library that alters the bytes
/// fails here. The same files were decoded and re-encoded byte-identically by Python fastavro.
///
/// After an intended change to a fixture, rewrite them with
/// `DCPIPE_SCHEMAS_BLESS=1 cargo test -p dcpipe-schemas --test contract`.
#[test]
fn fixture_frames_match_the_golden_frames() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/frames");
    let bless = std::env::var_os("DCPIPE_SCHEMAS_BLESS").is_some();
    for (name, frame) in fixtures::all_frames() {
        let path = dir.join(format!("{name}.bin"));
        if bless {
            fs::create_dir_all(&dir).expect("frames directory");
            fs::write(&path, &frame).expect("golden frame written");
        }
        let golden = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            frame,
            golden,
            "{name} frame differs from {}",
            path.display()
        );
    }
}

/// Version 1 frames of the offline-wallet messages, as written before version 2 existed, still
/// decode: into the current types, with the version 2 fields at their defaults.
#[test]
fn wallet_messages_of_version_1_decode_with_the_defaults() {
    fn golden(name: &str) -> Vec<u8> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("testdata/frames-v1/{name}.bin"));
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
    let frame = golden("WalletKeySet");
    assert_eq!(schema_id(&frame), Ok(11));
    assert_eq!(
        decode::<WalletKeySet>(&frame),
        Ok(fixtures::wallet_key_set_v1())
    );
    let frame = golden("WalletSyncResult");
    assert_eq!(schema_id(&frame), Ok(12));
    assert_eq!(
        decode::<WalletSyncResult>(&frame),
        Ok(fixtures::wallet_sync_result_v1())
    );
    let frame = golden("RemoteControlCommand");
    assert_eq!(schema_id(&frame), Ok(13));
    assert_eq!(
        decode::<RemoteControlCommand>(&frame),
        Ok(fixtures::remote_control_command_v1())
    );
    let again = encode(&fixtures::wallet_key_set_v1()).expect("re-encodes");
    assert_eq!(schema_id(&again), Ok(WalletKeySet::SCHEMA_ID));
}

/// A version 1 registry entry, as written before entries were signed, still decodes: into the
/// current type, not removed and without certificate or signature (which the registry then
/// refuses as unsigned).
#[test]
fn service_entity_version_1_frame_decodes_as_an_unsigned_entry() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/frames-v1/ServiceEntity.bin");
    let frame = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(schema_id(&frame), Ok(9));
    let entity: ServiceEntity = decode(&frame).expect("a version 1 frame decodes");
    assert_eq!(entity, fixtures::service_entity_v1());
    assert!(!entity.removed && entity.certificate.is_empty() && entity.signature.is_empty());
    let again = encode(&entity).expect("re-encodes");
    assert_eq!(schema_id(&again), Ok(ServiceEntity::SCHEMA_ID));
}
