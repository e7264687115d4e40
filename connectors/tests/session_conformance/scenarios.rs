//! One function per behaviour of the session store, run on every backend.

use std::sync::Arc;

use dcpipe_connectors::ledger::{LedgerErrorKind, Party, PaymentId};
use dcpipe_connectors::session::{
    AuthorizationHold, AuthorizationRefusal, ChargeRecord, HoldResult, STORE_BATCH_ITEMS_MAX,
    SessionRecord, UpdateResult, VehicleUpdate,
};

use crate::harness::Backend;

const OI: &str = "oi01";
const T0_MS: i64 = 1_764_000_000_000;

fn party(institution: &str, wallet: &str) -> Party {
    Party {
        institution_id: institution.to_owned(),
        wallet_id: wallet.to_owned(),
    }
}

fn digest(n: u8) -> [u8; 32] {
    [n; 32]
}

/// The update of `vehicle` after a batch ending at `next_sequence`, read at `expected`.
fn update(vehicle: &str, expected: Option<i64>, next_sequence: i64) -> VehicleUpdate {
    VehicleUpdate {
        vehicle_id: vehicle.to_owned(),
        expected_version: expected,
        batch_digest: digest(next_sequence as u8),
        next_sequence,
        state: format!("{{\"at\":{next_sequence}}}").into_bytes(),
        sessions: Vec::new(),
        charges: Vec::new(),
    }
}

fn hold(id: u8, vehicle: &str, entity: &str, max_amount_fen: i64) -> AuthorizationHold {
    AuthorizationHold {
        authorization_id: [id; 16],
        digest: digest(id),
        vehicle_id: vehicle.to_owned(),
        payer: party(OI, &format!("w-{vehicle}")),
        entity_id: entity.to_owned(),
        service_kind: "PARKING".to_owned(),
        max_amount_fen,
        issued_at_ms: T0_MS,
        expires_at_ms: T0_MS + 86_400_000,
    }
}

fn session(id: u8, vehicle: &str, entity: &str, exited: Option<i64>) -> SessionRecord {
    SessionRecord {
        session_id: [id; 16],
        vehicle_id: vehicle.to_owned(),
        entity_id: entity.to_owned(),
        entity_version: 1,
        kind: "PARKING".to_owned(),
        payee: party("oi02", &format!("w-{entity}")),
        entered_at_ms: T0_MS + i64::from(id),
        exited_at_ms: exited,
        document: b"{\"tariff\":1}".to_vec(),
    }
}

fn charge(
    session: u8,
    authorization: u8,
    vehicle: &str,
    entity: &str,
    amount: i64,
) -> ChargeRecord {
    ChargeRecord {
        payment_id: PaymentId([session ^ 0x80; 16]),
        session_id: [session; 16],
        authorization_id: [authorization; 16],
        vehicle_id: vehicle.to_owned(),
        entity_id: entity.to_owned(),
        amount_fen: amount,
        payer: party(OI, &format!("w-{vehicle}")),
        payee: party("oi02", &format!("w-{entity}")),
        due_at_ms: T0_MS + 3_600_000,
    }
}

async fn commit_one(
    store: &dyn dcpipe_connectors::session::SessionStore,
    u: VehicleUpdate,
) -> UpdateResult {
    store.commit(&[u]).await.expect("commit")[0]
}

pub(crate) async fn first_update_creates_the_vehicle_at_version_one(backend: &impl Backend) {
    let store = backend.store(OI).await;
    assert_eq!(
        commit_one(store.as_ref(), update("V1", None, 10)).await,
        UpdateResult::Applied { version: 1 }
    );
    let record = store.vehicles(&["V1".to_owned()]).await.expect("read")[0]
        .clone()
        .expect("record");
    assert_eq!(record.version, 1);
    assert_eq!(record.next_sequence, 10);
    assert_eq!(record.last_batch_digest, digest(10));
    assert_eq!(record.state, b"{\"at\":10}");
}

pub(crate) async fn an_update_at_the_version_read_applies_and_raises_it(backend: &impl Backend) {
    let store = backend.store(OI).await;
    commit_one(store.as_ref(), update("V1", None, 10)).await;
    assert_eq!(
        commit_one(store.as_ref(), update("V1", Some(1), 20)).await,
        UpdateResult::Applied { version: 2 }
    );
    let record = store.vehicles(&["V1".to_owned()]).await.expect("read")[0]
        .clone()
        .expect("record");
    assert_eq!((record.version, record.next_sequence), (2, 20));
}

pub(crate) async fn an_update_at_an_older_version_is_stale_and_changes_nothing(
    backend: &impl Backend,
) {
    let store = backend.store(OI).await;
    commit_one(store.as_ref(), update("V1", None, 10)).await;
    commit_one(store.as_ref(), update("V1", Some(1), 20)).await;
    assert_eq!(
        commit_one(store.as_ref(), update("V1", Some(1), 30)).await,
        UpdateResult::Stale {
            current_version: Some(2)
        }
    );
    assert_eq!(
        commit_one(store.as_ref(), update("V2", Some(4), 30)).await,
        UpdateResult::Stale {
            current_version: None
        }
    );
    let records = store
        .vehicles(&["V1".to_owned(), "V2".to_owned()])
        .await
        .expect("read");
    assert_eq!(records[0].as_ref().map(|r| r.next_sequence), Some(20));
    assert_eq!(records[1], None);
}

pub(crate) async fn a_new_vehicle_updated_twice_as_new_applies_once(backend: &impl Backend) {
    let store = backend.store(OI).await;
    commit_one(store.as_ref(), update("V1", None, 10)).await;
    assert_eq!(
        commit_one(store.as_ref(), update("V1", None, 11)).await,
        UpdateResult::Stale {
            current_version: Some(1)
        }
    );
}

pub(crate) async fn a_retried_commit_is_already_applied(backend: &impl Backend) {
    let store = backend.store(OI).await;
    let first = update("V1", None, 10);
    commit_one(store.as_ref(), first.clone()).await;
    assert_eq!(
        commit_one(store.as_ref(), first).await,
        UpdateResult::AlreadyApplied { version: 1 }
    );
    let second = update("V1", Some(1), 20);
    commit_one(store.as_ref(), second.clone()).await;
    assert_eq!(
        commit_one(store.as_ref(), second).await,
        UpdateResult::AlreadyApplied { version: 2 }
    );
}

pub(crate) async fn reads_answer_each_vehicle_in_order(backend: &impl Backend) {
    let store = backend.store(OI).await;
    store
        .commit(&[update("V2", None, 2), update("V1", None, 1)])
        .await
        .expect("commit");
    let ids = ["V1", "V3", "V2", "V1"].map(str::to_owned);
    let sequences: Vec<Option<i64>> = store
        .vehicles(&ids)
        .await
        .expect("read")
        .iter()
        .map(|r| r.as_ref().map(|r| r.next_sequence))
        .collect();
    assert_eq!(sequences, vec![Some(1), None, Some(2), Some(1)]);
}

pub(crate) async fn updates_of_one_vehicle_in_one_batch_chain(backend: &impl Backend) {
    let store = backend.store(OI).await;
    let results = store
        .commit(&[
            update("V1", None, 10),
            update("V1", Some(1), 20),
            update("V1", Some(1), 30),
        ])
        .await
        .expect("commit");
    assert_eq!(
        results,
        vec![
            UpdateResult::Applied { version: 1 },
            UpdateResult::Applied { version: 2 },
            UpdateResult::Stale {
                current_version: Some(2)
            }
        ]
    );
}

/// Two workers read the same version and commit at once: one applies, the other is told to
/// read again; whatever the interleaving, the record moves by one version.
pub(crate) async fn concurrent_workers_with_the_same_read_apply_once(backend: &impl Backend) {
    let first = backend.store(OI).await;
    let second = backend.store(OI).await;
    commit_one(first.as_ref(), update("V1", None, 10)).await;
    for round in 0..20i64 {
        let version = 1 + round;
        let ours = [update("V1", Some(version), 100 + 2 * round)];
        let theirs = [update("V1", Some(version), 101 + 2 * round)];
        let (a, b) = tokio::join!(first.commit(&ours), second.commit(&theirs));
        let outcomes = [a.expect("first")[0], b.expect("second")[0]];
        let applied = outcomes
            .iter()
            .filter(|o| matches!(o, UpdateResult::Applied { .. }))
            .count();
        assert_eq!(applied, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes.contains(&UpdateResult::Stale {
                current_version: Some(version + 1)
            }),
            "round {round}: {outcomes:?}"
        );
    }
    let record = first.vehicles(&["V1".to_owned()]).await.expect("read")[0]
        .clone()
        .expect("record");
    assert_eq!(record.version, 21);
}

pub(crate) async fn holds_are_idempotent_and_conflict_on_other_content(backend: &impl Backend) {
    let store = backend.store(OI).await;
    let h = hold(1, "V1", "PARK-1", 10_000);
    assert_eq!(
        store.hold(std::slice::from_ref(&h)).await.expect("hold"),
        vec![HoldResult::Held]
    );
    let mut other = h.clone();
    other.digest = digest(99);
    other.max_amount_fen = 1_000_000;
    assert_eq!(
        store.hold(&[h, other]).await.expect("hold"),
        vec![HoldResult::Duplicate, HoldResult::Conflict]
    );
    let held = store.authorizations("V1").await.expect("read");
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].hold.max_amount_fen, held[0].charged_fen),
        (10_000, 0)
    );
}

pub(crate) async fn a_charge_within_its_pre_authorization_is_counted(backend: &impl Backend) {
    let store = backend.store(OI).await;
    store
        .hold(&[hold(1, "V1", "PARK-1", 10_000)])
        .await
        .expect("hold");
    let mut u = update("V1", None, 10);
    u.sessions
        .push(session(7, "V1", "PARK-1", Some(T0_MS + 3_600_000)));
    u.charges.push(charge(7, 1, "V1", "PARK-1", 6_000));
    assert_eq!(
        commit_one(store.as_ref(), u).await,
        UpdateResult::Applied { version: 1 }
    );
    let held = store.authorizations("V1").await.expect("read");
    assert_eq!(held[0].charged_fen, 6_000);
    let charges = store.charges("V1").await.expect("read");
    assert_eq!(charges, vec![charge(7, 1, "V1", "PARK-1", 6_000)]);
    store.verify_integrity().await.expect("charges add up");
}

pub(crate) async fn a_charge_above_what_remains_is_refused_and_nothing_applies(
    backend: &impl Backend,
) {
    let store = backend.store(OI).await;
    store
        .hold(&[hold(1, "V1", "PARK-1", 10_000)])
        .await
        .expect("hold");
    let mut u = update("V1", None, 10);
    u.charges.push(charge(7, 1, "V1", "PARK-1", 6_000));
    commit_one(store.as_ref(), u).await;
    let mut u = update("V1", Some(1), 20);
    u.sessions.push(session(8, "V1", "PARK-1", None));
    u.charges.push(charge(8, 1, "V1", "PARK-1", 4_001));
    assert_eq!(
        commit_one(store.as_ref(), u).await,
        UpdateResult::AuthorizationRefused {
            authorization_id: [1; 16],
            refusal: AuthorizationRefusal::Exceeded {
                remaining_fen: 4_000
            }
        }
    );
    let record = store.vehicles(&["V1".to_owned()]).await.expect("read")[0]
        .clone()
        .expect("record");
    assert_eq!(record.version, 1, "nothing of the refused update applied");
    assert!(store.session(&[8; 16]).await.expect("read").is_none());
    assert_eq!(
        store.authorizations("V1").await.expect("read")[0].charged_fen,
        6_000
    );
    let mut u = update("V1", Some(1), 20);
    u.charges.push(charge(8, 1, "V1", "PARK-1", 4_000));
    assert_eq!(
        commit_one(store.as_ref(), u).await,
        UpdateResult::Applied { version: 2 }
    );
    store.verify_integrity().await.expect("charges add up");
}

pub(crate) async fn a_charge_under_an_unknown_or_foreign_pre_authorization_is_refused(
    backend: &impl Backend,
) {
    let store = backend.store(OI).await;
    store
        .hold(&[
            hold(1, "V1", "PARK-1", 10_000),
            hold(2, "V2", "PARK-1", 10_000),
        ])
        .await
        .expect("hold");
    let mut u = update("V1", None, 10);
    u.charges.push(charge(7, 9, "V1", "PARK-1", 100));
    assert_eq!(
        commit_one(store.as_ref(), u).await,
        UpdateResult::AuthorizationRefused {
            authorization_id: [9; 16],
            refusal: AuthorizationRefusal::Unknown
        }
    );
    let mut u = update("V1", None, 10);
    u.charges.push(charge(7, 2, "V1", "PARK-1", 100));
    assert_eq!(
        commit_one(store.as_ref(), u).await,
        UpdateResult::AuthorizationRefused {
            authorization_id: [2; 16],
            refusal: AuthorizationRefusal::Mismatch
        }
    );
    let mut u = update("V1", None, 10);
    u.charges.push(charge(7, 1, "V1", "PARK-2", 100));
    assert_eq!(
        commit_one(store.as_ref(), u).await,
        UpdateResult::AuthorizationRefused {
            authorization_id: [1; 16],
            refusal: AuthorizationRefusal::Mismatch
        }
    );
    assert_eq!(
        store.vehicles(&["V1".to_owned()]).await.expect("read"),
        vec![None]
    );
}

pub(crate) async fn a_session_is_charged_once(backend: &impl Backend) {
    let store = backend.store(OI).await;
    store
        .hold(&[hold(1, "V1", "PARK-1", 10_000)])
        .await
        .expect("hold");
    let mut u = update("V1", None, 10);
    u.charges.push(charge(7, 1, "V1", "PARK-1", 500));
    commit_one(store.as_ref(), u).await;
    // Another payment id for the same session.
    let mut second = charge(7, 1, "V1", "PARK-1", 500);
    second.payment_id = PaymentId([0x42; 16]);
    let mut u = update("V1", Some(1), 20);
    u.charges.push(second);
    assert_eq!(
        commit_one(store.as_ref(), u).await,
        UpdateResult::ChargeConflict {
            payment_id: PaymentId([0x42; 16])
        }
    );
    // The same payment id with another amount.
    let mut u = update("V1", Some(1), 20);
    u.charges.push(charge(7, 1, "V1", "PARK-1", 501));
    assert!(matches!(
        commit_one(store.as_ref(), u).await,
        UpdateResult::ChargeConflict { .. }
    ));
    assert_eq!(store.charges("V1").await.expect("read").len(), 1);
    assert_eq!(
        store.authorizations("V1").await.expect("read")[0].charged_fen,
        500
    );
}

pub(crate) async fn the_same_charge_sent_again_is_not_counted_twice(backend: &impl Backend) {
    let store = backend.store(OI).await;
    store
        .hold(&[hold(1, "V1", "PARK-1", 10_000)])
        .await
        .expect("hold");
    let mut u = update("V1", None, 10);
    u.charges.push(charge(7, 1, "V1", "PARK-1", 500));
    commit_one(store.as_ref(), u).await;
    // A worker that decided again from an older state re-issues the same charge.
    let mut u = update("V1", Some(1), 20);
    u.charges.push(charge(7, 1, "V1", "PARK-1", 500));
    assert_eq!(
        commit_one(store.as_ref(), u).await,
        UpdateResult::Applied { version: 2 }
    );
    assert_eq!(store.charges("V1").await.expect("read").len(), 1);
    assert_eq!(
        store.authorizations("V1").await.expect("read")[0].charged_fen,
        500
    );
    store.verify_integrity().await.expect("charges add up");
}

pub(crate) async fn sessions_are_upserted_and_read_back(backend: &impl Backend) {
    let store = backend.store(OI).await;
    let mut u = update("V1", None, 10);
    u.sessions.push(session(7, "V1", "PARK-1", None));
    u.sessions.push(session(3, "V1", "TOLL-1", Some(T0_MS + 3)));
    commit_one(store.as_ref(), u).await;
    assert_eq!(
        store.session(&[7; 16]).await.expect("read"),
        Some(session(7, "V1", "PARK-1", None))
    );
    let mut u = update("V1", Some(1), 20);
    u.sessions
        .push(session(7, "V1", "PARK-1", Some(T0_MS + 7_200_000)));
    commit_one(store.as_ref(), u).await;
    let sessions = store.sessions("V1").await.expect("read");
    assert_eq!(
        sessions,
        vec![
            session(3, "V1", "TOLL-1", Some(T0_MS + 3)),
            session(7, "V1", "PARK-1", Some(T0_MS + 7_200_000)),
        ]
    );
    assert!(store.sessions("V2").await.expect("read").is_empty());
}

/// Workers of several processes charging sessions of one vehicle under one pre-authorization,
/// each reading, deciding and retrying on a stale read: the total never exceeds the maximum
/// and what is recorded equals the charges.
pub(crate) async fn concurrent_charges_never_exceed_the_pre_authorization(backend: &impl Backend) {
    let store = backend.store(OI).await;
    store
        .hold(&[hold(1, "V1", "PARK-1", 10_000)])
        .await
        .expect("hold");
    let mut tasks = Vec::new();
    for worker in 0..4u8 {
        let store: Arc<dyn dcpipe_connectors::session::SessionStore> = backend.store(OI).await;
        tasks.push(tokio::spawn(async move {
            let mut charged = 0;
            for i in 0..10u8 {
                let session_id = worker * 10 + i + 1;
                loop {
                    let read = store.vehicles(&["V1".to_owned()]).await.expect("read")[0].clone();
                    let mut u = update("V1", read.as_ref().map(|r| r.version), 0);
                    u.batch_digest = [session_id; 32];
                    u.next_sequence = i64::from(session_id);
                    u.charges.push(charge(session_id, 1, "V1", "PARK-1", 700));
                    match store.commit(&[u]).await.expect("commit")[0] {
                        UpdateResult::Applied { .. } => {
                            charged += 700;
                            break;
                        }
                        UpdateResult::Stale { .. } => continue,
                        UpdateResult::AuthorizationRefused { .. } => break,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            charged
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("worker");
    }
    assert_eq!(total, 9_800, "14 charges of 700 fit in 10,000");
    let held = store.authorizations("V1").await.expect("read");
    assert_eq!(held[0].charged_fen, 9_800);
    assert_eq!(store.charges("V1").await.expect("read").len(), 14);
    store.verify_integrity().await.expect("charges add up");
}

pub(crate) async fn oversized_and_malformed_batches_are_refused_whole(backend: &impl Backend) {
    let store = backend.store(OI).await;
    let many: Vec<VehicleUpdate> = (0..=STORE_BATCH_ITEMS_MAX)
        .map(|i| update(&format!("V{i}"), None, 1))
        .collect();
    let err = store.commit(&many).await.expect_err("too many");
    assert_eq!(err.kind(), LedgerErrorKind::InvalidInput);
    let mut u = update("V1", None, 1);
    u.charges.push(charge(7, 1, "V2", "PARK-1", 100));
    let err = store
        .commit(&[u])
        .await
        .expect_err("another vehicle's charge");
    assert_eq!(err.kind(), LedgerErrorKind::InvalidInput);
    let mut h = hold(1, "V1", "PARK-1", 0);
    let err = store
        .hold(&[h.clone()])
        .await
        .expect_err("nothing authorized");
    assert_eq!(err.kind(), LedgerErrorKind::InvalidInput);
    h.max_amount_fen = 1;
    h.expires_at_ms = h.issued_at_ms;
    assert!(store.hold(&[h]).await.is_err());
    assert_eq!(
        store.vehicles(&["V0".to_owned()]).await.expect("read"),
        vec![None]
    );
}

pub(crate) async fn the_store_keeps_its_rows_when_reopened(backend: &impl Backend) {
    {
        let store = backend.store(OI).await;
        store
            .hold(&[hold(1, "V1", "PARK-1", 10_000)])
            .await
            .expect("hold");
        let mut u = update("V1", None, 10);
        u.sessions.push(session(7, "V1", "PARK-1", Some(T0_MS)));
        u.charges.push(charge(7, 1, "V1", "PARK-1", 500));
        commit_one(store.as_ref(), u).await;
    }
    let store = backend.store(OI).await;
    assert_eq!(
        store.vehicles(&["V1".to_owned()]).await.expect("read")[0]
            .as_ref()
            .map(|r| r.version),
        Some(1)
    );
    assert_eq!(store.charges("V1").await.expect("read").len(), 1);
    assert!(store.session(&[7; 16]).await.expect("read").is_some());
}
