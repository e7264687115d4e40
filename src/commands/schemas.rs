//! `dcpipe schemas`: the schema table, and one schema by id or name.

use std::process::ExitCode;

use anyhow::bail;
use dcpipe_schemas::{SCHEMA_TABLE, SchemaEntry, schema_entry};

/// Options of `dcpipe schemas`.
#[derive(Debug, clap::Args)]
pub(crate) struct SchemasArgs {
    #[command(subcommand)]
    command: Option<SchemasCommand>,
}

/// What `dcpipe schemas` does; `list` when nothing is given.
#[derive(Debug, clap::Subcommand)]
enum SchemasCommand {
    /// List the schema ids, their messages and versions (Confluent wire format).
    List,
    /// Print one schema as Avro JSON: by id (`4`), by message name (`PaymentOutcome`, its
    /// newest version) or by name and version (`ServiceEntity:1`).
    Show {
        /// Schema id, message name, or NAME:VERSION.
        #[arg(value_name = "ID|NAME")]
        schema: String,
    },
}

pub(crate) fn run(args: SchemasArgs) -> anyhow::Result<ExitCode> {
    match args.command.unwrap_or(SchemasCommand::List) {
        SchemasCommand::List => {
            println!("{:>4}  {:<24} {:>7}", "id", "message", "version");
            for entry in SCHEMA_TABLE {
                println!(
                    "{:>4}  {:<24} {:>7}",
                    entry.id, entry.message, entry.version
                );
            }
        }
        SchemasCommand::Show { schema } => {
            let Some(entry) = find(&schema) else {
                bail!("no schema {schema:?}; `dcpipe schemas list` shows them");
            };
            print!("{}", entry.avsc);
            if !entry.avsc.ends_with('\n') {
                println!();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The schema named by an id, a message name (its newest version) or `NAME:VERSION`.
pub(crate) fn find(text: &str) -> Option<&'static SchemaEntry> {
    let text = text.trim();
    if let Ok(id) = text.parse::<u32>() {
        return schema_entry(id);
    }
    let (name, version) = match text.split_once(':') {
        Some((name, version)) => (name, Some(version.parse::<u32>().ok()?)),
        None => (text, None),
    };
    SCHEMA_TABLE
        .iter()
        .filter(|e| e.message.eq_ignore_ascii_case(name))
        .filter(|e| version.is_none_or(|v| e.version == v))
        .max_by_key(|e| e.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_is_found_by_id_name_or_name_and_version() {
        assert_eq!(find("4").map(|e| e.message), Some("PaymentOutcome"));
        assert_eq!(find("ServiceEntity").map(|e| e.id), Some(17));
        assert_eq!(find("serviceentity:1").map(|e| e.id), Some(9));
        assert_eq!(find("ServiceEntity:9"), None);
        assert_eq!(find("999"), None);
        assert_eq!(find("Nothing"), None);
    }
}
