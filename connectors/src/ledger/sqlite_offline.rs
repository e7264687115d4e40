//! The offline side of the SQLite ledger (see `offline` for the rules).

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::error::LedgerError;
use super::now_ms;
use super::offline::{
    self, COMMANDS_LIST_MAX, FundingRefusal, FundingResult, OfflineClearing, OfflineCommit,
    OfflineLedger, OfflineOpenResult, OfflineOpening, OfflineRecord, OfflineTerms, OfflineTotals,
    OfflineUpdate, PurseFunding, QueueResult, QueuedCommand, VoidedReturn, purse_wallet_id,
};
use super::offline::{CLEARING_COLUMNS, COMMAND_COLUMNS, RECORD_COLUMNS};
use super::sqlite::{SqliteLedger, db_error};
use super::types::{AMOUNT_FEN_MAX, PaymentId};

/// Migration 5 of the ledger: when a voided offline payment's money was given back.
pub(crate) const MIGRATION_RETURNS: &str =
    "ALTER TABLE offline_clearings ADD COLUMN returned_ms INTEGER;";

/// Migration 6 of the ledger: since when the institution orders a wallet to rotate its key.
pub(crate) const MIGRATION_ROTATION: &str =
    "ALTER TABLE offline_wallets ADD COLUMN rotation_ordered_at_ms INTEGER;";

/// Migration 4 of the ledger.
pub(crate) const MIGRATION: &str = "CREATE TABLE offline_wallets (
         wallet_id TEXT PRIMARY KEY,
         version INTEGER NOT NULL CHECK (version > 0),
         key_version INTEGER NOT NULL,
         key_fingerprint BLOB NOT NULL,
         last_sync_at_ms INTEGER NOT NULL,
         counter INTEGER NOT NULL,
         chain_head BLOB NOT NULL,
         purse_fen INTEGER NOT NULL CHECK (purse_fen >= 0),
         funded_fen INTEGER NOT NULL CHECK (funded_fen >= 0),
         purse_limit_fen INTEGER NOT NULL,
         single_payment_limit_fen INTEGER NOT NULL,
         cumulative_limit_fen INTEGER NOT NULL,
         payments_per_sync_max INTEGER NOT NULL,
         offline_duration_ms_max INTEGER NOT NULL,
         locked_at_ms INTEGER,
         blacklisted_at_ms INTEGER,
         last_key_set BLOB,
         commands_applied_through INTEGER NOT NULL,
         blacklist_version INTEGER NOT NULL,
         last_answer BLOB,
         updated_ms INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE purse_fundings (
         funding_id BLOB PRIMARY KEY,
         wallet_id TEXT NOT NULL,
         amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
         funded_ms INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE offline_clearings (
         payment_id BLOB PRIMARY KEY,
         digest BLOB NOT NULL,
         payer_wallet_id TEXT NOT NULL,
         counter INTEGER NOT NULL,
         payee_institution_id TEXT NOT NULL,
         payee_wallet_id TEXT NOT NULL,
         amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
         from_purse_fen INTEGER NOT NULL CHECK (from_purse_fen >= 0),
         from_loss_fen INTEGER NOT NULL CHECK (from_loss_fen >= 0),
         evidence TEXT,
         paid_at_ms INTEGER NOT NULL,
         frame BLOB NOT NULL,
         cleared_ms INTEGER NOT NULL,
         CHECK (from_purse_fen + from_loss_fen = amount_fen)
     ) WITHOUT ROWID;
     CREATE INDEX offline_clearings_by_payer ON offline_clearings (payer_wallet_id, counter);
     CREATE TABLE offline_loss (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         balance_fen INTEGER NOT NULL CHECK (balance_fen <= 0)
     );
     INSERT INTO offline_loss (id, balance_fen) VALUES (1, 0);
     CREATE TABLE wallet_commands (
         command_id BLOB PRIMARY KEY,
         wallet_id TEXT NOT NULL,
         sequence INTEGER NOT NULL CHECK (sequence > 0),
         kind TEXT NOT NULL,
         frame BLOB NOT NULL,
         issued_at_ms INTEGER NOT NULL,
         UNIQUE (wallet_id, sequence)
     ) WITHOUT ROWID;
     CREATE TABLE wallet_blacklist (
         wallet_id TEXT PRIMARY KEY,
         position INTEGER NOT NULL UNIQUE,
         listed_at_ms INTEGER NOT NULL
     ) WITHOUT ROWID;";

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<OfflineRecord> {
    Ok(OfflineRecord {
        wallet_id: row.get(0)?,
        version: row.get(1)?,
        key_version: row.get(2)?,
        key_fingerprint: row.get(3)?,
        last_sync_at_ms: row.get(4)?,
        counter: row.get(5)?,
        chain_head: row.get(6)?,
        purse_fen: row.get(7)?,
        funded_fen: row.get(8)?,
        limits: OfflineTerms {
            purse_limit_fen: row.get(9)?,
            single_payment_limit_fen: row.get(10)?,
            cumulative_limit_fen: row.get(11)?,
            payments_per_sync_max: row.get(12)?,
            offline_duration_ms_max: row.get(13)?,
        },
        locked_at_ms: row.get(14)?,
        blacklisted_at_ms: row.get(15)?,
        last_key_set: row.get(16)?,
        commands_applied_through: row.get(17)?,
        blacklist_version: row.get(18)?,
        last_answer: row.get(19)?,
        rotation_ordered_at_ms: row.get(20)?,
    })
}

fn clearing_from_row(row: &Row<'_>) -> rusqlite::Result<OfflineClearing> {
    Ok(OfflineClearing {
        payment_id: PaymentId(row.get(0)?),
        digest: row.get(1)?,
        payer_wallet_id: row.get(2)?,
        counter: row.get(3)?,
        payee_institution_id: row.get(4)?,
        payee_wallet_id: row.get(5)?,
        amount_fen: row.get(6)?,
        from_purse_fen: row.get(7)?,
        from_loss_fen: row.get(8)?,
        evidence: row.get(9)?,
        paid_at_ms: row.get(10)?,
        frame: row.get(11)?,
    })
}

fn command_from_row(row: &Row<'_>) -> rusqlite::Result<QueuedCommand> {
    Ok(QueuedCommand {
        command_id: row.get(0)?,
        wallet_id: row.get(1)?,
        sequence: row.get(2)?,
        kind: row.get(3)?,
        frame: row.get(4)?,
        issued_at_ms: row.get(5)?,
    })
}

fn load_record(conn: &Connection, wallet_id: &str) -> Result<Option<OfflineRecord>, LedgerError> {
    conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM offline_wallets WHERE wallet_id = ?1"
    ))
    .and_then(|mut stmt| stmt.query_row([wallet_id], record_from_row).optional())
    .map_err(|e| db_error("cannot read offline wallet", e))
}

fn load_clearing(
    conn: &Connection,
    payment_id: &PaymentId,
) -> Result<Option<OfflineClearing>, LedgerError> {
    conn.prepare_cached(&format!(
        "SELECT {CLEARING_COLUMNS} FROM offline_clearings WHERE payment_id = ?1"
    ))
    .and_then(|mut stmt| stmt.query_row([payment_id.0], clearing_from_row).optional())
    .map_err(|e| db_error("cannot read offline clearing", e))
}

fn immediate(conn: &mut Connection) -> Result<Transaction<'_>, LedgerError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| db_error("cannot start transaction", e))
}

/// Moves `amount_fen` between two wallet rows' balances (the purse account and its wallet, or
/// the loss account's cover into a purse account).
fn add_balance(conn: &Connection, wallet_id: &str, amount_fen: i64) -> Result<(), LedgerError> {
    let changed = conn
        .prepare_cached(
            "UPDATE wallets SET balance_fen = balance_fen + ?2, updated_ms = ?3
             WHERE wallet_id = ?1",
        )
        .and_then(|mut stmt| stmt.execute(params![wallet_id, amount_fen, now_ms()]))
        .map_err(|e| db_error("cannot move money", e))?;
    if changed != 1 {
        return Err(LedgerError::integrity(format!(
            "wallet {wallet_id} vanished while money moved"
        )));
    }
    Ok(())
}

/// Appends a wallet to the blacklist (kept in its place if listed). `WHERE true` lets SQLite
/// parse the upsert after a SELECT.
fn append_blacklist(conn: &Connection, wallet_id: &str, at_ms: i64) -> Result<(), LedgerError> {
    conn.prepare_cached(
        "INSERT INTO wallet_blacklist (wallet_id, position, listed_at_ms)
         SELECT ?1, COALESCE(MAX(position), 0) + 1, ?2 FROM wallet_blacklist WHERE true
         ON CONFLICT (wallet_id) DO NOTHING",
    )
    .and_then(|mut stmt| stmt.execute(params![wallet_id, at_ms]))
    .map_err(|e| db_error("cannot list wallet", e))?;
    Ok(())
}

fn blacklist_len(conn: &Connection) -> Result<i64, LedgerError> {
    conn.query_row("SELECT COUNT(*) FROM wallet_blacklist", [], |row| {
        row.get(0)
    })
    .map_err(|e| db_error("cannot read blacklist", e))
}

fn open_one(conn: &Connection, o: &OfflineOpening) -> Result<OfflineOpenResult, LedgerError> {
    if let Some(stored) = load_record(conn, &o.wallet_id)? {
        let same =
            stored.key_version == o.key_version && stored.key_fingerprint == o.key_fingerprint;
        return Ok(if same {
            OfflineOpenResult::AlreadyOpen
        } else {
            OfflineOpenResult::Conflict
        });
    }
    let online: Option<(String, i64)> = conn
        .query_row(
            "SELECT institution_id, tier FROM wallets WHERE wallet_id = ?1",
            [&o.wallet_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(|e| db_error("cannot read wallet", e))?;
    let Some((institution_id, tier)) = online else {
        return Ok(OfflineOpenResult::UnknownWallet);
    };
    let now = now_ms();
    conn.prepare_cached(
        "INSERT INTO wallets (wallet_id, institution_id, tier, balance_fen, held_fen,
             pending_credit_fen, balance_limit_fen, single_payment_limit_fen, daily_limit_fen,
             password_free_limit_fen, locked, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, 0, 0, 0, ?4, ?4, ?4, 0, 0, ?5, ?5)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            purse_wallet_id(&o.wallet_id),
            institution_id,
            tier,
            AMOUNT_FEN_MAX,
            now
        ])
    })
    .map_err(|e| db_error("cannot open purse account", e))?;
    conn.prepare_cached(&format!(
        "INSERT INTO offline_wallets ({RECORD_COLUMNS}, updated_ms)
         VALUES (?1, 1, ?2, ?3, ?4, 0, ?5, 0, 0, ?6, ?7, ?8, ?9, ?10, NULL, NULL, NULL, 0, 0,
                 NULL, NULL, ?11)"
    ))
    .and_then(|mut stmt| {
        stmt.execute(params![
            o.wallet_id,
            o.key_version,
            o.key_fingerprint,
            o.last_sync_at_ms,
            [0u8; 32],
            o.limits.purse_limit_fen,
            o.limits.single_payment_limit_fen,
            o.limits.cumulative_limit_fen,
            o.limits.payments_per_sync_max,
            o.limits.offline_duration_ms_max,
            now,
        ])
    })
    .map_err(|e| db_error("cannot record offline wallet", e))?;
    Ok(OfflineOpenResult::Opened)
}

fn fund_one(conn: &Connection, f: &PurseFunding) -> Result<FundingResult, LedgerError> {
    let done: Option<(String, i64)> = conn
        .prepare_cached("SELECT wallet_id, amount_fen FROM purse_fundings WHERE funding_id = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([f.funding_id], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(|e| db_error("cannot read funding", e))?;
    if let Some((wallet_id, amount_fen)) = done {
        return Ok(if wallet_id == f.wallet_id && amount_fen == f.amount_fen {
            FundingResult::Duplicate
        } else {
            FundingResult::Refused(FundingRefusal::Conflict)
        });
    }
    if !(1..=AMOUNT_FEN_MAX).contains(&f.amount_fen) {
        return Ok(FundingResult::Refused(FundingRefusal::InvalidAmount));
    }
    let Some(record) = load_record(conn, &f.wallet_id)? else {
        return Ok(FundingResult::Refused(FundingRefusal::UnknownWallet));
    };
    let online: Option<(i64, i64, bool)> = conn
        .query_row(
            "SELECT balance_fen, held_fen, locked FROM wallets WHERE wallet_id = ?1",
            [&f.wallet_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()
        .map_err(|e| db_error("cannot read wallet", e))?;
    let Some((balance_fen, held_fen, locked)) = online else {
        return Ok(FundingResult::Refused(FundingRefusal::UnknownWallet));
    };
    if let Some(refusal) = offline::funding_refusal(&record, balance_fen - held_fen, locked, f) {
        return Ok(FundingResult::Refused(refusal));
    }
    let now = now_ms();
    add_balance(conn, &f.wallet_id, -f.amount_fen)?;
    add_balance(conn, &purse_wallet_id(&f.wallet_id), f.amount_fen)?;
    conn.prepare_cached(
        "UPDATE offline_wallets SET purse_fen = purse_fen + ?2, funded_fen = funded_fen + ?2,
             version = version + 1, updated_ms = ?3
         WHERE wallet_id = ?1",
    )
    .and_then(|mut stmt| stmt.execute(params![f.wallet_id, f.amount_fen, now]))
    .map_err(|e| db_error("cannot fund purse", e))?;
    conn.prepare_cached(
        "INSERT INTO purse_fundings (funding_id, wallet_id, amount_fen, funded_ms)
         VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut stmt| stmt.execute(params![f.funding_id, f.wallet_id, f.amount_fen, now]))
    .map_err(|e| db_error("cannot record funding", e))?;
    Ok(FundingResult::Funded {
        purse_fen: record.purse_fen + f.amount_fen,
    })
}

/// `return_voided` inside its transaction.
fn return_one(conn: &Connection, payment_id: &PaymentId) -> Result<VoidedReturn, LedgerError> {
    let read = |e| db_error("cannot read a voided offline payment", e);
    let Some(clearing) = load_clearing(conn, payment_id)? else {
        return Ok(VoidedReturn::NotOffline);
    };
    let returned: Option<i64> = conn
        .query_row(
            "SELECT returned_ms FROM offline_clearings WHERE payment_id = ?1",
            [payment_id.0],
            |row| row.get(0),
        )
        .map_err(read)?;
    if returned.is_some() {
        return Ok(VoidedReturn::AlreadyReturned);
    }
    let voided: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM payments
                 WHERE payment_id = ?1 AND side = 'payer' AND state = 'voided')",
            [payment_id.0],
            |row| row.get(0),
        )
        .map_err(read)?;
    if !voided {
        return Ok(VoidedReturn::NotVoided);
    }
    let now = now_ms();
    conn.execute(
        "UPDATE offline_clearings SET returned_ms = ?2 WHERE payment_id = ?1",
        params![payment_id.0, now],
    )
    .map_err(|e| db_error("cannot mark a return", e))?;
    let changed = conn
        .execute(
            "UPDATE offline_wallets SET version = version + 1, purse_fen = purse_fen + ?2,
                 updated_ms = ?3
             WHERE wallet_id = ?1",
            params![clearing.payer_wallet_id, clearing.from_purse_fen, now],
        )
        .map_err(|e| db_error("cannot give a purse back", e))?;
    if changed != 1 {
        return Err(LedgerError::integrity(format!(
            "offline payment {payment_id}: no record of its payer {}",
            clearing.payer_wallet_id
        )));
    }
    if clearing.from_loss_fen > 0 {
        add_balance(
            conn,
            &purse_wallet_id(&clearing.payer_wallet_id),
            -clearing.from_loss_fen,
        )?;
        conn.execute(
            "UPDATE offline_loss SET balance_fen = balance_fen + ?1 WHERE id = 1",
            [clearing.from_loss_fen],
        )
        .map_err(|e| db_error("cannot give the loss account back", e))?;
    }
    let purse_fen = load_record(conn, &clearing.payer_wallet_id)?
        .map(|r| r.purse_fen)
        .unwrap_or_default();
    Ok(VoidedReturn::Returned { purse_fen })
}

/// One update of `commit_offline`; `None` when the record is stale.
fn update_one(conn: &Connection, update: &OfflineUpdate) -> Result<Option<()>, LedgerError> {
    let record = &update.record;
    let Some(stored) = load_record(conn, &record.wallet_id)? else {
        return Ok(None);
    };
    if stored.version != record.version {
        return Ok(None);
    }
    let mut new_clearings = Vec::with_capacity(update.clearings.len());
    for clearing in &update.clearings {
        match load_clearing(conn, &clearing.payment_id)? {
            Some(found) if found.digest == clearing.digest => {}
            Some(_) => {
                return Err(LedgerError::integrity(format!(
                    "offline payment {} was cleared with another digest",
                    clearing.payment_id
                )));
            }
            None => new_clearings.push(clearing),
        }
    }
    let from_loss_fen = offline::apply_update(&stored, update, &new_clearings)?;
    let now = now_ms();
    {
        let mut insert = conn
            .prepare_cached(&format!(
                "INSERT INTO offline_clearings ({CLEARING_COLUMNS}, cleared_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ))
            .map_err(|e| db_error("cannot prepare clearing insert", e))?;
        for c in &new_clearings {
            insert
                .execute(params![
                    c.payment_id.0,
                    c.digest,
                    c.payer_wallet_id,
                    c.counter,
                    c.payee_institution_id,
                    c.payee_wallet_id,
                    c.amount_fen,
                    c.from_purse_fen,
                    c.from_loss_fen,
                    c.evidence,
                    c.paid_at_ms,
                    c.frame,
                    now,
                ])
                .map_err(|e| db_error("cannot record clearing", e))?;
        }
    }
    if from_loss_fen > 0 {
        conn.execute(
            "UPDATE offline_loss SET balance_fen = balance_fen - ?1 WHERE id = 1",
            [from_loss_fen],
        )
        .map_err(|e| db_error("cannot book loss", e))?;
        add_balance(conn, &purse_wallet_id(&record.wallet_id), from_loss_fen)?;
    }
    if stored.locked_at_ms.is_some() != record.locked_at_ms.is_some() {
        conn.execute(
            "UPDATE wallets SET locked = ?2, updated_ms = ?3 WHERE wallet_id = ?1",
            params![record.wallet_id, record.locked_at_ms.is_some(), now],
        )
        .map_err(|e| db_error("cannot lock wallet", e))?;
    }
    if let (None, Some(at_ms)) = (stored.blacklisted_at_ms, record.blacklisted_at_ms) {
        append_blacklist(conn, &record.wallet_id, at_ms)?;
    }
    conn.prepare_cached(
        "UPDATE offline_wallets SET version = version + 1, key_version = ?2,
             key_fingerprint = ?3, last_sync_at_ms = ?4, counter = ?5, chain_head = ?6,
             purse_fen = ?7, purse_limit_fen = ?8, single_payment_limit_fen = ?9,
             cumulative_limit_fen = ?10, payments_per_sync_max = ?11,
             offline_duration_ms_max = ?12, locked_at_ms = ?13, blacklisted_at_ms = ?14,
             last_key_set = ?15, commands_applied_through = ?16, blacklist_version = ?17,
             last_answer = ?18, updated_ms = ?19, rotation_ordered_at_ms = ?20
         WHERE wallet_id = ?1",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            record.wallet_id,
            record.key_version,
            record.key_fingerprint,
            record.last_sync_at_ms,
            record.counter,
            record.chain_head,
            record.purse_fen,
            record.limits.purse_limit_fen,
            record.limits.single_payment_limit_fen,
            record.limits.cumulative_limit_fen,
            record.limits.payments_per_sync_max,
            record.limits.offline_duration_ms_max,
            record.locked_at_ms,
            record.blacklisted_at_ms,
            record.last_key_set,
            record.commands_applied_through,
            record.blacklist_version,
            record.last_answer,
            now,
            record.rotation_ordered_at_ms,
        ])
    })
    .map_err(|e| db_error("cannot write offline wallet", e))?;
    Ok(Some(()))
}

#[async_trait]
impl OfflineLedger for SqliteLedger {
    async fn open_offline(
        &self,
        openings: &[OfflineOpening],
    ) -> Result<Vec<OfflineOpenResult>, LedgerError> {
        offline::check_openings(openings)?;
        let openings = openings.to_vec();
        self.db
            .run(move |conn| {
                let tx = immediate(conn)?;
                let results = openings
                    .iter()
                    .map(|o| open_one(&tx, o))
                    .collect::<Result<Vec<_>, _>>()?;
                tx.commit()
                    .map_err(|e| db_error("cannot commit openings", e))?;
                Ok(results)
            })
            .await
    }

    async fn fund_purses(
        &self,
        fundings: &[PurseFunding],
    ) -> Result<Vec<FundingResult>, LedgerError> {
        offline::check_fundings(fundings)?;
        let fundings = fundings.to_vec();
        self.db
            .run(move |conn| {
                let tx = immediate(conn)?;
                let results = fundings
                    .iter()
                    .map(|f| fund_one(&tx, f))
                    .collect::<Result<Vec<_>, _>>()?;
                tx.commit()
                    .map_err(|e| db_error("cannot commit fundings", e))?;
                Ok(results)
            })
            .await
    }

    async fn offline_wallet(&self, wallet_id: &str) -> Result<Option<OfflineRecord>, LedgerError> {
        let wallet_id = wallet_id.to_owned();
        self.db.run(move |conn| load_record(conn, &wallet_id)).await
    }

    async fn offline_cleared(
        &self,
        payer_wallet_id: &str,
        counters: &[i64],
    ) -> Result<Vec<OfflineClearing>, LedgerError> {
        let payer = payer_wallet_id.to_owned();
        let mut counters = counters.to_vec();
        counters.sort_unstable();
        counters.dedup();
        self.db
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {CLEARING_COLUMNS} FROM offline_clearings
                         WHERE payer_wallet_id = ?1 AND counter = ?2 ORDER BY digest"
                    ))
                    .map_err(|e| db_error("cannot read clearings", e))?;
                let mut found = Vec::new();
                for counter in counters {
                    let rows = stmt
                        .query_map(params![payer, counter], clearing_from_row)
                        .map_err(|e| db_error("cannot read clearings", e))?;
                    for row in rows {
                        found.push(row.map_err(|e| db_error("cannot read clearing", e))?);
                    }
                }
                Ok(found)
            })
            .await
    }

    async fn offline_clearing(
        &self,
        payment_id: &PaymentId,
    ) -> Result<Option<OfflineClearing>, LedgerError> {
        let payment_id = *payment_id;
        self.db
            .run(move |conn| load_clearing(conn, &payment_id))
            .await
    }

    async fn commit_offline(
        &self,
        updates: &[OfflineUpdate],
    ) -> Result<OfflineCommit, LedgerError> {
        offline::check_updates(updates)?;
        let updates = updates.to_vec();
        self.db
            .run(move |conn| {
                let tx = immediate(conn)?;
                for update in &updates {
                    if update_one(&tx, update)?.is_none() {
                        // Dropping the transaction rolls back what earlier updates wrote.
                        return Ok(OfflineCommit::Stale(update.record.wallet_id.clone()));
                    }
                }
                tx.commit()
                    .map_err(|e| db_error("cannot commit offline wallets", e))?;
                Ok(OfflineCommit::Committed)
            })
            .await
    }

    async fn return_voided(&self, payment_id: &PaymentId) -> Result<VoidedReturn, LedgerError> {
        let payment_id = *payment_id;
        self.db
            .run(move |conn| {
                let tx = immediate(conn)?;
                let result = return_one(&tx, &payment_id)?;
                tx.commit()
                    .map_err(|e| db_error("cannot commit a voided payment's return", e))?;
                Ok(result)
            })
            .await
    }

    async fn queue_command(&self, command: &QueuedCommand) -> Result<QueueResult, LedgerError> {
        offline::check_command(command)?;
        let command = command.clone();
        self.db
            .run(move |conn| {
                let tx = immediate(conn)?;
                let result = if load_record(&tx, &command.wallet_id)?.is_none() {
                    QueueResult::UnknownWallet
                } else {
                    let by_id: Option<QueuedCommand> = tx
                        .query_row(
                            &format!(
                                "SELECT {COMMAND_COLUMNS} FROM wallet_commands
                                 WHERE command_id = ?1"
                            ),
                            [command.command_id],
                            command_from_row,
                        )
                        .optional()
                        .map_err(|e| db_error("cannot read command", e))?;
                    let taken: bool = tx
                        .query_row(
                            "SELECT EXISTS (SELECT 1 FROM wallet_commands
                                 WHERE wallet_id = ?1 AND sequence = ?2)",
                            params![command.wallet_id, command.sequence],
                            |row| row.get(0),
                        )
                        .map_err(|e| db_error("cannot read command", e))?;
                    match by_id {
                        Some(_) => QueueResult::Duplicate,
                        None if taken => QueueResult::SequenceTaken,
                        None => {
                            tx.execute(
                                &format!(
                                    "INSERT INTO wallet_commands ({COMMAND_COLUMNS})
                                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                                ),
                                params![
                                    command.command_id,
                                    command.wallet_id,
                                    command.sequence,
                                    command.kind,
                                    command.frame,
                                    command.issued_at_ms,
                                ],
                            )
                            .map_err(|e| db_error("cannot queue command", e))?;
                            QueueResult::Queued
                        }
                    }
                };
                tx.commit()
                    .map_err(|e| db_error("cannot commit command", e))?;
                Ok(result)
            })
            .await
    }

    async fn last_command_sequence(&self, wallet_id: &str) -> Result<i64, LedgerError> {
        let wallet_id = wallet_id.to_owned();
        self.db
            .run(move |conn| {
                conn.query_row(
                    "SELECT COALESCE(MAX(sequence), 0) FROM wallet_commands WHERE wallet_id = ?1",
                    [wallet_id],
                    |row| row.get(0),
                )
                .map_err(|e| db_error("cannot read commands", e))
            })
            .await
    }

    async fn commands_after(
        &self,
        wallet_id: &str,
        sequence: i64,
        limit: usize,
    ) -> Result<Vec<QueuedCommand>, LedgerError> {
        let wallet_id = wallet_id.to_owned();
        let limit = i64::try_from(limit.min(COMMANDS_LIST_MAX)).unwrap_or(0);
        self.db
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {COMMAND_COLUMNS} FROM wallet_commands
                         WHERE wallet_id = ?1 AND sequence > ?2 ORDER BY sequence LIMIT ?3"
                    ))
                    .map_err(|e| db_error("cannot read commands", e))?;
                let rows = stmt
                    .query_map(params![wallet_id, sequence, limit], command_from_row)
                    .map_err(|e| db_error("cannot read commands", e))?;
                rows.map(|row| row.map_err(|e| db_error("cannot read command", e)))
                    .collect()
            })
            .await
    }

    async fn blacklist_add(&self, wallet_ids: &[String], at_ms: i64) -> Result<i64, LedgerError> {
        offline::check_blacklisted(wallet_ids)?;
        let wallet_ids = wallet_ids.to_vec();
        self.db
            .run(move |conn| {
                let tx = immediate(conn)?;
                for wallet_id in &wallet_ids {
                    append_blacklist(&tx, wallet_id, at_ms)?;
                }
                let version = blacklist_len(&tx)?;
                tx.commit()
                    .map_err(|e| db_error("cannot commit blacklist", e))?;
                Ok(version)
            })
            .await
    }

    async fn blacklist(&self) -> Result<Vec<String>, LedgerError> {
        self.db
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT wallet_id FROM wallet_blacklist ORDER BY position")
                    .map_err(|e| db_error("cannot read blacklist", e))?;
                let rows = stmt
                    .query_map([], |row| row.get(0))
                    .map_err(|e| db_error("cannot read blacklist", e))?;
                rows.map(|row| row.map_err(|e| db_error("cannot read blacklist", e)))
                    .collect()
            })
            .await
    }

    async fn offline_totals(&self) -> Result<OfflineTotals, LedgerError> {
        self.db
            .run(move |conn| {
                let read = |e| db_error("cannot read offline totals", e);
                let tx = conn.transaction().map_err(read)?;
                let (funded_fen, purses_fen): (i64, i64) = tx
                    .query_row(
                        "SELECT COALESCE(SUM(funded_fen), 0), COALESCE(SUM(purse_fen), 0)
                         FROM offline_wallets",
                        [],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .map_err(read)?;
                let purse_accounts_fen: i64 = tx
                    .query_row(
                        "SELECT COALESCE(SUM(w.balance_fen), 0) FROM wallets w
                         JOIN offline_wallets o ON w.wallet_id = o.wallet_id || ?1",
                        [offline::PURSE_SUFFIX],
                        |row| row.get(0),
                    )
                    .map_err(read)?;
                let (cleared_fen, from_loss_fen): (i64, i64) = tx
                    .query_row(
                        "SELECT COALESCE(SUM(amount_fen), 0), COALESCE(SUM(from_loss_fen), 0)
                         FROM offline_clearings WHERE returned_ms IS NULL",
                        [],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .map_err(read)?;
                let loss_account_fen: i64 = tx
                    .query_row(
                        "SELECT balance_fen FROM offline_loss WHERE id = 1",
                        [],
                        |row| row.get(0),
                    )
                    .map_err(read)?;
                tx.commit().map_err(read)?;
                Ok(OfflineTotals {
                    funded_fen,
                    purses_fen,
                    purse_accounts_fen,
                    cleared_fen,
                    from_loss_fen,
                    loss_account_fen,
                })
            })
            .await
    }
}
