//! compose/prometheus and the Grafana dashboard against the real thing: `promtool` checks the
//! configuration and the rules and runs the rules' unit tests, and a real Prometheus server
//! scrapes real worker processes (two institutions and settlement) during a short run on a
//! real broker, loads the alert rules, and its HTTP API shows every series the rules and the
//! dashboard use, every rule evaluating without error, every dashboard query answering, and
//! the alerts of the bad input the run injected firing.
//!
//! Prometheus and promtool come from Debian's `prometheus` package (scripts/setup.sh);
//! `DCPIPE_PROMETHEUS` and `DCPIPE_PROMTOOL` name others.

#[path = "support/network.rs"]
mod network;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcpipe_connectors::bus::{Bus, KafkaBus, KafkaOptions, NatsBus, NatsOptions, Outgoing};
use dcpipe_connectors::ledger::SettlementConfig;
use dcpipe_connectors::testkit::{NatsServer, TansuServer, free_address, http_get};
use dcpipe_loadtest::payments::{PaymentGenerator, PaymentMix};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::network::Network;
use dcpipe_pipeline::subjects;
use serde_json::Value;

/// How long the series may take to appear.
const DEADLINE: Duration = Duration::from_secs(120);
/// Payments the run makes.
const PAYMENTS: usize = 60;
/// Settlement windows of the run: short, so that windows close during it.
const SETTLEMENT_WINDOW_MS: i64 = 2_000;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tool(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

/// Runs promtool with `args` in compose/prometheus; its output.
fn promtool(args: &[&str]) -> String {
    let program = tool("DCPIPE_PROMTOOL", "promtool");
    let output = Command::new(&program)
        .current_dir(repository().join("compose/prometheus"))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} does not run ({e}): scripts/setup.sh installs Debian's prometheus")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn promtool_accepts_the_configuration_and_the_rules_and_their_tests_pass() {
    promtool(&["check", "config", "prometheus.yml"]);
    let rules = promtool(&["check", "rules", "alerts.yml"]);
    assert!(rules.contains("SUCCESS"), "{rules}");
    let tests = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tests.contains("SUCCESS"), "{tests}");
}

/// The alert names of alerts.yml.
fn alert_names() -> Vec<String> {
    let text = std::fs::read_to_string(repository().join("compose/prometheus/alerts.yml"))
        .expect("alerts.yml");
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(|name| name.trim().to_owned())
        .collect()
}

#[test]
fn every_alert_has_a_unit_test_and_an_entry_in_the_operations_guide() {
    let tests = std::fs::read_to_string(repository().join("compose/prometheus/alerts.test.yml"))
        .expect("alerts.test.yml");
    let operations =
        std::fs::read_to_string(repository().join("docs/OPERATIONS.md")).expect("OPERATIONS.md");
    let names = alert_names();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name}: no unit test fires it"
        );
        assert!(
            operations.contains(&format!("`{name}`")),
            "{name}: not explained in docs/OPERATIONS.md"
        );
    }
}

/// The metric names a PromQL expression reads: `dcpipe_*` and `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("dcpipe_") || word == "up" {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

/// Every query of the dashboard's panels.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repository().join("compose/grafana/dashboards/dcpipe.json"))
        .expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    queries
}

#[test]
fn metric_names_are_read_from_expressions() {
    assert_eq!(
        metric_names(r#"sum by (x) (rate(dcpipe_a_total{reason=~"dcpipe_no"}[5m])) / up"#),
        ["dcpipe_a_total", "up"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
}

/// `text` percent-encoded for a query string.
fn query_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A child process killed when dropped.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(program: &str, args: &[String], log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} does not start: {e}"));
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus server scraping `targets` (service name, address) every second with the alert
/// rules of compose/prometheus loaded.
struct Prometheus {
    process: Process,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[(String, String)]) -> Self {
        let rules = repository().join("compose/prometheus/alerts.yml");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: dcpipe\n    static_configs:\n",
            rules.display()
        );
        for (service, addr) in targets {
            config.push_str(&format!(
                "      - targets: [\"{addr}\"]\n        labels: {{service: \"{service}\"}}\n"
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("prometheus.yml");
        let addr = free_address();
        let args = vec![
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            format!("--web.listen-address={addr}"),
        ];
        let program = tool("DCPIPE_PROMETHEUS", "prometheus");
        let process = Process::start(&program, &args, dir.join("prometheus.log"));
        Prometheus { process, addr }
    }

    /// `GET /api/v1/<path>`'s `data`, once the server answers with success.
    async fn api(&self, path: &str) -> Option<Value> {
        let (status, body) = http_get(&self.addr, &format!("/api/v1/{path}")).await?;
        let value: Value = serde_json::from_str(&body).ok()?;
        (status == 200 && value["status"] == "success").then(|| value["data"].clone())
    }
}

/// A PKI, SQLite ledgers for 2 institutions and the subjects on `bus`.
struct Fixture {
    dir: tempfile::TempDir,
    network: Network,
}

impl Fixture {
    async fn new(bus: &dyn Bus) -> Self {
        let (dir, network) = network::two_institutions(
            bus,
            SettlementConfig {
                window_ms: SETTLEMENT_WINDOW_MS,
            },
        )
        .await;
        Fixture { dir, network }
    }

    /// The workers of both institutions and settlement: (service, arguments).
    fn workers(&self, bus_url: &str) -> Vec<(String, Vec<String>)> {
        let root = self.dir.path();
        let common = |stage: &str| {
            vec![
                "worker".to_owned(),
                stage.to_owned(),
                "--bus".to_owned(),
                bus_url.to_owned(),
                "--ledger".to_owned(),
                format!("sqlite://{}", root.join("ledgers").display()),
                "--pki".to_owned(),
                root.join("pki").display().to_string(),
            ]
        };
        let mut workers = Vec::new();
        for institution in self.network.institutions.keys() {
            for stage in ["payer", "payee", "commit", "finalize"] {
                let mut args = common(stage);
                args.extend(["--institution".to_owned(), institution.clone()]);
                workers.push((format!("{stage}-{institution}"), args));
            }
        }
        // Short windows, so that one closes during the run.
        let mut settlement = common("settlement");
        settlement
            .extend(["--settlement-window", "2s", "--settlement-grace", "1s"].map(String::from));
        workers.push(("settlement".to_owned(), settlement));
        workers
    }
}

/// The scenario, written once for every broker a worker process can use.
async fn prometheus_sees_every_series_the_rules_and_the_dashboard_use(
    bus: Arc<dyn Bus>,
    bus_url: &str,
) {
    let fixture = Fixture::new(bus.as_ref()).await;
    let program = env!("CARGO_BIN_EXE_dcpipe");
    let mut workers = Vec::new();
    let mut targets = Vec::new();
    for (service, args) in fixture.workers(bus_url) {
        let metrics_addr = free_address();
        let mut args = args;
        args.extend(["--metrics-addr".to_owned(), metrics_addr.clone()]);
        let log = fixture.dir.path().join(format!("{service}.log"));
        workers.push((service.clone(), Process::start(program, &args, log)));
        targets.push((service, metrics_addr));
    }
    let prometheus = Prometheus::start(fixture.dir.path(), &targets);

    // Every worker ready, as Prometheus sees it.
    wait_for(
        &prometheus,
        &workers,
        "every worker ready",
        |data| {
            let ready = data["result"]
                .as_array()
                .map_or(0, |r| r.iter().filter(|s| s["value"][1] == "1").count());
            ready == targets.len()
        },
        "query?query=dcpipe_ready",
    )
    .await;

    // Payments between the two institutions, bytes that are no envelope (dead-lettered) and a
    // revocation update that is no update (refused by every worker).
    let mut generator = PaymentGenerator::new(&fixture.network, PaymentMix::default(), 5);
    let mut burst = Vec::new();
    while burst.len() < PAYMENTS {
        burst.push(generator.next(system_now_ms()).expect("payment").outgoing());
    }
    let institution = fixture
        .network
        .institutions
        .keys()
        .next()
        .expect("oi")
        .clone();
    burst.push(Outgoing::new(
        subjects::txn_submit(&institution),
        &b"no envelope"[..],
    ));
    burst.push(Outgoing::new(subjects::PKI_REVOCATION, &b"no update"[..]));
    bus.publish_many(burst).await.expect("published");

    // Every series the rules and the dashboard read, in Prometheus.
    let rules = prometheus.api("rules").await.expect("rules");
    let mut expressions: Vec<String> = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            expressions.push(rule["query"].as_str().expect("query").to_owned());
        }
    }
    assert_eq!(expressions.len(), alert_names().len(), "every rule loaded");
    let queries = dashboard_queries();
    let needed: BTreeSet<String> = expressions
        .iter()
        .chain(&queries)
        .flat_map(|e| metric_names(e))
        .collect();
    let needed_list: Vec<String> = needed.iter().cloned().collect();
    wait_for(
        &prometheus,
        &workers,
        &format!("every series of {needed_list:?}"),
        |data| {
            let present: BTreeSet<&str> = data
                .as_array()
                .map(|names| names.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            needed.iter().all(|name| present.contains(name.as_str()))
        },
        "label/__name__/values",
    )
    .await;

    // Every dashboard query answers; every rule evaluates without error.
    for query in &queries {
        let path = format!("query?query={}", query_encoded(query));
        assert!(
            prometheus.api(&path).await.is_some(),
            "{query} does not answer"
        );
    }
    wait_for(
        &prometheus,
        &workers,
        "the injected dead letter and refused revocation alerting, every rule healthy",
        |data| {
            let rules: Vec<&Value> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            let healthy = rules.iter().all(|r| r["health"] == "ok");
            let firing = |name: &str| {
                rules
                    .iter()
                    .any(|r| r["name"] == name && r["state"] == "firing")
            };
            healthy && firing("DcpipeDeadLetters") && firing("DcpipeRevocationUpdatesRefused")
        },
        "rules",
    )
    .await;
}

/// Waits until `check` holds for `GET /api/v1/<path>`'s data.
async fn wait_for(
    prometheus: &Prometheus,
    workers: &[(String, Process)],
    what: &str,
    check: impl Fn(&Value) -> bool,
    path: &str,
) {
    let started = Instant::now();
    let mut last = None;
    loop {
        if let Some(data) = prometheus.api(path).await {
            if check(&data) {
                return;
            }
            last = Some(data);
        }
        if started.elapsed() > DEADLINE {
            let logs: Vec<String> = workers
                .iter()
                .map(|(service, process)| format!("--- {service}\n{}", process.log()))
                .collect();
            panic!(
                "not seen within {DEADLINE:?}: {what}\nlast answer of {path}: {last:?}\nprometheus:\n{}\n{}",
                prometheus.process.log(),
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_every_series_on_nats() {
    let server = NatsServer::start().await.expect("nats-server");
    let bus: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&[server.address()], &NatsOptions::default())
            .await
            .expect("connect"),
    );
    prometheus_sees_every_series_the_rules_and_the_dashboard_use(bus, &server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_every_series_on_kafka() {
    let server = TansuServer::start().await.expect("tansu");
    let bus: Arc<dyn Bus> = Arc::new(
        KafkaBus::connect(&[server.address()], &KafkaOptions::default())
            .await
            .expect("connect"),
    );
    prometheus_sees_every_series_the_rules_and_the_dashboard_use(bus, &server.url()).await;
}
