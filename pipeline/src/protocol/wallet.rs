//! The bytes the offline wallets' signatures cover (docs/PROTOCOL.md, "Offline wallets"), and
//! the digests and ids derived from them.
//!
//! An offline payment's identity is its *offline-payment digest*, SHA-256 of its signing input:
//! the same payment uploaded by its payer and by its payee has the same digest, and so the same
//! payment id; two different payments under one payer counter have two digests (fraud
//! evidence). The digest is also the payment's link in its payer's hash chain.

use dcpipe_schemas::{
    ControlCommand, Digest32, OfflineLimits, OfflinePayment, PartyRef, PaymentId,
    RemoteControlCommand, SyncStatus, WalletAction, WalletKeySet, WalletSyncResult,
};

use super::SigningInput;
use super::layout::{OFFLINE_PAYMENT, REMOTE_CONTROL_COMMAND, WALLET_KEY_SET, WALLET_SYNC_RESULT};
use super::signed::certificate_fingerprint;
use crate::pki::sha256;

/// Domain tag of the payer wallet's signature over an offline payment.
pub const TAG_OFFLINE_PAYMENT: &str = OFFLINE_PAYMENT.tag;
/// Domain tag of a wallet's signature over its key set.
pub const TAG_WALLET_KEY_SET: &str = WALLET_KEY_SET.tag;
/// Domain tag of an institution's signature over a wallet sync result.
pub const TAG_WALLET_SYNC_RESULT: &str = WALLET_SYNC_RESULT.tag;
/// Domain tag of an institution's signature over a remote control command.
pub const TAG_REMOTE_CONTROL_COMMAND: &str = REMOTE_CONTROL_COMMAND.tag;

/// The `previous_hash` of a wallet's first offline payment, and the chain head of a wallet that
/// never paid offline: 32 zero bytes.
pub const CHAIN_START: Digest32 = Digest32::from_bytes([0; 32]);

fn party(input: &mut SigningInput, party: &PartyRef) {
    input.string(&party.institution_id).string(&party.wallet_id);
}

fn offline_limits(input: &mut SigningInput, limits: Option<&OfflineLimits>) {
    input.present(limits.is_some());
    if let Some(limits) = limits {
        input
            .i64(limits.purse_limit_fen)
            .i64(limits.single_payment_limit_fen)
            .i64(limits.cumulative_limit_fen)
            .i64(limits.payments_per_sync_max)
            .i64(limits.offline_duration_ms_max);
    }
}

fn optional_digest(input: &mut SigningInput, digest: Option<&Digest32>) {
    input.present(digest.is_some());
    if let Some(digest) = digest {
        input.fixed(digest.as_bytes());
    }
}

/// What the payer's wallet signs on an offline payment.
pub fn offline_payment_bytes(payment: &OfflinePayment) -> Vec<u8> {
    let mut input = SigningInput::of(&OFFLINE_PAYMENT);
    party(&mut input, &payment.payer);
    party(&mut input, &payment.payee);
    input
        .i64(payment.amount_fen)
        .string(&payment.currency)
        .i64(payment.counter)
        .fixed(payment.previous_hash.as_bytes())
        .i64(payment.paid_at_ms)
        .fixed(&certificate_fingerprint(&payment.payer_certificate));
    input.into_bytes()
}

/// The offline-payment digest: SHA-256 of what the payer signed. It names the payment
/// whoever uploads it, and is the next payment's `previous_hash`.
pub fn offline_payment_digest(payment: &OfflinePayment) -> Digest32 {
    Digest32::from_bytes(sha256(&offline_payment_bytes(payment)))
}

/// The payment id of an offline payment, for the ledgers and the clearing path: the first 16
/// bytes of its offline-payment digest as an RFC 9562 version 8 UUID (the version nibble set to
/// 8, the variant bits to `10`).
pub fn offline_payment_id(digest: &Digest32) -> PaymentId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_bytes()[..16]);
    id[6] = (id[6] & 0x0f) | 0x80;
    id[8] = (id[8] & 0x3f) | 0x80;
    PaymentId::from_bytes(id)
}

/// What a wallet signs on its key set. `received` holds the offline-payment digest of each
/// frame of `set.received`, in order (see [`received_digests`]).
pub fn wallet_key_set_bytes(set: &WalletKeySet, received: &[Digest32]) -> Vec<u8> {
    let mut input = SigningInput::of(&WALLET_KEY_SET);
    input
        .string(&set.wallet_id)
        .string(&set.institution_id)
        .i32(set.key_version)
        .bytes(&set.public_key)
        .i64(set.last_sync_at_ms)
        .i64(set.satellite_at_ms)
        .i64(set.offline_duration_ms)
        .i64(set.offline_payments.count)
        .i64(set.offline_payments.total_fen)
        .fixed(set.offline_payments.chain_head.as_bytes())
        .count(received.len());
    for digest in received {
        input.fixed(digest.as_bytes());
    }
    input.i64(set.purse_fen).i64(set.commands_applied_through);
    optional_digest(&mut input, set.anchors_digest.as_ref());
    input.fixed(&certificate_fingerprint(&set.certificate));
    input.into_bytes()
}

/// The offline-payment digests of a key set's received frames, in order.
///
/// # Errors
/// The first frame that is not an `OfflinePayment`, with its index.
pub fn received_digests(
    set: &WalletKeySet,
) -> Result<Vec<Digest32>, (usize, dcpipe_schemas::CodecError)> {
    set.received
        .iter()
        .enumerate()
        .map(|(index, frame)| {
            dcpipe_schemas::decode::<OfflinePayment>(frame.as_bytes())
                .map(|payment| offline_payment_digest(&payment))
                .map_err(|e| (index, e))
        })
        .collect()
}

/// The key-set digest: SHA-256 of the key set's signing input. The sync result names the key
/// set it answers by it, and the platform recognizes a key set delivered again by it.
pub fn key_set_digest(signing_input: &[u8]) -> Digest32 {
    Digest32::from_bytes(sha256(signing_input))
}

fn sync_status_symbol(status: SyncStatus) -> &'static str {
    match status {
        SyncStatus::Accepted => "ACCEPTED",
        SyncStatus::Rejected => "REJECTED",
    }
}

fn action_symbol(action: WalletAction) -> &'static str {
    match action {
        WalletAction::ClockResync => "CLOCK_RESYNC",
        WalletAction::KeyRotation => "KEY_ROTATION",
        WalletAction::Lock => "LOCK",
        WalletAction::BlacklistUpdate => "BLACKLIST_UPDATE",
    }
}

fn command_symbol(command: ControlCommand) -> &'static str {
    match command {
        ControlCommand::Lock => "LOCK",
        ControlCommand::Unlock => "UNLOCK",
        ControlCommand::LimitChange => "LIMIT_CHANGE",
        ControlCommand::BlacklistUpdate => "BLACKLIST_UPDATE",
    }
}

/// What the wallet's institution signs on a sync result.
pub fn wallet_sync_result_bytes(result: &WalletSyncResult) -> Vec<u8> {
    let mut input = SigningInput::of(&WALLET_SYNC_RESULT);
    input
        .string(&result.wallet_id)
        .string(&result.institution_id)
        .i32(result.key_version)
        .string(sync_status_symbol(result.status))
        .optional_string(result.reason_code.as_deref())
        .count(result.actions.len());
    for action in &result.actions {
        input.string(action_symbol(*action));
    }
    input.i64(result.platform_time_at_ms);
    optional_digest(&mut input, result.key_set_digest.as_ref());
    input.i64(result.counter);
    optional_digest(&mut input, result.chain_head.as_ref());
    input.i64(result.purse_fen);
    offline_limits(&mut input, result.offline_limits.as_ref());
    input.count(result.blacklist.len());
    for wallet_id in &result.blacklist {
        input.string(wallet_id);
    }
    input.count(result.trust_anchors.len());
    for anchor in &result.trust_anchors {
        input.fixed(&certificate_fingerprint(&anchor.0));
    }
    input.count(result.refused.len());
    for refused in &result.refused {
        input
            .fixed(refused.payment_id.as_bytes())
            .string(&refused.reason_code);
    }
    input
        .i64(result.pending_commands)
        .fixed(&certificate_fingerprint(&result.institution_certificate));
    input.into_bytes()
}

/// What the wallet's institution signs on a remote control command.
pub fn remote_control_command_bytes(command: &RemoteControlCommand) -> Vec<u8> {
    let mut input = SigningInput::of(&REMOTE_CONTROL_COMMAND);
    input
        .fixed(command.command_id.as_bytes())
        .string(&command.wallet_id)
        .string(&command.institution_id)
        .i64(command.sequence)
        .string(command_symbol(command.command))
        .present(command.limits.is_some());
    if let Some(limits) = &command.limits {
        input
            .i64(limits.balance_limit_fen)
            .i64(limits.single_payment_limit_fen)
            .i64(limits.daily_limit_fen)
            .i64(limits.password_free_limit_fen);
    }
    offline_limits(&mut input, command.offline_limits.as_ref());
    input.count(command.blacklist.len());
    for wallet_id in &command.blacklist {
        input.string(wallet_id);
    }
    input
        .i64(command.issued_at_ms)
        .fixed(&certificate_fingerprint(&command.institution_certificate));
    input.into_bytes()
}

/// The digest of a set of trust anchors, as a key set's `anchors_digest` states it: SHA-256 of
/// the SHA-256 fingerprints of the anchors' DER, concatenated in ascending byte order (so the
/// order in which a wallet holds them does not matter).
pub fn anchors_digest<'a>(anchors: impl IntoIterator<Item = &'a [u8]>) -> Digest32 {
    let mut fingerprints: Vec<[u8; 32]> =
        anchors.into_iter().map(certificate_fingerprint).collect();
    fingerprints.sort_unstable();
    fingerprints.dedup();
    Digest32::from_bytes(sha256(&fingerprints.concat()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_payment_ids_are_version_8_uuids_of_the_digest() {
        let digest = Digest32::from_bytes([0xff; 32]);
        let id = offline_payment_id(&digest);
        assert_eq!(id.to_uuid().get_version_num(), 8);
        assert_eq!(id.as_bytes()[8] >> 6, 0b10, "RFC 9562 variant");
        assert_eq!(&id.as_bytes()[..6], &[0xff; 6]);
        assert_ne!(
            offline_payment_id(&Digest32::from_bytes([0xfe; 32])),
            id,
            "other digests, other ids"
        );
    }

    #[test]
    fn anchors_digest_ignores_order_and_repeats() {
        let a: &[u8] = b"first certificate";
        let b: &[u8] = b"second certificate";
        assert_eq!(anchors_digest([a, b]), anchors_digest([b, a, b]));
        assert_ne!(anchors_digest([a, b]), anchors_digest([a]));
    }
}
