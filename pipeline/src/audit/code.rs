//! The stable codes of the audit's discrepancies (`audit.*`), listed in docs/PROTOCOL.md §12.
//!
//! A discrepancy is not a reason a stage gives for refusing a message: it is what the audit
//! found wrong in the record, so its codes live in their own enum, never mixed with
//! [`crate::reason::Reason`]. Like reason codes they are a contract: never renamed or reused.

use std::fmt;

/// What the audit found wrong with the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AuditCode {
    /// A frame that does not decode with its schema id and has no dead letter holding its
    /// exact bytes.
    UndecodableNotDeadLettered,
    /// A message of an institution, the central bank or a CA whose signature does not verify,
    /// or that its signer's certificate does not allow (another institution, another party),
    /// and that no stage dead-lettered.
    SignatureInvalid,
    /// Its signer's chain is not valid at the message's own time (expired, not yet valid, an
    /// unknown issuer…), and no stage dead-lettered it.
    CertificateInvalid,
    /// Its signer's certificate (or a CA above it) was revoked before the message's own time,
    /// and no stage dead-lettered it.
    CertificateRevoked,
    /// An outcome for a payment nothing in the record authorized: no envelope was submitted
    /// (nor, for a vehicle charge, a pre-authorization signed).
    OutcomeWithoutSubmission,
    /// A COMPLETED outcome for a submission whose envelope does not verify.
    CompletedUnauthorized,
    /// An outcome that does not agree with its envelope or clearing message: parties, amount,
    /// currency or digest.
    OutcomeMismatch,
    /// One submission with two different final outcomes, or one payment completed under two
    /// contents.
    OutcomeContradiction,
    /// A submitted, authenticated payment without a final outcome.
    OutcomeMissing,
    /// A clearing message that does not agree with its envelope (parties, amount, currency,
    /// digest, factor).
    ClearingMismatch,
    /// A COMPLETED payment without an accepted clearing response from the payee's
    /// institution.
    CompletedWithoutClearing,
    /// A COMPLETED interbank payment that never reached settlement (`settlement.clearing`).
    SettlementMissing,
    /// A record on `settlement.clearing` that is not the completed interbank outcome of its
    /// payment.
    SettlementClearingInvalid,
    /// A settlement instruction whose positions are not the sum of its window's clearings (or
    /// do not sum to zero).
    SettlementMismatch,
    /// A clearing counted in two settlement windows.
    ClearingInTwoWindows,
    /// A published position that differs from its instruction's row.
    PositionMismatch,
    /// An institution's ledger does not hold what the record says: a completed payment not
    /// debited and credited exactly once with its amount, a rejected one that moved money, or
    /// a ledger whose stored totals disagree with its payment records.
    LedgerMismatch,
    /// A wallet the range covers whole whose balance is not its opening plus the completed
    /// payments the record holds for it.
    WalletBalanceMismatch,
    /// A vehicle's telemetry batch whose signature does not verify, whose certificate is not the
    /// vehicle it names or not of its wallet's institution, or on another institution's subject
    /// than its wallet's, and that no stage dead-lettered.
    VehicleTelemetrySignatureInvalid,
    /// A vehicle's telemetry batch that its chain refuses (another batch with its first
    /// sequence, a replay, a broken chain, time not rising), and that no stage dead-lettered.
    VehicleTelemetryOutOfSequence,
    /// A station's service-complete report whose signature does not verify, or whose
    /// certificate is not the entity it names, and that no stage dead-lettered.
    VehicleReportForged,
    /// A session event whose ids are not derived from its session, addressed to another
    /// institution than its wallet's, or naming an entity version the registry does not hold.
    VehicleSessionInvalid,
    /// A vehicle charge (or a charge a vehicle stage refused) whose payment id is no session's
    /// in the record, whose session has not ended, or, for charging and fuel, without the
    /// station's report of its session.
    VehicleChargeWithoutSession,
    /// A vehicle charge whose amount is not the fee of its session under the tariff of the
    /// entity version in force at the session's start.
    VehicleChargeAmountMismatch,
    /// A vehicle charge whose payer, payee, vehicle, entity or charge digest differ from its
    /// session, its station report and its pre-authorization.
    VehicleChargeMismatch,
    /// A second, different charge for one session.
    VehicleChargeTwice,
    /// A key set of an offline wallet that no sync result answers, and that no stage
    /// dead-lettered.
    WalletKeysetUnanswered,
    /// A sync result that answers no key set of its wallet awaiting an answer (none with its
    /// digest, or one answered already).
    WalletResultUnmatched,
    /// A sync result that disagrees with the key set it answers: accepting a key set that does
    /// not verify, a rejection without its reason, or another key version, counter or chain
    /// head than the accepted key set makes.
    WalletResultMismatch,
    /// An accepted key set whose last synchronization is earlier than the wallet's last
    /// accepted one: a replay the platform accepted.
    WalletKeysetReplayed,
    /// An accepted key set under a key version lower than the wallet's last accepted one.
    WalletKeyVersionLowered,
    /// An accepted key set whose first payment does not continue the wallet's hash chain from
    /// the head accepted before (counter and previous hash).
    WalletChainBroken,
    /// A remote command id carrying two different commands, or two command ids under one
    /// sequence number of a wallet: a command applied twice, or one never applied.
    WalletCommandConflict,
    /// An offline wallet the range covers whole whose purse account is not its funding, plus
    /// what the loss account paid into it, minus its completed offline payments of the record.
    WalletPurseMismatch,
    /// An institution's loss account that is not minus the loss parts of the offline payments
    /// the record completed from its purse accounts.
    WalletLossMismatch,
}

impl AuditCode {
    /// Every code, in the order of docs/PROTOCOL.md §12.
    pub const ALL: [AuditCode; 35] = [
        AuditCode::UndecodableNotDeadLettered,
        AuditCode::SignatureInvalid,
        AuditCode::CertificateInvalid,
        AuditCode::CertificateRevoked,
        AuditCode::OutcomeWithoutSubmission,
        AuditCode::CompletedUnauthorized,
        AuditCode::OutcomeMismatch,
        AuditCode::OutcomeContradiction,
        AuditCode::OutcomeMissing,
        AuditCode::ClearingMismatch,
        AuditCode::CompletedWithoutClearing,
        AuditCode::SettlementMissing,
        AuditCode::SettlementClearingInvalid,
        AuditCode::SettlementMismatch,
        AuditCode::ClearingInTwoWindows,
        AuditCode::PositionMismatch,
        AuditCode::LedgerMismatch,
        AuditCode::WalletBalanceMismatch,
        AuditCode::VehicleTelemetrySignatureInvalid,
        AuditCode::VehicleTelemetryOutOfSequence,
        AuditCode::VehicleReportForged,
        AuditCode::VehicleSessionInvalid,
        AuditCode::VehicleChargeWithoutSession,
        AuditCode::VehicleChargeAmountMismatch,
        AuditCode::VehicleChargeMismatch,
        AuditCode::VehicleChargeTwice,
        AuditCode::WalletKeysetUnanswered,
        AuditCode::WalletResultUnmatched,
        AuditCode::WalletResultMismatch,
        AuditCode::WalletKeysetReplayed,
        AuditCode::WalletKeyVersionLowered,
        AuditCode::WalletChainBroken,
        AuditCode::WalletCommandConflict,
        AuditCode::WalletPurseMismatch,
        AuditCode::WalletLossMismatch,
    ];

    /// The stable code.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditCode::UndecodableNotDeadLettered => "audit.undecodable_not_dead_lettered",
            AuditCode::SignatureInvalid => "audit.signature_invalid",
            AuditCode::CertificateInvalid => "audit.certificate_invalid",
            AuditCode::CertificateRevoked => "audit.certificate_revoked",
            AuditCode::OutcomeWithoutSubmission => "audit.outcome_without_submission",
            AuditCode::CompletedUnauthorized => "audit.completed_unauthorized",
            AuditCode::OutcomeMismatch => "audit.outcome_mismatch",
            AuditCode::OutcomeContradiction => "audit.outcome_contradiction",
            AuditCode::OutcomeMissing => "audit.outcome_missing",
            AuditCode::ClearingMismatch => "audit.clearing_mismatch",
            AuditCode::CompletedWithoutClearing => "audit.completed_without_clearing",
            AuditCode::SettlementMissing => "audit.settlement_missing",
            AuditCode::SettlementClearingInvalid => "audit.settlement_clearing_invalid",
            AuditCode::SettlementMismatch => "audit.settlement_mismatch",
            AuditCode::ClearingInTwoWindows => "audit.clearing_in_two_windows",
            AuditCode::PositionMismatch => "audit.position_mismatch",
            AuditCode::LedgerMismatch => "audit.ledger_mismatch",
            AuditCode::WalletBalanceMismatch => "audit.wallet_balance_mismatch",
            AuditCode::VehicleTelemetrySignatureInvalid => {
                "audit.vehicle_telemetry_signature_invalid"
            }
            AuditCode::VehicleTelemetryOutOfSequence => "audit.vehicle_telemetry_out_of_sequence",
            AuditCode::VehicleReportForged => "audit.vehicle_report_forged",
            AuditCode::VehicleSessionInvalid => "audit.vehicle_session_invalid",
            AuditCode::VehicleChargeWithoutSession => "audit.vehicle_charge_without_session",
            AuditCode::VehicleChargeAmountMismatch => "audit.vehicle_charge_amount_mismatch",
            AuditCode::VehicleChargeMismatch => "audit.vehicle_charge_mismatch",
            AuditCode::VehicleChargeTwice => "audit.vehicle_charge_twice",
            AuditCode::WalletKeysetUnanswered => "audit.wallet_keyset_unanswered",
            AuditCode::WalletResultUnmatched => "audit.wallet_result_unmatched",
            AuditCode::WalletResultMismatch => "audit.wallet_result_mismatch",
            AuditCode::WalletKeysetReplayed => "audit.wallet_keyset_replayed",
            AuditCode::WalletKeyVersionLowered => "audit.wallet_key_version_lowered",
            AuditCode::WalletChainBroken => "audit.wallet_chain_broken",
            AuditCode::WalletCommandConflict => "audit.wallet_command_conflict",
            AuditCode::WalletPurseMismatch => "audit.wallet_purse_mismatch",
            AuditCode::WalletLossMismatch => "audit.wallet_loss_mismatch",
        }
    }

    /// The code named `code`, if any.
    pub fn parse(code: &str) -> Option<AuditCode> {
        AuditCode::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for AuditCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for AuditCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_audit_codes_that_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for code in AuditCode::ALL {
            assert!(code.as_str().starts_with("audit."), "{code}");
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert_eq!(AuditCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(AuditCode::parse("audit.nothing"), None);
    }

    /// docs/PROTOCOL.md §12 lists exactly these codes.
    #[test]
    fn the_protocol_lists_every_audit_code_and_no_other() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
        let document = std::fs::read_to_string(path).expect("PROTOCOL.md");
        let section = document
            .split("\n## 12. The audit replay\n")
            .nth(1)
            .expect("§12");
        let documented: std::collections::BTreeSet<&str> = section
            .lines()
            .filter(|l| l.starts_with("| `audit."))
            .filter_map(|l| l.split('`').nth(1))
            .collect();
        let known: std::collections::BTreeSet<&str> =
            AuditCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(documented, known);
    }
}
