//! The thread that owns one SQLite connection, and group commit.
//!
//! Every SQLite database a process opens gets one thread that holds its connection and runs
//! what a channel brings, in arrival order: no hand-off to tokio's blocking pool per call, and
//! one writer per database whichever stages share it (on the payer's side the payment and
//! commit stages, on the payee's the payee and finalize stages).
//!
//! Ledger batches ([`Grouped`]) that are waiting together run in one transaction and one
//! `fsync`: each inside its own savepoint, so a batch that fails is rolled back alone and the
//! others commit; each caller gets its own answer, only once the shared commit is durable. A
//! transient failure of the shared transaction (the file locked by another process past the
//! busy timeout) runs the group again, at most [`GROUP_RETRIES_MAX`] times. Other calls (wallet
//! administration, the offline side, settlement) run alone, in their place in the queue, so
//! requests are applied in the order they were sent; the reads of the hot path (the payment
//! stage's wallet lookups, a payment's record) may run ahead of the batches queued before them,
//! which no caller has an answer to yet, rather than split their group in two.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::error::{LedgerError, LedgerErrorKind};
use super::metrics;
use super::sqlite::db_error;

/// Most ledger batches one transaction commits together: bounds how long the first of them
/// waits for the others.
pub const GROUP_REQUESTS_MAX: usize = 64;

/// Times a group is run again after a transient failure of its transaction before each of its
/// batches is answered with the error.
pub const GROUP_RETRIES_MAX: u32 = 2;

/// The `backend` label of the metrics recorded here.
const BACKEND: &str = "sqlite";

/// A ledger batch that can share a transaction with others.
pub(crate) trait Grouped: Send {
    /// Loads, decides and writes inside the open transaction `conn`, keeping the results for
    /// [`Grouped::answer`]. On `Err` the caller rolls back what it wrote. May run more than once
    /// (a retried group): each run replaces the results of the previous one.
    fn apply(&mut self, conn: &Connection) -> Result<(), LedgerError>;

    /// Answers the caller once the group's transaction ended: with its results if `outcome` is
    /// `Ok` (they are committed), else with the error.
    fn answer(self: Box<Self>, outcome: Result<(), LedgerError>);
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Request {
    /// Runs alone, with the connection to itself.
    Alone(Job),
    /// Reads only: may run ahead of the ledger batches queued before it, which nobody has seen
    /// the outcome of yet (as if it had arrived before them), instead of splitting their group.
    Read(Job),
    /// Shares a transaction with the ledger batches next to it in the queue.
    Grouped(Box<dyn Grouped>),
}

/// How many transactions the group commit ran, and how many ledger batches they carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupCommits {
    /// Transactions committed for ledger batches.
    pub commits: u64,
    /// Ledger batches those transactions carried (each answered on its own).
    pub requests: u64,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    requests: AtomicU64,
    /// Requests sent and not yet taken by the thread.
    queued: AtomicUsize,
}

/// The handle of one connection's thread; the thread ends (and closes the connection) when the
/// last handle is dropped, after what was queued.
pub(crate) struct Writer {
    sender: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn stopped() -> LedgerError {
    LedgerError::new(
        LedgerErrorKind::Database,
        "the SQLite call panicked or its thread stopped",
    )
}

impl Writer {
    /// Starts the thread: it runs `open` to make the connection, answers with its outcome, and
    /// on success serves requests until the last handle is dropped.
    pub(crate) async fn start(
        name: String,
        open: impl FnOnce() -> Result<Connection, LedgerError> + Send + 'static,
    ) -> Result<Writer, LedgerError> {
        let (sender, receiver) = mpsc::channel();
        let (opened, opening) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let served = Arc::clone(&counters);
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || match open() {
                Ok(conn) => {
                    let _ = opened.send(Ok(()));
                    serve(conn, &receiver, &served);
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                }
            })
            .map_err(|e| {
                LedgerError::with_source(
                    LedgerErrorKind::Database,
                    "cannot start a SQLite thread",
                    e,
                )
            })?;
        let writer = Writer {
            sender: Some(sender),
            thread: Some(thread),
            counters,
        };
        opening.await.map_err(|_| stopped())??;
        Ok(writer)
    }

    fn send(&self, request: Request) -> Result<(), LedgerError> {
        let sender = self.sender.as_ref().ok_or_else(stopped)?;
        self.counters.queued.fetch_add(1, Ordering::SeqCst);
        sender.send(request).map_err(|_| {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            stopped()
        })
    }

    /// Runs `f` with the connection, alone, in its place in the queue.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Alone(Box::new(move |conn| {
            let _ = reply.send(f(conn));
        })))?;
        answer.await.map_err(|_| stopped())?
    }

    /// Runs `f`, which only reads, with the connection: in its place in the queue or ahead of
    /// the ledger batches queued before it.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Read(Box::new(move |conn| {
            let _ = reply.send(f(conn));
        })))?;
        answer.await.map_err(|_| stopped())?
    }

    /// Queues a ledger batch for the next group commit. The batch answers through its own
    /// channel ([`Grouped::answer`]).
    pub(crate) fn submit(&self, batch: Box<dyn Grouped>) -> Result<(), LedgerError> {
        self.send(Request::Grouped(batch))
    }

    /// The group commits run so far on this connection.
    pub(crate) fn group_commits(&self) -> GroupCommits {
        GroupCommits {
            commits: self.counters.commits.load(Ordering::SeqCst),
            requests: self.counters.requests.load(Ordering::SeqCst),
        }
    }

    /// Requests sent and not yet taken by the thread.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.counters.queued.load(Ordering::SeqCst)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has run what was queued; waiting for it
        // means the file is closed when the last handle is gone, as with a connection held here.
        self.sender = None;
        if let Some(handle) = self.thread.take()
            && handle.thread().id() != thread::current().id()
        {
            let _ = handle.join();
        }
    }
}

fn serve(mut conn: Connection, receiver: &mpsc::Receiver<Request>, counters: &Counters) {
    let mut pending: VecDeque<Request> = VecDeque::new();
    while let Ok(first) = receiver.recv() {
        counters.queued.fetch_sub(1, Ordering::SeqCst);
        pending.push_back(first);
        loop {
            for request in receiver.try_iter() {
                counters.queued.fetch_sub(1, Ordering::SeqCst);
                pending.push_back(request);
            }
            let Some(request) = pending.pop_front() else {
                break;
            };
            match request {
                // A job that panics drops its reply channel: its caller gets an error, and an
                // open transaction rolls back as the panic unwinds.
                Request::Alone(job) | Request::Read(job) => {
                    let _ = catch_unwind(AssertUnwindSafe(|| job(&mut conn)));
                }
                Request::Grouped(first) => {
                    let mut group = vec![first];
                    while group.len() < GROUP_REQUESTS_MAX {
                        match pending.pop_front() {
                            Some(Request::Grouped(next)) => group.push(next),
                            // Before the group's transaction: it sees none of the group.
                            Some(Request::Read(job)) => {
                                let _ = catch_unwind(AssertUnwindSafe(|| job(&mut conn)));
                            }
                            Some(other) => {
                                pending.push_front(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        commit_group(&mut conn, group, counters);
                    }));
                }
            }
        }
    }
}

/// Runs `group` in one transaction and answers each batch of it.
fn commit_group(conn: &mut Connection, mut group: Vec<Box<dyn Grouped>>, counters: &Counters) {
    let mut attempt = 0;
    loop {
        match run_group(conn, &mut group) {
            Ok(outcomes) => {
                let requests = group.len();
                counters.commits.fetch_add(1, Ordering::SeqCst);
                counters
                    .requests
                    .fetch_add(requests as u64, Ordering::SeqCst);
                metrics::record_commit(BACKEND, requests);
                for (batch, outcome) in group.into_iter().zip(outcomes) {
                    batch.answer(outcome);
                }
                return;
            }
            Err(e) if e.kind().is_retryable() && attempt < GROUP_RETRIES_MAX => {
                attempt += 1;
                metrics::record_retry(BACKEND);
            }
            Err(e) => {
                for batch in group {
                    batch.answer(Err(LedgerError::new(e.kind(), e.to_string())));
                }
                return;
            }
        }
    }
}

/// One transaction for the whole group, one savepoint per batch: the outcome of each batch, or
/// an error of the transaction itself (nothing of the group committed).
fn run_group(
    conn: &mut Connection,
    group: &mut [Box<dyn Grouped>],
) -> Result<Vec<Result<(), LedgerError>>, LedgerError> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| db_error("cannot start transaction", e))?;
    let mut outcomes = Vec::with_capacity(group.len());
    for batch in group.iter_mut() {
        let savepoint = tx
            .savepoint()
            .map_err(|e| db_error("cannot start a savepoint", e))?;
        match batch.apply(&savepoint) {
            Ok(()) => {
                savepoint
                    .commit()
                    .map_err(|e| db_error("cannot release a savepoint", e))?;
                outcomes.push(Ok(()));
            }
            Err(e) => {
                // Dropping rolls back to the savepoint and releases it.
                savepoint
                    .finish()
                    .map_err(|e| db_error("cannot roll back a savepoint", e))?;
                outcomes.push(Err(e));
            }
        }
    }
    tx.commit()
        .map_err(|e| db_error("cannot commit batch", e))?;
    Ok(outcomes)
}
