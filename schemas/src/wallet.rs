//! Flow 2: offline wallets publish key sets; the platform answers and can command wallets.

use serde::{Deserialize, Serialize};

use crate::{
    CommandId, Digest32, PaymentId, check,
    codec::{Message, sealed::Sealed},
    error::CodecError,
    limits::{
        BLACKLIST_ENTRIES_MAX, OFFLINE_PAYMENTS_PER_KEY_SET_MAX, PUBLIC_KEY_BYTES_MAX,
        REFUSED_PAYMENTS_MAX, TRUST_ANCHORS_MAX, WALLET_KEY_SET_FRAME_BYTES_MAX,
        WALLET_SYNC_RESULT_FRAME_BYTES_MAX,
    },
};

/// A Confluent-framed message carried inside another one as Avro `bytes` (the offline payment
/// records of a key set): kept as the exact bytes its signer produced.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Frame(#[serde(with = "apache_avro::serde::bytes")] pub Vec<u8>);

impl Frame {
    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Frame {
    fn from(bytes: Vec<u8>) -> Self {
        Frame(bytes)
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.0.len())
    }
}

/// A DER certificate carried in a list (the trust anchors of a sync result).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Der(#[serde(with = "apache_avro::serde::bytes")] pub Vec<u8>);

impl std::fmt::Debug for Der {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Der({} bytes)", self.0.len())
    }
}

/// A hard wallet's offline limits (Avro record `OfflineLimits`), all amounts in fen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OfflineLimits {
    /// Most the offline purse may hold.
    pub purse_limit_fen: i64,
    /// Largest single offline payment.
    pub single_payment_limit_fen: i64,
    /// Most paid offline between two synchronizations.
    pub cumulative_limit_fen: i64,
    /// Most offline payments between two synchronizations.
    pub payments_per_sync_max: i64,
    /// The tier's preset offline duration: past it the wallet makes its key set and stops
    /// paying offline until it synchronizes.
    pub offline_duration_ms_max: i64,
}

impl OfflineLimits {
    pub(crate) fn check(&self, field: &str) -> Result<(), CodecError> {
        check::amount("purse_limit_fen", self.purse_limit_fen)
            .and_then(|()| check::amount("single_payment_limit_fen", self.single_payment_limit_fen))
            .and_then(|()| check::amount("cumulative_limit_fen", self.cumulative_limit_fen))
            .and_then(|()| {
                check::range(
                    "payments_per_sync_max",
                    self.payments_per_sync_max,
                    0,
                    OFFLINE_PAYMENTS_PER_KEY_SET_MAX as i64,
                )
            })
            .and_then(|()| {
                check::non_negative("offline_duration_ms_max", self.offline_duration_ms_max)
            })
            .map_err(|e| e.within(field))
    }
}

fn check_frames(field: &str, frames: &[Frame], max: usize) -> Result<(), CodecError> {
    check::count(field, frames.len(), 0, max)?;
    for (index, frame) in frames.iter().enumerate() {
        if frame.0.is_empty() || frame.0.len() > crate::FRAME_BYTES_MAX {
            return Err(CodecError::invalid_field(
                field,
                format_args!(
                    "[{index}]: {} bytes, expected 1 to {}",
                    frame.0.len(),
                    crate::FRAME_BYTES_MAX
                ),
            ));
        }
    }
    Ok(())
}

/// What a wallet paid while offline since its last synchronization
/// (Avro record `OfflinePaymentSummary`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflinePaymentSummary {
    /// Number of offline payments.
    pub count: i64,
    /// Their total, in fen.
    pub total_fen: i64,
    /// Head of the hash chain over those payments (all zero when `count` is 0).
    pub chain_head: Digest32,
}

/// A wallet key information set, made by a hard wallet when it reconnects after an offline
/// period and published with its offline payment records (schema id 24, version 2; version 1,
/// schema id 11, has neither records nor a defined signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletKeySet {
    /// The wallet.
    pub wallet_id: String,
    /// The operating institution that holds the wallet.
    pub institution_id: String,
    /// Version of `public_key`; starts at 1 and only rises.
    pub key_version: i32,
    /// The wallet's current public key, DER SubjectPublicKeyInfo.
    #[serde(with = "apache_avro::serde::bytes")]
    pub public_key: Vec<u8>,
    /// The wallet's last synchronization with the platform (Unix epoch milliseconds).
    pub last_sync_at_ms: i64,
    /// The moment from the satellite time source when the set was made.
    pub satellite_at_ms: i64,
    /// `satellite_at_ms - last_sync_at_ms`, as the wallet computed it.
    pub offline_duration_ms: i64,
    /// Summary of the offline payments since the last synchronization.
    pub offline_payments: OfflinePaymentSummary,
    /// DER certificate of the wallet.
    #[serde(with = "apache_avro::serde::bytes")]
    pub certificate: Vec<u8>,
    /// The wallet key's signature over the key-set signing input (docs/PROTOCOL.md).
    #[serde(with = "apache_avro::serde::bytes")]
    pub signature: Vec<u8>,
    /// The wallet's own offline payments since its last synchronization, in counter order,
    /// each a framed `OfflinePayment` (version 2; empty from version 1).
    #[serde(default)]
    pub payments: Vec<Frame>,
    /// Offline payments the wallet received since its last synchronization, each a framed
    /// `OfflinePayment` (version 2; empty from version 1).
    #[serde(default)]
    pub received: Vec<Frame>,
    /// The purse balance the wallet holds after its payments (version 2; 0 from version 1).
    #[serde(default)]
    pub purse_fen: i64,
    /// Sequence of the last remote control command the wallet applied (version 2).
    #[serde(default)]
    pub commands_applied_through: i64,
    /// Digest of the trust anchors the wallet holds (version 2; `None` from version 1).
    #[serde(default)]
    pub anchors_digest: Option<Digest32>,
}

impl Sealed for WalletKeySet {}

impl Message for WalletKeySet {
    const NAME: &'static str = "WalletKeySet";
    const SCHEMA_ID: u32 = 24;
    const FRAME_BYTES_MAX: usize = WALLET_KEY_SET_FRAME_BYTES_MAX;

    fn validate(&self) -> Result<(), CodecError> {
        check::id("wallet_id", &self.wallet_id)?;
        check::id("institution_id", &self.institution_id)?;
        check::range("key_version", self.key_version, 1, i32::MAX)?;
        if self.public_key.is_empty() || self.public_key.len() > PUBLIC_KEY_BYTES_MAX {
            return Err(CodecError::invalid_field(
                "public_key",
                format_args!(
                    "{} bytes, expected 1 to {PUBLIC_KEY_BYTES_MAX}",
                    self.public_key.len()
                ),
            ));
        }
        check::non_negative("last_sync_at_ms", self.last_sync_at_ms)?;
        check::non_negative("satellite_at_ms", self.satellite_at_ms)?;
        // Whether the duration matches the two moments is the platform's check, with its own
        // reason code; the contract only bounds the value.
        check::non_negative("offline_duration_ms", self.offline_duration_ms)?;
        check::non_negative("offline_payments.count", self.offline_payments.count)?;
        check::non_negative(
            "offline_payments.total_fen",
            self.offline_payments.total_fen,
        )?;
        check::certificate("certificate", &self.certificate)?;
        check::signature("signature", &self.signature)?;
        check_frames("payments", &self.payments, OFFLINE_PAYMENTS_PER_KEY_SET_MAX)?;
        check_frames("received", &self.received, OFFLINE_PAYMENTS_PER_KEY_SET_MAX)?;
        check::amount("purse_fen", self.purse_fen)?;
        check::non_negative("commands_applied_through", self.commands_applied_through)
    }
}

/// The platform's decision on a key set (Avro enum `SyncStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncStatus {
    /// The wallet state is synchronized.
    Accepted,
    /// The set was refused; the result carries a reason code.
    Rejected,
}

/// What a wallet must do after synchronizing (Avro enum `WalletAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WalletAction {
    /// Set the clock from `platform_time_at_ms`.
    ClockResync,
    /// Make a new key and publish it.
    KeyRotation,
    /// Stop paying until unlocked.
    Lock,
    /// Fetch the current blacklist.
    BlacklistUpdate,
}

/// An offline payment of a key set the platform will not clear, and why (Avro record
/// `RefusedPayment`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RefusedPayment {
    /// The offline payment's id.
    pub payment_id: PaymentId,
    /// Stable reason code.
    pub reason_code: String,
}

/// The platform's answer to a wallet key set (schema id 26, version 2; version 1 is schema id
/// 12, without the platform's record of the wallet and without a defined signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletSyncResult {
    /// The wallet.
    pub wallet_id: String,
    /// The operating institution answering.
    pub institution_id: String,
    /// The key version the platform now holds for the wallet.
    pub key_version: i32,
    /// Whether the key set was accepted.
    pub status: SyncStatus,
    /// Stable reason code; present exactly when `status` is `Rejected`.
    pub reason_code: Option<String>,
    /// Actions for the wallet, each at most once.
    pub actions: Vec<WalletAction>,
    /// The platform clock when answering (Unix epoch milliseconds).
    pub platform_time_at_ms: i64,
    /// DER certificate of the answering institution.
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_certificate: Vec<u8>,
    /// The institution signer's signature over the sync-result signing input.
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_signature: Vec<u8>,
    /// The key-set digest of the key set answered (version 2; `None` from version 1).
    #[serde(default)]
    pub key_set_digest: Option<Digest32>,
    /// Counter of the wallet's last offline payment the platform recorded (version 2).
    #[serde(default)]
    pub counter: i64,
    /// Offline-payment digest of that payment; `None` when `counter` is 0.
    #[serde(default)]
    pub chain_head: Option<Digest32>,
    /// The purse balance the platform records for the wallet (version 2).
    #[serde(default)]
    pub purse_fen: i64,
    /// New offline limits, when they change.
    #[serde(default)]
    pub offline_limits: Option<OfflineLimits>,
    /// The complete blacklist, with [`WalletAction::BlacklistUpdate`].
    #[serde(default)]
    pub blacklist: Vec<String>,
    /// Every trust anchor, when the wallet's differ from the platform's.
    #[serde(default)]
    pub trust_anchors: Vec<Der>,
    /// Received offline payments of the key set that the platform refused.
    #[serde(default)]
    pub refused: Vec<RefusedPayment>,
    /// How many remote control commands follow for the wallet.
    #[serde(default)]
    pub pending_commands: i64,
}

impl Sealed for WalletSyncResult {}

impl Message for WalletSyncResult {
    const NAME: &'static str = "WalletSyncResult";
    const SCHEMA_ID: u32 = 26;
    const FRAME_BYTES_MAX: usize = WALLET_SYNC_RESULT_FRAME_BYTES_MAX;

    fn validate(&self) -> Result<(), CodecError> {
        check::id("wallet_id", &self.wallet_id)?;
        check::id("institution_id", &self.institution_id)?;
        check::range("key_version", self.key_version, 0, i32::MAX)?;
        check::reason_for_status(
            self.status == SyncStatus::Rejected,
            self.reason_code.as_deref(),
        )?;
        for (index, action) in self.actions.iter().enumerate() {
            if self.actions[..index].contains(action) {
                return Err(CodecError::invalid_field(
                    "actions",
                    format_args!("{action:?} appears twice"),
                ));
            }
        }
        check::non_negative("platform_time_at_ms", self.platform_time_at_ms)?;
        check::certificate("institution_certificate", &self.institution_certificate)?;
        check::signature("institution_signature", &self.institution_signature)?;
        check::non_negative("counter", self.counter)?;
        if (self.counter == 0) != self.chain_head.is_none() {
            return Err(CodecError::invalid_field(
                "chain_head",
                "present exactly when counter is above 0",
            ));
        }
        check::amount("purse_fen", self.purse_fen)?;
        if let Some(limits) = &self.offline_limits {
            limits.check("offline_limits")?;
        }
        check_blacklist(&self.blacklist)?;
        check::count(
            "trust_anchors",
            self.trust_anchors.len(),
            0,
            TRUST_ANCHORS_MAX,
        )?;
        for (index, anchor) in self.trust_anchors.iter().enumerate() {
            check::certificate("certificate", &anchor.0)
                .map_err(|e| e.within(format_args!("trust_anchors[{index}]")))?;
        }
        check::count("refused", self.refused.len(), 0, REFUSED_PAYMENTS_MAX)?;
        for (index, refused) in self.refused.iter().enumerate() {
            check::reason_code("reason_code", &refused.reason_code)
                .map_err(|e| e.within(format_args!("refused[{index}]")))?;
        }
        check::non_negative("pending_commands", self.pending_commands)
    }
}

fn check_blacklist(blacklist: &[String]) -> Result<(), CodecError> {
    check::count("blacklist", blacklist.len(), 0, BLACKLIST_ENTRIES_MAX)?;
    for (index, wallet_id) in blacklist.iter().enumerate() {
        check::id("wallet_id", wallet_id)
            .map_err(|e| e.within(format_args!("blacklist[{index}]")))?;
    }
    Ok(())
}

/// A command to a wallet (Avro enum `ControlCommand`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ControlCommand {
    /// Stop paying.
    Lock,
    /// Pay again.
    Unlock,
    /// Apply the command's limits.
    LimitChange,
    /// Replace the blacklist with the command's.
    BlacklistUpdate,
}

/// A wallet's limits, all in fen (Avro record `WalletLimits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletLimits {
    /// Highest balance the wallet may hold.
    pub balance_limit_fen: i64,
    /// Largest single payment.
    pub single_payment_limit_fen: i64,
    /// Most paid per day.
    pub daily_limit_fen: i64,
    /// Largest payment without PIN verification.
    pub password_free_limit_fen: i64,
}

/// A command from the platform to one wallet (schema id 27, version 2; version 1 is schema id
/// 13, without a sequence number and without a defined signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteControlCommand {
    /// Id of this command; a wallet applies each id once.
    pub command_id: CommandId,
    /// The wallet commanded.
    pub wallet_id: String,
    /// The operating institution that holds the wallet and issues the command.
    pub institution_id: String,
    /// What the wallet must do.
    pub command: ControlCommand,
    /// New limits; present exactly when `command` is `LimitChange`.
    pub limits: Option<WalletLimits>,
    /// Wallet ids to refuse (at most [`BLACKLIST_ENTRIES_MAX`]); used with `BlacklistUpdate`.
    pub blacklist: Vec<String>,
    /// When the command was issued (Unix epoch milliseconds).
    pub issued_at_ms: i64,
    /// DER certificate of the issuing institution.
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_certificate: Vec<u8>,
    /// The institution signer's signature over the remote-control-command signing input.
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_signature: Vec<u8>,
    /// The command's number among the wallet's commands, from 1 (version 2; 0 from version 1).
    #[serde(default)]
    pub sequence: i64,
    /// New offline limits with `LimitChange` (version 2).
    #[serde(default)]
    pub offline_limits: Option<OfflineLimits>,
}

impl Sealed for RemoteControlCommand {}

impl Message for RemoteControlCommand {
    const NAME: &'static str = "RemoteControlCommand";
    const SCHEMA_ID: u32 = 27;

    fn validate(&self) -> Result<(), CodecError> {
        check::id("wallet_id", &self.wallet_id)?;
        check::id("institution_id", &self.institution_id)?;
        check::non_negative("sequence", self.sequence)?;
        let limit_change = self.command == ControlCommand::LimitChange;
        match (&self.offline_limits, limit_change) {
            (Some(limits), true) => limits.check("offline_limits")?,
            (None, _) => {}
            (Some(_), false) => {
                return Err(CodecError::invalid_field(
                    "offline_limits",
                    "only allowed with LIMIT_CHANGE",
                ));
            }
        }
        match (&self.limits, limit_change) {
            (None, true) if self.offline_limits.is_some() => {}
            (Some(limits), true) => {
                check::amount("limits.balance_limit_fen", limits.balance_limit_fen)?;
                check::amount(
                    "limits.single_payment_limit_fen",
                    limits.single_payment_limit_fen,
                )?;
                check::amount("limits.daily_limit_fen", limits.daily_limit_fen)?;
                check::amount(
                    "limits.password_free_limit_fen",
                    limits.password_free_limit_fen,
                )?;
            }
            (None, false) => {}
            (None, true) => {
                return Err(CodecError::invalid_field(
                    "limits",
                    "required with LIMIT_CHANGE unless offline_limits is present",
                ));
            }
            (Some(_), false) => {
                return Err(CodecError::invalid_field(
                    "limits",
                    "only allowed with LIMIT_CHANGE",
                ));
            }
        }
        check_blacklist(&self.blacklist)?;
        check::non_negative("issued_at_ms", self.issued_at_ms)?;
        check::certificate("institution_certificate", &self.institution_certificate)?;
        check::signature("institution_signature", &self.institution_signature)
    }
}
