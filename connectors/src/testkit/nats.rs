//! A `nats-server` with JetStream for tests.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::AsyncBufReadExt as _;

use super::process::{START_ATTEMPTS, ServerProcess, find_binary, free_port};
use super::{TestkitError, TestkitErrorKind};

/// The server version the buses are tested against (installed by `scripts/setup.sh`).
pub const NATS_SERVER_VERSION: &str = "2.12.8";
/// Largest message the test server accepts: above the bus's payload limit so that headers fit.
const MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;
/// Connect timeout of one readiness probe.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A JetStream server on 127.0.0.1 and a free port, storing in a temporary directory. Killed
/// on drop; [`NatsServer::restart`] keeps the port and the stored streams.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    /// The server's name, unique: readiness checks that the server answering is this one.
    name: String,
    dir: TempDir,
    process: Option<ServerProcess>,
    /// Appended to the generated configuration (see [`NatsServer::start_with_config`]).
    extra_config: String,
}

impl NatsServer {
    /// Starts a server and waits until JetStream answers.
    pub async fn start() -> Result<Self, TestkitError> {
        let mut server = Self::not_started()?;
        server.launch_on_free_port().await?;
        Ok(server)
    }

    /// Starts a server whose configuration ends with `extra_config`, in nats-server's
    /// configuration format: an `authorization { … }` or `tls { … }` block for the tests of
    /// credentials and TLS. Paths in it are best absolute. Such a server may refuse a client
    /// without credentials, so readiness is its greeting on the port (the server opens the port
    /// once JetStream is up), not a JetStream request.
    pub async fn start_with_config(extra_config: &str) -> Result<Self, TestkitError> {
        let mut server = Self::not_started()?;
        server.extra_config = extra_config.to_owned();
        server.launch_on_free_port().await?;
        Ok(server)
    }

    /// A server with its binary, port and directory, not running yet.
    fn not_started() -> Result<Self, TestkitError> {
        let binary = find_binary(
            "DCPIPE_NATS_SERVER",
            &format!("nats-server-{NATS_SERVER_VERSION}/bin/nats-server"),
        )?;
        let dir = tempfile::Builder::new()
            .prefix("dcpipe-nats-")
            .tempdir()
            .map_err(|e| TestkitError::new(TestkitErrorKind::Process, format!("temp dir: {e}")))?;
        Ok(NatsServer {
            binary,
            port: free_port()?,
            name: format!("dcpipe_test_{}", uuid::Uuid::new_v4().simple()),
            dir,
            process: None,
            extra_config: String::new(),
        })
    }

    /// Launches on the port chosen, and on a new one when the server exits while starting (its
    /// port was taken), a bounded number of times.
    async fn launch_on_free_port(&mut self) -> Result<(), TestkitError> {
        let mut attempt = 1;
        loop {
            match self.launch().await {
                Err(e) if e.kind() == TestkitErrorKind::Exited && attempt < START_ATTEMPTS => {
                    tracing::warn!(port = self.port, "nats-server did not start: {e}");
                    self.port = free_port()?;
                    attempt += 1;
                }
                launched => return launched,
            }
        }
    }

    /// `host:port` to give to the NATS bus.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The bus URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.address())
    }

    /// Kills the server (as in a crash). Its storage stays for [`NatsServer::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the stopped server again on the same port and storage and waits until JetStream
    /// answers.
    pub async fn start_again(&mut self) -> Result<(), TestkitError> {
        self.stop();
        self.launch().await
    }

    /// Stops the server and starts it again, keeping its port and stored streams.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.start_again().await
    }

    async fn launch(&mut self) -> Result<(), TestkitError> {
        let store = self.dir.path().join("jetstream");
        let config_path = self.dir.path().join("nats.conf");
        let mut config = String::new();
        // Written by hand: the format is small and quoting the path is all it needs.
        let _ = writeln!(config, "listen: 127.0.0.1:{}", self.port);
        let _ = writeln!(config, "server_name: {}", self.name);
        let _ = writeln!(config, "max_payload: {MAX_PAYLOAD_BYTES}");
        let _ = writeln!(
            config,
            "jetstream {{ store_dir: {:?} }}",
            store.display().to_string()
        );
        config.push_str(&self.extra_config);
        fs::write(&config_path, config).map_err(|e| {
            TestkitError::new(TestkitErrorKind::Process, format!("nats config: {e}"))
        })?;
        let args = vec!["-c".to_string(), config_path.display().to_string()];
        let mut process = ServerProcess::spawn(
            "nats-server",
            &self.binary,
            &args,
            self.dir.path(),
            &self.dir.path().join("nats.log"),
        )?;
        let url = self.url();
        let greeting_only = !self.extra_config.is_empty();
        let name = self.name.clone();
        process
            .wait_ready(|| server_answers(url.clone(), name.clone(), greeting_only))
            .await?;
        self.process = Some(process);
        Ok(())
    }
}

/// Readiness of a server: JetStream answers, or only the server's greeting when the server may
/// refuse a client without credentials or TLS.
/// Either way the server must be the one named `name`.
pub(super) async fn server_answers(
    url: String,
    name: String,
    greeting_only: bool,
) -> Result<(), String> {
    if greeting_only {
        greeting_received(url, &name).await
    } else {
        jetstream_answers(url, &name).await
    }
}

/// Opens a TCP connection and reads the `INFO` line every server sends first (in clear text,
/// also when it requires TLS afterwards).
async fn greeting_received(url: String, name: &str) -> Result<(), String> {
    let address = url.trim_start_matches("nats://");
    let read_greeting = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(|e| format!("greeting: {e}"))?;
        if !line.starts_with("INFO ") {
            Err(format!("unexpected greeting {line:?}"))
        } else if line.contains(&format!("\"server_name\":\"{name}\"")) {
            Ok(())
        } else {
            Err(format!("another server answers: {line:?}"))
        }
    };
    tokio::time::timeout(PROBE_CONNECT_TIMEOUT, read_greeting)
        .await
        .map_err(|_| "no greeting".to_string())?
}

/// Connects and asks JetStream for the account: succeeds once streams can be created.
async fn jetstream_answers(url: String, name: &str) -> Result<(), String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(PROBE_CONNECT_TIMEOUT)
        .connect(url.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let answering = client.server_info().server_name;
    if answering != name {
        return Err(format!("another server answers: {answering}"));
    }
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .query_account()
        .await
        .map(|_| ())
        .map_err(|e| format!("jetstream: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port taken by another server between its choice and the bind: the server started
    /// does not mistake the other one for itself, and comes up on a new port.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_taken_port_gives_a_new_one_not_the_other_server() {
        let other = NatsServer::start().await.expect("nats-server");
        let mut server = NatsServer::not_started().expect("server");
        server.port = other.port;
        server.launch_on_free_port().await.expect("started");
        assert_ne!(server.port, other.port);
        let client = async_nats::connect(server.address()).await.expect("client");
        assert_eq!(client.server_info().server_name, server.name);
    }
}
