//! A private PostgreSQL server for tests: `initdb` into a temporary directory, `postgres` on
//! 127.0.0.1 and a free port, with fsync off (a test database need not survive a power loss).
//!
//! The binaries come from `$DCPIPE_PG_BINDIR`, else the newest `/usr/lib/postgresql/*/bin`
//! (Debian's layout). PostgreSQL refuses to run as root, so when the tests run as root the
//! server runs as the `postgres` system user (through `runuser`) in a directory it owns.
//!
//! The server must not outlive the tests, even when the test process is killed or a shared
//! server sits in a `static` whose destructor never runs: it runs under a small shell
//! supervisor that reads commands from a pipe held by the test process. `restart` restarts the
//! server; end of file, which the kernel delivers when the test process exits however it exits,
//! stops the server (fast mode) and removes its directory.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_postgres::NoTls;

use super::process::free_port;
use super::{TestkitError, TestkitErrorKind};

/// How long the server may take to accept connections, and to stop.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two readiness or exit checks.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Connect timeout of one readiness probe.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections the server accepts: pools of several ledgers in concurrent tests add up.
const MAX_CONNECTIONS: u32 = 300;
/// The database superuser created by `initdb`.
const SUPERUSER: &str = "postgres";
/// Lines of the server log quoted in an error.
const LOG_TAIL_LINES: usize = 30;

/// The supervisor: `sh -c SUPERVISOR name DIR server args…`. Starts the server in the
/// background, counts its starts in `DIR/generation`, restarts it on a `restart` line, and on
/// end of input stops it and removes `DIR`.
const SUPERVISOR: &str = r#"dir=$1
shift
generation=0
launch() {
    "$@" </dev/null &
    pid=$!
    generation=$((generation + 1))
    echo "$generation" > "$dir/generation.tmp" && mv "$dir/generation.tmp" "$dir/generation"
}
launch "$@"
while IFS= read -r command; do
    if [ "$command" = restart ]; then
        kill -INT "$pid" 2>/dev/null
        wait "$pid"
        launch "$@"
    fi
done
kill -INT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$dir"
"#;

fn process_error(context: &str, e: impl std::fmt::Display) -> TestkitError {
    TestkitError::new(TestkitErrorKind::Process, format!("{context}: {e}"))
}

/// The directory holding `initdb` and `postgres`.
fn find_bindir() -> Result<PathBuf, TestkitError> {
    if let Some(dir) = std::env::var_os("DCPIPE_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if dir.join("postgres").is_file() {
            return Ok(dir);
        }
        return Err(TestkitError::new(
            TestkitErrorKind::BinaryMissing,
            format!("DCPIPE_PG_BINDIR={} has no postgres binary", dir.display()),
        ));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        TestkitError::new(
            TestkitErrorKind::BinaryMissing,
            "no PostgreSQL server found: install the postgresql package (scripts/setup.sh) or \
             set DCPIPE_PG_BINDIR",
        )
    })
}

/// The uid and gid of a system user, from `/etc/passwd`.
fn system_user_ids(name: &str) -> Result<(u32, u32), TestkitError> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(|e| process_error("/etc/passwd", e))?;
    passwd
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == name).then(|| {
                Some((
                    fields[2].parse::<u32>().ok()?,
                    fields[3].parse::<u32>().ok()?,
                ))
            })?
        })
        .next()
        .ok_or_else(|| {
            TestkitError::new(
                TestkitErrorKind::BinaryMissing,
                format!("running as root needs the {name} system user (postgresql package)"),
            )
        })
}

/// A PostgreSQL server of its own for the tests of one process. Stopped on drop.
#[derive(Debug)]
pub struct PostgresServer {
    bindir: PathBuf,
    dir: TempDir,
    port: u16,
    /// The system user to run as (when the tests run as root).
    run_as: Option<&'static str>,
    /// The supervisor process.
    child: Option<Child>,
    /// The supervisor's stdin: `restart` lines, and closing it stops everything.
    commands: Option<ChildStdin>,
    /// Certificate and key files (in the server's directory) when it also accepts TLS.
    tls: Option<(PathBuf, PathBuf)>,
}

impl PostgresServer {
    /// Creates a cluster in a temporary directory, starts it and waits until it accepts
    /// connections.
    pub async fn start() -> Result<Self, TestkitError> {
        Self::start_inner(None).await
    }

    /// Like [`start`](Self::start), with TLS on (`ssl=on`) using this server certificate and
    /// key (PEM). Clients may still connect without TLS; `pg_stat_ssl` tells which did.
    pub async fn start_with_tls(cert_file: &Path, key_file: &Path) -> Result<Self, TestkitError> {
        Self::start_inner(Some((cert_file, key_file))).await
    }

    async fn start_inner(tls: Option<(&Path, &Path)>) -> Result<Self, TestkitError> {
        let bindir = find_bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("dcpipe-pg-")
            .tempdir()
            .map_err(|e| process_error("temp dir", e))?;
        let run_as = if is_root(dir.path())? {
            let (uid, gid) = system_user_ids(SUPERUSER)?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| process_error("chown temp dir", e))?;
            Some(SUPERUSER)
        } else {
            None
        };
        let mut server = PostgresServer {
            bindir,
            dir,
            port: free_port()?,
            run_as,
            child: None,
            commands: None,
            tls: None,
        };
        let initdb = server.command(
            &server.bindir.join("initdb"),
            &[
                "-D",
                &server.data_dir().display().to_string(),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        let log = server.log_file()?;
        let status = tokio::task::spawn_blocking(move || {
            let mut initdb = initdb;
            initdb
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .status()
        })
        .await
        .map_err(|e| process_error("initdb task", e))?
        .map_err(|e| process_error("initdb", e))?;
        if !status.success() {
            return Err(TestkitError::new(
                TestkitErrorKind::Process,
                format!("initdb exited with {status}\n{}", server.log_tail()),
            ));
        }
        if let Some((cert_file, key_file)) = tls {
            server.tls = Some(server.install_tls(cert_file, key_file)?);
        }
        server.launch().await?;
        Ok(server)
    }

    /// Copies the certificate and key into the server's directory, readable by the server's
    /// user only (PostgreSQL refuses a key others can read).
    fn install_tls(
        &self,
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<(PathBuf, PathBuf), TestkitError> {
        use std::os::unix::fs::PermissionsExt;

        let cert = self.dir.path().join("server.crt");
        let key = self.dir.path().join("server.key");
        fs::copy(cert_file, &cert).map_err(|e| process_error("copy server certificate", e))?;
        fs::copy(key_file, &key).map_err(|e| process_error("copy server key", e))?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
            .map_err(|e| process_error("server key permissions", e))?;
        if self.run_as.is_some() {
            let (uid, gid) = system_user_ids(SUPERUSER)?;
            for file in [&cert, &key] {
                std::os::unix::fs::chown(file, Some(uid), Some(gid))
                    .map_err(|e| process_error("chown TLS files", e))?;
            }
        }
        Ok((cert, key))
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the default `postgres` database.
    pub fn url(&self) -> String {
        self.url_for(SUPERUSER)
    }

    /// URL of database `database`.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates database `name` (letters, digits and `_`) and returns its URL: gives each test
    /// a clean database on one shared server.
    pub async fn create_database(&self, name: &str) -> Result<String, TestkitError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(process_error(
                "create database",
                format!("bad name {name:?}"),
            ));
        }
        let client = connect(&self.url())
            .await
            .map_err(|e| process_error("create database", e))?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| process_error("create database", e))?;
        Ok(self.url_for(name))
    }

    /// Stops the server (fast shutdown: open transactions are rolled back, committed data
    /// stays), starts it again on the same port and data, and waits until it accepts
    /// connections.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        let before = self.generation();
        let commands = self.commands.as_mut().ok_or_else(|| {
            TestkitError::new(TestkitErrorKind::Process, "postgres supervisor is gone")
        })?;
        commands
            .write_all(b"restart\n")
            .and_then(|()| commands.flush())
            .map_err(|e| process_error("restart postgres", e))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.generation() <= before {
            if Instant::now() >= deadline {
                return Err(TestkitError::new(
                    TestkitErrorKind::NotReady,
                    format!(
                        "postgres did not restart within {READY_TIMEOUT:?}\n{}",
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        self.wait_ready().await
    }

    /// How many times the supervisor has started the server (0 before the first start).
    fn generation(&self) -> u64 {
        fs::read_to_string(self.dir.path().join("generation"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The last lines the server wrote, for error messages.
    pub fn log_tail(&self) -> String {
        let path = self.log_path();
        let text = fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- last lines of {} ---\n{}",
            path.display(),
            lines[start..].join("\n")
        )
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn log_file(&self) -> Result<File, TestkitError> {
        File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| process_error("postgres log", e))
    }

    /// `program args…`, as the server's system user when running as root.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.args(args).current_dir(self.dir.path());
        command
    }

    /// Starts the supervisor, which starts the server, and waits until it accepts connections.
    async fn launch(&mut self) -> Result<(), TestkitError> {
        let socket_dir = self.socket_dir();
        fs::create_dir_all(&socket_dir).map_err(|e| process_error("socket dir", e))?;
        if self.run_as.is_some() {
            let (uid, gid) = system_user_ids(SUPERUSER)?;
            std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid))
                .map_err(|e| process_error("chown socket dir", e))?;
        }
        let dir = self.dir.path().display().to_string();
        let postgres = self.bindir.join("postgres").display().to_string();
        let data = self.data_dir().display().to_string();
        let socket = socket_dir.display().to_string();
        let port = self.port.to_string();
        let max_connections = format!("max_connections={MAX_CONNECTIONS}");
        let tls_settings: Vec<String> = match &self.tls {
            Some((cert, key)) => vec![
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", cert.display()),
                format!("ssl_key_file={}", key.display()),
            ],
            None => Vec::new(),
        };
        let mut args = vec![
            "-c",
            SUPERVISOR,
            "dcpipe-pg-supervisor",
            dir.as_str(),
            postgres.as_str(),
            "-D",
            data.as_str(),
            "-k",
            socket.as_str(),
            "-p",
            port.as_str(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            max_connections.as_str(),
        ];
        for setting in &tls_settings {
            args.extend(["-c", setting.as_str()]);
        }
        let log = self.log_file()?;
        let log_err = log
            .try_clone()
            .map_err(|e| process_error("postgres log", e))?;
        let mut child = self
            .command(Path::new("/bin/sh"), &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| process_error("start postgres", e))?;
        self.commands = child.stdin.take();
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = self.url();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(TestkitError::new(
                    TestkitErrorKind::NotReady,
                    format!("postgres exited with {status}\n{}", self.log_tail()),
                ));
            }
            let last_error = match connect(&url).await {
                Ok(client) => match client.simple_query("SELECT 1").await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(TestkitError::new(
                    TestkitErrorKind::NotReady,
                    format!(
                        "postgres not ready after {READY_TIMEOUT:?}: {last_error}\n{}",
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Last resort when the supervisor did not stop the server: signal the postmaster by the
    /// pid it wrote.
    fn kill_postmaster(&self) {
        let pid_file = self.data_dir().join("postmaster.pid");
        if let Some(pid) = fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned))
        {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // End of input makes the supervisor stop the server and remove the directory.
        self.commands = None;
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + READY_TIMEOUT;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(PROBE_INTERVAL);
            }
            self.kill_postmaster();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether the tests run as root: the owner of a directory this process just created.
fn is_root(fresh_dir: &Path) -> Result<bool, TestkitError> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(fresh_dir).map_err(|e| process_error("temp dir", e))?;
    Ok(metadata.uid() == 0)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(PROBE_CONNECT_TIMEOUT);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; its error, if any, shows up on the
        // client's next call.
        let _ = connection.await;
    });
    Ok(client)
}
