//! Remote control: commands an institution signs for one of its wallets (LOCK, UNLOCK,
//! LIMIT_CHANGE, BLACKLIST_UPDATE), numbered per wallet so that the wallet applies each once
//! and in order, whenever it receives them (pending commands reach an offline wallet at its
//! next synchronization).

use dcpipe_schemas::{
    BLACKLIST_ENTRIES_MAX, CommandId, ControlCommand, OfflineLimits, PartyRef, RemoteControlCommand,
};

use crate::pki::{CertifiedKey, ChainVerifier, KeyError, Role};
use crate::protocol::remote_control_command_bytes;
use crate::reason::{Reason, Rejected};

/// What an institution tells one wallet, before it is numbered and signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Stop paying.
    Lock,
    /// Pay again.
    Unlock,
    /// Apply new offline limits.
    OfflineLimits(OfflineLimits),
    /// Replace the blacklist (at most [`BLACKLIST_ENTRIES_MAX`] wallet ids).
    Blacklist(Vec<String>),
}

impl Command {
    /// The Avro symbol of the command.
    pub fn kind(&self) -> ControlCommand {
        match self {
            Command::Lock => ControlCommand::Lock,
            Command::Unlock => ControlCommand::Unlock,
            Command::OfflineLimits(_) => ControlCommand::LimitChange,
            Command::Blacklist(_) => ControlCommand::BlacklistUpdate,
        }
    }
}

/// Builds and signs command number `sequence` for `wallet` with the institution signer's key.
///
/// # Panics
/// Never for a blacklist within [`BLACKLIST_ENTRIES_MAX`]; a longer one is cut to it (the
/// platform splits longer lists across sync results, not commands).
pub fn sign_command(
    command_id: CommandId,
    wallet: &PartyRef,
    sequence: i64,
    command: &Command,
    issued_at_ms: i64,
    signer: &CertifiedKey,
) -> Result<RemoteControlCommand, KeyError> {
    let mut message = RemoteControlCommand {
        command_id,
        wallet_id: wallet.wallet_id.clone(),
        institution_id: wallet.institution_id.clone(),
        command: command.kind(),
        limits: None,
        blacklist: match command {
            Command::Blacklist(ids) => ids.iter().take(BLACKLIST_ENTRIES_MAX).cloned().collect(),
            _ => Vec::new(),
        },
        issued_at_ms,
        institution_certificate: signer.certificate().der().to_vec(),
        institution_signature: Vec::new(),
        sequence,
        offline_limits: match command {
            Command::OfflineLimits(limits) => Some(*limits),
            _ => None,
        },
    };
    message.institution_signature = signer.key().sign(&remote_control_command_bytes(&message))?;
    Ok(message)
}

/// Checks a command as its wallet does: addressed to `wallet`, numbered (version 2), signed by
/// an institution signer of the wallet's own institution whose chain verifies at the command's
/// time, and the signature. The order (is it the next number?) is the wallet's to judge.
pub fn verify_command(
    command: &RemoteControlCommand,
    wallet: &PartyRef,
    verifier: &ChainVerifier,
) -> Result<(), Rejected> {
    if command.wallet_id != wallet.wallet_id || command.institution_id != wallet.institution_id {
        return Err(Rejected::new(
            Reason::RemoteWrongWallet,
            format!(
                "the command is for {}/{}",
                command.institution_id, command.wallet_id
            ),
        ));
    }
    if command.sequence < 1 {
        return Err(Rejected::new(
            Reason::RemoteUnsequenced,
            "a command without a sequence number cannot be applied once and in order",
        ));
    }
    let signer = verify_wallet_institution_signer(
        &command.institution_certificate,
        command.issued_at_ms,
        wallet,
        verifier,
    )?;
    signer
        .public_key()
        .verify(
            &remote_control_command_bytes(command),
            &command.institution_signature,
        )
        .map_err(|e| Rejected::new(Reason::RemoteSignature, e.to_string()))
}

/// Verifies the certificate of a message an institution sends one of its wallets (a command or
/// a sync result): an institution signer whose chain verifies at `at_ms` (`cert.*`; a
/// certificate of another role is `remote.wrong_issuer`), of the wallet's own institution
/// (`remote.wrong_issuer`).
pub(super) fn verify_wallet_institution_signer(
    der: &[u8],
    at_ms: i64,
    wallet: &PartyRef,
    verifier: &ChainVerifier,
) -> Result<crate::pki::VerifiedIdentity, Rejected> {
    let signer = verifier
        .verify(der, at_ms, Role::InstitutionSigner)
        .map_err(|e| {
            let reason = if e.kind() == crate::pki::CertErrorKind::WrongRole {
                Reason::RemoteWrongIssuer
            } else {
                Reason::Certificate(e.kind())
            };
            Rejected::new(reason, format!("institution certificate: {e}"))
        })?;
    if signer.institution_id() != wallet.institution_id {
        return Err(Rejected::new(
            Reason::RemoteWrongIssuer,
            format!(
                "signed by {}, the wallet's institution is {}",
                signer.institution_id(),
                wallet.institution_id
            ),
        ));
    }
    Ok(signer)
}
