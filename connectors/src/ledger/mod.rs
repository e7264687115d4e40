//! The institutions' ledgers and the central bank's settlement store, on SQLite or PostgreSQL.
//!
//! Every operating institution keeps its own [`Ledger`]: its wallets, the holds on payments its
//! customers make, the pending credits of payments they receive. The central bank keeps a
//! [`SettlementStore`] of cleared payments, netted per settlement window. No institution reads
//! another's ledger: on SQLite each has its own file, on PostgreSQL its own schema.
//!
//! How money moves (flow 1 of the mission):
//! - the payer institution [`Ledger::reserve`]s the amount: a hold stays in the payer's balance
//!   but not in its available amount;
//! - the payee institution records a [`Ledger::credit_pending`]: not spendable, not in the
//!   balance;
//! - the payer institution decides, once: [`Ledger::commit`] or [`Ledger::void`] (a void also
//!   when [`Ledger::expired_reservations`] lists the hold);
//! - the payee institution [`Ledger::finalize`]s on that decision: credited or reversed. A void
//!   that arrives before the clearing message leaves a tombstone that refuses it later;
//! - a payer institution that crashed between deciding and publishing lists its recent
//!   decisions with [`Ledger::decided_since`] and announces them again.
//!
//! Every mutating call takes a batch and runs it in one database transaction, returning one
//! result per item in order (on SQLite the batches that the stages sharing a ledger have ready
//! at the same time share that transaction, each in its own savepoint: group commit); items are idempotent by payment id (the same id with the same
//! digest is a duplicate that moves nothing, with another digest a conflict). The rules are in
//! one place, `engine`, shared by both backends. Workers are stateless: any number of processes
//! may share one ledger (SQLite: WAL and `BEGIN IMMEDIATE`; PostgreSQL: row locks taken in a
//! fixed order, bounded retries of deadlocks and serialization failures).
//!
//! Both are opened by URL (see [`LedgerUrl`]). The conformance suite in
//! `connectors/tests/ledger_conformance/` proves every backend against the same scenarios.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;

mod engine;
mod error;
pub mod metrics;
pub mod offline;
mod postgres;
mod postgres_offline;
mod settlement;
mod sqlite;
mod sqlite_offline;
mod sqlite_writer;
mod types;

pub use error::{LedgerError, LedgerErrorKind};
pub use offline::OfflineLedger;
pub use postgres::{
    PG_POOL_SIZE_DEFAULT, PG_RETRIES_MAX, PostgresLedger, PostgresOptions, PostgresSettlement,
};
pub use settlement::{
    ClearingOutcome, ClearingRecord, ClosedWindow, Position, SettlementConfig, SettlementStore,
    WINDOW_MS_MAX,
};
pub use sqlite::{
    SQLITE_BUSY_TIMEOUT_MS, SqliteLedger, SqliteOptions, SqliteSettlement, SqliteSync,
};
pub use sqlite_writer::{GROUP_REQUESTS_MAX, GROUP_RETRIES_MAX, GroupCommits};
// The database plumbing the vehicles' session store shares with the ledgers.
pub(crate) use postgres::{AttemptError, PgDb, pg_error, with_retries};
pub(crate) use sqlite::{SqliteDb, claim_owner, db_error};
pub use types::{
    AMOUNT_FEN_MAX, BATCH_ITEMS_MAX, BUSINESS_DAY_OFFSET_MS, CreditRequest, CreditResult,
    DECIDED_LIST_MAX, Digest, EXPIRED_LIST_MAX, Finalization, FinalizeResult, ID_LEN_MAX,
    InstitutionId, LedgerRefusal, MS_PER_DAY, OpenResult, OpeningTerms, Party, PaymentId,
    PaymentRecord, PaymentState, PendingTotals, REASON_CODE_LEN_MAX, Rejection, RejectionResult,
    ReserveRequest, ReserveResult, Side, StateCounts, Transition, WALLET_OPENINGS_PAGE_MAX,
    WalletAccount, WalletId, WalletLimits, WalletOpening, WalletState, business_day,
};

/// Longest institution id, in bytes: it names a file and a PostgreSQL schema (`dcpipe_<id>`,
/// which must stay within PostgreSQL's 63-byte identifiers).
pub const INSTITUTION_ID_LEN_MAX: usize = 48;

/// The name of the central bank's settlement store (file `central-bank.db`, schema
/// `dcpipe_central-bank`); no institution may take it.
pub const SETTLEMENT_STORE_NAME: &str = "central-bank";

/// One institution's ledger. Object-safe: workers hold an `Arc<dyn Ledger>`.
///
/// Mutating calls take at most [`BATCH_ITEMS_MAX`] items, run them in one transaction and return
/// one result per item, in order. An `Err` means nothing of the batch happened; retrying it is
/// safe (see [`LedgerErrorKind::is_retryable`]).
#[async_trait]
pub trait Ledger: Send + Sync + fmt::Debug {
    /// The institution this ledger belongs to.
    fn institution_id(&self) -> &str;

    /// Opens wallets: each new wallet gets its opening balance, and an issuance record (its
    /// opening terms and the time) is written in the same transaction, so that every fen in
    /// the ledger can be traced to the opening that issued it. A wallet already opened on the
    /// same terms is left untouched ([`OpenResult::AlreadyOpen`]); on other terms it is
    /// refused ([`OpenResult::Conflict`]). This is the only way money enters a ledger.
    async fn open_wallets(
        &self,
        accounts: &[WalletAccount],
    ) -> Result<Vec<OpenResult>, LedgerError>;

    /// A wallet with its holds, available amount and pending credits.
    async fn wallet(&self, wallet_id: &str) -> Result<Option<WalletState>, LedgerError>;

    /// Many wallets in one read: one answer per id of `wallet_ids`, in order (`None` for an id
    /// no wallet has; an id named twice is answered twice), all from one snapshot. At most
    /// [`BATCH_ITEMS_MAX`] ids. The payment stage reads the password-free limits of a whole
    /// batch's payer wallets with it, in one round trip instead of one per wallet.
    async fn wallets(&self, wallet_ids: &[String])
    -> Result<Vec<Option<WalletState>>, LedgerError>;

    /// Locks or unlocks a wallet; `None` if there is no such wallet.
    async fn set_locked(
        &self,
        wallet_id: &str,
        locked: bool,
    ) -> Result<Option<WalletState>, LedgerError>;

    /// Replaces a wallet's limits; `None` if there is no such wallet.
    async fn set_limits(
        &self,
        wallet_id: &str,
        limits: WalletLimits,
    ) -> Result<Option<WalletState>, LedgerError>;

    /// Payer side: holds each amount on its payer wallet, or refuses it (recorded as rejected).
    async fn reserve(&self, requests: &[ReserveRequest])
    -> Result<Vec<ReserveResult>, LedgerError>;

    /// Payer side: records rejections decided before the ledger.
    async fn record_rejections(
        &self,
        rejections: &[Rejection],
    ) -> Result<Vec<RejectionResult>, LedgerError>;

    /// Payer side: reserved → committed (the amount leaves the balance). Idempotent.
    async fn commit(&self, payment_ids: &[PaymentId]) -> Result<Vec<Transition>, LedgerError>;

    /// Payer side: reserved → voided with a reason (hold and daily total released). Idempotent.
    async fn void(&self, voids: &[(PaymentId, String)]) -> Result<Vec<Transition>, LedgerError>;

    /// Payer side: reserved payments whose expiry is at or before `now_ms`, earliest first, at
    /// most `limit` (capped at [`EXPIRED_LIST_MAX`]).
    async fn expired_reservations(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<PaymentRecord>, LedgerError>;

    /// Payer side: the payments decided here (committed or voided) whose record last changed at
    /// or after `since_ms`, oldest change first (ties by payment id), at most `limit` (capped at
    /// [`DECIDED_LIST_MAX`]). Times are the ledger clock ([`PaymentRecord::updated_ms`], the
    /// moment of the decision): ask with a margin for clock differences between workers.
    ///
    /// Why: a commit stage that voids expired holds and then publishes the outcomes may die in
    /// between; on restart it announces the decisions of the recent past again (repeats are
    /// dropped downstream). To page, ask again from the `updated_ms` of the last record: the
    /// records of that millisecond come again, which idempotent announcements tolerate.
    async fn decided_since(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<PaymentRecord>, LedgerError>;

    /// Payee side: records each incoming amount as a pending credit, or refuses it.
    async fn credit_pending(
        &self,
        requests: &[CreditRequest],
    ) -> Result<Vec<CreditResult>, LedgerError>;

    /// Payee side: applies the payer institution's final decision. Idempotent.
    async fn finalize(
        &self,
        outcomes: &[(PaymentId, Finalization)],
    ) -> Result<Vec<FinalizeResult>, LedgerError>;

    /// One side's record of a payment.
    async fn payment(
        &self,
        payment_id: &PaymentId,
        side: Side,
    ) -> Result<Option<PaymentRecord>, LedgerError>;

    /// Money issued by every opening so far ([`Ledger::open_wallets`]): what the balances and
    /// the money in flight of every ledger together must conserve.
    async fn issued_total_fen(&self) -> Result<i64, LedgerError>;

    /// Wallets with their opening and current balance, by wallet id after `after` (from the
    /// first when `None`), at most `limit` (capped at [`WALLET_OPENINGS_PAGE_MAX`]), all from
    /// one snapshot per call. To page, ask again after the last id. The audit checks with it
    /// that each balance equals its opening plus the payments the record explains.
    async fn wallet_openings(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WalletOpening>, LedgerError>;

    /// Number of wallets.
    async fn wallet_count(&self) -> Result<u64, LedgerError>;

    /// Sum of all wallet balances (holds included, pending credits excluded).
    async fn total_balance_fen(&self) -> Result<i64, LedgerError>;

    /// Money in flight: holds and pending credits.
    async fn pending_totals(&self) -> Result<PendingTotals, LedgerError>;

    /// Number of payment records per side and state.
    async fn state_counts(&self) -> Result<StateCounts, LedgerError>;

    /// The offline side of this ledger (flow 2): purses, the platform's records of offline
    /// wallets, offline payments cleared, the loss account, remote commands, the blacklist.
    fn offline(&self) -> &dyn OfflineLedger;

    /// Recomputes every wallet's holds and pending credits and every daily total from the
    /// payment records and compares them with the stored ones: an
    /// [`LedgerErrorKind::Integrity`] error names the first difference.
    async fn verify_integrity(&self) -> Result<(), LedgerError>;
}

/// Where ledgers live.
///
/// - `sqlite://PATH`: PATH is a directory (created if needed) holding one file per institution,
///   `<institution>.db`, and `central-bank.db` for settlement. `sqlite:///var/lib/dcpipe` is an
///   absolute path, `sqlite://data` a relative one.
/// - `sqlite::memory:` (or `sqlite://` with no path): every open makes a private in-memory
///   database that lives as long as the returned handle, for tests; two opens never share.
/// - `postgres://user@host:port/db` (or `postgresql://…`, any libpq-style URL
///   `tokio-postgres` accepts): one schema per institution, `dcpipe_<institution>`, and
///   `dcpipe_central-bank` for settlement. TLS is not supported yet: `sslmode=require` is refused
///   rather than silently ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerUrl {
    /// A directory of SQLite files.
    SqliteDir(PathBuf),
    /// Private in-memory SQLite databases.
    SqliteMemory,
    /// A PostgreSQL server (the URL as given).
    Postgres(String),
}

impl FromStr for LedgerUrl {
    type Err = LedgerError;

    fn from_str(url: &str) -> Result<Self, LedgerError> {
        if url == "sqlite::memory:" || url == "sqlite://" {
            return Ok(LedgerUrl::SqliteMemory);
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Ok(LedgerUrl::SqliteDir(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::parse_config(url)?;
            return Ok(LedgerUrl::Postgres(url.to_owned()));
        }
        Err(LedgerError::new(
            LedgerErrorKind::Config,
            "ledger URL must start with sqlite:// or postgres://",
        ))
    }
}

impl fmt::Display for LedgerUrl {
    /// Prints the URL without any password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerUrl::SqliteDir(path) => write!(f, "sqlite://{}", path.display()),
            LedgerUrl::SqliteMemory => f.write_str("sqlite::memory:"),
            LedgerUrl::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

/// Everything needed to open a ledger besides its URL.
#[derive(Debug, Clone, Default)]
pub struct LedgerOptions {
    /// SQLite settings.
    pub sqlite: SqliteOptions,
    /// PostgreSQL settings.
    pub postgres: PostgresOptions,
}

/// Checks that `institution_id` can name a file and a schema: 1 to [`INSTITUTION_ID_LEN_MAX`]
/// ASCII letters, digits, `_` or `-`, not starting with `-`, and not the settlement store's name.
pub fn validate_institution_id(institution_id: &str) -> Result<(), LedgerError> {
    let valid = !institution_id.is_empty()
        && institution_id.len() <= INSTITUTION_ID_LEN_MAX
        && !institution_id.starts_with('-')
        && institution_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(LedgerError::new(
            LedgerErrorKind::Config,
            format!(
                "institution id {institution_id:?} must be 1 to {INSTITUTION_ID_LEN_MAX} of \
                 [A-Za-z0-9_-], not starting with '-'"
            ),
        ));
    }
    if institution_id == SETTLEMENT_STORE_NAME {
        return Err(LedgerError::new(
            LedgerErrorKind::Config,
            format!("{SETTLEMENT_STORE_NAME} is reserved for the settlement store"),
        ));
    }
    Ok(())
}

/// Opens (creating and migrating as needed) the ledger of `institution_id` at `url`.
pub async fn open_ledger(
    url: &LedgerUrl,
    institution_id: &str,
    options: &LedgerOptions,
) -> Result<Arc<dyn Ledger>, LedgerError> {
    validate_institution_id(institution_id)?;
    Ok(match url {
        LedgerUrl::SqliteDir(dir) => Arc::new(
            SqliteLedger::open(
                &dir.join(format!("{institution_id}.db")),
                institution_id,
                &options.sqlite,
            )
            .await?,
        ),
        LedgerUrl::SqliteMemory => {
            Arc::new(SqliteLedger::open_in_memory(institution_id, &options.sqlite).await?)
        }
        LedgerUrl::Postgres(url) => {
            Arc::new(PostgresLedger::connect(url, institution_id, &options.postgres).await?)
        }
    })
}

/// Opens (creating and migrating as needed) the central bank's settlement store at `url`.
pub async fn open_settlement(
    url: &LedgerUrl,
    config: SettlementConfig,
    options: &LedgerOptions,
) -> Result<Arc<dyn SettlementStore>, LedgerError> {
    Ok(match url {
        LedgerUrl::SqliteDir(dir) => Arc::new(
            SqliteSettlement::open(
                &dir.join(format!("{SETTLEMENT_STORE_NAME}.db")),
                config,
                &options.sqlite,
            )
            .await?,
        ),
        LedgerUrl::SqliteMemory => {
            Arc::new(SqliteSettlement::open_in_memory(config, &options.sqlite).await?)
        }
        LedgerUrl::Postgres(url) => {
            Arc::new(PostgresSettlement::connect(url, config, &options.postgres).await?)
        }
    })
}

/// The ledger clock, for the created/updated stamps of records.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sqlite_directory_url() {
        let url: LedgerUrl = "sqlite:///var/lib/dcpipe".parse().expect("url");
        assert_eq!(url, LedgerUrl::SqliteDir(PathBuf::from("/var/lib/dcpipe")));
    }

    #[test]
    fn parses_sqlite_memory_urls() {
        assert_eq!(
            "sqlite::memory:".parse::<LedgerUrl>().ok(),
            Some(LedgerUrl::SqliteMemory)
        );
        assert_eq!(
            "sqlite://".parse::<LedgerUrl>().ok(),
            Some(LedgerUrl::SqliteMemory)
        );
    }

    #[test]
    fn rejects_unknown_scheme() {
        let err = "mysql://db".parse::<LedgerUrl>().expect_err("scheme");
        assert_eq!(err.kind(), LedgerErrorKind::Config);
    }

    #[test]
    fn postgres_url_display_hides_password() {
        let url: LedgerUrl = "postgres://bank:s3cret@127.0.0.1:5433/ledger"
            .parse()
            .expect("url");
        let shown = url.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("127.0.0.1:5433"), "{shown}");
    }

    #[test]
    fn rejects_institution_id_with_path_characters() {
        for bad in ["", "../x", "a/b", "-a", "a b", SETTLEMENT_STORE_NAME] {
            let err = validate_institution_id(bad).expect_err(bad);
            assert_eq!(err.kind(), LedgerErrorKind::Config, "{bad}");
        }
        validate_institution_id("OI-icbc_01").expect("valid id");
    }
}
