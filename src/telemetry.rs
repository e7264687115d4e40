//! Logs (tracing), metrics (Prometheus) and health for every command.
//!
//! The metrics port serves `/healthz` (the process answers), `/readyz` (every member of its
//! stages attached, the bus and the ledgers reachable: 200, or 503 with a JSON body naming
//! what is not) and `/metrics` (the Prometheus text format); any other path is 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use dcpipe_pipeline::runtime::{Health, Readiness};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// The version of this build.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this binary was built from, or `unknown` outside a git checkout.
pub(crate) const COMMIT: &str = env!("DCPIPE_COMMIT");

/// Buckets of batch times (stages, ledgers), in seconds: 0.5 ms to 10 s.
const BATCH_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of a payment's time from envelope to decision, in seconds: 5 ms to 2 min (a
/// reservation the payee's institution never answers is voided after its expiry).
const PAYMENT_SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Connections served at once; more wait to be accepted.
const CONNECTIONS_MAX: usize = 64;

/// Starts structured logging. `RUST_LOG` overrides `level` when set.
pub(crate) fn init_logs(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests calling main helpers twice) is harmless: keep the first.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The health of this process: what its stages, bus and ledgers report, and what `/readyz`
/// answers from.
pub(crate) fn health() -> Arc<Health> {
    static HEALTH: OnceLock<Arc<Health>> = OnceLock::new();
    Arc::clone(HEALTH.get_or_init(|| Arc::new(Health::new())))
}

/// Installs the Prometheus recorder and serves health and metrics on `addr` for the life of
/// the process.
pub(crate) async fn init_metrics(addr: SocketAddr) -> Result<(), String> {
    let prometheus = PrometheusBuilder::new()
        .set_buckets(BATCH_SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(dcpipe_pipeline::metrics::PAYMENT_DECISION_SECONDS.to_owned()),
                PAYMENT_SECONDS_BUCKETS,
            )
        })
        .map_err(|e| format!("metric buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let endpoints = Arc::new(Endpoints {
        prometheus,
        health: health(),
    });
    tokio::spawn(upkeep(Arc::clone(&endpoints)));
    tokio::spawn(serve(listener, endpoints));
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    Ok(())
}

/// Help texts of every family, and the build's identity.
fn describe() {
    dcpipe_connectors::bus::metrics::describe();
    dcpipe_connectors::ledger::metrics::describe();
    dcpipe_pipeline::metrics::describe();
    metrics::describe_gauge!(
        "dcpipe_build_info",
        "The version and commit of this build (always 1)."
    );
    metrics::gauge!("dcpipe_build_info", "version" => VERSION, "commit" => COMMIT).set(1.0);
}

#[derive(Debug)]
struct Endpoints {
    prometheus: PrometheusHandle,
    health: Arc<Health>,
}

async fn upkeep(endpoints: Arc<Endpoints>) {
    let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        interval.tick().await;
        endpoints.prometheus.run_upkeep();
    }
}

async fn serve(listener: tokio::net::TcpListener, endpoints: Arc<Endpoints>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, typically: wait rather than spin.
                tracing::warn!(error = %e, "metrics port: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoints = Arc::clone(&endpoints);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let endpoints = Arc::clone(&endpoints);
                async move { Ok::<_, Infallible>(endpoints.answer(&request)) }
            });
            // A client that goes away half-way is its own business.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

impl Endpoints {
    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return reply(StatusCode::NOT_FOUND, TEXT, format!("no {path} here\n"));
        }
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "GET or HEAD only\n".to_owned(),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".to_owned()),
            "/readyz" => {
                let readiness = self.health.readiness();
                let status = if readiness.is_ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                reply(status, JSON, readiness_json(&readiness))
            }
            _ => {
                self.prometheus.run_upkeep();
                let mut text = self.prometheus.render();
                text.push_str(&readiness_metrics(&self.health.readiness()));
                text.push_str(&process_metrics(&ProcessStats::now()));
                reply(StatusCode::OK, PROMETHEUS_TEXT, text)
            }
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `{"ready":true,"not_ready":[]}`, or what is not ready: each part, why, and whether it
/// stopped for good.
fn readiness_json(readiness: &Readiness) -> String {
    let not_ready: Vec<serde_json::Value> = readiness
        .not_ready
        .iter()
        .map(|part| {
            serde_json::json!({
                "component": part.component.to_string(),
                "why": part.why,
                "fatal": part.fatal,
            })
        })
        .collect();
    let warnings: Vec<serde_json::Value> = readiness
        .warnings
        .iter()
        .map(|(component, warning)| {
            serde_json::json!({
                "component": component.to_string(),
                "warning": warning,
            })
        })
        .collect();
    let mut body = serde_json::json!({
        "ready": readiness.is_ready(),
        "not_ready": not_ready,
        "warnings": warnings,
    })
    .to_string();
    body.push('\n');
    body
}

/// `dcpipe_ready`: what `/readyz` answers, as a gauge Prometheus can alert on (1 ready, 0 not),
/// and `dcpipe_not_ready` per part that is not ready (`fatal` says whether it stopped for good).
fn readiness_metrics(readiness: &Readiness) -> String {
    let mut text = format!(
        "# HELP dcpipe_ready Whether every stage member is attached and the bus and ledgers answer (1) or not (0).\n\
         # TYPE dcpipe_ready gauge\ndcpipe_ready {}\n\n",
        u8::from(readiness.is_ready())
    );
    if !readiness.not_ready.is_empty() {
        text.push_str(
            "# HELP dcpipe_not_ready Parts of this process that are not ready, by component.\n\
             # TYPE dcpipe_not_ready gauge\n",
        );
        for part in &readiness.not_ready {
            let component = part
                .component
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            text.push_str(&format!(
                "dcpipe_not_ready{{component=\"{component}\",fatal=\"{}\"}} 1\n",
                part.fatal
            ));
        }
        text.push('\n');
    }
    text
}

/// What the operating system says of this process, where it says it (`/proc`).
#[derive(Debug, Default, Clone, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl ProcessStats {
    fn now() -> Self {
        ProcessStats {
            cpu_seconds: dcpipe_loadtest::rss::process_cpu_seconds(),
            resident_bytes: dcpipe_loadtest::rss::current_rss_kib().map(|kib| kib * 1024),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
            max_fds: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .as_deref()
                .and_then(parse_max_open_files),
        }
    }
}

/// The soft limit of the `Max open files` line of a `/proc/<pid>/limits` text.
fn parse_max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

/// The process families, named as Prometheus's own clients name them.
fn process_metrics(stats: &ProcessStats) -> String {
    let mut text = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(value) = value {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
            ));
        }
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stats.cpu_seconds.map(|s| s.to_string()),
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        stats.resident_bytes.map(|b| b.to_string()),
    );
    family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        stats.open_fds.map(|n| n.to_string()),
    );
    family(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        stats.max_fds.map(|n| n.to_string()),
    );
    text
}

#[cfg(test)]
mod tests {
    use dcpipe_pipeline::runtime::{Component, Reachability};

    use super::*;

    #[test]
    fn readiness_names_what_is_not_ready() {
        let health = Health::new();
        health.reach(
            Component::Bus,
            Reachability::Unreachable("connection refused".to_owned()),
        );
        let body: serde_json::Value =
            serde_json::from_str(&readiness_json(&health.readiness())).expect("json");
        assert_eq!(body["ready"], false);
        assert_eq!(body["not_ready"][0]["component"], "bus");
        assert_eq!(body["not_ready"][0]["why"], "connection refused");
        assert_eq!(body["not_ready"][0]["fatal"], false);
        health.reach(Component::Bus, Reachability::Reachable);
        assert_eq!(
            readiness_json(&health.readiness()),
            "{\"not_ready\":[],\"ready\":true,\"warnings\":[]}\n"
        );
    }

    #[test]
    fn readiness_says_when_a_ledger_holds_no_wallets() {
        let health = Health::new();
        let ledger = Component::Ledger("oi01".to_owned());
        health.reach(ledger.clone(), Reachability::Reachable);
        health.warn(ledger, "the ledger holds no wallets");
        let body: serde_json::Value =
            serde_json::from_str(&readiness_json(&health.readiness())).expect("json");
        assert_eq!(body["ready"], true);
        assert_eq!(body["warnings"][0]["component"], "ledger of oi01");
        assert_eq!(
            body["warnings"][0]["warning"],
            "the ledger holds no wallets"
        );
    }

    #[test]
    fn readiness_is_a_gauge_naming_what_is_not_ready() {
        let health = Health::new();
        health.reach(Component::Bus, Reachability::Reachable);
        assert_eq!(
            readiness_metrics(&health.readiness()),
            "# HELP dcpipe_ready Whether every stage member is attached and the bus and ledgers answer (1) or not (0).\n\
             # TYPE dcpipe_ready gauge\ndcpipe_ready 1\n\n"
        );
        health.reach(
            Component::Bus,
            Reachability::Unreachable("connection refused".to_owned()),
        );
        let text = readiness_metrics(&health.readiness());
        assert!(text.contains("dcpipe_ready 0\n"), "{text}");
        assert!(
            text.contains("dcpipe_not_ready{component=\"bus\",fatal=\"false\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn max_open_files_is_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(parse_max_open_files("nothing"), None);
    }

    #[test]
    fn process_families_have_help_and_type_and_skip_the_unknown() {
        let text = process_metrics(&ProcessStats {
            cpu_seconds: Some(1.5),
            resident_bytes: Some(4096),
            open_fds: None,
            max_fds: Some(1024),
        });
        assert!(text.contains(
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
             # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n"
        ));
        assert!(text.contains("process_resident_memory_bytes 4096\n"));
        assert!(!text.contains("process_open_fds"));
        assert!(text.contains("process_max_fds 1024\n"));
    }
}
