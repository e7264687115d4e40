//! Issuing remote control commands at an institution: numbered after the wallet's last one,
//! signed by the institution signer, queued in its ledger (applied once by the wallet, by
//! sequence; delivered after every sync result until the wallet reports it applied them) and
//! in force on the platform at once: a LOCK locks the wallet's offline record and its online
//! wallet (flow 1 refuses its payments, `payer.wallet_locked`), an UNLOCK lifts both. An
//! order to rotate the wallet's key ([`order_key_rotation`]) is no command: it is recorded with
//! the wallet and told in every accepted sync result (`KEY_ROTATION`) until the wallet's key
//! set under a new key is accepted.

use dcpipe_connectors::bus::Outgoing;
use dcpipe_connectors::ledger::OfflineLedger;
use dcpipe_connectors::ledger::offline::{OfflineUpdate, QueueResult, QueuedCommand};
use dcpipe_schemas::{CommandId, ControlCommand, PartyRef, RemoteControlCommand};

use super::control::{Command, sign_command};
use super::stages::STALE_RETRIES_MAX;
use crate::clearing::Institution;
use crate::runtime::{StageError, outgoing};
use crate::subjects;

/// Issues `command` with id `command_id` to `wallet_id` of `inst` at `now_ms`. Idempotent by
/// command id: issuing it again returns the command queued first and applies its effect
/// again (which changes nothing). `None` when the institution keeps no offline record of the
/// wallet.
pub async fn issue_command(
    inst: &Institution,
    wallet_id: &str,
    command_id: CommandId,
    command: &Command,
    now_ms: i64,
) -> Result<Option<RemoteControlCommand>, StageError> {
    let offline = inst.ledger.offline();
    let party = PartyRef {
        institution_id: inst.id.clone(),
        wallet_id: wallet_id.to_owned(),
    };
    let mut queued = None;
    for _ in 0..STALE_RETRIES_MAX {
        let sequence = offline.last_command_sequence(wallet_id).await? + 1;
        let signed = sign_command(command_id, &party, sequence, command, now_ms, &inst.signer)
            .map_err(|e| StageError::fatal(format!("the institution signer cannot sign: {e}")))?;
        let entry = QueuedCommand {
            command_id: *command_id.as_bytes(),
            wallet_id: wallet_id.to_owned(),
            sequence,
            kind: command_symbol(signed.command).to_owned(),
            frame: dcpipe_schemas::encode(&signed)?,
            issued_at_ms: now_ms,
        };
        match offline.queue_command(&entry).await? {
            QueueResult::UnknownWallet => return Ok(None),
            QueueResult::SequenceTaken => continue,
            QueueResult::Queued => {
                queued = Some(signed);
                break;
            }
            QueueResult::Duplicate => {
                let stored = offline
                    .commands_after(
                        wallet_id,
                        0,
                        dcpipe_connectors::ledger::offline::COMMANDS_LIST_MAX,
                    )
                    .await?
                    .into_iter()
                    .find(|c| c.command_id == *command_id.as_bytes());
                let Some(stored) = stored else {
                    return Err(StageError::transient("a queued command vanished"));
                };
                queued = Some(dcpipe_schemas::decode(&stored.frame)?);
                break;
            }
        }
    }
    let Some(signed) = queued else {
        return Err(StageError::transient(
            "the wallet's commands kept changing while numbering",
        ));
    };
    apply_on_platform(inst, wallet_id, command, now_ms).await?;
    Ok(Some(signed))
}

/// The Avro symbol of a command's kind (`LOCK`, `UNLOCK`, `LIMIT_CHANGE`, `BLACKLIST_UPDATE`).
pub fn command_symbol(command: ControlCommand) -> &'static str {
    match command {
        ControlCommand::Lock => "LOCK",
        ControlCommand::Unlock => "UNLOCK",
        ControlCommand::LimitChange => "LIMIT_CHANGE",
        ControlCommand::BlacklistUpdate => "BLACKLIST_UPDATE",
    }
}

/// What a command changes on the platform at once: a lock binds from its issue.
async fn apply_on_platform(
    inst: &Institution,
    wallet_id: &str,
    command: &Command,
    now_ms: i64,
) -> Result<(), StageError> {
    let offline = inst.ledger.offline();
    for _ in 0..STALE_RETRIES_MAX {
        let Some(read) = offline.offline_wallet(wallet_id).await? else {
            return Ok(());
        };
        let mut record = read.clone();
        match command {
            Command::Lock => record.locked_at_ms = record.locked_at_ms.or(Some(now_ms)),
            // A blacklisted wallet stays locked.
            Command::Unlock if record.blacklisted_at_ms.is_none() => record.locked_at_ms = None,
            Command::Unlock | Command::OfflineLimits(_) | Command::Blacklist(_) => return Ok(()),
        }
        if record == read {
            return Ok(());
        }
        let update = OfflineUpdate {
            record,
            clearings: Vec::new(),
        };
        if super::stages::commit(offline, &[update]).await? {
            return Ok(());
        }
    }
    Err(super::stages::kept_changing(wallet_id))
}

/// Orders `wallet_id` to rotate its key, at `now_ms`, in its institution's `offline` ledger:
/// recorded on the wallet's record, the order makes every accepted sync result carry `KEY_ROTATION` until a key set
/// under a new key, certified by the institution's CA, is accepted. Ordering again changes
/// nothing (the first order's moment stays). Returns since when the order stands, or `None`
/// when the institution keeps no offline record of the wallet.
pub async fn order_key_rotation(
    offline: &dyn OfflineLedger,
    wallet_id: &str,
    now_ms: i64,
) -> Result<Option<i64>, StageError> {
    for _ in 0..STALE_RETRIES_MAX {
        let Some(read) = offline.offline_wallet(wallet_id).await? else {
            return Ok(None);
        };
        if let Some(at_ms) = read.rotation_ordered_at_ms {
            return Ok(Some(at_ms));
        }
        let mut record = read.clone();
        record.rotation_ordered_at_ms = Some(now_ms);
        let update = OfflineUpdate {
            record,
            clearings: Vec::new(),
        };
        if super::stages::commit(offline, &[update]).await? {
            return Ok(Some(now_ms));
        }
    }
    Err(super::stages::kept_changing(wallet_id))
}

/// The command published for a wallet that is online now (it comes again after its next sync
/// result until the wallet reports it applied).
pub fn command_message(
    inst: &Institution,
    command: &RemoteControlCommand,
) -> Result<Outgoing, StageError> {
    let subject = subjects::wallet_command(&inst.id);
    let msg_id = format!("{subject}/{}", command.command_id);
    outgoing(subject, command, msg_id, command.wallet_id.as_bytes())
}
