//! Configuration: command-line flags, then environment variables, then an optional TOML file,
//! then defaults — in that order of precedence.
//!
//! clap fills each global option from its flag or its `DCPIPE_*` variable; what is still unset
//! is taken from the file given by `--config` / `DCPIPE_CONFIG`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dcpipe_connectors::bus::{BusOptions, BusUrl, KafkaOptions, NatsOptions};
use serde::Deserialize;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event, for log collectors.
    Json,
}

/// The optional TOML file's global keys. Every key is optional; see `docs/CONFIGURATION.md`.
/// The file's other keys set commands' flags, and unknown keys are refused, in `options.rs`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct FileSettings {
    /// Bus URL: `embedded`, `nats://host:port`, `kafka://host:port`.
    pub bus: Option<String>,
    /// Ledger URL: `sqlite://FILE` or `postgres://…`.
    pub ledger: Option<String>,
    /// Address of the Prometheus endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Log level filter (tracing `EnvFilter` syntax).
    pub log_level: Option<String>,
    /// NATS credentials and TLS.
    #[serde(default)]
    pub nats: NatsFileSettings,
    /// Kafka client properties (librdkafka names), e.g. `"security.protocol" = "SASL_SSL"`.
    #[serde(default)]
    pub kafka: KafkaFileSettings,
}

/// `[nats]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NatsFileSettings {
    /// A `.creds` file.
    pub creds_file: Option<PathBuf>,
    /// User name.
    pub user: Option<String>,
    /// Password (prefer `DCPIPE_NATS_PASSWORD` over writing it in a file).
    pub password: Option<String>,
    /// Token.
    pub token: Option<String>,
    /// Require TLS.
    #[serde(default)]
    pub tls_required: bool,
    /// CA certificate (PEM).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM).
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// Replicas of each stream dcpipe creates (1 on a single server, 3 or 5 in a cluster).
    pub stream_replicas: Option<usize>,
    /// Retention of each stream dcpipe creates, e.g. `"30d"` (the default) or `"72h"`.
    pub stream_max_age: Option<String>,
}

/// `[kafka]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KafkaFileSettings {
    /// librdkafka properties passed through to every client.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl FileSettings {
    /// Reads and parses a TOML file.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }
}

/// Global options as given on the command line or in the environment (clap fills these).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct GlobalArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, global = true, env = "DCPIPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, env = "DCPIPE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level filter, e.g. `info` or `dcpipe=debug,info` (RUST_LOG wins when set).
    #[arg(long, global = true, env = "DCPIPE_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g. 127.0.0.1:9464.
    #[arg(long, global = true, env = "DCPIPE_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Broker options, copied from the command's [`BrokerArgs`] (only commands that use a
    /// broker have those flags).
    #[arg(skip)]
    pub nats_creds: Option<PathBuf>,
    /// See [`BrokerArgs`].
    #[arg(skip)]
    pub nats_user: Option<String>,
    /// See [`BrokerArgs`].
    #[arg(skip)]
    pub nats_password: Option<String>,
    /// See [`BrokerArgs`].
    #[arg(skip)]
    pub nats_tls_ca: Option<PathBuf>,
    /// See [`BrokerArgs`].
    #[arg(skip)]
    pub nats_stream_replicas: Option<usize>,
    /// See [`BrokerArgs`].
    #[arg(skip)]
    pub nats_stream_max_age: Option<Duration>,
    /// See [`BrokerArgs`].
    #[arg(skip)]
    pub kafka_properties: Vec<String>,
}

/// Credentials, TLS and stream limits towards the brokers: flattened into the commands that
/// use a broker, so that only those show them.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct BrokerArgs {
    /// NATS credentials file (.creds).
    #[arg(long, env = "DCPIPE_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user name.
    #[arg(long, env = "DCPIPE_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password; prefer the environment variable (a flag shows in the process list).
    #[arg(long, env = "DCPIPE_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// CA certificate (PEM) to verify the NATS server; implies TLS.
    #[arg(long, env = "DCPIPE_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Replicas of each NATS stream dcpipe creates: 1 on a single server (the default), 3 or 5
    /// in a cluster. Streams that already exist keep theirs.
    #[arg(long, env = "DCPIPE_NATS_STREAM_REPLICAS", value_name = "N")]
    pub nats_stream_replicas: Option<usize>,
    /// How long each NATS stream dcpipe creates keeps its messages, e.g. 30d (the default) or
    /// 72h: the furthest back an audit can replay.
    #[arg(long, env = "DCPIPE_NATS_STREAM_MAX_AGE", value_name = "DURATION", value_parser = parse_duration)]
    pub nats_stream_max_age: Option<Duration>,
    /// Extra Kafka client property KEY=VALUE (repeatable), e.g. security.protocol=SASL_SSL.
    #[arg(
        long = "kafka-property",
        env = "DCPIPE_KAFKA_PROPERTY",
        value_name = "KEY=VALUE"
    )]
    pub kafka_properties: Vec<String>,
}

impl BrokerArgs {
    /// Copies the broker flags into the global options that [`Settings::resolve`] merges.
    pub(crate) fn apply_to(&self, global: &mut GlobalArgs) {
        global.nats_creds.clone_from(&self.nats_creds);
        global.nats_user.clone_from(&self.nats_user);
        global.nats_password.clone_from(&self.nats_password);
        global.nats_tls_ca.clone_from(&self.nats_tls_ca);
        global.nats_stream_replicas = self.nats_stream_replicas;
        global.nats_stream_max_age = self.nats_stream_max_age;
        global.kafka_properties.clone_from(&self.kafka_properties);
    }
}

/// Settings after merging flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Prometheus endpoint, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Bus URL from the file, used when a command's `--bus` is not given.
    pub bus: Option<String>,
    /// Ledger URL from the file, used when a command's `--ledger` is not given.
    pub ledger: Option<String>,
    /// Credentials and TLS towards the brokers.
    pub bus_options: BusOptions,
}

impl Settings {
    /// Merges `args` over the file they name (if any) over defaults.
    pub(crate) fn resolve(args: &GlobalArgs) -> Result<Self, String> {
        let file = match &args.config {
            Some(path) => FileSettings::load(path)?,
            None => FileSettings::default(),
        };
        let mut kafka = KafkaOptions {
            properties: file.kafka.properties,
        };
        for pair in &args.kafka_properties {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("--kafka-property {pair:?}: expected KEY=VALUE"))?;
            kafka
                .properties
                .insert(key.trim().to_string(), value.to_string());
        }
        let nats_tls_ca = args.nats_tls_ca.clone().or(file.nats.tls_ca_file);
        let stream_max_age = match (args.nats_stream_max_age, &file.nats.stream_max_age) {
            (Some(age), _) => Some(age),
            (None, Some(text)) => {
                Some(parse_duration(text).map_err(|e| format!("nats.stream_max_age: {e}"))?)
            }
            (None, None) => None,
        };
        let nats = NatsOptions {
            creds_file: args.nats_creds.clone().or(file.nats.creds_file),
            user: args.nats_user.clone().or(file.nats.user),
            password: args.nats_password.clone().or(file.nats.password),
            token: file.nats.token,
            tls_required: file.nats.tls_required || nats_tls_ca.is_some(),
            tls_ca_file: nats_tls_ca,
            tls_cert_file: file.nats.tls_cert_file,
            tls_key_file: file.nats.tls_key_file,
            stream_replicas: args
                .nats_stream_replicas
                .or(file.nats.stream_replicas)
                .unwrap_or(1),
            stream_max_age,
        };
        Ok(Settings {
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Human),
            log_level: args
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_string()),
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            bus: file.bus,
            ledger: file.ledger,
            bus_options: BusOptions {
                nats,
                kafka,
                ..BusOptions::default()
            },
        })
    }

    /// The bus for a command: its own `--bus`/`DCPIPE_BUS` first, then the file, then embedded.
    pub(crate) fn bus_url(&self, from_command: Option<&str>) -> Result<BusUrl, String> {
        let url = from_command.or(self.bus.as_deref()).unwrap_or("embedded");
        BusUrl::parse(url).map_err(|e| e.to_string())
    }
}

/// Parses `10s`, `500ms`, `2m`, `72h`, `30d` or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration like 10s, 500ms, 2m or 30d"))?;
    let seconds = |per_unit: u64| {
        value
            .checked_mul(per_unit)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?}: too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3_600),
        "d" => seconds(86_400),
        _ => Err(format!("{text:?}: unit must be ms, s, m, h or d")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = file_with("log_level = \"debug\"\nlog_format = \"json\"\n");
        let args = GlobalArgs {
            config: Some(file.path().to_path_buf()),
            log_level: Some("warn".into()),
            ..GlobalArgs::default()
        };
        let settings = Settings::resolve(&args).expect("settings");
        assert_eq!(settings.log_level, "warn");
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn the_file_wins_over_defaults() {
        let file = file_with(
            "bus = \"nats://127.0.0.1:4333\"\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n",
        );
        let args = GlobalArgs {
            config: Some(file.path().to_path_buf()),
            ..GlobalArgs::default()
        };
        let settings = Settings::resolve(&args).expect("settings");
        assert_eq!(
            settings.bus_url(None).expect("url"),
            BusUrl::Nats(vec!["127.0.0.1:4333".into()])
        );
        assert_eq!(
            settings.bus_url(Some("embedded")).expect("url"),
            BusUrl::Embedded
        );
        assert_eq!(
            settings.bus_options.kafka.properties["security.protocol"],
            "SSL"
        );
        assert_eq!(settings.log_format, LogFormat::Human);
    }

    #[test]
    fn durations_take_a_unit_from_milliseconds_to_days() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(
            parse_duration("999999999999999999d").is_err(),
            "overflows u64 seconds"
        );
    }

    #[test]
    fn nats_stream_limits_from_the_file_and_flags() {
        let file = file_with("[nats]\nstream_replicas = 3\nstream_max_age = \"7d\"\n");
        let from_file = GlobalArgs {
            config: Some(file.path().to_path_buf()),
            ..GlobalArgs::default()
        };
        let settings = Settings::resolve(&from_file).expect("settings");
        assert_eq!(settings.bus_options.nats.stream_replicas, 3);
        assert_eq!(
            settings.bus_options.nats.stream_max_age,
            Some(Duration::from_secs(7 * 24 * 3600))
        );
        let flags = GlobalArgs {
            nats_stream_replicas: Some(5),
            nats_stream_max_age: Some(Duration::from_secs(72 * 3600)),
            ..from_file
        };
        let settings = Settings::resolve(&flags).expect("settings");
        assert_eq!(settings.bus_options.nats.stream_replicas, 5);
        assert_eq!(
            settings.bus_options.nats.stream_max_age,
            Some(Duration::from_secs(72 * 3600))
        );
        let defaults = Settings::resolve(&GlobalArgs::default()).expect("settings");
        assert_eq!(defaults.bus_options.nats.stream_replicas, 1);
        assert_eq!(defaults.bus_options.nats.stream_max_age, None);

        let bad = file_with("[nats]\nstream_max_age = \"a week\"\n");
        let err = Settings::resolve(&GlobalArgs {
            config: Some(bad.path().to_path_buf()),
            ..GlobalArgs::default()
        })
        .expect_err("not a duration");
        assert!(err.contains("nats.stream_max_age"), "{err}");
    }

    #[test]
    fn unknown_keys_of_the_global_sections_are_rejected() {
        let file = file_with("[nats]\nuserr = \"u\"\n");
        let args = GlobalArgs {
            config: Some(file.path().to_path_buf()),
            ..GlobalArgs::default()
        };
        let err = Settings::resolve(&args).expect_err("typo must fail");
        assert!(err.contains("userr"), "{err}");
    }

    #[test]
    fn kafka_property_flags_need_key_and_value() {
        let args = GlobalArgs {
            kafka_properties: vec!["sasl.mechanism".into()],
            ..GlobalArgs::default()
        };
        assert!(Settings::resolve(&args).is_err());
    }
}
