//! Throughput of the ledger's hot calls (reserve, credit_pending, commit, finalize, and the batch
//! read of payer wallets) in batches of 256, as the pipeline sends them, and of listing the
//! latest 256 decisions among many (what a restarted commit stage re-announces): on SQLite with
//! full durability (`synchronous=FULL`, the default) and relaxed (`NORMAL`), with payment ids in
//! ascending order (time-ordered, as dcpipe's terminals make them) and, for comparison, random
//! (`full_random_ids`), and on PostgreSQL (a private server from the testkit, so
//! with fsync off: the numbers measure the ledger's round trips and locking, not the disk).
//!
//! Criterion reports items per second (`Throughput::Elements`). The target is at least 20,000
//! items/s per call on SQLite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use dcpipe_connectors::ledger::{
    CreditRequest, Digest, Finalization, Ledger, LedgerOptions, LedgerUrl, Party, PaymentId,
    ReserveRequest, SqliteOptions, SqliteSync, Transition, WalletAccount, WalletLimits,
    open_ledger,
};
use dcpipe_connectors::testkit::PostgresServer;
use tokio::runtime::Runtime;

/// Items per call, as the pipeline batches deliveries.
const BATCH: usize = 256;
/// Wallets the payments spread over (few enough that batches share some).
const WALLETS: usize = 1_000;
const OPENING_BALANCE_FEN: i64 = 1_000_000_000_000;
const LIMITS: WalletLimits = WalletLimits {
    balance_limit_fen: i64::MAX / 4,
    single_payment_limit_fen: i64::MAX / 4,
    daily_limit_fen: i64::MAX / 4,
    password_free_limit_fen: 0,
};
const PAID_AT_MS: i64 = 1_735_704_000_000;
/// Batches decided before listing the latest one, so the listing runs among many decisions.
const DECIDED_BATCHES: usize = 40;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn wallet(i: usize) -> String {
    format!("w{i:05}")
}

async fn provision(ledger: &dyn Ledger) {
    let accounts: Vec<WalletAccount> = (0..WALLETS)
        .map(|i| WalletAccount {
            wallet_id: wallet(i),
            institution_id: ledger.institution_id().to_owned(),
            tier: 2,
            balance_fen: OPENING_BALANCE_FEN,
            limits: LIMITS,
            locked: false,
        })
        .collect();
    for chunk in accounts.chunks(BATCH) {
        ledger.open_wallets(chunk).await.expect("open wallets");
    }
}

/// How the benchmarked payment ids are ordered.
#[derive(Clone, Copy)]
enum IdOrder {
    /// Each id sorts after the previous one, as time-ordered (version 7) ids do.
    Ascending,
    /// Random (version 4) ids: each lands on a random page of the payments index.
    Random,
}

/// Hands out fresh payment ids across iterations.
struct Ids {
    next: u64,
    order: IdOrder,
}

impl Ids {
    fn new(start: u64, order: IdOrder) -> Ids {
        Ids { next: start, order }
    }

    fn next_batch(&mut self) -> Vec<PaymentId> {
        (0..BATCH)
            .map(|_| match self.order {
                IdOrder::Ascending => {
                    self.next += 1;
                    let mut bytes = [0u8; 16];
                    bytes[8..].copy_from_slice(&self.next.to_be_bytes());
                    PaymentId(bytes)
                }
                IdOrder::Random => PaymentId(uuid::Uuid::new_v4().into_bytes()),
            })
            .collect()
    }
}

fn reserves(ids: &[PaymentId]) -> Vec<ReserveRequest> {
    ids.iter()
        .enumerate()
        .map(|(k, id)| ReserveRequest {
            payment_id: *id,
            digest: Digest([k as u8; 32]),
            payer_wallet: wallet((id.0[15] as usize * 7 + k) % WALLETS),
            payee: Party {
                institution_id: "oi-payee".into(),
                wallet_id: wallet(k),
            },
            amount_fen: 100 + k as i64,
            paid_at_ms: PAID_AT_MS,
            expires_at_ms: PAID_AT_MS + 60_000,
        })
        .collect()
}

fn credits(ids: &[PaymentId]) -> Vec<CreditRequest> {
    ids.iter()
        .enumerate()
        .map(|(k, id)| CreditRequest {
            payment_id: *id,
            digest: Digest([k as u8; 32]),
            payee_wallet: wallet((id.0[15] as usize * 7 + k) % WALLETS),
            payer: Party {
                institution_id: "oi-payer".into(),
                wallet_id: wallet(k),
            },
            amount_fen: 100 + k as i64,
            at_ms: PAID_AT_MS,
        })
        .collect()
}

/// Benchmarks the four hot calls on `payer` and `payee`, timing only the call under test.
fn hot_calls(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    payer: Arc<dyn Ledger>,
    payee: Arc<dyn Ledger>,
    order: IdOrder,
) {
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut ids = Ids::new(0, order);
    group.bench_function("reserve", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let requests = reserves(&ids.next_batch());
                let start = Instant::now();
                rt.block_on(payer.reserve(&requests)).expect("reserve");
                total += start.elapsed();
            }
            total
        })
    });
    group.bench_function("commit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = ids.next_batch();
                rt.block_on(payer.reserve(&reserves(&batch)))
                    .expect("reserve");
                let start = Instant::now();
                rt.block_on(payer.commit(&batch)).expect("commit");
                total += start.elapsed();
            }
            total
        })
    });
    group.bench_function("credit_pending", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let requests = credits(&ids.next_batch());
                let start = Instant::now();
                rt.block_on(payee.credit_pending(&requests))
                    .expect("credit");
                total += start.elapsed();
            }
            total
        })
    });
    group.bench_function("finalize", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = ids.next_batch();
                rt.block_on(payee.credit_pending(&credits(&batch)))
                    .expect("credit");
                let outcomes: Vec<_> = batch
                    .iter()
                    .map(|id| (*id, Finalization::Completed))
                    .collect();
                let start = Instant::now();
                rt.block_on(payee.finalize(&outcomes)).expect("finalize");
                total += start.elapsed();
            }
            total
        })
    });
}

/// Reserves and commits `batches` batches on `payer`; returns the update stamp of the last.
fn decide_batches(rt: &Runtime, payer: &dyn Ledger, ids: &mut Ids, batches: usize) -> i64 {
    let mut last_ms = 0;
    for _ in 0..batches {
        let batch = ids.next_batch();
        rt.block_on(payer.reserve(&reserves(&batch)))
            .expect("reserve");
        let committed = rt.block_on(payer.commit(&batch)).expect("commit");
        if let Some(Transition::Applied(record)) = committed.last() {
            last_ms = record.updated_ms;
        }
    }
    last_ms
}

/// Benchmarks the reads of the payment and commit stages.
fn reads(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, payer: Arc<dyn Ledger>) {
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut round = 0;
    group.bench_function("wallets", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let ids: Vec<String> = (0..BATCH)
                    .map(|k| wallet((round * 31 + k * 7) % WALLETS))
                    .collect();
                let start = Instant::now();
                let found = rt.block_on(payer.wallets(&ids)).expect("wallets");
                total += start.elapsed();
                assert!(found.iter().all(Option::is_some));
            }
            total
        })
    });
    // Far from the `hot_calls` ids, so the decisions here are new ones.
    let mut ids = Ids::new(1 << 40, IdOrder::Ascending);
    let since_ms = decide_batches(rt, payer.as_ref(), &mut ids, DECIDED_BATCHES);
    group.bench_function("decided_since", |b| {
        b.iter(|| {
            let listed = rt
                .block_on(payer.decided_since(since_ms, BATCH))
                .expect("list");
            assert_eq!(listed.len(), BATCH);
        })
    });
}

async fn ledgers(url: &LedgerUrl, options: &LedgerOptions) -> (Arc<dyn Ledger>, Arc<dyn Ledger>) {
    let payer = open_ledger(url, "oi-payer", options).await.expect("payer");
    let payee = open_ledger(url, "oi-payee", options).await.expect("payee");
    provision(payer.as_ref()).await;
    provision(payee.as_ref()).await;
    (payer, payee)
}

fn sqlite(c: &mut Criterion) {
    let rt = runtime();
    for (name, synchronous, order) in [
        ("full", SqliteSync::Full, IdOrder::Ascending),
        ("normal", SqliteSync::Normal, IdOrder::Ascending),
        ("full_random_ids", SqliteSync::Full, IdOrder::Random),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = LedgerUrl::SqliteDir(dir.path().to_owned());
        let options = LedgerOptions {
            sqlite: SqliteOptions {
                synchronous,
                ..SqliteOptions::default()
            },
            ..LedgerOptions::default()
        };
        let (payer, payee) = rt.block_on(ledgers(&url, &options));
        let mut group = c.benchmark_group(format!("ledger_sqlite_{name}"));
        group.sample_size(20);
        group.measurement_time(Duration::from_secs(5));
        hot_calls(&mut group, &rt, Arc::clone(&payer), payee, order);
        reads(&mut group, &rt, payer);
        group.finish();
    }
}

fn postgres(c: &mut Criterion) {
    let rt = runtime();
    let server = rt.block_on(PostgresServer::start()).expect("PostgreSQL");
    let url: LedgerUrl = server.url().parse().expect("url");
    let (payer, payee) = rt.block_on(ledgers(&url, &LedgerOptions::default()));
    let mut group = c.benchmark_group("ledger_postgres");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    hot_calls(
        &mut group,
        &rt,
        Arc::clone(&payer),
        payee,
        IdOrder::Ascending,
    );
    reads(&mut group, &rt, payer);
    group.finish();
}

criterion_group!(benches, sqlite, postgres);
criterion_main!(benches);
