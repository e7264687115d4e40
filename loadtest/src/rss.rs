//! Resident memory of this process, sampled every 100 ms while the load runs.
//!
//! Read from `/proc/self/status` (`VmRSS`), so it is what the operating system charges the
//! process, allocator caches included. On systems without `/proc` nothing is sampled and the
//! figure is reported as 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often resident memory is sampled.
pub const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// The `VmRSS` line of a `/proc/<pid>/status` text, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// This process's resident memory now, in KiB, if the system tells.
pub fn current_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(parse_vm_rss_kib)
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
pub const USER_HZ: f64 = 100.0;

/// User plus system CPU time of a `/proc/<pid>/stat` text, in seconds.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces: count fields after its closing `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of the whole line are 12th and 13th after the name.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / USER_HZ)
}

/// CPU time this process used so far, in seconds, if the system tells.
pub fn process_cpu_seconds() -> Option<f64> {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse_cpu_seconds)
}

/// The machine's one-minute load average, if the system tells: other work competing for the
/// cores shows here.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples resident memory on a thread of its own until dropped or stopped.
#[derive(Debug)]
pub struct RssSampler {
    max_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling.
    pub fn start() -> Self {
        let max_kib = Arc::new(AtomicU64::new(current_rss_kib().unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (max_kib, stop) = (Arc::clone(&max_kib), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("loadtest-rss".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(kib) = current_rss_kib() {
                            max_kib.fetch_max(kib, Ordering::Relaxed);
                        }
                        std::thread::park_timeout(RSS_SAMPLE_INTERVAL);
                    }
                })
                .ok()
        };
        RssSampler {
            max_kib,
            stop,
            thread,
        }
    }

    /// The largest sample since the start or the last [`RssSampler::reset`], in MiB.
    pub fn max_mib(&self) -> f64 {
        self.max_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }

    /// Forgets the samples so far (e.g. after the ceilings, before the load).
    pub fn reset(&self) {
        self.max_kib
            .store(current_rss_kib().unwrap_or(0), Ordering::Relaxed);
    }

    /// Stops sampling; returns the largest sample in MiB.
    pub fn stop(mut self) -> f64 {
        self.halt();
        self.max_mib()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_from_a_status_text() {
        let status = "Name:\tdcpipe\nVmPeak:\t  900 kB\nVmRSS:\t   51234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss_kib(status), Some(51_234));
    }

    #[test]
    fn reads_cpu_seconds_from_a_stat_text_with_spaces_in_the_name() {
        let stat = "4242 (dcpipe worker) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
    }

    #[test]
    fn a_status_without_vm_rss_gives_none() {
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn the_sampler_reports_a_positive_maximum_on_linux() {
        let sampler = RssSampler::start();
        let max = sampler.stop();
        if cfg!(target_os = "linux") {
            assert!(max > 0.0, "{max}");
        }
    }
}
