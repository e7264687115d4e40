use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{BusError, BusErrorKind};

/// A parsed bus URL: `embedded`, `nats://host:port[,host:port…]` or
/// `kafka://host:port[,host:port…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusUrl {
    /// The in-process bus.
    Embedded,
    /// NATS servers (`host:port`), tried in turn.
    Nats(Vec<String>),
    /// Kafka bootstrap servers (`host:port`).
    Kafka(Vec<String>),
}

impl BusUrl {
    /// Parses a bus URL.
    pub fn parse(url: &str) -> Result<Self, BusError> {
        let url = url.trim();
        if url == "embedded" || url == "embedded://" {
            return Ok(BusUrl::Embedded);
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            BusError::new(
                BusErrorKind::Config,
                format!(
                    "bus URL {url:?}: expected embedded, nats://host:port or kafka://host:port"
                ),
            )
        })?;
        let hosts: Vec<String> = rest
            .trim_end_matches('/')
            .split(',')
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        if hosts.is_empty() || hosts.iter().any(|h| !h.contains(':')) {
            return Err(BusError::new(
                BusErrorKind::Config,
                format!("bus URL {url:?}: every server needs host:port"),
            ));
        }
        match scheme {
            "nats" | "tls" => Ok(BusUrl::Nats(hosts)),
            "kafka" => Ok(BusUrl::Kafka(hosts)),
            other => Err(BusError::new(
                BusErrorKind::Config,
                format!("bus URL scheme {other:?}: expected nats or kafka"),
            )),
        }
    }
}

impl fmt::Display for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusUrl::Embedded => f.write_str("embedded"),
            BusUrl::Nats(hosts) => write!(f, "nats://{}", hosts.join(",")),
            BusUrl::Kafka(hosts) => write!(f, "kafka://{}", hosts.join(",")),
        }
    }
}

/// TLS and credentials towards NATS. Secrets never appear in `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsOptions {
    /// A `.creds` file (JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// User name for user/password authentication.
    pub user: Option<String>,
    /// Password for user/password authentication.
    pub password: Option<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// Require TLS.
    pub tls_required: bool,
    /// CA certificate (PEM) to verify the server.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub tls_key_file: Option<PathBuf>,
    /// Replicas of each stream dcpipe creates: 1 on a single server (0 means 1), 3 or 5 in a
    /// cluster so that a stream survives the loss of a server. Streams that already exist keep
    /// theirs.
    pub stream_replicas: usize,
    /// How long each stream dcpipe creates keeps its messages, consumed or not; `None`: 30 days.
    /// Audits replay from this history, so it bounds how far back a replay can reach.
    pub stream_max_age: Option<Duration>,
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOptions")
            .field("creds_file", &self.creds_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_required", &self.tls_required)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("stream_replicas", &self.stream_replicas)
            .field("stream_max_age", &self.stream_max_age)
            .finish()
    }
}

/// librdkafka properties passed through as given (`security.protocol`, `ssl.ca.location`,
/// `sasl.mechanism`, `sasl.username`, `sasl.password`, …). Values of keys that look secret
/// (password, secret, key) never appear in `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaOptions {
    /// Extra client properties, applied after dcpipe's own so that they win.
    pub properties: BTreeMap<String, String>,
}

impl KafkaOptions {
    /// Whether a property's value must be hidden from logs.
    pub fn is_secret(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        key.contains("password")
            || key.contains("secret")
            || key.ends_with(".key.pem")
            || key == "ssl.key.password"
            || key.contains("jaas")
    }
}

impl fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.properties {
            if Self::is_secret(k) {
                map.entry(k, &"<redacted>");
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_buses() {
        assert_eq!(BusUrl::parse("embedded").unwrap(), BusUrl::Embedded);
        assert_eq!(
            BusUrl::parse("nats://127.0.0.1:4222").unwrap(),
            BusUrl::Nats(vec!["127.0.0.1:4222".into()])
        );
        assert_eq!(
            BusUrl::parse("kafka://a:9092,b:9092").unwrap(),
            BusUrl::Kafka(vec!["a:9092".into(), "b:9092".into()])
        );
    }

    #[test]
    fn rejects_unknown_schemes_and_missing_ports() {
        assert_eq!(
            BusUrl::parse("amqp://x:1").unwrap_err().kind(),
            BusErrorKind::Config
        );
        assert_eq!(
            BusUrl::parse("nats://localhost").unwrap_err().kind(),
            BusErrorKind::Config
        );
        assert_eq!(BusUrl::parse("").unwrap_err().kind(), BusErrorKind::Config);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut kafka = KafkaOptions::default();
        kafka
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        kafka
            .properties
            .insert("sasl.username".into(), "alice".into());
        let shown = format!("{kafka:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice"));
        let nats = NatsOptions {
            password: Some("hunter2".into()),
            token: Some("tok".into()),
            ..Default::default()
        };
        let shown = format!("{nats:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok\""),
            "{shown}"
        );
    }
}
