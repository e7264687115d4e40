//! Flow 2: offline wallets publish key sets; the platform answers and can command wallets.

use serde::{Deserialize, Serialize};

use crate::{
    CommandId, Digest32, check,
    codec::{Message, sealed::Sealed},
    error::CodecError,
    limits::{BLACKLIST_ENTRIES_MAX, PUBLIC_KEY_BYTES_MAX},
};

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

/// A wallet key information set, made by a wallet that stayed offline longer than its preset
/// duration and published on reconnection (schema id 11).
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
    /// Reserved: protocol v1 defines no signing input for this message yet.
    #[serde(with = "apache_avro::serde::bytes")]
    pub signature: Vec<u8>,
}

impl Sealed for WalletKeySet {}

impl Message for WalletKeySet {
    const NAME: &'static str = "WalletKeySet";
    const SCHEMA_ID: u32 = 11;

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
        check::signature("signature", &self.signature)
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

/// The platform's answer to a wallet key set (schema id 12).
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
    /// Reserved: protocol v1 defines no signing input for this message yet.
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_signature: Vec<u8>,
}

impl Sealed for WalletSyncResult {}

impl Message for WalletSyncResult {
    const NAME: &'static str = "WalletSyncResult";
    const SCHEMA_ID: u32 = 12;

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
        check::signature("institution_signature", &self.institution_signature)
    }
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

/// A command from the platform to one wallet (schema id 13).
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
    /// Reserved: protocol v1 defines no signing input for this message yet.
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_signature: Vec<u8>,
}

impl Sealed for RemoteControlCommand {}

impl Message for RemoteControlCommand {
    const NAME: &'static str = "RemoteControlCommand";
    const SCHEMA_ID: u32 = 13;

    fn validate(&self) -> Result<(), CodecError> {
        check::id("wallet_id", &self.wallet_id)?;
        check::id("institution_id", &self.institution_id)?;
        match (&self.limits, self.command == ControlCommand::LimitChange) {
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
                    "required with LIMIT_CHANGE",
                ));
            }
            (Some(_), false) => {
                return Err(CodecError::invalid_field(
                    "limits",
                    "only allowed with LIMIT_CHANGE",
                ));
            }
        }
        check::count("blacklist", self.blacklist.len(), 0, BLACKLIST_ENTRIES_MAX)?;
        for (index, wallet_id) in self.blacklist.iter().enumerate() {
            check::id("wallet_id", wallet_id)
                .map_err(|e| e.within(format_args!("blacklist[{index}]")))?;
        }
        check::non_negative("issued_at_ms", self.issued_at_ms)?;
        check::certificate("institution_certificate", &self.institution_certificate)?;
        check::signature("institution_signature", &self.institution_signature)
    }
}
