//! docs/PROTOCOL.md and the reason enum say the same thing: every code dcpipe emits is in a
//! table of the protocol, and every code of those tables is one dcpipe knows.

use std::collections::BTreeSet;

use dcpipe_pipeline::reason::Reason;

/// The sections of PROTOCOL.md whose tables list reason codes, by heading. A later section of
/// codes (the audit's, say) is one more line here.
const SECTIONS_WITH_CODES: &[&str] = &["## 7. Reason codes", "### 10.10 Reason codes"];

fn protocol() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The text of the section under `heading`, up to the next heading of its level or higher.
fn section<'a>(document: &'a str, heading: &str) -> &'a str {
    let start = document
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("PROTOCOL.md has no section {heading:?}"));
    let body = &document[start + heading.len() + 2..];
    let level = heading.split(' ').next().unwrap_or("##").len();
    // The next heading of the same level or a higher one.
    let end = (1..=level)
        .filter_map(|hashes| body.find(&format!("\n{} ", "#".repeat(hashes))))
        .min()
        .unwrap_or(body.len());
    &body[..end]
}

/// The codes in the first column of every table of `text`: backticked `family.name` tokens
/// (families written as `cert.*` are not codes).
fn table_codes(text: &str) -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with('|')) {
        let first_column = line.split('|').nth(1).unwrap_or("");
        for (i, token) in first_column.split('`').enumerate() {
            let is_code = i % 2 == 1
                && token.contains('.')
                && token
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_');
            if is_code {
                codes.insert(token.to_owned());
            }
        }
    }
    codes
}

fn documented() -> BTreeSet<String> {
    let document = protocol();
    SECTIONS_WITH_CODES
        .iter()
        .flat_map(|heading| table_codes(section(&document, heading)))
        .collect()
}

#[test]
fn every_reason_is_documented_in_a_table() {
    let documented = documented();
    let missing: Vec<&str> = Reason::all()
        .map(Reason::as_str)
        .filter(|code| !documented.contains(*code))
        .collect();
    assert!(
        missing.is_empty(),
        "codes missing from PROTOCOL.md's tables: {missing:?}"
    );
}

#[test]
fn every_documented_code_is_a_reason() {
    let unknown: Vec<String> = documented()
        .into_iter()
        .filter(|code| Reason::parse(code).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "codes in PROTOCOL.md that dcpipe does not know: {unknown:?}"
    );
}

#[test]
fn table_codes_reads_first_columns_only() {
    let text =
        "| code | meaning |\n|---|---|\n| `txn.a`, `cert.*` | see `txn.b` |\nprose `txn.c`\n";
    assert_eq!(table_codes(text), BTreeSet::from(["txn.a".to_owned()]));
}
