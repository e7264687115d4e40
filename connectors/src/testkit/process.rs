//! What every test server shares: finding its binary, picking a free port, running the child
//! process with its output in a log file, and waiting until it answers.

use std::fs::{self, File};
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TestkitError, TestkitErrorKind};

/// How long a server may take to answer after it was started (a JetStream restart recovers its
/// streams first).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of the server log quoted in an error.
const LOG_TAIL_LINES: usize = 30;

/// The cache directory `scripts/setup.sh` installs into.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DCPIPE_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("dcpipe"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("dcpipe"))
}

/// The binary named by `env_var`, else `<cache>/<relative>`; an error telling to run the setup
/// script when it is not there.
pub(crate) fn find_binary(env_var: &str, relative: &str) -> Result<PathBuf, TestkitError> {
    let candidate = match std::env::var_os(env_var) {
        Some(path) => PathBuf::from(path),
        None => cache_dir()
            .map(|dir| dir.join(relative))
            .unwrap_or_else(|| PathBuf::from(relative)),
    };
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(TestkitError::new(
            TestkitErrorKind::BinaryMissing,
            format!(
                "{} not found: run scripts/setup.sh (or set {env_var} to the binary)",
                candidate.display()
            ),
        ))
    }
}

/// Fresh start-ups of one server, each on a new port, before giving up.
pub(crate) const START_ATTEMPTS: u32 = 4;

/// A TCP port on 127.0.0.1 that was free a moment ago: another process may take it before the
/// server binds it, so a fresh start-up that fails with [`TestkitErrorKind::Exited`] tries again
/// on a new one (up to [`START_ATTEMPTS`]), and readiness checks that the server answering is
/// the one started.
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| TestkitError::new(TestkitErrorKind::Process, format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| TestkitError::new(TestkitErrorKind::Process, format!("no free port: {e}")))
}

/// A running server process whose output goes to a log file; killed on drop.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Option<Child>,
    log_path: PathBuf,
    name: &'static str,
}

impl ServerProcess {
    /// Starts `binary args…` in `work_dir`, appending its output to `log_path`.
    pub(crate) fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[String],
        work_dir: &Path,
        log_path: &Path,
    ) -> Result<Self, TestkitError> {
        let process_error = |e: std::io::Error| {
            TestkitError::new(TestkitErrorKind::Process, format!("{name}: {e}"))
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(process_error)?;
        let log_err = log.try_clone().map_err(process_error)?;
        let child = Command::new(binary)
            .args(args)
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(process_error)?;
        Ok(ServerProcess {
            child: Some(child),
            log_path: log_path.to_path_buf(),
            name,
        })
    }

    /// Waits until `probe` succeeds, failing early when the process exits and at the deadline.
    pub(crate) async fn wait_ready<F, Fut>(&mut self, mut probe: F) -> Result<(), TestkitError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_running()?;
            let last_error = match probe().await {
                // What answered may be another server on the same port, while this one failed
                // to bind: it must still be running.
                Ok(()) => return self.check_running(),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(TestkitError::new(
                    TestkitErrorKind::NotReady,
                    format!(
                        "{} not ready after {READY_TIMEOUT:?}: {last_error}\n{}",
                        self.name,
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// An [`TestkitErrorKind::Exited`] error when the process has exited.
    fn check_running(&mut self) -> Result<(), TestkitError> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(TestkitError::new(
                TestkitErrorKind::Exited,
                format!("{} exited with {status}\n{}", self.name, self.log_tail()),
            ));
        }
        Ok(())
    }

    /// Kills the process (like a crash: the server gets no chance to flush) and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The process may already be gone; either way nothing is left to do.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines the server wrote, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path.display(),
            lines[start..].join("\n")
        )
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
