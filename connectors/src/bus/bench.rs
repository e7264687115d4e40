//! The broker's own ceiling ([`Bus::broker_bench`](super::Bus::broker_bench)): messages
//! published and consumed with the broker's client library used at its best, the way
//! `nats bench` or `kafka-producer-perf-test` measure a broker — asynchronous publishes with
//! thousands of acknowledgements outstanding, large fetch batches, acks that nobody awaits one
//! by one — rather than through dcpipe's bus layer. A ratio to it says how much of the broker
//! the pipeline uses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Publishes awaiting their acknowledgement at once, at most.
pub const ACKS_IN_FLIGHT: usize = 4096;
/// Messages a consumer asks for at once.
pub const FETCH_BATCH: usize = 1000;
/// How long the consumers have to catch up once publishing stopped, or to receive the probes.
pub const DRAIN_MAX: Duration = Duration::from_secs(60);

/// One kind of message of a benchmark: a subject of its own, a size and a share.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchKind {
    /// Where it goes (a subject of the bus; created if needed).
    pub subject: String,
    /// Payload size, bytes.
    pub bytes: usize,
    /// How many one unit of work (a payment) sends, on average.
    pub per_unit: f64,
    /// Whether it carries a message id, as the pipeline's outputs do (the broker dedups by it).
    pub with_msg_id: bool,
}

/// What a benchmark publishes: units of work, each sending its kinds in turn, until
/// `units_max` or `duration`.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchPlan {
    /// The kinds, in the order a unit sends them.
    pub kinds: Vec<BenchKind>,
    /// Units published at most.
    pub units_max: u64,
    /// Time allowed to publishing.
    pub duration: Duration,
    /// Partitions of the subjects (Kafka).
    pub partitions: u32,
}

impl BenchPlan {
    /// The kinds (indices into `kinds`) that unit `unit` sends.
    pub fn kinds_of(&self, unit: u64) -> impl Iterator<Item = usize> + '_ {
        self.kinds
            .iter()
            .enumerate()
            .filter(move |(_, kind)| sends(unit, kind.per_unit))
            .map(|(k, _)| k)
    }

    /// The message id of unit `unit`'s message of kind `k`, if that kind carries one.
    pub fn msg_id(&self, k: usize, unit: u64) -> Option<String> {
        let kind = &self.kinds[k];
        kind.with_msg_id.then(|| format!("{}/{unit}", kind.subject))
    }
}

/// Whether unit `index` sends a message of which a unit sends `per_unit` on average: spreads
/// fractional counts evenly (so 0.8 is 4 units in 5).
pub fn sends(index: u64, per_unit: f64) -> bool {
    let before = (index as f64 * per_unit).floor();
    let after = ((index + 1) as f64 * per_unit).floor();
    after > before
}

/// What a benchmark measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRun {
    /// Messages published (and acknowledged by the broker).
    pub published: u64,
    /// Of them, messages consumed (and acked).
    pub consumed: u64,
    /// From the first publish to the last consume, seconds.
    pub seconds: f64,
    /// From the first publish to the last acknowledgement of a publish, seconds.
    pub publish_seconds: f64,
    /// Publishes awaiting their acknowledgement at once, at most.
    pub acks_in_flight: usize,
    /// Messages a consumer asks for at once.
    pub fetch_batch: usize,
    /// How the client was driven, in a few words.
    pub method: String,
}

/// Consumed messages counted by every consumer of a benchmark, and a wake-up for whoever waits
/// for a total.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    consumed: AtomicU64,
    target: AtomicU64,
    reached: Notify,
}

impl Tally {
    pub(crate) fn new() -> Self {
        Tally {
            target: AtomicU64::new(u64::MAX),
            ..Default::default()
        }
    }

    /// Counts `n` more messages consumed.
    pub(crate) fn add(&self, n: u64) {
        let now = self.consumed.fetch_add(n, Ordering::AcqRel) + n;
        if now >= self.target.load(Ordering::Acquire) {
            self.reached.notify_one();
        }
    }

    /// Messages consumed so far.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Acquire)
    }

    /// Waits until `target` messages were consumed, or `deadline`; whether they were.
    pub(crate) async fn wait(&self, target: u64, deadline: Instant) -> bool {
        self.target.store(target, Ordering::Release);
        loop {
            if self.consumed() >= target {
                return true;
            }
            if tokio::time::timeout_at(deadline, self.reached.notified())
                .await
                .is_err()
            {
                return self.consumed() >= target;
            }
        }
    }

    /// Forgets what was counted (the probes) before the measurement.
    pub(crate) fn reset(&self) {
        self.consumed.store(0, Ordering::Release);
        self.target.store(u64::MAX, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractional_shares_are_spread_evenly() {
        assert_eq!((0..1000).filter(|i| sends(*i, 0.8)).count(), 800);
        assert_eq!((0..1000).filter(|i| sends(*i, 1.0)).count(), 1000);
        assert_eq!((0..1000).filter(|i| sends(*i, 0.0)).count(), 0);
    }

    #[test]
    fn a_unit_sends_its_kinds_in_order_with_ids_where_asked() {
        let kind = |subject: &str, per_unit, with_msg_id| BenchKind {
            subject: subject.into(),
            bytes: 10,
            per_unit,
            with_msg_id,
        };
        let plan = BenchPlan {
            kinds: vec![kind("a.x", 1.0, false), kind("b.x", 0.5, true)],
            units_max: 10,
            duration: Duration::from_secs(1),
            partitions: 1,
        };
        assert_eq!(plan.kinds_of(0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(plan.kinds_of(1).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(plan.msg_id(0, 1), None);
        assert_eq!(plan.msg_id(1, 1).as_deref(), Some("b.x/1"));
    }

    #[tokio::test]
    async fn the_tally_wakes_its_waiter_at_the_target() {
        let tally = std::sync::Arc::new(Tally::new());
        let counting = std::sync::Arc::clone(&tally);
        let counter = tokio::spawn(async move {
            for _ in 0..100 {
                counting.add(1);
                tokio::task::yield_now().await;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(tally.wait(100, deadline).await);
        counter.await.expect("counter");
        assert_eq!(tally.consumed(), 100);
    }
}
