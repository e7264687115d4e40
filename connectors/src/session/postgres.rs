//! The session store on PostgreSQL: the schema `dcpipe_vehicle_<institution>`, the rows of a
//! batch locked in a fixed order (vehicles, then pre-authorizations, each by id), bounded
//! retries of deadlocks, serialization failures and concurrent first inserts.

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::engine::{self, Keys, Working, Writes};
use super::{
    AuthorizationHold, ChargeRecord, HoldResult, SessionKey, SessionRecord, SessionStore,
    StoredAuthorization, UpdateResult, VehicleRecord, VehicleUpdate, check_holds, check_updates,
};
use crate::ledger::{
    AttemptError, LedgerError, LedgerErrorKind, Party, PaymentId, PgDb, PostgresOptions, now_ms,
    pg_error, with_retries,
};

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE {s}.store_meta (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );
     CREATE TABLE {s}.vehicles (
         vehicle_id TEXT PRIMARY KEY,
         version BIGINT NOT NULL CHECK (version > 0),
         next_sequence BIGINT NOT NULL,
         last_batch_digest BYTEA NOT NULL,
         state BYTEA NOT NULL,
         updated_ms BIGINT NOT NULL
     );
     CREATE TABLE {s}.vehicle_sessions (
         session_id BYTEA PRIMARY KEY,
         vehicle_id TEXT NOT NULL,
         entity_id TEXT NOT NULL,
         entity_version BIGINT NOT NULL,
         kind TEXT NOT NULL,
         payee_institution_id TEXT NOT NULL,
         payee_wallet_id TEXT NOT NULL,
         entered_at_ms BIGINT NOT NULL,
         exited_at_ms BIGINT,
         document BYTEA NOT NULL,
         updated_ms BIGINT NOT NULL
     );
     CREATE INDEX vehicle_sessions_by_vehicle ON {s}.vehicle_sessions (vehicle_id, entered_at_ms);
     CREATE TABLE {s}.authorizations (
         authorization_id BYTEA PRIMARY KEY,
         digest BYTEA NOT NULL,
         vehicle_id TEXT NOT NULL,
         payer_institution_id TEXT NOT NULL,
         payer_wallet_id TEXT NOT NULL,
         entity_id TEXT NOT NULL,
         service_kind TEXT NOT NULL,
         max_amount_fen BIGINT NOT NULL CHECK (max_amount_fen > 0),
         charged_fen BIGINT NOT NULL DEFAULT 0,
         issued_at_ms BIGINT NOT NULL,
         expires_at_ms BIGINT NOT NULL,
         created_ms BIGINT NOT NULL,
         CHECK (charged_fen >= 0 AND charged_fen <= max_amount_fen)
     );
     CREATE INDEX authorizations_by_vehicle ON {s}.authorizations (vehicle_id);
     CREATE TABLE {s}.charges (
         payment_id BYTEA PRIMARY KEY,
         session_id BYTEA NOT NULL UNIQUE,
         authorization_id BYTEA NOT NULL REFERENCES {s}.authorizations (authorization_id),
         vehicle_id TEXT NOT NULL,
         entity_id TEXT NOT NULL,
         amount_fen BIGINT NOT NULL CHECK (amount_fen > 0),
         payer_institution_id TEXT NOT NULL,
         payer_wallet_id TEXT NOT NULL,
         payee_institution_id TEXT NOT NULL,
         payee_wallet_id TEXT NOT NULL,
         due_at_ms BIGINT NOT NULL,
         created_ms BIGINT NOT NULL
     );
     CREATE INDEX charges_by_vehicle ON {s}.charges (vehicle_id, due_at_ms);",
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

fn column_error(context: &str, err: tokio_postgres::Error) -> LedgerError {
    pg_error(context, err)
}

fn fixed<const N: usize>(row: &Row, index: usize) -> Result<[u8; N], LedgerError> {
    let bytes: Vec<u8> = row
        .try_get(index)
        .map_err(|e| column_error("cannot read a column", e))?;
    bytes.try_into().map_err(|bytes: Vec<u8>| {
        LedgerError::new(
            LedgerErrorKind::Integrity,
            format!("column {index} holds {} bytes, expected {N}", bytes.len()),
        )
    })
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> Result<T, LedgerError> {
    row.try_get(index)
        .map_err(|e| column_error("cannot read a column", e))
}

fn vehicle_from_row(row: &Row) -> Result<VehicleRecord, LedgerError> {
    Ok(VehicleRecord {
        vehicle_id: get(row, 0)?,
        version: get(row, 1)?,
        next_sequence: get(row, 2)?,
        last_batch_digest: fixed(row, 3)?,
        state: get(row, 4)?,
        updated_ms: get(row, 5)?,
    })
}

fn session_from_row(row: &Row) -> Result<SessionRecord, LedgerError> {
    Ok(SessionRecord {
        session_id: fixed(row, 0)?,
        vehicle_id: get(row, 1)?,
        entity_id: get(row, 2)?,
        entity_version: get(row, 3)?,
        kind: get(row, 4)?,
        payee: Party {
            institution_id: get(row, 5)?,
            wallet_id: get(row, 6)?,
        },
        entered_at_ms: get(row, 7)?,
        exited_at_ms: get(row, 8)?,
        document: get(row, 9)?,
    })
}

fn authorization_from_row(row: &Row) -> Result<StoredAuthorization, LedgerError> {
    Ok(StoredAuthorization {
        hold: AuthorizationHold {
            authorization_id: fixed(row, 0)?,
            digest: fixed(row, 1)?,
            vehicle_id: get(row, 2)?,
            payer: Party {
                institution_id: get(row, 3)?,
                wallet_id: get(row, 4)?,
            },
            entity_id: get(row, 5)?,
            service_kind: get(row, 6)?,
            max_amount_fen: get(row, 7)?,
            issued_at_ms: get(row, 8)?,
            expires_at_ms: get(row, 9)?,
        },
        charged_fen: get(row, 10)?,
    })
}

fn charge_from_row(row: &Row) -> Result<ChargeRecord, LedgerError> {
    Ok(ChargeRecord {
        payment_id: PaymentId(fixed(row, 0)?),
        session_id: fixed(row, 1)?,
        authorization_id: fixed(row, 2)?,
        vehicle_id: get(row, 3)?,
        entity_id: get(row, 4)?,
        amount_fen: get(row, 5)?,
        payer: Party {
            institution_id: get(row, 6)?,
            wallet_id: get(row, 7)?,
        },
        payee: Party {
            institution_id: get(row, 8)?,
            wallet_id: get(row, 9)?,
        },
        due_at_ms: get(row, 10)?,
    })
}

/// An institution's session store in its own schema of a PostgreSQL database.
#[derive(Debug)]
pub struct PostgresSessionStore {
    institution_id: String,
    db: PgDb,
}

impl PostgresSessionStore {
    /// Connects to `url` and opens (creating and migrating as needed) the schema
    /// `dcpipe_vehicle_<institution_id>`.
    pub async fn connect(
        url: &str,
        institution_id: &str,
        options: &PostgresOptions,
    ) -> Result<Self, LedgerError> {
        crate::ledger::validate_institution_id(institution_id)?;
        let db = PgDb::connect(
            url,
            &format!("vehicle_{institution_id}"),
            options,
            MIGRATIONS,
        )
        .await?;
        let store = PostgresSessionStore {
            institution_id: institution_id.to_owned(),
            db,
        };
        store
            .db
            .claim_owner("store_meta", &store.institution_id)
            .await?;
        Ok(store)
    }

    async fn load(&self, tx: &Transaction<'_>, keys: &Keys) -> Result<Working, AttemptError> {
        let mut working = Working::default();
        if !keys.vehicles.is_empty() {
            let ids: Vec<&str> = keys.vehicles.iter().map(String::as_str).collect();
            let stmt = tx
                .prepare_cached(&self.db.sql(&format!(
                    "SELECT {VEHICLE_COLUMNS} FROM {{s}}.vehicles WHERE vehicle_id = ANY($1)
                     ORDER BY vehicle_id FOR UPDATE"
                )))
                .await?;
            for row in tx.query(&stmt, &[&ids]).await? {
                let record = vehicle_from_row(&row)?;
                working.vehicles.insert(record.vehicle_id.clone(), record);
            }
        }
        if !keys.payments.is_empty() {
            let payments: Vec<&[u8]> = keys.payments.iter().map(|p| p.0.as_slice()).collect();
            let sessions: Vec<&[u8]> = keys.sessions.iter().map(|s| s.as_slice()).collect();
            let stmt = tx
                .prepare_cached(&self.db.sql(&format!(
                    "SELECT {CHARGE_COLUMNS} FROM {{s}}.charges
                     WHERE payment_id = ANY($1) OR session_id = ANY($2)"
                )))
                .await?;
            for row in tx.query(&stmt, &[&payments, &sessions]).await? {
                let charge = charge_from_row(&row)?;
                working
                    .charged_sessions
                    .insert(charge.session_id, charge.payment_id);
                working.charges.insert(charge.payment_id, charge);
            }
        }
        if !keys.authorizations.is_empty() {
            let ids: Vec<&[u8]> = keys.authorizations.iter().map(|a| a.as_slice()).collect();
            let stmt = tx
                .prepare_cached(&self.db.sql(&format!(
                    "SELECT {AUTHORIZATION_COLUMNS} FROM {{s}}.authorizations
                     WHERE authorization_id = ANY($1) ORDER BY authorization_id FOR UPDATE"
                )))
                .await?;
            for row in tx.query(&stmt, &[&ids]).await? {
                let authorization = authorization_from_row(&row)?;
                working
                    .authorizations
                    .insert(authorization.hold.authorization_id, authorization);
            }
        }
        Ok(working)
    }

    async fn save(
        &self,
        tx: &Transaction<'_>,
        working: &Working,
        writes: &Writes,
        now: i64,
    ) -> Result<(), AttemptError> {
        let insert = tx
            .prepare_cached(&self.db.sql(&format!(
                "INSERT INTO {{s}}.vehicles ({VEHICLE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
            )))
            .await?;
        let update = tx
            .prepare_cached(&self.db.sql(
                "UPDATE {s}.vehicles SET version = $2, next_sequence = $3,
                     last_batch_digest = $4, state = $5, updated_ms = $6
                 WHERE vehicle_id = $1",
            ))
            .await?;
        for (ids, stmt) in [
            (&writes.inserted_vehicles, &insert),
            (&writes.updated_vehicles, &update),
        ] {
            for id in ids {
                if let Some(v) = working.vehicles.get(id) {
                    tx.execute(
                        stmt,
                        &[
                            &v.vehicle_id,
                            &v.version,
                            &v.next_sequence,
                            &v.last_batch_digest.as_slice(),
                            &v.state,
                            &v.updated_ms,
                        ],
                    )
                    .await?;
                }
            }
        }
        if !writes.sessions.is_empty() {
            let stmt = tx
                .prepare_cached(&self.db.sql(&format!(
                    "INSERT INTO {{s}}.vehicle_sessions ({SESSION_COLUMNS}, updated_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (session_id) DO UPDATE SET exited_at_ms = excluded.exited_at_ms,
                         document = excluded.document, updated_ms = excluded.updated_ms"
                )))
                .await?;
            for s in &writes.sessions {
                tx.execute(
                    &stmt,
                    &[
                        &s.session_id.as_slice(),
                        &s.vehicle_id,
                        &s.entity_id,
                        &s.entity_version,
                        &s.kind,
                        &s.payee.institution_id,
                        &s.payee.wallet_id,
                        &s.entered_at_ms,
                        &s.exited_at_ms,
                        &s.document,
                        &now,
                    ],
                )
                .await?;
            }
        }
        if !writes.charges.is_empty() {
            let stmt = tx
                .prepare_cached(&self.db.sql(&format!(
                    "INSERT INTO {{s}}.charges ({CHARGE_COLUMNS}, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                )))
                .await?;
            for c in &writes.charges {
                tx.execute(
                    &stmt,
                    &[
                        &c.payment_id.0.as_slice(),
                        &c.session_id.as_slice(),
                        &c.authorization_id.as_slice(),
                        &c.vehicle_id,
                        &c.entity_id,
                        &c.amount_fen,
                        &c.payer.institution_id,
                        &c.payer.wallet_id,
                        &c.payee.institution_id,
                        &c.payee.wallet_id,
                        &c.due_at_ms,
                        &now,
                    ],
                )
                .await?;
            }
        }
        if !writes.authorizations.is_empty() {
            let stmt = tx
                .prepare_cached(&self.db.sql(
                    "UPDATE {s}.authorizations SET charged_fen = $2 WHERE authorization_id = $1",
                ))
                .await?;
            for id in &writes.authorizations {
                if let Some(a) = working.authorizations.get(id) {
                    tx.execute(&stmt, &[&id.as_slice(), &a.charged_fen]).await?;
                }
            }
        }
        Ok(())
    }

    async fn commit_attempt(
        &self,
        updates: &[VehicleUpdate],
    ) -> Result<Vec<UpdateResult>, AttemptError> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let mut working = self.load(&tx, &engine::keys(updates)).await?;
        let now = now_ms();
        let (results, writes) = engine::decide(&mut working, updates, now);
        self.save(&tx, &working, &writes, now).await?;
        tx.commit().await?;
        Ok(results)
    }

    async fn hold_attempt(
        &self,
        holds: &[AuthorizationHold],
    ) -> Result<Vec<HoldResult>, AttemptError> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let find = tx
            .prepare_cached(
                &self
                    .db
                    .sql("SELECT digest FROM {s}.authorizations WHERE authorization_id = $1"),
            )
            .await?;
        let insert = tx
            .prepare_cached(&self.db.sql(&format!(
                "INSERT INTO {{s}}.authorizations ({AUTHORIZATION_COLUMNS}, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11)"
            )))
            .await?;
        let now = now_ms();
        let mut results = Vec::with_capacity(holds.len());
        for h in holds {
            let found = tx
                .query_opt(&find, &[&h.authorization_id.as_slice()])
                .await?;
            results.push(match found {
                Some(row) if fixed::<32>(&row, 0)? == h.digest => HoldResult::Duplicate,
                Some(_) => HoldResult::Conflict,
                None => {
                    tx.execute(
                        &insert,
                        &[
                            &h.authorization_id.as_slice(),
                            &h.digest.as_slice(),
                            &h.vehicle_id,
                            &h.payer.institution_id,
                            &h.payer.wallet_id,
                            &h.entity_id,
                            &h.service_kind,
                            &h.max_amount_fen,
                            &h.issued_at_ms,
                            &h.expires_at_ms,
                            &now,
                        ],
                    )
                    .await?;
                    HoldResult::Held
                }
            });
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn query_all<T>(
        &self,
        sql: &str,
        param: &(dyn tokio_postgres::types::ToSql + Sync),
        from_row: fn(&Row) -> Result<T, LedgerError>,
    ) -> Result<Vec<T>, LedgerError> {
        let client = self.db.client().await?;
        let rows = client
            .query(&self.db.sql(sql), &[param])
            .await
            .map_err(|e| pg_error("cannot read the session store", e))?;
        rows.iter().map(from_row).collect()
    }
}

#[async_trait]
impl SessionStore for PostgresSessionStore {
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
        let found = self
            .query_all(
                &format!("SELECT {VEHICLE_COLUMNS} FROM {{s}}.vehicles WHERE vehicle_id = ANY($1)"),
                &vehicle_ids,
                vehicle_from_row,
            )
            .await?;
        Ok(vehicle_ids
            .iter()
            .map(|id| found.iter().find(|v| &v.vehicle_id == id).cloned())
            .collect())
    }

    async fn commit(&self, updates: &[VehicleUpdate]) -> Result<Vec<UpdateResult>, LedgerError> {
        check_updates(updates)?;
        with_retries("vehicle commit", || async move {
            self.commit_attempt(updates).await
        })
        .await
    }

    async fn hold(&self, holds: &[AuthorizationHold]) -> Result<Vec<HoldResult>, LedgerError> {
        check_holds(holds)?;
        with_retries("pre-authorization hold", || async move {
            self.hold_attempt(holds).await
        })
        .await
    }

    async fn authorizations(
        &self,
        vehicle_id: &str,
    ) -> Result<Vec<StoredAuthorization>, LedgerError> {
        self.query_all(
            &format!(
                "SELECT {AUTHORIZATION_COLUMNS} FROM {{s}}.authorizations
                 WHERE vehicle_id = $1 ORDER BY authorization_id"
            ),
            &vehicle_id,
            authorization_from_row,
        )
        .await
    }

    async fn session(&self, session_id: &SessionKey) -> Result<Option<SessionRecord>, LedgerError> {
        let found = self
            .query_all(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM {{s}}.vehicle_sessions WHERE session_id = $1"
                ),
                &session_id.as_slice(),
                session_from_row,
            )
            .await?;
        Ok(found.into_iter().next())
    }

    async fn sessions(&self, vehicle_id: &str) -> Result<Vec<SessionRecord>, LedgerError> {
        self.query_all(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM {{s}}.vehicle_sessions
                 WHERE vehicle_id = $1 ORDER BY entered_at_ms, session_id"
            ),
            &vehicle_id,
            session_from_row,
        )
        .await
    }

    async fn charges(&self, vehicle_id: &str) -> Result<Vec<ChargeRecord>, LedgerError> {
        self.query_all(
            &format!(
                "SELECT {CHARGE_COLUMNS} FROM {{s}}.charges
                 WHERE vehicle_id = $1 ORDER BY due_at_ms, payment_id"
            ),
            &vehicle_id,
            charge_from_row,
        )
        .await
    }

    async fn verify_integrity(&self) -> Result<(), LedgerError> {
        let client = self.db.client().await?;
        let found = client
            .query_opt(
                &self.db.sql(
                    "SELECT a.authorization_id, a.charged_fen, COALESCE(SUM(c.amount_fen), 0)::BIGINT
                     FROM {s}.authorizations a
                     LEFT JOIN {s}.charges c ON c.authorization_id = a.authorization_id
                     GROUP BY a.authorization_id, a.charged_fen, a.max_amount_fen
                     HAVING a.charged_fen <> COALESCE(SUM(c.amount_fen), 0)
                         OR a.charged_fen > a.max_amount_fen
                     LIMIT 1",
                ),
                &[],
            )
            .await
            .map_err(|e| pg_error("cannot verify the session store", e))?;
        match found {
            None => Ok(()),
            Some(row) => {
                let id: [u8; 16] = fixed(&row, 0)?;
                let recorded: i64 = get(&row, 1)?;
                let summed: i64 = get(&row, 2)?;
                Err(LedgerError::new(
                    LedgerErrorKind::Integrity,
                    format!(
                        "pre-authorization {} records {recorded} fen charged, its charges sum \
                         to {summed} fen (or it exceeds its maximum)",
                        hex::encode(id)
                    ),
                ))
            }
        }
    }
}
