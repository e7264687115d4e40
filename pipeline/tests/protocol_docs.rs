//! docs/PROTOCOL.md and the `.avsc` doc strings say what the code signs, because both are
//! checked against the one description of every signing input
//! (`dcpipe_pipeline::protocol::layout`).
//!
//! The parts of PROTOCOL.md between `<!-- generated: NAME -->` and `<!-- end: NAME -->` are
//! rendered from that description; after an intended change, rewrite them with
//! `DCPIPE_DOCS_BLESS=1 cargo test -p dcpipe-pipeline --test protocol_docs`. The `.avsc` files
//! are written by hand: a doc string that disagrees fails here with the expected text.

use std::path::PathBuf;

use dcpipe_pipeline::protocol::layout::{
    CLEARING_MESSAGE, PAYER_ENVELOPE, PAYMENT_OUTCOME, TRANSACTION_FACTOR,
};
use dcpipe_pipeline::protocol::{Encoding, Field, Output, SIGNING_LAYOUTS, SigningLayout};
use dcpipe_schemas::SCHEMA_TABLE;
use serde_json::Value;

fn protocol_md_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md")
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// The name of an encoding in the field lists of §4 and §5.
fn kind(encoding: Encoding) -> String {
    match encoding {
        Encoding::Fixed(len) => format!("fixed {len}"),
        Encoding::I32 => "i32".to_owned(),
        Encoding::I64 => "i64".to_owned(),
        Encoding::String => "string".to_owned(),
        Encoding::Bytes => "bytes".to_owned(),
        Encoding::OptionalString => "optional string".to_owned(),
        Encoding::Symbol(symbols) => format!("enum ({})", symbols.join(" | ")),
        Encoding::Party => "party".to_owned(),
        Encoding::Fingerprint => "fingerprint".to_owned(),
        Encoding::Array(_) => "array, each element:".to_owned(),
        Encoding::Optional(_) => "optional record, if present:".to_owned(),
    }
}

/// §3: how each kind of field is written. The match is exhaustive, so a new kind of field
/// cannot be used without being documented.
fn encoding_rows() -> Vec<(String, &'static str)> {
    let all = [
        Encoding::Fixed(16),
        Encoding::I32,
        Encoding::String,
        Encoding::Bytes,
        Encoding::OptionalString,
        Encoding::Symbol(&[]),
        Encoding::Party,
        Encoding::Fingerprint,
        Encoding::Array(&[]),
        Encoding::Optional(&[]),
    ];
    let mut rows = vec![(
        "tag".to_owned(),
        "u16 big-endian length, then the ASCII bytes of the domain tag (at most 64)",
    )];
    for encoding in all {
        rows.push(match encoding {
            Encoding::Fixed(_) => (
                "`fixed 16`, `fixed 32` (ids, digests, nonces)".to_owned(),
                "the 16 or 32 bytes as they are, without a length",
            ),
            Encoding::I32 | Encoding::I64 => (
                "`i32`, `i64`".to_owned(),
                "big-endian two's complement, 4 or 8 bytes",
            ),
            Encoding::String => (
                "`string`".to_owned(),
                "u32 big-endian byte length, then the UTF-8 bytes",
            ),
            Encoding::Bytes => (
                "`bytes`".to_owned(),
                "u32 big-endian length, then the bytes",
            ),
            Encoding::OptionalString => (
                "`optional string`".to_owned(),
                "`00` when absent (Avro null); `01`, then the `string`",
            ),
            Encoding::Symbol(_) => (
                "`enum (A \\| B)`".to_owned(),
                "the name of the Avro symbol written as a `string`: u32 big-endian length, then \
                 its ASCII bytes (`NFC` is `00000003 4e4643`), never the Avro index",
            ),
            Encoding::Party => (
                "`party`".to_owned(),
                "a `PartyRef`: its `institution_id`, then its `wallet_id`, each a `string`",
            ),
            Encoding::Fingerprint => (
                "`fingerprint`".to_owned(),
                "a certificate field enters as SHA-256 of the certificate's DER, 32 bytes \
                 without a length (whatever the certificate's algorithm)",
            ),
            Encoding::Array(_) => (
                "`array`".to_owned(),
                "u32 big-endian element count, then each element's fields in order",
            ),
            Encoding::Optional(_) => (
                "`optional record`".to_owned(),
                "`00` when absent (Avro null); `01`, then the record's fields in order",
            ),
        });
    }
    rows
}

fn render_encodings() -> String {
    let mut out = String::from("| field kind | written as |\n|---|---|\n");
    for (kind, how) in encoding_rows() {
        out.push_str(&format!("| {kind} | {how} |\n"));
    }
    out
}

/// The field list of a layout, one line per field, nested fields indented.
fn field_lines(fields: &[Field], depth: usize, out: &mut String) {
    for field in fields {
        let name = format!("{}{}", "  ".repeat(depth), field.name);
        out.push_str(&format!("{name:<36}{}\n", kind(field.encoding)));
        match field.encoding {
            Encoding::Array(inner) | Encoding::Optional(inner) => {
                field_lines(inner, depth + 1, out);
            }
            _ => {}
        }
    }
}

fn layout_block(layout: &SigningLayout) -> String {
    let mut out = format!("```text\n{:<36}\"{}\"\n", "tag", layout.tag);
    field_lines(layout.fields, 0, &mut out);
    out.push_str("```\n");
    out
}

fn render_factor() -> String {
    let mut out = layout_block(&TRANSACTION_FACTOR);
    out.push_str(
        "\nfactor = SHA-256(input) when the payer's certificate is ECDSA P-256, SM3(input) when \
         it is SM2.\n",
    );
    out
}

fn signer(layout: &SigningLayout) -> &'static str {
    match layout.output {
        Output::Signature { signer } => signer,
        Output::Factor => "",
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Generated parts of PROTOCOL.md that hold the signing inputs of a flow's own messages, in the
/// section of that flow, and those messages; every other signature is in §5 (`signing-inputs`).
const FLOW_PARTS: &[(&str, &[&str])] = &[(
    "offline-wallet-signing-inputs",
    &[
        "OfflinePayment",
        "WalletKeySet",
        "WalletSyncResult",
        "RemoteControlCommand",
    ],
)];

/// The part of PROTOCOL.md that renders `layout`.
fn part_of(layout: &SigningLayout) -> &'static str {
    FLOW_PARTS
        .iter()
        .find(|(_, messages)| messages.contains(&layout.message))
        .map_or("signing-inputs", |(part, _)| part)
}

fn render_signatures(part: &str) -> String {
    let signatures: Vec<&SigningLayout> = SIGNING_LAYOUTS
        .into_iter()
        .filter(|l| matches!(l.output, Output::Signature { .. }) && part_of(l) == part)
        .collect();
    let mut out = String::from("| signing input | tag | signature field | signed by |\n");
    out.push_str("|---|---|---|---|\n");
    for layout in &signatures {
        out.push_str(&format!(
            "| {} | `{}` | `{}.{}` | {} |\n",
            layout.name,
            layout.tag,
            layout.message,
            layout.result_field,
            signer(layout)
        ));
    }
    for layout in &signatures {
        out.push_str(&format!(
            "\n**{}** (`{}.{}`):\n\n",
            capitalized(layout.name),
            layout.message,
            layout.result_field
        ));
        out.push_str(&layout_block(layout));
        if !layout.note.is_empty() {
            out.push_str(&format!("\n{}\n", layout.note));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The generated parts of PROTOCOL.md
// ---------------------------------------------------------------------------------------------

fn generated_parts() -> Vec<(&'static str, String)> {
    vec![
        ("signing-encoding", render_encodings()),
        ("transaction-factor", render_factor()),
        ("signing-inputs", render_signatures("signing-inputs")),
    ]
    .into_iter()
    .chain(
        FLOW_PARTS
            .iter()
            .map(|(part, _)| (*part, render_signatures(part))),
    )
    .collect()
}

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- generated: {name} -->\n"),
        format!("<!-- end: {name} -->\n"),
    )
}

/// The text between the markers of `name`.
fn part<'a>(doc: &'a str, name: &str) -> &'a str {
    let (begin, end) = markers(name);
    let start = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md lacks the marker {begin:?}"))
        + begin.len();
    let stop = doc[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md lacks the marker {end:?}"))
        + start;
    &doc[start..stop]
}

#[test]
fn protocol_md_tables_are_rendered_from_the_signing_layouts() {
    let path = protocol_md_path();
    let mut doc = std::fs::read_to_string(&path).expect("docs/PROTOCOL.md");
    if std::env::var_os("DCPIPE_DOCS_BLESS").is_some() {
        for (name, text) in generated_parts() {
            let old = part(&doc, name).to_owned();
            let (begin, end) = markers(name);
            doc = doc.replace(
                &format!("{begin}{old}{end}"),
                &format!("{begin}{text}{end}"),
            );
        }
        std::fs::write(&path, &doc).expect("docs/PROTOCOL.md written");
    }
    for (name, text) in generated_parts() {
        assert_eq!(
            part(&doc, name),
            text,
            "docs/PROTOCOL.md, part {name}, differs from pipeline/src/protocol/layout.rs; \
             rewrite it with DCPIPE_DOCS_BLESS=1"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The .avsc doc strings
// ---------------------------------------------------------------------------------------------

/// The fields of a layout in one line, for a doc string.
fn field_phrase(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|field| match field.encoding {
            Encoding::Fingerprint => format!("the fingerprint of {}", field.name),
            Encoding::Array(inner) => {
                format!(
                    "{} (the count, then each: {})",
                    field.name,
                    field_phrase(inner)
                )
            }
            Encoding::Optional(inner) => format!(
                "{} (whether present, then if present: {})",
                field.name,
                field_phrase(inner)
            ),
            _ => field.name.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the `.avsc` doc of a layout's result field says.
fn avsc_doc(layout: &SigningLayout) -> String {
    let covers = format!(
        "the signing input \"{}\" (docs/PROTOCOL.md): {}.",
        layout.tag,
        field_phrase(layout.fields)
    );
    let mut doc = match layout.output {
        Output::Signature { signer } => format!(
            "64-byte signature (r then s, each 32 bytes big-endian; ECDSA P-256 or SM2 as the \
             signer's certificate says) by {signer} over {covers}"
        ),
        Output::Factor => format!(
            "The transaction factor: SHA-256 (ECDSA P-256 payer certificate) or SM3 (SM2 payer \
             certificate) of {covers}"
        ),
    };
    if !layout.note.is_empty() {
        doc.push(' ');
        doc.push_str(layout.note);
    }
    doc
}

fn envelope_digest_doc() -> String {
    format!(
        "The envelope digest: SHA-256 of the signing input \"{}\" (docs/PROTOCOL.md), the bytes \
         the payer signed. It names the submitted content of the payment.",
        PAYER_ENVELOPE.tag
    )
}

/// The doc every signature field of a message without a signing input carries.
const UNDEFINED_SIGNATURE_DOC: &str = "Reserved: protocol v1 defines no signing input for this \
    message yet (docs/PROTOCOL.md), so no implementation can make or check this signature \
    interoperably; dcpipe neither makes nor checks it.";

/// What `Digest32` says wherever it is defined.
const DIGEST32_DOC: &str = "32 bytes of a hash or a certificate fingerprint; the field that holds \
    it says which hash of what.";

/// What a vehicle charge carries in place of an envelope's transaction factor.
const VEHICLE_FACTOR_DOC: &str = "For a vehicle charge (docs/PROTOCOL.md, 10.9): the digest of the \
    pre-authorization the charge is made under.";

/// What a vehicle charge carries in place of an envelope digest.
const VEHICLE_DIGEST_DOC: &str = "For a vehicle charge (docs/PROTOCOL.md, 10.9): the charge digest, \
    SHA-256 of \"dcpipe/v1/vehicle-charge-terms\".";

/// Every (message, field path) whose doc is fixed by the layouts, with that doc.
fn expected_docs() -> Vec<(&'static str, String, String)> {
    let mut expected = Vec::new();
    for layout in SIGNING_LAYOUTS {
        expected.push((
            layout.message,
            layout.result_field.to_owned(),
            avsc_doc(layout),
        ));
    }
    expected.push((
        CLEARING_MESSAGE.message,
        "transaction_factor".to_owned(),
        format!(
            "Copied from the envelope. {} {VEHICLE_FACTOR_DOC}",
            avsc_doc(&TRANSACTION_FACTOR)
        ),
    ));
    expected.push((
        CLEARING_MESSAGE.message,
        "envelope_digest".to_owned(),
        format!("{} {VEHICLE_DIGEST_DOC}", envelope_digest_doc()),
    ));
    expected.push((
        PAYMENT_OUTCOME.message,
        "envelope_digest".to_owned(),
        format!(
            "{} A conflicting resubmission under the same payment_id gets its own outcome, told \
             apart by this digest. An envelope rejected before its payer was authenticated is \
             answered under its submission digest instead: SHA-256 of the exact frame submitted. \
             {VEHICLE_DIGEST_DOC}",
            envelope_digest_doc()
        ),
    ));
    expected
}

/// Every field of a record schema, with its path (`pin_proof.signature`) and its doc, nested
/// records included.
fn fields_of(schema: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    let Some(fields) = schema["fields"].as_array() else {
        return;
    };
    for field in fields {
        let name = field["name"].as_str().expect("field name");
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        };
        out.push((path.clone(), field.clone()));
        let mut types = vec![field["type"].clone()];
        while let Some(ty) = types.pop() {
            match ty {
                Value::Array(branches) => types.extend(branches),
                Value::Object(_) if ty["type"] == "record" => fields_of(&ty, &path, out),
                Value::Object(_) if ty["type"] == "array" => types.push(ty["items"].clone()),
                _ => {}
            }
        }
    }
}

/// Every named type definition in a schema, by name, with its doc.
fn named_types(node: &Value, out: &mut Vec<(String, String)>) {
    match node {
        Value::Object(map) => {
            if let (Some(name), Some(doc), Some(_)) = (
                map.get("name").and_then(Value::as_str),
                map.get("doc").and_then(Value::as_str),
                map.get("type").filter(|t| t.is_string()),
            ) {
                out.push((name.to_owned(), doc.to_owned()));
            }
            for value in map.values() {
                named_types(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| named_types(item, out)),
        _ => {}
    }
}

/// The schema of the latest version of `message`: the one its signing input is defined for.
fn schema_json(message: &str) -> Value {
    // The latest version of the message: the one writers use.
    let entry = SCHEMA_TABLE
        .iter()
        .filter(|e| e.message == message)
        .max_by_key(|e| e.version)
        .unwrap_or_else(|| panic!("no schema for {message}"));
    serde_json::from_str(entry.avsc).expect("avsc is JSON")
}

/// Whether `entry` is the latest version of its message.
fn is_latest(entry: &dcpipe_schemas::SchemaEntry) -> bool {
    SCHEMA_TABLE
        .iter()
        .all(|e| e.message != entry.message || e.version <= entry.version)
}

#[test]
fn avsc_docs_of_signatures_factors_and_digests_agree_with_the_layouts() {
    for (message, path, doc) in expected_docs() {
        let mut fields = Vec::new();
        fields_of(&schema_json(message), "", &mut fields);
        let (_, field) = fields
            .iter()
            .find(|(p, _)| *p == path)
            .unwrap_or_else(|| panic!("{message} has no field {path}"));
        assert_eq!(
            field["doc"].as_str(),
            Some(doc.as_str()),
            "{message}.{path}: its .avsc doc must read exactly:\n{doc}\n"
        );
    }
}

#[test]
fn every_signature_field_of_every_schema_has_a_signing_layout_or_says_it_has_none() {
    let expected = expected_docs();
    for entry in SCHEMA_TABLE {
        let mut fields = Vec::new();
        fields_of(
            &serde_json::from_str(entry.avsc).expect("JSON"),
            "",
            &mut fields,
        );
        for (path, field) in fields {
            if !(path == "signature"
                || path.ends_with("_signature")
                || path.ends_with(".signature"))
            {
                continue;
            }
            // An earlier version of a message whose signing input a later version introduced
            // keeps saying it has none.
            let has_layout = is_latest(&entry)
                && expected
                    .iter()
                    .any(|(message, p, _)| *message == entry.message && *p == path);
            if !has_layout {
                assert_eq!(
                    field["doc"].as_str(),
                    Some(UNDEFINED_SIGNATURE_DOC),
                    "{}.{path}: a signature field needs its signing input in \
                     pipeline/src/protocol/layout.rs (SIGNING_LAYOUTS), or this doc:\n\
                     {UNDEFINED_SIGNATURE_DOC}\n",
                    entry.message
                );
            }
        }
    }
}

#[test]
fn digest32_says_its_holder_names_the_hash() {
    for entry in SCHEMA_TABLE {
        let mut types = Vec::new();
        named_types(&serde_json::from_str(entry.avsc).expect("JSON"), &mut types);
        for (name, doc) in types {
            if name == "Digest32" {
                assert_eq!(doc, DIGEST32_DOC, "{}: Digest32", entry.message);
            }
        }
    }
}
