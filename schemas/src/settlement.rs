//! The central bank side: multilateral net positions per settlement window, and the signed
//! instruction that settles a window.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{
    InstructionId, check,
    codec::{Message, sealed::Sealed},
    error::CodecError,
    limits::POSITIONS_MAX,
};

/// The net position of one operating institution over one settlement window (schema id 5, and
/// the element of [`SettlementInstruction::positions`]).
///
/// `net_fen == credit_fen - debit_fen` always holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementPosition {
    /// Settlement window number; rises by one per window.
    pub window_id: i64,
    /// Start of the window, inclusive (Unix epoch milliseconds).
    pub window_start_at_ms: i64,
    /// End of the window, exclusive (Unix epoch milliseconds).
    pub window_end_at_ms: i64,
    /// The operating institution.
    pub institution_id: String,
    /// `credit_fen - debit_fen`: positive, the institution receives; negative, it pays.
    pub net_fen: i64,
    /// Sum of the institution's payer-side cleared amounts, in fen.
    pub debit_fen: i64,
    /// Sum of the institution's payee-side cleared amounts, in fen.
    pub credit_fen: i64,
    /// Number of clearing messages the institution took part in.
    pub clearing_count: i64,
}

impl Sealed for SettlementPosition {}

impl Message for SettlementPosition {
    const NAME: &'static str = "SettlementPosition";
    const SCHEMA_ID: u32 = 5;

    fn validate(&self) -> Result<(), CodecError> {
        check::non_negative("window_id", self.window_id)?;
        check::non_negative("window_start_at_ms", self.window_start_at_ms)?;
        check::after(
            "window_end_at_ms",
            self.window_end_at_ms,
            "window_start_at_ms",
            self.window_start_at_ms,
        )?;
        check::id("institution_id", &self.institution_id)?;
        check::non_negative("debit_fen", self.debit_fen)?;
        check::non_negative("credit_fen", self.credit_fen)?;
        check::non_negative("clearing_count", self.clearing_count)?;
        if self.credit_fen.checked_sub(self.debit_fen) != Some(self.net_fen) {
            return Err(CodecError::invalid_field(
                "net_fen",
                "must equal credit_fen minus debit_fen",
            ));
        }
        Ok(())
    }
}

/// The instruction to settle one window: one net position per institution, summing to zero
/// (schema id 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementInstruction {
    /// Id of this instruction.
    pub instruction_id: InstructionId,
    /// Settlement window number.
    pub window_id: i64,
    /// Start of the window, inclusive (Unix epoch milliseconds).
    pub window_start_at_ms: i64,
    /// End of the window, exclusive (Unix epoch milliseconds).
    pub window_end_at_ms: i64,
    /// One position per institution (at most [`POSITIONS_MAX`]), all of this window; their
    /// `net_fen` sum to zero.
    pub positions: Vec<SettlementPosition>,
    /// Clearing messages that arrived after the window closed.
    pub late_clearing_count: i64,
    /// Their total, in fen.
    pub late_amount_fen: i64,
    /// When the instruction was issued (Unix epoch milliseconds).
    pub issued_at_ms: i64,
    /// DER certificate of the settlement service.
    #[serde(with = "apache_avro::serde::bytes")]
    pub issuer_certificate: Vec<u8>,
    /// The settlement signer's signature over the signing input
    /// `dcpipe/v1/settlement-instruction` (docs/PROTOCOL.md §5); the positions' window fields
    /// are not signed and must equal the instruction's.
    #[serde(with = "apache_avro::serde::bytes")]
    pub signature: Vec<u8>,
}

impl Sealed for SettlementInstruction {}

impl Message for SettlementInstruction {
    const NAME: &'static str = "SettlementInstruction";
    const SCHEMA_ID: u32 = 6;

    fn validate(&self) -> Result<(), CodecError> {
        check::non_negative("window_id", self.window_id)?;
        check::non_negative("window_start_at_ms", self.window_start_at_ms)?;
        check::after(
            "window_end_at_ms",
            self.window_end_at_ms,
            "window_start_at_ms",
            self.window_start_at_ms,
        )?;
        check::count("positions", self.positions.len(), 0, POSITIONS_MAX)?;
        let mut institutions = HashSet::with_capacity(self.positions.len());
        let mut net_sum_fen: i64 = 0;
        for (index, position) in self.positions.iter().enumerate() {
            let at = |e: CodecError| e.within(format_args!("positions[{index}]"));
            position.validate().map_err(at)?;
            let same_window = position.window_id == self.window_id
                && position.window_start_at_ms == self.window_start_at_ms
                && position.window_end_at_ms == self.window_end_at_ms;
            if !same_window {
                return Err(at(CodecError::invalid_field(
                    "window_id",
                    "position belongs to another window",
                )));
            }
            if !institutions.insert(position.institution_id.as_str()) {
                return Err(at(CodecError::invalid_field(
                    "institution_id",
                    "second position for the same institution",
                )));
            }
            net_sum_fen = net_sum_fen
                .checked_add(position.net_fen)
                .ok_or_else(|| CodecError::invalid_field("positions", "net_fen sum overflows"))?;
        }
        if net_sum_fen != 0 {
            return Err(CodecError::invalid_field(
                "positions",
                format_args!("net_fen sums to {net_sum_fen}, expected 0"),
            ));
        }
        check::non_negative("late_clearing_count", self.late_clearing_count)?;
        check::non_negative("late_amount_fen", self.late_amount_fen)?;
        check::non_negative("issued_at_ms", self.issued_at_ms)?;
        check::certificate("issuer_certificate", &self.issuer_certificate)?;
        check::signature("signature", &self.signature)
    }
}
