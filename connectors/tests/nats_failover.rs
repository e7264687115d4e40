//! A nats-server killed (SIGKILL) and started again under load: publishes in flight at the
//! crash are retried as soon as the client is back, nothing acknowledged is lost, nothing is
//! stored twice (the `Nats-Msg-Id` dedup window), and acks of deliveries made before the crash
//! do not wait for confirmations that cannot come. How quickly publishing resumes is printed,
//! for the record, not asserted tightly.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dcpipe_connectors::bus::{
    Bus, ConsumerConfig, NatsBus, NatsOptions, Outgoing, ReplayFrom, ReplayRequest, SubjectSpec,
};
use dcpipe_connectors::testkit::{NatsServer, fetch_until};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a test waits for what must happen.
const DEADLINE: Duration = Duration::from_secs(30);
/// Messages per publish batch.
const BATCH: u64 = 50;

fn unique_subject(name: &str) -> String {
    format!("t{}.{name}", uuid::Uuid::new_v4().simple())
}

async fn connect(server: &NatsServer) -> Arc<NatsBus> {
    Arc::new(
        NatsBus::connect(&[server.address()], &NatsOptions::default())
            .await
            .expect("connect to nats-server"),
    )
}

/// Every payload stored in `subject`, as numbers, and how many records there were.
async fn stored(bus: &dyn Bus, subject: &str) -> (BTreeSet<u64>, usize) {
    let mut replay = bus
        .replay(ReplayRequest {
            subject: subject.to_owned(),
            from: ReplayFrom::Beginning,
            until_ms: None,
        })
        .await
        .expect("replay");
    let (mut numbers, mut records) = (BTreeSet::new(), 0);
    loop {
        let batch = replay.next_batch(1000).await.expect("replay batch");
        if batch.is_empty() {
            return (numbers, records);
        }
        records += batch.len();
        for record in batch {
            let text = String::from_utf8(record.payload.to_vec()).expect("utf-8");
            numbers.insert(text.parse().expect("a number"));
        }
    }
}

/// Waits until the bus says it is connected.
async fn until_connected(bus: &NatsBus) {
    let deadline = Instant::now() + DEADLINE;
    while bus.disconnected().is_some() {
        assert!(
            Instant::now() < deadline,
            "not reconnected within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn nats_publishes_across_a_server_restart_lose_nothing_and_store_nothing_twice() {
    let mut server = NatsServer::start().await.expect("nats-server");
    let bus = connect(&server).await;
    let subject = unique_subject("restart");
    bus.ensure_subject(&SubjectSpec::new(subject.clone()))
        .await
        .expect("ensure");

    // The publisher publishes numbered batches; a batch that fails is published again, same
    // ids, as the stage runner does. It reports each batch acknowledged, with when.
    let (acked_tx, mut acked) = watch::channel(0u64);
    let (stop_tx, stop) = watch::channel(false);
    let acked_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let publisher = {
        let (bus, subject, acked_at) = (Arc::clone(&bus), subject.clone(), Arc::clone(&acked_at));
        tokio::spawn(async move {
            let mut failures = 0u32;
            let mut batch = 0u64;
            while !*stop.borrow() {
                let messages = (batch * BATCH..(batch + 1) * BATCH)
                    .map(|i| Outgoing::new(&subject, i.to_string()).with_msg_id(format!("m-{i}")))
                    .collect();
                match bus.publish_many(messages).await {
                    Ok(receipts) => {
                        assert_eq!(receipts.len() as u64, BATCH);
                        acked_at
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Instant::now());
                        batch += 1;
                        acked_tx.send_replace(batch);
                    }
                    Err(error) => {
                        failures += 1;
                        eprintln!("batch {batch} failed, published again: {error}");
                    }
                }
            }
            (batch, failures)
        })
    };
    let wait_for = |acked: &mut watch::Receiver<u64>, n: u64| {
        let mut acked = acked.clone();
        async move {
            tokio::time::timeout(DEADLINE, acked.wait_for(|b| *b >= n))
                .await
                .expect("publishing stalled")
                .expect("publisher alive");
        }
    };
    wait_for(&mut acked, 20).await;

    server.stop();
    let before = *acked.borrow();
    server.start_again().await.expect("restart");
    let back = Instant::now();
    wait_for(&mut acked, before + 20).await;
    stop_tx.send_replace(true);
    let (batches, failures) = publisher.await.expect("publisher");

    let first_after = acked_at
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|t| **t >= back)
        .map(|t| t.duration_since(back))
        .expect("a batch acknowledged after the restart");
    eprintln!(
        "first batch acknowledged {first_after:?} after the server answered again; {failures} batch failures"
    );
    assert!(first_after < Duration::from_secs(10), "{first_after:?}");

    let (numbers, records) = stored(bus.as_ref(), &subject).await;
    let expected: BTreeSet<u64> = (0..batches * BATCH).collect();
    assert_eq!(records, numbers.len(), "a message was stored twice");
    assert!(
        expected.is_subset(&numbers),
        "{} acknowledged messages lost",
        expected.difference(&numbers).count()
    );
    // Beyond the acknowledged ones, at most the batch in flight when the publisher stopped.
    assert!(numbers.len() as u64 <= (batches + 1) * BATCH);
}

#[tokio::test]
async fn nats_acks_of_deliveries_made_before_a_restart_do_not_wait_for_confirmation() {
    let mut server = NatsServer::start().await.expect("nats-server");
    let bus = connect(&server).await;
    let subject = unique_subject("acks");
    bus.ensure_subject(&SubjectSpec::new(subject.clone()))
        .await
        .expect("ensure");
    let messages = (0..100u64)
        .map(|i| Outgoing::new(&subject, i.to_string()))
        .collect();
    bus.publish_many(messages).await.expect("publish");
    let mut consumer = bus
        .consumer(ConsumerConfig::new(subject.clone(), "g"))
        .await
        .expect("consumer");
    let deliveries = fetch_until(consumer.as_mut(), 100, Instant::now() + DEADLINE).await;
    assert_eq!(deliveries.len(), 100);

    server.restart().await.expect("restart");
    until_connected(&bus).await;
    let started = Instant::now();
    let results = futures::future::join_all(deliveries.into_iter().map(|d| d.ack())).await;
    let took = started.elapsed();
    eprintln!("100 acks of deliveries made before the restart settled in {took:?}");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // Each would otherwise wait its confirmation timeout (2 s).
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// A worker publishes to streams that `dcpipe bus init` created, not itself. One of them missing
/// for a moment (a server restarting, a cluster electing the stream's leader: JetStream answers
/// "no stream found" meanwhile) is waited for, not reported as a subject never provisioned.
#[tokio::test]
async fn nats_a_stream_found_at_start_and_missing_for_a_moment_is_waited_for() {
    let server = NatsServer::start().await.expect("nats-server");
    let provisioner = connect(&server).await;
    let worker = connect(&server).await;
    let subject = unique_subject("found");
    let spec = SubjectSpec::new(subject.clone());
    provisioner.ensure_subject(&spec).await.expect("ensure");
    assert!(
        worker
            .describe_subject(&subject)
            .await
            .expect("describe")
            .is_some(),
        "the worker finds the provisioned stream"
    );

    // The stream goes away behind the worker's back, and comes back 500 ms later.
    assert!(provisioner.delete_subject(&subject).await.expect("delete"));
    let publish = {
        let (worker, subject) = (Arc::clone(&worker), subject.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let receipt = worker
                .publish(Outgoing::new(&subject, "7").with_msg_id("m-7"))
                .await;
            (receipt, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    provisioner.ensure_subject(&spec).await.expect("recreate");
    let (receipt, took) = tokio::time::timeout(DEADLINE, publish)
        .await
        .expect("the publish ended")
        .expect("publisher task");
    receipt.expect("published once the stream is back");
    eprintln!("published {took:?} after the first attempt");
    let (numbers, records) = stored(provisioner.as_ref(), &subject).await;
    assert_eq!((records, numbers), (1, BTreeSet::from([7])));
}
