//! The blacklist across institutions: the institution that finds a wallet committing offline
//! fraud (one of its own wallets, as payer) publishes a **blacklist entry** to every other
//! institution, on `wallet.blacklist.<oi>` — a RemoteControlCommand BLACKLIST_UPDATE addressed to the wallet,
//! numbered 1, listing the wallet alone, signed by its institution — and every institution's
//! `wallet-blacklist` stage verifies it (the signer is an institution signer of the wallet's
//! own institution) and adds the wallet to its blacklist, which its wallets receive at their
//! next synchronization (`BLACKLIST_UPDATE`). An entry that does not verify is dead-lettered
//! with its code.
//!
//! **The record is the outbox.** The stage that finds the fraud writes the wallet's record as
//! blacklisted (and the wallet onto the blacklist) in the same transaction as the rest of its
//! decision, then publishes the entry; a worker that dies between the two would lose the entry.
//! So the finding institution's `wallet-blacklist` stage also publishes, every
//! [`ENTRY_OUTBOX_INTERVAL`], the entries of its own blacklisted wallets it has not published
//! since it started: all of them at its first tick after a start, then each new one. The entry's
//! message id depends on the wallet alone ([`entry_command_id`]), so a bus that drops repeats by
//! id carries it once, and a receiving stage adds a wallet once however often it arrives.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dcpipe_connectors::bus::Outgoing;
use dcpipe_schemas::{CommandId, ControlCommand, PartyRef, RemoteControlCommand};

use crate::clearing::Institution;
use crate::pki::sha256;
use crate::reason::{Reason, Rejected};
use crate::registry::{Build, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict, outgoing};
use crate::subjects;
use crate::wallet::control::{Command, sign_command, verify_command};

/// Name of this stage.
pub const STAGE: &str = "wallet-blacklist";

/// How often the finding institution publishes the blacklist entries of its own wallets it has
/// not published since it started.
pub const ENTRY_OUTBOX_INTERVAL: Duration = Duration::from_secs(2);

/// Domain tag of the command id of a blacklist entry (the SHA-256 of the tag and the wallet
/// id, first 16 bytes): one entry per wallet, whoever publishes it and however often.
pub const BLACKLIST_ENTRY_TAG: &[u8] = b"dcpipe/v1/blacklist-entry";

inventory::submit! {
    StageDescriptor {
        name: STAGE,
        summary: "every institution's blacklist: entries for wallets another institution found committing fraud",
        flow: Flow::WalletKeySet,
        consumes: subjects::wallet_blacklist,
        // The entries of its own blacklisted wallets, to the other institutions.
        publishes: entry_subjects,
        build: Build::Institution(|inst| Arc::new(BlacklistStage::new(inst))),
    }
}

/// The command id of the blacklist entry of `wallet_id`.
pub fn entry_command_id(wallet_id: &str) -> CommandId {
    let mut input = BLACKLIST_ENTRY_TAG.to_vec();
    input.push(0);
    input.extend_from_slice(wallet_id.as_bytes());
    let digest = sha256(&input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    CommandId::from_bytes(id)
}

/// The blacklist entry `inst` publishes for its wallet `wallet_id`, blacklisted at `at_ms`: one
/// message to each other institution it knows.
pub fn blacklist_entries(
    inst: &Institution,
    wallet_id: &str,
    at_ms: i64,
) -> Result<Vec<Outgoing>, StageError> {
    let wallet = PartyRef {
        institution_id: inst.id.clone(),
        wallet_id: wallet_id.to_owned(),
    };
    let command_id = entry_command_id(wallet_id);
    let entry = sign_command(
        command_id,
        &wallet,
        1,
        &Command::Blacklist(vec![wallet_id.to_owned()]),
        at_ms,
        &inst.signer,
    )
    .map_err(|e| StageError::fatal(format!("the institution signer cannot sign: {e}")))?;
    inst.known_institutions
        .iter()
        .filter(|oi| **oi != inst.id)
        .map(|oi| {
            outgoing(
                subjects::wallet_blacklist(oi),
                &entry,
                format!("{}/{command_id}", subjects::wallet_blacklist(oi)),
                wallet_id.as_bytes(),
            )
        })
        .collect()
}

/// What the stages that find fraud publish besides their own subjects: the blacklist subjects
/// of the other institutions.
pub fn entry_subjects(owner: &str, institutions: &[String]) -> Vec<String> {
    institutions
        .iter()
        .filter(|oi| *oi != owner)
        .map(|oi| subjects::wallet_blacklist(oi))
        .collect()
}

/// Checks a blacklist entry: a BLACKLIST_UPDATE listing exactly the wallet it is addressed
/// to, signed by that wallet's institution ([`verify_command`]). The wallet's id on success.
pub fn verify_entry(
    entry: &RemoteControlCommand,
    verifier: &crate::pki::ChainVerifier,
) -> Result<PartyRef, Rejected> {
    if entry.command != ControlCommand::BlacklistUpdate
        || entry.blacklist.len() != 1
        || entry.blacklist[0] != entry.wallet_id
    {
        return Err(Rejected::new(
            Reason::RemoteWrongWallet,
            "a blacklist entry is a BLACKLIST_UPDATE listing the wallet it is addressed to",
        ));
    }
    let wallet = PartyRef {
        institution_id: entry.institution_id.clone(),
        wallet_id: entry.wallet_id.clone(),
    };
    verify_command(entry, &wallet, verifier)?;
    Ok(wallet)
}

/// Every institution's follower of the blacklist entries, and the outbox of its own.
#[derive(Debug)]
pub struct BlacklistStage {
    inst: Arc<Institution>,
    /// Wallets of the blacklist looked at since the start: own ones whose entry was handed to
    /// the runner, and other institutions' ones.
    looked_at: Mutex<BTreeSet<String>>,
}

impl BlacklistStage {
    /// The stage of an institution.
    pub fn new(inst: Arc<Institution>) -> Self {
        BlacklistStage {
            inst,
            looked_at: Mutex::new(BTreeSet::new()),
        }
    }

    /// The entries of the institution's own blacklisted wallets not handed out since this
    /// stage started (all of them the first time), one message per other institution each.
    pub async fn unpublished_entries(&self) -> Result<Vec<Outgoing>, StageError> {
        let offline = self.inst.ledger.offline();
        let listed = offline.blacklist().await?;
        let fresh: Vec<String> = {
            let looked_at = self
                .looked_at
                .lock()
                .map_err(|_| StageError::fatal("the blacklist outbox's lock is poisoned"))?;
            listed
                .into_iter()
                .filter(|w| !looked_at.contains(w))
                .collect()
        };
        let mut outputs = Vec::new();
        for wallet_id in &fresh {
            if let Some(at_ms) = offline
                .offline_wallet(wallet_id)
                .await?
                .and_then(|record| record.blacklisted_at_ms)
            {
                outputs.extend(blacklist_entries(&self.inst, wallet_id, at_ms)?);
            }
        }
        self.looked_at
            .lock()
            .map_err(|_| StageError::fatal("the blacklist outbox's lock is poisoned"))?
            .extend(fresh);
        Ok(outputs)
    }
}

#[async_trait]
impl Stage for BlacklistStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        &self.inst.id
    }

    fn subject(&self) -> String {
        subjects::wallet_blacklist(&self.inst.id)
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        let mut verdicts = Vec::with_capacity(batch.len());
        for input in batch {
            let entry = match dcpipe_schemas::decode::<RemoteControlCommand>(input.payload) {
                Err(e) => {
                    verdicts.push(Verdict::undecodable(&e));
                    continue;
                }
                Ok(entry) => entry,
            };
            let wallet = match verify_entry(&entry, &self.inst.verifier) {
                Err(rejected) => {
                    verdicts.push(Verdict::dead_letter(rejected.reason, rejected.detail));
                    continue;
                }
                Ok(wallet) => wallet,
            };
            // The finding institution listed its wallet when it found the fraud; adding again
            // is harmless (entries are kept once).
            self.inst
                .ledger
                .offline()
                .blacklist_add(std::slice::from_ref(&wallet.wallet_id), entry.issued_at_ms)
                .await?;
            tracing::info!(wallet = %wallet.wallet_id, by = %wallet.institution_id, "wallet blacklisted by its institution");
            verdicts.push(Verdict::Done(Vec::new()));
        }
        Ok(verdicts)
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(ENTRY_OUTBOX_INTERVAL)
    }

    async fn tick(&self) -> Result<Vec<Outgoing>, StageError> {
        self.unpublished_entries().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_id_per_wallet() {
        assert_eq!(entry_command_id("w1"), entry_command_id("w1"));
        assert_ne!(entry_command_id("w1"), entry_command_id("w2"));
    }
}
