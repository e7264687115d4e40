//! Client settings shared by every Kafka client of the bus, and librdkafka's logs routed to
//! `tracing`.

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

use crate::bus::{BusError, BusErrorKind, KafkaOptions};

/// Prefix of the properties dcpipe reads itself and never passes to librdkafka.
pub(super) const DCPIPE_PROPERTY_PREFIX: &str = "dcpipe.";
/// Property: replication factor of the topics `ensure_subject` creates.
pub(super) const TOPIC_REPLICATION_PROPERTY: &str = "dcpipe.topic.replication.factor";
/// Replication factor of new topics unless [`TOPIC_REPLICATION_PROPERTY`] says otherwise: one
/// copy suits a single broker (tests, demo); production clusters set 3.
pub(super) const TOPIC_REPLICATION_DEFAULT: i32 = 1;

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
