//! The offline-wallet flow (flow 2) in the audit, in one place: what each of its records says
//! once verified ([`fact_of`], called by [`super::check`] for every `wallet.*` subject), how the
//! records of one wallet follow each other ([`WalletBook`], fed in record order by
//! [`super::book`]), and its purses against the ledgers ([`reconcile_purse`], with `--ledger`).
//!
//! - An offline payment (`wallet.offline.<oi>`) is the submission of a payment from the payer's
//!   purse account, verified with the wallet module's own check at the time it was paid.
//! - A key set (`wallet.keyset.<oi>`) is verified as the platform verifies it, against the record
//!   it claims; each of its own payments is a submission when it verifies.
//! - A sync result (`wallet.result.<oi>`) and a remote command (`wallet.command.<oi>`) are
//!   verified as their wallet verifies them: signed by an institution signer of the wallet's own
//!   institution whose chain is valid at the message's own time and not revoked as of then.
//! - Following each wallet: each key set answered by exactly one sync result; an accepted key set
//!   never lowers the key version, is no replay of an earlier synchronization and continues the
//!   hash chain from the head accepted before; an accepted answer says what its key set makes
//!   of the record; each command id carries one command, each sequence number one command id.
//!   Own payments the platform did not clear at the sync (a rejected key set, an answer sent
//!   again, payments refused because the wallet was locked) need no outcome.

use std::collections::HashMap;

use dcpipe_connectors::bus::Position;
use dcpipe_schemas::{
    CommandId, Digest32, OfflinePayment, PartyRef, PaymentId, RemoteControlCommand, SyncStatus,
    WalletKeySet, WalletSyncResult,
};

use super::check::{AuditRecord, CheckContext, Fact, Terms, code_of, refused, undecodable};
use super::code::AuditCode;
use super::report::{AuditReport, Discrepancy, Location};
use crate::pki::sha256;
use crate::protocol::{
    key_set_digest, offline_payment_digest, offline_payment_id, submission_digest,
};
use crate::reason::{Reason, Rejected};

/// What a key set says for the reconciliation of its wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySetSeen {
    /// The wallet.
    pub wallet: PartyRef,
    /// Its key-set digest (what its answer names).
    pub digest: Digest32,
    /// The key version it is signed under.
    pub key_version: i32,
    /// The last synchronization it claims.
    pub last_sync_at_ms: i64,
    /// Its first own payment's counter and the head it continues.
    pub chain_from: Option<(i64, Digest32)>,
    /// Its last own payment's counter and digest.
    pub chain_to: Option<(i64, Digest32)>,
    /// Its own payments, by id.
    pub own: Vec<PaymentId>,
    /// Whether it verifies (else why not).
    pub verdict: Result<(), String>,
}

/// What a sync result says, authentic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSeen {
    /// The wallet.
    pub wallet: PartyRef,
    /// The key set it answers.
    pub key_set_digest: Option<Digest32>,
    /// Accepted (else rejected).
    pub accepted: bool,
    /// The reason of a rejection.
    pub reason_code: Option<String>,
    /// The key version in force after it.
    pub key_version: i32,
    /// The platform time of the answer: the wallet's next key set claims it as its last sync.
    pub platform_time_at_ms: i64,
    /// The counter and head the platform holds after it.
    pub counter: i64,
    /// The head (none before the first payment).
    pub chain_head: Option<Digest32>,
    /// Payments it refused, by id.
    pub refused: Vec<(PaymentId, String)>,
}

/// What a remote command says, authentic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSeen {
    /// The wallet.
    pub wallet: PartyRef,
    /// Its id.
    pub command_id: CommandId,
    /// Its number among the wallet's commands.
    pub sequence: i64,
    /// SHA-256 of what the institution signed.
    pub content: [u8; 32],
    /// `LOCK`, `UNLOCK`, … for reports.
    pub kind: &'static str,
}

/// A record of the offline-wallet flow, verified.
#[derive(Debug, Clone)]
pub enum WalletFact {
    /// A key set: what it says of its wallet, and the submissions of its own payments (none
    /// when it does not verify).
    KeySet {
        /// What it says.
        key_set: KeySetSeen,
        /// Its own payments' submissions ([`Fact::Envelope`]).
        submissions: Vec<Fact>,
    },
    /// A sync result, authentic.
    Result(ResultSeen),
    /// A remote command, authentic.
    Command(CommandSeen),
}

/// The fact of a record on a `wallet.*` subject.
pub fn fact_of(context: &CheckContext, record: &AuditRecord) -> Fact {
    let subject = record.subject.as_str();
    let payload = &record.payload[..];
    let institution = subject.rsplit('.').next().unwrap_or(subject);
    let kind = subject.split('.').nth(1).unwrap_or("");
    match kind {
        "offline" => match dcpipe_schemas::decode::<OfflinePayment>(payload) {
            Ok(payment) => offline_payment_fact(context, &payment, payload),
            Err(e) => undecodable(&e, payload),
        },
        "keyset" => match dcpipe_schemas::decode::<WalletKeySet>(payload) {
            Ok(set) => key_set_fact(context, &set, institution),
            Err(e) => undecodable(&e, payload),
        },
        "result" => match dcpipe_schemas::decode::<WalletSyncResult>(payload) {
            Ok(result) => match sync_result_check(context, &result) {
                Ok(()) => Fact::Wallet(WalletFact::Result(result_seen(&result))),
                Err(r) => refused(code_of(&r), None, r.to_string(), payload),
            },
            Err(e) => undecodable(&e, payload),
        },
        "command" => match dcpipe_schemas::decode::<RemoteControlCommand>(payload) {
            Ok(command) => match command_check(context, &command) {
                Ok(()) => Fact::Wallet(WalletFact::Command(CommandSeen {
                    wallet: party(&command.institution_id, &command.wallet_id),
                    command_id: command.command_id,
                    sequence: command.sequence,
                    content: sha256(&crate::protocol::remote_control_command_bytes(&command)),
                    kind: crate::wallet::remote::command_symbol(command.command),
                })),
                Err(r) => refused(code_of(&r), None, r.to_string(), payload),
            },
            Err(e) => undecodable(&e, payload),
        },
        _ => match dcpipe_schemas::decode_any(payload) {
            Ok(_) => Fact::Unaudited,
            Err(e) => undecodable(&e, payload),
        },
    }
}

fn party(institution_id: &str, wallet_id: &str) -> PartyRef {
    PartyRef {
        institution_id: institution_id.to_owned(),
        wallet_id: wallet_id.to_owned(),
    }
}

fn revoked(e: crate::pki::CertError) -> Rejected {
    Rejected::new(Reason::Certificate(e.kind()), e.to_string())
}

/// A sync result as its wallet checks it, and its signer not revoked as of its time.
fn sync_result_check(context: &CheckContext, result: &WalletSyncResult) -> Result<(), Rejected> {
    let wallet = party(&result.institution_id, &result.wallet_id);
    crate::wallet::verify_sync_result(result, &wallet, context.verifier.chains())?;
    let signer = context
        .verifier
        .chains()
        .verify(
            &result.institution_certificate,
            result.platform_time_at_ms,
            crate::pki::Role::InstitutionSigner,
        )
        .map_err(revoked)?;
    context
        .verifier
        .check_revocation(&signer, result.platform_time_at_ms)
        .map_err(revoked)
}

/// A remote command as its wallet checks it, and its signer not revoked as of its time.
fn command_check(context: &CheckContext, command: &RemoteControlCommand) -> Result<(), Rejected> {
    let wallet = party(&command.institution_id, &command.wallet_id);
    crate::wallet::verify_command(command, &wallet, context.verifier.chains())?;
    let signer = context
        .verifier
        .chains()
        .verify(
            &command.institution_certificate,
            command.issued_at_ms,
            crate::pki::Role::InstitutionSigner,
        )
        .map_err(revoked)?;
    context
        .verifier
        .check_revocation(&signer, command.issued_at_ms)
        .map_err(revoked)
}

fn result_seen(result: &WalletSyncResult) -> ResultSeen {
    ResultSeen {
        wallet: party(&result.institution_id, &result.wallet_id),
        key_set_digest: result.key_set_digest,
        accepted: result.status == SyncStatus::Accepted,
        reason_code: result.reason_code.clone(),
        key_version: result.key_version,
        platform_time_at_ms: result.platform_time_at_ms,
        counter: result.counter,
        chain_head: result.chain_head,
        refused: result
            .refused
            .iter()
            .map(|r| (r.payment_id, r.reason_code.clone()))
            .collect(),
    }
}

/// An offline payment uploaded by its payee: the submission of a payment from the payer's
/// purse account, verified with the wallet module's own check at the time it was paid, and
/// named (like its clearing message and outcome) by its offline-payment digest.
pub fn offline_payment_fact(
    context: &CheckContext,
    payment: &OfflinePayment,
    frame: &[u8],
) -> Fact {
    let digest = offline_payment_digest(payment);
    let verdict = crate::wallet::verify_offline_payment(payment, context.verifier.chains())
        .and_then(|verified| {
            context
                .verifier
                .check_revocation(&verified.payer, payment.paid_at_ms)
                .map_err(revoked)
        });
    Fact::Envelope {
        payment_id: offline_payment_id(&digest),
        terms: Terms {
            payer: crate::wallet::stages::record::purse_party(&payment.payer),
            payee: payment.payee.clone(),
            amount_fen: payment.amount_fen,
            currency: payment.currency.clone(),
        },
        envelope_digest: digest,
        submission_digest: submission_digest(frame),
        factor: digest,
        verdict,
    }
}

/// A wallet's key set: each of its own payments the submission of a purse payment, as
/// [`offline_payment_fact`] makes it. The key set is verified with the platform's own check at
/// its satellite moment; the platform's record of the wallet is not on the bus, so it is checked
/// against the record it claims (its key, last sync, and the chain its first payment continues):
/// what is verified is everything signed — certificate, signature, each payment, the chain
/// within the set, the summary. A key set refused clears nothing and carries no submission (a
/// payment cleared from it anyway is an outcome without submission). What it claims is then
/// followed per wallet by [`WalletBook`].
pub fn key_set_fact(context: &CheckContext, set: &WalletKeySet, institution: &str) -> Fact {
    use crate::wallet::sync::{
        KeySetVerdict, PayerStanding, WalletRecord, key_fingerprint, key_set_input, verify_key_set,
    };
    let own: Vec<Option<OfflinePayment>> = set
        .payments
        .iter()
        .map(|frame| dcpipe_schemas::decode(frame.as_bytes()).ok())
        .collect();
    let first = own.first().and_then(Option::as_ref);
    let last = own.last().and_then(Option::as_ref);
    let claimed = WalletRecord {
        party: party(&set.institution_id, &set.wallet_id),
        key_version: set.key_version,
        key_fingerprint: key_fingerprint(&set.public_key),
        last_sync_at_ms: set.last_sync_at_ms,
        counter: first.map_or(0, |p| p.counter.saturating_sub(1)),
        chain_head: first.map_or(crate::protocol::CHAIN_START, |p| p.previous_hash),
        purse_fen: 0,
        limits: crate::wallet::OFFLINE_TIER_2,
        locked_at_ms: None,
        blacklisted_at_ms: None,
        last_key_set: None,
        commands_applied_through: 0,
        blacklist_version: 0,
    };
    let verdict = verify_key_set(
        set,
        Some(&claimed),
        institution,
        context.verifier.chains(),
        &crate::wallet::SyncPolicy::default(),
        set.satellite_at_ms,
        &|_| PayerStanding::default(),
    );
    let verdict = match verdict {
        KeySetVerdict::Verified(verified) => context
            .verifier
            .check_revocation(&verified.wallet, set.satellite_at_ms)
            .map_err(|e| e.to_string()),
        KeySetVerdict::Rejected(rejection) => Err(rejection.rejected.to_string()),
        KeySetVerdict::Duplicate => Ok(()),
    };
    let submissions = if verdict.is_ok() {
        set.payments
            .iter()
            .zip(&own)
            .filter_map(|(frame, payment)| {
                Some(offline_payment_fact(
                    context,
                    payment.as_ref()?,
                    frame.as_bytes(),
                ))
            })
            .collect()
    } else {
        Vec::new()
    };
    let key_set = KeySetSeen {
        wallet: claimed.party.clone(),
        digest: key_set_digest(&key_set_input(set)),
        key_version: set.key_version,
        last_sync_at_ms: set.last_sync_at_ms,
        chain_from: first.map(|p| (p.counter, p.previous_hash)),
        chain_to: last.map(|p| (p.counter, offline_payment_digest(p))),
        own: own
            .iter()
            .flatten()
            .map(|p| offline_payment_id(&offline_payment_digest(p)))
            .collect(),
        verdict,
    };
    Fact::Wallet(WalletFact::KeySet {
        key_set,
        submissions,
    })
}

/// The head of a wallet's accepted synchronizations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    digest: Option<Digest32>,
    key_version: i32,
    synced_at_ms: i64,
    counter: i64,
    chain_head: Option<Digest32>,
}

#[derive(Debug, Clone)]
struct PendingKeySet {
    key_set: KeySetSeen,
    location: Location,
    at_ms: i64,
}

#[derive(Debug, Clone, Default)]
struct WalletLife {
    head: Option<Head>,
    pending: Vec<PendingKeySet>,
    /// The last answer matched to its key set (digest, platform time, accepted): a copy of it
    /// (a redelivery the bus did not drop) is no second answer.
    last_answer: Option<(Option<Digest32>, i64, bool)>,
}

/// Own payments of a key set that need no outcome: the platform did not clear them at this
/// synchronization (with why), found at the key set's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotCleared {
    /// The key set's record.
    pub key_set: Location,
    /// Its own payments not cleared, with why.
    pub payments: Vec<(PaymentId, String)>,
}

/// Each wallet's synchronizations and commands followed in record order: state per wallet and
/// per command id, never per message.
#[derive(Debug, Default)]
pub struct WalletBook {
    wallets: HashMap<PartyRef, WalletLife>,
    commands: HashMap<CommandId, (PartyRef, i64, [u8; 32])>,
    sequences: HashMap<(PartyRef, i64), CommandId>,
    reported_commands: std::collections::HashSet<CommandId>,
}

impl WalletBook {
    /// An empty book.
    pub fn new() -> Self {
        WalletBook::default()
    }

    /// Takes one wallet fact at `location`, bus time `at_ms`; `range_start_edge_ms` is the end
    /// of the range's start edge (`None`: the range starts at the beginning). Returns the
    /// submissions to book and the own payments not cleared at a synchronization.
    pub fn apply(
        &mut self,
        fact: WalletFact,
        location: &Location,
        at_ms: i64,
        range_start_edge_ms: Option<i64>,
        report: &mut AuditReport,
    ) -> (Vec<Fact>, Option<NotCleared>) {
        match fact {
            WalletFact::KeySet {
                key_set,
                submissions,
            } => {
                self.wallets
                    .entry(key_set.wallet.clone())
                    .or_default()
                    .pending
                    .push(PendingKeySet {
                        key_set,
                        location: location.clone(),
                        at_ms,
                    });
                (submissions, None)
            }
            WalletFact::Result(result) => {
                let at_start_edge = range_start_edge_ms.is_some_and(|edge| at_ms < edge);
                (
                    Vec::new(),
                    self.result(result, location, at_start_edge, report),
                )
            }
            WalletFact::Command(command) => {
                self.command(command, location, report);
                (Vec::new(), None)
            }
        }
    }

    fn result(
        &mut self,
        result: ResultSeen,
        location: &Location,
        at_start_edge: bool,
        report: &mut AuditReport,
    ) -> Option<NotCleared> {
        let life = self.wallets.entry(result.wallet.clone()).or_default();
        let index = life
            .pending
            .iter()
            .position(|p| Some(p.key_set.digest) == result.key_set_digest);
        let answer = (
            result.key_set_digest,
            result.platform_time_at_ms,
            result.accepted,
        );
        let Some(index) = index else {
            if life.last_answer == Some(answer) {
                return None;
            }
            if !at_start_edge {
                report.push(Discrepancy::new(
                    AuditCode::WalletResultUnmatched,
                    location.clone(),
                    None,
                    "a key set of the wallet awaiting its answer",
                    format!(
                        "{} answer of {}/{} to key set {}",
                        if result.accepted {
                            "an ACCEPTED"
                        } else {
                            "a REJECTED"
                        },
                        result.wallet.institution_id,
                        result.wallet.wallet_id,
                        result
                            .key_set_digest
                            .map_or("-".to_owned(), |d| d.to_string()),
                    ),
                ));
            }
            if result.accepted {
                life.head = Some(head_of(&result));
            }
            return None;
        };
        let pending = life.pending.remove(index);
        life.last_answer = Some(answer);
        let set = &pending.key_set;
        let all = |why: &str| NotCleared {
            key_set: pending.location.clone(),
            payments: set.own.iter().map(|id| (*id, why.to_owned())).collect(),
        };
        if !result.accepted {
            if result.reason_code.is_none() {
                report.push(Discrepancy::new(
                    AuditCode::WalletResultMismatch,
                    location.clone(),
                    None,
                    "a rejection with its reason",
                    "REJECTED without a reason",
                ));
            }
            let why = result.reason_code.as_deref().unwrap_or("rejected");
            return Some(all(why));
        }
        // The stored answer to the key set accepted last, sent again: nothing new.
        if life
            .head
            .as_ref()
            .is_some_and(|h| h.digest == Some(set.digest))
        {
            return Some(all("answered before"));
        }
        let mut found: Option<(AuditCode, String, String)> = None;
        if let Err(why) = &set.verdict {
            found = Some((
                AuditCode::WalletResultMismatch,
                "a rejection: the key set does not verify".to_owned(),
                format!("ACCEPTED ({why})"),
            ));
        } else if let Some(head) = &life.head {
            if set.key_version < head.key_version {
                found = Some((
                    AuditCode::WalletKeyVersionLowered,
                    format!("key version {} or above", head.key_version),
                    format!("key set under key version {} ACCEPTED", set.key_version),
                ));
            } else if set.last_sync_at_ms < head.synced_at_ms {
                found = Some((
                    AuditCode::WalletKeysetReplayed,
                    format!("a key set after the sync at {} ms", head.synced_at_ms),
                    format!(
                        "a key set after the sync at {} ms ACCEPTED again",
                        set.last_sync_at_ms
                    ),
                ));
            } else if let Some((counter, previous)) = set.chain_from
                && (counter != head.counter + 1
                    || Some(previous) != head.chain_head.or(Some(crate::protocol::CHAIN_START)))
            {
                found = Some((
                    AuditCode::WalletChainBroken,
                    format!(
                        "counter {} after head {}",
                        head.counter + 1,
                        head.chain_head.map_or("-".to_owned(), |d| d.to_string())
                    ),
                    format!("counter {counter} after {}", previous),
                ));
            }
        }
        let (after_counter, after_head) = match (set.chain_to, &life.head) {
            (Some((counter, digest)), _) => (Some(counter), Some(digest)),
            (None, Some(head)) => (Some(head.counter), head.chain_head),
            (None, None) => (None, None),
        };
        if found.is_none()
            && (result.key_version != set.key_version
                || after_counter.is_some_and(|c| c != result.counter)
                || (after_counter.is_some() && after_head != result.chain_head))
        {
            found = Some((
                AuditCode::WalletResultMismatch,
                format!(
                    "key version {}, counter {}, head {}",
                    set.key_version,
                    after_counter.unwrap_or(result.counter),
                    after_head.map_or("-".to_owned(), |d| d.to_string())
                ),
                format!(
                    "key version {}, counter {}, head {}",
                    result.key_version,
                    result.counter,
                    result.chain_head.map_or("-".to_owned(), |d| d.to_string())
                ),
            ));
        }
        if let Some((code, expected, what)) = found {
            report.push(Discrepancy::new(
                code,
                pending.location.clone(),
                None,
                expected,
                format!(
                    "{what} for {}/{}",
                    set.wallet.institution_id, set.wallet.wallet_id
                ),
            ));
            // Its payments cleared under the original key set, if ever: none is missing here.
            return Some(all("accepted against the record"));
        }
        life.head = Some(head_of(&result));
        let refused: Vec<(PaymentId, String)> = result
            .refused
            .iter()
            .filter(|(id, _)| set.own.contains(id))
            .cloned()
            .collect();
        (!refused.is_empty()).then(|| NotCleared {
            key_set: pending.location.clone(),
            payments: refused,
        })
    }

    fn command(&mut self, command: CommandSeen, location: &Location, report: &mut AuditReport) {
        let mut conflict = None;
        match self.commands.get(&command.command_id) {
            Some((wallet, sequence, content))
                if *wallet != command.wallet
                    || *sequence != command.sequence
                    || *content != command.content =>
            {
                conflict = Some((
                    format!(
                        "command {} as first carried: number {sequence}",
                        command.command_id
                    ),
                    format!("another content as number {}", command.sequence),
                ));
            }
            Some(_) => {}
            None => {
                self.commands.insert(
                    command.command_id,
                    (command.wallet.clone(), command.sequence, command.content),
                );
            }
        }
        let key = (command.wallet.clone(), command.sequence);
        match self.sequences.get(&key) {
            Some(id) if *id != command.command_id && conflict.is_none() => {
                conflict = Some((
                    format!("number {} given to command {id}", command.sequence),
                    format!(
                        "{} command {} under it too",
                        command.kind, command.command_id
                    ),
                ));
            }
            Some(_) => {}
            None => {
                self.sequences.insert(key, command.command_id);
            }
        }
        if let Some((expected, found)) = conflict
            && self.reported_commands.insert(command.command_id)
        {
            report.push(Discrepancy::new(
                AuditCode::WalletCommandConflict,
                location.clone(),
                None,
                expected,
                format!(
                    "{found} for {}/{}",
                    command.wallet.institution_id, command.wallet.wallet_id
                ),
            ));
        }
    }

    /// Whether a dead letter holds the key set at `subject`/`position` (a key set nobody here
    /// can answer): it awaits no answer then.
    pub fn dead_lettered(&mut self, subject: &str, position: Position) {
        let location = Location::new(subject, position);
        for life in self.wallets.values_mut() {
            life.pending.retain(|p| p.location != location);
        }
    }

    /// Ends the range at bus time `end_edge_ms` (the end edge's start): a key set still
    /// awaiting its answer before it is unanswered.
    pub fn finish(&mut self, end_edge_ms: i64, report: &mut AuditReport) {
        let mut unanswered: Vec<PendingKeySet> = self
            .wallets
            .values_mut()
            .flat_map(|life| life.pending.drain(..))
            .filter(|p| p.at_ms < end_edge_ms)
            .collect();
        unanswered.sort_by_key(|p| (p.at_ms, p.location.offset));
        for pending in unanswered {
            report.push(Discrepancy::new(
                AuditCode::WalletKeysetUnanswered,
                pending.location,
                None,
                "one sync result naming the key set",
                format!(
                    "none for {}/{} key set {}",
                    pending.key_set.wallet.institution_id,
                    pending.key_set.wallet.wallet_id,
                    pending.key_set.digest
                ),
            ));
        }
    }
}

fn head_of(result: &ResultSeen) -> Head {
    Head {
        digest: result.key_set_digest,
        key_version: result.key_version,
        synced_at_ms: result.platform_time_at_ms,
        counter: result.counter,
        chain_head: result.chain_head,
    }
}

/// The part of a completed offline payment (from a purse account) that its payer's loss
/// account paid, as the payer's ledger recorded its clearing; `None` for any other payment.
pub async fn loss_part(
    payment: &super::book::JudgedPayment,
    payer_ledger: &dyn dcpipe_connectors::ledger::Ledger,
) -> Result<Option<i64>, dcpipe_connectors::ledger::LedgerError> {
    let payer = &payment.terms.payer;
    if !payment.completed
        || !payer
            .wallet_id
            .ends_with(dcpipe_connectors::ledger::offline::PURSE_SUFFIX)
    {
        return Ok(None);
    }
    let id = crate::clearing::ledger_id_of(&payment.payment_id);
    Ok(payer_ledger
        .offline()
        .offline_clearing(&id)
        .await?
        .map(|clearing| clearing.from_loss_fen))
}

/// Adds `from_loss_fen` ([`loss_part`]) to the tally of the payment's payer.
pub fn tally_loss_part(
    tally: &mut super::ledger::WalletTally,
    payment: &super::book::JudgedPayment,
    from_loss_fen: i64,
) {
    let payer = &payment.terms.payer;
    let entry = tally
        .entry((payer.institution_id.clone(), payer.wallet_id.clone()))
        .or_default();
    entry.from_loss_fen = entry.from_loss_fen.saturating_add(from_loss_fen);
}

/// What the ledger holds of one offline wallet's purse, and what the record explains of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurseSeen {
    /// Moved into the purse (funding is the ledger's, not the record's).
    pub funded_fen: i64,
    /// The purse account's balance.
    pub account_fen: i64,
    /// Its holds and pending credits: money in flight.
    pub in_flight_fen: i64,
    /// The completed payments of the record from the purse account: their sum (≥ 0) and count.
    pub paid_fen: i64,
    /// How many.
    pub payments: u64,
    /// Of what they paid, the part the loss account paid (the ledger's clearings of those
    /// payments).
    pub from_loss_fen: i64,
}

/// Judges one purse: its account must be what was funded, plus what the loss account paid
/// into it, minus the completed payments of the record from it — when the range covers the
/// wallet whole (`covers_opening`) and nothing is in flight. `Ok(false)`: partially covered.
pub fn reconcile_purse(purse: &PurseSeen, covers_opening: bool) -> Result<bool, (String, String)> {
    if !covers_opening || purse.in_flight_fen != 0 {
        return Ok(false);
    }
    let expected = purse
        .funded_fen
        .saturating_add(purse.from_loss_fen)
        .saturating_sub(purse.paid_fen);
    if purse.account_fen == expected {
        return Ok(true);
    }
    Err((
        format!(
            "purse account {expected} fen: funded {} fen, {} from the loss account, {} completed offline payments of {} fen",
            purse.funded_fen, purse.from_loss_fen, purse.payments, purse.paid_fen
        ),
        format!("purse account {} fen", purse.account_fen),
    ))
}

/// The purses of one institution's ledger checked one by one, and then its loss account.
#[derive(Debug, Default)]
pub struct PurseCheck {
    /// The loss parts of the record's completed payments from the purses seen.
    from_loss_fen: i64,
    /// A purse with money in flight or not covered whole: the loss account is not checked.
    partial: bool,
}

impl PurseCheck {
    /// Checks the purse of `wallet` (an online wallet touched by offline money) when it is an
    /// offline wallet of `institution`: its purse account against its funding and what the
    /// record explains (`tally`, by purse account).
    pub async fn check(
        &mut self,
        institution: &str,
        ledger: &dyn dcpipe_connectors::ledger::Ledger,
        wallet: &dcpipe_connectors::ledger::WalletOpening,
        tally: &super::ledger::WalletTally,
        covers_opening: bool,
        report: &mut AuditReport,
    ) -> Result<(), dcpipe_connectors::ledger::LedgerError> {
        let Some(record) = ledger.offline().offline_wallet(&wallet.wallet_id).await? else {
            return Ok(());
        };
        let purse_id = dcpipe_connectors::ledger::offline::purse_wallet_id(&wallet.wallet_id);
        let Some(account) = ledger.wallet(&purse_id).await? else {
            return Ok(());
        };
        let explained = tally
            .get(&(institution.to_owned(), purse_id.clone()))
            .copied()
            .unwrap_or_default();
        self.from_loss_fen = self.from_loss_fen.saturating_add(explained.from_loss_fen);
        let purse = PurseSeen {
            funded_fen: record.funded_fen,
            account_fen: account.account.balance_fen,
            in_flight_fen: account.held_fen.saturating_add(account.pending_credit_fen),
            paid_fen: explained.net_fen.saturating_neg(),
            payments: explained.payments,
            from_loss_fen: explained.from_loss_fen,
        };
        match reconcile_purse(&purse, covers_opening) {
            Ok(true) => report.counts.purses_checked += 1,
            Ok(false) => {
                self.partial = true;
                report.counts.purses_partial += 1;
            }
            Err((expected, found)) => {
                report.counts.purses_checked += 1;
                report.push(Discrepancy::new(
                    AuditCode::WalletPurseMismatch,
                    Location {
                        subject: format!("ledger {institution} purse {purse_id}"),
                        partition: 0,
                        offset: 0,
                    },
                    None,
                    expected,
                    found,
                ));
            }
        }
        Ok(())
    }

    /// Checks the loss account of `institution` once its purses are checked: minus the loss
    /// parts of the completed payments of the record, when the range covers the ledger from
    /// its beginning (`covers_beginning`) and no purse was partially covered.
    pub async fn check_loss(
        &self,
        institution: &str,
        ledger: &dyn dcpipe_connectors::ledger::Ledger,
        covers_beginning: bool,
        report: &mut AuditReport,
    ) -> Result<(), dcpipe_connectors::ledger::LedgerError> {
        if !covers_beginning || self.partial {
            return Ok(());
        }
        let totals = ledger.offline().offline_totals().await?;
        let expected = self.from_loss_fen.saturating_neg();
        if totals.loss_account_fen != expected {
            report.push(Discrepancy::new(
                AuditCode::WalletLossMismatch,
                Location {
                    subject: format!("ledger {institution} loss account"),
                    partition: 0,
                    offset: 0,
                },
                None,
                format!(
                    "loss account {expected} fen: the loss parts of the record's completed offline payments"
                ),
                format!("loss account {} fen", totals.loss_account_fen),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::audit::check::check_record;
    use crate::audit::trust::{RevocationHistory, TimedVerifier};

    fn record(subject: &str, payload: Vec<u8>) -> AuditRecord {
        AuditRecord {
            subject: subject.to_owned(),
            position: Position {
                partition: 0,
                offset: 1,
            },
            timestamp_ms: 0,
            payload: Bytes::from(payload),
        }
    }

    #[test]
    fn an_offline_payment_is_the_submission_of_its_purse_payment_verified_as_the_wallet_does() {
        let (mut payer, payee, store, t0) =
            crate::wallet::stages::record::tests::funded_payer(10_000);
        let payer_institution = payer.party().institution_id.clone();
        let payer_id = payer.party().wallet_id.clone();
        let frame = payer
            .pay(
                &payee,
                8_000,
                crate::wallet::SatelliteFix { at_ms: t0 + 1_000 },
            )
            .expect("pays");
        let context = CheckContext::new(TimedVerifier::new(store, RevocationHistory::new()));
        let subject = crate::subjects::wallet_offline(&payer_institution);
        let payment: OfflinePayment = dcpipe_schemas::decode(frame.as_bytes()).expect("decodes");
        let digest = offline_payment_digest(&payment);

        let checked = check_record(&context, &record(&subject, frame.as_bytes().to_vec()));
        let Fact::Envelope {
            payment_id,
            terms,
            envelope_digest,
            factor,
            verdict,
            ..
        } = checked.fact
        else {
            panic!("not a submission: {:?}", checked.fact);
        };
        assert_eq!(verdict.map_err(|e| e.to_string()), Ok(()));
        assert_eq!(payment_id, offline_payment_id(&digest));
        assert_eq!((envelope_digest, factor), (digest, digest));
        assert_eq!(terms.payer.wallet_id, format!("{payer_id}-purse"));
        assert_eq!(terms.payee, payee);
        assert_eq!(terms.amount_fen, 8_000);

        // The amount changed after the payer signed: refused.
        let mut inflated = payment.clone();
        inflated.amount_fen += 1;
        let frame = dcpipe_schemas::encode(&inflated).expect("encodes");
        let checked = check_record(&context, &record(&subject, frame));
        assert!(
            matches!(
                checked.fact,
                Fact::Envelope {
                    verdict: Err(_),
                    ..
                }
            ),
            "{:?}",
            checked.fact
        );
    }

    #[test]
    fn a_key_set_is_the_submission_of_each_of_its_own_payments_when_it_verifies() {
        let (mut payer, payee, store, t0) =
            crate::wallet::stages::record::tests::funded_payer(10_000);
        let institution = payer.party().institution_id.clone();
        let payer_id = payer.party().wallet_id.clone();
        let fix = |at_ms| crate::wallet::SatelliteFix { at_ms };
        let frames = [
            payer.pay(&payee, 3_000, fix(t0 + 1_000)).expect("pays"),
            payer.pay(&payee, 2_000, fix(t0 + 2_000)).expect("pays"),
        ];
        let upload = payer.key_set(fix(t0 + 3_000)).expect("key set");
        let context = CheckContext::new(TimedVerifier::new(store, RevocationHistory::new()));
        let subject = crate::subjects::wallet_keyset(&institution);

        let checked = check_record(&context, &record(&subject, upload.frame.clone()));
        let Fact::Wallet(WalletFact::KeySet {
            key_set,
            submissions,
        }) = checked.fact
        else {
            panic!("not a key set: {:?}", checked.fact);
        };
        assert_eq!(key_set.digest, upload.digest);
        assert_eq!(key_set.verdict, Ok(()));
        assert_eq!(key_set.own.len(), 2);
        assert_eq!(key_set.chain_from.map(|c| c.0), Some(1));
        assert_eq!(key_set.chain_to.map(|c| c.0), Some(2));
        assert_eq!(submissions.len(), 2);
        for ((fact, frame), amount_fen) in submissions.iter().zip(&frames).zip([3_000, 2_000]) {
            let payment: OfflinePayment =
                dcpipe_schemas::decode(frame.as_bytes()).expect("decodes");
            let digest = offline_payment_digest(&payment);
            let Fact::Envelope {
                payment_id,
                terms,
                envelope_digest,
                verdict,
                ..
            } = fact
            else {
                panic!("not a submission: {fact:?}");
            };
            assert_eq!(verdict.clone().map_err(|e| e.to_string()), Ok(()));
            assert_eq!(*payment_id, offline_payment_id(&digest));
            assert!(key_set.own.contains(payment_id));
            assert_eq!(*envelope_digest, digest);
            assert_eq!(terms.payer.wallet_id, format!("{payer_id}-purse"));
            assert_eq!(terms.amount_fen, amount_fen);
        }

        // A key set whose signature does not verify clears nothing: no submission.
        let mut forged = upload.key_set.clone();
        forged.offline_payments.total_fen += 1;
        let frame = dcpipe_schemas::encode(&forged).expect("encodes");
        let checked = check_record(&context, &record(&subject, frame));
        assert!(
            matches!(&checked.fact, Fact::Wallet(WalletFact::KeySet { key_set, submissions })
                if submissions.is_empty() && key_set.verdict.is_err()),
            "{:?}",
            checked.fact
        );
    }

    #[test]
    fn sync_results_and_commands_are_verified_as_their_wallet_does_at_their_own_time() {
        let t0 = crate::clock::system_now_ms();
        let pki = crate::pki::PkiDirectory::generate(&crate::pki::DemoPkiOptions::new(
            2,
            2,
            crate::pki::AlgorithmChoice::P256,
            t0,
        ))
        .expect("PKI");
        let mut institutions = pki.institutions();
        let (oi_a, keys_a) = institutions.next().expect("an institution");
        let (_, keys_b) = institutions.next().expect("another");
        let wallet = party(oi_a, "w-audited");
        let result = |at_ms: i64, signer: &crate::pki::CertifiedKey| {
            let unsigned = WalletSyncResult {
                wallet_id: wallet.wallet_id.clone(),
                institution_id: wallet.institution_id.clone(),
                key_version: 1,
                status: SyncStatus::Accepted,
                reason_code: None,
                actions: Vec::new(),
                platform_time_at_ms: at_ms,
                institution_certificate: Vec::new(),
                institution_signature: Vec::new(),
                key_set_digest: Some(Digest32::from_bytes([1; 32])),
                counter: 0,
                chain_head: None,
                purse_fen: 5_000,
                offline_limits: None,
                blacklist: Vec::new(),
                trust_anchors: Vec::new(),
                refused: Vec::new(),
                pending_commands: 0,
            };
            let signed = crate::wallet::sign_sync_result(unsigned, signer).expect("signs");
            dcpipe_schemas::encode(&signed).expect("encodes")
        };
        let command = |command: &crate::wallet::Command| {
            let signed = crate::wallet::sign_command(
                CommandId::from_bytes([7; 16]),
                &wallet,
                1,
                command,
                t0 + 1_000,
                &keys_a.signer,
            )
            .expect("signs");
            dcpipe_schemas::encode(&signed).expect("encodes")
        };
        let update = crate::revocation::revocation_update(
            &keys_a.ca,
            &[keys_a.signer.certificate()],
            "keyCompromise",
            1,
            t0 + 500,
        )
        .expect("update");
        let mut history = RevocationHistory::new();
        history
            .apply(pki.trust_store(), &update)
            .expect("the update verifies");
        let context = CheckContext::new(TimedVerifier::new(Arc::clone(pki.trust_store()), history));
        let results = crate::subjects::wallet_result(oi_a);
        let commands = crate::subjects::wallet_command(oi_a);
        let code = |fact: Fact| match fact {
            Fact::Refused { code, .. } => Some(code),
            _ => None,
        };

        // Signed by the wallet's institution before the revocation: authentic.
        let checked = check_record(
            &context,
            &record(&results, result(t0 + 400, &keys_a.signer)),
        );
        assert!(
            matches!(&checked.fact, Fact::Wallet(WalletFact::Result(r))
                if r.accepted && r.wallet == wallet && r.platform_time_at_ms == t0 + 400),
            "{:?}",
            checked.fact
        );
        // By another institution's signer; or after its signer was revoked.
        let checked = check_record(
            &context,
            &record(&results, result(t0 + 400, &keys_b.signer)),
        );
        assert_eq!(code(checked.fact), Some(AuditCode::SignatureInvalid));
        let checked = check_record(
            &context,
            &record(&results, result(t0 + 1_000, &keys_a.signer)),
        );
        assert_eq!(code(checked.fact), Some(AuditCode::CertificateRevoked));

        // A command: at its own time, after the revocation, refused; changed after signing too.
        let lock = command(&crate::wallet::Command::Lock);
        let checked = check_record(&context, &record(&commands, lock.clone()));
        assert_eq!(code(checked.fact), Some(AuditCode::CertificateRevoked));
        let without_history = CheckContext::new(TimedVerifier::new(
            Arc::clone(pki.trust_store()),
            RevocationHistory::new(),
        ));
        let checked = check_record(&without_history, &record(&commands, lock.clone()));
        assert!(
            matches!(&checked.fact, Fact::Wallet(WalletFact::Command(c))
                if c.sequence == 1 && c.kind == "LOCK" && c.wallet == wallet),
            "{:?}",
            checked.fact
        );
        let mut unlock: RemoteControlCommand = dcpipe_schemas::decode(&lock).expect("decodes");
        unlock.command = dcpipe_schemas::ControlCommand::Unlock;
        let frame = dcpipe_schemas::encode(&unlock).expect("encodes");
        let checked = check_record(&without_history, &record(&commands, frame));
        assert_eq!(code(checked.fact), Some(AuditCode::SignatureInvalid));
    }

    fn wallet() -> PartyRef {
        party("oi01", "w1")
    }

    fn at(offset: u64) -> Location {
        Location {
            subject: "wallet.keyset.oi01".into(),
            partition: 0,
            offset,
        }
    }

    fn key_set(
        digest: u8,
        version: i32,
        last_sync: i64,
        chain: Option<(i64, u8, i64, u8)>,
    ) -> WalletFact {
        WalletFact::KeySet {
            key_set: KeySetSeen {
                wallet: wallet(),
                digest: Digest32::from_bytes([digest; 32]),
                key_version: version,
                last_sync_at_ms: last_sync,
                chain_from: chain.map(|(c, h, _, _)| (c, Digest32::from_bytes([h; 32]))),
                chain_to: chain.map(|(_, _, c, h)| (c, Digest32::from_bytes([h; 32]))),
                own: chain
                    .map(|_| vec![PaymentId::from_bytes([digest; 16])])
                    .unwrap_or_default(),
                verdict: Ok(()),
            },
            submissions: Vec::new(),
        }
    }

    fn answer(
        digest: u8,
        accepted: bool,
        version: i32,
        time: i64,
        counter: i64,
        head: u8,
    ) -> WalletFact {
        WalletFact::Result(ResultSeen {
            wallet: wallet(),
            key_set_digest: Some(Digest32::from_bytes([digest; 32])),
            accepted,
            reason_code: (!accepted).then(|| "wallet.keyset_replayed".to_owned()),
            key_version: version,
            platform_time_at_ms: time,
            counter,
            chain_head: (counter > 0).then_some(Digest32::from_bytes([head; 32])),
            refused: Vec::new(),
        })
    }

    fn codes(report: &AuditReport) -> Vec<AuditCode> {
        report.discrepancies.iter().map(|d| d.code).collect()
    }

    fn feed(
        book: &mut WalletBook,
        report: &mut AuditReport,
        fact: WalletFact,
        offset: u64,
    ) -> (Vec<Fact>, Option<NotCleared>) {
        book.apply(fact, &at(offset), offset as i64, None, report)
    }

    #[test]
    fn each_key_set_is_answered_once_and_accepted_ones_follow_the_head() {
        let mut book = WalletBook::new();
        let mut report = AuditReport::default();
        feed(
            &mut book,
            &mut report,
            key_set(1, 1, 0, Some((1, 0, 2, 12))),
            1,
        );
        feed(&mut book, &mut report, answer(1, true, 1, 100, 2, 12), 2);
        feed(
            &mut book,
            &mut report,
            key_set(2, 1, 100, Some((3, 12, 3, 13))),
            3,
        );
        feed(&mut book, &mut report, answer(2, true, 1, 200, 3, 13), 4);
        // A copy of that answer (a redelivery the bus kept): no second answer.
        feed(&mut book, &mut report, answer(2, true, 1, 200, 3, 13), 4);
        // The last key set delivered again: its stored answer again, nothing cleared anew.
        feed(
            &mut book,
            &mut report,
            key_set(2, 1, 100, Some((3, 12, 3, 13))),
            5,
        );
        let (_, again) = feed(&mut book, &mut report, answer(2, true, 1, 200, 3, 13), 6);
        assert_eq!(again.map(|n| n.payments.len()), Some(1));
        // The first key set replayed and rejected: consistent.
        feed(
            &mut book,
            &mut report,
            key_set(1, 1, 0, Some((1, 0, 2, 12))),
            7,
        );
        let (_, rejected) = feed(&mut book, &mut report, answer(1, false, 1, 300, 3, 13), 8);
        assert_eq!(rejected.map(|n| n.key_set), Some(at(7)));
        assert!(report.is_clean(), "{:#?}", report.discrepancies);

        // The same replay accepted, a lowered key version accepted, a broken chain accepted.
        feed(
            &mut book,
            &mut report,
            key_set(1, 1, 0, Some((1, 0, 2, 12))),
            9,
        );
        feed(&mut book, &mut report, answer(1, true, 1, 400, 2, 12), 10);
        feed(&mut book, &mut report, key_set(4, 2, 200, None), 11);
        feed(&mut book, &mut report, answer(4, true, 2, 500, 3, 13), 12);
        feed(&mut book, &mut report, key_set(5, 1, 500, None), 13);
        feed(&mut book, &mut report, answer(5, true, 1, 600, 3, 13), 14);
        feed(
            &mut book,
            &mut report,
            key_set(6, 2, 500, Some((5, 13, 5, 15))),
            15,
        );
        feed(&mut book, &mut report, answer(6, true, 2, 700, 5, 15), 16);
        // An answer naming no key set, and a key set nobody answered.
        feed(&mut book, &mut report, answer(7, true, 2, 800, 5, 15), 17);
        feed(&mut book, &mut report, key_set(8, 2, 700, None), 18);
        book.finish(1_000, &mut report);
        assert_eq!(
            codes(&report),
            [
                AuditCode::WalletKeysetReplayed,
                AuditCode::WalletKeyVersionLowered,
                AuditCode::WalletChainBroken,
                AuditCode::WalletResultUnmatched,
                AuditCode::WalletKeysetUnanswered,
            ],
            "{:#?}",
            report.discrepancies
        );
    }

    #[test]
    fn a_locked_wallets_refused_payments_need_no_outcome() {
        let mut book = WalletBook::new();
        let mut report = AuditReport::default();
        book.apply(
            key_set(1, 1, 0, Some((1, 0, 1, 11))),
            &at(1),
            1,
            None,
            &mut report,
        );
        let WalletFact::Result(mut result) = answer(1, true, 1, 100, 1, 11) else {
            unreachable!()
        };
        result.refused = vec![
            (
                PaymentId::from_bytes([1; 16]),
                "offline.payer_locked".into(),
            ),
            (
                PaymentId::from_bytes([9; 16]),
                "offline.signature_invalid".into(),
            ),
        ];
        let (_, not_cleared) = book.apply(WalletFact::Result(result), &at(2), 2, None, &mut report);
        assert_eq!(
            not_cleared,
            Some(NotCleared {
                key_set: at(1),
                payments: vec![(
                    PaymentId::from_bytes([1; 16]),
                    "offline.payer_locked".into()
                )],
            })
        );
        assert!(report.is_clean());
    }

    #[test]
    fn a_command_id_carries_one_command_and_a_number_one_command_id() {
        let mut book = WalletBook::new();
        let mut report = AuditReport::default();
        let command = |id: u8, sequence: i64, content: u8| {
            WalletFact::Command(CommandSeen {
                wallet: wallet(),
                command_id: CommandId::from_bytes([id; 16]),
                sequence,
                content: [content; 32],
                kind: "LOCK",
            })
        };
        // Sent again after every answer until applied: the same command, no conflict.
        for offset in 0..3 {
            book.apply(command(1, 1, 1), &at(offset), 0, None, &mut report);
        }
        book.apply(command(2, 2, 2), &at(3), 0, None, &mut report);
        assert!(report.is_clean());
        // Another content under an id, another id under a number.
        book.apply(command(1, 3, 3), &at(4), 0, None, &mut report);
        book.apply(command(4, 2, 4), &at(5), 0, None, &mut report);
        assert_eq!(
            codes(&report),
            [
                AuditCode::WalletCommandConflict,
                AuditCode::WalletCommandConflict
            ]
        );
    }

    #[test]
    fn a_purse_is_its_funding_plus_its_loss_part_minus_its_completed_payments() {
        let purse = PurseSeen {
            funded_fen: 50_000,
            account_fen: 41_000,
            in_flight_fen: 0,
            paid_fen: 10_000,
            payments: 2,
            from_loss_fen: 1_000,
        };
        assert_eq!(reconcile_purse(&purse, true), Ok(true));
        assert_eq!(reconcile_purse(&purse, false), Ok(false));
        let edited = PurseSeen {
            account_fen: 41_001,
            ..purse
        };
        assert!(reconcile_purse(&edited, true).is_err());
        let in_flight = PurseSeen {
            in_flight_fen: 5,
            ..edited
        };
        assert_eq!(reconcile_purse(&in_flight, true), Ok(false));
    }
}
