//! Thirty processes' revocation followers on one nats-server: each holds at most one consumer
//! on the PKI stream however long it follows, and a revocation published then reaches all of
//! them within a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dcpipe_connectors::bus::{Bus, NatsBus, NatsOptions, Outgoing, SubjectSpec};
use dcpipe_connectors::testkit::NatsServer;
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::pki::{
    AlgorithmChoice, ChainVerifier, DemoPkiOptions, PkiDirectory, RevocationSet,
};
use dcpipe_pipeline::revocation::{RevocationFollower, revocation_update};
use dcpipe_pipeline::subjects;
use tokio_util::sync::CancellationToken;

/// Follower processes (one connection each).
const FOLLOWERS: usize = 30;
/// How long the followers follow before the revocation is published.
const FOLLOWING: Duration = Duration::from_secs(10);
/// How soon a revocation must reach every process.
const REACH_MAX: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_followers_hold_one_consumer_each_and_all_see_a_revocation_within_a_second() {
    let server = NatsServer::start().await.expect("nats-server");
    let connect = || async {
        Arc::new(
            NatsBus::connect(&[server.address()], &NatsOptions::default())
                .await
                .expect("connect"),
        ) as Arc<dyn Bus>
    };
    let pki = PkiDirectory::generate(&DemoPkiOptions::new(
        2,
        4,
        AlgorithmChoice::P256,
        system_now_ms(),
    ))
    .expect("pki");
    let (institution, keys) = pki.institutions().next().expect("institution");
    let mut wallets = pki.wallets().filter(|(_, w)| w.institution == institution);
    let (_, first_wallet) = wallets.next().expect("wallet");
    let (_, second_wallet) = wallets.next().expect("wallet");

    // The subject already holds a revocation: the case that made a consumer per look.
    let publisher = connect().await;
    publisher
        .ensure_subject(&SubjectSpec::new(subjects::PKI_REVOCATION))
        .await
        .expect("subject");
    let revoke = |wallet: &dcpipe_pipeline::pki::WalletKeys, sequence| {
        let update = revocation_update(
            &keys.ca,
            &[wallet.terminal.certificate()],
            "keyCompromise",
            sequence,
            system_now_ms(),
        )
        .expect("update");
        Outgoing::new(
            subjects::PKI_REVOCATION,
            dcpipe_schemas::encode(&update).expect("encode"),
        )
    };
    publisher
        .publish(revoke(first_wallet, 1))
        .await
        .expect("published");

    let shutdown = CancellationToken::new();
    let mut sets = Vec::new();
    for _ in 0..FOLLOWERS {
        let revocations = Arc::new(RevocationSet::new());
        let verifier = Arc::new(ChainVerifier::new(
            Arc::clone(pki.trust_store()),
            Arc::clone(&revocations),
        ));
        let follower = RevocationFollower::new(verifier, Arc::clone(&revocations));
        tokio::spawn(follower.run(connect().await, shutdown.clone()));
        sets.push(revocations);
    }
    let issuer = keys.ca.certificate().fingerprint();
    let revoked = |wallet: &dcpipe_pipeline::pki::WalletKeys| {
        let serial = wallet.terminal.certificate().serial().to_vec();
        sets.iter()
            .filter(|set| set.is_revoked(issuer, &serial))
            .count()
    };

    // Everyone reads what was there; then the consumers on the stream are counted while they
    // follow.
    let client = async_nats::connect(server.address()).await.expect("client");
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream("PKI").await.expect("PKI stream");
    let started = Instant::now();
    let mut consumers_max = 0;
    let mut sampling = tokio::time::interval(Duration::from_millis(250));
    while started.elapsed() < FOLLOWING || revoked(first_wallet) < FOLLOWERS {
        assert!(
            started.elapsed() < FOLLOWING * 3,
            "{} of {FOLLOWERS} read the first revocation",
            revoked(first_wallet)
        );
        sampling.tick().await;
        let consumers = stream
            .info()
            .await
            .expect("stream info")
            .state
            .consumer_count;
        consumers_max = consumers_max.max(consumers);
        assert!(
            consumers <= FOLLOWERS,
            "{consumers} consumers on the PKI stream for {FOLLOWERS} followers"
        );
    }
    assert!(consumers_max >= 1, "nobody followed through a consumer");

    let published_at = Instant::now();
    publisher
        .publish(revoke(second_wallet, 2))
        .await
        .expect("published");
    loop {
        let reached = revoked(second_wallet);
        if reached == FOLLOWERS {
            break;
        }
        assert!(
            published_at.elapsed() < REACH_MAX,
            "{reached} of {FOLLOWERS} followers revoked within {REACH_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "{FOLLOWERS} followers: at most {consumers_max} consumers; revocation reached all in {:?}",
        published_at.elapsed()
    );
    shutdown.cancel();
}
