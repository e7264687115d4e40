//! PostgreSQL backend: one schema per institution, row locks, bulk statements.
//!
//! A batch costs a handful of round trips whatever its size: lock the payment rows it names
//! (`FOR UPDATE`, in id order), lock the wallets (in id order), read the daily totals, decide in
//! memory (`engine`), then write back with `unnest` arrays. Every transaction takes its locks in
//! the same order (payments by id, then wallets by id), so concurrent workers do not deadlock in
//! the common case; the remaining races (two workers inserting the same new payment, a deadlock
//! the server still detects) fail the transaction, which is retried whole up to
//! [`PG_RETRIES_MAX`] times before the batch fails as [`LedgerErrorKind::Busy`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use super::engine::{
    self, CommitOp, CreditOp, FinalizeOp, Op, RejectOp, ReserveOp, VoidOp, WalletRow, Working,
};
use super::error::{LedgerError, LedgerErrorKind};
use super::metrics;
use super::settlement::{
    self, ClearingOutcome, ClearingRecord, ClosedWindow, PairTotal, Position, SettlementConfig,
    SettlementStore, StoredClearing,
};
use super::types::{
    CreditRequest, CreditResult, DECIDED_LIST_MAX, Digest, EXPIRED_LIST_MAX, Finalization,
    FinalizeResult, OpenResult, OpeningTerms, Party, PaymentId, PaymentRecord, PaymentState,
    PendingTotals, Rejection, RejectionResult, ReserveRequest, ReserveResult, Side, StateCounts,
    Transition, WALLET_OPENINGS_PAGE_MAX, WalletAccount, WalletLimits, WalletOpening, WalletState,
    business_day,
};
use super::{Ledger, SETTLEMENT_STORE_NAME, now_ms};

/// Most times a transaction that hit a deadlock, a serialization failure or a concurrent insert
/// of the same payment is run again before the batch fails as busy.
pub const PG_RETRIES_MAX: u32 = 8;

/// The `backend` label of this backend's metrics.
const BACKEND: &str = "postgres";

/// First pause before a retry, doubled on each further retry.
const RETRY_BACKOFF_MS: u64 = 2;

/// Default number of connections per ledger handle.
pub const PG_POOL_SIZE_DEFAULT: usize = 8;

/// PostgreSQL settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Connections per ledger handle.
    pub pool_size: usize,
    /// How long to wait for a new connection or a free one, in ms.
    pub connect_timeout_ms: u64,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: PG_POOL_SIZE_DEFAULT,
            connect_timeout_ms: 10_000,
        }
    }
}

/// A parsed PostgreSQL URL.
#[derive(Debug, Clone)]
pub(crate) struct PgTarget {
    /// What tokio-postgres reads from the URL.
    pub config: tokio_postgres::Config,
    /// `sslrootcert`: the CA certificates (PEM) that sign the server's certificate. Without it
    /// a required TLS connection trusts the system's roots.
    pub root_cert: Option<PathBuf>,
}

/// Parses a PostgreSQL URL. `sslmode=require` makes the connection TLS, with the server's
/// certificate verified against `sslrootcert=FILE` (libpq's name) or the system's roots and
/// its name checked against the host; `prefer` (the default) and `disable` connect without
/// TLS, so a server's self-signed certificate never stops a connection that did not ask for
/// TLS.
pub(crate) fn parse_config(url: &str) -> Result<PgTarget, LedgerError> {
    let (url, root_cert) = take_query_param(url, "sslrootcert");
    let config = tokio_postgres::Config::from_str(&url).map_err(|e| {
        LedgerError::with_source(LedgerErrorKind::Config, "invalid PostgreSQL URL", e)
    })?;
    if root_cert.is_some() && config.get_ssl_mode() != SslMode::Require {
        return Err(LedgerError::new(
            LedgerErrorKind::Config,
            "sslrootcert is given but sslmode is not require: add sslmode=require",
        ));
    }
    Ok(PgTarget {
        config,
        root_cert: root_cert.map(PathBuf::from),
    })
}

/// Removes `name=value` from the URL's query (tokio-postgres refuses options it does not
/// know) and returns it.
fn take_query_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((key, v)) if key == name => {
                value = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    if kept.is_empty() {
        (base.to_owned(), value)
    } else {
        (format!("{base}?{}", kept.join("&")), value)
    }
}

/// The TLS client configuration of a required-TLS connection: the CA file's certificates, or
/// the system's roots.
fn tls_config(root_cert: Option<&Path>) -> Result<rustls::ClientConfig, LedgerError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    LedgerError::with_source(
                        LedgerErrorKind::Config,
                        format!("cannot read sslrootcert {}", path.display()),
                        e,
                    )
                })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(LedgerError::new(
                    LedgerErrorKind::Config,
                    format!("sslrootcert {} holds no usable certificate", path.display()),
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(LedgerError::new(
                    LedgerErrorKind::Config,
                    "sslmode=require without sslrootcert, and no system root certificates found",
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LedgerError::with_source(LedgerErrorKind::Config, "TLS protocol versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The URL with any password replaced, for logs.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.find("password=") {
        Some(at) => format!("{}password=***", &tail[..at]),
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// What a transaction attempt can fail with: a database error (maybe retryable) or a decision
/// of the rules (never retried).
pub(crate) enum AttemptError {
    Pg(tokio_postgres::Error),
    Ledger(LedgerError),
}

impl From<tokio_postgres::Error> for AttemptError {
    fn from(err: tokio_postgres::Error) -> Self {
        AttemptError::Pg(err)
    }
}

impl From<LedgerError> for AttemptError {
    fn from(err: LedgerError) -> Self {
        AttemptError::Ledger(err)
    }
}

fn is_retryable(err: &tokio_postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE)
            | Some(&SqlState::T_R_DEADLOCK_DETECTED)
            | Some(&SqlState::UNIQUE_VIOLATION)
    )
}

pub(crate) fn pg_error(context: &str, err: tokio_postgres::Error) -> LedgerError {
    let kind = if err.is_closed() {
        LedgerErrorKind::Connect
    } else {
        match err.code() {
            Some(&SqlState::CHECK_VIOLATION) => LedgerErrorKind::Integrity,
            Some(code) if is_retryable_code(code) => LedgerErrorKind::Busy,
            // The server is shutting down, restarting or not accepting connections yet: the
            // connection is lost, not the request refused.
            Some(
                &SqlState::ADMIN_SHUTDOWN
                | &SqlState::CRASH_SHUTDOWN
                | &SqlState::CANNOT_CONNECT_NOW,
            ) => LedgerErrorKind::Connect,
            Some(_) => LedgerErrorKind::Database,
            None => LedgerErrorKind::Connect,
        }
    };
    LedgerError::with_source(kind, context.to_owned(), err)
}

fn is_retryable_code(code: &SqlState) -> bool {
    *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::UNIQUE_VIOLATION
}

/// Runs `attempt` until it succeeds, fails for good, or has been retried [`PG_RETRIES_MAX`]
/// times.
pub(crate) async fn with_retries<T, F, Fut>(context: &str, mut attempt: F) -> Result<T, LedgerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AttemptError>>,
{
    let mut retries = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(AttemptError::Pg(err)) if is_retryable(&err) && retries < PG_RETRIES_MAX => {
                retries += 1;
                metrics::record_retry(BACKEND);
                tracing::debug!(retries, error = %err, "{context}: retrying transaction");
                let backoff_ms = RETRY_BACKOFF_MS << retries.min(6);
                // Spread retries of workers that collided, without a random source.
                let spread_ms = u64::from(now_ms().rem_euclid(7).unsigned_abs() as u32);
                tokio::time::sleep(Duration::from_millis(backoff_ms + spread_ms)).await;
            }
            Err(AttemptError::Pg(err)) => return Err(pg_error(context, err)),
            Err(AttemptError::Ledger(err)) => return Err(err),
        }
    }
}

/// `"dcpipe_<name>"`, quoted (names are validated to `[A-Za-z0-9_-]`, so no quote inside).
fn schema_ident(name: &str) -> String {
    format!("\"dcpipe_{}\"", name.replace('"', ""))
}

/// A connection pool bound to one schema.
#[derive(Clone)]
pub(crate) struct PgDb {
    pool: Pool,
    schema: String,
}

impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDb")
            .field("schema", &self.schema)
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgDb {
    pub(crate) async fn connect(
        url: &str,
        name: &str,
        options: &PostgresOptions,
        migrations: &[(i64, &str)],
    ) -> Result<PgDb, LedgerError> {
        let PgTarget {
            mut config,
            root_cert,
        } = parse_config(url)?;
        let timeout = Duration::from_millis(options.connect_timeout_ms);
        config.connect_timeout(timeout);
        config.application_name("dcpipe-ledger");
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if config.get_ssl_mode() == SslMode::Require {
            let tls =
                tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(root_cert.as_deref())?);
            Manager::from_config(config, tls, manager_config)
        } else {
            Manager::from_config(config, NoTls, manager_config)
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| {
                LedgerError::with_source(LedgerErrorKind::Config, "cannot build pool", e)
            })?;
        let db = PgDb {
            pool,
            schema: schema_ident(name),
        };
        db.migrate(migrations).await?;
        Ok(db)
    }

    pub(crate) async fn client(&self) -> Result<Object, LedgerError> {
        self.pool.get().await.map_err(|e| {
            LedgerError::with_source(
                LedgerErrorKind::Connect,
                format!("cannot get a connection for {}", self.schema),
                e,
            )
        })
    }

    /// `sql` with `{s}` replaced by the schema.
    pub(crate) fn sql(&self, sql: &str) -> String {
        sql.replace("{s}", &self.schema)
    }

    /// Records in `meta_table` (key, value) of the schema which institution it belongs to,
    /// refusing a schema of another one (the ledger's and the vehicles' session store's).
    pub(crate) async fn claim_owner(
        &self,
        meta_table: &str,
        institution_id: &str,
    ) -> Result<(), LedgerError> {
        let client = self.client().await?;
        let context = "cannot claim the schema";
        client
            .execute(
                &self.sql(&format!(
                    "INSERT INTO {{s}}.{meta_table} (key, value) VALUES ('institution_id', $1)
                     ON CONFLICT (key) DO NOTHING"
                )),
                &[&institution_id],
            )
            .await
            .map_err(|e| pg_error(context, e))?;
        let owner: String = client
            .query_one(
                &self.sql(&format!(
                    "SELECT value FROM {{s}}.{meta_table} WHERE key = 'institution_id'"
                )),
                &[],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| pg_error(context, e))?;
        if owner != institution_id {
            return Err(LedgerError::new(
                LedgerErrorKind::Config,
                format!("this database belongs to {owner}, not to {institution_id}"),
            ));
        }
        Ok(())
    }

    /// Creates the schema and applies missing migrations, serialized by an advisory lock so
    /// that workers starting together apply each migration once.
    async fn migrate(&self, migrations: &[(i64, &str)]) -> Result<(), LedgerError> {
        let mut client = self.client().await?;
        let context = "cannot migrate ledger schema";
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error(context, e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&self.schema],
        )
        .await
        .map_err(|e| pg_error(context, e))?;
        tx.batch_execute(&self.sql(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
                 version BIGINT PRIMARY KEY,
                 applied_ms BIGINT NOT NULL
             );",
        ))
        .await
        .map_err(|e| pg_error(context, e))?;
        for (version, sql) in migrations {
            let applied = tx
                .query_opt(
                    &self.sql("SELECT version FROM {s}.schema_migrations WHERE version = $1"),
                    &[version],
                )
                .await
                .map_err(|e| pg_error(context, e))?;
            if applied.is_some() {
                continue;
            }
            tx.batch_execute(&self.sql(sql))
                .await
                .map_err(|e| pg_error(&format!("migration {version} failed"), e))?;
            tx.execute(
                &self
                    .sql("INSERT INTO {s}.schema_migrations (version, applied_ms) VALUES ($1, $2)"),
                &[version, &now_ms()],
            )
            .await
            .map_err(|e| pg_error(context, e))?;
        }
        tx.commit().await.map_err(|e| pg_error(context, e))
    }
}

const LEDGER_MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE {s}.ledger_meta (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );
     CREATE TABLE {s}.wallets (
         wallet_id TEXT PRIMARY KEY,
         institution_id TEXT NOT NULL,
         tier SMALLINT NOT NULL,
         balance_fen BIGINT NOT NULL,
         held_fen BIGINT NOT NULL DEFAULT 0,
         pending_credit_fen BIGINT NOT NULL DEFAULT 0,
         balance_limit_fen BIGINT NOT NULL,
         single_payment_limit_fen BIGINT NOT NULL,
         daily_limit_fen BIGINT NOT NULL,
         password_free_limit_fen BIGINT NOT NULL,
         locked BOOLEAN NOT NULL,
         created_ms BIGINT NOT NULL,
         updated_ms BIGINT NOT NULL,
         CHECK (held_fen >= 0 AND pending_credit_fen >= 0 AND balance_fen >= held_fen)
     );
     CREATE TABLE {s}.payments (
         payment_id BYTEA NOT NULL,
         side TEXT NOT NULL,
         state TEXT NOT NULL,
         digest BYTEA,
         wallet_id TEXT,
         cp_institution_id TEXT,
         cp_wallet_id TEXT,
         amount_fen BIGINT NOT NULL,
         reason_code TEXT,
         paid_at_ms BIGINT NOT NULL,
         created_ms BIGINT NOT NULL,
         updated_ms BIGINT NOT NULL,
         expires_at_ms BIGINT,
         PRIMARY KEY (payment_id, side)
     );
     CREATE INDEX payments_reserved_expiry ON {s}.payments (expires_at_ms)
         WHERE state = 'reserved';
     CREATE TABLE {s}.daily_spend (
         wallet_id TEXT NOT NULL,
         business_day BIGINT NOT NULL,
         spent_fen BIGINT NOT NULL CHECK (spent_fen >= 0),
         PRIMARY KEY (wallet_id, business_day)
     );",
    ),
    // The payer side's decisions by update time, for `decided_since`: partial, so it holds
    // only the rows that listing reads, in the order it returns them (no sort, and a LIMIT
    // stops the scan). IF NOT EXISTS: harmless on a schema that already has it. Built inside
    // the migration transaction, so writers of this ledger wait for the build once, at the
    // upgrade.
    (
        2,
        "CREATE INDEX IF NOT EXISTS payments_payer_decided
             ON {s}.payments (updated_ms, payment_id)
             WHERE side = 'payer' AND state IN ('committed', 'voided');",
    ),
    // Issuance: one record per opened wallet, the only way money enters a ledger. Wallets
    // opened before this record existed are recorded with their balance at the upgrade.
    (
        3,
        "CREATE TABLE {s}.issuances (
             wallet_id TEXT PRIMARY KEY,
             amount_fen BIGINT NOT NULL CHECK (amount_fen >= 0),
             tier SMALLINT NOT NULL,
             balance_limit_fen BIGINT NOT NULL,
             single_payment_limit_fen BIGINT NOT NULL,
             daily_limit_fen BIGINT NOT NULL,
             password_free_limit_fen BIGINT NOT NULL,
             issued_ms BIGINT NOT NULL
         );
         INSERT INTO {s}.issuances
             SELECT wallet_id, balance_fen, tier, balance_limit_fen, single_payment_limit_fen,
                    daily_limit_fen, password_free_limit_fen, created_ms
             FROM {s}.wallets;",
    ),
    // Offline wallets (flow 2): see `offline`. Purse accounts are rows of `wallets`.
    (4, super::postgres_offline::MIGRATION),
    // An offline payment voided on the clearing path gives its money back once
    // (`offline::OfflineLedger::return_voided`).
    (5, super::postgres_offline::MIGRATION_RETURNS),
    // An institution orders a wallet to rotate its key (`OfflineRecord::rotation_ordered_at_ms`).
    (6, super::postgres_offline::MIGRATION_ROTATION),
    // An audit's balance check counts each wallet's payments that moved money, and asks
    // whether an offline payment paid it (`Ledger::wallet_openings`): without these, each
    // wallet scanned every payment of the ledger (a check quadratic in the ledger's size).
    // Partial: a payment side enters the first index once, when it reaches its final state.
    (
        7,
        "CREATE INDEX IF NOT EXISTS payments_moving_by_wallet ON {s}.payments (wallet_id)
             WHERE (side = 'payer' AND state = 'committed')
                OR (side = 'payee' AND state = 'credited');
         CREATE INDEX IF NOT EXISTS offline_clearings_by_payee
             ON {s}.offline_clearings (payee_wallet_id);",
    ),
];

/// A page of wallets with their openings, for an audit's balance check: the payments that
/// moved each one's money are counted, and an offline payment to it looked up, through indexes
/// (migration 7).
const WALLET_OPENINGS_SQL: &str = "SELECT w.wallet_id, i.amount_fen, i.issued_ms, w.balance_fen,
        w.held_fen, w.pending_credit_fen,
        (SELECT COUNT(*)::bigint FROM {s}.payments p WHERE p.wallet_id = w.wallet_id
           AND ((p.side = 'payer' AND p.state = 'committed')
             OR (p.side = 'payee' AND p.state = 'credited'))),
        (w.wallet_id LIKE '%' || $3
           OR EXISTS (SELECT 1 FROM {s}.offline_wallets o WHERE o.wallet_id = w.wallet_id)
           OR EXISTS (SELECT 1 FROM {s}.offline_clearings c WHERE c.payee_wallet_id = w.wallet_id))
     FROM {s}.wallets w JOIN {s}.issuances i ON i.wallet_id = w.wallet_id
     WHERE w.wallet_id > $1 ORDER BY w.wallet_id LIMIT $2";

const PAYMENT_COLUMNS: &str = "payment_id, side, state, digest, wallet_id, cp_institution_id, \
     cp_wallet_id, amount_fen, reason_code, paid_at_ms, created_ms, updated_ms, expires_at_ms";

const WALLET_COLUMNS: &str = "wallet_id, institution_id, tier, balance_fen, held_fen, \
     pending_credit_fen, balance_limit_fen, single_payment_limit_fen, daily_limit_fen, \
     password_free_limit_fen, locked";

fn stored_error(message: String) -> LedgerError {
    LedgerError::integrity(format!("unreadable stored row: {message}"))
}

fn payment_from_row(row: &Row) -> Result<PaymentRecord, LedgerError> {
    let get = |e: tokio_postgres::Error| pg_error("cannot decode payment", e);
    let id: Vec<u8> = row.try_get(0).map_err(get)?;
    let side: String = row.try_get(1).map_err(get)?;
    let state: String = row.try_get(2).map_err(get)?;
    let digest: Option<Vec<u8>> = row.try_get(3).map_err(get)?;
    let cp_institution_id: Option<String> = row.try_get(5).map_err(get)?;
    let cp_wallet_id: Option<String> = row.try_get(6).map_err(get)?;
    let digest = match digest {
        Some(bytes) => Some(Digest(
            bytes
                .try_into()
                .map_err(|_| stored_error("digest length".into()))?,
        )),
        None => None,
    };
    Ok(PaymentRecord {
        payment_id: PaymentId(
            id.try_into()
                .map_err(|_| stored_error("payment id length".into()))?,
        ),
        side: Side::parse(&side).ok_or_else(|| stored_error(format!("side {side}")))?,
        state: PaymentState::parse(&state).ok_or_else(|| stored_error(format!("state {state}")))?,
        digest,
        wallet_id: row.try_get(4).map_err(get)?,
        counterparty: match (cp_institution_id, cp_wallet_id) {
            (Some(institution_id), Some(wallet_id)) => Some(Party {
                institution_id,
                wallet_id,
            }),
            _ => None,
        },
        amount_fen: row.try_get(7).map_err(get)?,
        reason_code: row.try_get(8).map_err(get)?,
        paid_at_ms: row.try_get(9).map_err(get)?,
        created_ms: row.try_get(10).map_err(get)?,
        updated_ms: row.try_get(11).map_err(get)?,
        expires_at_ms: row.try_get(12).map_err(get)?,
    })
}

fn wallet_from_row(row: &Row) -> Result<WalletRow, LedgerError> {
    let get = |e: tokio_postgres::Error| pg_error("cannot decode wallet", e);
    let tier: i16 = row.try_get(2).map_err(get)?;
    Ok(WalletRow {
        account: WalletAccount {
            wallet_id: row.try_get(0).map_err(get)?,
            institution_id: row.try_get(1).map_err(get)?,
            tier: u8::try_from(tier).map_err(|_| stored_error(format!("tier {tier}")))?,
            balance_fen: row.try_get(3).map_err(get)?,
            limits: WalletLimits {
                balance_limit_fen: row.try_get(6).map_err(get)?,
                single_payment_limit_fen: row.try_get(7).map_err(get)?,
                daily_limit_fen: row.try_get(8).map_err(get)?,
                password_free_limit_fen: row.try_get(9).map_err(get)?,
            },
            locked: row.try_get(10).map_err(get)?,
        },
        held_fen: row.try_get(4).map_err(get)?,
        pending_credit_fen: row.try_get(5).map_err(get)?,
    })
}

/// The ledger's statements, with the schema filled in once.
#[derive(Debug)]
struct LedgerSql {
    lock_payments: String,
    lock_wallets: String,
    read_daily: String,
    insert_payments: String,
    update_payments: String,
    update_wallets: String,
    upsert_daily: String,
    read_payment: String,
    read_wallet: String,
    read_wallets: String,
    expired: String,
    decided: String,
}

impl LedgerSql {
    fn new(db: &PgDb) -> LedgerSql {
        LedgerSql {
            lock_payments: db.sql(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM {{s}}.payments
                 WHERE side = $1::text AND payment_id = ANY($2::bytea[])
                 ORDER BY payment_id FOR UPDATE"
            )),
            lock_wallets: db.sql(&format!(
                "SELECT {WALLET_COLUMNS} FROM {{s}}.wallets
                 WHERE wallet_id = ANY($1::text[]) ORDER BY wallet_id FOR UPDATE"
            )),
            read_daily: db.sql(
                "SELECT d.wallet_id, d.business_day, d.spent_fen FROM {s}.daily_spend d
                 JOIN unnest($1::text[], $2::bigint[]) AS k(wallet_id, business_day)
                   ON d.wallet_id = k.wallet_id AND d.business_day = k.business_day",
            ),
            insert_payments: db.sql(&format!(
                "INSERT INTO {{s}}.payments ({PAYMENT_COLUMNS})
                 SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bytea[],
                     $5::text[], $6::text[], $7::text[], $8::bigint[], $9::text[], $10::bigint[],
                     $11::bigint[], $12::bigint[], $13::bigint[])"
            )),
            update_payments: db.sql(
                "UPDATE {s}.payments p SET state = u.state, digest = u.digest,
                     wallet_id = u.wallet_id, cp_institution_id = u.cp_institution_id,
                     cp_wallet_id = u.cp_wallet_id, amount_fen = u.amount_fen,
                     reason_code = u.reason_code, paid_at_ms = u.paid_at_ms,
                     updated_ms = u.updated_ms, expires_at_ms = u.expires_at_ms
                 FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                     $6::text[], $7::text[], $8::bigint[], $9::text[], $10::bigint[],
                     $11::bigint[], $12::bigint[])
                     AS u(payment_id, side, state, digest, wallet_id, cp_institution_id,
                          cp_wallet_id, amount_fen, reason_code, paid_at_ms, updated_ms,
                          expires_at_ms)
                 WHERE p.payment_id = u.payment_id AND p.side = u.side",
            ),
            update_wallets: db.sql(
                "UPDATE {s}.wallets w SET balance_fen = u.balance_fen, held_fen = u.held_fen,
                     pending_credit_fen = u.pending_credit_fen, updated_ms = $5
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
                     AS u(wallet_id, balance_fen, held_fen, pending_credit_fen)
                 WHERE w.wallet_id = u.wallet_id",
            ),
            upsert_daily: db.sql(
                "INSERT INTO {s}.daily_spend (wallet_id, business_day, spent_fen)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                 ON CONFLICT (wallet_id, business_day) DO UPDATE SET spent_fen = EXCLUDED.spent_fen",
            ),
            read_payment: db.sql(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM {{s}}.payments WHERE payment_id = $1 AND side = $2"
            )),
            read_wallet: db.sql(&format!(
                "SELECT {WALLET_COLUMNS} FROM {{s}}.wallets WHERE wallet_id = $1"
            )),
            read_wallets: db.sql(&format!(
                "SELECT {WALLET_COLUMNS} FROM {{s}}.wallets WHERE wallet_id = ANY($1::text[])"
            )),
            expired: db.sql(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM {{s}}.payments
                 WHERE state = 'reserved' AND expires_at_ms <= $1
                 ORDER BY expires_at_ms, payment_id LIMIT $2"
            )),
            // Its WHERE implies the predicate of `payments_payer_decided`, so the planner can
            // walk that index in order.
            decided: db.sql(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM {{s}}.payments
                 WHERE side = 'payer' AND state IN ('committed', 'voided')
                   AND updated_ms >= $1::bigint
                 ORDER BY updated_ms, payment_id LIMIT $2::bigint"
            )),
        }
    }
}

/// Column arrays of payment records, for `unnest`.
#[derive(Default)]
struct PaymentColumns<'a> {
    ids: Vec<&'a [u8]>,
    sides: Vec<&'static str>,
    states: Vec<&'static str>,
    digests: Vec<Option<&'a [u8]>>,
    wallets: Vec<Option<&'a str>>,
    cp_institutions: Vec<Option<&'a str>>,
    cp_wallets: Vec<Option<&'a str>>,
    amounts: Vec<i64>,
    reasons: Vec<Option<&'a str>>,
    paid_ats: Vec<i64>,
    created: Vec<i64>,
    updated: Vec<i64>,
    expires: Vec<Option<i64>>,
}

impl<'a> PaymentColumns<'a> {
    fn from_records(records: impl Iterator<Item = &'a PaymentRecord>) -> Self {
        let mut c = PaymentColumns::default();
        for r in records {
            c.ids.push(&r.payment_id.0);
            c.sides.push(r.side.as_str());
            c.states.push(r.state.as_str());
            c.digests.push(r.digest.as_ref().map(|d| d.0.as_slice()));
            c.wallets.push(r.wallet_id.as_deref());
            c.cp_institutions
                .push(r.counterparty.as_ref().map(|p| p.institution_id.as_str()));
            c.cp_wallets
                .push(r.counterparty.as_ref().map(|p| p.wallet_id.as_str()));
            c.amounts.push(r.amount_fen);
            c.reasons.push(r.reason_code.as_deref());
            c.paid_ats.push(r.paid_at_ms);
            c.created.push(r.created_ms);
            c.updated.push(r.updated_ms);
            c.expires.push(r.expires_at_ms);
        }
        c
    }
}

/// An institution's ledger in its own schema of a PostgreSQL database.
#[derive(Debug)]
pub struct PostgresLedger {
    institution_id: String,
    pub(super) db: PgDb,
    sql: LedgerSql,
}

impl PostgresLedger {
    /// Connects to `url` and opens (creating and migrating as needed) the schema
    /// `dcpipe_<institution_id>`.
    pub async fn connect(
        url: &str,
        institution_id: &str,
        options: &PostgresOptions,
    ) -> Result<PostgresLedger, LedgerError> {
        super::validate_institution_id(institution_id)?;
        let db = PgDb::connect(url, institution_id, options, LEDGER_MIGRATIONS).await?;
        let sql = LedgerSql::new(&db);
        let ledger = PostgresLedger {
            institution_id: institution_id.to_owned(),
            db,
            sql,
        };
        ledger.claim_institution().await?;
        Ok(ledger)
    }

    /// Refuses a schema that another institution's ledger already uses (names are mapped to
    /// schemas one to one, so this only catches a schema filled by hand or by another tool).
    async fn claim_institution(&self) -> Result<(), LedgerError> {
        self.db
            .claim_owner("ledger_meta", &self.institution_id)
            .await
    }

    async fn execute<O: Op>(&self, op: O) -> Result<Vec<O::Item>, LedgerError> {
        op.validate()?;
        let started = Instant::now();
        let op = &op;
        let result = with_retries(O::NAME, || async move { self.attempt(op).await }).await;
        metrics::record_batch(BACKEND, O::NAME, op.len(), started.elapsed(), &result);
        result
    }

    /// One try of a batch in one transaction.
    async fn attempt<O: Op>(&self, op: &O) -> Result<Vec<O::Item>, AttemptError> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let mut working = Working::new(now_ms());
        let side = op.side();
        let ids = op.payment_ids();
        if !ids.is_empty() {
            let id_bytes: Vec<&[u8]> = ids.iter().map(|id| id.0.as_slice()).collect();
            let stmt = tx.prepare_cached(&self.sql.lock_payments).await?;
            for row in tx.query(&stmt, &[&side.as_str(), &id_bytes]).await? {
                let record = payment_from_row(&row)?;
                working
                    .payments
                    .insert((record.payment_id, record.side), record);
            }
        }
        let wallet_ids: Vec<String> = op.wallet_ids(&working.payments).into_iter().collect();
        if !wallet_ids.is_empty() {
            let stmt = tx.prepare_cached(&self.sql.lock_wallets).await?;
            for row in tx.query(&stmt, &[&wallet_ids]).await? {
                let wallet = wallet_from_row(&row)?;
                working
                    .wallets
                    .insert(wallet.account.wallet_id.clone(), wallet);
            }
        }
        let daily_keys = op.daily_keys(&working.payments);
        if !daily_keys.is_empty() {
            let (wallets, days): (Vec<&str>, Vec<i64>) =
                daily_keys.iter().map(|(w, d)| (w.as_str(), *d)).unzip();
            let stmt = tx.prepare_cached(&self.sql.read_daily).await?;
            for row in tx.query(&stmt, &[&wallets, &days]).await? {
                let wallet_id: String = row.try_get(0)?;
                let day: i64 = row.try_get(1)?;
                working.daily.insert((wallet_id, day), row.try_get(2)?);
            }
        }
        let results = op.apply(&mut working)?;
        self.save(&tx, &working).await?;
        tx.commit().await?;
        Ok(results)
    }

    async fn save(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        working: &Working,
    ) -> Result<(), AttemptError> {
        let c = PaymentColumns::from_records(working.inserted());
        if !c.ids.is_empty() {
            let stmt = tx.prepare_cached(&self.sql.insert_payments).await?;
            tx.execute(
                &stmt,
                &[
                    &c.ids,
                    &c.sides,
                    &c.states,
                    &c.digests,
                    &c.wallets,
                    &c.cp_institutions,
                    &c.cp_wallets,
                    &c.amounts,
                    &c.reasons,
                    &c.paid_ats,
                    &c.created,
                    &c.updated,
                    &c.expires,
                ],
            )
            .await?;
        }
        let c = PaymentColumns::from_records(working.updated());
        if !c.ids.is_empty() {
            let stmt = tx.prepare_cached(&self.sql.update_payments).await?;
            let changed = tx
                .execute(
                    &stmt,
                    &[
                        &c.ids,
                        &c.sides,
                        &c.states,
                        &c.digests,
                        &c.wallets,
                        &c.cp_institutions,
                        &c.cp_wallets,
                        &c.amounts,
                        &c.reasons,
                        &c.paid_ats,
                        &c.updated,
                        &c.expires,
                    ],
                )
                .await?;
            if changed != c.ids.len() as u64 {
                return Err(LedgerError::integrity(format!(
                    "updated {changed} of {} payment records",
                    c.ids.len()
                ))
                .into());
            }
        }
        let mut wallet_ids = Vec::new();
        let mut balances = Vec::new();
        let mut holds = Vec::new();
        let mut pendings = Vec::new();
        for w in working.dirty_wallets() {
            wallet_ids.push(w.account.wallet_id.as_str());
            balances.push(w.account.balance_fen);
            holds.push(w.held_fen);
            pendings.push(w.pending_credit_fen);
        }
        if !wallet_ids.is_empty() {
            let stmt = tx.prepare_cached(&self.sql.update_wallets).await?;
            tx.execute(
                &stmt,
                &[&wallet_ids, &balances, &holds, &pendings, &working.now_ms],
            )
            .await?;
        }
        let mut daily_wallets = Vec::new();
        let mut days = Vec::new();
        let mut spents = Vec::new();
        for (wallet_id, day, spent_fen) in working.dirty_daily() {
            daily_wallets.push(wallet_id.as_str());
            days.push(day);
            spents.push(spent_fen);
        }
        if !daily_wallets.is_empty() {
            let stmt = tx.prepare_cached(&self.sql.upsert_daily).await?;
            tx.execute(&stmt, &[&daily_wallets, &days, &spents]).await?;
        }
        Ok(())
    }

    async fn read_wallet(&self, wallet_id: &str) -> Result<Option<WalletState>, LedgerError> {
        let client = self.db.client().await?;
        let row = client
            .query_opt(&self.sql.read_wallet, &[&wallet_id])
            .await
            .map_err(|e| pg_error("cannot read wallet", e))?;
        row.map(|row| wallet_from_row(&row).map(|w| w.state()))
            .transpose()
    }

    /// The wallets among `ids` (distinct), in one statement: one snapshot, one round trip.
    async fn read_wallets(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, WalletRow>, LedgerError> {
        let mut found = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(found);
        }
        let client = self.db.client().await?;
        let rows = client
            .query(&self.sql.read_wallets, &[&ids])
            .await
            .map_err(|e| pg_error("cannot read wallets", e))?;
        for row in rows {
            let wallet = wallet_from_row(&row)?;
            found.insert(wallet.account.wallet_id.clone(), wallet);
        }
        Ok(found)
    }

    async fn query_one_i64s(&self, sql: &str) -> Result<Vec<i64>, LedgerError> {
        let client = self.db.client().await?;
        let row = client
            .query_one(&self.db.sql(sql), &[])
            .await
            .map_err(|e| pg_error("cannot read totals", e))?;
        (0..row.len())
            .map(|i| {
                row.try_get::<_, i64>(i)
                    .map_err(|e| pg_error("cannot read totals", e))
            })
            .collect()
    }
}

#[async_trait]
impl Ledger for PostgresLedger {
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
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.db.client().await?;
        let now = now_ms();
        let ids: Vec<&str> = accounts.iter().map(|a| a.wallet_id.as_str()).collect();
        let institutions: Vec<&str> = accounts.iter().map(|a| a.institution_id.as_str()).collect();
        let tiers: Vec<i16> = accounts.iter().map(|a| i16::from(a.tier)).collect();
        let balances: Vec<i64> = accounts.iter().map(|a| a.balance_fen).collect();
        let limit = |f: fn(&WalletLimits) -> i64| -> Vec<i64> {
            accounts.iter().map(|a| f(&a.limits)).collect()
        };
        let balance_limits = limit(|l| l.balance_limit_fen);
        let single_limits = limit(|l| l.single_payment_limit_fen);
        let daily_limits = limit(|l| l.daily_limit_fen);
        let pin_free_limits = limit(|l| l.password_free_limit_fen);
        let locked: Vec<bool> = accounts.iter().map(|a| a.locked).collect();
        // One statement: inserted rows come back, each with its issuance record written by
        // the same statement; the rest existed already.
        let mut client = client;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error("cannot open wallets", e))?;
        let rows = tx
            .query(
                &self.db.sql(&format!(
                    "WITH opened AS (
                         INSERT INTO {{s}}.wallets ({WALLET_COLUMNS}, created_ms, updated_ms)
                         SELECT wallet_id, institution_id, tier, balance_fen, 0, 0, bl, sl, dl,
                                pl, locked, $11, $11
                         FROM unnest($1::text[], $2::text[], $3::smallint[], $4::bigint[],
                                     $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
                                     $9::boolean[], $10::bigint[])
                              AS a(wallet_id, institution_id, tier, balance_fen, bl, sl, dl, pl,
                                   locked, ord)
                         ORDER BY ord
                         ON CONFLICT (wallet_id) DO NOTHING
                         RETURNING wallet_id, balance_fen, tier, balance_limit_fen,
                                   single_payment_limit_fen, daily_limit_fen,
                                   password_free_limit_fen
                     ), issued AS (
                         INSERT INTO {{s}}.issuances (wallet_id, amount_fen, tier,
                             balance_limit_fen, single_payment_limit_fen, daily_limit_fen,
                             password_free_limit_fen, issued_ms)
                         SELECT wallet_id, balance_fen, tier, balance_limit_fen,
                                single_payment_limit_fen, daily_limit_fen,
                                password_free_limit_fen, $11
                         FROM opened
                     )
                     SELECT wallet_id FROM opened"
                )),
                &[
                    &ids,
                    &institutions,
                    &tiers,
                    &balances,
                    &balance_limits,
                    &single_limits,
                    &daily_limits,
                    &pin_free_limits,
                    &locked,
                    &(0..accounts.len() as i64).collect::<Vec<i64>>(),
                    &now,
                ],
            )
            .await
            .map_err(|e| pg_error("cannot open wallets", e))?;
        let mut created: HashMap<String, usize> = HashMap::new();
        for row in rows {
            let id: String = row
                .try_get(0)
                .map_err(|e| pg_error("cannot open wallets", e))?;
            *created.entry(id).or_default() += 1;
        }
        // The terms the others were first opened on, to tell a repeat from a conflict.
        let terms_rows = tx
            .query(
                &self.db.sql(
                    "SELECT wallet_id, tier, amount_fen, balance_limit_fen,
                            single_payment_limit_fen, daily_limit_fen, password_free_limit_fen
                     FROM {s}.issuances WHERE wallet_id = ANY($1::text[])",
                ),
                &[&ids],
            )
            .await
            .map_err(|e| pg_error("cannot read issuances", e))?;
        tx.commit()
            .await
            .map_err(|e| pg_error("cannot open wallets", e))?;
        let mut stored: HashMap<String, OpeningTerms> = HashMap::new();
        for row in terms_rows {
            let read = |e| pg_error("cannot read issuances", e);
            let tier: i16 = row.try_get(1).map_err(read)?;
            stored.insert(
                row.try_get(0).map_err(read)?,
                OpeningTerms {
                    tier: u8::try_from(tier).map_err(|_| {
                        LedgerError::new(LedgerErrorKind::Integrity, format!("tier {tier}"))
                    })?,
                    amount_fen: row.try_get(2).map_err(read)?,
                    limits: WalletLimits {
                        balance_limit_fen: row.try_get(3).map_err(read)?,
                        single_payment_limit_fen: row.try_get(4).map_err(read)?,
                        daily_limit_fen: row.try_get(5).map_err(read)?,
                        password_free_limit_fen: row.try_get(6).map_err(read)?,
                    },
                },
            );
        }
        // A wallet named twice in one batch is created by its first mention only.
        Ok(accounts
            .iter()
            .map(|a| match created.get_mut(&a.wallet_id) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    OpenResult::Created
                }
                _ => engine::reopening(a, stored.get(&a.wallet_id)),
            })
            .collect())
    }

    async fn wallet(&self, wallet_id: &str) -> Result<Option<WalletState>, LedgerError> {
        self.read_wallet(wallet_id).await
    }

    async fn wallets(
        &self,
        wallet_ids: &[String],
    ) -> Result<Vec<Option<WalletState>>, LedgerError> {
        let ids = engine::lookup_ids(wallet_ids)?;
        let started = Instant::now();
        let result = self.read_wallets(&ids).await.map(|found| {
            // Looked up once per distinct id; answered once per requested position.
            engine::lookup_answers(wallet_ids, &found)
        });
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
        let client = self.db.client().await?;
        client
            .execute(
                &self.db.sql(
                    "UPDATE {s}.wallets SET locked = $2, updated_ms = $3 WHERE wallet_id = $1",
                ),
                &[&wallet_id, &locked, &now_ms()],
            )
            .await
            .map_err(|e| pg_error("cannot lock wallet", e))?;
        drop(client);
        self.read_wallet(wallet_id).await
    }

    async fn set_limits(
        &self,
        wallet_id: &str,
        limits: WalletLimits,
    ) -> Result<Option<WalletState>, LedgerError> {
        engine::validate_limits(&limits)?;
        let client = self.db.client().await?;
        client
            .execute(
                &self.db.sql(
                    "UPDATE {s}.wallets SET balance_limit_fen = $2, single_payment_limit_fen = $3,
                         daily_limit_fen = $4, password_free_limit_fen = $5, updated_ms = $6
                     WHERE wallet_id = $1",
                ),
                &[
                    &wallet_id,
                    &limits.balance_limit_fen,
                    &limits.single_payment_limit_fen,
                    &limits.daily_limit_fen,
                    &limits.password_free_limit_fen,
                    &now_ms(),
                ],
            )
            .await
            .map_err(|e| pg_error("cannot set limits", e))?;
        drop(client);
        self.read_wallet(wallet_id).await
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
        let client = self.db.client().await?;
        let rows = client
            .query(&self.sql.expired, &[&now_ms, &limit])
            .await
            .map_err(|e| pg_error("cannot list expired reservations", e))?;
        rows.iter().map(payment_from_row).collect()
    }

    async fn decided_since(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<PaymentRecord>, LedgerError> {
        let limit = i64::try_from(limit.min(DECIDED_LIST_MAX)).unwrap_or(0);
        let client = self.db.client().await?;
        let rows = client
            .query(&self.sql.decided, &[&since_ms, &limit])
            .await
            .map_err(|e| pg_error("cannot list decided payments", e))?;
        rows.iter().map(payment_from_row).collect()
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
        let client = self.db.client().await?;
        let row = client
            .query_opt(
                &self.sql.read_payment,
                &[&payment_id.0.as_slice(), &side.as_str()],
            )
            .await
            .map_err(|e| pg_error("cannot read payment", e))?;
        row.map(|row| payment_from_row(&row)).transpose()
    }

    async fn issued_total_fen(&self) -> Result<i64, LedgerError> {
        let totals = self
            .query_one_i64s("SELECT COALESCE(SUM(amount_fen), 0)::bigint FROM {s}.issuances")
            .await?;
        Ok(totals[0])
    }

    async fn wallet_openings(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WalletOpening>, LedgerError> {
        let after = after.unwrap_or("");
        let limit = i64::try_from(limit.min(WALLET_OPENINGS_PAGE_MAX)).unwrap_or(0);
        let client = self.db.client().await?;
        let read = |e| pg_error("cannot read wallet openings", e);
        let rows = client
            .query(
                &self.db.sql(WALLET_OPENINGS_SQL),
                &[&after, &limit, &super::offline::PURSE_SUFFIX],
            )
            .await
            .map_err(read)?;
        rows.iter()
            .map(|row| {
                Ok(WalletOpening {
                    wallet_id: row.try_get(0).map_err(read)?,
                    opening_fen: row.try_get(1).map_err(read)?,
                    opened_ms: row.try_get(2).map_err(read)?,
                    balance_fen: row.try_get(3).map_err(read)?,
                    held_fen: row.try_get(4).map_err(read)?,
                    pending_credit_fen: row.try_get(5).map_err(read)?,
                    moving_payments: u64::try_from(row.try_get::<_, i64>(6).map_err(read)?)
                        .unwrap_or(0),
                    offline: row.try_get(7).map_err(read)?,
                })
            })
            .collect()
    }

    async fn wallet_count(&self) -> Result<u64, LedgerError> {
        let totals = self
            .query_one_i64s("SELECT COUNT(*)::bigint FROM {s}.wallets")
            .await?;
        Ok(u64::try_from(totals[0]).unwrap_or(0))
    }

    async fn total_balance_fen(&self) -> Result<i64, LedgerError> {
        let totals = self
            .query_one_i64s("SELECT COALESCE(SUM(balance_fen), 0)::bigint FROM {s}.wallets")
            .await?;
        Ok(totals[0])
    }

    async fn pending_totals(&self) -> Result<PendingTotals, LedgerError> {
        let totals = self
            .query_one_i64s(
                "SELECT COALESCE(SUM(held_fen), 0)::bigint,
                        COALESCE(SUM(pending_credit_fen), 0)::bigint
                 FROM {s}.wallets",
            )
            .await?;
        Ok(PendingTotals {
            held_fen: totals[0],
            pending_credit_fen: totals[1],
        })
    }

    async fn state_counts(&self) -> Result<StateCounts, LedgerError> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                &self
                    .db
                    .sql("SELECT side, state, COUNT(*) FROM {s}.payments GROUP BY side, state"),
                &[],
            )
            .await
            .map_err(|e| pg_error("cannot count states", e))?;
        let mut counts = StateCounts::default();
        for row in rows {
            let get = |e| pg_error("cannot count states", e);
            let side: String = row.try_get(0).map_err(get)?;
            let state: String = row.try_get(1).map_err(get)?;
            let count: i64 = row.try_get(2).map_err(get)?;
            let key = Side::parse(&side)
                .zip(PaymentState::parse(&state))
                .ok_or_else(|| stored_error(format!("side/state {side}/{state}")))?;
            counts.0.insert(key, u64::try_from(count).unwrap_or(0));
        }
        Ok(counts)
    }

    async fn verify_integrity(&self) -> Result<(), LedgerError> {
        let mut client = self.db.client().await?;
        let read = |e| pg_error("cannot verify integrity", e);
        // One snapshot for all checks.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(read)?;
        let mismatch = tx
            .query_opt(
                &self.db.sql(
                    "SELECT w.wallet_id, w.balance_fen, w.held_fen,
                            COALESCE(h.total, 0)::bigint, w.pending_credit_fen,
                            COALESCE(p.total, 0)::bigint
                     FROM {s}.wallets w
                     LEFT JOIN (SELECT wallet_id, SUM(amount_fen) AS total FROM {s}.payments
                                WHERE side = 'payer' AND state = 'reserved'
                                GROUP BY wallet_id) h ON h.wallet_id = w.wallet_id
                     LEFT JOIN (SELECT wallet_id, SUM(amount_fen) AS total FROM {s}.payments
                                WHERE side = 'payee' AND state = 'pending_credit'
                                GROUP BY wallet_id) p ON p.wallet_id = w.wallet_id
                     WHERE w.held_fen <> COALESCE(h.total, 0)
                        OR w.pending_credit_fen <> COALESCE(p.total, 0)
                        OR w.balance_fen < w.held_fen
                     LIMIT 1",
                ),
                &[],
            )
            .await
            .map_err(read)?;
        if let Some(row) = mismatch {
            let wallet_id: String = row.try_get(0).map_err(read)?;
            let values: Vec<i64> = (1..6)
                .map(|i| row.try_get::<_, i64>(i))
                .collect::<Result<_, _>>()
                .map_err(read)?;
            return Err(LedgerError::integrity(format!(
                "wallet {wallet_id}: balance {}, held {} (records {}), pending {} (records {})",
                values[0], values[1], values[2], values[3], values[4]
            )));
        }
        let orphan = tx
            .query_opt(
                &self.db.sql(
                    "SELECT payment_id FROM {s}.payments p
                     WHERE state IN ('reserved', 'pending_credit')
                       AND NOT EXISTS (SELECT 1 FROM {s}.wallets w
                                       WHERE w.wallet_id = p.wallet_id)
                     LIMIT 1",
                ),
                &[],
            )
            .await
            .map_err(read)?;
        if let Some(row) = orphan {
            let id: Vec<u8> = row.try_get(0).map_err(read)?;
            return Err(LedgerError::integrity(format!(
                "open payment {} has no wallet",
                hex::encode(id)
            )));
        }
        let mut expected: HashMap<(String, i64), i64> = HashMap::new();
        let rows = tx
            .query(
                &self.db.sql(
                    "SELECT wallet_id, paid_at_ms, amount_fen FROM {s}.payments
                     WHERE side = 'payer' AND state IN ('reserved', 'committed')",
                ),
                &[],
            )
            .await
            .map_err(read)?;
        for row in rows {
            let wallet_id: Option<String> = row.try_get(0).map_err(read)?;
            let paid_at_ms: i64 = row.try_get(1).map_err(read)?;
            let amount_fen: i64 = row.try_get(2).map_err(read)?;
            *expected
                .entry((wallet_id.unwrap_or_default(), business_day(paid_at_ms)))
                .or_default() += amount_fen;
        }
        let mut stored: HashMap<(String, i64), i64> = HashMap::new();
        let rows = tx
            .query(
                &self
                    .db
                    .sql("SELECT wallet_id, business_day, spent_fen FROM {s}.daily_spend"),
                &[],
            )
            .await
            .map_err(read)?;
        for row in rows {
            stored.insert(
                (row.try_get(0).map_err(read)?, row.try_get(1).map_err(read)?),
                row.try_get(2).map_err(read)?,
            );
        }
        tx.commit().await.map_err(read)?;
        engine::compare_daily(&expected, &stored)
    }
}

const SETTLEMENT_MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE {s}.settlement_state (
         id SMALLINT PRIMARY KEY CHECK (id = 1),
         window_ms BIGINT NOT NULL,
         first_open_window BIGINT
     );
     CREATE TABLE {s}.clearings (
         payment_id BYTEA PRIMARY KEY,
         payer_institution TEXT NOT NULL,
         payee_institution TEXT NOT NULL,
         amount_fen BIGINT NOT NULL CHECK (amount_fen > 0),
         decided_at_ms BIGINT NOT NULL,
         decided_window_id BIGINT NOT NULL,
         window_id BIGINT NOT NULL,
         late BOOLEAN NOT NULL,
         recorded_ms BIGINT NOT NULL
     );
     CREATE INDEX clearings_window ON {s}.clearings (window_id);
     CREATE TABLE {s}.closed_windows (
         window_id BIGINT PRIMARY KEY,
         start_ms BIGINT NOT NULL,
         end_ms BIGINT NOT NULL,
         clearing_count BIGINT NOT NULL,
         late_count BIGINT NOT NULL,
         late_amount_fen BIGINT NOT NULL,
         closed_ms BIGINT NOT NULL
     );
     CREATE TABLE {s}.window_positions (
         window_id BIGINT NOT NULL,
         institution_id TEXT NOT NULL,
         debit_fen BIGINT NOT NULL,
         credit_fen BIGINT NOT NULL,
         net_fen BIGINT NOT NULL,
         clearing_count BIGINT NOT NULL,
         PRIMARY KEY (window_id, institution_id)
     );",
)];

fn count_u64(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}

fn count_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The central bank's settlement store in the schema `dcpipe_central-bank`.
#[derive(Debug)]
pub struct PostgresSettlement {
    config: SettlementConfig,
    db: PgDb,
}

impl PostgresSettlement {
    /// Connects to `url` and opens (creating and migrating as needed) the settlement schema.
    pub async fn connect(
        url: &str,
        config: SettlementConfig,
        options: &PostgresOptions,
    ) -> Result<PostgresSettlement, LedgerError> {
        config.validate()?;
        let db = PgDb::connect(url, SETTLEMENT_STORE_NAME, options, SETTLEMENT_MIGRATIONS).await?;
        let client = db.client().await?;
        let context = "cannot open settlement store";
        client
            .execute(
                &db.sql(
                    "INSERT INTO {s}.settlement_state (id, window_ms) VALUES (1, $1)
                     ON CONFLICT (id) DO NOTHING",
                ),
                &[&config.window_ms],
            )
            .await
            .map_err(|e| pg_error(context, e))?;
        let stored: i64 = client
            .query_one(
                &db.sql("SELECT window_ms FROM {s}.settlement_state WHERE id = 1"),
                &[],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| pg_error(context, e))?;
        if stored != config.window_ms {
            return Err(LedgerError::new(
                LedgerErrorKind::Config,
                format!(
                    "settlement store uses windows of {stored} ms, not {} ms",
                    config.window_ms
                ),
            ));
        }
        drop(client);
        Ok(PostgresSettlement { config, db })
    }

    async fn record_attempt(
        &self,
        clearings: &[ClearingRecord],
        now_ms: i64,
    ) -> Result<Vec<ClearingOutcome>, AttemptError> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        // Shared lock: recorders run side by side, a close waits for them (and they for it), so
        // a clearing is either in a window before it closes or placed after it as late.
        let state = tx
            .query_one(
                &self.db.sql(
                    "SELECT first_open_window FROM {s}.settlement_state WHERE id = 1 FOR SHARE",
                ),
                &[],
            )
            .await?;
        let first_open: Option<i64> = state.try_get(0)?;
        let ids: Vec<&[u8]> = clearings
            .iter()
            .map(|c| c.payment_id.0.as_slice())
            .collect();
        let mut stored: HashMap<PaymentId, StoredClearing> = HashMap::new();
        let stmt = tx
            .prepare_cached(&self.db.sql(
                "SELECT payment_id, payer_institution, payee_institution, amount_fen,
                        decided_at_ms, window_id
                 FROM {s}.clearings WHERE payment_id = ANY($1::bytea[])",
            ))
            .await?;
        for row in tx.query(&stmt, &[&ids]).await? {
            let id: Vec<u8> = row.try_get(0)?;
            let id = PaymentId(
                id.try_into()
                    .map_err(|_| stored_error("clearing id length".into()))?,
            );
            stored.insert(
                id,
                StoredClearing {
                    payer_institution: row.try_get(1)?,
                    payee_institution: row.try_get(2)?,
                    amount_fen: row.try_get(3)?,
                    decided_at_ms: row.try_get(4)?,
                    window_id: row.try_get(5)?,
                },
            );
        }
        let mut outcomes = Vec::with_capacity(clearings.len());
        let mut new: Vec<(&ClearingRecord, i64, bool)> = Vec::new();
        for clearing in clearings {
            if let Some(reason_code) = settlement::refusal(clearing) {
                outcomes.push(ClearingOutcome::Refused { reason_code });
                continue;
            }
            if let Some(existing) = stored.get(&clearing.payment_id) {
                outcomes.push(if existing.same_content(clearing) {
                    ClearingOutcome::Duplicate {
                        window_id: existing.window_id,
                    }
                } else {
                    ClearingOutcome::Conflict {
                        window_id: existing.window_id,
                    }
                });
                continue;
            }
            let (window_id, late) =
                settlement::placement(&self.config, first_open, clearing.decided_at_ms);
            stored.insert(
                clearing.payment_id,
                StoredClearing {
                    payer_institution: clearing.payer_institution.clone(),
                    payee_institution: clearing.payee_institution.clone(),
                    amount_fen: clearing.amount_fen,
                    decided_at_ms: clearing.decided_at_ms,
                    window_id,
                },
            );
            new.push((clearing, window_id, late));
            outcomes.push(ClearingOutcome::Recorded { window_id, late });
        }
        if !new.is_empty() {
            // Inserted in id order, like every other writer, so racing inserts do not deadlock.
            new.sort_by_key(|(c, _, _)| c.payment_id);
            let ids: Vec<&[u8]> = new
                .iter()
                .map(|(c, _, _)| c.payment_id.0.as_slice())
                .collect();
            let payers: Vec<&str> = new
                .iter()
                .map(|(c, _, _)| c.payer_institution.as_str())
                .collect();
            let payees: Vec<&str> = new
                .iter()
                .map(|(c, _, _)| c.payee_institution.as_str())
                .collect();
            let amounts: Vec<i64> = new.iter().map(|(c, _, _)| c.amount_fen).collect();
            let decided: Vec<i64> = new.iter().map(|(c, _, _)| c.decided_at_ms).collect();
            let decided_windows: Vec<i64> = new
                .iter()
                .map(|(c, _, _)| self.config.window_of(c.decided_at_ms))
                .collect();
            let windows: Vec<i64> = new.iter().map(|(_, w, _)| *w).collect();
            let lates: Vec<bool> = new.iter().map(|(_, _, l)| *l).collect();
            let stmt = tx
                .prepare_cached(&self.db.sql(
                    "INSERT INTO {s}.clearings (payment_id, payer_institution, payee_institution,
                         amount_fen, decided_at_ms, decided_window_id, window_id, late,
                         recorded_ms)
                     SELECT id, payer, payee, amount, decided, decided_window, win, late, $9
                     FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bigint[],
                                 $5::bigint[], $6::bigint[], $7::bigint[], $8::boolean[])
                          AS c(id, payer, payee, amount, decided, decided_window, win, late)",
                ))
                .await?;
            tx.execute(
                &stmt,
                &[
                    &ids,
                    &payers,
                    &payees,
                    &amounts,
                    &decided,
                    &decided_windows,
                    &windows,
                    &lates,
                    &now_ms,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn close_attempt(
        &self,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Vec<ClosedWindow>, AttemptError> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let state = tx
            .query_one(
                &self.db.sql(
                    "SELECT first_open_window FROM {s}.settlement_state WHERE id = 1 FOR UPDATE",
                ),
                &[],
            )
            .await?;
        let first_open: Option<i64> = state.try_get(0)?;
        let next_open = self.config.first_not_due(now_ms, grace_ms);
        if first_open.is_some_and(|w| next_open <= w) {
            return Ok(Vec::new());
        }
        let rows = tx
            .query(
                &self.db.sql(
                    "SELECT window_id, payer_institution, payee_institution,
                            SUM(amount_fen)::bigint, COUNT(*)::bigint,
                            SUM(CASE WHEN late THEN 1 ELSE 0 END)::bigint,
                            SUM(CASE WHEN late THEN amount_fen ELSE 0 END)::bigint
                     FROM {s}.clearings WHERE window_id >= $1 AND window_id < $2
                     GROUP BY window_id, payer_institution, payee_institution",
                ),
                &[&first_open.unwrap_or(i64::MIN), &next_open],
            )
            .await?;
        let mut pairs = Vec::with_capacity(rows.len());
        for row in rows {
            pairs.push(PairTotal {
                window_id: row.try_get(0)?,
                payer_institution: row.try_get(1)?,
                payee_institution: row.try_get(2)?,
                amount_fen: row.try_get(3)?,
                count: count_u64(row.try_get(4)?),
                late_count: count_u64(row.try_get(5)?),
                late_amount_fen: row.try_get(6)?,
            });
        }
        let closed = settlement::net_windows(&self.config, &pairs)?;
        let window_stmt = tx
            .prepare_cached(&self.db.sql(
                "INSERT INTO {s}.closed_windows (window_id, start_ms, end_ms, clearing_count,
                     late_count, late_amount_fen, closed_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            ))
            .await?;
        let position_stmt = tx
            .prepare_cached(&self.db.sql(
                "INSERT INTO {s}.window_positions (window_id, institution_id, debit_fen,
                     credit_fen, net_fen, clearing_count)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            ))
            .await?;
        for window in &closed {
            tx.execute(
                &window_stmt,
                &[
                    &window.window_id,
                    &window.start_ms,
                    &window.end_ms,
                    &count_i64(window.clearing_count),
                    &count_i64(window.late_count),
                    &window.late_amount_fen,
                    &now_ms,
                ],
            )
            .await?;
            for p in &window.positions {
                tx.execute(
                    &position_stmt,
                    &[
                        &window.window_id,
                        &p.institution_id,
                        &p.debit_fen,
                        &p.credit_fen,
                        &p.net_fen,
                        &count_i64(p.clearing_count),
                    ],
                )
                .await?;
            }
        }
        tx.execute(
            &self
                .db
                .sql("UPDATE {s}.settlement_state SET first_open_window = $1 WHERE id = 1"),
            &[&next_open],
        )
        .await?;
        tx.commit().await?;
        Ok(closed)
    }
}

#[async_trait]
impl SettlementStore for PostgresSettlement {
    fn config(&self) -> SettlementConfig {
        self.config
    }

    async fn record_clearings(
        &self,
        clearings: &[ClearingRecord],
        now_ms: i64,
    ) -> Result<Vec<ClearingOutcome>, LedgerError> {
        settlement::check_batch(clearings.len())?;
        with_retries("record clearings", || {
            self.record_attempt(clearings, now_ms)
        })
        .await
    }

    async fn close_due_windows(
        &self,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Vec<ClosedWindow>, LedgerError> {
        with_retries("close windows", || self.close_attempt(now_ms, grace_ms)).await
    }

    async fn window_report(&self, window_id: i64) -> Result<Option<ClosedWindow>, LedgerError> {
        let client = self.db.client().await?;
        let read = |e| pg_error("cannot read window report", e);
        let first_open: Option<i64> = client
            .query_one(
                &self
                    .db
                    .sql("SELECT first_open_window FROM {s}.settlement_state WHERE id = 1"),
                &[],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(read)?;
        if first_open.is_none_or(|w| window_id >= w) {
            return Ok(None);
        }
        let header = client
            .query_opt(
                &self.db.sql(
                    "SELECT clearing_count, late_count, late_amount_fen FROM {s}.closed_windows
                     WHERE window_id = $1",
                ),
                &[&window_id],
            )
            .await
            .map_err(read)?;
        let Some(header) = header else {
            return Ok(Some(settlement::empty_window(&self.config, window_id)));
        };
        let rows = client
            .query(
                &self.db.sql(
                    "SELECT institution_id, debit_fen, credit_fen, net_fen, clearing_count
                     FROM {s}.window_positions WHERE window_id = $1 ORDER BY institution_id",
                ),
                &[&window_id],
            )
            .await
            .map_err(read)?;
        let mut positions = Vec::with_capacity(rows.len());
        for row in rows {
            positions.push(Position {
                institution_id: row.try_get(0).map_err(read)?,
                debit_fen: row.try_get(1).map_err(read)?,
                credit_fen: row.try_get(2).map_err(read)?,
                net_fen: row.try_get(3).map_err(read)?,
                clearing_count: count_u64(row.try_get(4).map_err(read)?),
            });
        }
        let (start_ms, end_ms) = self.config.bounds(window_id);
        Ok(Some(ClosedWindow {
            window_id,
            start_ms,
            end_ms,
            positions,
            clearing_count: count_u64(header.try_get(0).map_err(read)?),
            late_count: count_u64(header.try_get(1).map_err(read)?),
            late_amount_fen: header.try_get(2).map_err(read)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_in_userinfo() {
        assert_eq!(
            redact("postgres://bank:pw@db:5432/ledger"),
            "postgres://bank:***@db:5432/ledger"
        );
    }

    #[test]
    fn redacts_password_in_query() {
        assert_eq!(
            redact("postgres://db/ledger?user=bank&password=pw"),
            "postgres://db/ledger?user=bank&password=***"
        );
    }

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        let target =
            parse_config("postgres://bank@db/ledger?sslmode=require&sslrootcert=/etc/ca.pem")
                .expect("valid");
        assert_eq!(target.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(target.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let target = parse_config("postgres://bank@db/ledger?sslrootcert=ca.pem&sslmode=require")
            .expect("either order");
        assert_eq!(target.root_cert, Some(PathBuf::from("ca.pem")));
        let plain = parse_config("postgres://bank@db/ledger").expect("valid");
        assert_eq!(plain.root_cert, None);
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Prefer);
    }

    #[test]
    fn a_root_certificate_without_required_tls_is_refused() {
        let err = parse_config("postgres://bank@db/ledger?sslrootcert=ca.pem").expect_err("mode");
        assert_eq!(err.kind(), LedgerErrorKind::Config);
        assert!(err.to_string().contains("sslmode=require"), "{err}");
    }

    #[test]
    fn an_unreadable_root_certificate_is_a_config_error() {
        let err = tls_config(Some(Path::new("/nonexistent/ca.pem"))).expect_err("no file");
        assert_eq!(err.kind(), LedgerErrorKind::Config);
        let dir = tempfile::tempdir().expect("dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = tls_config(Some(&empty)).expect_err("no certificate");
        assert_eq!(err.kind(), LedgerErrorKind::Config);
    }

    #[test]
    fn schema_names_are_quoted() {
        assert_eq!(schema_ident("oi-a"), "\"dcpipe_oi-a\"");
    }

    /// Schema checks against a real server (the testkit's, which the crate's tests are built
    /// with).
    #[cfg(feature = "testkit")]
    mod with_server {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};

        use super::*;
        use crate::testkit::PostgresServer;

        /// The name of the index migration 2 adds.
        const DECIDED_INDEX: &str = "payments_payer_decided";

        const INSTITUTION: &str = "oi-a";

        /// One server for these tests, started from a thread of its own so that no test's
        /// runtime owns it; it stops when the test process exits.
        fn server() -> &'static PostgresServer {
            static SERVER: OnceLock<PostgresServer> = OnceLock::new();
            SERVER.get_or_init(|| {
                std::thread::spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime")
                        .block_on(PostgresServer::start())
                        .unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"))
                })
                .join()
                .expect("PostgreSQL start thread")
            })
        }

        /// The URL of a fresh database.
        async fn database() -> String {
            static DATABASES: AtomicU64 = AtomicU64::new(0);
            let name = format!("unit{}", DATABASES.fetch_add(1, Ordering::Relaxed));
            server()
                .create_database(&name)
                .await
                .unwrap_or_else(|e| panic!("creating database {name}: {e}"))
        }

        async fn has_decided_index(db: &PgDb) -> bool {
            let client = db.client().await.expect("client");
            let name = format!("{}.{DECIDED_INDEX}", db.schema);
            let found: Option<String> = client
                .query_one("SELECT to_regclass($1)::text", &[&name])
                .await
                .and_then(|row| row.try_get(0))
                .expect("to_regclass");
            found.is_some()
        }

        /// A payer record in `state`, last changed at `updated_ms`, written as the first
        /// version's schema stores it.
        async fn insert_payer_record(db: &PgDb, n: u8, state: PaymentState, updated_ms: i64) {
            let client = db.client().await.expect("client");
            client
                .execute(
                    &db.sql(
                        "INSERT INTO {s}.payments (payment_id, side, state, digest, wallet_id,
                             amount_fen, paid_at_ms, created_ms, updated_ms)
                         VALUES ($1, 'payer', $2, $3, 'a1', 100, 1, 1, $4)",
                    ),
                    &[
                        &[n; 16].as_slice(),
                        &state.as_str(),
                        &[n; 32].as_slice(),
                        &updated_ms,
                    ],
                )
                .await
                .expect("insert payment");
        }

        /// The plan of `sql` with sequential scans switched off: an empty table is cheapest to
        /// scan whole, and what is checked is that the indexes can serve the query once the
        /// table is large.
        async fn plan_without_scans(
            ledger: &PostgresLedger,
            sql: &str,
            params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        ) -> Vec<String> {
            let client = ledger.db.client().await.expect("client");
            client
                .batch_execute("SET enable_seqscan = off")
                .await
                .expect("set");
            let plan: Vec<String> = client
                .query(&format!("EXPLAIN {sql}"), params)
                .await
                .expect("explain")
                .iter()
                .map(|row| row.try_get(0).expect("plan line"))
                .collect();
            client
                .batch_execute("RESET enable_seqscan")
                .await
                .expect("reset");
            plan
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn decided_listing_walks_its_partial_index_without_sorting() {
            let url = database().await;
            let ledger = PostgresLedger::connect(&url, INSTITUTION, &PostgresOptions::default())
                .await
                .expect("connect");
            let plan = plan_without_scans(&ledger, &ledger.sql.decided, &[&0_i64, &10_i64]).await;
            assert!(plan.iter().any(|l| l.contains(DECIDED_INDEX)), "{plan:#?}");
            assert!(!plan.iter().any(|l| l.contains("Sort")), "{plan:#?}");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn wallet_openings_search_their_indexes() {
            let url = database().await;
            let ledger = PostgresLedger::connect(&url, INSTITUTION, &PostgresOptions::default())
                .await
                .expect("connect");
            let plan = plan_without_scans(
                &ledger,
                &ledger.db.sql(WALLET_OPENINGS_SQL),
                &[&"", &10_i64, &crate::ledger::offline::PURSE_SUFFIX],
            )
            .await;
            for index in ["payments_moving_by_wallet", "offline_clearings_by_payee"] {
                assert!(plan.iter().any(|l| l.contains(index)), "{index}: {plan:#?}");
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn decided_index_is_added_to_a_schema_of_the_first_version() {
            let url = database().await;
            let options = PostgresOptions::default();
            let first = PgDb::connect(&url, INSTITUTION, &options, &LEDGER_MIGRATIONS[..1])
                .await
                .expect("first version");
            assert!(!has_decided_index(&first).await);
            insert_payer_record(&first, 2, PaymentState::Voided, 2_000).await;
            insert_payer_record(&first, 1, PaymentState::Committed, 3_000).await;
            insert_payer_record(&first, 3, PaymentState::Reserved, 2_500).await;
            let ledger = PostgresLedger::connect(&url, INSTITUTION, &options)
                .await
                .expect("upgrade");
            assert!(has_decided_index(&ledger.db).await);
            let decided: Vec<PaymentId> = ledger
                .decided_since(0, 10)
                .await
                .expect("list")
                .iter()
                .map(|r| r.payment_id)
                .collect();
            assert_eq!(decided, vec![PaymentId([2; 16]), PaymentId([1; 16])]);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn decided_index_migration_runs_again_harmlessly() {
            let url = database().await;
            let options = PostgresOptions::default();
            let ledger = PostgresLedger::connect(&url, INSTITUTION, &options)
                .await
                .expect("connect");
            // As if an operator had built the index by hand ahead of the upgrade.
            ledger
                .db
                .client()
                .await
                .expect("client")
                .execute(
                    &ledger
                        .db
                        .sql("DELETE FROM {s}.schema_migrations WHERE version = 2"),
                    &[],
                )
                .await
                .expect("forget migration");
            let again = PostgresLedger::connect(&url, INSTITUTION, &options)
                .await
                .expect("migrate again");
            assert!(has_decided_index(&again.db).await);
        }
    }
}
