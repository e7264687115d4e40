//! Revocation updates on `pki.revocation`, followed on every bus against real servers: an
//! authentic update is applied; one that fails its checks is dead-lettered with its original
//! bytes and its `revocation.*` (or `schema.*`) code, once however many processes refuse it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dcpipe_connectors::bus::{
    Bus, EmbeddedBus, EmbeddedConfig, KafkaBus, KafkaOptions, NatsBus, NatsOptions, Outgoing,
    ReplayFrom, ReplayRequest, SubjectSpec, dead_letter_subject,
};
use dcpipe_connectors::testkit::{NatsServer, TansuServer};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::pki::{
    AlgorithmChoice, ChainVerifier, DemoPkiOptions, PkiDirectory, RevocationSet,
};
use dcpipe_pipeline::revocation::{DEAD_LETTER_STAGE, RevocationFollower, revocation_update};
use dcpipe_pipeline::subjects;
use dcpipe_schemas::DeadLetter;

fn generate_pki() -> PkiDirectory {
    PkiDirectory::generate(&DemoPkiOptions::new(
        2,
        4,
        AlgorithmChoice::P256,
        system_now_ms(),
    ))
    .expect("pki")
}

/// A follower of this process, and the revocation set it feeds.
fn follower(pki: &PkiDirectory) -> (RevocationFollower, Arc<RevocationSet>) {
    let revocations = Arc::new(RevocationSet::new());
    let verifier = Arc::new(ChainVerifier::new(
        Arc::clone(pki.trust_store()),
        Arc::clone(&revocations),
    ));
    (
        RevocationFollower::new(verifier, Arc::clone(&revocations)),
        revocations,
    )
}

/// Reads until `follower` has read `updates` updates; the serials it added.
async fn read_until(follower: &mut RevocationFollower, bus: &dyn Bus, updates: usize) -> usize {
    let mut follow = bus.follow(subjects::PKI_REVOCATION).await.expect("follow");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut added = 0;
    while follower.updates_read() < updates {
        assert!(
            Instant::now() < deadline,
            "{} updates read",
            follower.updates_read()
        );
        added += follower
            .read(follow.as_mut(), bus, Duration::from_millis(200))
            .await
            .expect("read");
    }
    // Nothing more comes.
    added += follower
        .read(follow.as_mut(), bus, Duration::from_millis(200))
        .await
        .expect("read");
    assert_eq!(follower.updates_read(), updates);
    added
}

async fn dead_letters(bus: &dyn Bus) -> Vec<DeadLetter> {
    let mut replay = bus
        .replay(ReplayRequest {
            subject: dead_letter_subject(DEAD_LETTER_STAGE),
            from: ReplayFrom::Beginning,
            until_ms: None,
        })
        .await
        .expect("replay");
    let mut letters = Vec::new();
    loop {
        let records = replay.next_batch(64).await.expect("records");
        if records.is_empty() {
            return letters;
        }
        letters.extend(
            records
                .iter()
                .map(|r| dcpipe_schemas::decode::<DeadLetter>(&r.payload).expect("dead letter")),
        );
    }
}

/// Three refused updates and an authentic one: the authentic one is applied, each refused one
/// dead-lettered under its code with its bytes, and a second process refusing them again adds
/// no dead letter where the bus drops duplicates by message id (`dedups`; on Kafka it adds
/// the same dead letters, with the same message ids, for readers to drop).
async fn refused_updates_are_dead_lettered_once(bus: Arc<dyn Bus>, dedups: bool) {
    let pki = generate_pki();
    let stranger = generate_pki(); // a PKI of another root, not in the trust store
    bus.ensure_subject(&SubjectSpec::new(subjects::PKI_REVOCATION))
        .await
        .expect("subject");
    let now_ms = system_now_ms();
    let (id, keys) = pki.institutions().next().expect("institution");
    let wallet = pki
        .wallets()
        .find(|(_, w)| w.institution == id)
        .map(|(_, w)| w)
        .expect("wallet");
    let authentic = revocation_update(
        &keys.ca,
        &[wallet.terminal.certificate()],
        "keyCompromise",
        1,
        now_ms,
    )
    .expect("update");
    let (_, stranger_keys) = stranger.institutions().next().expect("institution");
    let unknown_issuer = revocation_update(
        &stranger_keys.ca,
        &[wallet.terminal.certificate()],
        "keyCompromise",
        1,
        now_ms,
    )
    .expect("update");
    let mut forged = authentic.clone();
    forged.sequence = 2; // signed as 1
    let refused: Vec<(Vec<u8>, &str)> = vec![
        (b"not an update".to_vec(), "schema."),
        (
            dcpipe_schemas::encode(&unknown_issuer).expect("encode"),
            "revocation.unknown_issuer",
        ),
        (
            dcpipe_schemas::encode(&forged).expect("encode"),
            "revocation.signature_invalid",
        ),
    ];
    for (bytes, _) in &refused {
        bus.publish(Outgoing::new(subjects::PKI_REVOCATION, bytes.clone()))
            .await
            .expect("published");
    }
    bus.publish(Outgoing::new(
        subjects::PKI_REVOCATION,
        dcpipe_schemas::encode(&authentic).expect("encode"),
    ))
    .await
    .expect("published");

    let updates = refused.len() + 1;
    let (mut first, revocations) = follower(&pki);
    assert_eq!(read_until(&mut first, bus.as_ref(), updates).await, 1);
    assert_eq!(revocations.len(), 1);
    let letters = dead_letters(bus.as_ref()).await;
    assert_eq!(letters.len(), refused.len(), "{letters:?}");
    for (bytes, code) in &refused {
        let letter = letters
            .iter()
            .find(|l| &l.original == bytes)
            .unwrap_or_else(|| panic!("no dead letter for the {code} update"));
        assert!(letter.reason_code.starts_with(code), "{letter:?}");
        assert_eq!(letter.stage, DEAD_LETTER_STAGE);
        assert_eq!(letter.subject, subjects::PKI_REVOCATION);
    }
    // Read again by the same process (it followed again): nothing new, nothing refused again.
    assert_eq!(read_until(&mut first, bus.as_ref(), updates).await, 0);
    assert_eq!(dead_letters(bus.as_ref()).await.len(), refused.len());

    // Another process reads the same updates: the same dead letters, not new ones.
    let (mut second, revocations) = follower(&pki);
    assert_eq!(read_until(&mut second, bus.as_ref(), updates).await, 1);
    assert_eq!(revocations.len(), 1);
    let letters = dead_letters(bus.as_ref()).await;
    let distinct: std::collections::BTreeSet<(i32, i64)> =
        letters.iter().map(|l| (l.partition, l.offset)).collect();
    assert_eq!(distinct.len(), refused.len());
    let expected = if dedups { 1 } else { 2 } * refused.len();
    assert_eq!(letters.len(), expected);
}

#[tokio::test]
async fn embedded_refused_updates_are_dead_lettered_once() {
    refused_updates_are_dead_lettered_once(
        Arc::new(EmbeddedBus::new(EmbeddedConfig::default())),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_refused_updates_are_dead_lettered_once() {
    let server = NatsServer::start().await.expect("nats-server");
    let bus = NatsBus::connect(&[server.address()], &NatsOptions::default())
        .await
        .expect("connect");
    refused_updates_are_dead_lettered_once(Arc::new(bus), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_refused_updates_are_dead_lettered_once() {
    let server = TansuServer::start().await.expect("tansu");
    let bus = KafkaBus::connect(&[server.address()], &KafkaOptions::default())
        .await
        .expect("connect");
    refused_updates_are_dead_lettered_once(Arc::new(bus), false).await;
}
