//! dcpipe on a 3-node NATS JetStream cluster under faults. The streams are provisioned with 3
//! replicas by `dcpipe bus init`; the workers of two institutions and settlement run as
//! processes with the command lines of `scripts/cluster.sh` (those of
//! compose/docker-compose.yml), connected to the three nodes. While payments flow, the node
//! leading the payment stream is SIGKILLed and restarted, then a follower, then one worker of
//! each stage. At the end every payment has exactly one outcome, none completed twice, money is
//! conserved and settled, settlement's positions equal what cleared, every submission the
//! broker acknowledged is in its stream exactly once, and every replica is current.
//!
//! How long each node kill stalled the payments, and their latency around each fault, are
//! printed (docs/OPERATIONS.md, "Reliability"):
//! `cargo test -p dcpipe --test cluster_failover -- --nocapture`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcpipe_connectors::bus::{Bus, ConsumerConfig, NatsBus, NatsOptions, Outgoing, StartAt};
use dcpipe_connectors::ledger::{LedgerUrl, SettlementConfig};
use dcpipe_connectors::testkit::NatsCluster;
use dcpipe_loadtest::payments::{PaymentGenerator, PaymentMix};
use dcpipe_pipeline::clock::{SystemClock, system_now_ms};
use dcpipe_pipeline::invariants::{OutcomeBook, Submission};
use dcpipe_pipeline::network::{Network, NetworkConfig};
use dcpipe_pipeline::pki::{AlgorithmChoice, DemoPkiOptions, init_pki_directory};
use dcpipe_pipeline::subjects;
use dcpipe_schemas::{OutcomeStatus, PaymentId, PaymentOutcome, SettlementInstruction};
use futures::StreamExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Payments published every tick, and the tick: 25 payments/s.
const PAYMENTS_PER_TICK: usize = 5;
const TICK: Duration = Duration::from_millis(200);
/// How long payments are published at least; the load goes on until every fault was made and
/// [`AFTER_LAST_FAULT`] more.
const LOAD: Duration = Duration::from_secs(40);
/// Load after the last fault.
const AFTER_LAST_FAULT: Duration = Duration::from_secs(3);
/// Time left between the end of a fault (every stream and consumer led again, or a worker
/// restarted) and the next fault, so that the payments sent around one fault are measured
/// apart from the next.
const BETWEEN_FAULTS: Duration = Duration::from_secs(5);
/// How long the pipeline has to answer, settle and replicate after the load.
const DRAIN: Duration = Duration::from_secs(60);
/// How long the load's publisher tries to publish one batch.
const PUBLISH_GIVE_UP: Duration = Duration::from_secs(60);
/// How long a killed node stays down at least (it stays down until the two others lead what
/// it led).
const NODE_DOWN: Duration = Duration::from_secs(2);
/// The test's tuning of the workers (appended to the command lines of compose): a killed
/// worker's deliveries come back after 3 s, and settlement windows close every 2 s.
const WORKER_TUNING: [&str; 4] = ["--ack-wait", "3s", "--settlement-window", "2s"];
/// The ack wait of the test's own consumers (outcomes, instructions), as the workers'.
const OBSERVER_ACK_WAIT: Duration = Duration::from_secs(3);
/// The stream the payments are submitted to and answered on.
const PAYMENT_STREAM: &str = "TXN";

/// A worker process, killed when dropped.
struct Worker {
    service: String,
    args: Vec<String>,
    log: PathBuf,
    child: Child,
    /// How many times it was started.
    starts: usize,
}

impl Worker {
    fn start(service: String, args: Vec<String>, log: PathBuf) -> Self {
        let child = spawn(&args, &log);
        Worker {
            service,
            args,
            log,
            child,
            starts: 1,
        }
    }

    /// SIGKILL, then start the same command again.
    fn kill_and_restart(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
        self.restart();
    }

    fn restart(&mut self) {
        self.child = spawn(&self.args, &self.log);
        self.starts += 1;
    }

    /// The last line of its log.
    fn last_log_line(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    }
}

/// A worker that exited by itself, as its supervisor saw it.
#[derive(Debug)]
struct Exit {
    service: String,
    at: Instant,
    last_line: String,
}

/// Restarts every worker that exits by itself, as the deployment's supervisor does
/// (compose/docker-compose.yml: `restart: unless-stopped`), until `shutdown`; returns the exits.
async fn supervise(workers: Arc<Mutex<Vec<Worker>>>, shutdown: CancellationToken) -> Vec<Exit> {
    let mut exits = Vec::new();
    while !shutdown.is_cancelled() {
        {
            let mut workers = workers.lock().expect("workers");
            for worker in workers.iter_mut() {
                if let Ok(Some(_)) = worker.child.try_wait() {
                    exits.push(Exit {
                        service: worker.service.clone(),
                        at: Instant::now(),
                        last_line: worker.last_log_line(),
                    });
                    worker.restart();
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    exits
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[String], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("worker log");
    Command::new(env!("CARGO_BIN_EXE_dcpipe"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("dcpipe worker starts")
}

/// `scripts/cluster.sh commands …`: each worker's service and arguments.
fn cluster_script_commands(values: &[String]) -> Vec<(String, Vec<String>)> {
    let output = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh"))
        .arg("commands")
        .args(values)
        .output()
        .expect("bash runs scripts/cluster.sh");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| {
            let mut words = line.split(' ').map(str::to_owned);
            (words.next().expect("service"), words.collect())
        })
        .collect()
}

/// The server name leading `stream`, asked of any node that answers.
async fn stream_leader(cluster: &NatsCluster, stream: &str) -> Option<String> {
    for i in 0..3 {
        if !cluster.is_running(i) {
            continue;
        }
        let Ok(client) = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(cluster.node_url(i))
            .await
        else {
            continue;
        };
        let jetstream = async_nats::jetstream::new(client);
        if let Ok(mut handle) = jetstream.get_stream(stream).await
            && let Ok(info) = handle.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return Some(leader);
        }
    }
    None
}

/// A fault and when it happened.
#[derive(Debug, Clone)]
struct Fault {
    what: String,
    at: Instant,
    /// For a node's kill: when every stream and consumer had a leader again.
    led_again: Option<Instant>,
    /// For a node's kill: when the payment stream had a leader again.
    payments_led_again: Option<Instant>,
}

/// How long one leader question waits for its answer (only a group's leader answers).
const LEADER_QUESTION_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between two rounds of leader questions.
const LEADER_POLL: Duration = Duration::from_millis(100);

/// Every replicated group of the deployment: the streams and their durable consumers (not the
/// ordered consumers of replays and followers, which a client recreates elsewhere when their
/// node dies).
async fn raft_groups(jetstream: &async_nats::jetstream::Context) -> Vec<(String, Option<String>)> {
    let streams: Vec<String> = jetstream
        .stream_names()
        .map(|name| name.expect("stream name"))
        .collect()
        .await;
    let mut groups = Vec::new();
    for stream in streams {
        let handle = jetstream.get_stream(&stream).await.expect("stream");
        let consumers: Vec<String> = handle
            .consumers()
            .map(|info| info.expect("consumer info"))
            .filter(|info| futures::future::ready(info.config.durable_name.is_some()))
            .map(|info| info.name)
            .collect()
            .await;
        groups.push((stream.clone(), None));
        groups.extend(consumers.into_iter().map(|c| (stream.clone(), Some(c))));
    }
    groups
}

/// Whether `group` answers with a leader other than the node `dead` (a group's leader
/// answers such questions; a group without one does not).
async fn has_leader(
    client: &async_nats::Client,
    group: &(String, Option<String>),
    dead: &str,
) -> bool {
    let subject = match group {
        (stream, None) => format!("$JS.API.STREAM.INFO.{stream}"),
        (stream, Some(consumer)) => format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
    };
    let request = async_nats::Request::new()
        .payload(bytes::Bytes::new())
        .timeout(Some(LEADER_QUESTION_TIMEOUT));
    let Ok(answer) = client.send_request(subject, request).await else {
        return false;
    };
    let Ok(info) = serde_json::from_slice::<serde_json::Value>(&answer.payload) else {
        return false;
    };
    info["cluster"]["leader"]
        .as_str()
        .is_some_and(|leader| !leader.is_empty() && leader != dead)
}

/// Waits until every group has a leader other than the node `dead`, which stays down
/// meanwhile (a node starting again may answer with what it knew before it died); returns
/// when, or `None` at `deadline`, and when the payment stream had one.
async fn led_again(
    client: &async_nats::Client,
    groups: Vec<(String, Option<String>)>,
    dead: &str,
    deadline: Instant,
) -> (Option<Instant>, Option<Instant>) {
    let mut waiting = groups;
    let mut payments_led = None;
    while Instant::now() < deadline {
        let answers =
            futures::future::join_all(waiting.iter().map(|group| has_leader(client, group, dead)))
                .await;
        let mut still = Vec::new();
        for (group, led) in waiting.into_iter().zip(answers) {
            if !led {
                still.push(group);
            } else if group.0 == PAYMENT_STREAM && group.1.is_none() {
                payments_led = Some(Instant::now());
            }
        }
        waiting = still;
        if waiting.is_empty() {
            return (Some(Instant::now()), payments_led);
        }
        tokio::time::sleep(LEADER_POLL).await;
    }
    (None, payments_led)
}

/// Runs the faults on their schedule from `start`; returns what happened when.
async fn inject_faults(
    start: Instant,
    cluster: Arc<tokio::sync::Mutex<NatsCluster>>,
    workers: Arc<Mutex<Vec<Worker>>>,
) -> Vec<Fault> {
    let mut faults: Vec<Fault> = Vec::new();
    // Not before `offset` from the start, nor before BETWEEN_FAULTS after the last fault ended.
    let next_fault = |faults: &[Fault], offset: Duration| {
        let ended = faults
            .last()
            .map(|f| f.led_again.unwrap_or(f.at) + BETWEEN_FAULTS);
        ended.map_or(start + offset, |ended| ended.max(start + offset))
    };
    // The node leading the payment stream, then a follower, each down for NODE_DOWN.
    for (offset, role) in [(6, "leader"), (16, "follower")] {
        tokio::time::sleep_until(next_fault(&faults, Duration::from_secs(offset))).await;
        let mut cluster = cluster.lock().await;
        let leader = stream_leader(&cluster, PAYMENT_STREAM)
            .await
            .expect("the payment stream has a leader");
        let leader = cluster.node_named(&leader).expect("a node of the cluster");
        let node = if role == "leader" {
            leader
        } else {
            (leader + 1) % 3
        };
        // Asked of a node that stays up: when every stream and consumer is led again.
        let witness = async_nats::connect(cluster.node_url((node + 1) % 3))
            .await
            .expect("a witness connection");
        let groups = raft_groups(&async_nats::jetstream::new(witness.clone())).await;
        let dead = cluster.node_name(node).to_owned();
        cluster.kill(node);
        let killed_at = Instant::now();
        // Down until the two others lead everything it led, and at least NODE_DOWN.
        let (led_again, payments_led_again) =
            led_again(&witness, groups, &dead, killed_at + DRAIN).await;
        tokio::time::sleep_until(killed_at + NODE_DOWN).await;
        cluster
            .start_again(node)
            .await
            .unwrap_or_else(|e| panic!("node {node} again: {e}"));
        faults.push(Fault {
            what: format!("SIGKILL of the {role} node of {PAYMENT_STREAM}"),
            at: killed_at,
            led_again,
            payments_led_again,
        });
        faults.push(Fault {
            what: format!("the {role} node answers again"),
            at: Instant::now(),
            led_again: None,
            payments_led_again: None,
        });
    }
    // One worker of each stage: those of the first institution, then settlement.
    for (i, (offset, service)) in [
        (26_000, "payer-oi01"),
        (28_500, "payee-oi01"),
        (31_000, "commit-oi01"),
        (33_500, "finalize-oi01"),
        (36_000, "settlement"),
    ]
    .into_iter()
    .enumerate()
    {
        let offset = Duration::from_millis(offset);
        // Workers 2.5 s apart, the first BETWEEN_FAULTS after the nodes' faults.
        let at = match faults.last() {
            Some(last) if i > 0 => (last.at + Duration::from_millis(2_500)).max(start + offset),
            _ => next_fault(&faults, offset),
        };
        tokio::time::sleep_until(at).await;
        let mut workers = workers.lock().expect("workers");
        let worker = workers
            .iter_mut()
            .find(|w| w.service == service)
            .expect("the worker");
        worker.kill_and_restart();
        faults.push(Fault {
            what: format!("SIGKILL and restart of {service}"),
            at: Instant::now(),
            led_again: None,
            payments_led_again: None,
        });
    }
    faults
}

/// The outcomes received, and when each payment was first answered.
#[derive(Debug, Default)]
struct Answers {
    book: OutcomeBook,
    first: HashMap<PaymentId, Instant>,
    messages: usize,
}

fn spawn_outcome_reader(
    bus: Arc<dyn Bus>,
    answers: Arc<Mutex<Answers>>,
    institutions: Vec<String>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    institutions
        .into_iter()
        .map(|institution| {
            let bus = Arc::clone(&bus);
            let answers = Arc::clone(&answers);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut config =
                    ConsumerConfig::new(subjects::txn_result(&institution), "failover-observer");
                config.start = StartAt::Earliest;
                config.max_in_flight = 4096;
                config.ack_wait = OBSERVER_ACK_WAIT;
                let mut consumer = bus.consumer(config).await.expect("outcome consumer");
                loop {
                    let batch = tokio::select! {
                        () = shutdown.cancelled() => break,
                        batch = consumer.fetch(1024, Duration::from_millis(100)) => batch,
                    };
                    let Ok(batch) = batch else { continue };
                    let now = Instant::now();
                    {
                        let mut answers = answers.lock().expect("answers");
                        for delivery in &batch {
                            if let Ok(outcome) =
                                dcpipe_schemas::decode::<PaymentOutcome>(&delivery.record.payload)
                            {
                                answers.messages += 1;
                                answers.book.record(&outcome);
                                answers.first.entry(outcome.payment_id).or_insert(now);
                            }
                        }
                    }
                    for delivery in batch {
                        let _ = delivery.ack().await;
                    }
                }
            })
        })
        .collect()
}

/// p50, p99 and max of `latencies` in milliseconds, with their count.
fn summary(mut latencies: Vec<Duration>) -> String {
    if latencies.is_empty() {
        return "no payment".to_owned();
    }
    latencies.sort();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_millis()
    };
    format!(
        "{} payments, p50 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        at(0.50),
        at(0.99),
        latencies[latencies.len() - 1].as_millis()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_loses_nothing_and_pays_nothing_twice_through_node_and_worker_kills() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki_dir = dir.path().join("pki");
    let ledger_dir = dir.path().join("ledgers");
    let options = DemoPkiOptions::new(2, 40, AlgorithmChoice::P256, system_now_ms());
    let pki = Arc::new(init_pki_directory(&pki_dir, &options).expect("pki init"));

    let cluster = NatsCluster::start().await.expect("nats cluster");
    let url = cluster.url();
    // The streams, 3 replicas each, as an operator provisions them.
    let init = Command::new(env!("CARGO_BIN_EXE_dcpipe"))
        .args([
            "bus",
            "init",
            "--bus",
            &url,
            "--institutions",
            "oi01,oi02",
            "--nats-stream-replicas",
            "3",
        ])
        .output()
        .expect("dcpipe bus init runs");
    assert!(
        init.status.success(),
        "dcpipe bus init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let bus: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&cluster.addresses(), &NatsOptions::default())
            .await
            .expect("connect"),
    );
    let mut config = NetworkConfig::in_memory(2, 40);
    config.ledger = LedgerUrl::SqliteDir(ledger_dir.clone());
    config.settlement = SettlementConfig { window_ms: 2_000 };
    let network = Network::from_pki(Arc::clone(&pki), &config, Arc::new(SystemClock))
        .await
        .expect("provisioned");
    let institutions: Vec<String> = network.institutions.keys().cloned().collect();
    assert_eq!(institutions, ["oi01", "oi02"]);

    // The workers, with the command lines of scripts/cluster.sh and compose.
    let commands = cluster_script_commands(&[
        url.clone(),
        format!("sqlite://{}", ledger_dir.display()),
        pki_dir.join("trust").display().to_string(),
        pki_dir.display().to_string(),
        "127.0.0.1:0".to_owned(),
    ]);
    assert_eq!(commands.len(), 9);
    let workers: Vec<Worker> = commands
        .into_iter()
        .map(|(service, mut args)| {
            args.extend(WORKER_TUNING.iter().map(|s| (*s).to_owned()));
            let log = dir.path().join(format!("{service}.log"));
            Worker::start(service, args, log)
        })
        .collect();
    // Every worker has joined its consumer group before the load starts.
    let ready_by = Instant::now() + DRAIN;
    for worker in &workers {
        while !std::fs::read_to_string(&worker.log)
            .unwrap_or_default()
            .contains("stage started")
        {
            assert!(
                Instant::now() < ready_by,
                "{} did not start: {}",
                worker.service,
                std::fs::read_to_string(&worker.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let workers = Arc::new(Mutex::new(workers));

    let shutdown = CancellationToken::new();
    let answers = Arc::new(Mutex::new(Answers::default()));
    let readers = spawn_outcome_reader(
        Arc::clone(&bus),
        Arc::clone(&answers),
        institutions.clone(),
        shutdown.clone(),
    );
    let mut instructions = {
        let mut config = ConsumerConfig::new(subjects::SETTLEMENT_INSTRUCTION, "failover-observer");
        config.start = StartAt::Earliest;
        config.ack_wait = OBSERVER_ACK_WAIT;
        bus.consumer(config).await.expect("instruction consumer")
    };

    let supervision = CancellationToken::new();
    let supervisor = tokio::spawn(supervise(Arc::clone(&workers), supervision.clone()));
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let start = Instant::now() + Duration::from_millis(500);
    let faults = tokio::spawn(inject_faults(
        start,
        Arc::clone(&cluster),
        Arc::clone(&workers),
    ));

    // The load: each payment's clock starts before its publish, so a publish held up by a
    // failover counts in its latency.
    let mut generator = PaymentGenerator::new(&network, PaymentMix::default(), 11);
    let mut submitted: Vec<Submission> = Vec::new();
    let mut started: HashMap<PaymentId, Instant> = HashMap::new();
    let mut publish_failures = 0;
    let mut tick = start;
    let mut faults_made: Option<Instant> = None;
    loop {
        if faults_made.is_none() && faults.is_finished() {
            faults_made = Some(Instant::now());
        }
        if tick >= start + LOAD && faults_made.is_some_and(|at| tick >= at + AFTER_LAST_FAULT) {
            break;
        }
        tokio::time::sleep_until(tick).await;
        tick += TICK;
        let sent_at = Instant::now();
        let mut batch = Vec::new();
        let mut generated = Vec::new();
        for _ in 0..PAYMENTS_PER_TICK {
            let payment = generator.next(system_now_ms()).expect("payment");
            // A message id of its own: a publish retried here is stored once.
            let message: Outgoing = payment
                .outgoing()
                .with_msg_id(format!("failover-{}", submitted.len() + generated.len()));
            batch.push(message);
            generated.push(payment.submission);
        }
        // While a stream's leader is elected the cluster refuses its publishes ("no stream
        // found"): a terminal would try again, and so does this one, for as long as it takes.
        loop {
            match bus.publish_many(batch.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    publish_failures += 1;
                    assert!(
                        Instant::now() < sent_at + PUBLISH_GIVE_UP,
                        "publish keeps failing: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        for submission in generated {
            started.insert(submission.payment_id, sent_at);
            submitted.push(submission);
        }
    }
    let acked = submitted.len();
    let load_end = tick;
    let mut faults = faults.await.expect("faults");
    faults.sort_by_key(|f| f.at);

    let logs = || {
        let mut text = String::new();
        for entry in std::fs::read_dir(dir.path()).expect("dir").flatten() {
            if entry.path().extension().is_some_and(|x| x == "log") {
                let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                text.push_str(&format!("{}:\n", entry.path().display()));
                for line in tail.into_iter().rev() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    };

    // Every submission answered.
    let drained = Instant::now() + DRAIN;
    loop {
        let answered = answers
            .lock()
            .expect("answers")
            .book
            .answers_all_count(&submitted);
        if answered == submitted.len() {
            break;
        }
        assert!(
            Instant::now() < drained,
            "{answered} of {} payments answered; worker logs:\n{}",
            submitted.len(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    for reader in readers {
        let _ = reader.await;
    }

    // Exactly one outcome per payment, none completed twice.
    let (expected_net, first, outcome_messages, counts) = {
        let answers = answers.lock().expect("answers");
        let violations = answers.book.violations(&submitted);
        assert!(violations.is_empty(), "{violations:?}");
        let completed = submitted
            .iter()
            .filter(|s| {
                answers
                    .book
                    .answer(s)
                    .is_some_and(|a| a.status == OutcomeStatus::Completed)
            })
            .count();
        assert!(
            completed > submitted.len() * 3 / 4,
            "{completed} of {} completed: {:?}",
            submitted.len(),
            answers.book.counts_by_outcome()
        );
        let mut net = answers.book.expected_net_positions(&submitted);
        net.retain(|_, fen| *fen != 0);
        (
            net,
            answers.first.clone(),
            answers.messages,
            answers.book.counts_by_outcome(),
        )
    };

    // Money conserved, nothing held or pending.
    loop {
        let money = network.money().await.expect("money");
        if money.is_settled_and_conserved() {
            break;
        }
        assert!(
            Instant::now() < drained,
            "money not settled and conserved: {money:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Settlement's instructions net exactly what cleared.
    let mut settled: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        for delivery in instructions
            .fetch(256, Duration::from_millis(200))
            .await
            .expect("instructions")
        {
            let instruction: SettlementInstruction =
                dcpipe_schemas::decode(&delivery.record.payload).expect("instruction");
            assert_eq!(
                instruction.positions.iter().map(|p| p.net_fen).sum::<i64>(),
                0,
                "a window's positions balance"
            );
            for position in &instruction.positions {
                *settled.entry(position.institution_id.clone()).or_insert(0) += position.net_fen;
            }
            delivery.ack().await.expect("ack");
        }
        settled.retain(|_, fen| *fen != 0);
        if settled == expected_net {
            break;
        }
        assert!(
            Instant::now() < drained,
            "settled {settled:?}, cleared {expected_net:?}\n{}",
            logs()
        );
    }

    // Every submission the broker acknowledged is in its stream, once; every replica of every
    // stream is current.
    let cluster = cluster.lock().await;
    let client = async_nats::connect(cluster.node_url(0))
        .await
        .expect("client");
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream
        .get_stream(PAYMENT_STREAM)
        .await
        .expect("payment stream");
    let mut stored = 0;
    let mut by_subject = stream
        .info_with_subjects("txn.submit.>")
        .await
        .expect("subjects");
    while let Some(entry) = by_subject.next().await {
        stored += entry.expect("subject count").1;
    }
    assert_eq!(stored, acked, "submissions stored against acknowledged");
    let names: Vec<String> = jetstream
        .stream_names()
        .map(|name| name.expect("stream name"))
        .collect()
        .await;
    assert!(names.len() > 3, "{names:?}");
    for name in &names {
        loop {
            let mut handle = jetstream.get_stream(name).await.expect("stream");
            let info = handle.info().await.expect("info");
            let group = info.cluster.clone().expect("a replicated stream");
            let current = group.leader.is_some()
                && group.replicas.len() == 2
                && group
                    .replicas
                    .iter()
                    .all(|peer| peer.current && !peer.offline);
            if current {
                break;
            }
            assert!(Instant::now() < drained, "{name}: {group:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The killed workers died and came back.
    supervision.cancel();
    let exits = supervisor.await.expect("supervisor");
    {
        let workers = workers.lock().expect("workers");
        for worker in workers.iter() {
            let log = std::fs::read_to_string(&worker.log).expect("log");
            let killed = worker.service.ends_with("oi01") || worker.service == "settlement";
            assert!(worker.starts > usize::from(killed), "{}", worker.service);
            assert_eq!(
                log.matches("serving /healthz").count(),
                worker.starts,
                "{}: {log}",
                worker.service
            );
        }
    }

    // What the payments saw around each fault.
    let latency = |from: Instant, to: Instant| {
        summary(
            started
                .iter()
                .filter(|(_, at)| **at >= from && **at < to)
                .filter_map(|(id, at)| first.get(id).map(|answered| *answered - *at))
                .collect(),
        )
    };
    println!(
        "{} payments published at {}/s ({publish_failures} publishes retried), {} outcome messages for them, outcomes {counts:?}",
        submitted.len(),
        PAYMENTS_PER_TICK as u32 * 1_000 / TICK.as_millis() as u32,
        outcome_messages
    );
    println!(
        "before the faults: {}",
        latency(
            start + Duration::from_secs(1),
            start + Duration::from_secs(5)
        )
    );
    for fault in &faults {
        println!(
            "{:>5.1} s {}: payments sent from 0.5 s before to 2 s after: {}",
            (fault.at - start).as_secs_f64(),
            fault.what,
            latency(
                fault.at - Duration::from_millis(500),
                fault.at + Duration::from_secs(2)
            )
        );
        if let Some(led) = fault.led_again {
            // The stall: the longest time without an answer, from the kill to a while after
            // every group was led again.
            let mut answered: Vec<Instant> = first
                .values()
                .copied()
                .filter(|at| *at <= led + BETWEEN_FAULTS)
                .collect();
            answered.sort();
            let stall = answered
                .windows(2)
                .filter(|w| w[1] > fault.at)
                .map(|w| (w[0].max(fault.at), w[1]))
                .max_by_key(|(from, to)| *to - *from);
            let since = |at: Instant| at.saturating_duration_since(fault.at).as_secs_f64();
            let relative = |to: Instant, from: Instant| {
                if to >= from {
                    format!("{} ms after", (to - from).as_millis())
                } else {
                    format!("{} ms before", (from - to).as_millis())
                }
            };
            println!(
                "        {PAYMENT_STREAM} led again {} s, every stream and consumer {:.1} s after the kill; {}; payments sent in the 2 s after every group was led: {}",
                fault
                    .payments_led_again
                    .map_or("-".to_owned(), |at| format!("{:.1}", since(at))),
                since(led),
                match stall {
                    Some((from, to)) => format!(
                        "no answer from {:.1} s to {:.1} s after the kill: answers again {} {PAYMENT_STREAM} was led, {} every group was",
                        since(from),
                        since(to),
                        fault
                            .payments_led_again
                            .map_or("-".to_owned(), |at| relative(to, at)),
                        relative(to, led),
                    ),
                    None => "answers never stopped".to_owned(),
                },
                latency(led, led + Duration::from_secs(2))
            );
        }
    }
    for exit in &exits {
        println!(
            "{:>5.1} s {} exited by itself and was restarted: {}",
            (exit.at - start).as_secs_f64(),
            exit.service,
            exit.last_line
        );
    }
    println!("whole run: {}", latency(start, load_end));
}
