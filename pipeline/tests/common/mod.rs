//! What the stage-level payment tests share: a provisioned network on a manual clock, each
//! institution's four payment stages, and a simulated bus that queues what the stages publish
//! and delivers it in the order a test chooses. No broker and no threads, so a test is fast and
//! deterministic: it decides every delivery, redelivery and clock move itself.

// Each test binary uses a different part of these fixtures.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use dcpipe_connectors::bus::{Outgoing, Position};
use dcpipe_connectors::ledger::Ledger;
use dcpipe_pipeline::clock::{Clock, ManualClock, system_now_ms};
use dcpipe_pipeline::invariants::{OutcomeBook, Submission};
use dcpipe_pipeline::network::{Network, NetworkConfig};
use dcpipe_pipeline::payment::commit::CommitStage;
use dcpipe_pipeline::pki::{AlgorithmChoice, DemoPkiOptions, PkiDirectory};
use dcpipe_pipeline::reason::Reason;
use dcpipe_pipeline::runtime::{Input, Stage, Verdict};
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::terminal::{PaymentRequest, PinEntry, Touch};
use dcpipe_schemas::{Channel, PartyRef, PaymentId, PaymentOutcome, TransactionEnvelope};

/// Most deliveries one drain makes: far more than any test publishes, so hitting it means the
/// stages keep answering each other.
const DRAIN_DELIVERIES_MAX: usize = 100_000;

/// One PKI per shape (institutions, wallets), generated once per test binary: keys are the
/// slow part of a fixture, and ledgers are fresh for every network anyway. Its certificates are
/// valid from a day before the first use to two years after.
pub(crate) fn shared_pki(institutions: usize, wallets: usize) -> Arc<PkiDirectory> {
    /// PKIs by (institutions, wallets).
    type Pkis = HashMap<(usize, usize), Arc<PkiDirectory>>;
    static PKIS: LazyLock<Mutex<Pkis>> = LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut pkis = PKIS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(pkis.entry((institutions, wallets)).or_insert_with(|| {
        Arc::new(
            PkiDirectory::generate(&DemoPkiOptions::new(
                institutions,
                wallets,
                AlgorithmChoice::P256,
                system_now_ms(),
            ))
            .expect("demo PKI generates"),
        )
    }))
}

/// A provisioned network (fresh in-memory ledgers, a shared PKI) and its payment stages, on a
/// manual clock.
pub(crate) struct TestNet {
    pub(crate) network: Network,
    pub(crate) clock: ManualClock,
    /// Every stage, by the subject it consumes.
    stages: BTreeMap<String, Arc<dyn Stage>>,
    /// Each institution's commit stage, for expiry sweeps.
    commits: BTreeMap<String, CommitStage>,
}

/// A wallet's money, as its ledger reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalletMoney {
    pub(crate) balance_fen: i64,
    pub(crate) held_fen: i64,
    pub(crate) pending_credit_fen: i64,
}

impl TestNet {
    /// A network of `institutions` institutions and `wallets` wallets (spread round-robin). Its
    /// clock starts at the wall clock's reading and then moves only when the test moves it: the
    /// ledgers stamp their records with the wall clock, and the payer stage cannot run on a
    /// clock behind it (see `payer_stage_forwards_clearing_when_its_clock_is_behind_the_ledgers`
    /// in `reason_codes.rs`).
    pub(crate) async fn provision(institutions: usize, wallets: usize) -> Self {
        let clock = ManualClock::new(system_now_ms());
        let config = NetworkConfig::in_memory(institutions, wallets);
        let network = Network::from_pki(
            shared_pki(institutions, wallets),
            &config,
            Arc::new(clock.clone()),
        )
        .await
        .expect("network provisions");
        // Every registered stage, as the network runs them: this also proves the stages'
        // registrations are linked into a test binary.
        let stages: BTreeMap<String, Arc<dyn Stage>> = network
            .stages()
            .into_iter()
            .map(|stage| (stage.subject(), stage))
            .collect();
        let commits = network
            .institutions
            .iter()
            .map(|(id, institution)| (id.clone(), CommitStage::new(Arc::clone(institution))))
            .collect();
        TestNet {
            network,
            clock,
            stages,
            commits,
        }
    }

    /// The manual clock's reading.
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Institution ids, in order.
    pub(crate) fn institution_ids(&self) -> Vec<String> {
        self.network.institutions.keys().cloned().collect()
    }

    /// An institution's ledger.
    pub(crate) fn ledger(&self, institution: &str) -> &Arc<dyn Ledger> {
        &self
            .network
            .institutions
            .get(institution)
            .unwrap_or_else(|| panic!("no institution {institution}"))
            .ledger
    }

    /// The ids of the wallets an institution holds, in PKI order.
    pub(crate) fn wallets_of(&self, institution: &str) -> Vec<String> {
        self.network
            .wallets
            .iter()
            .filter(|w| w.party.institution_id == institution)
            .map(|w| w.party.wallet_id.clone())
            .collect()
    }

    /// The institution and id of a provisioned wallet.
    pub(crate) fn party(&self, wallet_id: &str) -> PartyRef {
        self.network
            .wallets
            .iter()
            .find(|w| w.party.wallet_id == wallet_id)
            .unwrap_or_else(|| panic!("no wallet {wallet_id}"))
            .party
            .clone()
    }

    /// What an honest pair of terminals produces now: they verify each other, negotiate the
    /// factor, and the payer signs.
    pub(crate) fn envelope(
        &self,
        payer: &str,
        payee: &str,
        amount_fen: i64,
        pin: PinEntry,
    ) -> TransactionEnvelope {
        self.envelope_with_id(PaymentId::random(), payer, payee, amount_fen, pin)
    }

    /// Like [`TestNet::envelope`], under a chosen payment id (a renegotiation reuses it).
    pub(crate) fn envelope_with_id(
        &self,
        payment_id: PaymentId,
        payer: &str,
        payee: &str,
        amount_fen: i64,
        pin: PinEntry,
    ) -> TransactionEnvelope {
        let network = &self.network;
        let touch = Touch::connect(
            network.terminal(payer).expect("payer terminal"),
            network.terminal(payee).expect("payee terminal"),
            &network.verifier,
            self.now_ms(),
        )
        .expect("terminals verify each other");
        touch
            .negotiate(&PaymentRequest {
                payment_id,
                amount_fen,
                channel: Channel::Nfc,
                created_at_ms: self.now_ms(),
                pin,
            })
            .expect("negotiation")
    }

    /// The stage consuming `subject`.
    pub(crate) fn stage(&self, subject: &str) -> &Arc<dyn Stage> {
        self.stages
            .get(subject)
            .unwrap_or_else(|| panic!("no stage consumes {subject}"))
    }

    /// Hands one message to the stage of `subject` as a first delivery, and returns its one
    /// verdict.
    pub(crate) async fn handle_one(&self, subject: &str, payload: &[u8]) -> Verdict {
        let input = Input {
            subject,
            payload,
            delivery_count: 1,
            position: Position {
                partition: 0,
                offset: 1,
            },
        };
        let mut verdicts = self
            .stage(subject)
            .handle(&[input])
            .await
            .expect("stage handles the batch");
        assert_eq!(verdicts.len(), 1, "one verdict per input");
        verdicts.remove(0)
    }

    /// Every institution's expiry sweep at the current time.
    pub(crate) async fn sweep(&self) -> Vec<Outgoing> {
        let mut outputs = Vec::new();
        for commit in self.commits.values() {
            outputs.extend(commit.sweep_expired().await.expect("sweep"));
        }
        outputs
    }

    /// Every provisioned wallet's money.
    pub(crate) async fn wallet_money(&self) -> BTreeMap<String, WalletMoney> {
        let mut money = BTreeMap::new();
        for institution in self.network.institutions.keys() {
            let ids = self.wallets_of(institution);
            let states = self
                .ledger(institution)
                .wallets(&ids)
                .await
                .expect("wallets read");
            for (id, state) in ids.into_iter().zip(states) {
                let state = state.unwrap_or_else(|| panic!("wallet {id} exists"));
                money.insert(
                    id,
                    WalletMoney {
                        balance_fen: state.account.balance_fen,
                        held_fen: state.held_fen,
                        pending_credit_fen: state.pending_credit_fen,
                    },
                );
            }
        }
        money
    }

    /// Asserts that nothing is in flight, the balances add up to the opening total and every
    /// ledger passes its integrity check.
    pub(crate) async fn assert_settled_and_conserved(&self) {
        let money = self
            .network
            .money()
            .await
            .expect("money report (includes each ledger's integrity check)");
        assert!(
            money.is_settled_and_conserved(),
            "money not settled or not conserved: {money:?}"
        );
    }
}

/// A message waiting on the simulated bus.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub(crate) subject: String,
    pub(crate) payload: Bytes,
    pub(crate) position: Position,
    /// Deliveries so far.
    pub(crate) deliveries: u32,
}

/// What a stage dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLettered {
    /// The stage's name.
    pub(crate) stage: String,
    /// The subject the message was consumed from.
    pub(crate) subject: String,
    pub(crate) reason: Reason,
    pub(crate) detail: String,
}

/// The bus, simulated: what the stages publish is queued per subject with a position, and
/// delivered when and in the order the test says. Every payment outcome is also recorded at
/// publication, as an observer consuming every `txn.result.<oi>` would see it.
#[derive(Debug, Default)]
pub(crate) struct SimBus {
    queue: Vec<Queued>,
    next_offset: HashMap<String, u64>,
    /// Every outcome published, judged.
    pub(crate) book: OutcomeBook,
    /// Every outcome published, in order (one per recipient subject).
    pub(crate) outcomes: Vec<PaymentOutcome>,
    /// Completed interbank payments published for settlement.
    pub(crate) settlement: Vec<PaymentOutcome>,
    /// Everything dead-lettered.
    pub(crate) dead_letters: Vec<DeadLettered>,
    /// The subject and message id of every outcome published, in order.
    pub(crate) outcome_ids: Vec<(String, Option<String>)>,
}

impl SimBus {
    /// Stores a message: outcomes are recorded, settlement clearings set aside (no stage here
    /// consumes them), everything else queued for its stage.
    pub(crate) fn publish(&mut self, message: Outgoing) {
        if message.subject == subjects::SETTLEMENT_CLEARING {
            let outcome = dcpipe_schemas::decode::<PaymentOutcome>(&message.payload)
                .expect("a settlement clearing is an outcome");
            self.settlement.push(outcome);
            return;
        }
        if message.subject.starts_with("txn.result.") {
            let outcome = dcpipe_schemas::decode::<PaymentOutcome>(&message.payload)
                .expect("a result is an outcome");
            self.book.record(&outcome);
            self.outcomes.push(outcome);
            self.outcome_ids
                .push((message.subject.clone(), message.msg_id.clone()));
        }
        self.push(message.subject, message.payload);
    }

    /// Queues raw bytes on a subject, as any publisher could.
    pub(crate) fn push(&mut self, subject: String, payload: Bytes) {
        let offset = self.next_offset.entry(subject.clone()).or_insert(0);
        *offset += 1;
        let position = Position {
            partition: 0,
            offset: *offset,
        };
        self.queue.push(Queued {
            subject,
            payload,
            position,
            deliveries: 0,
        });
    }

    /// A payer terminal publishes its envelope to its own institution.
    pub(crate) fn submit(&mut self, envelope: &TransactionEnvelope) -> Submission {
        let frame = dcpipe_schemas::encode(envelope).expect("envelope encodes");
        let submission = Submission::of(envelope, &frame);
        self.push(
            subjects::txn_submit(&envelope.payer.institution_id),
            Bytes::from(frame),
        );
        submission
    }

    /// Queues a message taken earlier again, at its own position: a redelivery.
    pub(crate) fn queue_again(&mut self, queued: Queued) {
        self.queue.push(queued);
    }

    /// Messages waiting.
    pub(crate) fn pending(&self) -> &[Queued] {
        &self.queue
    }

    /// Removes and returns the first message waiting on `subject`.
    pub(crate) fn take(&mut self, subject: &str) -> Option<Queued> {
        let index = self.queue.iter().position(|q| q.subject == subject)?;
        Some(self.queue.remove(index))
    }

    /// Delivers the waiting messages at `indices` (those on the subject of the first one) to
    /// their stage in one batch, in the given order. With `keep`, they stay queued and come
    /// again (a redelivery: same position, higher delivery count), as after a lost ack.
    pub(crate) async fn deliver(&mut self, net: &TestNet, indices: &[usize], keep: bool) {
        let Some(first) = indices.first().and_then(|i| self.queue.get(*i)) else {
            return;
        };
        let subject = first.subject.clone();
        let mut chosen: Vec<usize> = Vec::new();
        for &index in indices {
            if self.queue.get(index).is_some_and(|q| q.subject == subject)
                && !chosen.contains(&index)
            {
                chosen.push(index);
            }
        }
        for &index in &chosen {
            self.queue[index].deliveries += 1;
        }
        let batch: Vec<Queued> = chosen.iter().map(|&i| self.queue[i].clone()).collect();
        if !keep {
            let mut removed = chosen.clone();
            removed.sort_unstable();
            for index in removed.into_iter().rev() {
                self.queue.remove(index);
            }
        }
        self.handle(net, &subject, &batch).await;
    }

    /// Delivers every waiting message on `subject`, in one batch.
    pub(crate) async fn deliver_subject(&mut self, net: &TestNet, subject: &str) {
        let indices: Vec<usize> = (0..self.queue.len())
            .filter(|&i| self.queue[i].subject == subject)
            .collect();
        self.deliver(net, &indices, false).await;
    }

    /// Delivers everything, oldest first, one message at a time, until nothing is waiting.
    pub(crate) async fn drain(&mut self, net: &TestNet) {
        let mut deliveries = 0;
        while !self.queue.is_empty() {
            deliveries += 1;
            assert!(
                deliveries <= DRAIN_DELIVERIES_MAX,
                "the stages keep answering each other: {} messages waiting",
                self.queue.len()
            );
            self.deliver(net, &[0], false).await;
        }
    }

    /// Runs every institution's expiry sweep and publishes what it decides.
    pub(crate) async fn sweep(&mut self, net: &TestNet) {
        for message in net.sweep().await {
            self.publish(message);
        }
    }

    /// Every outcome published for a payment.
    pub(crate) fn outcomes_of(&self, payment_id: &PaymentId) -> Vec<&PaymentOutcome> {
        self.outcomes
            .iter()
            .filter(|o| &o.payment_id == payment_id)
            .collect()
    }

    async fn handle(&mut self, net: &TestNet, subject: &str, batch: &[Queued]) {
        let stage = Arc::clone(net.stage(subject));
        let inputs: Vec<Input<'_>> = batch
            .iter()
            .map(|q| Input {
                subject: &q.subject,
                payload: &q.payload,
                delivery_count: q.deliveries,
                position: q.position,
            })
            .collect();
        let verdicts = stage
            .handle(&inputs)
            .await
            .unwrap_or_else(|e| panic!("stage {} failed: {e}", stage.name()));
        assert_eq!(verdicts.len(), batch.len(), "one verdict per input");
        for verdict in verdicts {
            match verdict {
                Verdict::Done(outputs) => outputs.into_iter().for_each(|o| self.publish(o)),
                Verdict::Retry { why } => {
                    panic!("stage {} handed an input back: {why}", stage.name())
                }
                Verdict::DeadLetter {
                    reason,
                    detail,
                    outputs,
                } => {
                    self.dead_letters.push(DeadLettered {
                        stage: stage.name().to_owned(),
                        subject: subject.to_owned(),
                        reason,
                        detail,
                    });
                    outputs.into_iter().for_each(|o| self.publish(o));
                }
            }
        }
    }
}
