//! Client settings shared by every Kafka client of the bus, and librdkafka's logs routed to
//! `tracing`.

use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Statistics};

use super::consumer::FETCH_WAIT_MAX_MS;
use crate::bus::{BusError, BusErrorKind, KafkaOptions};

/// Prefix of the properties dcpipe reads itself and never passes to librdkafka.
pub(super) const DCPIPE_PROPERTY_PREFIX: &str = "dcpipe.";
/// Property: replication factor of the topics `ensure_subject` creates.
pub(super) const TOPIC_REPLICATION_PROPERTY: &str = "dcpipe.topic.replication.factor";
/// Replication factor of new topics unless [`TOPIC_REPLICATION_PROPERTY`] says otherwise: one
/// copy suits a single broker (tests, demo); production clusters set 3.
pub(super) const TOPIC_REPLICATION_DEFAULT: i32 = 1;

/// A consumer that reads partitions it assigns itself (a replay, a follower): its group id is
/// unique and never joined nor committed to (librdkafka's `assign()` needs one), nothing is
/// stored, and a start offset removed by retention meanwhile reads what is left. `purpose`
/// names it in errors and in the group id.
pub(super) fn ungrouped_reader(
    servers: &[String],
    options: &KafkaOptions,
    purpose: &str,
) -> Result<StreamConsumer<TracingContext>, BusError> {
    client_config(
        servers,
        &[
            (
                "group.id",
                format!("dcpipe-{purpose}-{}", uuid::Uuid::new_v4()),
            ),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("auto.offset.reset", "earliest".into()),
            ("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string()),
        ],
        options,
    )
    .create_with_context(TracingContext)
    .map_err(|e| {
        BusError::with_source(BusErrorKind::Config, format!("Kafka {purpose} settings"), e)
    })
}

/// A client configuration: `bootstrap.servers`, dcpipe's settings for this client, then the
/// caller's properties (except `dcpipe.*`), which win.
pub(super) fn client_config(
    servers: &[String],
    own: &[(&str, String)],
    options: &KafkaOptions,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", servers.join(","));
    config.set("client.id", "dcpipe");
    for (key, value) in own {
        config.set(*key, value.as_str());
    }
    for (key, value) in &options.properties {
        if !key.starts_with(DCPIPE_PROPERTY_PREFIX) {
            config.set(key.as_str(), value.as_str());
        }
    }
    config
}

/// Checks the caller's properties against librdkafka before any client is made: a property it
/// refuses (unknown, or a value it does not accept) is a [`BusErrorKind::Config`] error naming
/// the key. librdkafka's refusal, as rdkafka renders it, repeats the value, so for a key that
/// looks secret ([`KafkaOptions::is_secret`], e.g. a Java `sasl.jaas.config` holding a password)
/// the error says only which key was refused.
pub(super) fn check_properties(options: &KafkaOptions) -> Result<(), BusError> {
    let caller: ClientConfig = options
        .properties
        .iter()
        .filter(|(key, _)| !key.starts_with(DCPIPE_PROPERTY_PREFIX))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    match caller.create_native_config() {
        Ok(_) => Ok(()),
        Err(KafkaError::ClientConfig(_, reason, key, _value)) => {
            let message = if KafkaOptions::is_secret(&key) {
                format!("Kafka property {key:?} refused by librdkafka (value hidden)")
            } else {
                format!("Kafka property {key:?}: {reason}")
            };
            Err(BusError::new(BusErrorKind::Config, message))
        }
        // A NUL byte in a key or value; its Debug would show the bytes.
        Err(_) => Err(BusError::new(
            BusErrorKind::Config,
            "Kafka properties: a key or value holds a NUL byte",
        )),
    }
}

/// The replication factor of new topics, from [`TOPIC_REPLICATION_PROPERTY`].
pub(super) fn topic_replication(options: &KafkaOptions) -> Result<i32, BusError> {
    match options.properties.get(TOPIC_REPLICATION_PROPERTY) {
        None => Ok(TOPIC_REPLICATION_DEFAULT),
        Some(value) => value
            .parse::<i32>()
            .ok()
            .filter(|factor| *factor >= 1 || *factor == -1)
            .ok_or_else(|| {
                BusError::new(
                    BusErrorKind::Config,
                    format!(
                        "{TOPIC_REPLICATION_PROPERTY} = {value:?}: expected -1 or a count >= 1"
                    ),
                )
            }),
    }
}

/// Routes librdkafka's log lines and errors to `tracing` (librdkafka never logs secrets unless
/// its `debug` property asks for a configuration dump).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Transport errors while a broker restarts are expected and retried by librdkafka.
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

/// How often the producer reports its statistics, which say whether a broker is reachable.
pub(super) const BROKER_STATS_INTERVAL_MS: u32 = 1_000;

/// Whether a broker answers, as the producer's latest statistics say: `Some(why)` when no broker
/// is up, `None` when one is or before the first statistics.
#[derive(Debug, Default)]
pub(super) struct BrokerReach {
    down: Mutex<Option<String>>,
}

impl BrokerReach {
    /// Why no broker can be reached, if none can.
    pub(super) fn down(&self) -> Option<String> {
        self.down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes in one report of the statistics: down when no configured or learned broker is up.
    fn report(&self, statistics: &Statistics) {
        let brokers: Vec<_> = statistics
            .brokers
            .values()
            .filter(|b| b.source == "configured" || b.source == "learned")
            .collect();
        let down = (!brokers.is_empty() && brokers.iter().all(|b| b.state != "UP")).then(|| {
            let states: Vec<String> = brokers
                .iter()
                .map(|b| format!("{} {}", b.nodename, b.state))
                .collect();
            format!("no Kafka broker is up ({})", states.join(", "))
        });
        *self.down.lock().unwrap_or_else(PoisonError::into_inner) = down;
    }
}

/// The producer's context: logs as [`TracingContext`], and keeps the brokers' reach from the
/// statistics.
pub(super) struct WatchedContext {
    pub(super) reach: Arc<BrokerReach>,
}

impl ClientContext for WatchedContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        TracingContext.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        TracingContext.error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.reach.report(&statistics);
    }
}

/// Owns a Kafka consumer (or what holds one). Dropping a consumer closes it, and librdkafka's
/// close waits for the broker, for ever when the broker is gone: the drop runs on a thread of
/// its own, so that no runtime thread, and no runtime shutdown, ever waits for it.
#[derive(Debug)]
pub(super) struct ClosedOnThread<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> ClosedOnThread<T> {
    pub(super) fn new(value: T) -> Self {
        ClosedOnThread(Some(value))
    }

    /// The value; `None` only while it is being dropped.
    pub(super) fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<T: Send + 'static> Drop for ClosedOnThread<T> {
    fn drop(&mut self) {
        let Some(value) = self.0.take() else {
            return;
        };
        let closing = std::thread::Builder::new()
            .name("dcpipe-kafka-close".into())
            .spawn(move || drop(value));
        if let Err(error) = closing {
            tracing::warn!(%error, "could not start the thread closing a Kafka consumer");
        }
    }
}

/// Consumers outside a group (replays) need no rebalance handling.
impl ConsumerContext for TracingContext {}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> KafkaOptions {
        KafkaOptions {
            properties: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn caller_properties_win_and_dcpipe_ones_stay_out() {
        let config = client_config(
            &["a:9092".into()],
            &[("acks", "all".into())],
            &options(&[("acks", "1"), (TOPIC_REPLICATION_PROPERTY, "3")]),
        );
        assert_eq!(config.get("acks"), Some("1"));
        assert_eq!(config.get("bootstrap.servers"), Some("a:9092"));
        assert_eq!(config.get(TOPIC_REPLICATION_PROPERTY), None);
    }

    #[test]
    fn refused_property_is_named_with_the_reason() {
        let error =
            check_properties(&options(&[("security.protocol", "carrier-pigeon")])).unwrap_err();
        assert_eq!(error.kind(), BusErrorKind::Config);
        let shown = error.to_string();
        assert!(shown.contains("security.protocol"), "{shown}");
        assert!(shown.contains("carrier-pigeon"), "{shown}");
    }

    #[test]
    fn refused_secret_property_keeps_its_value_hidden() {
        let jaas = "PlainLoginModule required username=\"oi01\" password=\"hunter2\";";
        let error = check_properties(&options(&[("sasl.jaas.config", jaas)])).unwrap_err();
        assert_eq!(error.kind(), BusErrorKind::Config);
        let shown = format!("{error} {error:?}");
        assert!(shown.contains("sasl.jaas.config"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn accepted_and_dcpipe_properties_pass_the_check() {
        let checked = check_properties(&options(&[
            ("sasl.password", "hunter2"),
            ("client.id", "oi01"),
            (TOPIC_REPLICATION_PROPERTY, "3"),
        ]));
        assert!(checked.is_ok(), "{checked:?}");
    }

    #[test]
    fn replication_factor_is_read_and_checked() {
        assert_eq!(topic_replication(&options(&[])).unwrap(), 1);
        assert_eq!(
            topic_replication(&options(&[(TOPIC_REPLICATION_PROPERTY, "3")])).unwrap(),
            3
        );
        assert_eq!(
            topic_replication(&options(&[(TOPIC_REPLICATION_PROPERTY, "0")]))
                .unwrap_err()
                .kind(),
            BusErrorKind::Config
        );
    }
}
