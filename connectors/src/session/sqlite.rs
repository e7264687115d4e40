//! The session store on SQLite: its own file beside the ledger, one writer at a time
//! (`BEGIN IMMEDIATE`), statements prepared once per connection.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::engine::{self, Keys, Working, Writes};
use super::{
    AuthorizationHold, AuthorizationKey, ChargeRecord, HoldResult, SessionKey, SessionRecord,
    SessionStore, StoredAuthorization, UpdateResult, VehicleRecord, VehicleUpdate, check_holds,
    check_updates,
};
use crate::ledger::{
    LedgerError, LedgerErrorKind, Party, PaymentId, SqliteDb, SqliteOptions, claim_owner, db_error,
    now_ms,
};

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE store_meta (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE vehicles (
         vehicle_id TEXT PRIMARY KEY,
         version INTEGER NOT NULL CHECK (version > 0),
         next_sequence INTEGER NOT NULL,
         last_batch_digest BLOB NOT NULL,
         state BLOB NOT NULL,
         updated_ms INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE vehicle_sessions (
         session_id BLOB PRIMARY KEY,
         vehicle_id TEXT NOT NULL,
         entity_id TEXT NOT NULL,
         entity_version INTEGER NOT NULL,
         kind TEXT NOT NULL,
         payee_institution_id TEXT NOT NULL,
         payee_wallet_id TEXT NOT NULL,
         entered_at_ms INTEGER NOT NULL,
         exited_at_ms INTEGER,
         document BLOB NOT NULL,
         updated_ms INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX vehicle_sessions_by_vehicle ON vehicle_sessions (vehicle_id, entered_at_ms);
     CREATE TABLE authorizations (
         authorization_id BLOB PRIMARY KEY,
         digest BLOB NOT NULL,
         vehicle_id TEXT NOT NULL,
         payer_institution_id TEXT NOT NULL,
         payer_wallet_id TEXT NOT NULL,
         entity_id TEXT NOT NULL,
         service_kind TEXT NOT NULL,
         max_amount_fen INTEGER NOT NULL CHECK (max_amount_fen > 0),
         charged_fen INTEGER NOT NULL DEFAULT 0,
         issued_at_ms INTEGER NOT NULL,
         expires_at_ms INTEGER NOT NULL,
         created_ms INTEGER NOT NULL,
         CHECK (charged_fen >= 0 AND charged_fen <= max_amount_fen)
     ) WITHOUT ROWID;
     CREATE INDEX authorizations_by_vehicle ON authorizations (vehicle_id);
     CREATE TABLE charges (
         payment_id BLOB PRIMARY KEY,
         session_id BLOB NOT NULL UNIQUE,
         authorization_id BLOB NOT NULL REFERENCES authorizations (authorization_id),
         vehicle_id TEXT NOT NULL,
         entity_id TEXT NOT NULL,
         amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
         payer_institution_id TEXT NOT NULL,
         payer_wallet_id TEXT NOT NULL,
         payee_institution_id TEXT NOT NULL,
         payee_wallet_id TEXT NOT NULL,
         due_at_ms INTEGER NOT NULL,
         created_ms INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX charges_by_vehicle ON charges (vehicle_id, due_at_ms);",
)];

const VEHICLE_COLUMNS: &str =
    "vehicle_id, version, next_sequence, last_batch_digest, state, updated_ms";
const SESSION_COLUMNS: &str = "session_id, vehicle_id, entity_id, entity_version, kind, \
     payee_institution_id, payee_wallet_id, entered_at_ms, exited_at_ms, document";
const AUTHORIZATION_COLUMNS: &str = "authorization_id, digest, vehicle_id, payer_institution_id, \
     payer_wallet_id, entity_id, service_kind, max_amount_fen, issued_at_ms, expires_at_ms, \
     charged_fen";
const CHARGE_COLUMNS: &str = "payment_id, session_id, authorization_id, vehicle_id, entity_id, \
     amount_fen, payer_institution_id, payer_wallet_id, payee_institution_id, payee_wallet_id, \
     due_at_ms";

fn vehicle_from_row(row: &Row<'_>) -> rusqlite::Result<VehicleRecord> {
    Ok(VehicleRecord {
        vehicle_id: row.get(0)?,
        version: row.get(1)?,
        next_sequence: row.get(2)?,
        last_batch_digest: row.get(3)?,
        state: row.get(4)?,
        updated_ms: row.get(5)?,
    })
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        session_id: row.get(0)?,
        vehicle_id: row.get(1)?,
        entity_id: row.get(2)?,
        entity_version: row.get(3)?,
        kind: row.get(4)?,
        payee: Party {
            institution_id: row.get(5)?,
            wallet_id: row.get(6)?,
        },
        entered_at_ms: row.get(7)?,
        exited_at_ms: row.get(8)?,
        document: row.get(9)?,
    })
}

fn authorization_from_row(row: &Row<'_>) -> rusqlite::Result<StoredAuthorization> {
    Ok(StoredAuthorization {
        hold: AuthorizationHold {
            authorization_id: row.get(0)?,
            digest: row.get(1)?,
            vehicle_id: row.get(2)?,
            payer: Party {
                institution_id: row.get(3)?,
                wallet_id: row.get(4)?,
            },
            entity_id: row.get(5)?,
            service_kind: row.get(6)?,
            max_amount_fen: row.get(7)?,
            issued_at_ms: row.get(8)?,
            expires_at_ms: row.get(9)?,
        },
        charged_fen: row.get(10)?,
    })
}

fn charge_from_row(row: &Row<'_>) -> rusqlite::Result<ChargeRecord> {
    Ok(ChargeRecord {
        payment_id: PaymentId(row.get(0)?),
        session_id: row.get(1)?,
        authorization_id: row.get(2)?,
        vehicle_id: row.get(3)?,
        entity_id: row.get(4)?,
        amount_fen: row.get(5)?,
        payer: Party {
            institution_id: row.get(6)?,
            wallet_id: row.get(7)?,
        },
        payee: Party {
            institution_id: row.get(8)?,
            wallet_id: row.get(9)?,
        },
        due_at_ms: row.get(10)?,
    })
}

fn load(conn: &Connection, keys: &Keys) -> Result<Working, LedgerError> {
    let mut working = Working::default();
    let error = |e| db_error("cannot read the session store", e);
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE vehicle_id = ?1"
        ))
        .map_err(error)?;
    for id in &keys.vehicles {
        if let Some(record) = stmt
            .query_row([id], vehicle_from_row)
            .optional()
            .map_err(error)?
        {
            working.vehicles.insert(id.clone(), record);
        }
    }
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {CHARGE_COLUMNS} FROM charges WHERE payment_id = ?1"
        ))
        .map_err(error)?;
    let mut by_session = conn
        .prepare_cached(&format!(
            "SELECT {CHARGE_COLUMNS} FROM charges WHERE session_id = ?1"
        ))
        .map_err(error)?;
    for payment in &keys.payments {
        if let Some(charge) = stmt
            .query_row([payment.0], charge_from_row)
            .optional()
            .map_err(error)?
        {
            working
                .charged_sessions
                .insert(charge.session_id, charge.payment_id);
            working.charges.insert(charge.payment_id, charge);
        }
    }
    for session in &keys.sessions {
        if let Some(charge) = by_session
            .query_row([session], charge_from_row)
            .optional()
            .map_err(error)?
        {
            working
                .charged_sessions
                .insert(charge.session_id, charge.payment_id);
            working.charges.insert(charge.payment_id, charge);
        }
    }
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {AUTHORIZATION_COLUMNS} FROM authorizations WHERE authorization_id = ?1"
        ))
        .map_err(error)?;
    for id in &keys.authorizations {
        if let Some(authorization) = stmt
            .query_row([id], authorization_from_row)
            .optional()
            .map_err(error)?
        {
            working.authorizations.insert(*id, authorization);
        }
    }
    Ok(working)
}

fn save(
    conn: &Connection,
    working: &Working,
    writes: &Writes,
    now: i64,
) -> Result<(), LedgerError> {
    let error = |e| db_error("cannot write the session store", e);
    let mut upsert_vehicle = conn
        .prepare_cached(&format!(
            "INSERT INTO vehicles ({VEHICLE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (vehicle_id) DO UPDATE SET version = excluded.version,
                 next_sequence = excluded.next_sequence,
                 last_batch_digest = excluded.last_batch_digest,
                 state = excluded.state, updated_ms = excluded.updated_ms"
        ))
        .map_err(error)?;
    for id in writes
        .inserted_vehicles
        .iter()
        .chain(&writes.updated_vehicles)
    {
        let Some(v) = working.vehicles.get(id) else {
            continue;
        };
        upsert_vehicle
            .execute(params![
                v.vehicle_id,
                v.version,
                v.next_sequence,
                v.last_batch_digest,
                v.state,
                v.updated_ms
            ])
            .map_err(error)?;
    }
    let mut upsert_session = conn
        .prepare_cached(&format!(
            "INSERT INTO vehicle_sessions ({SESSION_COLUMNS}, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (session_id) DO UPDATE SET exited_at_ms = excluded.exited_at_ms,
                 document = excluded.document, updated_ms = excluded.updated_ms"
        ))
        .map_err(error)?;
    for s in &writes.sessions {
        upsert_session
            .execute(params![
                s.session_id,
                s.vehicle_id,
                s.entity_id,
                s.entity_version,
                s.kind,
                s.payee.institution_id,
                s.payee.wallet_id,
                s.entered_at_ms,
                s.exited_at_ms,
                s.document,
                now
            ])
            .map_err(error)?;
    }
    let mut insert_charge = conn
        .prepare_cached(&format!(
            "INSERT INTO charges ({CHARGE_COLUMNS}, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ))
        .map_err(error)?;
    for c in &writes.charges {
        insert_charge
            .execute(params![
                c.payment_id.0,
                c.session_id,
                c.authorization_id,
                c.vehicle_id,
                c.entity_id,
                c.amount_fen,
                c.payer.institution_id,
                c.payer.wallet_id,
                c.payee.institution_id,
                c.payee.wallet_id,
                c.due_at_ms,
                now
            ])
            .map_err(error)?;
    }
    let mut charged = conn
        .prepare_cached("UPDATE authorizations SET charged_fen = ?2 WHERE authorization_id = ?1")
        .map_err(error)?;
    for id in &writes.authorizations {
        if let Some(a) = working.authorizations.get(id) {
            charged.execute(params![id, a.charged_fen]).map_err(error)?;
        }
    }
    Ok(())
}

/// An institution's session store in a SQLite file of its own.
#[derive(Debug, Clone)]
pub struct SqliteSessionStore {
    institution_id: String,
    db: SqliteDb,
}

impl SqliteSessionStore {
    /// Opens or creates the store file at `path` for `institution_id`.
    pub async fn open(
        path: &Path,
        institution_id: &str,
        options: &SqliteOptions,
    ) -> Result<Self, LedgerError> {
        Self::open_at(Some(path.to_owned()), institution_id, options).await
    }

    /// A private in-memory store (tests): gone when the last clone is dropped.
    pub async fn open_in_memory(
        institution_id: &str,
        options: &SqliteOptions,
    ) -> Result<Self, LedgerError> {
        Self::open_at(None, institution_id, options).await
    }

    async fn open_at(
        path: Option<PathBuf>,
        institution_id: &str,
        options: &SqliteOptions,
    ) -> Result<Self, LedgerError> {
        crate::ledger::validate_institution_id(institution_id)?;
        let db = SqliteDb::open(path, *options, MIGRATIONS).await?;
        let institution = institution_id.to_owned();
        db.run(move |conn| claim_owner(conn, "store_meta", &institution))
            .await?;
        Ok(SqliteSessionStore {
            institution_id: institution_id.to_owned(),
            db,
        })
    }
}

impl SqliteSessionStore {
    /// The rows `sql` (with the vehicle id as `?1`) selects, read with `from_row`.
    async fn of_vehicle<T: Send + 'static>(
        &self,
        sql: String,
        vehicle_id: &str,
        from_row: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, LedgerError> {
        let id = vehicle_id.to_owned();
        self.db
            .run(move |conn| {
                let error = |e| db_error("cannot read the session store", e);
                let mut stmt = conn.prepare_cached(&sql).map_err(error)?;
                let rows = stmt.query_map([id], from_row).map_err(error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(error)
            })
            .await
    }
}

#[async_trait]
impl SessionStore for SqliteSessionStore {
    fn institution_id(&self) -> &str {
        &self.institution_id
    }

    async fn vehicles(
        &self,
        vehicle_ids: &[String],
    ) -> Result<Vec<Option<VehicleRecord>>, LedgerError> {
        if vehicle_ids.len() > super::STORE_BATCH_ITEMS_MAX {
            return Err(super::invalid("too many vehicle ids"));
        }
        let ids = vehicle_ids.to_vec();
        self.db
            .run(move |conn| {
                let tx = conn
                    .transaction()
                    .map_err(|e| db_error("cannot read vehicles", e))?;
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE vehicle_id = ?1"
                    ))
                    .map_err(|e| db_error("cannot read vehicles", e))?;
                let mut records = Vec::with_capacity(ids.len());
                for id in &ids {
                    records.push(
                        stmt.query_row([id], vehicle_from_row)
                            .optional()
                            .map_err(|e| db_error("cannot read vehicles", e))?,
                    );
                }
                Ok(records)
            })
            .await
    }

    async fn commit(&self, updates: &[VehicleUpdate]) -> Result<Vec<UpdateResult>, LedgerError> {
        check_updates(updates)?;
        let updates = updates.to_vec();
        self.db
            .run(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| db_error("cannot start transaction", e))?;
                let mut working = load(&tx, &engine::keys(&updates))?;
                let now = now_ms();
                let (results, writes) = engine::decide(&mut working, &updates, now);
                save(&tx, &working, &writes, now)?;
                tx.commit()
                    .map_err(|e| db_error("cannot commit the session store", e))?;
                Ok(results)
            })
            .await
    }

    async fn hold(&self, holds: &[AuthorizationHold]) -> Result<Vec<HoldResult>, LedgerError> {
        check_holds(holds)?;
        let holds = holds.to_vec();
        self.db
            .run(move |conn| {
                let error = |e| db_error("cannot hold pre-authorizations", e);
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(error)?;
                let now = now_ms();
                let mut results = Vec::with_capacity(holds.len());
                {
                    let mut find = tx
                        .prepare_cached(
                            "SELECT digest FROM authorizations WHERE authorization_id = ?1",
                        )
                        .map_err(error)?;
                    let mut insert = tx
                        .prepare_cached(&format!(
                            "INSERT INTO authorizations ({AUTHORIZATION_COLUMNS}, created_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11)"
                        ))
                        .map_err(error)?;
                    for h in &holds {
                        let digest: Option<[u8; 32]> = find
                            .query_row([h.authorization_id], |row| row.get(0))
                            .optional()
                            .map_err(error)?;
                        results.push(match digest {
                            Some(d) if d == h.digest => HoldResult::Duplicate,
                            Some(_) => HoldResult::Conflict,
                            None => {
                                insert
                                    .execute(params![
                                        h.authorization_id,
                                        h.digest,
                                        h.vehicle_id,
                                        h.payer.institution_id,
                                        h.payer.wallet_id,
                                        h.entity_id,
                                        h.service_kind,
                                        h.max_amount_fen,
                                        h.issued_at_ms,
                                        h.expires_at_ms,
                                        now
                                    ])
                                    .map_err(error)?;
                                HoldResult::Held
                            }
                        });
                    }
                }
                tx.commit().map_err(error)?;
                Ok(results)
            })
            .await
    }

    async fn authorizations(
        &self,
        vehicle_id: &str,
    ) -> Result<Vec<StoredAuthorization>, LedgerError> {
        self.of_vehicle(
            format!(
                "SELECT {AUTHORIZATION_COLUMNS} FROM authorizations
                 WHERE vehicle_id = ?1 ORDER BY authorization_id"
            ),
            vehicle_id,
            authorization_from_row,
        )
        .await
    }

    async fn session(&self, session_id: &SessionKey) -> Result<Option<SessionRecord>, LedgerError> {
        let id = *session_id;
        self.db
            .run(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM vehicle_sessions WHERE session_id = ?1"
                ))
                .and_then(|mut stmt| stmt.query_row([id], session_from_row).optional())
                .map_err(|e| db_error("cannot read a session", e))
            })
            .await
    }

    async fn sessions(&self, vehicle_id: &str) -> Result<Vec<SessionRecord>, LedgerError> {
        self.of_vehicle(
            format!(
                "SELECT {SESSION_COLUMNS} FROM vehicle_sessions
                 WHERE vehicle_id = ?1 ORDER BY entered_at_ms, session_id"
            ),
            vehicle_id,
            session_from_row,
        )
        .await
    }

    async fn charges(&self, vehicle_id: &str) -> Result<Vec<ChargeRecord>, LedgerError> {
        self.of_vehicle(
            format!(
                "SELECT {CHARGE_COLUMNS} FROM charges
                 WHERE vehicle_id = ?1 ORDER BY due_at_ms, payment_id"
            ),
            vehicle_id,
            charge_from_row,
        )
        .await
    }

    async fn verify_integrity(&self) -> Result<(), LedgerError> {
        self.db
            .run(|conn| {
                let found: Option<(AuthorizationKey, i64, i64)> = conn
                    .query_row(
                        "SELECT a.authorization_id, a.charged_fen,
                                COALESCE((SELECT SUM(c.amount_fen) FROM charges c
                                          WHERE c.authorization_id = a.authorization_id), 0)
                         FROM authorizations a
                         WHERE a.charged_fen <> COALESCE((SELECT SUM(c.amount_fen) FROM charges c
                                          WHERE c.authorization_id = a.authorization_id), 0)
                            OR a.charged_fen > a.max_amount_fen
                         LIMIT 1",
                        [],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )
                    .optional()
                    .map_err(|e| db_error("cannot verify the session store", e))?;
                match found {
                    None => Ok(()),
                    Some((id, recorded, summed)) => Err(LedgerError::new(
                        LedgerErrorKind::Integrity,
                        format!(
                            "pre-authorization {} records {recorded} fen charged, its charges \
                             sum to {summed} fen (or it exceeds its maximum)",
                            hex::encode(id)
                        ),
                    )),
                }
            })
            .await
    }
}
