//! Ctrl-C on a running demo: the traffic stops, the summary is printed marked as interrupted,
//! the temporary ledgers are removed; a second Ctrl-C exits at once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the demo may take to stop after the signal.
const STOP_DEADLINE: Duration = Duration::from_secs(45);

/// A demo on the embedded bus meant to run far longer than the test, with its temporary
/// files in `tmp`; the lines of its stderr come through the receiver.
fn start_demo(tmp: &std::path::Path) -> (Child, mpsc::Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dcpipe"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DCPIPE_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args([
            "demo",
            "--institutions",
            "2",
            "--wallets",
            "40",
            "--rate",
            "50",
            "--duration",
            "10m",
        ])
        .env("TMPDIR", tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Waits for a stderr line containing `text`.
fn wait_for_line(lines: &mpsc::Receiver<String>, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return,
            Ok(_) => {}
            Err(e) => panic!("no line with {text:?}: {e}"),
        }
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits for the child to exit; its exit code and stdout.
fn wait_exit(mut child: Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + STOP_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stdout = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout)
                .expect("stdout");
            return (status.code(), stdout);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the demo did not stop within {STOP_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn leftovers(tmp: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .expect("tmp")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn sigint_stops_the_demo_with_an_interrupted_summary() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (child, lines) = start_demo(tmp.path());
    // Paying: a progress line with submissions.
    wait_for_line(&lines, "submitted");
    signal(&child, "-INT");
    let (code, stdout) = wait_exit(child);
    assert_eq!(code, Some(130), "{stdout}");
    assert!(stdout.contains("INTERRUPTED after"), "{stdout}");
    let submitted: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("submitted"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a submitted line");
    assert!(submitted > 0, "{stdout}");
    assert!(stdout.contains("every submission got exactly one outcome"));
    assert!(stdout.contains("interrupted: partial run"));
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}

#[test]
fn second_sigint_exits_at_once() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (child, lines) = start_demo(tmp.path());
    wait_for_line(&lines, "submitted");
    signal(&child, "-INT");
    wait_for_line(&lines, "interrupted: stopping");
    signal(&child, "-INT");
    let (code, _) = wait_exit(child);
    assert_eq!(code, Some(130));
}

/// `GET /metrics` of the process on `addr`, if it answers.
fn scrape(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// The sum of the samples of `family` in an exposition.
fn sum_of(exposition: &str, family: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn sigint_stops_the_load_test_with_a_partial_report() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let report = tmp.path().join("reports").join("partial.json");
    let metrics_addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").to_string()
    };
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_dcpipe"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DCPIPE_") {
            command.env_remove(name);
        }
    }
    let child = command
        .args([
            "loadtest",
            "--institutions",
            "2",
            "--wallets",
            "200",
            "--rate",
            "200",
            "--duration",
            "10m",
            "--ceiling-duration",
            "300ms",
            "--no-progress",
            "--metrics-addr",
            &metrics_addr,
            "--report",
            &report.display().to_string(),
        ])
        .env("TMPDIR", &work)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("loadtest starts");
    // Under load: the stages have settled many more messages than the readiness probes.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let settled = scrape(&metrics_addr)
            .map(|text| sum_of(&text, "dcpipe_stage_messages_total"))
            .unwrap_or(0.0);
        if settled > 200.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no load after 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&child, "-INT");
    let (code, stdout) = wait_exit(child);
    assert_eq!(code, Some(130), "{stdout}");
    assert!(stdout.contains("report written to"), "{stdout}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(written["valid"], false);
    let reasons = written["invalid_reasons"].as_array().expect("reasons");
    assert!(
        reasons[0]
            .as_str()
            .is_some_and(|r| r.starts_with("interrupted after")),
        "{reasons:?}"
    );
    assert!(
        written["submitted"].as_u64().is_some_and(|n| n > 0),
        "{written}"
    );
    assert_eq!(leftovers(&work), Vec::<String>::new());
}
