//! compose/docker-compose.yml cannot drift from the binary: a compose implementation accepts
//! the file (`docker-compose config`), every dcpipe command line in it parses with this
//! binary's own argument parser, each worker mounts the trust anchors and its own signer's
//! directory only, read-only, and Prometheus scrapes every dcpipe service.
//!
//! The compose implementation (`docker-compose`, Debian's or PyPI's, installed by
//! scripts/setup.sh; `DCPIPE_DOCKER_COMPOSE` names another) resolves the file as Docker would:
//! anchors, merges and `${VARIABLE}` interpolation. Its output, and the Prometheus
//! configuration, are read as YAML by Python's `yaml` module, which every docker-compose of
//! Python comes with.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory as _, FromArgMatches as _};
use serde_json::Value;

use crate::Cli;
use crate::settings::Settings;

/// The image every dcpipe service runs.
const IMAGE: &str = "dcpipe:latest";

fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("compose")
}

/// `docker-compose config` of the file, with `environment` as the deployment's `.env` would
/// give it, as JSON.
fn resolved(environment: &[(&str, &str)]) -> Value {
    let program =
        std::env::var("DCPIPE_DOCKER_COMPOSE").unwrap_or_else(|_| "docker-compose".into());
    let mut command = Command::new(&program);
    command
        .current_dir(compose_dir())
        .args(["--file", "docker-compose.yml", "config"])
        .env_remove("DCPIPE_COMPOSE_BUS");
    for (name, value) in environment {
        command.env(name, value);
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "{program} does not run ({e}): scripts/setup.sh installs it (Debian's docker-compose)"
        )
    });
    assert!(
        output.status.success(),
        "{program} config refuses compose/docker-compose.yml: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    yaml_to_json(&output.stdout)
}

/// YAML text as JSON, through Python's `yaml` module.
fn yaml_to_json(yaml: &[u8]) -> Value {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), yaml).expect("written");
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("python3 ends");
    assert!(
        output.status.success(),
        "python3 cannot read the YAML: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

/// The services that run the dcpipe image, with their command lines.
fn dcpipe_services(config: &Value) -> Vec<(String, &Value, Vec<String>)> {
    let services = config["services"].as_object().expect("services");
    services
        .iter()
        .filter(|(_, service)| service["image"] == IMAGE)
        .map(|(name, service)| {
            let command = service["command"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: command is not a list"))
                .iter()
                .map(|word| word.as_str().expect("a word").to_owned())
                .collect();
            (name.clone(), service, command)
        })
        .collect()
}

/// Parses `args` as `main` does (no configuration file) and resolves its settings.
fn parse(args: &[String]) -> Result<Cli, String> {
    let command = crate::options::apply(Cli::command(), &toml::Table::new())?;
    let matches = command
        .try_get_matches_from(std::iter::once("dcpipe".to_owned()).chain(args.iter().cloned()))
        .map_err(|e| e.to_string())?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let mut global = cli.global.clone();
    if let Some(broker) = cli.command.broker() {
        broker.apply_to(&mut global);
    }
    Settings::resolve(&global)?;
    Ok(cli)
}

/// The value following `flag` in `command`.
fn flag<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command
        .iter()
        .position(|word| word == flag)
        .and_then(|at| command.get(at + 1))
        .map(String::as_str)
}

const ENVIRONMENT: &[(&str, &str)] = &[
    ("POSTGRES_PASSWORD", "compose-check"),
    ("GRAFANA_ADMIN_PASSWORD", "compose-check"),
];

#[test]
fn every_dcpipe_command_in_compose_parses_with_the_binarys_parser() {
    for bus in [None, Some("kafka://kafka-1:9092,kafka-2:9092,kafka-3:9092")] {
        let mut environment = ENVIRONMENT.to_vec();
        if let Some(bus) = bus {
            environment.push(("DCPIPE_COMPOSE_BUS", bus));
        }
        let config = resolved(&environment);
        let services = dcpipe_services(&config);
        assert!(
            services.len() >= 13,
            "{:?}",
            services.iter().map(|s| &s.0).collect::<Vec<_>>()
        );
        for (name, _, command) in &services {
            if let Err(message) = parse(command) {
                panic!("{name}: {command:?} does not parse: {message}");
            }
            if let Some(url) = flag(command, "--bus") {
                let expected = bus.unwrap_or("nats://nats-1:4222,nats-2:4222,nats-3:4222");
                assert_eq!(url, expected, "{name}");
            }
        }
    }
}

#[test]
fn each_worker_mounts_the_trust_anchors_and_its_own_signer_only_read_only() {
    let config = resolved(ENVIRONMENT);
    let mut workers = 0;
    for (name, service, command) in dcpipe_services(&config) {
        let Some(at) = command.iter().position(|word| word == "worker") else {
            continue;
        };
        workers += 1;
        let stage = &command[at + 1];
        let own = match flag(&command, "--institution") {
            Some(institution) => format!("pki/institutions/{institution}/signer"),
            None => "pki/settlement".to_owned(),
        };
        assert_eq!(
            name,
            flag(&command, "--institution").map_or(stage.clone(), |i| format!("{stage}-{i}"))
        );
        assert_eq!(flag(&command, "--pki"), Some("/pki/trust"), "{name}");
        assert_eq!(flag(&command, "--key"), Some("/pki/key"), "{name}");
        assert_eq!(service["read_only"], true, "{name}");
        let mounts: BTreeSet<(String, String, bool)> = service["volumes"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no volumes"))
            .iter()
            .map(volume_of)
            .collect();
        let expected: BTreeSet<(String, String, bool)> = [
            ("pki/trust".to_owned(), "/pki/trust".to_owned(), true),
            (own, "/pki/key".to_owned(), true),
        ]
        .into_iter()
        .collect();
        assert_eq!(mounts, expected, "{name}");
    }
    assert_eq!(
        workers, 9,
        "four stages of two institutions, and settlement"
    );
}

/// A volume of a resolved service: its source relative to compose/, its target, read-only.
fn volume_of(volume: &Value) -> (String, String, bool) {
    // docker-compose config writes short syntax ("SOURCE:TARGET:ro") or long syntax.
    if let Some(text) = volume.as_str() {
        let parts: Vec<&str> = text.split(':').collect();
        let source = relative(parts[0]);
        return (source, parts[1].to_owned(), parts.get(2) == Some(&"ro"));
    }
    (
        relative(volume["source"].as_str().expect("source")),
        volume["target"].as_str().expect("target").to_owned(),
        volume["read_only"] == true,
    )
}

fn relative(source: &str) -> String {
    let dir = compose_dir();
    let dir = dir.canonicalize().unwrap_or(dir);
    Path::new(source)
        .strip_prefix(&dir)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| source.trim_start_matches("./").to_owned())
}

#[test]
fn prometheus_scrapes_every_dcpipe_service() {
    let config = resolved(ENVIRONMENT);
    let served: BTreeSet<String> = dcpipe_services(&config)
        .into_iter()
        .filter(|(_, _, command)| flag(command, "--metrics-addr") == Some("0.0.0.0:9464"))
        .map(|(name, _, _)| name)
        .collect();
    let text =
        std::fs::read(compose_dir().join("prometheus/prometheus.yml")).expect("prometheus.yml");
    let prometheus = yaml_to_json(&text);
    let job = prometheus["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|job| job["job_name"] == "dcpipe")
        .expect("the dcpipe job");
    let scraped: BTreeSet<String> = job["dns_sd_configs"][0]["names"]
        .as_array()
        .expect("names")
        .iter()
        .map(|name| name.as_str().expect("name").to_owned())
        .collect();
    assert_eq!(scraped, served);
    assert_eq!(job["dns_sd_configs"][0]["port"], 9464);
}

/// `scripts/cluster.sh commands …`: each worker's service name and arguments, for these
/// values.
fn cluster_script_commands(values: &[&str]) -> std::collections::BTreeMap<String, Vec<String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("commands")
        .args(values)
        .output()
        .expect("bash runs scripts/cluster.sh");
    assert!(
        output.status.success(),
        "scripts/cluster.sh commands: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| {
            let mut words = line.split(' ').map(str::to_owned);
            let service = words.next().expect("a service");
            (service, words.collect())
        })
        .collect()
}

#[test]
fn the_cluster_script_runs_the_worker_command_lines_of_compose() {
    let config = resolved(ENVIRONMENT);
    let mut compose = std::collections::BTreeMap::new();
    for (name, service, command) in dcpipe_services(&config) {
        if !command.iter().any(|word| word == "worker") {
            continue;
        }
        // A path inside the container is read as the host directory mounted there.
        let mounts: Vec<(String, String, bool)> = service["volumes"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no volumes"))
            .iter()
            .map(volume_of)
            .collect();
        let on_host: Vec<String> = command
            .iter()
            .map(|word| {
                mounts
                    .iter()
                    .find(|(_, target, _)| target == word)
                    .map_or_else(|| word.clone(), |(source, _, _)| source.clone())
            })
            .collect();
        compose.insert(name, on_host);
    }
    let payer = &compose["payer-oi01"];
    let bus = flag(payer, "--bus").expect("--bus").to_owned();
    let ledger = flag(payer, "--ledger").expect("--ledger").to_owned();
    let script = cluster_script_commands(&[&bus, &ledger, "pki/trust", "pki", "0.0.0.0:9464"]);
    assert_eq!(script.len(), 9, "{script:?}");
    assert_eq!(script, compose);
}
