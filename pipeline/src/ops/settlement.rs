//! Settlement as published: each window's instruction with its positions, verified — the
//! central bank's settlement signer signed it (chain to the root, signature over the signing
//! input of docs/PROTOCOL.md §5) and its positions sum to zero — and each institution's
//! unsigned position checked against the instruction of its window.

use std::collections::BTreeMap;

use dcpipe_connectors::bus::{Bus, Record, ReplayFrom};
use dcpipe_schemas::{SettlementInstruction, SettlementPosition};

use super::OpsError;
use super::follow::SubjectReader;
use crate::pki::{ChainVerifier, Role};
use crate::protocol::settlement_instruction_bytes;
use crate::subjects;

/// One instruction as read, with its checks.
#[derive(Debug)]
pub struct CheckedInstruction {
    /// The stored record.
    pub record: Record,
    /// The instruction, or why it does not decode (a decode also refuses positions that do not
    /// sum to zero).
    pub instruction: Result<SettlementInstruction, String>,
    /// Whether the settlement signer's chain and signature verify, and if not why.
    pub signature: Result<(), String>,
    /// Whether the positions sum to zero and each nets its debits and credits.
    pub zero_sum: Result<(), String>,
}

impl CheckedInstruction {
    /// Every check passed.
    pub fn verified(&self) -> bool {
        self.instruction.is_ok() && self.signature.is_ok() && self.zero_sum.is_ok()
    }
}

/// An institution's published position compared with its window's verified instruction.
#[derive(Debug)]
pub struct CheckedPosition {
    /// The stored record.
    pub record: Record,
    /// The position, or why it does not decode.
    pub position: Result<SettlementPosition, String>,
    /// `Ok` when a verified instruction of its window holds the same position.
    pub matches: Result<(), String>,
}

/// What `settlement` read.
#[derive(Debug, Default)]
pub struct SettlementReport {
    /// Instructions in the order read.
    pub instructions: Vec<CheckedInstruction>,
    /// Positions of the institutions asked for, in the order read per institution.
    pub positions: Vec<CheckedPosition>,
}

impl SettlementReport {
    /// Every instruction and every position verified.
    pub fn all_verified(&self) -> bool {
        self.instructions.iter().all(CheckedInstruction::verified)
            && self.positions.iter().all(|p| p.matches.is_ok())
    }
}

/// Checks one instruction.
pub fn check_instruction(verifier: &ChainVerifier, record: Record) -> CheckedInstruction {
    let instruction =
        dcpipe_schemas::decode::<SettlementInstruction>(&record.payload).map_err(|e| e.to_string());
    let (signature, zero_sum) = match &instruction {
        Ok(i) => (verify_signature(verifier, i), zero_sum(&i.positions)),
        Err(e) => (Err(e.clone()), Err(e.clone())),
    };
    CheckedInstruction {
        record,
        instruction,
        signature,
        zero_sum,
    }
}

fn verify_signature(
    verifier: &ChainVerifier,
    instruction: &SettlementInstruction,
) -> Result<(), String> {
    let signer = verifier
        .verify(
            &instruction.issuer_certificate,
            instruction.issued_at_ms,
            Role::SettlementSigner,
        )
        .map_err(|e| format!("issuer certificate: {e}"))?;
    signer
        .public_key()
        .verify(
            &settlement_instruction_bytes(instruction),
            &instruction.signature,
        )
        .map_err(|e| format!("signature: {e}"))
}

/// Positions sum to zero, and each nets its credits and debits.
pub fn zero_sum(positions: &[SettlementPosition]) -> Result<(), String> {
    let mut sum: i128 = 0;
    for p in positions {
        if i128::from(p.credit_fen) - i128::from(p.debit_fen) != i128::from(p.net_fen) {
            return Err(format!(
                "{}: net {} is not credit {} − debit {}",
                p.institution_id, p.net_fen, p.credit_fen, p.debit_fen
            ));
        }
        sum += i128::from(p.net_fen);
    }
    if sum == 0 {
        Ok(())
    } else {
        Err(format!("positions sum to {sum} fen, not 0"))
    }
}

/// Reads `settlement.instruction` and the positions of `institutions` over a range.
pub async fn read(
    bus: &dyn Bus,
    verifier: &ChainVerifier,
    institutions: &[String],
    from: ReplayFrom,
    until_ms: Option<i64>,
) -> Result<SettlementReport, OpsError> {
    let mut report = SettlementReport::default();
    let mut reader = SubjectReader::new(subjects::SETTLEMENT_INSTRUCTION, from, until_ms);
    for record in reader.poll(bus, usize::MAX).await? {
        report
            .instructions
            .push(check_instruction(verifier, record));
    }
    // Verified positions by (window, institution).
    let verified: BTreeMap<(i64, &str), &SettlementPosition> = report
        .instructions
        .iter()
        .filter(|c| c.verified())
        .filter_map(|c| c.instruction.as_ref().ok())
        .flat_map(|i| {
            i.positions
                .iter()
                .map(|p| ((p.window_id, p.institution_id.as_str()), p))
        })
        .collect();
    let mut positions = Vec::new();
    for institution in institutions {
        let mut reader =
            SubjectReader::new(subjects::settlement_position(institution), from, until_ms);
        for record in reader.poll(bus, usize::MAX).await? {
            let position = dcpipe_schemas::decode::<SettlementPosition>(&record.payload)
                .map_err(|e| e.to_string());
            let matches = match &position {
                Err(e) => Err(e.clone()),
                Ok(p) if p.institution_id != *institution => Err(format!(
                    "names institution {} on the subject of {institution}",
                    p.institution_id
                )),
                Ok(p) => match verified.get(&(p.window_id, p.institution_id.as_str())) {
                    Some(signed) if *signed == p => Ok(()),
                    Some(_) => Err(format!(
                        "differs from the signed instruction of window {}",
                        p.window_id
                    )),
                    None => Err(format!(
                        "no verified instruction of window {} read",
                        p.window_id
                    )),
                },
            };
            positions.push(CheckedPosition {
                record,
                position,
                matches,
            });
        }
    }
    report.positions = positions;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(institution: &str, debit_fen: i64, credit_fen: i64) -> SettlementPosition {
        SettlementPosition {
            window_id: 1,
            window_start_at_ms: 0,
            window_end_at_ms: 60_000,
            institution_id: institution.into(),
            net_fen: credit_fen - debit_fen,
            debit_fen,
            credit_fen,
            clearing_count: 1,
        }
    }

    #[test]
    fn positions_must_sum_to_zero_and_net_their_flows() {
        assert_eq!(zero_sum(&[]), Ok(()));
        assert_eq!(
            zero_sum(&[position("a", 500, 200), position("b", 200, 500)]),
            Ok(())
        );
        let unbalanced = zero_sum(&[position("a", 500, 200), position("b", 0, 200)]);
        assert!(unbalanced.expect_err("sum").contains("sum to -100"));
        let mut wrong = position("a", 5, 0);
        wrong.net_fen = 5;
        assert!(zero_sum(&[wrong]).expect_err("net").contains("net 5"));
    }
}
