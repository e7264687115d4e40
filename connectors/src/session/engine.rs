//! The rules of [`SessionStore::commit`](super::SessionStore::commit), shared by both
//! databases: given the rows a batch touches, decide each update and list the writes.
//!
//! Each backend loads the rows (locking them where the database can), calls [`decide`], and
//! writes [`Writes`] back in the same transaction.

use std::collections::{BTreeSet, HashMap};

use super::{
    AuthorizationKey, AuthorizationRefusal, ChargeRecord, SessionKey, SessionRecord,
    StoredAuthorization, UpdateResult, VehicleRecord, VehicleUpdate,
};
use crate::ledger::PaymentId;

/// The rows a batch of updates touches, as loaded, then as decided.
#[derive(Debug, Default)]
pub(super) struct Working {
    pub(super) vehicles: HashMap<String, VehicleRecord>,
    pub(super) charges: HashMap<PaymentId, ChargeRecord>,
    /// Payment id of the charge of each charged session.
    pub(super) charged_sessions: HashMap<SessionKey, PaymentId>,
    pub(super) authorizations: HashMap<AuthorizationKey, StoredAuthorization>,
}

/// What a decided batch writes.
#[derive(Debug, Default)]
pub(super) struct Writes {
    /// Vehicles whose record is new.
    pub(super) inserted_vehicles: BTreeSet<String>,
    /// Vehicles whose existing record changed.
    pub(super) updated_vehicles: BTreeSet<String>,
    pub(super) sessions: Vec<SessionRecord>,
    pub(super) charges: Vec<ChargeRecord>,
    /// Pre-authorizations whose charged amount changed.
    pub(super) authorizations: BTreeSet<AuthorizationKey>,
}

/// Ids to load for a batch.
#[derive(Debug, Default)]
pub(super) struct Keys {
    pub(super) vehicles: BTreeSet<String>,
    pub(super) payments: BTreeSet<PaymentId>,
    pub(super) sessions: BTreeSet<SessionKey>,
    pub(super) authorizations: BTreeSet<AuthorizationKey>,
}

/// The rows `updates` may read, sorted (backends lock in this order).
pub(super) fn keys(updates: &[VehicleUpdate]) -> Keys {
    let mut keys = Keys::default();
    for update in updates {
        keys.vehicles.insert(update.vehicle_id.clone());
        for charge in &update.charges {
            keys.payments.insert(charge.payment_id);
            keys.sessions.insert(charge.session_id);
            keys.authorizations.insert(charge.authorization_id);
        }
    }
    keys
}

/// Decides every update in order against `working` (which it updates), with `now_ms` as the
/// store's clock.
pub(super) fn decide(
    working: &mut Working,
    updates: &[VehicleUpdate],
    now_ms: i64,
) -> (Vec<UpdateResult>, Writes) {
    let mut writes = Writes::default();
    let mut results = Vec::with_capacity(updates.len());
    for update in updates {
        let result = decide_one(working, update);
        if let UpdateResult::Applied { .. } = result {
            apply(working, update, now_ms, &mut writes);
        }
        results.push(result);
    }
    (results, writes)
}

fn decide_one(working: &Working, update: &VehicleUpdate) -> UpdateResult {
    let current = working.vehicles.get(&update.vehicle_id);
    let version = match (update.expected_version, current) {
        (None, None) => 1,
        (Some(expected), Some(record)) if record.version == expected => expected + 1,
        (_, Some(record))
            if record.last_batch_digest == update.batch_digest
                && record.next_sequence == update.next_sequence =>
        {
            return UpdateResult::AlreadyApplied {
                version: record.version,
            };
        }
        (_, current) => {
            return UpdateResult::Stale {
                current_version: current.map(|r| r.version),
            };
        }
    };
    // Charges: one content per payment id, one payment per session, within what remains of
    // each pre-authorization (several charges of one update may share one).
    let mut charged: HashMap<AuthorizationKey, i64> = HashMap::new();
    for charge in &update.charges {
        if let Some(existing) = working.charges.get(&charge.payment_id) {
            if existing == charge {
                continue;
            }
            return UpdateResult::ChargeConflict {
                payment_id: charge.payment_id,
            };
        }
        if working
            .charged_sessions
            .get(&charge.session_id)
            .is_some_and(|payment| *payment != charge.payment_id)
        {
            return UpdateResult::ChargeConflict {
                payment_id: charge.payment_id,
            };
        }
        let refused = |refusal| UpdateResult::AuthorizationRefused {
            authorization_id: charge.authorization_id,
            refusal,
        };
        let Some(authorization) = working.authorizations.get(&charge.authorization_id) else {
            return refused(AuthorizationRefusal::Unknown);
        };
        if authorization.hold.vehicle_id != charge.vehicle_id
            || authorization.hold.entity_id != charge.entity_id
        {
            return refused(AuthorizationRefusal::Mismatch);
        }
        let so_far = charged.entry(charge.authorization_id).or_insert(0);
        let remaining_fen = authorization.hold.max_amount_fen - authorization.charged_fen - *so_far;
        if charge.amount_fen > remaining_fen {
            return refused(AuthorizationRefusal::Exceeded { remaining_fen });
        }
        *so_far += charge.amount_fen;
    }
    UpdateResult::Applied { version }
}

fn apply(working: &mut Working, update: &VehicleUpdate, now_ms: i64, writes: &mut Writes) {
    let version = update.expected_version.map_or(1, |v| v + 1);
    let record = VehicleRecord {
        vehicle_id: update.vehicle_id.clone(),
        version,
        next_sequence: update.next_sequence,
        last_batch_digest: update.batch_digest,
        state: update.state.clone(),
        updated_ms: now_ms,
    };
    if working
        .vehicles
        .insert(update.vehicle_id.clone(), record)
        .is_none()
        && !writes.updated_vehicles.contains(&update.vehicle_id)
    {
        writes.inserted_vehicles.insert(update.vehicle_id.clone());
    } else if !writes.inserted_vehicles.contains(&update.vehicle_id) {
        writes.updated_vehicles.insert(update.vehicle_id.clone());
    }
    writes.sessions.extend(update.sessions.iter().cloned());
    for charge in &update.charges {
        if working.charges.contains_key(&charge.payment_id) {
            continue;
        }
        if let Some(authorization) = working.authorizations.get_mut(&charge.authorization_id) {
            authorization.charged_fen += charge.amount_fen;
            debug_assert!(authorization.charged_fen <= authorization.hold.max_amount_fen);
            writes.authorizations.insert(charge.authorization_id);
        }
        working
            .charged_sessions
            .insert(charge.session_id, charge.payment_id);
        working.charges.insert(charge.payment_id, charge.clone());
        writes.charges.push(charge.clone());
    }
}
