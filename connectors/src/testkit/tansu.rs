//! A tansu broker (Kafka protocol) for tests, storing in SQLite so that a restart keeps data.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tempfile::TempDir;

use super::process::{START_ATTEMPTS, ServerProcess, find_binary, free_port};
use super::{TestkitError, TestkitErrorKind};

/// The broker version the Kafka bus is tested against (installed by `scripts/setup.sh`).
pub const TANSU_VERSION: &str = "0.6.0";
/// SQLite database of the broker, relative to its working directory (the temporary directory).
const STORAGE_URL: &str = "sqlite://tansu.db";
/// Time allowed to one metadata request of a readiness probe.
const PROBE_METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed to `tansu user create`.
const USER_CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A tansu broker on 127.0.0.1 and a free port, storing in a temporary directory. Killed on
/// drop; [`TansuServer::restart`] keeps the port and the stored topics, offsets and groups.
#[derive(Debug)]
pub struct TansuServer {
    binary: PathBuf,
    port: u16,
    dir: TempDir,
    process: Option<ServerProcess>,
    /// With a SCRAM user (name, password) the broker requires SASL and probes log in as it.
    scram_user: Option<(String, String)>,
}

impl TansuServer {
    /// Starts a broker and waits until it answers a metadata request.
    pub async fn start() -> Result<Self, TestkitError> {
        let binary = find_binary("DCPIPE_TANSU", &format!("tansu-{TANSU_VERSION}/bin/tansu"))?;
        let dir = tempfile::Builder::new()
            .prefix("dcpipe-tansu-")
            .tempdir()
            .map_err(|e| TestkitError::new(TestkitErrorKind::Process, format!("temp dir: {e}")))?;
        let mut server = TansuServer {
            binary,
            port: free_port()?,
            dir,
            process: None,
            scram_user: None,
        };
        let mut attempt = 1;
        loop {
            match server.launch().await {
                Err(e) if e.kind() == TestkitErrorKind::Exited && attempt < START_ATTEMPTS => {
                    tracing::warn!(port = server.port, "tansu did not start: {e}");
                    server.port = free_port()?;
                    attempt += 1;
                }
                launched => return launched.map(|()| server),
            }
        }
    }

    /// Starts a broker that requires SASL authentication and knows one SCRAM-SHA-512 user.
    /// (tansu 0.6.0 checks SCRAM passwords; its PLAIN mechanism accepts any password, so a test
    /// of refused credentials needs SCRAM.) Users are created through the broker itself, so it
    /// first runs without authentication, then restarts with it on the same storage.
    pub async fn start_with_scram_user(user: &str, password: &str) -> Result<Self, TestkitError> {
        let mut server = Self::start().await?;
        server.create_scram_user(user, password).await?;
        server.scram_user = Some((user.to_owned(), password.to_owned()));
        server.start_again().await?;
        Ok(server)
    }

    /// Runs `tansu user create` against the running broker.
    async fn create_scram_user(&self, user: &str, password: &str) -> Result<(), TestkitError> {
        let broker = format!("tcp://{}", self.address());
        let command = tokio::process::Command::new(&self.binary)
            .args(["user", "create", "--broker", broker.as_str()])
            .args(["--mechanism", "scram512", user, password])
            .current_dir(self.dir.path())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(USER_CREATE_TIMEOUT, command)
            .await
            .map_err(|_| {
                TestkitError::new(
                    TestkitErrorKind::NotReady,
                    format!("tansu user create took over {USER_CREATE_TIMEOUT:?}"),
                )
            })?
            .map_err(|e| {
                TestkitError::new(TestkitErrorKind::Process, format!("tansu user: {e}"))
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(TestkitError::new(
                TestkitErrorKind::Process,
                format!(
                    "tansu user create exited with {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ),
            ))
        }
    }

    /// `host:port` to give to the Kafka bus as bootstrap server.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The bus URL, `kafka://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("kafka://{}", self.address())
    }

    /// Kills the broker (as in a crash). Its storage stays for [`TansuServer::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the stopped broker again on the same port and storage and waits until it answers.
    pub async fn start_again(&mut self) -> Result<(), TestkitError> {
        self.stop();
        self.launch().await
    }

    /// Stops the broker and starts it again, keeping its port and storage.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.start_again().await
    }

    async fn launch(&mut self) -> Result<(), TestkitError> {
        let listener = format!("tcp://{}", self.address());
        let mut args = vec![
            "broker".to_string(),
            "--listener-url".to_string(),
            listener.clone(),
            "--advertised-listener-url".to_string(),
            listener,
            "--storage-engine".to_string(),
            STORAGE_URL.to_string(),
        ];
        if self.scram_user.is_some() {
            args.push("--authentication".to_string());
        }
        let mut process = ServerProcess::spawn(
            "tansu",
            &self.binary,
            &args,
            self.dir.path(),
            &self.dir.path().join("tansu.log"),
        )?;
        let address = self.address();
        let scram_user = self.scram_user.clone();
        process
            .wait_ready(|| metadata_answers(address.clone(), scram_user.clone()))
            .await?;
        self.process = Some(process);
        Ok(())
    }
}

/// Asks the broker for its metadata with a throw-away client, logged in as `scram_user` when
/// given.
async fn metadata_answers(
    address: String,
    scram_user: Option<(String, String)>,
) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &address)
            .set("log_level", "0");
        if let Some((user, password)) = scram_user {
            config
                .set("security.protocol", "SASL_PLAINTEXT")
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        let consumer: BaseConsumer = config.create().map_err(|e| format!("client: {e}"))?;
        consumer
            .fetch_metadata(None, PROBE_METADATA_TIMEOUT)
            .map(|_| ())
            .map_err(|e| format!("metadata: {e}"))
    })
    .await
    .map_err(|e| format!("probe task: {e}"))?
}
