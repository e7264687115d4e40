//! SQLite backend: one file per institution, WAL, one writer at a time.
//!
//! SQLite calls block, so each handle's connection lives on a thread of its own, fed by a
//! channel (`sqlite_writer`): the stages that share a handle share that thread, and the ledger
//! batches they have ready at the same time commit together, in one transaction and one
//! `fsync` (group commit), each answered on its own. Several processes may open the same file:
//! a write transaction starts with `BEGIN IMMEDIATE` (it takes the write lock before reading, so
//! no two writers decide on the same rows) and waits up to `busy_timeout_ms` for it; past that
//! the batch fails with [`LedgerErrorKind::Busy`] and can be retried whole. Statements are
//! prepared once per connection and cached.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::engine::{
    self, CommitOp, CreditOp, FinalizeOp, Op, RejectOp, ReserveOp, VoidOp, WalletRow, Working,
};
use super::error::{LedgerError, LedgerErrorKind};
use super::metrics;
use super::settlement::{
    self, ClearingOutcome, ClearingRecord, ClosedWindow, PairTotal, Position, SettlementConfig,
    SettlementStore, StoredClearing,
};
use super::sqlite_writer::{GroupCommits, Grouped, Writer};
use super::types::{
    CreditRequest, CreditResult, DECIDED_LIST_MAX, Digest, EXPIRED_LIST_MAX, Finalization,
    FinalizeResult, OpenResult, OpeningTerms, Party, PaymentId, PaymentRecord, PaymentState,
    PendingTotals, Rejection, RejectionResult, ReserveRequest, ReserveResult, Side, StateCounts,
    Transition, WALLET_OPENINGS_PAGE_MAX, WalletAccount, WalletLimits, WalletOpening, WalletState,
    business_day,
};
use super::{Ledger, now_ms};

/// How hard SQLite makes a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSync {
    /// `synchronous=FULL`: a committed batch survives a power loss (the default for money).
    #[default]
    Full,
    /// `synchronous=NORMAL`: survives a crash of the process, may lose the last batches on a
    /// power loss. For demos and load tests.
    Normal,
}

/// SQLite settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Durability of commits.
    pub synchronous: SqliteSync,
    /// How long a writer waits for another process's write lock before failing as busy.
    pub busy_timeout_ms: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: SqliteSync::Full,
            busy_timeout_ms: SQLITE_BUSY_TIMEOUT_MS,
        }
    }
}

/// The `backend` label of this backend's metrics.
const BACKEND: &str = "sqlite";

/// Default wait for another writer, in ms.
pub const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;

/// Prepared statements kept per connection.
const STATEMENT_CACHE_CAPACITY: usize = 64;

pub(crate) fn db_error(context: &str, err: rusqlite::Error) -> LedgerError {
    let kind = match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => LedgerErrorKind::Busy,
        Some(ErrorCode::ConstraintViolation) => LedgerErrorKind::Integrity,
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::NotADatabase
            | ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly,
        ) => LedgerErrorKind::Connect,
        _ => LedgerErrorKind::Database,
    };
    LedgerError::with_source(kind, context.to_owned(), err)
}

fn conversion_error(column: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, message.into())
}

/// One SQLite connection, owned by its own thread (see `sqlite_writer`).
#[derive(Debug, Clone)]
pub(crate) struct SqliteDb {
    writer: Arc<Writer>,
    path: Option<PathBuf>,
}

impl SqliteDb {
    /// Opens `path` (or a private in-memory database) and applies `migrations`.
    pub(crate) async fn open(
        path: Option<PathBuf>,
        options: SqliteOptions,
        migrations: &'static [(i64, &'static str)],
    ) -> Result<SqliteDb, LedgerError> {
        let opened_path = path.clone();
        let name = match &path {
            Some(path) => format!(
                "sqlite {}",
                path.file_stem().unwrap_or_default().to_string_lossy()
            ),
            None => "sqlite memory".to_owned(),
        };
        let writer = Writer::start(name, move || -> Result<Connection, LedgerError> {
            let conn = match &opened_path {
                Some(path) => {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            LedgerError::with_source(
                                LedgerErrorKind::Connect,
                                format!("cannot create {}", dir.display()),
                                e,
                            )
                        })?;
                    }
                    Connection::open(path)
                }
                None => Connection::open_in_memory(),
            }
            .map_err(|e| db_error("cannot open SQLite database", e))?;
            configure(&conn, &options, opened_path.is_some())?;
            migrate(&conn, migrations)?;
            Ok(conn)
        })
        .await?;
        Ok(SqliteDb {
            writer: Arc::new(writer),
            path,
        })
    }

    /// Runs `f` with the connection on its thread, alone, after what was queued before.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.writer.run(f).await
    }

    /// Runs `f`, which only reads, on the connection's thread: possibly ahead of the ledger
    /// batches queued before it (none of them answered yet).
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.writer.read(f).await
    }

    /// Runs a ledger batch in the next group commit: in one transaction with the batches
    /// queued beside it, answered on its own.
    async fn grouped<O: Op>(&self, op: O) -> Result<Vec<O::Item>, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.writer.submit(Box::new(Batch {
            op,
            results: None,
            reply,
        }))?;
        answer.await.map_err(|_| {
            LedgerError::new(
                LedgerErrorKind::Database,
                "the SQLite connection's thread stopped",
            )
        })?
    }
}

/// One ledger batch waiting for its group commit.
struct Batch<O: Op> {
    op: O,
    results: Option<Vec<O::Item>>,
    reply: oneshot::Sender<Result<Vec<O::Item>, LedgerError>>,
}

impl<O: Op> Grouped for Batch<O> {
    fn apply(&mut self, conn: &Connection) -> Result<(), LedgerError> {
        self.results = Some(apply_op(conn, &self.op)?);
        Ok(())
    }

    fn answer(self: Box<Self>, outcome: Result<(), LedgerError>) {
        let Batch { results, reply, .. } = *self;
        let answer = outcome.and_then(|()| {
            results.ok_or_else(|| LedgerError::integrity("a committed batch has no results"))
        });
        let _ = reply.send(answer);
    }
}

fn configure(conn: &Connection, options: &SqliteOptions, on_disk: bool) -> Result<(), LedgerError> {
    conn.busy_timeout(Duration::from_millis(options.busy_timeout_ms))
        .map_err(|e| db_error("cannot set busy timeout", e))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    if on_disk {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| db_error("cannot enable WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LedgerError::new(
                LedgerErrorKind::Config,
                format!("SQLite refused WAL mode (got {mode})"),
            ));
        }
    }
    let synchronous = match options.synchronous {
        SqliteSync::Full => "FULL",
        SqliteSync::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(|e| db_error("cannot set synchronous", e))?;
    Ok(())
}

/// Applies the migrations not applied yet, in one write transaction (two processes opening
/// the same file at once apply them once).
fn migrate(conn: &Connection, migrations: &[(i64, &str)]) -> Result<(), LedgerError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(|e| db_error("cannot start migration", e))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY,
             applied_ms INTEGER NOT NULL
         )",
    )
    .map_err(|e| db_error("cannot create schema_migrations", e))?;
    for (version, sql) in migrations {
        let applied: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                [version],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| db_error("cannot read schema_migrations", e))?;
        if applied.is_some() {
            continue;
        }
        tx.execute_batch(sql)
            .map_err(|e| db_error(&format!("migration {version} failed"), e))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
            params![version, now_ms()],
        )
        .map_err(|e| db_error("cannot record migration", e))?;
    }
    tx.commit()
        .map_err(|e| db_error("cannot commit migration", e))
}

const LEDGER_MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE ledger_meta (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE wallets (
         wallet_id TEXT PRIMARY KEY,
         institution_id TEXT NOT NULL,
         tier INTEGER NOT NULL,
         balance_fen INTEGER NOT NULL,
         held_fen INTEGER NOT NULL DEFAULT 0,
         pending_credit_fen INTEGER NOT NULL DEFAULT 0,
         balance_limit_fen INTEGER NOT NULL,
         single_payment_limit_fen INTEGER NOT NULL,
         daily_limit_fen INTEGER NOT NULL,
         password_free_limit_fen INTEGER NOT NULL,
         locked INTEGER NOT NULL,
         created_ms INTEGER NOT NULL,
         updated_ms INTEGER NOT NULL,
         CHECK (held_fen >= 0 AND pending_credit_fen >= 0 AND balance_fen >= held_fen)
     ) WITHOUT ROWID;
     CREATE TABLE payments (
         payment_id BLOB NOT NULL,
         side TEXT NOT NULL,
         state TEXT NOT NULL,
         digest BLOB,
         wallet_id TEXT,
         cp_institution_id TEXT,
         cp_wallet_id TEXT,
         amount_fen INTEGER NOT NULL,
         reason_code TEXT,
         paid_at_ms INTEGER NOT NULL,
         created_ms INTEGER NOT NULL,
         updated_ms INTEGER NOT NULL,
         expires_at_ms INTEGER,
         PRIMARY KEY (payment_id, side)
     ) WITHOUT ROWID;
     CREATE INDEX payments_reserved_expiry ON payments (expires_at_ms)
         WHERE state = 'reserved';
     CREATE TABLE daily_spend (
         wallet_id TEXT NOT NULL,
         business_day INTEGER NOT NULL,
         spent_fen INTEGER NOT NULL CHECK (spent_fen >= 0),
         PRIMARY KEY (wallet_id, business_day)
     ) WITHOUT ROWID;",
    ),
    // The payer side's decisions by update time, for `decided_since`: partial, so it holds
    // only the rows that listing reads, in the order it returns them (no sort, and a LIMIT
    // stops the scan). IF NOT EXISTS: harmless on a file that already has it.
    (
        2,
        "CREATE INDEX IF NOT EXISTS payments_payer_decided
             ON payments (updated_ms, payment_id)
             WHERE side = 'payer' AND state IN ('committed', 'voided');",
    ),
    // Issuance: one record per opened wallet, the only way money enters a ledger. Wallets
    // opened before this record existed are recorded with their balance at the upgrade.
    (
        3,
        "CREATE TABLE issuances (
             wallet_id TEXT PRIMARY KEY,
             amount_fen INTEGER NOT NULL CHECK (amount_fen >= 0),
             tier INTEGER NOT NULL,
             balance_limit_fen INTEGER NOT NULL,
             single_payment_limit_fen INTEGER NOT NULL,
             daily_limit_fen INTEGER NOT NULL,
             password_free_limit_fen INTEGER NOT NULL,
             issued_ms INTEGER NOT NULL
         ) WITHOUT ROWID;
         INSERT INTO issuances
             SELECT wallet_id, balance_fen, tier, balance_limit_fen, single_payment_limit_fen,
                    daily_limit_fen, password_free_limit_fen, created_ms
             FROM wallets;",
    ),
    // Offline wallets (flow 2): the platform's record of each, the purse fundings, the
    // offline payments cleared here as payer's institution, the loss account, the remote
    // commands and the blacklist (`offline`). Purse accounts are rows of `wallets`.
    (4, super::sqlite_offline::MIGRATION),
    // An offline payment voided on the clearing path gives its money back once
    // (`offline::OfflineLedger::return_voided`).
    (5, super::sqlite_offline::MIGRATION_RETURNS),
    // An institution orders a wallet to rotate its key (`OfflineRecord::rotation_ordered_at_ms`).
    (6, super::sqlite_offline::MIGRATION_ROTATION),
    // An audit's balance check counts each wallet's payments that moved money, and asks
    // whether an offline payment paid it (`Ledger::wallet_openings`): without these, each
    // wallet scanned every payment of the ledger (a check quadratic in the ledger's size).
    // Partial: a payment side enters the first index once, when it reaches its final state.
    (
        7,
        "CREATE INDEX IF NOT EXISTS payments_moving_by_wallet ON payments (wallet_id)
             WHERE (side = 'payer' AND state = 'committed')
                OR (side = 'payee' AND state = 'credited');
         CREATE INDEX IF NOT EXISTS offline_clearings_by_payee
             ON offline_clearings (payee_wallet_id);",
    ),
];

/// A page of wallets with their openings, for an audit's balance check: the payments that
/// moved each one's money are counted, and an offline payment to it looked up, through indexes
/// (migration 7).
const WALLET_OPENINGS_SQL: &str = "SELECT w.wallet_id, i.amount_fen, i.issued_ms, w.balance_fen,
        w.held_fen, w.pending_credit_fen,
        (SELECT COUNT(*) FROM payments p WHERE p.wallet_id = w.wallet_id
           AND ((p.side = 'payer' AND p.state = 'committed')
             OR (p.side = 'payee' AND p.state = 'credited'))),
        (w.wallet_id LIKE '%' || ?3
           OR EXISTS (SELECT 1 FROM offline_wallets o WHERE o.wallet_id = w.wallet_id)
           OR EXISTS (SELECT 1 FROM offline_clearings c WHERE c.payee_wallet_id = w.wallet_id))
     FROM wallets w JOIN issuances i ON i.wallet_id = w.wallet_id
     WHERE w.wallet_id > ?1 ORDER BY w.wallet_id LIMIT ?2";

const PAYMENT_COLUMNS: &str = "payment_id, side, state, digest, wallet_id, cp_institution_id, \
     cp_wallet_id, amount_fen, reason_code, paid_at_ms, created_ms, updated_ms, expires_at_ms";

const WALLET_COLUMNS: &str = "wallet_id, institution_id, tier, balance_fen, held_fen, \
     pending_credit_fen, balance_limit_fen, single_payment_limit_fen, daily_limit_fen, \
     password_free_limit_fen, locked";

fn payment_from_row(row: &Row<'_>) -> rusqlite::Result<PaymentRecord> {
    let side: String = row.get(1)?;
    let state: String = row.get(2)?;
    let digest: Option<[u8; 32]> = row.get(3)?;
    let cp_institution_id: Option<String> = row.get(5)?;
    let cp_wallet_id: Option<String> = row.get(6)?;
    Ok(PaymentRecord {
        payment_id: PaymentId(row.get(0)?),
        side: Side::parse(&side).ok_or_else(|| conversion_error(1, format!("side {side}")))?,
        state: PaymentState::parse(&state)
            .ok_or_else(|| conversion_error(2, format!("state {state}")))?,
        digest: digest.map(Digest),
        wallet_id: row.get(4)?,
        counterparty: match (cp_institution_id, cp_wallet_id) {
            (Some(institution_id), Some(wallet_id)) => Some(Party {
                institution_id,
                wallet_id,
            }),
            _ => None,
        },
        amount_fen: row.get(7)?,
        reason_code: row.get(8)?,
        paid_at_ms: row.get(9)?,
        created_ms: row.get(10)?,
        updated_ms: row.get(11)?,
        expires_at_ms: row.get(12)?,
    })
}

/// Payer decisions from `?1` on, oldest change first, at most `?2`: its WHERE repeats the
/// predicate of the index `payments_payer_decided` word for word, which is what lets SQLite use
/// a partial index.
fn decided_sql() -> String {
    format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments
         WHERE side = 'payer' AND state IN ('committed', 'voided') AND updated_ms >= ?1
         ORDER BY updated_ms, payment_id LIMIT ?2"
    )
}

fn wallet_from_row(row: &Row<'_>) -> rusqlite::Result<WalletRow> {
    Ok(WalletRow {
        account: WalletAccount {
            wallet_id: row.get(0)?,
            institution_id: row.get(1)?,
            tier: row.get(2)?,
            balance_fen: row.get(3)?,
            limits: WalletLimits {
                balance_limit_fen: row.get(6)?,
                single_payment_limit_fen: row.get(7)?,
                daily_limit_fen: row.get(8)?,
                password_free_limit_fen: row.get(9)?,
            },
            locked: row.get(10)?,
        },
        held_fen: row.get(4)?,
        pending_credit_fen: row.get(5)?,
    })
}

fn load_payment(
    conn: &Connection,
    id: &PaymentId,
    side: Side,
) -> Result<Option<PaymentRecord>, LedgerError> {
    conn.prepare_cached(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_id = ?1 AND side = ?2"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(params![id.0, side.as_str()], payment_from_row)
            .optional()
    })
    .map_err(|e| db_error("cannot read payment", e))
}

fn load_wallet(conn: &Connection, wallet_id: &str) -> Result<Option<WalletRow>, LedgerError> {
    conn.prepare_cached(&format!(
        "SELECT {WALLET_COLUMNS} FROM wallets WHERE wallet_id = ?1"
    ))
    .and_then(|mut stmt| stmt.query_row([wallet_id], wallet_from_row).optional())
    .map_err(|e| db_error("cannot read wallet", e))
}

/// Runs one batch inside the caller's transaction: load, decide, write back. Validated by the
/// caller before it was queued.
fn apply_op<O: Op>(tx: &Connection, op: &O) -> Result<Vec<O::Item>, LedgerError> {
    let mut working = Working::new(now_ms());
    let side = op.side();
    for id in op.payment_ids() {
        if let Some(record) = load_payment(tx, &id, side)? {
            working.payments.insert((id, side), record);
        }
    }
    for wallet_id in op.wallet_ids(&working.payments) {
        if let Some(row) = load_wallet(tx, &wallet_id)? {
            working.wallets.insert(wallet_id, row);
        }
    }
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT spent_fen FROM daily_spend WHERE wallet_id = ?1 AND business_day = ?2",
            )
            .map_err(|e| db_error("cannot prepare daily read", e))?;
        for (wallet_id, day) in op.daily_keys(&working.payments) {
            let spent: Option<i64> = stmt
                .query_row(params![wallet_id, day], |row| row.get(0))
                .optional()
                .map_err(|e| db_error("cannot read daily total", e))?;
            if let Some(spent) = spent {
                working.daily.insert((wallet_id, day), spent);
            }
        }
    }
    let results = op.apply(&mut working)?;
    save(tx, &working)?;
    Ok(results)
}

fn save(conn: &Connection, working: &Working) -> Result<(), LedgerError> {
    let write = |e| db_error("cannot write batch", e);
    let mut insert = conn
        .prepare_cached(&format!(
            "INSERT INTO payments ({PAYMENT_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ))
        .map_err(write)?;
    for r in working.inserted() {
        let (cp_institution, cp_wallet) = counterparty_columns(r);
        insert
            .execute(params![
                r.payment_id.0,
                r.side.as_str(),
                r.state.as_str(),
                r.digest.map(|d| d.0),
                r.wallet_id,
                cp_institution,
                cp_wallet,
                r.amount_fen,
                r.reason_code,
                r.paid_at_ms,
                r.created_ms,
                r.updated_ms,
                r.expires_at_ms,
            ])
            .map_err(write)?;
    }
    let mut update = conn
        .prepare_cached(
            "UPDATE payments SET state = ?3, digest = ?4, wallet_id = ?5,
                 cp_institution_id = ?6, cp_wallet_id = ?7, amount_fen = ?8, reason_code = ?9,
                 paid_at_ms = ?10, updated_ms = ?11, expires_at_ms = ?12
             WHERE payment_id = ?1 AND side = ?2",
        )
        .map_err(write)?;
    for r in working.updated() {
        let (cp_institution, cp_wallet) = counterparty_columns(r);
        let changed = update
            .execute(params![
                r.payment_id.0,
                r.side.as_str(),
                r.state.as_str(),
                r.digest.map(|d| d.0),
                r.wallet_id,
                cp_institution,
                cp_wallet,
                r.amount_fen,
                r.reason_code,
                r.paid_at_ms,
                r.updated_ms,
                r.expires_at_ms,
            ])
            .map_err(write)?;
        if changed != 1 {
            return Err(LedgerError::integrity(format!(
                "payment {} vanished during its batch",
                r.payment_id
            )));
        }
    }
    let mut wallets = conn
        .prepare_cached(
            "UPDATE wallets SET balance_fen = ?2, held_fen = ?3, pending_credit_fen = ?4,
                 updated_ms = ?5
             WHERE wallet_id = ?1",
        )
        .map_err(write)?;
    for w in working.dirty_wallets() {
        wallets
            .execute(params![
                w.account.wallet_id,
                w.account.balance_fen,
                w.held_fen,
                w.pending_credit_fen,
                working.now_ms,
            ])
            .map_err(write)?;
    }
    let mut daily = conn
        .prepare_cached(
            "INSERT INTO daily_spend (wallet_id, business_day, spent_fen) VALUES (?1, ?2, ?3)
             ON CONFLICT (wallet_id, business_day) DO UPDATE SET spent_fen = excluded.spent_fen",
        )
        .map_err(write)?;
    for (wallet_id, day, spent_fen) in working.dirty_daily() {
        daily
            .execute(params![wallet_id, day, spent_fen])
            .map_err(write)?;
    }
    Ok(())
}

fn counterparty_columns(record: &PaymentRecord) -> (Option<&str>, Option<&str>) {
    match &record.counterparty {
        Some(party) => (
            Some(party.institution_id.as_str()),
            Some(party.wallet_id.as_str()),
        ),
        None => (None, None),
    }
}

/// Records which institution a ledger file belongs to, refusing a file of another one.
fn claim_institution(conn: &Connection, institution_id: &str) -> Result<(), LedgerError> {
    claim_owner(conn, "ledger_meta", institution_id)
}

/// Records in `meta_table` (key, value) which institution a database belongs to, refusing a
/// database of another one (the ledger's and the vehicles' session store's).
pub(crate) fn claim_owner(
    conn: &Connection,
    meta_table: &str,
    institution_id: &str,
) -> Result<(), LedgerError> {
    conn.execute(
        &format!(
            "INSERT INTO {meta_table} (key, value) VALUES ('institution_id', ?1)
             ON CONFLICT (key) DO NOTHING"
        ),
        [institution_id],
    )
    .map_err(|e| db_error("cannot write the owner", e))?;
    let owner: String = conn
        .query_row(
            &format!("SELECT value FROM {meta_table} WHERE key = 'institution_id'"),
            [],
            |row| row.get(0),
        )
        .map_err(|e| db_error("cannot read the owner", e))?;
    if owner != institution_id {
        return Err(LedgerError::new(
            LedgerErrorKind::Config,
            format!("this database belongs to {owner}, not to {institution_id}"),
        ));
    }
    Ok(())
}

/// An institution's ledger in a SQLite file (or in memory).
#[derive(Debug, Clone)]
pub struct SqliteLedger {
    institution_id: String,
    pub(super) db: SqliteDb,
}

impl SqliteLedger {
    /// Opens or creates the ledger file at `path` for `institution_id`.
    pub async fn open(
        path: &Path,
        institution_id: &str,
        options: &SqliteOptions,
    ) -> Result<SqliteLedger, LedgerError> {
        Self::open_at(Some(path.to_owned()), institution_id, options).await
    }

    /// A private in-memory ledger (tests): gone when the last clone is dropped.
    pub async fn open_in_memory(
        institution_id: &str,
        options: &SqliteOptions,
    ) -> Result<SqliteLedger, LedgerError> {
        Self::open_at(None, institution_id, options).await
    }

    async fn open_at(
        path: Option<PathBuf>,
        institution_id: &str,
        options: &SqliteOptions,
    ) -> Result<SqliteLedger, LedgerError> {
        super::validate_institution_id(institution_id)?;
        let db = SqliteDb::open(path, *options, LEDGER_MIGRATIONS).await?;
        let owner = institution_id.to_owned();
        db.run(move |conn| claim_institution(conn, &owner)).await?;
        Ok(SqliteLedger {
            institution_id: institution_id.to_owned(),
            db,
        })
    }

    /// The file this ledger lives in (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.db.path.as_deref()
    }

    /// The group commits this handle's connection ran: transactions and the batches they
    /// carried (also the metrics [`metrics::COMMITS_TOTAL`] and
    /// [`metrics::REQUESTS_PER_COMMIT`]).
    pub fn group_commits(&self) -> GroupCommits {
        self.db.writer.group_commits()
    }

    async fn execute<O: Op>(&self, op: O) -> Result<Vec<O::Item>, LedgerError> {
        let started = Instant::now();
        let items = op.len();
        let result = match op.validate() {
            Ok(()) => self.db.grouped(op).await,
            Err(e) => Err(e),
        };
        metrics::record_batch(BACKEND, O::NAME, items, started.elapsed(), &result);
        result
    }

    async fn update_wallet(
        &self,
        wallet_id: &str,
        sql: &'static str,
        value: rusqlite::types::Value,
    ) -> Result<Option<WalletState>, LedgerError> {
        let wallet_id = wallet_id.to_owned();
        self.db
            .run(move |conn| {
                conn.prepare_cached(sql)
                    .and_then(|mut stmt| stmt.execute(params![wallet_id, value, now_ms()]))
                    .map_err(|e| db_error("cannot update wallet", e))?;
                Ok(load_wallet(conn, &wallet_id)?.map(|row| row.state()))
            })
            .await
    }
}

#[async_trait]
impl Ledger for SqliteLedger {
    fn institution_id(&self) -> &str {
        &self.institution_id
    }

    fn offline(&self) -> &dyn super::OfflineLedger {
        self
    }

    async fn open_wallets(
        &self,
        accounts: &[WalletAccount],
    ) -> Result<Vec<OpenResult>, LedgerError> {
        engine::validate_accounts(&self.institution_id, accounts)?;
        let accounts = accounts.to_vec();
        self.db
            .run(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| db_error("cannot start transaction", e))?;
                let mut results = Vec::with_capacity(accounts.len());
                {
                    let mut stmt = tx
                        .prepare_cached(&format!(
                            "INSERT INTO wallets ({WALLET_COLUMNS}, created_ms, updated_ms)
                             VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
                             ON CONFLICT (wallet_id) DO NOTHING"
                        ))
                        .map_err(|e| db_error("cannot prepare wallet insert", e))?;
                    let mut issue = tx
                        .prepare_cached(
                            "INSERT INTO issuances (wallet_id, amount_fen, tier,
                                 balance_limit_fen, single_payment_limit_fen, daily_limit_fen,
                                 password_free_limit_fen, issued_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )
                        .map_err(|e| db_error("cannot prepare issuance insert", e))?;
                    let mut terms = tx
                        .prepare_cached(
                            "SELECT tier, amount_fen, balance_limit_fen, single_payment_limit_fen,
                                    daily_limit_fen, password_free_limit_fen
                             FROM issuances WHERE wallet_id = ?1",
                        )
                        .map_err(|e| db_error("cannot prepare issuance read", e))?;
                    let now = now_ms();
                    for a in &accounts {
                        let created = stmt
                            .execute(params![
                                a.wallet_id,
                                a.institution_id,
                                a.tier,
                                a.balance_fen,
                                a.limits.balance_limit_fen,
                                a.limits.single_payment_limit_fen,
                                a.limits.daily_limit_fen,
                                a.limits.password_free_limit_fen,
                                a.locked,
                                now,
                            ])
                            .map_err(|e| db_error("cannot insert wallet", e))?;
                        if created == 1 {
                            issue
                                .execute(params![
                                    a.wallet_id,
                                    a.balance_fen,
                                    a.tier,
                                    a.limits.balance_limit_fen,
                                    a.limits.single_payment_limit_fen,
                                    a.limits.daily_limit_fen,
                                    a.limits.password_free_limit_fen,
                                    now,
                                ])
                                .map_err(|e| db_error("cannot record issuance", e))?;
                            results.push(OpenResult::Created);
                            continue;
                        }
                        let stored = terms
                            .query_row([&a.wallet_id], |row| {
                                Ok(OpeningTerms {
                                    tier: row.get(0)?,
                                    amount_fen: row.get(1)?,
                                    limits: WalletLimits {
                                        balance_limit_fen: row.get(2)?,
                                        single_payment_limit_fen: row.get(3)?,
                                        daily_limit_fen: row.get(4)?,
                                        password_free_limit_fen: row.get(5)?,
                                    },
                                })
                            })
                            .optional()
                            .map_err(|e| db_error("cannot read issuance", e))?;
                        results.push(engine::reopening(a, stored.as_ref()));
                    }
                }
                tx.commit()
                    .map_err(|e| db_error("cannot commit wallets", e))?;
                Ok(results)
            })
            .await
    }

    async fn wallet(&self, wallet_id: &str) -> Result<Option<WalletState>, LedgerError> {
        let wallet_id = wallet_id.to_owned();
        self.db
            .read(move |conn| Ok(load_wallet(conn, &wallet_id)?.map(|row| row.state())))
            .await
    }

    async fn wallets(
        &self,
        wallet_ids: &[String],
    ) -> Result<Vec<Option<WalletState>>, LedgerError> {
        let ids = engine::lookup_ids(wallet_ids)?;
        let started = Instant::now();
        let found = self
            .db
            .read(move |conn| {
                let read = |e| db_error("cannot read wallets", e);
                // One read transaction: every answer comes from the same snapshot. In-process
                // point reads cost microseconds, so one cached statement per id is as fast as
                // one query with a list and needs no SQL built per request.
                let tx = conn.transaction().map_err(read)?;
                let mut found = HashMap::with_capacity(ids.len());
                for id in ids {
                    if let Some(row) = load_wallet(&tx, &id)? {
                        found.insert(id, row);
                    }
                }
                tx.commit().map_err(read)?;
                Ok(found)
            })
            .await;
        let result = found.map(|found| engine::lookup_answers(wallet_ids, &found));
        metrics::record_batch(
            BACKEND,
            "wallets",
            wallet_ids.len(),
            started.elapsed(),
            &result,
        );
        result
    }

    async fn set_locked(
        &self,
        wallet_id: &str,
        locked: bool,
    ) -> Result<Option<WalletState>, LedgerError> {
        self.update_wallet(
            wallet_id,
            "UPDATE wallets SET locked = ?2, updated_ms = ?3 WHERE wallet_id = ?1",
            rusqlite::types::Value::Integer(i64::from(locked)),
        )
        .await
    }

    async fn set_limits(
        &self,
        wallet_id: &str,
        limits: WalletLimits,
    ) -> Result<Option<WalletState>, LedgerError> {
        engine::validate_limits(&limits)?;
        let wallet_id = wallet_id.to_owned();
        self.db
            .run(move |conn| {
                conn.prepare_cached(
                    "UPDATE wallets SET balance_limit_fen = ?2, single_payment_limit_fen = ?3,
                         daily_limit_fen = ?4, password_free_limit_fen = ?5, updated_ms = ?6
                     WHERE wallet_id = ?1",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        wallet_id,
                        limits.balance_limit_fen,
                        limits.single_payment_limit_fen,
                        limits.daily_limit_fen,
                        limits.password_free_limit_fen,
                        now_ms(),
                    ])
                })
                .map_err(|e| db_error("cannot update limits", e))?;
                Ok(load_wallet(conn, &wallet_id)?.map(|row| row.state()))
            })
            .await
    }

    async fn reserve(
        &self,
        requests: &[ReserveRequest],
    ) -> Result<Vec<ReserveResult>, LedgerError> {
        self.execute(ReserveOp(requests.to_vec())).await
    }

    async fn record_rejections(
        &self,
        rejections: &[Rejection],
    ) -> Result<Vec<RejectionResult>, LedgerError> {
        self.execute(RejectOp(rejections.to_vec())).await
    }

    async fn commit(&self, payment_ids: &[PaymentId]) -> Result<Vec<Transition>, LedgerError> {
        self.execute(CommitOp(payment_ids.to_vec())).await
    }

    async fn void(&self, voids: &[(PaymentId, String)]) -> Result<Vec<Transition>, LedgerError> {
        self.execute(VoidOp(voids.to_vec())).await
    }

    async fn expired_reservations(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<PaymentRecord>, LedgerError> {
        let limit = i64::try_from(limit.min(EXPIRED_LIST_MAX)).unwrap_or(0);
        self.db
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {PAYMENT_COLUMNS} FROM payments
                         WHERE state = 'reserved' AND expires_at_ms <= ?1
                         ORDER BY expires_at_ms, payment_id LIMIT ?2"
                    ))
                    .map_err(|e| db_error("cannot prepare expiry listing", e))?;
                let rows = stmt
                    .query_map(params![now_ms, limit], payment_from_row)
                    .map_err(|e| db_error("cannot list expired reservations", e))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(|e| db_error("cannot list expired reservations", e))
            })
            .await
    }

    async fn decided_since(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<PaymentRecord>, LedgerError> {
        let limit = i64::try_from(limit.min(DECIDED_LIST_MAX)).unwrap_or(0);
        self.db
            .run(move |conn| {
                let read = |e| db_error("cannot list decided payments", e);
                let mut stmt = conn.prepare_cached(&decided_sql()).map_err(read)?;
                let rows = stmt
                    .query_map(params![since_ms, limit], payment_from_row)
                    .map_err(read)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(read)
            })
            .await
    }

    async fn credit_pending(
        &self,
        requests: &[CreditRequest],
    ) -> Result<Vec<CreditResult>, LedgerError> {
        self.execute(CreditOp(requests.to_vec())).await
    }

    async fn finalize(
        &self,
        outcomes: &[(PaymentId, Finalization)],
    ) -> Result<Vec<FinalizeResult>, LedgerError> {
        self.execute(FinalizeOp(outcomes.to_vec())).await
    }

    async fn payment(
        &self,
        payment_id: &PaymentId,
        side: Side,
    ) -> Result<Option<PaymentRecord>, LedgerError> {
        let id = *payment_id;
        self.db
            .read(move |conn| load_payment(conn, &id, side))
            .await
    }

    async fn issued_total_fen(&self) -> Result<i64, LedgerError> {
        self.db
            .run(|conn| {
                conn.query_row(
                    "SELECT COALESCE(SUM(amount_fen), 0) FROM issuances",
                    [],
                    |row| row.get(0),
                )
                .map_err(|e| db_error("cannot sum issuances", e))
            })
            .await
    }

    async fn wallet_openings(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WalletOpening>, LedgerError> {
        let after = after.unwrap_or("").to_owned();
        let limit = i64::try_from(limit.min(WALLET_OPENINGS_PAGE_MAX)).unwrap_or(0);
        self.db
            .run(move |conn| {
                let read = |e| db_error("cannot read wallet openings", e);
                let mut stmt = conn.prepare_cached(WALLET_OPENINGS_SQL).map_err(read)?;
                let rows = stmt
                    .query_map(params![after, limit, super::offline::PURSE_SUFFIX], |row| {
                        Ok(WalletOpening {
                            wallet_id: row.get(0)?,
                            opening_fen: row.get(1)?,
                            opened_ms: row.get(2)?,
                            balance_fen: row.get(3)?,
                            held_fen: row.get(4)?,
                            pending_credit_fen: row.get(5)?,
                            moving_payments: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
                            offline: row.get(7)?,
                        })
                    })
                    .map_err(read)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(read)
            })
            .await
    }

    async fn wallet_count(&self) -> Result<u64, LedgerError> {
        self.db
            .run(|conn| {
                let count: i64 = conn
                    .query_row("SELECT COUNT(*) FROM wallets", [], |row| row.get(0))
                    .map_err(|e| db_error("cannot count wallets", e))?;
                Ok(u64::try_from(count).unwrap_or(0))
            })
            .await
    }

    async fn total_balance_fen(&self) -> Result<i64, LedgerError> {
        self.db
            .run(|conn| {
                conn.query_row(
                    "SELECT COALESCE(SUM(balance_fen), 0) FROM wallets",
                    [],
                    |row| row.get(0),
                )
                .map_err(|e| db_error("cannot sum balances", e))
            })
            .await
    }

    async fn pending_totals(&self) -> Result<PendingTotals, LedgerError> {
        self.db
            .run(|conn| {
                conn.query_row(
                    "SELECT COALESCE(SUM(held_fen), 0), COALESCE(SUM(pending_credit_fen), 0)
                     FROM wallets",
                    [],
                    |row| {
                        Ok(PendingTotals {
                            held_fen: row.get(0)?,
                            pending_credit_fen: row.get(1)?,
                        })
                    },
                )
                .map_err(|e| db_error("cannot sum pending amounts", e))
            })
            .await
    }

    async fn state_counts(&self) -> Result<StateCounts, LedgerError> {
        self.db
            .run(|conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT side, state, COUNT(*) FROM payments GROUP BY side, state",
                    )
                    .map_err(|e| db_error("cannot prepare state counts", e))?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    })
                    .map_err(|e| db_error("cannot count states", e))?;
                let mut counts = StateCounts::default();
                for row in rows {
                    let (side, state, count) =
                        row.map_err(|e| db_error("cannot count states", e))?;
                    let key = Side::parse(&side)
                        .zip(PaymentState::parse(&state))
                        .ok_or_else(|| {
                            LedgerError::integrity(format!("unknown side/state {side}/{state}"))
                        })?;
                    counts.0.insert(key, u64::try_from(count).unwrap_or(0));
                }
                Ok(counts)
            })
            .await
    }

    async fn verify_integrity(&self) -> Result<(), LedgerError> {
        self.db.run(verify_integrity).await
    }
}

fn verify_integrity(conn: &mut Connection) -> Result<(), LedgerError> {
    let read = |e| db_error("cannot verify integrity", e);
    let tx = conn.transaction().map_err(read)?;
    let wallet_mismatch: Option<(String, i64, i64, i64, i64, i64)> = tx
        .query_row(
            "SELECT w.wallet_id, w.balance_fen, w.held_fen, COALESCE(h.total, 0),
                    w.pending_credit_fen, COALESCE(p.total, 0)
             FROM wallets w
             LEFT JOIN (SELECT wallet_id, SUM(amount_fen) AS total FROM payments
                        WHERE side = 'payer' AND state = 'reserved' GROUP BY wallet_id) h
                    ON h.wallet_id = w.wallet_id
             LEFT JOIN (SELECT wallet_id, SUM(amount_fen) AS total FROM payments
                        WHERE side = 'payee' AND state = 'pending_credit' GROUP BY wallet_id) p
                    ON p.wallet_id = w.wallet_id
             WHERE w.held_fen <> COALESCE(h.total, 0)
                OR w.pending_credit_fen <> COALESCE(p.total, 0)
                OR w.balance_fen < w.held_fen
             LIMIT 1",
            [],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            },
        )
        .optional()
        .map_err(read)?;
    if let Some((wallet_id, balance, held, held_sum, pending, pending_sum)) = wallet_mismatch {
        return Err(LedgerError::integrity(format!(
            "wallet {wallet_id}: balance {balance}, held {held} (records {held_sum}), \
             pending {pending} (records {pending_sum})"
        )));
    }
    let orphan: Option<[u8; 16]> = tx
        .query_row(
            "SELECT payment_id FROM payments
             WHERE state IN ('reserved', 'pending_credit')
               AND (wallet_id IS NULL OR wallet_id NOT IN (SELECT wallet_id FROM wallets))
             LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(read)?;
    if let Some(id) = orphan {
        return Err(LedgerError::integrity(format!(
            "open payment {} has no wallet",
            PaymentId(id)
        )));
    }
    let mut expected: HashMap<(String, i64), i64> = HashMap::new();
    {
        let mut stmt = tx
            .prepare(
                "SELECT wallet_id, paid_at_ms, amount_fen FROM payments
                 WHERE side = 'payer' AND state IN ('reserved', 'committed')",
            )
            .map_err(read)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, Option<String>>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(read)?;
        for row in rows {
            let (wallet_id, paid_at_ms, amount_fen) = row.map_err(read)?;
            let key = (wallet_id.unwrap_or_default(), business_day(paid_at_ms));
            *expected.entry(key).or_default() += amount_fen;
        }
    }
    let mut stored: HashMap<(String, i64), i64> = HashMap::new();
    {
        let mut stmt = tx
            .prepare("SELECT wallet_id, business_day, spent_fen FROM daily_spend")
            .map_err(read)?;
        let rows = stmt
            .query_map([], |row| Ok(((row.get(0)?, row.get(1)?), row.get(2)?)))
            .map_err(read)?;
        for row in rows {
            let (key, spent): ((String, i64), i64) = row.map_err(read)?;
            stored.insert(key, spent);
        }
    }
    engine::compare_daily(&expected, &stored)
}

/// The central bank's settlement store in a SQLite file (or in memory).
#[derive(Debug, Clone)]
pub struct SqliteSettlement {
    config: SettlementConfig,
    db: SqliteDb,
}

const SETTLEMENT_MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE settlement_meta (
         key TEXT PRIMARY KEY,
         value INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE clearings (
         payment_id BLOB PRIMARY KEY,
         payer_institution TEXT NOT NULL,
         payee_institution TEXT NOT NULL,
         amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
         decided_at_ms INTEGER NOT NULL,
         decided_window_id INTEGER NOT NULL,
         window_id INTEGER NOT NULL,
         late INTEGER NOT NULL,
         recorded_ms INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX clearings_window ON clearings (window_id);
     CREATE TABLE closed_windows (
         window_id INTEGER PRIMARY KEY,
         start_ms INTEGER NOT NULL,
         end_ms INTEGER NOT NULL,
         clearing_count INTEGER NOT NULL,
         late_count INTEGER NOT NULL,
         late_amount_fen INTEGER NOT NULL,
         closed_ms INTEGER NOT NULL
     );
     CREATE TABLE window_positions (
         window_id INTEGER NOT NULL,
         institution_id TEXT NOT NULL,
         debit_fen INTEGER NOT NULL,
         credit_fen INTEGER NOT NULL,
         net_fen INTEGER NOT NULL,
         clearing_count INTEGER NOT NULL,
         PRIMARY KEY (window_id, institution_id)
     ) WITHOUT ROWID;",
)];

/// Key of the watermark in `settlement_meta`: every window before it is closed.
const FIRST_OPEN_WINDOW: &str = "first_open_window";

/// Key of the window length in `settlement_meta`.
const WINDOW_MS: &str = "window_ms";

fn count_u64(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}

fn count_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn meta_value(conn: &Connection, key: &str) -> Result<Option<i64>, LedgerError> {
    conn.prepare_cached("SELECT value FROM settlement_meta WHERE key = ?1")
        .and_then(|mut stmt| stmt.query_row([key], |row| row.get(0)).optional())
        .map_err(|e| db_error("cannot read settlement_meta", e))
}

impl SqliteSettlement {
    /// Opens or creates the settlement store at `path`.
    pub async fn open(
        path: &Path,
        config: SettlementConfig,
        options: &SqliteOptions,
    ) -> Result<SqliteSettlement, LedgerError> {
        Self::open_at(Some(path.to_owned()), config, options).await
    }

    /// A private in-memory settlement store (tests).
    pub async fn open_in_memory(
        config: SettlementConfig,
        options: &SqliteOptions,
    ) -> Result<SqliteSettlement, LedgerError> {
        Self::open_at(None, config, options).await
    }

    async fn open_at(
        path: Option<PathBuf>,
        config: SettlementConfig,
        options: &SqliteOptions,
    ) -> Result<SqliteSettlement, LedgerError> {
        config.validate()?;
        let db = SqliteDb::open(path, *options, SETTLEMENT_MIGRATIONS).await?;
        db.run(move |conn| {
            conn.execute(
                "INSERT INTO settlement_meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO NOTHING",
                params![WINDOW_MS, config.window_ms],
            )
            .map_err(|e| db_error("cannot write settlement_meta", e))?;
            let stored = meta_value(conn, WINDOW_MS)?;
            if stored != Some(config.window_ms) {
                return Err(LedgerError::new(
                    LedgerErrorKind::Config,
                    format!(
                        "settlement store uses windows of {stored:?} ms, not {} ms",
                        config.window_ms
                    ),
                ));
            }
            Ok(())
        })
        .await?;
        Ok(SqliteSettlement { config, db })
    }
}

fn record_clearings(
    conn: &mut Connection,
    config: &SettlementConfig,
    clearings: &[ClearingRecord],
    now_ms: i64,
) -> Result<Vec<ClearingOutcome>, LedgerError> {
    let write = |e| db_error("cannot record clearings", e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(write)?;
    let first_open = meta_value(&tx, FIRST_OPEN_WINDOW)?;
    let mut outcomes = Vec::with_capacity(clearings.len());
    {
        let mut select = tx
            .prepare_cached(
                "SELECT payer_institution, payee_institution, amount_fen, decided_at_ms, window_id
                 FROM clearings WHERE payment_id = ?1",
            )
            .map_err(write)?;
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO clearings (payment_id, payer_institution, payee_institution,
                     amount_fen, decided_at_ms, decided_window_id, window_id, late, recorded_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(write)?;
        for clearing in clearings {
            if let Some(reason_code) = settlement::refusal(clearing) {
                outcomes.push(ClearingOutcome::Refused { reason_code });
                continue;
            }
            let stored: Option<StoredClearing> = select
                .query_row([clearing.payment_id.0], |row| {
                    Ok(StoredClearing {
                        payer_institution: row.get(0)?,
                        payee_institution: row.get(1)?,
                        amount_fen: row.get(2)?,
                        decided_at_ms: row.get(3)?,
                        window_id: row.get(4)?,
                    })
                })
                .optional()
                .map_err(write)?;
            if let Some(stored) = stored {
                outcomes.push(if stored.same_content(clearing) {
                    ClearingOutcome::Duplicate {
                        window_id: stored.window_id,
                    }
                } else {
                    ClearingOutcome::Conflict {
                        window_id: stored.window_id,
                    }
                });
                continue;
            }
            let (window_id, late) =
                settlement::placement(config, first_open, clearing.decided_at_ms);
            insert
                .execute(params![
                    clearing.payment_id.0,
                    clearing.payer_institution,
                    clearing.payee_institution,
                    clearing.amount_fen,
                    clearing.decided_at_ms,
                    config.window_of(clearing.decided_at_ms),
                    window_id,
                    late,
                    now_ms,
                ])
                .map_err(write)?;
            outcomes.push(ClearingOutcome::Recorded { window_id, late });
        }
    }
    tx.commit().map_err(write)?;
    Ok(outcomes)
}

fn close_due_windows(
    conn: &mut Connection,
    config: &SettlementConfig,
    now_ms: i64,
    grace_ms: i64,
) -> Result<Vec<ClosedWindow>, LedgerError> {
    let write = |e| db_error("cannot close windows", e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(write)?;
    let first_open = meta_value(&tx, FIRST_OPEN_WINDOW)?;
    let next_open = config.first_not_due(now_ms, grace_ms);
    if first_open.is_some_and(|w| next_open <= w) {
        return Ok(Vec::new());
    }
    let pairs = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT window_id, payer_institution, payee_institution, SUM(amount_fen),
                        COUNT(*), SUM(late), SUM(CASE WHEN late THEN amount_fen ELSE 0 END)
                 FROM clearings WHERE window_id >= ?1 AND window_id < ?2
                 GROUP BY window_id, payer_institution, payee_institution",
            )
            .map_err(write)?;
        let rows = stmt
            .query_map(params![first_open.unwrap_or(i64::MIN), next_open], |row| {
                Ok(PairTotal {
                    window_id: row.get(0)?,
                    payer_institution: row.get(1)?,
                    payee_institution: row.get(2)?,
                    amount_fen: row.get(3)?,
                    count: count_u64(row.get(4)?),
                    late_count: count_u64(row.get(5)?),
                    late_amount_fen: row.get(6)?,
                })
            })
            .map_err(write)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(write)?
    };
    let closed = settlement::net_windows(config, &pairs)?;
    {
        let mut window_stmt = tx
            .prepare_cached(
                "INSERT INTO closed_windows (window_id, start_ms, end_ms, clearing_count,
                     late_count, late_amount_fen, closed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(write)?;
        let mut position_stmt = tx
            .prepare_cached(
                "INSERT INTO window_positions (window_id, institution_id, debit_fen, credit_fen,
                     net_fen, clearing_count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(write)?;
        for window in &closed {
            window_stmt
                .execute(params![
                    window.window_id,
                    window.start_ms,
                    window.end_ms,
                    count_i64(window.clearing_count),
                    count_i64(window.late_count),
                    window.late_amount_fen,
                    now_ms,
                ])
                .map_err(write)?;
            for p in &window.positions {
                position_stmt
                    .execute(params![
                        window.window_id,
                        p.institution_id,
                        p.debit_fen,
                        p.credit_fen,
                        p.net_fen,
                        count_i64(p.clearing_count),
                    ])
                    .map_err(write)?;
            }
        }
    }
    tx.execute(
        "INSERT INTO settlement_meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![FIRST_OPEN_WINDOW, next_open],
    )
    .map_err(write)?;
    tx.commit().map_err(write)?;
    Ok(closed)
}

fn window_report(
    conn: &mut Connection,
    config: &SettlementConfig,
    window_id: i64,
) -> Result<Option<ClosedWindow>, LedgerError> {
    let read = |e| db_error("cannot read window report", e);
    let tx = conn.transaction().map_err(read)?;
    let first_open = meta_value(&tx, FIRST_OPEN_WINDOW)?;
    if first_open.is_none_or(|w| window_id >= w) {
        return Ok(None);
    }
    let header: Option<(i64, i64, i64)> = tx
        .query_row(
            "SELECT clearing_count, late_count, late_amount_fen FROM closed_windows
             WHERE window_id = ?1",
            [window_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()
        .map_err(read)?;
    let Some((clearing_count, late_count, late_amount_fen)) = header else {
        return Ok(Some(settlement::empty_window(config, window_id)));
    };
    let mut stmt = tx
        .prepare_cached(
            "SELECT institution_id, debit_fen, credit_fen, net_fen, clearing_count
             FROM window_positions WHERE window_id = ?1 ORDER BY institution_id",
        )
        .map_err(read)?;
    let positions = stmt
        .query_map([window_id], |row| {
            Ok(Position {
                institution_id: row.get(0)?,
                debit_fen: row.get(1)?,
                credit_fen: row.get(2)?,
                net_fen: row.get(3)?,
                clearing_count: count_u64(row.get(4)?),
            })
        })
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    let (start_ms, end_ms) = config.bounds(window_id);
    Ok(Some(ClosedWindow {
        window_id,
        start_ms,
        end_ms,
        positions,
        clearing_count: count_u64(clearing_count),
        late_count: count_u64(late_count),
        late_amount_fen,
    }))
}

#[async_trait]
impl SettlementStore for SqliteSettlement {
    fn config(&self) -> SettlementConfig {
        self.config
    }

    async fn record_clearings(
        &self,
        clearings: &[ClearingRecord],
        now_ms: i64,
    ) -> Result<Vec<ClearingOutcome>, LedgerError> {
        settlement::check_batch(clearings.len())?;
        let clearings = clearings.to_vec();
        let config = self.config;
        self.db
            .run(move |conn| record_clearings(conn, &config, &clearings, now_ms))
            .await
    }

    async fn close_due_windows(
        &self,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Vec<ClosedWindow>, LedgerError> {
        let config = self.config;
        self.db
            .run(move |conn| close_due_windows(conn, &config, now_ms, grace_ms))
            .await
    }

    async fn window_report(&self, window_id: i64) -> Result<Option<ClosedWindow>, LedgerError> {
        let config = self.config;
        self.db
            .run(move |conn| window_report(conn, &config, window_id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name of the index migration 2 adds.
    const DECIDED_INDEX: &str = "payments_payer_decided";

    fn ledger_at(migrations: &[(i64, &str)]) -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        migrate(&conn, migrations).expect("migrate");
        conn
    }

    fn has_index(conn: &Connection, name: &str) -> bool {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
            [name],
            |row| row.get::<_, i64>(0),
        )
        .expect("read sqlite_master")
            == 1
    }

    /// A payer record in `state`, last changed at `updated_ms`, written as the first version's
    /// schema stores it.
    fn insert_payer_record(conn: &Connection, n: u8, state: PaymentState, updated_ms: i64) {
        conn.execute(
            "INSERT INTO payments (payment_id, side, state, digest, wallet_id, amount_fen,
                 paid_at_ms, created_ms, updated_ms)
             VALUES (?1, 'payer', ?2, ?3, 'a1', 100, 1, 1, ?4)",
            params![[n; 16], state.as_str(), [n; 32], updated_ms],
        )
        .expect("insert payment");
    }

    fn decided(conn: &Connection, since_ms: i64) -> Vec<PaymentId> {
        let mut stmt = conn.prepare(&decided_sql()).expect("prepare");
        stmt.query_map(params![since_ms, 100], payment_from_row)
            .expect("query")
            .map(|r| r.expect("row").payment_id)
            .collect()
    }

    #[test]
    fn decided_listing_walks_its_partial_index_without_sorting() {
        let conn = ledger_at(LEDGER_MIGRATIONS);
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", decided_sql()))
            .expect("prepare plan");
        let steps: Vec<String> = stmt
            .query_map(params![0, 10], |row| row.get(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        assert!(steps.iter().any(|s| s.contains(DECIDED_INDEX)), "{steps:?}");
        assert!(
            !steps.iter().any(|s| s.contains("TEMP B-TREE")),
            "{steps:?}"
        );
    }

    #[test]
    fn wallet_openings_search_their_indexes_and_scan_no_payments() {
        let conn = ledger_at(LEDGER_MIGRATIONS);
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {WALLET_OPENINGS_SQL}"))
            .expect("prepare plan");
        let steps: Vec<String> = stmt
            .query_map(
                params!["", 10, super::super::offline::PURSE_SUFFIX],
                |row| row.get(3),
            )
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        assert!(
            steps
                .iter()
                .any(|s| s.contains("USING INDEX payments_moving_by_wallet")),
            "{steps:?}"
        );
        assert!(
            steps
                .iter()
                .any(|s| s.contains("INDEX offline_clearings_by_payee")),
            "{steps:?}"
        );
        assert!(!steps.iter().any(|s| s.starts_with("SCAN")), "{steps:?}");
    }

    #[test]
    fn decided_index_is_added_to_a_ledger_of_the_first_version() {
        let conn = ledger_at(&LEDGER_MIGRATIONS[..1]);
        assert!(!has_index(&conn, DECIDED_INDEX));
        insert_payer_record(&conn, 2, PaymentState::Voided, 2_000);
        insert_payer_record(&conn, 1, PaymentState::Committed, 3_000);
        insert_payer_record(&conn, 3, PaymentState::Reserved, 2_500);
        migrate(&conn, LEDGER_MIGRATIONS).expect("upgrade");
        assert!(has_index(&conn, DECIDED_INDEX));
        let applied: i64 = conn
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |row| {
                row.get(0)
            })
            .expect("versions");
        let latest = LEDGER_MIGRATIONS.last().map(|(version, _)| *version);
        assert_eq!(Some(applied), latest);
        assert_eq!(
            decided(&conn, 0),
            vec![PaymentId([2; 16]), PaymentId([1; 16])]
        );
    }

    #[test]
    fn decided_index_migration_runs_again_harmlessly() {
        let conn = ledger_at(LEDGER_MIGRATIONS);
        // As if an operator had built the index by hand ahead of the upgrade.
        conn.execute("DELETE FROM schema_migrations WHERE version = 2", [])
            .expect("forget migration");
        migrate(&conn, LEDGER_MIGRATIONS).expect("migrate again");
        assert!(has_index(&conn, DECIDED_INDEX));
    }

    const OI: &str = "oi-a";

    fn limits() -> WalletLimits {
        WalletLimits {
            balance_limit_fen: 1_000_000,
            single_payment_limit_fen: 200_000,
            daily_limit_fen: 500_000,
            password_free_limit_fen: 100_000,
        }
    }

    fn pid(n: u8) -> PaymentId {
        PaymentId([n; 16])
    }

    fn reserve_request(n: u8, payer_wallet: &str, amount_fen: i64) -> ReserveRequest {
        let paid_at_ms = now_ms();
        ReserveRequest {
            payment_id: pid(n),
            digest: Digest([n; 32]),
            payer_wallet: payer_wallet.to_owned(),
            payee: Party {
                institution_id: "oi-b".to_owned(),
                wallet_id: "b1".to_owned(),
            },
            amount_fen,
            paid_at_ms,
            expires_at_ms: paid_at_ms + 60_000,
        }
    }

    /// A ledger file in `dir` with wallets `a0` to `a7` and `bad`, 10,000 fen each.
    async fn ledger_with_wallets(dir: &Path, options: &SqliteOptions) -> SqliteLedger {
        let ledger = SqliteLedger::open(&dir.join("oi-a.db"), OI, options)
            .await
            .expect("open ledger");
        let accounts: Vec<WalletAccount> = (0..8)
            .map(|i| format!("a{i}"))
            .chain(["bad".to_owned()])
            .map(|wallet_id| WalletAccount {
                wallet_id,
                institution_id: OI.to_owned(),
                tier: 4,
                balance_fen: 10_000,
                limits: limits(),
                locked: false,
            })
            .collect();
        let opened = ledger.open_wallets(&accounts).await.expect("open wallets");
        assert_eq!(opened, vec![OpenResult::Created; accounts.len()]);
        ledger
    }

    /// Holds the connection's thread until the returned sender is dropped; returns once the
    /// thread is held.
    async fn hold_thread(ledger: &SqliteLedger) -> std::sync::mpsc::Sender<()> {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held, holding) = oneshot::channel();
        let db = ledger.db.clone();
        tokio::spawn(async move {
            db.run(move |_| {
                let _ = held.send(());
                let _ = released.recv();
                Ok(())
            })
            .await
        });
        holding.await.expect("thread held");
        release
    }

    /// Waits until `count` requests are queued behind the held thread.
    async fn wait_queued(ledger: &SqliteLedger, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ledger.db.writer.queued() < count {
            assert!(Instant::now() < deadline, "requests never queued");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_waiting_together_share_one_commit_and_fail_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = ledger_with_wallets(dir.path(), &SqliteOptions::default()).await;
        let held_on_bad = ledger
            .reserve(&[reserve_request(100, "bad", 500)])
            .await
            .expect("reserve");
        assert!(matches!(held_on_bad[..], [ReserveResult::Reserved(_)]));
        // Committing the payment on `bad` writes its record, then fails on its wallet: the
        // record's change must be rolled back with it, and nothing else.
        ledger
            .db
            .run(|conn| {
                conn.execute_batch(
                    "CREATE TRIGGER refuse_bad BEFORE UPDATE ON wallets
                     WHEN NEW.wallet_id = 'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END",
                )
                .map_err(|e| db_error("trigger", e))
            })
            .await
            .expect("install trigger");
        let before = ledger.group_commits();

        let release = hold_thread(&ledger).await;
        let bad = [pid(100)];
        let first = [pid(0)];
        let requests: Vec<_> = (0..8u8)
            .map(|i| reserve_request(i, &format!("a{i}"), 1_000 + i64::from(i)))
            .collect();
        // Sent in this order when first polled: a reservation and its commit in the same group,
        // the failing commit in the middle.
        let (r0, r1, failed, r2, committed, rest) = {
            let wait = wait_queued(&ledger, 10);
            let calls = async {
                tokio::join!(
                    ledger.reserve(&requests[0..1]),
                    ledger.reserve(&requests[1..2]),
                    ledger.commit(&bad),
                    ledger.reserve(&requests[2..3]),
                    ledger.commit(&first),
                    futures::future::join_all(
                        requests[3..]
                            .iter()
                            .map(|r| ledger.reserve(std::slice::from_ref(r)))
                    ),
                )
            };
            let released = async {
                wait.await;
                drop(release);
            };
            tokio::join!(calls, released).0
        };
        let after = ledger.group_commits();
        assert_eq!(after.commits - before.commits, 1, "one transaction");
        assert_eq!(after.requests - before.requests, 10, "for every batch");

        let err = failed.expect_err("the commit on `bad` fails");
        assert_eq!(err.kind(), LedgerErrorKind::Integrity, "{err}");
        for (i, result) in [r0, r1, r2].into_iter().enumerate() {
            let result = result.expect("reserve");
            assert!(
                matches!(&result[..], [ReserveResult::Reserved(r)] if r.payment_id == pid(i as u8)),
                "{result:?}"
            );
        }
        let committed = committed.expect("commit after its reservation");
        assert!(
            matches!(&committed[..], [Transition::Applied(r)] if r.state == PaymentState::Committed),
            "{committed:?}"
        );
        for result in rest {
            assert!(matches!(
                &result.expect("reserve")[..],
                [ReserveResult::Reserved(_)]
            ));
        }

        let record = ledger
            .payment(&bad[0], Side::Payer)
            .await
            .expect("read")
            .expect("record");
        assert_eq!(record.state, PaymentState::Reserved, "rolled back alone");
        let a0 = ledger.wallet("a0").await.expect("read").expect("a0");
        assert_eq!((a0.account.balance_fen, a0.held_fen), (9_000, 0));
        for i in 1..8 {
            let wallet = ledger
                .wallet(&format!("a{i}"))
                .await
                .expect("read")
                .expect("wallet");
            assert_eq!(wallet.held_fen, 1_000 + i, "a{i}");
        }
        ledger.verify_integrity().await.expect("integrity");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_that_cannot_take_the_lock_fails_whole_and_a_retry_succeeds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteOptions {
            busy_timeout_ms: 20,
            ..SqliteOptions::default()
        };
        let ledger = ledger_with_wallets(dir.path(), &options).await;
        // Another process holds the write lock.
        let other = Connection::open(dir.path().join("oi-a.db")).expect("open");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");
        let before = ledger.group_commits();
        let (one, two) = (
            [reserve_request(1, "a1", 100)],
            [reserve_request(2, "a2", 100)],
        );
        let (first, second) = tokio::join!(ledger.reserve(&one), ledger.reserve(&two));
        for result in [first, second] {
            assert_eq!(result.expect_err("locked").kind(), LedgerErrorKind::Busy);
        }
        assert_eq!(ledger.group_commits(), before, "nothing committed");
        other.execute_batch("ROLLBACK").expect("unlock");
        let retried = ledger
            .reserve(&[reserve_request(1, "a1", 100), reserve_request(2, "a2", 100)])
            .await
            .expect("retry");
        assert!(
            retried
                .iter()
                .all(|r| matches!(r, ReserveResult::Reserved(_)))
        );
        assert_eq!(ledger.group_commits().commits, before.commits + 1);
    }
}
