//! `dcpipe schemas`: the schema table.

use std::process::ExitCode;

use dcpipe_schemas::SCHEMA_TABLE;

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    println!("{:>4}  {:<24} {:>7}", "id", "message", "version");
    for entry in SCHEMA_TABLE {
        println!(
            "{:>4}  {:<24} {:>7}",
            entry.id, entry.message, entry.version
        );
    }
    Ok(ExitCode::SUCCESS)
}
