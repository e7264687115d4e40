//! A second implementation of the signing encoding, written from docs/PROTOCOL.md §3 alone: it
//! writes a signing input from a layout and the named field values of a vector, byte by byte,
//! without the production builders. The vectors file also carries the layouts as JSON, for
//! implementations in other languages (`docs/test-vectors/check_vectors.py` is one).

use dcpipe_pipeline::protocol::{Encoding, Field, SIGNING_LAYOUTS, SigningLayout};
use serde_json::{Value, json};

use super::hex_of;

/// The layout of a vector entry, by its name.
pub(crate) fn layout_named(name: &str) -> &'static SigningLayout {
    SIGNING_LAYOUTS
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no signing layout named {name:?}"))
}

/// The signing input of `layout` with the field values `values`.
pub(crate) fn encode(layout: &SigningLayout, values: &Value) -> Vec<u8> {
    let tag = layout.tag.as_bytes();
    let mut out = u16::try_from(tag.len())
        .expect("short tag")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(tag);
    encode_fields(layout.tag, layout.fields, values, &mut out);
    out
}

fn length_prefixed(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&u32::try_from(bytes.len()).expect("short").to_be_bytes());
    out.extend_from_slice(bytes);
}

fn encode_fields(tag: &str, fields: &[Field], values: &Value, out: &mut Vec<u8>) {
    let object = values
        .as_object()
        .unwrap_or_else(|| panic!("{tag}: field values are not an object"));
    let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
    let mut given: Vec<&str> = object.keys().map(String::as_str).collect();
    given.sort_unstable();
    let mut expected = names.clone();
    expected.sort_unstable();
    assert_eq!(
        given, expected,
        "{tag}: the vector names exactly the layout's fields"
    );
    for field in fields {
        let value = &object[field.name];
        let what = format!("{tag}: {}", field.name);
        match field.encoding {
            Encoding::Fixed(len) => {
                let bytes = hex_of(value, &what);
                assert_eq!(bytes.len(), len, "{what}");
                out.extend_from_slice(&bytes);
            }
            Encoding::Fingerprint => {
                let bytes = hex_of(value, &what);
                assert_eq!(bytes.len(), 32, "{what}");
                out.extend_from_slice(&bytes);
            }
            Encoding::I32 => {
                let n = i32::try_from(value.as_i64().expect(&what)).expect(&what);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Encoding::I64 => out.extend_from_slice(&value.as_i64().expect(&what).to_be_bytes()),
            Encoding::String => length_prefixed(value.as_str().expect(&what).as_bytes(), out),
            Encoding::Bytes => length_prefixed(&hex_of(value, &what), out),
            Encoding::OptionalString => match value {
                Value::Null => out.push(0),
                Value::String(text) => {
                    out.push(1);
                    length_prefixed(text.as_bytes(), out);
                }
                _ => panic!("{what}: neither null nor a string"),
            },
            Encoding::Symbol(symbols) => {
                let symbol = value.as_str().expect(&what);
                assert!(
                    symbols.contains(&symbol),
                    "{what}: {symbol} is not a symbol"
                );
                length_prefixed(symbol.as_bytes(), out);
            }
            Encoding::Party => {
                for part in ["institution_id", "wallet_id"] {
                    length_prefixed(value[part].as_str().expect(&what).as_bytes(), out);
                }
            }
            Encoding::Array(element) => {
                let items = value.as_array().expect(&what);
                out.extend_from_slice(&u32::try_from(items.len()).expect("short").to_be_bytes());
                for item in items {
                    encode_fields(tag, element, item, out);
                }
            }
            Encoding::Optional(inner) => match value {
                Value::Null => out.push(0),
                record => {
                    out.push(1);
                    encode_fields(tag, inner, record, out);
                }
            },
        }
    }
}

fn fields_json(fields: &[Field]) -> Value {
    Value::Array(
        fields
            .iter()
            .map(|field| {
                let mut value = json!({"name": field.name});
                let encoding = match field.encoding {
                    Encoding::Fixed(len) => {
                        value["size"] = json!(len);
                        "fixed"
                    }
                    Encoding::I32 => "i32",
                    Encoding::I64 => "i64",
                    Encoding::String => "string",
                    Encoding::Bytes => "bytes",
                    Encoding::OptionalString => "optional string",
                    Encoding::Symbol(symbols) => {
                        value["symbols"] = json!(symbols);
                        "enum"
                    }
                    Encoding::Party => "party",
                    Encoding::Fingerprint => "fingerprint",
                    Encoding::Array(element) => {
                        value["fields"] = fields_json(element);
                        "array"
                    }
                    Encoding::Optional(inner) => {
                        value["fields"] = fields_json(inner);
                        "optional record"
                    }
                };
                value["encoding"] = json!(encoding);
                value
            })
            .collect(),
    )
}

/// The `layouts` section: every signing layout, by name.
pub(crate) fn layouts_json() -> Value {
    let mut layouts = serde_json::Map::new();
    for layout in SIGNING_LAYOUTS {
        layouts.insert(
            layout.name.to_owned(),
            json!({
                "tag": layout.tag,
                "message": layout.message,
                "result_field": layout.result_field,
                "fields": fields_json(layout.fields),
            }),
        );
    }
    Value::Object(layouts)
}
