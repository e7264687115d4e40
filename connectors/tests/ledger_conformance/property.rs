//! Random interleavings of the whole payment flow between two institutions, with duplicate
//! deliveries, checked for conservation of money and for one final state per payment.
//!
//! The generator follows the protocol's causality only where the real flow enforces it (a
//! clearing message exists once a hold was attempted; the payer commits only after the payee
//! accepted; the payee finalizes what the payer decided) and otherwise lets batches arrive in
//! any order, any number of times. Cases come from a fixed seed, so a failure replays.

use std::collections::HashMap;
use std::sync::Arc;

use dcpipe_connectors::ledger::{
    CreditRequest, Finalization, Ledger, Party, PaymentId, PaymentRecord, PaymentState, Side,
    WalletLimits,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use crate::fixtures::{NOON_MS, digest, open, pid, reserve_at};
use crate::harness::Backend;

/// Payments a case plays with.
const PAYMENTS: usize = 6;
/// Wallets per institution, and what each holds at the start.
const WALLETS: usize = 2;
const OPENING_BALANCE_FEN: i64 = 300_000;
/// Limits tight enough that refusals happen (single, daily, balance cap).
const LIMITS: WalletLimits = WalletLimits {
    balance_limit_fen: 700_000,
    single_payment_limit_fen: 250_000,
    daily_limit_fen: 400_000,
    password_free_limit_fen: 0,
};

#[derive(Debug, Clone)]
struct Payment {
    payer_wallet: usize,
    payee_wallet: usize,
    amount_fen: i64,
    /// Hours after noon: spreads payments over two business days.
    paid_hour: i64,
}

#[derive(Debug, Clone)]
enum Step {
    Reserve(Vec<usize>),
    Credit(Vec<usize>),
    Commit(Vec<usize>),
    Void(Vec<usize>),
    Finalize(Vec<usize>),
    /// The previous batch delivered again.
    Replay,
}

#[derive(Debug, Clone)]
struct Case {
    payments: Vec<Payment>,
    steps: Vec<Step>,
}

fn payment() -> impl Strategy<Value = Payment> {
    (0..WALLETS, 0..WALLETS, 1i64..=300_000, 0i64..16).prop_map(
        |(payer_wallet, payee_wallet, amount_fen, paid_hour)| Payment {
            payer_wallet,
            payee_wallet,
            amount_fen,
            paid_hour,
        },
    )
}

fn step() -> impl Strategy<Value = Step> {
    let items = || prop::collection::vec(0..PAYMENTS, 1..4);
    prop_oneof![
        3 => items().prop_map(Step::Reserve),
        3 => items().prop_map(Step::Credit),
        2 => items().prop_map(Step::Commit),
        1 => items().prop_map(Step::Void),
        2 => items().prop_map(Step::Finalize),
        1 => Just(Step::Replay),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(payment(), PAYMENTS),
        prop::collection::vec(step(), 1..30),
    )
        .prop_map(|(payments, steps)| Case { payments, steps })
}

fn payer_wallet(i: usize) -> String {
    format!("a{i}")
}

fn payee_wallet(i: usize) -> String {
    format!("b{i}")
}

/// The two ledgers of one case.
struct World {
    payer: Arc<dyn Ledger>,
    payee: Arc<dyn Ledger>,
    payments: Vec<Payment>,
    /// The first final state seen per (payment, side): it must never change.
    finals: HashMap<(usize, Side), PaymentState>,
}

impl World {
    fn id(&self, i: usize) -> PaymentId {
        pid(i as u64)
    }

    async fn record(&self, i: usize, side: Side) -> Option<PaymentRecord> {
        let ledger = match side {
            Side::Payer => &self.payer,
            Side::Payee => &self.payee,
        };
        ledger
            .payment(&self.id(i), side)
            .await
            .expect("read payment")
    }

    async fn state(&self, i: usize, side: Side) -> Option<PaymentState> {
        self.record(i, side).await.map(|r| r.state)
    }

    fn credit_request(&self, i: usize) -> CreditRequest {
        let p = &self.payments[i];
        CreditRequest {
            payment_id: self.id(i),
            digest: digest(i as u64, 1),
            payee_wallet: payee_wallet(p.payee_wallet),
            payer: Party {
                institution_id: self.payer.institution_id().to_owned(),
                wallet_id: payer_wallet(p.payer_wallet),
            },
            amount_fen: p.amount_fen,
            at_ms: NOON_MS,
        }
    }

    async fn run(&self, step: &Step) {
        match step {
            Step::Reserve(items) => {
                let requests: Vec<_> = items
                    .iter()
                    .map(|&i| {
                        let p = &self.payments[i];
                        let mut request = reserve_at(
                            i as u64,
                            &payer_wallet(p.payer_wallet),
                            p.amount_fen,
                            NOON_MS + p.paid_hour * 3_600_000,
                        );
                        request.payee = Party {
                            institution_id: self.payee.institution_id().to_owned(),
                            wallet_id: payee_wallet(p.payee_wallet),
                        };
                        request
                    })
                    .collect();
                self.payer.reserve(&requests).await.expect("reserve");
            }
            Step::Credit(items) => {
                // A clearing message exists once the payer institution held the amount, even
                // if it voided since (a late message).
                let mut requests = Vec::new();
                for &i in items {
                    if matches!(
                        self.state(i, Side::Payer).await,
                        Some(
                            PaymentState::Reserved | PaymentState::Committed | PaymentState::Voided
                        )
                    ) {
                        requests.push(self.credit_request(i));
                    }
                }
                self.payee.credit_pending(&requests).await.expect("credit");
            }
            Step::Commit(items) => {
                // The payer commits only what the payee accepted.
                let mut ids = Vec::new();
                for &i in items {
                    if matches!(
                        self.state(i, Side::Payee).await,
                        Some(PaymentState::PendingCredit | PaymentState::Credited)
                    ) {
                        ids.push(self.id(i));
                    }
                }
                self.payer.commit(&ids).await.expect("commit");
            }
            Step::Void(items) => {
                let voids: Vec<_> = items
                    .iter()
                    .map(|&i| (self.id(i), "payment.expired".to_owned()))
                    .collect();
                self.payer.void(&voids).await.expect("void");
            }
            Step::Finalize(items) => {
                let mut outcomes = Vec::new();
                for &i in items {
                    match self.state(i, Side::Payer).await {
                        Some(PaymentState::Committed) => {
                            outcomes.push((self.id(i), Finalization::Completed));
                        }
                        Some(PaymentState::Voided) => outcomes.push((
                            self.id(i),
                            Finalization::Voided {
                                reason_code: "payment.expired".into(),
                            },
                        )),
                        _ => {}
                    }
                }
                self.payee.finalize(&outcomes).await.expect("finalize");
            }
            Step::Replay => {}
        }
    }

    /// Money committed by the payer institution and not yet credited by the payee's.
    async fn in_flight_fen(&self) -> i64 {
        let mut total = 0;
        for i in 0..PAYMENTS {
            if self.state(i, Side::Payer).await == Some(PaymentState::Committed)
                && self.state(i, Side::Payee).await != Some(PaymentState::Credited)
            {
                total += self.payments[i].amount_fen;
            }
        }
        total
    }

    async fn total_fen(&self) -> i64 {
        self.payer.total_balance_fen().await.expect("payer total")
            + self.payee.total_balance_fen().await.expect("payee total")
    }

    /// Conservation and finality after a step.
    async fn check(&mut self, initial_fen: i64, after: &str) -> Result<(), TestCaseError> {
        let total = self.total_fen().await + self.in_flight_fen().await;
        prop_assert_eq!(total, initial_fen, "money not conserved after {}", after);
        for i in 0..PAYMENTS {
            for side in [Side::Payer, Side::Payee] {
                let Some(state) = self.state(i, side).await else {
                    continue;
                };
                match self.finals.get(&(i, side)) {
                    Some(first) => prop_assert_eq!(
                        *first,
                        state,
                        "payment {} {:?} left its final state after {}",
                        i,
                        side,
                        after
                    ),
                    None if state.is_final() => {
                        self.finals.insert((i, side), state);
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }
}

async fn run_case(backend: &dyn Backend, n: u64, case: Case) -> Result<(), TestCaseError> {
    let payer = backend.ledger(&format!("pa{n}")).await;
    let payee = backend.ledger(&format!("pb{n}")).await;
    let payer_names: Vec<String> = (0..WALLETS).map(payer_wallet).collect();
    let payee_names: Vec<String> = (0..WALLETS).map(payee_wallet).collect();
    let pw: Vec<(&str, i64, WalletLimits)> = payer_names
        .iter()
        .map(|w| (w.as_str(), OPENING_BALANCE_FEN, LIMITS))
        .collect();
    let bw: Vec<(&str, i64, WalletLimits)> = payee_names
        .iter()
        .map(|w| (w.as_str(), OPENING_BALANCE_FEN, LIMITS))
        .collect();
    open(payer.as_ref(), &pw).await;
    open(payee.as_ref(), &bw).await;
    let initial_fen = OPENING_BALANCE_FEN * 2 * WALLETS as i64;
    let mut world = World {
        payer,
        payee,
        payments: case.payments,
        finals: HashMap::new(),
    };
    let mut previous: Option<&Step> = None;
    for (k, step) in case.steps.iter().enumerate() {
        let effective = match step {
            Step::Replay => previous,
            other => Some(other),
        };
        if let Some(effective) = effective {
            world.run(effective).await;
            previous = Some(effective);
        }
        world
            .check(initial_fen, &format!("step {k} {step:?}"))
            .await?;
    }
    // Drain: every open hold is voided, every decision reaches the payee.
    let all: Vec<usize> = (0..PAYMENTS).collect();
    world.run(&Step::Void(all.clone())).await;
    world.run(&Step::Finalize(all)).await;
    world.check(initial_fen, "drain").await?;
    prop_assert_eq!(world.in_flight_fen().await, 0);
    prop_assert_eq!(world.total_fen().await, initial_fen);
    for ledger in [&world.payer, &world.payee] {
        let pending = ledger.pending_totals().await.expect("pending");
        prop_assert_eq!(pending.held_fen, 0);
        prop_assert_eq!(pending.pending_credit_fen, 0);
        ledger
            .verify_integrity()
            .await
            .map_err(|e| TestCaseError::fail(format!("integrity: {e}")))?;
    }
    Ok(())
}

/// Runs `cases` random cases on ledgers of `backend`, from a fixed seed.
pub(crate) fn random_interleavings_conserve_money(backend: Arc<dyn Backend>, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let counter = std::cell::Cell::new(0u64);
    let result = runner.run(&case(), |case| {
        counter.set(counter.get() + 1);
        runtime.block_on(run_case(backend.as_ref(), counter.get(), case))
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
