//! The vehicles' session store of an operating institution, on SQLite or PostgreSQL.
//!
//! The institution that holds a vehicle's wallet matches the vehicle's telemetry to service
//! entities and charges it. What that takes between two telemetry batches lives here, not in a
//! worker's memory, so that any number of matching workers can share the load and a killed one
//! loses nothing:
//! - per vehicle, a [`VehicleRecord`]: a version (for optimistic concurrency), the next
//!   telemetry sequence and the digest of the last batch applied, and the matching state (an
//!   opaque document the pipeline writes: its telemetry chain and open sessions);
//! - the sessions ([`SessionRecord`]), by id, so a station's report finds its session;
//! - the pre-authorizations held ([`AuthorizationHold`]) with what was charged under each;
//! - the charges issued ([`ChargeRecord`]), one per session at most, under a payment id
//!   derived from the session, so a restart can never charge twice.
//!
//! A worker reads the records of a batch's vehicles ([`SessionStore::vehicles`]), decides in
//! pure code, and writes everything a batch changes with [`SessionStore::commit`]: one database
//! transaction, one [`VehicleUpdate`] per vehicle, each applied only if the vehicle's record is
//! still at the version the worker read (compare and set). Two workers that hold batches of the
//! same vehicle at once (members of a competing group, a redelivery that overtakes later
//! messages) therefore never both apply: the second gets [`UpdateResult::Stale`], reads again
//! and decides again, and the telemetry chain in the state tells it the batch is a duplicate, the
//! next one, or one to wait for. A commit whose answer was lost is recognized when retried
//! ([`UpdateResult::AlreadyApplied`]). Charges are checked again here against the held
//! pre-authorization (never above what remains) and against the charges already issued (one per
//! session, one content per payment id), so no race and no defect can charge twice.
//!
//! The store is its own database, beside the ledger: on SQLite the file
//! `<institution>.vehicles.db` in the ledger directory (so telemetry writes do not compete with
//! payments for SQLite's single writer), on PostgreSQL the schema `dcpipe_vehicle_<institution>`.
//! Errors are [`LedgerError`]s, with the same kinds and the same retry rules as the ledgers.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::ledger::{
    LedgerError, LedgerErrorKind, LedgerOptions, LedgerUrl, Party, PaymentId,
    validate_institution_id,
};

mod engine;
mod postgres;
mod sqlite;

pub use postgres::PostgresSessionStore;
pub use sqlite::SqliteSessionStore;

/// Most updates (or holds) in one call.
pub const STORE_BATCH_ITEMS_MAX: usize = 4_096;
/// Most sessions or charges one vehicle update carries.
pub const UPDATE_SESSIONS_MAX: usize = 64;
/// Largest matching state of one vehicle, in bytes.
pub const VEHICLE_STATE_BYTES_MAX: usize = 64 * 1024;
/// Largest session document, in bytes.
pub const SESSION_DOCUMENT_BYTES_MAX: usize = 16 * 1024;

/// A 16-byte session id (a UUID).
pub type SessionKey = [u8; 16];
/// A 16-byte pre-authorization id (a UUID).
pub type AuthorizationKey = [u8; 16];

/// What the store keeps of one vehicle between batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleRecord {
    /// The vehicle.
    pub vehicle_id: String,
    /// Rises by one with every update applied; the compare-and-set token.
    pub version: i64,
    /// The telemetry sequence the next batch must start at.
    pub next_sequence: i64,
    /// Digest of the last telemetry batch applied.
    pub last_batch_digest: [u8; 32],
    /// The pipeline's matching state (opaque here).
    pub state: Vec<u8>,
    /// When the record was last written (store clock).
    pub updated_ms: i64,
}

/// A vehicle's session at a service entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Its id (derived from vehicle, entity and entry by the pipeline).
    pub session_id: SessionKey,
    /// The vehicle.
    pub vehicle_id: String,
    /// The entity.
    pub entity_id: String,
    /// The entity's version at the start of the session.
    pub entity_version: i64,
    /// The service (`TOLL`, `PARKING`, `CHARGING`, `FUEL`).
    pub kind: String,
    /// The entity's wallet (the payee).
    pub payee: Party,
    /// When the session started.
    pub entered_at_ms: i64,
    /// When it ended, once it has.
    pub exited_at_ms: Option<i64>,
    /// The pipeline's session document (the tariff of the session's start): opaque here.
    pub document: Vec<u8>,
}

/// A held pre-authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationHold {
    /// Its id.
    pub authorization_id: AuthorizationKey,
    /// SHA-256 of what the wallet signed: the same id with another digest is a conflict.
    pub digest: [u8; 32],
    /// The vehicle.
    pub vehicle_id: String,
    /// The paying wallet.
    pub payer: Party,
    /// The entity allowed to charge.
    pub entity_id: String,
    /// The service allowed.
    pub service_kind: String,
    /// The most that may be charged, in fen.
    pub max_amount_fen: i64,
    /// When the wallet signed.
    pub issued_at_ms: i64,
    /// After this moment nothing may be charged under it.
    pub expires_at_ms: i64,
}

/// A held pre-authorization with what was charged under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAuthorization {
    /// What was held.
    pub hold: AuthorizationHold,
    /// Charged under it so far, in fen; never above `max_amount_fen`.
    pub charged_fen: i64,
}

/// A charge issued for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRecord {
    /// The payment that clears it (derived from the session).
    pub payment_id: PaymentId,
    /// The session charged.
    pub session_id: SessionKey,
    /// The pre-authorization it is charged under.
    pub authorization_id: AuthorizationKey,
    /// The vehicle.
    pub vehicle_id: String,
    /// The entity paid.
    pub entity_id: String,
    /// The amount, in fen (positive).
    pub amount_fen: i64,
    /// The vehicle's wallet.
    pub payer: Party,
    /// The entity's wallet.
    pub payee: Party,
    /// When the charge became due (exit, pass or report time).
    pub due_at_ms: i64,
}

/// Everything one telemetry batch (or report) changes for one vehicle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleUpdate {
    /// The vehicle.
    pub vehicle_id: String,
    /// The version read (`None`: the vehicle had no record).
    pub expected_version: Option<i64>,
    /// The digest of the batch applied: recognizes a commit retried after a lost answer.
    pub batch_digest: [u8; 32],
    /// The sequence the next batch must start at.
    pub next_sequence: i64,
    /// The new matching state.
    pub state: Vec<u8>,
    /// Sessions opened or closed (upserted by id).
    pub sessions: Vec<SessionRecord>,
    /// Charges issued.
    pub charges: Vec<ChargeRecord>,
}

/// Why a charge of an update was refused (then nothing of the update is applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationRefusal {
    /// No pre-authorization with that id is held.
    Unknown,
    /// It is held for another vehicle or entity.
    Mismatch,
    /// The charge exceeds what remains of it.
    Exceeded {
        /// What remained, in fen.
        remaining_fen: i64,
    },
}

/// The answer to one [`VehicleUpdate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateResult {
    /// Applied; the record is now at `version`.
    Applied {
        /// The new version.
        version: i64,
    },
    /// This very update (same batch digest and next sequence) was applied before.
    AlreadyApplied {
        /// The version it is at.
        version: i64,
    },
    /// The record is not at the expected version: another worker applied something first.
    /// Read again and decide again. Nothing was applied.
    Stale {
        /// The version found (`None`: no record).
        current_version: Option<i64>,
    },
    /// A charge's payment id, or its session, was charged before with other content. Nothing
    /// was applied.
    ChargeConflict {
        /// The payment id in question.
        payment_id: PaymentId,
    },
    /// A charge does not fit its pre-authorization. Nothing was applied.
    AuthorizationRefused {
        /// The pre-authorization named.
        authorization_id: AuthorizationKey,
        /// Why.
        refusal: AuthorizationRefusal,
    },
}

/// The answer to one [`AuthorizationHold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldResult {
    /// Now held.
    Held,
    /// Held before with the same content: nothing changed.
    Duplicate,
    /// Held before with other content: refused.
    Conflict,
}

/// One institution's session store. Object-safe: workers hold an `Arc<dyn SessionStore>`.
///
/// Calls take at most [`STORE_BATCH_ITEMS_MAX`] items and answer one result per item, in
/// order, from one transaction. An `Err` means nothing happened; retrying is safe.
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// The institution the store belongs to.
    fn institution_id(&self) -> &str;

    /// The records of these vehicles, one answer per id, in order, from one snapshot.
    async fn vehicles(
        &self,
        vehicle_ids: &[String],
    ) -> Result<Vec<Option<VehicleRecord>>, LedgerError>;

    /// Applies each update whose vehicle is still at its expected version, with its sessions
    /// and charges, in one transaction; an update whose check fails changes nothing.
    async fn commit(&self, updates: &[VehicleUpdate]) -> Result<Vec<UpdateResult>, LedgerError>;

    /// Holds pre-authorizations (idempotent by id and digest).
    async fn hold(&self, holds: &[AuthorizationHold]) -> Result<Vec<HoldResult>, LedgerError>;

    /// The pre-authorizations held for a vehicle, with what was charged under each, by id.
    async fn authorizations(
        &self,
        vehicle_id: &str,
    ) -> Result<Vec<StoredAuthorization>, LedgerError>;

    /// A session by id.
    async fn session(&self, session_id: &SessionKey) -> Result<Option<SessionRecord>, LedgerError>;

    /// The sessions of a vehicle, by entry time.
    async fn sessions(&self, vehicle_id: &str) -> Result<Vec<SessionRecord>, LedgerError>;

    /// The charges issued to a vehicle, by due time.
    async fn charges(&self, vehicle_id: &str) -> Result<Vec<ChargeRecord>, LedgerError>;

    /// Checks that what each pre-authorization says was charged equals the sum of its charges,
    /// and never exceeds its maximum: an [`LedgerErrorKind::Integrity`] error names the first
    /// difference.
    async fn verify_integrity(&self) -> Result<(), LedgerError>;
}

/// The SQLite file of an institution's session store in a ledger directory.
pub fn sqlite_file_name(institution_id: &str) -> String {
    format!("{institution_id}.vehicles.db")
}

/// Opens (creating and migrating as needed) the session store of `institution_id` beside the
/// ledgers at `url`.
pub async fn open_session_store(
    url: &LedgerUrl,
    institution_id: &str,
    options: &LedgerOptions,
) -> Result<Arc<dyn SessionStore>, LedgerError> {
    validate_institution_id(institution_id)?;
    Ok(match url {
        LedgerUrl::SqliteDir(dir) => Arc::new(
            SqliteSessionStore::open(
                &dir.join(sqlite_file_name(institution_id)),
                institution_id,
                &options.sqlite,
            )
            .await?,
        ),
        LedgerUrl::SqliteMemory => {
            Arc::new(SqliteSessionStore::open_in_memory(institution_id, &options.sqlite).await?)
        }
        LedgerUrl::Postgres(url) => {
            Arc::new(PostgresSessionStore::connect(url, institution_id, &options.postgres).await?)
        }
    })
}

fn invalid(message: impl Into<String>) -> LedgerError {
    LedgerError::new(LedgerErrorKind::InvalidInput, message)
}

/// Checks the bounds of a batch of updates before any database work.
fn check_updates(updates: &[VehicleUpdate]) -> Result<(), LedgerError> {
    if updates.len() > STORE_BATCH_ITEMS_MAX {
        return Err(invalid(format!(
            "{} updates, at most {STORE_BATCH_ITEMS_MAX}",
            updates.len()
        )));
    }
    for update in updates {
        if update.state.len() > VEHICLE_STATE_BYTES_MAX {
            return Err(invalid(format!(
                "state of vehicle {} is {} bytes, at most {VEHICLE_STATE_BYTES_MAX}",
                update.vehicle_id,
                update.state.len()
            )));
        }
        if update.sessions.len() > UPDATE_SESSIONS_MAX || update.charges.len() > UPDATE_SESSIONS_MAX
        {
            return Err(invalid(format!(
                "update of vehicle {} carries {} sessions and {} charges, at most \
                 {UPDATE_SESSIONS_MAX} each",
                update.vehicle_id,
                update.sessions.len(),
                update.charges.len()
            )));
        }
        if let Some(session) = update.sessions.iter().find(|s| {
            s.vehicle_id != update.vehicle_id || s.document.len() > SESSION_DOCUMENT_BYTES_MAX
        }) {
            return Err(invalid(format!(
                "session of vehicle {} in the update of {}, or its document over \
                 {SESSION_DOCUMENT_BYTES_MAX} bytes",
                session.vehicle_id, update.vehicle_id
            )));
        }
        if let Some(charge) = update
            .charges
            .iter()
            .find(|c| c.vehicle_id != update.vehicle_id || c.amount_fen <= 0)
        {
            return Err(invalid(format!(
                "charge of {} fen to vehicle {} in the update of {}",
                charge.amount_fen, charge.vehicle_id, update.vehicle_id
            )));
        }
    }
    Ok(())
}

fn check_holds(holds: &[AuthorizationHold]) -> Result<(), LedgerError> {
    if holds.len() > STORE_BATCH_ITEMS_MAX {
        return Err(invalid(format!(
            "{} holds, at most {STORE_BATCH_ITEMS_MAX}",
            holds.len()
        )));
    }
    if let Some(hold) = holds
        .iter()
        .find(|h| h.max_amount_fen <= 0 || h.expires_at_ms <= h.issued_at_ms)
    {
        return Err(invalid(format!(
            "pre-authorization of {} fen valid from {} to {} ms",
            hold.max_amount_fen, hold.issued_at_ms, hold.expires_at_ms
        )));
    }
    Ok(())
}
