//! A demo run against a broker where a deployment lives: it works in a namespace of its own,
//! leaves the deployment's streams, messages and consumers as they were, and removes
//! everything of its own at its end, also when it fails partway.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use dcpipe_connectors::bus::{Bus, ConsumerConfig, NatsBus, NatsOptions, Outgoing, SubjectSpec};
use dcpipe_connectors::testkit::NatsServer;
use dcpipe_pipeline::subjects;
use futures::StreamExt;

/// A load test short enough for a namespace test: 2 institutions, 100 wallets, 2 s at 50/s.
const SHORT_LOADTEST: &[&str] = &[
    "--institutions",
    "2",
    "--wallets",
    "100",
    "--rate",
    "50",
    "--duration",
    "2s",
    "--warmup",
    "200ms",
    "--cooldown",
    "200ms",
    "--ceiling-duration",
    "300ms",
    "--no-progress",
];

/// Every stream of the server: its message count and its consumers, by name.
async fn snapshot(server: &NatsServer) -> BTreeMap<String, (u64, Vec<String>)> {
    let client = async_nats::connect(server.address()).await.expect("client");
    let jetstream = async_nats::jetstream::new(client);
    let names: Vec<String> = jetstream
        .stream_names()
        .map(|name| name.expect("stream name"))
        .collect()
        .await;
    let mut streams = BTreeMap::new();
    for name in names {
        let mut stream = jetstream.get_stream(&name).await.expect("stream");
        let messages = stream.info().await.expect("info").state.messages;
        let mut consumers: Vec<String> = stream
            .consumer_names()
            .map(|name| name.expect("consumer name"))
            .collect()
            .await;
        consumers.sort();
        streams.insert(name, (messages, consumers));
    }
    streams
}

/// A deployment on `server`: its subjects, a message waiting, its workers' durable groups.
async fn deploy(server: &NatsServer) {
    let deployment: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&[server.address()], &NatsOptions::default())
            .await
            .expect("connect"),
    );
    for subject in [
        subjects::txn_submit("oi01"),
        subjects::PKI_REVOCATION.to_owned(),
    ] {
        deployment
            .ensure_subject(&SubjectSpec::new(subject))
            .await
            .expect("subject");
    }
    deployment
        .publish(Outgoing::new(
            subjects::txn_submit("oi01"),
            b"waiting".to_vec(),
        ))
        .await
        .expect("published");
    for (subject, group) in [
        (subjects::txn_submit("oi01"), "payer-oi01"),
        (subjects::PKI_REVOCATION.to_owned(), "audit"),
    ] {
        deployment
            .consumer(ConsumerConfig::new(subject, group))
            .await
            .expect("group");
    }
}

/// Runs `dcpipe` with `args`, without `DCPIPE_*` settings from the environment; its stdout.
fn dcpipe(args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dcpipe"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DCPIPE_") {
            command.env_remove(name);
        }
    }
    let output = command.args(args).output().expect("dcpipe runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_next_to_a_deployment_leaves_it_untouched_and_nothing_behind() {
    let server = NatsServer::start().await.expect("nats-server");
    deploy(&server).await;
    let before = snapshot(&server).await;
    assert_eq!(before.len(), 2, "{before:?}");

    let url = server.url();
    let stdout = dcpipe(&[
        "demo",
        "--bus",
        &url,
        "--institutions",
        "2",
        "--wallets",
        "40",
        "--rate",
        "50",
        "--duration",
        "2s",
    ]);
    assert!(stdout.contains("namespace demo-"), "{stdout}");
    assert!(stdout.contains("removed the run's"), "{stdout}");

    // The deployment's streams, messages and groups as they were; nothing of the demo's.
    assert_eq!(snapshot(&server).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_next_to_a_deployment_leaves_it_untouched_and_nothing_behind() {
    let server = NatsServer::start().await.expect("nats-server");
    deploy(&server).await;
    let before = snapshot(&server).await;

    let url = server.url();
    dcpipe(&[&["loadtest", "--bus", &url][..], SHORT_LOADTEST].concat());
    assert_eq!(snapshot(&server).await, before);
}

/// A server whose only account allows two streams: a run needs more, and fails partway,
/// after it has created streams in its namespace.
async fn two_streams_only() -> NatsServer {
    NatsServer::start_with_config(
        "accounts { RUN: { jetstream: { max_mem: -1, max_file: -1, max_streams: 2, \
         max_consumers: -1 }, users: [{ user: run, password: run }] } }\n\
         no_auth_user: run\n",
    )
    .await
    .expect("nats-server")
}

/// Runs `dcpipe` with `args`, which must fail; its stdout and stderr.
fn dcpipe_failing(args: &[&str]) -> (String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dcpipe"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DCPIPE_") {
            command.env_remove(name);
        }
    }
    let output = command.args(args).output().expect("dcpipe runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// A demo that fails partway removes what it created in its namespace all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_that_fails_after_provisioning_leaves_no_stream_behind() {
    let server = two_streams_only().await;
    let url = server.url();
    let (stdout, stderr) = dcpipe_failing(&[
        "demo",
        "--bus",
        &url,
        "--institutions",
        "2",
        "--wallets",
        "40",
        "--rate",
        "50",
        "--duration",
        "2s",
    ]);
    assert!(stdout.contains("namespace demo-"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("removed the run's 2 streams or topics"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(snapshot(&server).await, BTreeMap::new());
}

/// So does a load test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loadtest_that_fails_after_provisioning_leaves_no_stream_behind() {
    let server = two_streams_only().await;
    let url = server.url();
    let (stdout, stderr) =
        dcpipe_failing(&[&["loadtest", "--bus", &url][..], SHORT_LOADTEST].concat());
    assert!(
        stderr.contains("removed the run's 2 streams or topics"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(snapshot(&server).await, BTreeMap::new());
}
