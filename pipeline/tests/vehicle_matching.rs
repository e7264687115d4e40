//! Matching workers sharing one vehicle's telemetry, against the session store on SQLite and
//! PostgreSQL: the trap of competing consumers.
//!
//! Members of a competing group each hold batches of the same vehicle at once, and a
//! redelivery can arrive after later batches. Each member verifies, reads the vehicle's record,
//! decides (`decide_telemetry`) and commits at the version it read; a stale read is read and
//! decided again, a batch after a gap is handed back (redelivered later), a batch applied
//! before is a duplicate. Whatever the interleaving, the vehicle ends where one member
//! processing the batches in order would: same sessions, same charges, each charge once.

mod vehicle_fixtures;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use dcpipe_connectors::ledger::{LedgerOptions, LedgerUrl, Party, PostgresOptions};
use dcpipe_connectors::session::{
    AuthorizationHold, SessionStore, UpdateResult, open_session_store,
};
use dcpipe_pipeline::pki::{
    Algorithm, AlgorithmChoice, CertifiedKey, ChainVerifier, DemoPkiOptions, PkiDirectory,
    RevocationSet, Role, SubjectSpec,
};
use dcpipe_pipeline::vehicle::matching::{TelemetryDecision, decide_telemetry, held_authorization};
use dcpipe_pipeline::vehicle::registry::EntityRegistry;
use dcpipe_pipeline::vehicle::session::SessionConfig;
use dcpipe_pipeline::vehicle::telemetry::{
    TelemetryBatcher, TelemetryPolicy, verify_telemetry_batch,
};
use dcpipe_schemas::{PartyRef, VehicleTelemetryBatch};
use vehicle_fixtures::{Drive, Noise, Receiver, T0_MS, registry};

const OI: &str = "oi01";
const VEHICLE: &str = "LSVAU2180N2183294";
/// Reports per batch.
const BATCH_REPORTS: usize = 20;
/// Reads and decisions a member makes for one delivery before giving up.
const ATTEMPTS_MAX: usize = 64;

struct World {
    verifier: ChainVerifier,
    registry: EntityRegistry,
    batches: Vec<VehicleTelemetryBatch>,
    now_ms: i64,
}

/// A drive westward through the toll zone, into the parking lot for half an hour and out,
/// signed in batches by the vehicle's client.
fn world() -> World {
    let pki = PkiDirectory::generate(&DemoPkiOptions::new(1, 0, AlgorithmChoice::P256, T0_MS))
        .expect("PKI");
    let vehicle: CertifiedKey = pki
        .issue(
            &SubjectSpec {
                role: Role::Vehicle,
                id: VEHICLE,
                institution: OI,
                algorithm: Algorithm::EcdsaP256Sha256,
            },
            T0_MS - 86_400_000,
            T0_MS + 86_400_000,
        )
        .expect("vehicle certificate");
    let receiver = Receiver {
        sigma_m: 1.5,
        outlier_rate: 0.0,
        drop_rate: 0.0,
        interval_ms: 2_000,
    };
    let mut drive = Drive::new(42, receiver, (1_400.0, 2.0));
    drive
        .to((600.0, 2.0), 25.0)
        .to((-60.0, 0.0), 12.0)
        .to((0.0, 5.0), 3.0)
        .stay(30 * 60_000, true)
        .to((60.0, 0.0), 3.0)
        .to((400.0, 0.0), 12.0);
    let mut batcher = TelemetryBatcher::new(
        VEHICLE,
        1,
        PartyRef {
            institution_id: OI.to_owned(),
            wallet_id: "w-oi01-000001".to_owned(),
        },
        vehicle.certificate(),
        vehicle.key(),
    );
    let batches = drive
        .fixes
        .chunks(BATCH_REPORTS)
        .map(|reports| batcher.seal(reports.to_vec()).expect("signs"))
        .collect();
    World {
        verifier: ChainVerifier::new(
            Arc::clone(pki.trust_store()),
            Arc::new(RevocationSet::new()),
        ),
        registry: registry(),
        batches,
        now_ms: drive.t_ms,
    }
}

fn holds() -> Vec<AuthorizationHold> {
    ["TOLL-1", "PARK-1"]
        .into_iter()
        .enumerate()
        .map(|(i, entity)| AuthorizationHold {
            authorization_id: [i as u8 + 1; 16],
            digest: [i as u8 + 1; 32],
            vehicle_id: VEHICLE.to_owned(),
            payer: Party {
                institution_id: OI.to_owned(),
                wallet_id: "w-oi01-000001".to_owned(),
            },
            entity_id: entity.to_owned(),
            service_kind: if entity == "TOLL-1" {
                "TOLL"
            } else {
                "PARKING"
            }
            .to_owned(),
            max_amount_fen: 10_000,
            issued_at_ms: T0_MS - 1,
            expires_at_ms: T0_MS + 86_400_000,
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    Applied,
    Duplicate,
    Wait,
}

/// What one member does with one delivery.
async fn deliver(world: &World, store: &dyn SessionStore, index: usize) -> Delivered {
    let batch = &world.batches[index];
    let verified = verify_telemetry_batch(
        batch,
        OI,
        &world.verifier,
        &TelemetryPolicy::default(),
        world.now_ms,
    )
    .expect("a genuine batch verifies");
    for _ in 0..ATTEMPTS_MAX {
        let record = store.vehicles(&[VEHICLE.to_owned()]).await.expect("read")[0].clone();
        let held: Vec<_> = store
            .authorizations(VEHICLE)
            .await
            .expect("read")
            .iter()
            .filter_map(held_authorization)
            .collect();
        let decision = decide_telemetry(
            record.as_ref(),
            batch,
            &verified,
            &world.registry,
            &SessionConfig::default(),
            &held,
            false,
        )
        .expect("state reads back");
        match decision {
            TelemetryDecision::Apply {
                update,
                refused_charges,
                ..
            } => {
                assert!(refused_charges.is_empty(), "{refused_charges:?}");
                match store.commit(&[update]).await.expect("commit")[0] {
                    UpdateResult::Applied { .. } => return Delivered::Applied,
                    // Another member committed this very batch between our read and commit.
                    UpdateResult::AlreadyApplied { .. } => return Delivered::Duplicate,
                    UpdateResult::Stale { .. } => continue,
                    other => panic!("batch {index}: {other:?}"),
                }
            }
            TelemetryDecision::Duplicate => return Delivered::Duplicate,
            TelemetryDecision::Wait { .. } => return Delivered::Wait,
            TelemetryDecision::Refuse(refused) => panic!("batch {index}: {refused}"),
        }
    }
    panic!("batch {index}: still stale after {ATTEMPTS_MAX} reads");
}

/// Two members take deliveries from one queue until it is empty; a batch that must wait goes
/// back at the end of the queue (a redelivery later). Returns how each delivery ended.
async fn two_members(
    world: Arc<World>,
    stores: [Arc<dyn SessionStore>; 2],
    deliveries: Vec<usize>,
) -> Vec<(usize, Delivered)> {
    let queue = Arc::new(Mutex::new(VecDeque::from(deliveries)));
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut members = Vec::new();
    for store in stores {
        let (queue, log, world) = (Arc::clone(&queue), Arc::clone(&log), Arc::clone(&world));
        members.push(tokio::spawn(async move {
            let mut handed_back_in_a_row = 0;
            loop {
                let next = queue.lock().expect("queue").pop_front();
                let Some(index) = next else { break };
                let delivered = deliver(&world, store.as_ref(), index).await;
                if delivered == Delivered::Wait {
                    handed_back_in_a_row += 1;
                    assert!(handed_back_in_a_row < 10_000, "a gap never filled");
                    queue.lock().expect("queue").push_back(index);
                    tokio::task::yield_now().await;
                } else {
                    handed_back_in_a_row = 0;
                }
                log.lock().expect("log").push((index, delivered));
            }
        }));
    }
    for member in members {
        member.await.expect("member");
    }
    Arc::try_unwrap(log)
        .expect("members done")
        .into_inner()
        .expect("log")
}

async fn outcome(store: &dyn SessionStore) -> (i64, Vec<String>, Vec<(String, i64)>) {
    let record = store.vehicles(&[VEHICLE.to_owned()]).await.expect("read")[0]
        .clone()
        .expect("record");
    let sessions = store
        .sessions(VEHICLE)
        .await
        .expect("read")
        .iter()
        .map(|s| format!("{} {} {:?}", s.entity_id, s.entered_at_ms, s.exited_at_ms))
        .collect();
    let charges = store
        .charges(VEHICLE)
        .await
        .expect("read")
        .iter()
        .map(|c| (c.entity_id.clone(), c.amount_fen))
        .collect();
    store.verify_integrity().await.expect("charges add up");
    (record.next_sequence, sessions, charges)
}

/// The scenario, on stores opened by `open` (two handles per store: two processes).
async fn interleaved_members_end_where_one_member_would<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = [Arc<dyn SessionStore>; 2]>,
{
    let world = Arc::new(world());
    let n = world.batches.len();
    assert!(n > 40, "{n} batches");

    // One member, in order: the reference.
    let [reference, _] = open().await;
    reference.hold(&holds()).await.expect("hold");
    for index in 0..n {
        assert_eq!(
            deliver(&world, reference.as_ref(), index).await,
            Delivered::Applied
        );
    }
    let expected = outcome(reference.as_ref()).await;
    assert_eq!(
        expected.2.len(),
        2,
        "a toll pass and a parking stay: {:?}",
        expected.2
    );
    assert_eq!(expected.2[0], ("TOLL-1".to_owned(), 500));

    // Deterministic: member B applies batch k+1 before member A's batch k, and batch 3 is
    // redelivered (its first member died before acknowledging) after batch 10 was applied.
    let stores = open().await;
    stores[0].hold(&holds()).await.expect("hold");
    let mut deliveries: Vec<usize> = (0..n).collect();
    deliveries.swap(5, 6);
    deliveries.insert(11, 3);
    let log = two_members(Arc::clone(&world), stores.clone(), deliveries).await;
    assert!(
        log.contains(&(3, Delivered::Duplicate)),
        "batch 3 delivered again is a duplicate"
    );
    let applied = log.iter().filter(|(_, d)| *d == Delivered::Applied).count();
    assert_eq!(applied, n, "each batch applied once");
    assert_eq!(outcome(stores[0].as_ref()).await, expected);

    // Seeded shuffles: windows of deliveries out of order, and redeliveries of earlier batches
    // arriving after later ones.
    for seed in 0..4u64 {
        let stores = open().await;
        stores[0].hold(&holds()).await.expect("hold");
        let mut noise = Noise(seed);
        let mut deliveries: Vec<usize> = (0..n).collect();
        for window in deliveries.chunks_mut(4) {
            for i in (1..window.len()).rev() {
                let j = (noise.next_u64() % (i as u64 + 1)) as usize;
                window.swap(i, j);
            }
        }
        for _ in 0..n / 4 {
            let at = (noise.next_u64() % n as u64) as usize;
            let earlier = (noise.next_u64() % (at as u64 + 1)) as usize;
            deliveries.insert(at, earlier);
        }
        let deliveries_count = deliveries.len();
        let log = two_members(Arc::clone(&world), stores.clone(), deliveries).await;
        let applied = log.iter().filter(|(_, d)| *d == Delivered::Applied).count();
        assert_eq!(applied, n, "seed {seed}: each batch applied once");
        assert!(log.len() >= deliveries_count, "seed {seed}");
        assert_eq!(outcome(stores[0].as_ref()).await, expected, "seed {seed}");
    }
}

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interleaved_members_end_where_one_member_would() {
        // The directories live until the end of the test, then are removed.
        let dirs = Mutex::new(Vec::new());
        let dirs = &dirs;
        super::interleaved_members_end_where_one_member_would(|| async move {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = LedgerUrl::SqliteDir(dir.path().to_owned());
            dirs.lock().expect("dirs").push(dir);
            let options = LedgerOptions::default();
            let a = open_session_store(&url, OI, &options).await.expect("open");
            let b = open_session_store(&url, OI, &options).await.expect("open");
            [a, b]
        })
        .await;
    }
}

mod postgres {
    use std::sync::atomic::{AtomicU64, Ordering};

    use dcpipe_connectors::testkit::PostgresServer;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interleaved_members_end_where_one_member_would() {
        let server = PostgresServer::start().await.expect("PostgreSQL");
        let server = &server;
        let databases = AtomicU64::new(0);
        let databases = &databases;
        super::interleaved_members_end_where_one_member_would(|| async move {
            let name = format!("m{}", databases.fetch_add(1, Ordering::Relaxed));
            let url: LedgerUrl = server
                .create_database(&name)
                .await
                .expect("database")
                .parse()
                .expect("url");
            let options = LedgerOptions {
                postgres: PostgresOptions {
                    pool_size: 2,
                    ..PostgresOptions::default()
                },
                ..LedgerOptions::default()
            };
            let a = open_session_store(&url, OI, &options).await.expect("open");
            let b = open_session_store(&url, OI, &options).await.expect("open");
            [a, b]
        })
        .await;
    }
}
