//! One rule for every flag of every command: a flag `--name-of-it` is also set by the
//! environment variable `DCPIPE_NAME_OF_IT` and by the TOML key `name_of_it` of the file given by
//! `--config` — in a table named after the command (`[worker]`, `[dead-letters.redrive]`), or at
//! the top level for every command that has the flag. Flag beats variable beats file beats
//! default.
//!
//! The global options keep the keys they have always had (`[nats]`, `[kafka.properties]`, see
//! [`GLOBAL_KEYS`]); [`crate::settings`] merges those. For every other flag the file's value
//! becomes the flag's default before the command line is parsed, so that clap checks it like a
//! typed value and `--help` shows it as `[default: …]`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Command};

/// Global flags whose TOML keys [`crate::settings::Settings`] reads: (argument id, key).
pub(crate) const GLOBAL_KEYS: [(&str, &str); 11] = [
    ("log_format", "log_format"),
    ("log_level", "log_level"),
    ("metrics_addr", "metrics_addr"),
    ("nats_creds", "nats.creds_file"),
    ("nats_user", "nats.user"),
    ("nats_password", "nats.password"),
    ("nats_tls_ca", "nats.tls_ca_file"),
    ("nats_stream_replicas", "nats.stream_replicas"),
    ("nats_stream_max_age", "nats.stream_max_age"),
    ("kafka_properties", "kafka.properties"),
    // Read before everything else: the file cannot name itself.
    ("config", ""),
];

/// Top-level tables of the file that are not commands.
const GLOBAL_TABLES: [&str; 2] = ["nats", "kafka"];

/// The environment variable of a flag.
pub(crate) fn env_name(arg: &Arg) -> String {
    format!(
        "DCPIPE_{}",
        arg.get_id().as_str().to_ascii_uppercase().replace('-', "_")
    )
}

/// The TOML key of a flag of the command at `path` (empty for the root): its global key, or
/// `[<path>] <id>` (also accepted at the top level). `None` for `--config`. The walk below
/// applies this rule; the tests state it.
#[cfg(test)]
pub(crate) fn toml_key(path: &[String], arg: &Arg) -> Option<String> {
    let id = arg.get_id().as_str();
    if let Some((_, key)) = GLOBAL_KEYS.iter().find(|(g, _)| *g == id) {
        return (!key.is_empty()).then(|| (*key).to_owned());
    }
    Some(if path.is_empty() {
        id.to_owned()
    } else {
        format!("[{}] {id}", path.join("."))
    })
}

/// Whether an argument is a flag (named), not a positional argument, help or version.
pub(crate) fn is_option(arg: &Arg) -> bool {
    !arg.is_positional()
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// The file named by `--config FILE`, `--config=FILE` or `DCPIPE_CONFIG`.
pub(crate) fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("DCPIPE_CONFIG").map(PathBuf::from)
}

/// Reads the file as a TOML table (empty without a file).
pub(crate) fn load_table(path: Option<&PathBuf>) -> Result<toml::Table, String> {
    let Some(path) = path else {
        return Ok(toml::Table::new());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    text.parse::<toml::Table>()
        .map_err(|e| format!("config {}: {e}", path.display()))
}

/// `command` with an environment variable on every flag that has none, and the file's values
/// as defaults. Fails on a key of the file that no flag has.
pub(crate) fn apply(command: Command, file: &toml::Table) -> Result<Command, String> {
    let mut known_top = BTreeSet::new();
    let command = walk(command, &mut Vec::new(), file, &mut known_top)?;
    for (key, value) in file {
        let is_table_of_command = value.is_table()
            && command
                .get_subcommands()
                .any(|c| c.get_name() == key.as_str());
        if !(known_top.contains(key.as_str())
            || GLOBAL_TABLES.contains(&key.as_str())
            || is_table_of_command)
        {
            return Err(format!(
                "config: unknown key {key:?} (no command has a flag --{})",
                key.replace('_', "-")
            ));
        }
    }
    Ok(command)
}

fn walk(
    mut command: Command,
    path: &mut Vec<String>,
    file: &toml::Table,
    known_top: &mut BTreeSet<String>,
) -> Result<Command, String> {
    // The command's own table, e.g. [dead-letters.redrive] is file["dead-letters"]["redrive"].
    let mut table = Some(file);
    for name in path.iter() {
        table = table
            .and_then(|t| t.get(name))
            .and_then(toml::Value::as_table);
    }
    let mut own_keys = BTreeSet::new();
    let ids: Vec<String> = command
        .get_arguments()
        .filter(|a| is_option(a))
        .map(|a| a.get_id().as_str().to_owned())
        .collect();
    for id in ids {
        let is_global = GLOBAL_KEYS.iter().any(|(g, _)| *g == id);
        known_top.insert(id.clone());
        own_keys.insert(id.clone());
        let from_file = if is_global || path.is_empty() {
            None
        } else {
            table
                .and_then(|t| t.get(&id))
                .or_else(|| file.get(&id))
                .map(|v| default_values(&id, path, v))
                .transpose()?
        };
        command = command.mut_arg(id.as_str(), |arg| {
            let arg = if arg.get_env().is_none() {
                let name = env_name(&arg);
                arg.env(name)
            } else {
                arg
            };
            match from_file {
                Some(values) if values.len() == 1 => arg.default_value(values[0].clone()),
                Some(values) => arg.default_values(values),
                None => arg,
            }
        });
    }
    // Keys of the command's table must be flags of the command (or its subcommands' tables).
    if let Some(table) = table.filter(|_| !path.is_empty()) {
        for (key, value) in table {
            let is_subcommand = value.is_table()
                && command
                    .get_subcommands()
                    .any(|c| c.get_name() == key.as_str());
            if !own_keys.contains(key) && !is_subcommand {
                return Err(format!(
                    "config: [{}] has no key {key:?} (`dcpipe {} --help` lists the flags)",
                    path.join("."),
                    path.join(" ")
                ));
            }
        }
    }
    let names: Vec<String> = command
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    for name in names {
        let mut error = None;
        path.push(name.clone());
        command = command.mut_subcommand(name.as_str(), |sub| {
            match walk(sub.clone(), path, file, known_top) {
                Ok(sub) => sub,
                Err(e) => {
                    error = Some(e);
                    sub
                }
            }
        });
        path.pop();
        if let Some(e) = error {
            return Err(e);
        }
    }
    Ok(command)
}

/// The flag values a TOML value stands for.
fn default_values(id: &str, path: &[String], value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |v: &toml::Value| -> Result<String, String> {
        Ok(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "config: [{}] {id} = {other}: expected a string, number or boolean",
                    path.join(".")
                ));
            }
        })
    };
    match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect(),
        other => Ok(vec![scalar(other)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("TOML")
    }

    /// Every (command path, flag) of the tree.
    fn flags(command: &Command, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, Arg)>) {
        for arg in command.get_arguments().filter(|a| is_option(a)) {
            out.push((path.clone(), arg.clone()));
        }
        for sub in command.get_subcommands() {
            path.push(sub.get_name().to_owned());
            flags(sub, path, out);
            path.pop();
        }
    }

    fn all_flags() -> Vec<(Vec<String>, Arg)> {
        let command = apply(crate::Cli::command(), &toml::Table::new()).expect("no file");
        let mut out = Vec::new();
        flags(&command, &mut Vec::new(), &mut out);
        out
    }

    #[test]
    fn every_flag_has_an_environment_variable_and_a_toml_key() {
        let flags = all_flags();
        assert!(flags.len() > 50, "the walk sees the whole tree");
        for (path, arg) in &flags {
            let name = arg.get_long().unwrap_or_default();
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert!(
                env.as_deref().is_some_and(|e| e.starts_with("DCPIPE_")),
                "dcpipe {} --{name}: no DCPIPE_ variable",
                path.join(" ")
            );
            if arg.get_id() != "config" {
                assert!(
                    toml_key(path, arg).is_some(),
                    "dcpipe {} --{name}: no TOML key",
                    path.join(" ")
                );
            }
        }
        // Within one command, a variable names one flag.
        let mut seen = BTreeSet::new();
        for (path, arg) in &flags {
            let env = arg
                .get_env()
                .expect("checked")
                .to_string_lossy()
                .into_owned();
            if !arg.is_global_set() {
                assert!(
                    seen.insert((path.clone(), env.clone())),
                    "dcpipe {}: {env} twice",
                    path.join(" ")
                );
            }
        }
    }

    #[test]
    fn broker_flags_are_only_on_commands_that_use_a_broker() {
        let flags = all_flags();
        let has = |path: &[&str], name: &str| {
            flags.iter().any(|(p, a)| {
                p.iter().map(String::as_str).eq(path.iter().copied()) && a.get_long() == Some(name)
            })
        };
        for path in [
            &["worker"][..],
            &["demo"],
            &["loadtest"],
            &["bus", "init"],
            &["tail"],
            &["submit"],
            &["settlement"],
            &["dead-letters", "redrive"],
            &["pki", "revoke"],
            &["wallets", "lock"],
            &["wallets", "unlock"],
            &["wallets", "limit"],
        ] {
            assert!(has(path, "nats-user"), "dcpipe {}", path.join(" "));
            assert!(has(path, "kafka-property"), "dcpipe {}", path.join(" "));
        }
        for (path, arg) in &flags {
            let name = arg.get_long().unwrap_or_default();
            let uses_broker = matches!(
                path.iter().map(String::as_str).collect::<Vec<_>>()[..],
                ["pki", "revoke"] | ["wallets", "lock" | "unlock" | "limit"]
            );
            if !uses_broker
                && matches!(
                    path.first().map(String::as_str),
                    None | Some("pki" | "schemas" | "wallets")
                )
            {
                assert!(
                    !name.starts_with("nats-") && !name.starts_with("kafka-"),
                    "dcpipe {} --{name}: a broker flag on a command without a broker",
                    path.join(" ")
                );
            }
        }
    }

    #[test]
    fn help_shows_every_default() {
        for (path, arg) in all_flags() {
            assert!(
                !arg.is_hide_default_value_set(),
                "dcpipe {} --{}: its default is hidden from --help",
                path.join(" "),
                arg.get_long().unwrap_or_default()
            );
        }
        let mut worker = crate::Cli::command();
        let help = worker
            .find_subcommand_mut("worker")
            .expect("worker")
            .render_long_help()
            .to_string();
        assert!(help.contains("[default: 30s]"), "{help}");
        assert!(help.contains("[env: DCPIPE_ACK_WAIT=]"), "{help}");
    }

    #[test]
    fn durations_carry_their_unit_in_the_value_not_the_name() {
        for (path, arg) in all_flags() {
            let name = arg.get_long().unwrap_or_default().to_owned();
            for suffix in ["-ms", "-secs", "-seconds", "-millis", "-us"] {
                assert!(
                    !name.ends_with(suffix),
                    "dcpipe {} --{name}: give a duration with its unit (e.g. 30s)",
                    path.join(" ")
                );
            }
        }
    }

    #[test]
    fn a_file_sets_a_commands_flag_by_its_table_or_at_the_top() {
        let file = table("output = \"json\"\n[tail]\nfollow = true\nlimit = 7\n");
        let command = apply(crate::Cli::command(), &file).expect("known keys");
        let matches = command
            .try_get_matches_from(["dcpipe", "tail", "txn.result.oi01"])
            .expect("parses");
        let (_, tail) = matches.subcommand().expect("tail");
        assert_eq!(tail.get_one::<bool>("follow"), Some(&true));
        assert_eq!(tail.get_one::<u64>("limit"), Some(&7));
        // The flag wins over the file.
        let command = apply(crate::Cli::command(), &file).expect("known keys");
        let matches = command
            .try_get_matches_from(["dcpipe", "tail", "x.y", "--limit", "2"])
            .expect("parses");
        assert_eq!(
            matches
                .subcommand()
                .expect("tail")
                .1
                .get_one::<u64>("limit"),
            Some(&2)
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = apply(crate::Cli::command(), &table("buss = \"embedded\"\n"))
            .expect_err("a typo fails");
        assert!(err.contains("buss"), "{err}");
        let err = apply(crate::Cli::command(), &table("[tail]\nfolow = true\n"))
            .expect_err("a typo fails");
        assert!(err.contains("folow"), "{err}");
        assert!(apply(crate::Cli::command(), &table("[nats]\nuser = \"u\"\n")).is_ok());
    }

    #[test]
    fn the_config_path_comes_from_the_flag() {
        let args: Vec<OsString> = ["dcpipe", "--config", "a.toml", "tail", "x.y"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("a.toml")));
        let args: Vec<OsString> = ["dcpipe", "tail", "--config=b.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("b.toml")));
    }
}
