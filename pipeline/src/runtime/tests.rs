//! The runner against each kind of stage failure, with a stage double, on every bus: each
//! scenario is written once and run from one module per bus (embedded, NATS, Kafka).
//!
//! The double echoes each input to `test.out` (message id from the payload, so republishing is
//! idempotent where the bus drops repeats by id) and fails the way a test tells it:
//! transiently for its first calls, for a batch holding a "bad" item, fatally once, or with an
//! output the bus refuses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dcpipe_connectors::bus::{
    Bus, BusKind, ConsumerConfig, EmbeddedBus, EmbeddedConfig, KafkaBus, KafkaOptions, NatsBus,
    NatsOptions, Outgoing, PAYLOAD_BYTES_MAX, ReplayFrom, ReplayRequest, SubjectSpec,
    dead_letter_subject,
};
use dcpipe_connectors::testkit::{NatsServer, TansuServer};
use dcpipe_schemas::DeadLetter;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::reason::Reason;

const STAGE: &str = "double";
const OWNER: &str = "oi01";
const INPUT: &str = "test.in.oi01";
const OUTPUT: &str = "test.out.oi01";
/// How long a test waits for what it expects (a Kafka group rebalance takes seconds).
const DEADLINE: Duration = Duration::from_secs(30);

/// How the double fails.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// Its first `calls` calls fail transiently.
    Transient { calls: u32 },
    /// A batch holding a payload starting with `bad` fails as an item failure.
    BadItem,
    /// Its first call fails fatally.
    FatalOnce,
    /// Every call fails fatally.
    AlwaysFatal,
    /// The output of a payload starting with `bad` is larger than any bus takes.
    OversizedOutput,
}

#[derive(Debug)]
struct Double {
    failure: Failure,
    calls: AtomicU32,
    /// Highest delivery count at which each payload was decided.
    decided: Mutex<BTreeMap<Vec<u8>, u32>>,
    /// The payloads of the batch that failed fatally.
    fatal_batch: Mutex<Vec<Vec<u8>>>,
}

impl Double {
    fn new(failure: Failure) -> Arc<Self> {
        Arc::new(Double {
            failure,
            calls: AtomicU32::new(0),
            decided: Mutex::new(BTreeMap::new()),
            fatal_batch: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn decided(&self) -> BTreeMap<Vec<u8>, u32> {
        self.decided.lock().expect("lock").clone()
    }
}

fn is_bad(payload: &[u8]) -> bool {
    payload.starts_with(b"bad")
}

#[async_trait]
impl Stage for Double {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        OWNER
    }

    fn subject(&self) -> String {
        INPUT.to_owned()
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        match self.failure {
            Failure::Transient { calls } if call <= calls => {
                return Err(StageError::transient("database unavailable"));
            }
            Failure::BadItem if batch.iter().any(|i| is_bad(i.payload)) => {
                return Err(StageError::item(
                    Reason::StageLedgerRefused,
                    "a request the ledger refuses",
                ));
            }
            Failure::FatalOnce if call == 1 => {
                *self.fatal_batch.lock().expect("lock") =
                    batch.iter().map(|i| i.payload.to_vec()).collect();
                return Err(StageError::fatal("ledger integrity: holds exceed balance"));
            }
            Failure::AlwaysFatal => return Err(StageError::fatal("misconfigured")),
            _ => {}
        }
        let mut decided = self.decided.lock().expect("lock");
        Ok(batch
            .iter()
            .map(|input| {
                let seen = decided.entry(input.payload.to_vec()).or_insert(0);
                *seen = (*seen).max(input.delivery_count);
                let payload =
                    if matches!(self.failure, Failure::OversizedOutput) && is_bad(input.payload) {
                        Bytes::from(vec![0u8; PAYLOAD_BYTES_MAX + 1])
                    } else {
                        Bytes::copy_from_slice(input.payload)
                    };
                let id = String::from_utf8_lossy(input.payload).into_owned();
                Verdict::Done(vec![Outgoing::new(OUTPUT, payload).with_msg_id(id)])
            })
            .collect())
    }
}

/// A bus for one test, with the server behind it.
struct TestBus {
    bus: Arc<dyn Bus>,
    _nats: Option<NatsServer>,
    _kafka: Option<TansuServer>,
}

impl TestBus {
    async fn embedded() -> Self {
        TestBus {
            bus: Arc::new(EmbeddedBus::new(EmbeddedConfig::default())),
            _nats: None,
            _kafka: None,
        }
    }

    async fn nats() -> Self {
        let server = NatsServer::start().await.expect("nats-server starts");
        let bus = NatsBus::connect(&[server.address()], &NatsOptions::default())
            .await
            .expect("connects to NATS");
        TestBus {
            bus: Arc::new(bus),
            _nats: Some(server),
            _kafka: None,
        }
    }

    async fn kafka() -> Self {
        let server = TansuServer::start().await.expect("tansu starts");
        let bus = KafkaBus::connect(&[server.address()], &KafkaOptions::default())
            .await
            .expect("connects to Kafka");
        TestBus {
            bus: Arc::new(bus),
            _nats: None,
            _kafka: Some(server),
        }
    }

    /// Creates the test's subjects, its dead-letter subject included (as `dcpipe bus init`
    /// does for a deployment), and publishes `payloads` to the input subject.
    async fn publish(&self, payloads: &[&str]) {
        for subject in [
            INPUT.to_owned(),
            OUTPUT.to_owned(),
            dead_letter_subject(STAGE),
        ] {
            self.bus
                .ensure_subject(&SubjectSpec::new(subject))
                .await
                .expect("subject");
        }
        let messages = payloads
            .iter()
            .map(|p| Outgoing::new(INPUT, Bytes::copy_from_slice(p.as_bytes())))
            .collect();
        self.bus.publish_many(messages).await.expect("published");
    }
}

fn config(concurrency: usize) -> RunnerConfig {
    RunnerConfig {
        batch_max: 16,
        fetch_wait: Duration::from_millis(20),
        ack_wait: Duration::from_secs(5),
        retry_delay: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(40),
        concurrency,
        ..RunnerConfig::default()
    }
}

struct Running {
    health: Arc<Health>,
    shutdown: CancellationToken,
    members: Vec<JoinHandle<MemberResult>>,
}

impl Running {
    fn start(bus: &Arc<dyn Bus>, stage: &Arc<Double>, config: &RunnerConfig) -> Self {
        let health = Arc::new(Health::new());
        let shutdown = CancellationToken::new();
        let stage: Arc<dyn Stage> = Arc::clone(stage) as Arc<dyn Stage>;
        let members = spawn_stage(Arc::clone(bus), stage, config, &health, &shutdown)
            .expect("valid configuration");
        Running {
            health,
            shutdown,
            members,
        }
    }

    /// Stops the members; how each ended.
    async fn stop(self) -> Vec<MemberResult> {
        self.shutdown.cancel();
        let mut ended = Vec::new();
        for member in self.members {
            ended.push(member.await.expect("member task"));
        }
        ended
    }
}

/// Waits until every one of `expected` was published on the output subject, and checks that
/// nothing else was. A payload may come twice only on Kafka, which cannot drop a republished
/// output by its message id (downstream stages are idempotent by payment id there).
async fn assert_outputs(bus: &Arc<dyn Bus>, expected: &[&str]) {
    let mut consumer = bus
        .consumer(ConsumerConfig::new(OUTPUT, "observer"))
        .await
        .expect("consumer");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut distinct = std::collections::BTreeSet::new();
    while distinct.len() < expected.len() && tokio::time::Instant::now() < deadline {
        for delivery in consumer
            .fetch(64, Duration::from_millis(100))
            .await
            .expect("fetch")
        {
            distinct.insert(delivery.record.payload.to_vec());
            seen.push(delivery.record.payload.to_vec());
            delivery.ack().await.expect("ack");
        }
    }
    // Nothing more than expected may follow.
    for delivery in consumer
        .fetch(64, Duration::from_millis(200))
        .await
        .expect("fetch")
    {
        distinct.insert(delivery.record.payload.to_vec());
        seen.push(delivery.record.payload.to_vec());
    }
    let expected: std::collections::BTreeSet<Vec<u8>> =
        expected.iter().map(|p| p.as_bytes().to_vec()).collect();
    assert_eq!(distinct, expected, "outputs");
    if bus.kind() != BusKind::Kafka {
        assert_eq!(seen.len(), expected.len(), "each output once");
    }
}

/// The stage's dead letters so far.
async fn dead_letters(bus: &Arc<dyn Bus>) -> Vec<DeadLetter> {
    let subject = dead_letter_subject(STAGE);
    bus.ensure_subject(&SubjectSpec::new(subject.clone()))
        .await
        .expect("subject");
    let mut replay = bus
        .replay(ReplayRequest {
            subject,
            from: ReplayFrom::Beginning,
            until_ms: None,
        })
        .await
        .expect("replay");
    let mut letters = Vec::new();
    loop {
        let records = replay.next_batch(64).await.expect("replay batch");
        if records.is_empty() {
            return letters;
        }
        for record in records {
            letters.push(dcpipe_schemas::decode(&record.payload).expect("dead letter"));
        }
    }
}

/// The stage's dead letters once there are `count` (or the deadline passed).
async fn dead_letters_when(bus: &Arc<dyn Bus>, count: usize) -> Vec<DeadLetter> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let letters = dead_letters(bus).await;
        if letters.len() >= count || tokio::time::Instant::now() >= deadline {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the double failing with `failure` on `payloads`: every payload but `bad` comes out, and
/// `bad` alone is dead-lettered with `reason`, on its first delivery.
async fn only_the_bad_item_is_dead_lettered(
    backend: &TestBus,
    payloads: &[&str],
    failure: Failure,
    reason: Reason,
) -> (Arc<Double>, Running) {
    backend.publish(payloads).await;
    let bus = &backend.bus;
    let stage = Double::new(failure);
    let running = Running::start(bus, &stage, &config(1));
    let good: Vec<&str> = payloads
        .iter()
        .copied()
        .filter(|p| !is_bad(p.as_bytes()))
        .collect();
    assert_outputs(bus, &good).await;
    let letters = dead_letters(bus).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].original, b"bad");
    assert_eq!(letters[0].reason_code, reason.as_str());
    assert_eq!(letters[0].stage, STAGE);
    assert_eq!(
        letters[0].delivery_count, 1,
        "isolated without a redelivery"
    );
    (stage, running)
}

/// Waits until `condition` holds or the deadline passes.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

async fn transient_failure_is_retried_then_succeeds(backend: TestBus) {
    let payloads = ["a", "b", "c", "d", "e"];
    backend.publish(&payloads).await;
    let bus = &backend.bus;
    let stage = Double::new(Failure::Transient { calls: 2 });
    let running = Running::start(bus, &stage, &config(1));
    assert_outputs(bus, &payloads).await;
    assert!(stage.calls() >= 3, "{} calls", stage.calls());
    assert!(
        stage.decided().values().all(|&delivery| delivery >= 3),
        "decided only on a redelivery after two failures: {:?}",
        stage.decided()
    );
    assert!(dead_letters(bus).await.is_empty());
    assert!(running.health.readiness().is_ready());
    assert!(running.stop().await.iter().all(Result::is_ok));
}

async fn transient_failure_outliving_the_deliveries_is_dead_lettered(backend: TestBus) {
    backend.publish(&["a", "b"]).await;
    let bus = &backend.bus;
    let stage = Double::new(Failure::Transient { calls: u32::MAX });
    let config = RunnerConfig {
        max_deliver: 2,
        ..config(1)
    };
    let running = Running::start(bus, &stage, &config);
    let letters = dead_letters_when(bus, 2).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter.reason_code, Reason::StageRetriesExhausted.as_str());
        assert_eq!(letter.delivery_count, 2);
    }
    assert!(running.stop().await.iter().all(Result::is_ok));
}

async fn one_bad_item_is_dead_lettered_alone_and_the_others_complete(backend: TestBus) {
    let payloads = ["a", "b", "c", "bad", "e", "f", "g", "h"];
    let (stage, running) = only_the_bad_item_is_dead_lettered(
        &backend,
        &payloads,
        Failure::BadItem,
        Reason::StageLedgerRefused,
    )
    .await;
    // Each batch is split down to the bad item: at most 2·log2(batch) + 1 calls for it, plus one
    // per other batch the bus happened to hand out.
    assert!(stage.calls() <= 7 + 8, "{} calls", stage.calls());
    assert!(stage.decided().values().all(|&delivery| delivery == 1));
    assert!(running.health.readiness().is_ready());
    assert!(running.stop().await.iter().all(Result::is_ok));
}

async fn output_the_bus_refuses_is_dead_lettered_alone(backend: TestBus) {
    let payloads = ["a", "bad", "c", "d"];
    let (_, running) = only_the_bad_item_is_dead_lettered(
        &backend,
        &payloads,
        Failure::OversizedOutput,
        Reason::StageOutputRefused,
    )
    .await;
    assert!(running.stop().await.iter().all(Result::is_ok));
}

async fn fatal_failure_stops_the_member_and_another_member_takes_the_batch(backend: TestBus) {
    let payloads = ["a", "b", "c", "d"];
    backend.publish(&payloads).await;
    let bus = &backend.bus;
    let stage = Double::new(Failure::FatalOnce);
    let running = Running::start(bus, &stage, &config(2));
    assert_outputs(bus, &payloads).await;
    assert!(dead_letters(bus).await.is_empty(), "nothing dead-lettered");
    // The batch the stopped member held was decided by the other member.
    let fatal_batch = stage.fatal_batch.lock().expect("lock").clone();
    assert!(!fatal_batch.is_empty());
    let decided = stage.decided();
    assert!(
        fatal_batch.iter().all(|p| decided.contains_key(p)),
        "{fatal_batch:?} given back and decided: {decided:?}"
    );
    let health = Arc::clone(&running.health);
    assert!(
        eventually(|| !health.readiness().is_ready()).await,
        "readiness turns false"
    );
    let readiness = health.readiness();
    assert_eq!(readiness.not_ready.len(), 1, "{readiness}");
    let stopped = &readiness.not_ready[0];
    assert!(stopped.fatal);
    assert!(
        matches!(&stopped.component, Component::Member(id) if id.stage == STAGE && id.owner == OWNER),
        "{readiness}"
    );
    assert!(stopped.why.contains("ledger integrity"), "{}", stopped.why);
    let ended = running.stop().await;
    let fatal: Vec<&StageError> = ended.iter().filter_map(|e| e.as_ref().err()).collect();
    assert_eq!(fatal.len(), 1, "one member stopped, the other kept working");
    assert_eq!(fatal[0].kind(), StageErrorKind::Fatal);
}

async fn fatal_failure_at_the_last_delivery_is_dead_lettered(backend: TestBus) {
    backend.publish(&["a"]).await;
    let bus = &backend.bus;
    let stage = Double::new(Failure::AlwaysFatal);
    let config = RunnerConfig {
        max_deliver: 1,
        ..config(1)
    };
    let running = Running::start(bus, &stage, &config);
    let letters = dead_letters_when(bus, 1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason_code, Reason::StageFatal.as_str());
    assert_eq!(letters[0].original, b"a");
    let ended = running.stop().await;
    assert!(matches!(ended.as_slice(), [Err(e)] if e.kind() == StageErrorKind::Fatal));
}

/// One test per scenario, for the bus `$bus` makes.
macro_rules! failure_suite {
    ($bus:expr) => {
        failure_suite!(@tests $bus;
            transient_failure_is_retried_then_succeeds,
            transient_failure_outliving_the_deliveries_is_dead_lettered,
            one_bad_item_is_dead_lettered_alone_and_the_others_complete,
            output_the_bus_refuses_is_dead_lettered_alone,
            fatal_failure_stops_the_member_and_another_member_takes_the_batch,
            fatal_failure_at_the_last_delivery_is_dead_lettered,
        );
    };
    (@tests $bus:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                super::$scenario($bus).await;
            }
        )+
    };
}

mod embedded {
    failure_suite!(super::TestBus::embedded().await);
}

mod nats {
    failure_suite!(super::TestBus::nats().await);
}

mod kafka {
    failure_suite!(super::TestBus::kafka().await);
}

#[tokio::test]
async fn configuration_outside_its_limits_starts_nothing() {
    let bus = TestBus::embedded().await.bus;
    let stage: Arc<dyn Stage> = Double::new(Failure::BadItem);
    let config = RunnerConfig {
        batch_max: dcpipe_connectors::ledger::BATCH_ITEMS_MAX + 1,
        ..RunnerConfig::default()
    };
    let health = Arc::new(Health::new());
    let refused =
        spawn_stage(bus, stage, &config, &health, &CancellationToken::new()).expect_err("refused");
    assert_eq!(refused.kind(), ConfigErrorKind::BatchMax);
    assert!(health.readiness().is_ready(), "no member was registered");
}
