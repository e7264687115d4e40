//! The scenarios, written once for every bus.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use dcpipe_connectors::bus::{BusKind, ConsumerConfig, Outgoing, ReplayFrom, SubjectSpec};
use dcpipe_connectors::testkit::fetch_until;
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::ops::dead_letters::{self, REDRIVE_OF, Redrive, Selection};
use dcpipe_pipeline::ops::records::json_line;
use dcpipe_pipeline::ops::settlement::{self, SettlementReport};
use dcpipe_pipeline::ops::submit::{SubmitOptions, SubmitReport, WalletTerminal, submit};
use dcpipe_pipeline::ops::tail::{ReadUntil, TailOptions, tail};
use dcpipe_pipeline::ops::verifier;
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::terminal::{PaymentRequest, PinEntry, Touch};
use dcpipe_schemas::{Channel, DeadLetter, OutcomeStatus, PaymentId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::harness::{Backend, Running};

/// How long a test waits for the pipeline.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs every scenario as a test on the backend `$backend` builds.
#[macro_export]
macro_rules! operator_suite {
    ($backend:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn submit_waits_for_the_outcome_and_tail_finds_it() {
            $crate::scenarios::submit_waits_for_the_outcome_and_tail_finds_it($backend).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn tail_reads_and_follows_without_disturbing_consumer_groups() {
            $crate::scenarios::tail_reads_and_follows_without_disturbing_consumer_groups($backend)
                .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dead_letters_are_listed_and_redriven_once() {
            $crate::scenarios::dead_letters_are_listed_and_redriven_once($backend).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn settlement_is_read_verified() {
            $crate::scenarios::settlement_is_read_verified($backend).await;
        }
    };
}

fn pay(amount_fen: i64) -> SubmitOptions {
    SubmitOptions {
        amount_fen,
        channel: Channel::Nfc,
        payment_id: PaymentId::time_ordered(),
        submission: 1,
        created_at_ms: system_now_ms(),
        password_free_limit_fen: 100_000,
        timeout: DEADLINE,
    }
}

async fn submit_between(
    running: &Running,
    (payer, payee): ((&str, usize), (&str, usize)),
    amount_fen: i64,
) -> SubmitReport {
    let verifier = verifier(running.pki_dir.path()).expect("trust anchors");
    let payer = WalletTerminal::load(&running.wallet_dir(payer.0, payer.1)).expect("payer keys");
    let payee = WalletTerminal::load(&running.wallet_dir(payee.0, payee.1)).expect("payee keys");
    submit(
        running.bus.as_ref(),
        &verifier,
        &payer,
        &payee,
        &pay(amount_fen),
    )
    .await
    .expect("submitted")
}

/// Every JSON line `tail` prints for `options`.
async fn tail_json(running: &Running, options: &TailOptions) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    tail(
        running.bus.as_ref(),
        options,
        &CancellationToken::new(),
        |record, decoded| lines.push(json_line(record, decoded)),
    )
    .await
    .expect("tail");
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn read_all(subject: &str) -> TailOptions {
    TailOptions {
        subject: subject.to_owned(),
        from: ReplayFrom::Beginning,
        until: ReadUntil::End,
        follow: false,
        payment_id: None,
        limit: None,
    }
}

pub(crate) async fn submit_waits_for_the_outcome_and_tail_finds_it(backend: Backend) {
    let running = Running::start(&backend).await;
    let report = submit_between(&running, (("oi01", 0), ("oi02", 0)), 12_345).await;
    let (outcome, verified) = report.outcome.as_ref().expect("an outcome in time");
    assert_eq!(outcome.status, OutcomeStatus::Completed, "{outcome:?}");
    assert!(verified, "the outcome's institution signature verifies");
    assert_eq!(outcome.amount_fen, 12_345);
    let uuid = report
        .envelope
        .payment_id
        .to_uuid()
        .hyphenated()
        .to_string();
    assert_eq!(report.msg_id, format!("txn.submit.oi01/{uuid}/1"));
    assert_eq!(report.subject, "txn.submit.oi01");

    // More than any wallet holds: rejected, with its reason.
    let rejected = submit_between(&running, (("oi01", 1), ("oi02", 1)), 300_000_000).await;
    let (outcome, verified) = rejected.outcome.as_ref().expect("an outcome in time");
    assert_eq!(outcome.status, OutcomeStatus::Rejected);
    assert!(verified);
    assert!(outcome.reason_code.is_some(), "{outcome:?}");

    // The payer's institution's outcomes: one per payment, found by payment id.
    let mut options = read_all(&subjects::txn_result("oi01"));
    options.payment_id = Some(*report.envelope.payment_id.as_bytes());
    let lines = tail_json(&running, &options).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["subject"], "txn.result.oi01");
    assert_eq!(line["message"], "PaymentOutcome");
    assert_eq!(line["schema_id"], 4);
    assert_eq!(line["value"]["payment_id"], uuid.as_str());
    assert_eq!(line["value"]["status"], "COMPLETED");
    assert_eq!(line["value"]["amount_fen"], 12_345);
    assert!(line["value"]["decided_at_rfc3339"].as_str().is_some());
    options.payment_id = None;
    let all = tail_json(&running, &options).await;
    assert_eq!(
        all.len(),
        2,
        "two payments, one outcome each at the payer's institution"
    );
    running.stop().await;
}

pub(crate) async fn tail_reads_and_follows_without_disturbing_consumer_groups(backend: Backend) {
    let subject = "probe.tail";
    backend
        .bus
        .ensure_subject(&SubjectSpec::new(subject).with_partitions(backend.partitions))
        .await
        .expect("subject");
    let publish = |range: std::ops::Range<u32>| {
        let bus = &backend.bus;
        async move {
            for i in range {
                bus.publish(Outgoing::new(subject, Bytes::from(format!("probe-{i}"))))
                    .await
                    .expect("published");
            }
        }
    };
    publish(0..6).await;
    let mut group = backend
        .bus
        .consumer(ConsumerConfig::new(subject, "operators-group"))
        .await
        .expect("group member");
    let first = fetch_until(group.as_mut(), 3, Instant::now() + DEADLINE).await;
    assert_eq!(first.len(), 3);
    let mut taken: Vec<Bytes> = Vec::new();
    for delivery in first {
        taken.push(delivery.record.payload.clone());
        delivery.ack().await.expect("ack");
    }

    // Read everything, as undecodable bytes.
    let mut lines = Vec::new();
    let shown = tail(
        backend.bus.as_ref(),
        &read_all(subject),
        &CancellationToken::new(),
        |record, decoded| lines.push(json_line(record, decoded)),
    )
    .await
    .expect("tail");
    assert_eq!(shown, 6);
    let mut payloads: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            assert_eq!(v["error"]["reason_code"], "schema.bad_magic");
            String::from_utf8(hex::decode(v["bytes"].as_str().expect("hex")).expect("hex"))
                .expect("utf-8")
        })
        .collect();
    payloads.sort();
    assert_eq!(
        payloads,
        (0..6).map(|i| format!("probe-{i}")).collect::<Vec<_>>()
    );

    // Following: what is published next arrives, up to the limit.
    let follower = {
        let bus = std::sync::Arc::clone(&backend.bus);
        tokio::spawn(async move {
            let options = TailOptions {
                follow: true,
                limit: Some(8),
                ..read_all(subject)
            };
            let stop = CancellationToken::new();
            let deadline = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(DEADLINE).await;
                deadline.cancel();
            });
            tail(bus.as_ref(), &options, &stop, |_, _| {}).await
        })
    };
    publish(6..8).await;
    assert_eq!(follower.await.expect("joined").expect("tail"), 8);

    // The group goes on where it was: the three it had not taken, then the two new ones.
    let rest = fetch_until(group.as_mut(), 5, Instant::now() + DEADLINE).await;
    let mut seen: Vec<Bytes> = taken
        .into_iter()
        .chain(rest.into_iter().map(|d| d.record.payload))
        .collect();
    seen.sort();
    let all: Vec<Bytes> = (0..8).map(|i| Bytes::from(format!("probe-{i}"))).collect();
    assert_eq!(
        seen, all,
        "every message once to the group, none lost or repeated"
    );
    // A new group still starts at the beginning: the reads committed nothing as a group.
    let mut fresh = backend
        .bus
        .consumer(ConsumerConfig::new(subject, "a-new-group"))
        .await
        .expect("group member");
    assert_eq!(
        fetch_until(fresh.as_mut(), 8, Instant::now() + DEADLINE)
            .await
            .len(),
        8
    );
}

pub(crate) async fn dead_letters_are_listed_and_redriven_once(backend: Backend) {
    let running = Running::start(&backend).await;
    let bus = running.bus.as_ref();
    // Bytes that are no envelope: the payer stage dead-letters them.
    let junk = Bytes::from_static(b"\x00\x00\x00\x00\x01this is not an envelope");
    let receipt = bus
        .publish(Outgoing::new(subjects::txn_submit("oi01"), junk.clone()))
        .await
        .expect("published");
    let payer_stage = Selection {
        stages: vec!["payer".to_owned()],
        ..Selection::default()
    };
    let entries = wait_for(|| dead_letters::list(bus, &payer_stage), |e| e.len() == 1).await;
    let entry = &entries[0];
    assert_eq!(entry.stage(), "payer");
    assert!(
        entry.reason_code().starts_with("schema."),
        "{}",
        entry.reason_code()
    );
    let letter = entry.letter.as_ref().expect("a dead letter");
    assert_eq!(letter.subject, "txn.submit.oi01");
    assert_eq!(
        letter.offset,
        i64::try_from(receipt.position.offset).expect("offset")
    );
    assert_eq!(letter.original, junk.to_vec());
    let line: serde_json::Value =
        serde_json::from_str(&json_line(&entry.record, &entry.decoded)).expect("json");
    assert_eq!(line["value"]["original"], hex::encode(&junk));
    assert!(
        line["original_error"]["reason_code"].as_str().is_some(),
        "{line}"
    );

    // A payment its stage gave up on (say the ledger was down), redriven after the fix.
    let verifier = verifier(running.pki_dir.path()).expect("trust anchors");
    let payer = WalletTerminal::load(&running.wallet_dir("oi01", 0)).expect("payer");
    let payee = WalletTerminal::load(&running.wallet_dir("oi02", 0)).expect("payee");
    let now_ms = system_now_ms();
    let envelope = Touch::connect(
        payer.terminal(100_000),
        payee.terminal(100_000),
        &verifier,
        now_ms,
    )
    .expect("touch")
    .negotiate(&PaymentRequest {
        payment_id: PaymentId::time_ordered(),
        amount_fen: 777,
        channel: Channel::Remote,
        created_at_ms: now_ms,
        pin: PinEntry::WhenRequired,
    })
    .expect("envelope");
    let original = dcpipe_schemas::encode(&envelope).expect("frame");
    let letter = DeadLetter {
        original: original.clone(),
        original_size_bytes: i64::try_from(original.len()).expect("size"),
        subject: subjects::txn_submit("oi01"),
        stage: "payer".into(),
        reason_code: "stage.retries_exhausted".into(),
        detail: "ledger unavailable".into(),
        delivery_count: 5,
        partition: 0,
        offset: 999,
        received_at_ms: now_ms,
        headers: Default::default(),
    };
    bus.dead_letter(
        "payer",
        "stage.retries_exhausted",
        &letter.subject,
        Bytes::from(dcpipe_schemas::encode(&letter).expect("dead letter")),
    )
    .await
    .expect("dead-lettered");
    let exhausted = Selection {
        reasons: vec!["stage.retries_exhausted".to_owned()],
        ..payer_stage.clone()
    };
    let entries = wait_for(|| dead_letters::list(bus, &exhausted), |e| e.len() == 1).await;
    let entry = &entries[0];
    let original_decoded = entry
        .decoded
        .original
        .as_ref()
        .expect("a dead letter's original");
    assert_eq!(
        original_decoded.as_ref().expect("decodes").entry.message,
        "TransactionEnvelope"
    );
    let by_payment = Selection {
        payment_id: Some(*envelope.payment_id.as_bytes()),
        ..payer_stage.clone()
    };
    assert_eq!(
        dead_letters::list(bus, &by_payment)
            .await
            .expect("list")
            .len(),
        1
    );

    let first = dead_letters::redrive(bus, entry).await.expect("redrive");
    let Redrive::Published {
        subject, position, ..
    } = first
    else {
        panic!("published the first time: {first:?}");
    };
    assert_eq!(subject, "txn.submit.oi01");
    let second = dead_letters::redrive(bus, entry).await.expect("redrive");
    assert_eq!(
        second,
        Redrive::AlreadyRedriven {
            subject: subject.clone(),
            position
        }
    );

    // Two redrives racing past the check: the broker's duplicate window drops the second
    // where it has one (Kafka has none; the payer stage answers a copy from its ledger).
    if bus.kind() != BusKind::Kafka {
        let racing = bus
            .publish(
                Outgoing::new(subject.clone(), original.clone())
                    .with_msg_id(dead_letters::redrive_msg_id(entry))
                    .with_header(REDRIVE_OF, entry.name()),
            )
            .await
            .expect("published");
        assert!(racing.duplicate, "the same redrive id is dropped");
    }

    // One copy on the subject, one outcome for the payment.
    let copies: Vec<_> = tail_json(&running, &read_all(&subject))
        .await
        .into_iter()
        .filter(|l| l["headers"][REDRIVE_OF].as_str() == Some(entry.name().as_str()))
        .collect();
    assert_eq!(copies.len(), 1);
    let mut outcomes = read_all(&subjects::txn_result("oi01"));
    outcomes.payment_id = Some(*envelope.payment_id.as_bytes());
    let lines = wait_for(
        || async { Ok::<_, ()>(tail_json(&running, &outcomes).await) },
        |l| !l.is_empty(),
    )
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["value"]["status"], "COMPLETED");
    // The junk is refused again by nothing: it is not redriven unless selected.
    assert_eq!(
        dead_letters::list(bus, &payer_stage)
            .await
            .expect("list")
            .len(),
        2
    );
    running.stop().await;
}

pub(crate) async fn settlement_is_read_verified(backend: Backend) {
    let running = Running::start(&backend).await;
    let report = submit_between(&running, (("oi01", 0), ("oi02", 0)), 10_000).await;
    assert_eq!(
        report.outcome.as_ref().map(|(o, _)| o.status),
        Some(OutcomeStatus::Completed)
    );
    let verifier = verifier(running.pki_dir.path()).expect("trust anchors");
    let institutions = vec!["oi01".to_owned(), "oi02".to_owned()];
    let settled = |r: &SettlementReport| {
        r.all_verified()
            && r.instructions.iter().any(|c| {
                c.instruction.as_ref().is_ok_and(|i| {
                    i.positions
                        .iter()
                        .any(|p| p.institution_id == "oi01" && p.debit_fen == 10_000)
                })
            })
            && r.positions.iter().any(|p| {
                p.position
                    .as_ref()
                    .is_ok_and(|p| p.institution_id == "oi02" && p.credit_fen == 10_000)
            })
    };
    let read = wait_for(
        || {
            settlement::read(
                running.bus.as_ref(),
                &verifier,
                &institutions,
                ReplayFrom::Beginning,
                None,
            )
        },
        settled,
    )
    .await;
    let checked = read
        .instructions
        .iter()
        .find(|c| {
            c.instruction
                .as_ref()
                .is_ok_and(|i| i.positions.iter().any(|p| p.debit_fen == 10_000))
        })
        .expect("the payment's window");
    let instruction = checked.instruction.as_ref().expect("decoded");
    let net = |oi: &str| {
        instruction
            .positions
            .iter()
            .find(|p| p.institution_id == oi)
            .map(|p| p.net_fen)
    };
    assert_eq!(net("oi01"), Some(-10_000));
    assert_eq!(net("oi02"), Some(10_000));
    assert_eq!(checked.signature, Ok(()));
    assert_eq!(checked.zero_sum, Ok(()));

    // A changed instruction no longer verifies.
    let mut forged = instruction.clone();
    forged.late_amount_fen += 1;
    let mut record = checked.record.clone();
    record.payload = Bytes::from(dcpipe_schemas::encode(&forged).expect("frame"));
    let refused = settlement::check_instruction(&verifier, record);
    assert!(refused.signature.is_err());
    assert!(!refused.verified());
    running.stop().await;
}

/// Calls `read` until `done` holds of its answer, or fails at the deadline.
async fn wait_for<T, E, F, Fut>(mut read: F, done: impl Fn(&T) -> bool) -> T
where
    T: std::fmt::Debug,
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = read().await.expect("read");
        if done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "not reached in time: {value:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the binary with `args`; returns its exit code and standard output (its logs, on
/// standard error, are printed for a failing test).
fn dcpipe(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dcpipe"))
        .args(args)
        .env_remove("DCPIPE_CONFIG")
        .output()
        .expect("dcpipe runs");
    eprintln!(
        "dcpipe {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

pub(crate) async fn the_binary_submits_tails_lists_and_settles(backend: Backend) {
    let running = Running::start(&backend).await;
    let url = backend.url.clone().expect("a shared bus");
    let pki = running.pki_dir.path().display().to_string();
    let payer = running.wallet_dir("oi01", 1).display().to_string();
    let payee = running.wallet_dir("oi02", 1).display().to_string();
    let (code, out) = tokio::task::spawn_blocking(move || {
        dcpipe(&[
            "submit",
            "--bus",
            &url,
            "--pki",
            &pki,
            "--payer",
            &payer,
            "--payee",
            &payee,
            "--amount-fen",
            "2500",
            "--output",
            "json",
        ])
    })
    .await
    .expect("joined");
    assert_eq!(code, 0, "{out}");
    let line: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("a line")).expect(&out);
    assert_eq!(line["status"], "COMPLETED");
    assert_eq!(line["outcome_signature_verified"], true);
    let payment_id = line["payment_id"].as_str().expect("id").to_owned();

    // Both institutions' outcomes, through a pattern.
    let url = backend.url.clone().expect("a shared bus");
    let (code, out) = tokio::task::spawn_blocking(move || {
        dcpipe(&[
            "tail",
            "txn.result.*",
            "--bus",
            &url,
            "--payment-id",
            &payment_id,
            "--output",
            "json",
        ])
    })
    .await
    .expect("joined");
    assert_eq!(code, 0, "{out}");
    let subjects: Vec<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect(l);
            assert_eq!(v["value"]["status"], "COMPLETED");
            v["subject"].as_str().expect("subject").to_owned()
        })
        .collect();
    assert_eq!(subjects, ["txn.result.oi01", "txn.result.oi02"]);

    let url = backend.url.clone().expect("a shared bus");
    let (code, out) = tokio::task::spawn_blocking(move || {
        dcpipe(&["dead-letters", "list", "--bus", &url, "--output", "json"])
    })
    .await
    .expect("joined");
    assert_eq!((code, out.as_str()), (0, ""), "no dead letters");

    let (code, out) = dcpipe(&["schemas", "show", "PaymentOutcome"]);
    assert_eq!(code, 0, "{out}");
    let schema: serde_json::Value = serde_json::from_str(&out).expect("Avro JSON");
    assert_eq!(schema["name"], "PaymentOutcome");
    running.stop().await;
}

/// How long the tail follower is watched on JetStream.
const FOLLOWING: Duration = Duration::from_secs(3);

/// `tail --follow` held for a while keeps at most one consumer on the stream (not one per look),
/// and sees what is published while it follows.
pub(crate) async fn a_tail_follower_holds_one_consumer_and_sees_new_records(backend: Backend) {
    let subject = "probe.follow";
    let bus = std::sync::Arc::clone(&backend.bus);
    bus.ensure_subject(&SubjectSpec::new(subject))
        .await
        .expect("subject");
    bus.publish(Outgoing::new(subject, Bytes::from("probe-0")))
        .await
        .expect("published");
    let (sender, mut shown) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let follower = {
        let (bus, stop) = (std::sync::Arc::clone(&bus), stop.clone());
        tokio::spawn(async move {
            let options = TailOptions {
                follow: true,
                ..read_all(subject)
            };
            tail(bus.as_ref(), &options, &stop, |record, _| {
                let _ = sender.send(record.payload.clone());
            })
            .await
        })
    };
    let first = tokio::time::timeout(DEADLINE, shown.recv())
        .await
        .expect("the stored record in time")
        .expect("shown");
    assert_eq!(first, Bytes::from("probe-0"));

    let url = backend.url.as_deref().expect("NATS URL");
    let client = async_nats::connect(url).await.expect("client");
    let jetstream = async_nats::jetstream::new(client);
    let consumers = || async {
        let mut total = 0;
        let mut names = jetstream.stream_names();
        while let Some(name) = futures::StreamExt::next(&mut names).await {
            let name = name.expect("stream name");
            let mut stream = jetstream.get_stream(&name).await.expect("stream");
            total += stream.info().await.expect("info").state.consumer_count;
        }
        total
    };
    let started = Instant::now();
    let mut consumers_max = 0;
    let mut sampling = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < FOLLOWING {
        sampling.tick().await;
        consumers_max = consumers_max.max(consumers().await);
    }
    assert_eq!(consumers_max, 1, "consumers on the stream while following");

    for i in 1..4 {
        bus.publish(Outgoing::new(subject, Bytes::from(format!("probe-{i}"))))
            .await
            .expect("published");
    }
    for i in 1..4 {
        let next = tokio::time::timeout(DEADLINE, shown.recv())
            .await
            .expect("a new record in time")
            .expect("shown");
        assert_eq!(next, Bytes::from(format!("probe-{i}")));
    }
    assert!(consumers().await <= 1);
    stop.cancel();
    assert_eq!(follower.await.expect("joined").expect("tail"), 4);
}

/// `dcpipe audit` on a live record: exit 0 when it reconciles, 1 with the discrepancy in its
/// JSON report, 2 when it cannot run.
pub(crate) async fn the_binary_audits_the_record_and_exits_by_what_it_found(backend: Backend) {
    let running = Running::start(&backend).await;
    let report = submit_between(&running, (("oi01", 0), ("oi02", 0)), 10_000).await;
    assert_eq!(
        report.outcome.as_ref().map(|(o, _)| o.status),
        Some(OutcomeStatus::Completed)
    );
    // Its window settled, so that the whole payment is in the record.
    let verifier = verifier(running.pki_dir.path()).expect("trust anchors");
    let institutions = vec!["oi01".to_owned(), "oi02".to_owned()];
    wait_for(
        || {
            settlement::read(
                running.bus.as_ref(),
                &verifier,
                &institutions,
                ReplayFrom::Beginning,
                None,
            )
        },
        |r: &SettlementReport| {
            r.instructions.iter().any(|c| {
                c.instruction
                    .as_ref()
                    .is_ok_and(|i| i.positions.iter().any(|p| p.debit_fen == 10_000))
            })
        },
    )
    .await;
    let url = backend.url.clone().expect("a shared bus");
    let pki = running.pki_dir.path().display().to_string();
    let report_file = running.pki_dir.path().join("audit.json");
    let audit = move |extra: &[&str]| {
        let (url, pki, report) = (url.clone(), pki.clone(), report_file.clone());
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let report_path = report.display().to_string();
                let mut args = vec![
                    "audit",
                    "--bus",
                    &url,
                    "--pki",
                    &pki,
                    "--report",
                    &report_path,
                    "--edge",
                    "0s",
                ];
                args.extend(extra.iter().map(String::as_str));
                let (code, out) = dcpipe(&args);
                let json: serde_json::Value = std::fs::read_to_string(&report)
                    .ok()
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .unwrap_or_default();
                (code, out, json)
            })
            .await
            .expect("joined")
        }
    };

    let (code, out, json) = audit(&[]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(json["counts"]["payments_judged"], 1, "{out}");
    assert_eq!(json["discrepancies"].as_array().map(Vec::len), Some(0));

    // Bytes on a subject no stage reads, so none dead-letters them.
    running
        .bus
        .publish(Outgoing::new(
            subjects::SETTLEMENT_INSTRUCTION,
            Bytes::from_static(b"\x00\x00\x00\x00\x06not an instruction"),
        ))
        .await
        .expect("published");
    let (code, out, json) = audit(&[]).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        json["discrepancies_by_code"]["audit.undecodable_not_dead_lettered"], 1,
        "{out}"
    );
    assert_eq!(
        json["discrepancies"][0]["subject"],
        "settlement.instruction"
    );

    let (code, out, _) = audit(&["--from", "2099-01-01T00:00:00Z", "--require-messages"]).await;
    assert_eq!(code, 2, "an empty range with --require-messages: {out}");
    running.stop().await;

    let pki = std::env::temp_dir().display().to_string();
    let (code, _) = tokio::task::spawn_blocking(move || {
        dcpipe(&[
            "audit",
            "--bus",
            "nats://127.0.0.1:1",
            "--pki",
            &pki,
            "--report",
            "/dev/null",
        ])
    })
    .await
    .expect("joined");
    assert_eq!(code, 2, "no trust anchors, no bus: it cannot run");
}

/// A demo run kept on the broker (`--keep`) with its trust anchors written out (`--trust-out`)
/// and its ledgers in a directory is audited after it ended, by the command it prints.
pub(crate) async fn a_kept_demo_is_audited_afterwards_by_the_command_it_prints(backend: Backend) {
    let url = backend.url.clone().expect("a shared bus");
    let dir = tempfile::tempdir().expect("tempdir");
    let trust = dir.path().join("trust").display().to_string();
    let ledgers = format!("sqlite://{}", dir.path().join("ledgers").display());
    let partitions = backend.partitions.to_string();
    let (code, out) = tokio::task::spawn_blocking(move || {
        dcpipe(&[
            "demo",
            "--bus",
            &url,
            "--flows",
            "payments",
            "--institutions",
            "2",
            "--wallets",
            "40",
            "--rate",
            "50",
            "--duration",
            "2s",
            "--partitions",
            &partitions,
            "--keep",
            "--trust-out",
            &trust,
            "--ledger",
            &ledgers,
        ])
    })
    .await
    .expect("joined");
    assert_eq!(code, 0, "{out}");
    // Certificates only: no private key left the demo.
    let trust_files: Vec<String> = std::fs::read_dir(dir.path().join("trust/institutions"))
        .expect("institution CAs written")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(trust_files.len(), 2, "{trust_files:?}");
    assert!(dir.path().join("trust/root.crt.pem").is_file());

    let printed = out
        .lines()
        .find_map(|line| line.trim().strip_prefix("audit it with: dcpipe "))
        .unwrap_or_else(|| panic!("no audit command printed: {out}"));
    let report = dir.path().join("audit.json");
    let report_path = report.display().to_string();
    let mut args: Vec<String> = printed.split_whitespace().map(str::to_owned).collect();
    let at = args
        .iter()
        .position(|a| a == "audit.json")
        .expect("the report's file");
    args[at] = report_path;
    assert!(args.iter().any(|a| a == "--namespace"), "{printed}");
    assert!(args.iter().any(|a| a == "--ledger"), "{printed}");
    let (code, audited) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dcpipe(&args)
    })
    .await
    .expect("joined");
    assert_eq!(code, 0, "{audited}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(json["discrepancies"].as_array().map(Vec::len), Some(0));
    // Every payment the demo submitted judged whole and checked against the ledgers: one
    // fewer than its submissions, for the injected conflict is a second submission of a
    // payment id (however many the terminals got through in 2 s on a loaded machine).
    let submitted: u64 = out
        .lines()
        .find_map(|line| line.strip_prefix("submitted"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no submitted count: {out}"));
    assert!(
        submitted > 7,
        "terminal payments besides the injected cases: {out}"
    );
    let judged = json["counts"]["payments_judged"].as_u64().expect("judged");
    assert_eq!(judged + 1, submitted, "{out}\n{audited}");
    assert_eq!(json["counts"]["payments_partial"], 0, "{audited}");
    assert_eq!(
        json["counts"]["ledger_payments_checked"].as_u64(),
        Some(judged),
        "{audited}"
    );

    // Without the namespace the deployment's subjects are read: there is nothing of the run.
    let (code, _) = tokio::task::spawn_blocking({
        let url = backend.url.clone().expect("a shared bus");
        let trust = dir.path().join("trust").display().to_string();
        let report = dir.path().join("other.json").display().to_string();
        move || {
            dcpipe(&[
                "audit",
                "--bus",
                &url,
                "--pki",
                &trust,
                "--report",
                &report,
                "--require-messages",
            ])
        }
    })
    .await
    .expect("joined");
    assert_eq!(code, 2, "the deployment's subjects hold nothing");
}
