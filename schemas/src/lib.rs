//! The Avro contract of dcpipe.
//!
//! Every message that crosses a bus between terminals, operating institutions and the central
//! bank side is defined here once: an Avro schema in `schemas/avsc/` (namespace `dcpipe.v1`), a
//! Rust type with the same fields, and one codec that frames the Avro binary datum in the
//! Confluent wire format (magic byte `0`, big-endian `u32` schema id, datum), so that standard
//! tools and other languages read the same bytes.
//!
//! Why a separate crate: the contract must not depend on how messages are carried or processed.
//! Connectors, workers, load generators and auditors all depend on it; it depends on nothing of
//! ours.
//!
//! The codec is the first line of defence against bad input: [`decode`] checks the frame, the
//! schema id and the datum's structure against its writer schema before anything allocates, and
//! then the contract rules of the message ([`Message::validate`]): bounded ids and texts, signs of
//! amounts, coordinates in range, settlement positions that sum to zero. Every rejection is a
//! [`CodecError`] with a stable [`reason_code`](CodecError::reason_code), and no input makes it
//! panic.
//!
//! ```
//! use dcpipe_schemas::{decode, encode, schema_id, Message, SettlementPosition};
//!
//! let position = SettlementPosition {
//!     window_id: 28_800,
//!     window_start_at_ms: 1_728_000_000_000,
//!     window_end_at_ms: 1_728_000_060_000,
//!     institution_id: "OI-ICBC".to_owned(),
//!     net_fen: -1_500,
//!     debit_fen: 2_000,
//!     credit_fen: 500,
//!     clearing_count: 3,
//! };
//! let frame = encode(&position)?;
//! assert_eq!(frame[0], 0);
//! assert_eq!(schema_id(&frame)?, SettlementPosition::SCHEMA_ID);
//! assert_eq!(decode::<SettlementPosition>(&frame)?, position);
//! # Ok::<(), dcpipe_schemas::CodecError>(())
//! ```

mod check;
mod clearing;
mod codec;
mod dead_letter;
mod error;
mod ids;
mod json;
mod limits;
mod offline;
mod party;
mod payment;
mod pki;
mod prescan;
mod registry;
mod session_event;
mod settlement;
mod telemetry_batch;
mod vehicle;
mod wallet;

#[cfg(test)]
mod evolution_tests;

pub use clearing::{ClearingMessage, ClearingResponse, ClearingStatus};
pub use codec::{HEADER_BYTES, MAGIC_BYTE, Message, decode, encode, encode_into, schema_id};
pub use dead_letter::DeadLetter;
pub use error::{CodecError, CodecErrorKind};
pub use ids::{
    AuthorizationId, CommandId, Digest32, InstructionId, Nonce, PaymentId, ReportId,
    RevocationUpdateId, SessionId,
};
pub use json::{ANY_FRAME_BYTES_MAX, AnyMessage, decode_any, json_string, rfc3339_of_ms};
pub use limits::*;
pub use offline::OfflinePayment;
pub use party::PartyRef;
pub use payment::{Channel, OutcomeStatus, PaymentOutcome, PinProof, TransactionEnvelope};
pub use pki::{RevocationUpdate, RevokedCertificate};
pub use registry::{SCHEMA_TABLE, SchemaEntry, schema_entry};
pub use session_event::{SessionEventKind, VehicleSessionEvent};
pub use settlement::{SettlementInstruction, SettlementPosition};
pub use telemetry_batch::{TelemetryFix, VehicleTelemetryBatch};
pub use vehicle::{
    GeoPoint, MeterUnit, MeteredTariff, ParkingTariff, ServiceAuthorization, ServiceCompleteReport,
    ServiceEntity, ServiceKind, Tariff, TollTariff, VehicleTelemetry,
};
pub use wallet::{
    ControlCommand, Der, Frame, OfflineLimits, OfflinePaymentSummary, RefusedPayment,
    RemoteControlCommand, SyncStatus, WalletAction, WalletKeySet, WalletLimits, WalletSyncResult,
};

/// The Avro library the schemas are expressed in, re-exported so that callers holding a
/// [`Message::schema`] use the same version of it.
pub use apache_avro;
