//! The metrics port of a worker process against a real broker: `/healthz`, `/readyz`
//! following the broker (NATS, Kafka) down and back, 404 elsewhere, and histograms of two
//! processes of one stage that add up.

#[path = "support/network.rs"]
mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcpipe_connectors::bus::{Bus, KafkaBus, KafkaOptions, NatsBus, NatsOptions};
use dcpipe_connectors::ledger::SettlementConfig;
use dcpipe_connectors::testkit::{NatsServer, TansuServer, free_address, http_get};
use dcpipe_loadtest::payments::{PaymentGenerator, PaymentMix};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::network::Network;

/// How long a condition may take to come true.
const DEADLINE: Duration = Duration::from_secs(60);

/// A worker process serving its metrics port, killed when dropped.
struct Worker {
    child: Child,
    metrics_addr: String,
    log: PathBuf,
}

impl Worker {
    fn start(args: &[String], log: PathBuf) -> Self {
        let metrics_addr = free_address();
        let file = std::fs::File::create(&log).expect("worker log");
        let child = Command::new(env!("CARGO_BIN_EXE_dcpipe"))
            .args(args)
            .args(["--metrics-addr", &metrics_addr])
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("dcpipe worker starts");
        Worker {
            child,
            metrics_addr,
            log,
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.metrics_addr, path).await
    }

    /// Waits until `path` answers `status`; the last answer.
    async fn wait_for(&self, path: &str, status: u16) -> String {
        let started = Instant::now();
        loop {
            if let Some((got, body)) = self.get(path).await
                && got == status
            {
                return body;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{path} never answered {status}; worker log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PKI, SQLite ledgers provisioned for 2 institutions and the subjects on `bus`.
struct Fixture {
    dir: tempfile::TempDir,
    network: Network,
}

impl Fixture {
    async fn new(bus: &dyn Bus) -> Self {
        let (dir, network) = network::two_institutions(bus, SettlementConfig::default()).await;
        Fixture { dir, network }
    }

    fn first_institution(&self) -> String {
        self.network
            .institutions
            .keys()
            .next()
            .expect("institution")
            .clone()
    }

    fn worker_args(&self, stage: &str, bus_url: &str) -> Vec<String> {
        let root = self.dir.path();
        vec![
            "worker".to_owned(),
            stage.to_owned(),
            "--institution".to_owned(),
            self.first_institution(),
            "--bus".to_owned(),
            bus_url.to_owned(),
            "--ledger".to_owned(),
            format!("sqlite://{}", root.join("ledgers").display()),
            "--pki".to_owned(),
            root.join("pki").display().to_string(),
        ]
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

async fn nats_bus(server: &NatsServer) -> Arc<dyn Bus> {
    Arc::new(
        NatsBus::connect(&[server.address()], &NatsOptions::default())
            .await
            .expect("connect"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker_down_and_back() {
    let mut server = NatsServer::start().await.expect("nats-server");
    let bus = nats_bus(&server).await;
    let fixture = Fixture::new(bus.as_ref()).await;
    let worker = Worker::start(
        &fixture.worker_args("payer", &server.url()),
        fixture.log("payer.log"),
    );

    let ready = worker.wait_for("/readyz", 200).await;
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("json");
    assert_eq!(ready["ready"], true);
    // Its ledger holds wallets: nothing to warn of.
    assert_eq!(ready["warnings"], serde_json::json!([]), "{ready}");
    assert_eq!(worker.get("/healthz").await, Some((200, "ok\n".to_owned())));
    let (status, _) = worker.get("/nothing-here").await.expect("answer");
    assert_eq!(status, 404);
    let (status, _) = worker.get("/").await.expect("answer");
    assert_eq!(status, 404);

    server.stop();
    let body = worker.wait_for("/readyz", 503).await;
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["ready"], false);
    let parts: Vec<&str> = body["not_ready"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|part| part["component"].as_str())
        .collect();
    assert!(parts.contains(&"bus"), "{body}");
    // Alive all the same.
    assert_eq!(
        worker.get("/healthz").await,
        Some((200, "ok\n".to_owned())),
        "the worker stopped; its log:\n{}",
        std::fs::read_to_string(fixture.log("payer.log")).unwrap_or_default()
    );

    server.start_again().await.expect("nats-server again");
    worker.wait_for("/readyz", 200).await;
}

/// A worker started (or restarted by its supervisor) while its broker is down is alive and not
/// ready, says why, and becomes ready once the broker is back instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_the_broker_is_down_waits_for_it() {
    let mut server = NatsServer::start().await.expect("nats-server");
    let bus = nats_bus(&server).await;
    let fixture = Fixture::new(bus.as_ref()).await;
    server.stop();
    let worker = Worker::start(
        &fixture.worker_args("payer", &server.url()),
        fixture.log("payer-late.log"),
    );
    let body = worker.wait_for("/readyz", 503).await;
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["ready"], false, "{body}");
    // Until the bus has been tried the worker is "starting"; then it says the bus is refused.
    let log = || std::fs::read_to_string(fixture.log("payer-late.log")).unwrap_or_default();
    let started = Instant::now();
    while !log().contains("the bus is unreachable; connecting again") {
        assert!(started.elapsed() < DEADLINE, "no retry logged:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        worker.get("/healthz").await,
        Some((200, "ok\n".to_owned())),
        "the worker stopped; its log:\n{}",
        log()
    );
    let body: serde_json::Value =
        serde_json::from_str(&worker.get("/readyz").await.expect("answer").1).expect("json");
    let bus_part = body["not_ready"]
        .as_array()
        .expect("list")
        .iter()
        .find(|part| part["component"] == "bus")
        .unwrap_or_else(|| panic!("bus not listed: {body}"))
        .clone();
    assert!(
        bus_part["why"]
            .as_str()
            .is_some_and(|why| why.contains("connecting to NATS")),
        "{body}"
    );

    server.start_again().await.expect("nats-server again");
    worker.wait_for("/readyz", 200).await;
    assert_eq!(log().matches("worker starting").count(), 1, "{}", log());
}

/// As on NATS: the Kafka client's broker state (from the producer's statistics) makes
/// `/readyz` 503 while the broker is stopped and 200 once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_kafka_broker_down_and_back() {
    let mut server = TansuServer::start().await.expect("tansu");
    let bus: Arc<dyn Bus> = Arc::new(
        KafkaBus::connect(&[server.address()], &KafkaOptions::default())
            .await
            .expect("connect"),
    );
    let fixture = Fixture::new(bus.as_ref()).await;
    let worker = Worker::start(
        &fixture.worker_args("payer", &server.url()),
        fixture.log("payer-kafka.log"),
    );
    worker.wait_for("/readyz", 200).await;

    server.stop();
    let body = worker.wait_for("/readyz", 503).await;
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["ready"], false);
    let parts: Vec<&str> = body["not_ready"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|part| part["component"].as_str())
        .collect();
    assert!(parts.contains(&"bus"), "{body}");
    assert_eq!(worker.get("/healthz").await, Some((200, "ok\n".to_owned())));

    server.start_again().await.expect("tansu again");
    worker.wait_for("/readyz", 200).await;
}

/// One exposition: every sample by its name and labels; the families with `# HELP` and with
/// `# TYPE`.
#[derive(Debug, Default)]
struct Exposition {
    samples: BTreeMap<(String, String), f64>,
    helped: BTreeSet<String>,
    typed: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut exposition = Exposition::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split_whitespace().next().expect("name");
                exposition.helped.insert(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                let name = words.next().expect("name").to_owned();
                let kind = words.next().expect("type").to_owned();
                exposition.typed.insert(name, kind);
            } else if !line.starts_with('#') {
                let (series, value) = line.rsplit_once(' ').expect("sample");
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
                };
                exposition
                    .samples
                    .insert((name.to_owned(), labels.to_owned()), value);
            }
        }
        exposition
    }

    /// The sum of every sample of `name` whose labels contain `filter`.
    fn sum(&self, name: &str, filter: &str) -> f64 {
        self.samples
            .iter()
            .filter(|((n, labels), _)| n == name && labels.contains(filter))
            .map(|(_, v)| v)
            .sum()
    }

    /// The cumulative buckets of histogram `name` whose labels contain `filter`, by bound.
    fn buckets(&self, name: &str, filter: &str) -> BTreeMap<String, f64> {
        let bucket = format!("{name}_bucket");
        let mut buckets = BTreeMap::new();
        for ((n, labels), v) in &self.samples {
            if *n == bucket && labels.contains(filter) {
                let le = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("le=\""))
                    .expect("le")
                    .trim_end_matches('"')
                    .to_owned();
                *buckets.entry(le).or_insert(0.0) += v;
            }
        }
        buckets
    }
}

fn bound(le: &str) -> f64 {
    if le == "+Inf" {
        f64::INFINITY
    } else {
        le.parse().expect("bound")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_of_two_processes_of_one_stage_add_up() {
    let server = NatsServer::start().await.expect("nats-server");
    let bus = nats_bus(&server).await;
    let fixture = Fixture::new(bus.as_ref()).await;
    let args = fixture.worker_args("payer", &server.url());
    let workers = [
        Worker::start(&args, fixture.log("payer-1.log")),
        Worker::start(&args, fixture.log("payer-2.log")),
    ];
    for worker in &workers {
        worker.wait_for("/readyz", 200).await;
    }

    // Payments of the first institution's payers, in bursts so that both processes take some.
    let institution = fixture.first_institution();
    let mut generator = PaymentGenerator::new(&fixture.network, PaymentMix::default(), 11);
    let mut published = 0;
    while published < 200 {
        let mut burst = Vec::new();
        while burst.len() < 20 {
            let generated = generator.next(system_now_ms()).expect("payment");
            if generated.envelope.payer.institution_id == institution {
                burst.push(generated.outgoing());
            }
        }
        published += burst.len();
        bus.publish_many(burst).await.expect("published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every submission is settled once, by one process or the other.
    let started = Instant::now();
    let expositions = loop {
        let mut expositions = Vec::new();
        for worker in &workers {
            let (status, text) = worker.get("/metrics").await.expect("scrape");
            assert_eq!(status, 200);
            expositions.push(Exposition::parse(&text));
        }
        let settled: f64 = expositions
            .iter()
            .map(|e| e.sum("dcpipe_stage_messages_total", "stage=\"payer\""))
            .sum();
        if settled as usize >= published {
            assert_eq!(settled as usize, published);
            break expositions;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{settled} of {published} settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    for exposition in &expositions {
        // Every family says what it is.
        for family in exposition.typed.keys() {
            assert!(exposition.helped.contains(family), "no # HELP for {family}");
        }
        assert_eq!(
            exposition.typed.get("dcpipe_stage_batch_seconds"),
            Some(&"histogram".to_owned())
        );
        assert!(
            exposition
                .samples
                .keys()
                .any(|(name, labels)| name == "dcpipe_build_info"
                    && labels.contains("version=\"")
                    && labels.contains("commit=\""))
        );
        for family in ["process_cpu_seconds_total", "process_resident_memory_bytes"] {
            assert!(exposition.sum(family, "") > 0.0, "{family}");
        }
        assert!(exposition.sum("process_open_fds", "") >= 3.0);
    }

    // The two histograms share their buckets, so their sum is a histogram of the stage.
    for (name, filter) in [
        ("dcpipe_stage_batch_seconds", "stage=\"payer\""),
        ("dcpipe_ledger_batch_seconds", "backend=\"sqlite\""),
    ] {
        let per_process: Vec<BTreeMap<String, f64>> = expositions
            .iter()
            .map(|e| e.buckets(name, filter))
            .collect();
        let bounds: Vec<BTreeSet<&String>> =
            per_process.iter().map(|b| b.keys().collect()).collect();
        assert!(
            bounds.iter().all(|b| b.len() > 2),
            "{name}: {per_process:?}"
        );
        assert_eq!(bounds[0], bounds[1], "{name}: bucket bounds differ");
        let mut merged: Vec<(f64, f64)> = bounds[0]
            .iter()
            .map(|le| {
                let count: f64 = per_process.iter().map(|b| b[*le]).sum();
                (bound(le), count)
            })
            .collect();
        merged.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            merged.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: not cumulative: {merged:?}"
        );
        let count: f64 = expositions
            .iter()
            .map(|e| e.sum(&format!("{name}_count"), filter))
            .sum();
        let last = merged.last().expect("+Inf");
        assert_eq!(last.0, f64::INFINITY);
        assert_eq!(last.1, count, "{name}: +Inf bucket is not the count");
        assert!(count >= 1.0);
    }
}
