//! The offline side of the PostgreSQL ledger (see `offline` for the rules). Writes lock the
//! rows they read (`FOR UPDATE`), in one transaction each, retried on conflicts.

use async_trait::async_trait;
use tokio_postgres::{Row, Transaction};

use super::error::{LedgerError, LedgerErrorKind};
use super::now_ms;
use super::offline::{
    self, COMMANDS_LIST_MAX, FundingRefusal, FundingResult, OfflineClearing, OfflineCommit,
    OfflineLedger, OfflineOpenResult, OfflineOpening, OfflineRecord, OfflineTerms, OfflineTotals,
    OfflineUpdate, PurseFunding, QueueResult, QueuedCommand, VoidedReturn, purse_wallet_id,
};
use super::offline::{CLEARING_COLUMNS, COMMAND_COLUMNS, RECORD_COLUMNS};
use super::postgres::{AttemptError, PgDb, PostgresLedger, pg_error, with_retries};
use super::types::{AMOUNT_FEN_MAX, PaymentId};

/// Migration 5 of the ledger: when a voided offline payment's money was given back.
pub(crate) const MIGRATION_RETURNS: &str =
    "ALTER TABLE {s}.offline_clearings ADD COLUMN returned_ms BIGINT;";

/// Migration 6 of the ledger: since when the institution orders a wallet to rotate its key.
pub(crate) const MIGRATION_ROTATION: &str =
    "ALTER TABLE {s}.offline_wallets ADD COLUMN rotation_ordered_at_ms BIGINT;";

/// Migration 4 of the ledger.
pub(crate) const MIGRATION: &str = "CREATE TABLE {s}.offline_wallets (
         wallet_id TEXT PRIMARY KEY,
         version BIGINT NOT NULL CHECK (version > 0),
         key_version INTEGER NOT NULL,
         key_fingerprint BYTEA NOT NULL,
         last_sync_at_ms BIGINT NOT NULL,
         counter BIGINT NOT NULL,
         chain_head BYTEA NOT NULL,
         purse_fen BIGINT NOT NULL CHECK (purse_fen >= 0),
         funded_fen BIGINT NOT NULL CHECK (funded_fen >= 0),
         purse_limit_fen BIGINT NOT NULL,
         single_payment_limit_fen BIGINT NOT NULL,
         cumulative_limit_fen BIGINT NOT NULL,
         payments_per_sync_max BIGINT NOT NULL,
         offline_duration_ms_max BIGINT NOT NULL,
         locked_at_ms BIGINT,
         blacklisted_at_ms BIGINT,
         last_key_set BYTEA,
         commands_applied_through BIGINT NOT NULL,
         blacklist_version BIGINT NOT NULL,
         last_answer BYTEA,
         updated_ms BIGINT NOT NULL
     );
     CREATE TABLE {s}.purse_fundings (
         funding_id BYTEA PRIMARY KEY,
         wallet_id TEXT NOT NULL,
         amount_fen BIGINT NOT NULL CHECK (amount_fen > 0),
         funded_ms BIGINT NOT NULL
     );
     CREATE TABLE {s}.offline_clearings (
         payment_id BYTEA PRIMARY KEY,
         digest BYTEA NOT NULL,
         payer_wallet_id TEXT NOT NULL,
         counter BIGINT NOT NULL,
         payee_institution_id TEXT NOT NULL,
         payee_wallet_id TEXT NOT NULL,
         amount_fen BIGINT NOT NULL CHECK (amount_fen > 0),
         from_purse_fen BIGINT NOT NULL CHECK (from_purse_fen >= 0),
         from_loss_fen BIGINT NOT NULL CHECK (from_loss_fen >= 0),
         evidence TEXT,
         paid_at_ms BIGINT NOT NULL,
         frame BYTEA NOT NULL,
         cleared_ms BIGINT NOT NULL,
         CHECK (from_purse_fen + from_loss_fen = amount_fen)
     );
     CREATE INDEX offline_clearings_by_payer ON {s}.offline_clearings (payer_wallet_id, counter);
     CREATE TABLE {s}.offline_loss (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         balance_fen BIGINT NOT NULL CHECK (balance_fen <= 0)
     );
     INSERT INTO {s}.offline_loss (id, balance_fen) VALUES (1, 0);
     CREATE TABLE {s}.wallet_commands (
         command_id BYTEA PRIMARY KEY,
         wallet_id TEXT NOT NULL,
         sequence BIGINT NOT NULL CHECK (sequence > 0),
         kind TEXT NOT NULL,
         frame BYTEA NOT NULL,
         issued_at_ms BIGINT NOT NULL,
         UNIQUE (wallet_id, sequence)
     );
     CREATE TABLE {s}.wallet_blacklist (
         wallet_id TEXT PRIMARY KEY,
         position BIGINT NOT NULL UNIQUE,
         listed_at_ms BIGINT NOT NULL
     );";

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> Result<T, LedgerError> {
    row.try_get(index)
        .map_err(|e| pg_error("cannot read a column", e))
}

fn fixed<const N: usize>(bytes: Vec<u8>) -> Result<[u8; N], LedgerError> {
    bytes.try_into().map_err(|bytes: Vec<u8>| {
        LedgerError::new(
            LedgerErrorKind::Integrity,
            format!("a column holds {} bytes, expected {N}", bytes.len()),
        )
    })
}

fn record_from_row(row: &Row) -> Result<OfflineRecord, LedgerError> {
    Ok(OfflineRecord {
        wallet_id: get(row, 0)?,
        version: get(row, 1)?,
        key_version: get(row, 2)?,
        key_fingerprint: fixed(get(row, 3)?)?,
        last_sync_at_ms: get(row, 4)?,
        counter: get(row, 5)?,
        chain_head: fixed(get(row, 6)?)?,
        purse_fen: get(row, 7)?,
        funded_fen: get(row, 8)?,
        limits: OfflineTerms {
            purse_limit_fen: get(row, 9)?,
            single_payment_limit_fen: get(row, 10)?,
            cumulative_limit_fen: get(row, 11)?,
            payments_per_sync_max: get(row, 12)?,
            offline_duration_ms_max: get(row, 13)?,
        },
        locked_at_ms: get(row, 14)?,
        blacklisted_at_ms: get(row, 15)?,
        last_key_set: get::<Option<Vec<u8>>>(row, 16)?.map(fixed).transpose()?,
        commands_applied_through: get(row, 17)?,
        blacklist_version: get(row, 18)?,
        last_answer: get(row, 19)?,
        rotation_ordered_at_ms: get(row, 20)?,
    })
}

fn clearing_from_row(row: &Row) -> Result<OfflineClearing, LedgerError> {
    Ok(OfflineClearing {
        payment_id: PaymentId(fixed(get(row, 0)?)?),
        digest: fixed(get(row, 1)?)?,
        payer_wallet_id: get(row, 2)?,
        counter: get(row, 3)?,
        payee_institution_id: get(row, 4)?,
        payee_wallet_id: get(row, 5)?,
        amount_fen: get(row, 6)?,
        from_purse_fen: get(row, 7)?,
        from_loss_fen: get(row, 8)?,
        evidence: get(row, 9)?,
        paid_at_ms: get(row, 10)?,
        frame: get(row, 11)?,
    })
}

fn command_from_row(row: &Row) -> Result<QueuedCommand, LedgerError> {
    Ok(QueuedCommand {
        command_id: fixed(get(row, 0)?)?,
        wallet_id: get(row, 1)?,
        sequence: get(row, 2)?,
        kind: get(row, 3)?,
        frame: get(row, 4)?,
        issued_at_ms: get(row, 5)?,
    })
}

async fn load_record(
    db: &PgDb,
    tx: &Transaction<'_>,
    wallet_id: &str,
    lock: bool,
) -> Result<Option<OfflineRecord>, AttemptError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let sql = db.sql(&format!(
        "SELECT {RECORD_COLUMNS} FROM {{s}}.offline_wallets WHERE wallet_id = $1{lock}"
    ));
    let row = tx.query_opt(&sql, &[&wallet_id]).await?;
    Ok(row.as_ref().map(record_from_row).transpose()?)
}

async fn add_balance(
    db: &PgDb,
    tx: &Transaction<'_>,
    wallet_id: &str,
    amount_fen: i64,
) -> Result<(), AttemptError> {
    let changed = tx
        .execute(
            &db.sql(
                "UPDATE {s}.wallets SET balance_fen = balance_fen + $2, updated_ms = $3
                 WHERE wallet_id = $1",
            ),
            &[&wallet_id, &amount_fen, &now_ms()],
        )
        .await?;
    if changed != 1 {
        return Err(AttemptError::Ledger(LedgerError::integrity(format!(
            "wallet {wallet_id} vanished while money moved"
        ))));
    }
    Ok(())
}

async fn append_blacklist(
    db: &PgDb,
    tx: &Transaction<'_>,
    wallet_id: &str,
    at_ms: i64,
) -> Result<(), AttemptError> {
    // Positions are taken under a lock of the list, so concurrent listings queue.
    tx.execute(
        &db.sql("LOCK TABLE {s}.wallet_blacklist IN SHARE ROW EXCLUSIVE MODE"),
        &[],
    )
    .await?;
    tx.execute(
        &db.sql(
            "INSERT INTO {s}.wallet_blacklist (wallet_id, position, listed_at_ms)
             SELECT $1, COALESCE(MAX(position), 0) + 1, $2 FROM {s}.wallet_blacklist
             ON CONFLICT (wallet_id) DO NOTHING",
        ),
        &[&wallet_id, &at_ms],
    )
    .await?;
    Ok(())
}

impl PostgresLedger {
    async fn open_attempt(
        &self,
        openings: &[OfflineOpening],
    ) -> Result<Vec<OfflineOpenResult>, AttemptError> {
        let db = &self.db;
        let mut client = db.client().await?;
        let tx = client.transaction().await?;
        let mut results = Vec::with_capacity(openings.len());
        for o in openings {
            if let Some(stored) = load_record(db, &tx, &o.wallet_id, true).await? {
                let same = stored.key_version == o.key_version
                    && stored.key_fingerprint == o.key_fingerprint;
                results.push(if same {
                    OfflineOpenResult::AlreadyOpen
                } else {
                    OfflineOpenResult::Conflict
                });
                continue;
            }
            let now = now_ms();
            let opened = tx
                .execute(
                    &db.sql(
                        "INSERT INTO {s}.wallets (wallet_id, institution_id, tier, balance_fen,
                             held_fen, pending_credit_fen, balance_limit_fen,
                             single_payment_limit_fen, daily_limit_fen, password_free_limit_fen,
                             locked, created_ms, updated_ms)
                         SELECT $1, institution_id, tier, 0, 0, 0, $2, $2, $2, 0, false, $3, $3
                         FROM {s}.wallets WHERE wallet_id = $4",
                    ),
                    &[
                        &purse_wallet_id(&o.wallet_id),
                        &AMOUNT_FEN_MAX,
                        &now,
                        &o.wallet_id,
                    ],
                )
                .await?;
            if opened != 1 {
                results.push(OfflineOpenResult::UnknownWallet);
                continue;
            }
            tx.execute(
                &db.sql(&format!(
                    "INSERT INTO {{s}}.offline_wallets ({RECORD_COLUMNS}, updated_ms)
                     VALUES ($1, 1, $2, $3, $4, 0, $5, 0, 0, $6, $7, $8, $9, $10, NULL, NULL,
                             NULL, 0, 0, NULL, NULL, $11)"
                )),
                &[
                    &o.wallet_id,
                    &o.key_version,
                    &o.key_fingerprint.as_slice(),
                    &o.last_sync_at_ms,
                    &[0u8; 32].as_slice(),
                    &o.limits.purse_limit_fen,
                    &o.limits.single_payment_limit_fen,
                    &o.limits.cumulative_limit_fen,
                    &o.limits.payments_per_sync_max,
                    &o.limits.offline_duration_ms_max,
                    &now,
                ],
            )
            .await?;
            results.push(OfflineOpenResult::Opened);
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn fund_attempt(
        &self,
        fundings: &[PurseFunding],
    ) -> Result<Vec<FundingResult>, AttemptError> {
        let db = &self.db;
        let mut client = db.client().await?;
        let tx = client.transaction().await?;
        let mut results = Vec::with_capacity(fundings.len());
        for f in fundings {
            results.push(self.fund_one(&tx, f).await?);
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn fund_one(
        &self,
        tx: &Transaction<'_>,
        f: &PurseFunding,
    ) -> Result<FundingResult, AttemptError> {
        let db = &self.db;
        let done = tx
            .query_opt(
                &db.sql(
                    "SELECT wallet_id, amount_fen FROM {s}.purse_fundings WHERE funding_id = $1",
                ),
                &[&f.funding_id.as_slice()],
            )
            .await?;
        if let Some(row) = done {
            let same =
                get::<String>(&row, 0)? == f.wallet_id && get::<i64>(&row, 1)? == f.amount_fen;
            return Ok(if same {
                FundingResult::Duplicate
            } else {
                FundingResult::Refused(FundingRefusal::Conflict)
            });
        }
        if !(1..=AMOUNT_FEN_MAX).contains(&f.amount_fen) {
            return Ok(FundingResult::Refused(FundingRefusal::InvalidAmount));
        }
        let Some(record) = load_record(db, tx, &f.wallet_id, true).await? else {
            return Ok(FundingResult::Refused(FundingRefusal::UnknownWallet));
        };
        let online = tx
            .query_opt(
                &db.sql(
                    "SELECT balance_fen, held_fen, locked FROM {s}.wallets
                     WHERE wallet_id = $1 FOR UPDATE",
                ),
                &[&f.wallet_id],
            )
            .await?;
        let Some(online) = online else {
            return Ok(FundingResult::Refused(FundingRefusal::UnknownWallet));
        };
        let available_fen = get::<i64>(&online, 0)? - get::<i64>(&online, 1)?;
        if let Some(refusal) = offline::funding_refusal(&record, available_fen, get(&online, 2)?, f)
        {
            return Ok(FundingResult::Refused(refusal));
        }
        let now = now_ms();
        add_balance(db, tx, &f.wallet_id, -f.amount_fen).await?;
        add_balance(db, tx, &purse_wallet_id(&f.wallet_id), f.amount_fen).await?;
        tx.execute(
            &db.sql(
                "UPDATE {s}.offline_wallets SET purse_fen = purse_fen + $2,
                     funded_fen = funded_fen + $2, version = version + 1, updated_ms = $3
                 WHERE wallet_id = $1",
            ),
            &[&f.wallet_id, &f.amount_fen, &now],
        )
        .await?;
        tx.execute(
            &db.sql(
                "INSERT INTO {s}.purse_fundings (funding_id, wallet_id, amount_fen, funded_ms)
                 VALUES ($1, $2, $3, $4)",
            ),
            &[&f.funding_id.as_slice(), &f.wallet_id, &f.amount_fen, &now],
        )
        .await?;
        Ok(FundingResult::Funded {
            purse_fen: record.purse_fen + f.amount_fen,
        })
    }

    async fn commit_attempt(
        &self,
        updates: &[OfflineUpdate],
    ) -> Result<OfflineCommit, AttemptError> {
        let db = &self.db;
        let mut client = db.client().await?;
        let tx = client.transaction().await?;
        // Rows are locked in wallet id order, so two writers never wait on each other in a
        // cycle.
        let mut ordered: Vec<&OfflineUpdate> = updates.iter().collect();
        ordered.sort_by(|a, b| a.record.wallet_id.cmp(&b.record.wallet_id));
        for update in ordered {
            if !self.update_one(&tx, update).await? {
                // Dropping the transaction rolls back what earlier updates wrote.
                return Ok(OfflineCommit::Stale(update.record.wallet_id.clone()));
            }
        }
        tx.commit().await?;
        Ok(OfflineCommit::Committed)
    }

    /// One update of `commit_offline`; false when the record is stale.
    async fn update_one(
        &self,
        tx: &Transaction<'_>,
        update: &OfflineUpdate,
    ) -> Result<bool, AttemptError> {
        let db = &self.db;
        let record = &update.record;
        let Some(stored) = load_record(db, tx, &record.wallet_id, true).await? else {
            return Ok(false);
        };
        if stored.version != record.version {
            return Ok(false);
        }
        let find = db.sql("SELECT digest FROM {s}.offline_clearings WHERE payment_id = $1");
        let mut new_clearings = Vec::with_capacity(update.clearings.len());
        for clearing in &update.clearings {
            let found = tx
                .query_opt(&find, &[&clearing.payment_id.0.as_slice()])
                .await?;
            match found {
                Some(row) if fixed::<32>(get(&row, 0)?)? == clearing.digest => {}
                Some(_) => {
                    return Err(AttemptError::Ledger(LedgerError::integrity(format!(
                        "offline payment {} was cleared with another digest",
                        clearing.payment_id
                    ))));
                }
                None => new_clearings.push(clearing),
            }
        }
        let from_loss_fen = offline::apply_update(&stored, update, &new_clearings)?;
        let now = now_ms();
        let insert = db.sql(&format!(
            "INSERT INTO {{s}}.offline_clearings ({CLEARING_COLUMNS}, cleared_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ));
        for c in &new_clearings {
            tx.execute(
                &insert,
                &[
                    &c.payment_id.0.as_slice(),
                    &c.digest.as_slice(),
                    &c.payer_wallet_id,
                    &c.counter,
                    &c.payee_institution_id,
                    &c.payee_wallet_id,
                    &c.amount_fen,
                    &c.from_purse_fen,
                    &c.from_loss_fen,
                    &c.evidence,
                    &c.paid_at_ms,
                    &c.frame,
                    &now,
                ],
            )
            .await?;
        }
        if from_loss_fen > 0 {
            tx.execute(
                &db.sql("UPDATE {s}.offline_loss SET balance_fen = balance_fen - $1 WHERE id = 1"),
                &[&from_loss_fen],
            )
            .await?;
            add_balance(db, tx, &purse_wallet_id(&record.wallet_id), from_loss_fen).await?;
        }
        if stored.locked_at_ms.is_some() != record.locked_at_ms.is_some() {
            tx.execute(
                &db.sql("UPDATE {s}.wallets SET locked = $2, updated_ms = $3 WHERE wallet_id = $1"),
                &[&record.wallet_id, &record.locked_at_ms.is_some(), &now],
            )
            .await?;
        }
        if let (None, Some(at_ms)) = (stored.blacklisted_at_ms, record.blacklisted_at_ms) {
            append_blacklist(db, tx, &record.wallet_id, at_ms).await?;
        }
        tx.execute(
            &db.sql(
                "UPDATE {s}.offline_wallets SET version = version + 1, key_version = $2,
                     key_fingerprint = $3, last_sync_at_ms = $4, counter = $5, chain_head = $6,
                     purse_fen = $7, purse_limit_fen = $8, single_payment_limit_fen = $9,
                     cumulative_limit_fen = $10, payments_per_sync_max = $11,
                     offline_duration_ms_max = $12, locked_at_ms = $13, blacklisted_at_ms = $14,
                     last_key_set = $15, commands_applied_through = $16,
                     blacklist_version = $17, last_answer = $18, updated_ms = $19,
                     rotation_ordered_at_ms = $20
                 WHERE wallet_id = $1",
            ),
            &[
                &record.wallet_id,
                &record.key_version,
                &record.key_fingerprint.as_slice(),
                &record.last_sync_at_ms,
                &record.counter,
                &record.chain_head.as_slice(),
                &record.purse_fen,
                &record.limits.purse_limit_fen,
                &record.limits.single_payment_limit_fen,
                &record.limits.cumulative_limit_fen,
                &record.limits.payments_per_sync_max,
                &record.limits.offline_duration_ms_max,
                &record.locked_at_ms,
                &record.blacklisted_at_ms,
                &record.last_key_set.as_ref().map(|d| d.as_slice()),
                &record.commands_applied_through,
                &record.blacklist_version,
                &record.last_answer,
                &now,
                &record.rotation_ordered_at_ms,
            ],
        )
        .await?;
        Ok(true)
    }

    /// One attempt of `return_voided`: the payer's record is locked first, as every write of
    /// it does.
    async fn return_attempt(&self, payment_id: &PaymentId) -> Result<VoidedReturn, AttemptError> {
        let db = &self.db;
        let mut client = db.client().await?;
        let tx = client.transaction().await?;
        let find = db.sql(&format!(
            "SELECT {CLEARING_COLUMNS}, returned_ms FROM {{s}}.offline_clearings
             WHERE payment_id = $1"
        ));
        let Some(row) = tx.query_opt(&find, &[&payment_id.0.as_slice()]).await? else {
            return Ok(VoidedReturn::NotOffline);
        };
        let clearing = clearing_from_row(&row)?;
        let Some(stored) = load_record(db, &tx, &clearing.payer_wallet_id, true).await? else {
            return Err(AttemptError::Ledger(LedgerError::integrity(format!(
                "offline payment {payment_id}: no record of its payer {}",
                clearing.payer_wallet_id
            ))));
        };
        let returned = tx
            .query_one(
                &db.sql(
                    "SELECT returned_ms FROM {s}.offline_clearings WHERE payment_id = $1
                     FOR UPDATE",
                ),
                &[&payment_id.0.as_slice()],
            )
            .await?;
        if get::<Option<i64>>(&returned, 0)?.is_some() {
            return Ok(VoidedReturn::AlreadyReturned);
        }
        let voided = tx
            .query_opt(
                &db.sql(
                    "SELECT 1 FROM {s}.payments
                     WHERE payment_id = $1 AND side = 'payer' AND state = 'voided'",
                ),
                &[&payment_id.0.as_slice()],
            )
            .await?;
        if voided.is_none() {
            return Ok(VoidedReturn::NotVoided);
        }
        let now = now_ms();
        tx.execute(
            &db.sql("UPDATE {s}.offline_clearings SET returned_ms = $2 WHERE payment_id = $1"),
            &[&payment_id.0.as_slice(), &now],
        )
        .await?;
        tx.execute(
            &db.sql(
                "UPDATE {s}.offline_wallets SET version = version + 1,
                     purse_fen = purse_fen + $2, updated_ms = $3
                 WHERE wallet_id = $1",
            ),
            &[&clearing.payer_wallet_id, &clearing.from_purse_fen, &now],
        )
        .await?;
        if clearing.from_loss_fen > 0 {
            add_balance(
                db,
                &tx,
                &purse_wallet_id(&clearing.payer_wallet_id),
                -clearing.from_loss_fen,
            )
            .await?;
            tx.execute(
                &db.sql("UPDATE {s}.offline_loss SET balance_fen = balance_fen + $1 WHERE id = 1"),
                &[&clearing.from_loss_fen],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(VoidedReturn::Returned {
            purse_fen: stored.purse_fen + clearing.from_purse_fen,
        })
    }

    async fn queue_attempt(&self, command: &QueuedCommand) -> Result<QueueResult, AttemptError> {
        let db = &self.db;
        let mut client = db.client().await?;
        let tx = client.transaction().await?;
        // The record's row lock orders the wallet's queuings.
        if load_record(db, &tx, &command.wallet_id, true)
            .await?
            .is_none()
        {
            return Ok(QueueResult::UnknownWallet);
        }
        let by_id = tx
            .query_opt(
                &db.sql("SELECT 1 FROM {s}.wallet_commands WHERE command_id = $1"),
                &[&command.command_id.as_slice()],
            )
            .await?;
        let taken = tx
            .query_opt(
                &db.sql("SELECT 1 FROM {s}.wallet_commands WHERE wallet_id = $1 AND sequence = $2"),
                &[&command.wallet_id, &command.sequence],
            )
            .await?;
        let result = match (by_id, taken) {
            (Some(_), _) => QueueResult::Duplicate,
            (None, Some(_)) => QueueResult::SequenceTaken,
            (None, None) => {
                tx.execute(
                    &db.sql(&format!(
                        "INSERT INTO {{s}}.wallet_commands ({COMMAND_COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6)"
                    )),
                    &[
                        &command.command_id.as_slice(),
                        &command.wallet_id,
                        &command.sequence,
                        &command.kind,
                        &command.frame,
                        &command.issued_at_ms,
                    ],
                )
                .await?;
                QueueResult::Queued
            }
        };
        tx.commit().await?;
        Ok(result)
    }

    async fn blacklist_attempt(
        &self,
        wallet_ids: &[String],
        at_ms: i64,
    ) -> Result<i64, AttemptError> {
        let db = &self.db;
        let mut client = db.client().await?;
        let tx = client.transaction().await?;
        for wallet_id in wallet_ids {
            append_blacklist(db, &tx, wallet_id, at_ms).await?;
        }
        let row = tx
            .query_one(
                &db.sql("SELECT COUNT(*)::bigint FROM {s}.wallet_blacklist"),
                &[],
            )
            .await?;
        let version: i64 = get(&row, 0)?;
        tx.commit().await?;
        Ok(version)
    }

    async fn read_all<T>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        decode: fn(&Row) -> Result<T, LedgerError>,
    ) -> Result<Vec<T>, LedgerError> {
        let client = self.db.client().await?;
        let rows = client
            .query(&self.db.sql(sql), params)
            .await
            .map_err(|e| pg_error("cannot read offline rows", e))?;
        rows.iter().map(decode).collect()
    }
}

#[async_trait]
impl OfflineLedger for PostgresLedger {
    async fn open_offline(
        &self,
        openings: &[OfflineOpening],
    ) -> Result<Vec<OfflineOpenResult>, LedgerError> {
        offline::check_openings(openings)?;
        with_retries("offline opening", || async move {
            self.open_attempt(openings).await
        })
        .await
    }

    async fn fund_purses(
        &self,
        fundings: &[PurseFunding],
    ) -> Result<Vec<FundingResult>, LedgerError> {
        offline::check_fundings(fundings)?;
        with_retries("purse funding", || async move {
            self.fund_attempt(fundings).await
        })
        .await
    }

    async fn offline_wallet(&self, wallet_id: &str) -> Result<Option<OfflineRecord>, LedgerError> {
        let found = self
            .read_all(
                &format!("SELECT {RECORD_COLUMNS} FROM {{s}}.offline_wallets WHERE wallet_id = $1"),
                &[&wallet_id],
                record_from_row,
            )
            .await?;
        Ok(found.into_iter().next())
    }

    async fn offline_cleared(
        &self,
        payer_wallet_id: &str,
        counters: &[i64],
    ) -> Result<Vec<OfflineClearing>, LedgerError> {
        self.read_all(
            &format!(
                "SELECT {CLEARING_COLUMNS} FROM {{s}}.offline_clearings
                 WHERE payer_wallet_id = $1 AND counter = ANY($2) ORDER BY counter, digest"
            ),
            &[&payer_wallet_id, &counters],
            clearing_from_row,
        )
        .await
    }

    async fn offline_clearing(
        &self,
        payment_id: &PaymentId,
    ) -> Result<Option<OfflineClearing>, LedgerError> {
        let found = self
            .read_all(
                &format!(
                    "SELECT {CLEARING_COLUMNS} FROM {{s}}.offline_clearings WHERE payment_id = $1"
                ),
                &[&payment_id.0.as_slice()],
                clearing_from_row,
            )
            .await?;
        Ok(found.into_iter().next())
    }

    async fn commit_offline(
        &self,
        updates: &[OfflineUpdate],
    ) -> Result<OfflineCommit, LedgerError> {
        offline::check_updates(updates)?;
        with_retries("offline commit", || async move {
            self.commit_attempt(updates).await
        })
        .await
    }

    async fn return_voided(&self, payment_id: &PaymentId) -> Result<VoidedReturn, LedgerError> {
        with_retries("voided payment return", || async move {
            self.return_attempt(payment_id).await
        })
        .await
    }

    async fn queue_command(&self, command: &QueuedCommand) -> Result<QueueResult, LedgerError> {
        offline::check_command(command)?;
        with_retries("command queuing", || async move {
            self.queue_attempt(command).await
        })
        .await
    }

    async fn last_command_sequence(&self, wallet_id: &str) -> Result<i64, LedgerError> {
        let found = self
            .read_all(
                "SELECT COALESCE(MAX(sequence), 0)::bigint FROM {s}.wallet_commands
                 WHERE wallet_id = $1",
                &[&wallet_id],
                |row| get(row, 0),
            )
            .await?;
        Ok(found.into_iter().next().unwrap_or(0))
    }

    async fn commands_after(
        &self,
        wallet_id: &str,
        sequence: i64,
        limit: usize,
    ) -> Result<Vec<QueuedCommand>, LedgerError> {
        let limit = i64::try_from(limit.min(COMMANDS_LIST_MAX)).unwrap_or(0);
        self.read_all(
            &format!(
                "SELECT {COMMAND_COLUMNS} FROM {{s}}.wallet_commands
                 WHERE wallet_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3"
            ),
            &[&wallet_id, &sequence, &limit],
            command_from_row,
        )
        .await
    }

    async fn blacklist_add(&self, wallet_ids: &[String], at_ms: i64) -> Result<i64, LedgerError> {
        offline::check_blacklisted(wallet_ids)?;
        with_retries("blacklist", || async move {
            self.blacklist_attempt(wallet_ids, at_ms).await
        })
        .await
    }

    async fn blacklist(&self) -> Result<Vec<String>, LedgerError> {
        self.read_all(
            "SELECT wallet_id FROM {s}.wallet_blacklist ORDER BY position",
            &[],
            |row| get(row, 0),
        )
        .await
    }

    async fn offline_totals(&self) -> Result<OfflineTotals, LedgerError> {
        let found = self
            .read_all(
                "SELECT
                     (SELECT COALESCE(SUM(funded_fen), 0)::bigint FROM {s}.offline_wallets),
                     (SELECT COALESCE(SUM(purse_fen), 0)::bigint FROM {s}.offline_wallets),
                     (SELECT COALESCE(SUM(w.balance_fen), 0)::bigint FROM {s}.wallets w
                        JOIN {s}.offline_wallets o ON w.wallet_id = o.wallet_id || $1),
                     (SELECT COALESCE(SUM(amount_fen), 0)::bigint FROM {s}.offline_clearings
                        WHERE returned_ms IS NULL),
                     (SELECT COALESCE(SUM(from_loss_fen), 0)::bigint FROM {s}.offline_clearings
                        WHERE returned_ms IS NULL),
                     (SELECT balance_fen FROM {s}.offline_loss WHERE id = 1)",
                &[&offline::PURSE_SUFFIX],
                |row| {
                    Ok(OfflineTotals {
                        funded_fen: get(row, 0)?,
                        purses_fen: get(row, 1)?,
                        purse_accounts_fen: get(row, 2)?,
                        cleared_fen: get(row, 3)?,
                        from_loss_fen: get(row, 4)?,
                        loss_account_fen: get(row, 5)?,
                    })
                },
            )
            .await?;
        found
            .into_iter()
            .next()
            .ok_or_else(|| LedgerError::integrity("no offline totals"))
    }
}
