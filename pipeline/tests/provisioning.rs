//! Provisioning the bus (what `dcpipe bus init` runs) and the check every worker makes before it
//! starts, proven with the same scenarios on the embedded bus, NATS and Kafka (tansu).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dcpipe_connectors::bus::{
    Bus, EmbeddedBus, EmbeddedConfig, KafkaBus, KafkaOptions, NatsBus, NatsOptions,
};
use dcpipe_pipeline::provision::{
    CheckError, SubjectState, check_subjects, missing_subjects, provision_subjects,
};
use dcpipe_pipeline::registry;

fn institutions() -> Vec<String> {
    vec!["oi01".to_owned(), "oi02".to_owned()]
}

fn all_subjects() -> BTreeSet<String> {
    registry::network_subjects(&institutions())
}

fn states(reports: &[dcpipe_pipeline::provision::SubjectReport]) -> Vec<&'static str> {
    reports.iter().map(|r| r.state.as_str()).collect()
}

/// A dry run creates nothing; a run creates every subject; a second run finds every subject as
/// configured and creates nothing.
async fn init_is_idempotent(bus: &dyn Bus, partitions: u32) {
    let subjects = all_subjects();
    assert!(subjects.contains("txn.submit.oi02"), "{subjects:?}");
    assert!(subjects.contains("deadletter.payer"), "{subjects:?}");
    assert!(subjects.contains("pki.revocation"), "{subjects:?}");

    let dry = provision_subjects(bus, subjects.clone(), partitions, true)
        .await
        .expect("dry run");
    assert_eq!(dry.len(), subjects.len());
    assert!(
        dry.iter().all(|r| r.state == SubjectState::WouldCreate),
        "{:?}",
        states(&dry)
    );
    assert_eq!(
        missing_subjects(bus, subjects.clone())
            .await
            .expect("check"),
        subjects.iter().cloned().collect::<Vec<_>>(),
        "a dry run creates nothing"
    );

    let first = provision_subjects(bus, subjects.clone(), partitions, false)
        .await
        .expect("init");
    assert_eq!(first.len(), subjects.len());
    // On JetStream the subjects of a family share one stream: the first creates it, the others
    // find it.
    assert!(
        first
            .iter()
            .all(|r| matches!(r.state, SubjectState::Created | SubjectState::Matches)),
        "{first:?}"
    );
    assert!(first.iter().any(|r| r.state == SubjectState::Created));
    assert_eq!(
        missing_subjects(bus, subjects.clone())
            .await
            .expect("check"),
        Vec::<String>::new()
    );

    let second = provision_subjects(bus, subjects.clone(), partitions, false)
        .await
        .expect("init again");
    assert_eq!(second.len(), subjects.len());
    assert!(
        second.iter().all(|r| r.state == SubjectState::Matches),
        "{second:?}"
    );
    for (a, b) in first.iter().zip(&second) {
        assert_eq!((&a.subject, &a.holder), (&b.subject, &b.holder));
    }
}

/// Subjects created under one configuration and checked under another are reported as
/// differing, each with `expected` among its differences, and left as they are.
async fn init_reports_drift(
    created_by: &dyn Bus,
    created_partitions: u32,
    checked_by: &dyn Bus,
    checked_partitions: u32,
    expected: &str,
) {
    let subjects = all_subjects();
    provision_subjects(created_by, subjects.clone(), created_partitions, false)
        .await
        .expect("init");
    for dry_run in [true, false] {
        let reports = provision_subjects(checked_by, subjects.clone(), checked_partitions, dry_run)
            .await
            .expect("init under another configuration");
        assert_eq!(reports.len(), subjects.len());
        for report in &reports {
            match &report.state {
                SubjectState::Differs(drift) => {
                    assert!(drift.iter().any(|d| d == expected), "{report}")
                }
                other => panic!("{}: {other:?}, expected a drift", report.subject),
            }
        }
    }
    let unchanged = provision_subjects(created_by, subjects, created_partitions, true)
        .await
        .expect("dry run");
    assert!(
        unchanged.iter().all(|r| r.state == SubjectState::Matches),
        "a drift report changes nothing: {unchanged:?}"
    );
}

/// A worker's check names every subject it needs that is missing, and the command to run;
/// it passes once the bus is provisioned.
async fn worker_check_names_the_command(bus: &dyn Bus, partitions: u32) {
    let payer = registry::stage("payer").expect("payer stage");
    let needs = payer.needs("oi01", &institutions());
    assert!(needs.contains("txn.submit.oi01"), "{needs:?}");
    assert!(needs.contains("deadletter.payer"), "{needs:?}");
    assert!(needs.contains("pki.revocation"), "{needs:?}");
    match check_subjects(bus, needs.clone()).await {
        Err(CheckError::Missing(missing)) => {
            assert_eq!(missing, needs.iter().cloned().collect::<Vec<_>>());
            let message = CheckError::Missing(missing).to_string();
            assert!(message.contains("dcpipe bus init"), "{message}");
        }
        other => panic!("an unprovisioned bus must be refused: {other:?}"),
    }
    provision_subjects(bus, all_subjects(), partitions, false)
        .await
        .expect("init");
    check_subjects(bus, needs).await.expect("provisioned");
}

mod embedded {
    use super::*;

    fn bus() -> Arc<dyn Bus> {
        Arc::new(EmbeddedBus::new(EmbeddedConfig::default()))
    }

    #[tokio::test]
    async fn init_is_idempotent() {
        super::init_is_idempotent(bus().as_ref(), 1).await;
    }

    #[tokio::test]
    async fn worker_check_names_the_command() {
        super::worker_check_names_the_command(bus().as_ref(), 1).await;
    }
}

mod nats {
    use super::*;
    use dcpipe_connectors::testkit::NatsServer;

    async fn bus(server: &NatsServer, options: &NatsOptions) -> Arc<dyn Bus> {
        Arc::new(
            NatsBus::connect(&[server.address()], options)
                .await
                .expect("connect"),
        )
    }

    async fn server() -> NatsServer {
        NatsServer::start().await.expect("nats-server")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_is_idempotent() {
        let server = server().await;
        super::init_is_idempotent(bus(&server, &NatsOptions::default()).await.as_ref(), 1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_reports_drift() {
        let server = server().await;
        let three_days = NatsOptions {
            stream_max_age: Some(Duration::from_secs(3 * 86_400)),
            ..NatsOptions::default()
        };
        super::init_reports_drift(
            bus(&server, &three_days).await.as_ref(),
            1,
            bus(&server, &NatsOptions::default()).await.as_ref(),
            1,
            "max age 3d, configured 30d",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn worker_check_names_the_command() {
        let server = server().await;
        super::worker_check_names_the_command(
            bus(&server, &NatsOptions::default()).await.as_ref(),
            1,
        )
        .await;
    }
}

mod kafka {
    use super::*;
    use dcpipe_connectors::testkit::TansuServer;

    async fn bus(server: &TansuServer) -> Arc<dyn Bus> {
        Arc::new(
            KafkaBus::connect(&[server.address()], &KafkaOptions::default())
                .await
                .expect("connect"),
        )
    }

    async fn server() -> TansuServer {
        TansuServer::start().await.expect("tansu")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_is_idempotent() {
        let server = server().await;
        super::init_is_idempotent(bus(&server).await.as_ref(), 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_reports_drift() {
        let server = server().await;
        let bus = bus(&server).await;
        super::init_reports_drift(
            bus.as_ref(),
            1,
            bus.as_ref(),
            2,
            "partitions 1, configured 2",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn worker_check_names_the_command() {
        let server = server().await;
        super::worker_check_names_the_command(bus(&server).await.as_ref(), 2).await;
    }
}
