//! Every stable reason code dcpipe emits, in one enum: payment rejections, certificate and
//! schema faults, dead-letter codes (stage failures, settlement refusals, contradictions between
//! institutions), refused revocation updates, and the offline wallets' refusals (key sets,
//! offline payments, remote control), and the vehicles' (telemetry, the entity registry,
//! pre-authorizations, fees, station reports). The tables of docs/PROTOCOL.md §7 and §10.10
//! list them.
//!
//! Codes are part of the contract: terminals, auditors and dashboards match on them. A code is
//! never renamed or reused; new reasons get new codes (and a row in the protocol's tables, which
//! a test checks in both directions).

use std::fmt;
use std::str::FromStr;

use dcpipe_connectors::ledger::LedgerRefusal;
use dcpipe_schemas::CodecErrorKind;

use crate::pki::CertErrorKind;

/// Why a payment was rejected, a message dead-lettered or a revocation update refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    // --- Payment rejections (also dead-letter codes for messages between institutions) ---
    /// A certificate (payer's, payee's, secure element's or an institution's) failed its chain
    /// check; the detail names which.
    Certificate(CertErrorKind),
    /// The payee's consent signature over the transaction factor does not verify.
    PayeeConsentSignature,
    /// The payer's signature over the envelope does not verify.
    PayerSignature,
    /// An institution's signature on a clearing message, response or outcome does not verify.
    InstitutionSignature,
    /// The transaction factor recomputed from the envelope differs from the one signed.
    FactorMismatch,
    /// The amount is above the payer's password-free limit and there is no PIN proof.
    PinRequired,
    /// A PIN proof is present but not valid (certificate, signature, wallet or time).
    PinProofInvalid,
    /// A certificate's subject is not the wallet or institution the message names.
    PartyMismatch,
    /// Sent to an institution that does not hold the wallet (or is not the addressee).
    WrongInstitution,
    /// The currency is not one this system clears.
    CurrencyUnsupported,
    /// The envelope's time is too far from the institution's clock.
    ClockSkew,
    /// The same payment id was submitted before with other content.
    Conflict,
    /// The payee's institution did not answer before the reservation expired.
    Timeout,
    /// An id or amount outside the ledger's range (malformed in a way the schema cannot say).
    InvalidRequest,
    /// The payer's wallet is not held by this institution.
    PayerUnknownWallet,
    /// The payer's wallet is locked.
    PayerWalletLocked,
    /// Above the payer wallet's single-payment limit.
    SinglePaymentLimit,
    /// Above the payer wallet's daily limit.
    DailyLimit,
    /// The payer's available balance is too small.
    InsufficientFunds,
    /// The payee's wallet is not held by the payee's institution.
    PayeeUnknownWallet,
    /// The payee's wallet is locked.
    PayeeWalletLocked,
    /// Crediting would take the payee over its wallet's balance limit.
    PayeeBalanceLimit,

    // --- Dead letters ---
    /// The bytes are not a valid frame of the expected message, or an output could not be
    /// encoded.
    Schema(CodecErrorKind),
    /// A clearing response for a payment this institution never reserved.
    UnknownPayment,
    /// An outcome on `settlement.clearing` that is not a completed interbank payment.
    SettlementNotAClearing,
    /// A clearing recorded before with other content.
    SettlementConflict,
    /// The settlement store refused an institution id.
    SettlementMalformedClearing,
    /// The settlement store refused an amount.
    SettlementInvalidAmount,
    /// The stage kept failing transiently (a database or bus down) until the message's
    /// deliveries ran out.
    StageRetriesExhausted,
    /// The stage stopped on a fatal failure (an invariant breach, a misconfiguration) at the
    /// message's last allowed delivery: every member it reached stopped.
    StageFatal,
    /// The ledger refused this one message's request as invalid input that the stage's own
    /// checks let through.
    StageLedgerRefused,
    /// The bus refused an output of this message (too large, an invalid subject or header).
    StageOutputRefused,

    // --- Contradictions between institutions (dead letters, logged at error) ---
    /// A COMPLETED outcome for a payment the payee's ledger never recorded: the payer's
    /// institution moved money the payee's institution never credited.
    CompletedUnknown,
    /// A COMPLETED outcome for a payment the payee's ledger holds as voided (a tombstone),
    /// reversed or refused: one side moved money, the other released it.
    CompletedVoided,
    /// A REJECTED (voided) outcome for a payment the payee's ledger already credited.
    VoidedCredited,
    /// A clearing response asking for the other decision than the one already final, for a
    /// reason other than the reservation's expiry: the payee's institution answered both ways.
    DecisionChanged,
    /// An authenticated response or outcome whose amount or envelope digest differs from this
    /// institution's record of the payment.
    TermsMismatch,

    // --- Revocation updates (refused, dead-lettered from `pki.revocation`) ---
    /// The update is not signed by a CA of the trust store.
    RevocationUnknownIssuer,
    /// The update's signature does not verify.
    RevocationSignatureInvalid,
    /// The revocation set is full.
    RevocationFull,

    // --- Offline wallets: key sets, offline payments, remote control ---
    /// A key set sent to an institution that does not hold the wallet.
    WalletWrongInstitution,
    /// The institution keeps no offline record of the wallet.
    WalletUnknown,
    /// The key set's certificate is not the wallet it names, or not the key it carries.
    WalletCertificateMismatch,
    /// The wallet's signature over its key set does not verify.
    WalletSignature,
    /// The key set's satellite moment is too far from the platform clock.
    WalletSatelliteTimeSkew,
    /// The offline duration does not match the satellite moment and the last synchronization the platform recorded.
    WalletDurationInconsistent,
    /// A key set from before the wallet's last accepted synchronization.
    WalletKeySetReplayed,
    /// A key version below the one the platform holds.
    WalletKeyVersionLowered,
    /// A key the platform does not hold for that key version.
    WalletKeyUnknown,
    /// A raised key version whose key is not certified as a wallet key by the wallet's institution.
    WalletRotationUncertified,
    /// The wallet's offline payments do not continue its hash chain from the recorded head.
    WalletChainBroken,
    /// The key set's summary differs from its payment records.
    WalletSummaryMismatch,
    /// A payment record of the key set is not the wallet's own (another payer or another wallet's key).
    WalletRecordForeign,
    /// A payment record of the key set is not a valid OfflinePayment frame.
    WalletRecordMalformed,
    /// The wallet is on the blacklist (fraud evidence).
    WalletBlacklisted,
    /// An offline payment's signature does not verify.
    OfflineSignature,
    /// An offline payment's certificate is not the payer it names.
    OfflinePartyMismatch,
    /// An offline payment in a currency this system does not clear.
    OfflineCurrency,
    /// An offline payment presented by a wallet that is not its payee.
    OfflineWrongPayee,
    /// An offline payment from a wallet on the blacklist.
    OfflinePayerBlacklisted,
    /// An offline payment made after its payer's wallet was locked.
    OfflinePayerLocked,
    /// Two different offline payments under one payer counter: fraud evidence.
    OfflineDoubleSpend,
    /// Offline payments beyond the payer's purse: fraud evidence.
    OfflineBeyondPurse,
    /// Offline payments beyond the payer's offline limits: fraud evidence.
    OfflineLimitExceeded,
    /// An offline payment's time lies outside its payer's offline period.
    OfflineTimeInvalid,
    /// A remote control command's signature does not verify.
    RemoteSignature,
    /// A remote control command not signed by the wallet's institution.
    RemoteWrongIssuer,
    /// A remote control command for another wallet.
    RemoteWrongWallet,
    /// A remote control command ahead of the next one the wallet expects.
    RemoteOutOfOrder,
    /// A remote control command without a sequence number (version 1).
    RemoteUnsequenced,

    // --- Vehicles: telemetry, the entity registry, pre-authorizations, fees, station reports ---
    /// Telemetry sent to an institution that does not hold the vehicle's wallet.
    TelemetryWrongInstitution,
    /// A report's time is too far ahead of the platform clock, or too old.
    TelemetryClockSkew,
    /// The in-vehicle client's certificate is not the vehicle, or not of the wallet's
    /// institution.
    TelemetryVehicleMismatch,
    /// The batch signature does not verify.
    TelemetrySignatureInvalid,
    /// The batch starts after the vehicle's next expected sequence: earlier reports are
    /// missing (the batch waits a bounded time for them).
    TelemetrySequenceGap,
    /// The batch starts before the vehicle's next expected sequence and is not a batch already
    /// applied.
    TelemetrySequenceReplayed,
    /// The batch has the first sequence of a batch already applied, with other content (the
    /// vehicle signed two histories).
    TelemetrySequenceConflict,
    /// The batch continues the sequence but names another previous batch than the one applied.
    TelemetryChainBroken,
    /// The batch's first report is not later than the last report applied.
    TelemetryTimeNotRising,

    /// A registry entry without certificate or signature (every version 1 entry).
    EntityUnsigned,
    /// The registry entry's signature does not verify.
    EntitySignatureInvalid,
    /// The registry entry is not signed by the institution that holds the entity's wallet.
    EntityWrongSigner,
    /// A registry entry older than (or as old as) the version in force.
    EntityStaleVersion,
    /// The version in force was registered before with other content.
    EntityVersionConflict,
    /// The geofence is not a simple polygon of positive area within the size bound.
    EntityInvalidGeofence,
    /// The registry holds its maximum number of entities.
    EntityRegistryFull,

    /// A pre-authorization sent to an institution that does not hold the paying wallet.
    PreauthWrongInstitution,
    /// The signing certificate is not of the wallet the pre-authorization names.
    PreauthWalletMismatch,
    /// The pre-authorization's signature does not verify.
    PreauthSignatureInvalid,
    /// The pre-authorization has expired.
    PreauthExpired,
    /// The pre-authorization is issued too far in the future.
    PreauthNotYetValid,
    /// The pre-authorization's lifetime is longer than allowed.
    PreauthLifetimeTooLong,
    /// The charge is for another entity than the pre-authorization's.
    PreauthWrongEntity,
    /// The charge is for another service than the pre-authorization's.
    PreauthWrongService,
    /// The charge is for another vehicle than the pre-authorization's.
    PreauthVehicleMismatch,
    /// The charge exceeds the remaining pre-authorized amount.
    PreauthExceeded,
    /// No pre-authorization is held for the entity.
    PreauthMissing,
    /// A pre-authorization id held before with other content.
    PreauthConflict,

    /// The vehicle class has no fee in the toll tariff.
    TariffVehicleClass,
    /// The report's unit is not the tariff's.
    TariffUnitMismatch,
    /// The fee overflows or exceeds the largest amount.
    TariffOverflow,
    /// The entity version has no tariff of its kind.
    TariffMissing,
    /// The stay is longer than a fee is computed for.
    TariffStayTooLong,
    /// The stay ends before it starts.
    TariffTimeReversed,

    /// The service-complete report's signature does not verify.
    ReportSignatureInvalid,
    /// The report's certificate is not the entity it names.
    ReportEntityMismatch,
    /// The report names a session the institution does not know.
    ReportUnknownSession,
    /// The report comes from another entity, or names another vehicle, than the session's.
    ReportWrongSession,
}

/// The certificate kinds, in declaration order.
const CERTIFICATE_KINDS: [CertErrorKind; 16] = [
    CertErrorKind::Malformed,
    CertErrorKind::TooLarge,
    CertErrorKind::UnknownIssuer,
    CertErrorKind::SignatureInvalid,
    CertErrorKind::NotYetValid,
    CertErrorKind::Expired,
    CertErrorKind::Revoked,
    CertErrorKind::NotCa,
    CertErrorKind::UnexpectedCa,
    CertErrorKind::KeyUsage,
    CertErrorKind::WrongRole,
    CertErrorKind::WrongIssuer,
    CertErrorKind::InstitutionMismatch,
    CertErrorKind::UnsupportedAlgorithm,
    CertErrorKind::PathTooLong,
    CertErrorKind::UnknownCriticalExtension,
];

/// One refusal of each kind: the codes a ledger stores as a refused record's reason.
const LEDGER_REFUSALS: [LedgerRefusal; 8] = [
    LedgerRefusal::MalformedRequest,
    LedgerRefusal::InvalidAmount,
    LedgerRefusal::UnknownWallet,
    LedgerRefusal::WalletLocked,
    LedgerRefusal::SinglePaymentLimit { limit_fen: 0 },
    LedgerRefusal::DailyLimit {
        limit_fen: 0,
        spent_fen: 0,
    },
    LedgerRefusal::InsufficientFunds { available_fen: 0 },
    LedgerRefusal::BalanceLimit { limit_fen: 0 },
];

impl Reason {
    /// Every reason that wraps no other kind, in declaration order.
    pub const UNWRAPPED: [Reason; 106] = [
        Reason::PayeeConsentSignature,
        Reason::PayerSignature,
        Reason::InstitutionSignature,
        Reason::FactorMismatch,
        Reason::PinRequired,
        Reason::PinProofInvalid,
        Reason::PartyMismatch,
        Reason::WrongInstitution,
        Reason::CurrencyUnsupported,
        Reason::ClockSkew,
        Reason::Conflict,
        Reason::Timeout,
        Reason::InvalidRequest,
        Reason::PayerUnknownWallet,
        Reason::PayerWalletLocked,
        Reason::SinglePaymentLimit,
        Reason::DailyLimit,
        Reason::InsufficientFunds,
        Reason::PayeeUnknownWallet,
        Reason::PayeeWalletLocked,
        Reason::PayeeBalanceLimit,
        Reason::UnknownPayment,
        Reason::SettlementNotAClearing,
        Reason::SettlementConflict,
        Reason::SettlementMalformedClearing,
        Reason::SettlementInvalidAmount,
        Reason::StageRetriesExhausted,
        Reason::StageFatal,
        Reason::StageLedgerRefused,
        Reason::StageOutputRefused,
        Reason::CompletedUnknown,
        Reason::CompletedVoided,
        Reason::VoidedCredited,
        Reason::DecisionChanged,
        Reason::TermsMismatch,
        Reason::RevocationUnknownIssuer,
        Reason::RevocationSignatureInvalid,
        Reason::RevocationFull,
        Reason::WalletWrongInstitution,
        Reason::WalletUnknown,
        Reason::WalletCertificateMismatch,
        Reason::WalletSignature,
        Reason::WalletSatelliteTimeSkew,
        Reason::WalletDurationInconsistent,
        Reason::WalletKeySetReplayed,
        Reason::WalletKeyVersionLowered,
        Reason::WalletKeyUnknown,
        Reason::WalletRotationUncertified,
        Reason::WalletChainBroken,
        Reason::WalletSummaryMismatch,
        Reason::WalletRecordForeign,
        Reason::WalletRecordMalformed,
        Reason::WalletBlacklisted,
        Reason::OfflineSignature,
        Reason::OfflinePartyMismatch,
        Reason::OfflineCurrency,
        Reason::OfflineWrongPayee,
        Reason::OfflinePayerBlacklisted,
        Reason::OfflinePayerLocked,
        Reason::OfflineDoubleSpend,
        Reason::OfflineBeyondPurse,
        Reason::OfflineLimitExceeded,
        Reason::OfflineTimeInvalid,
        Reason::RemoteSignature,
        Reason::RemoteWrongIssuer,
        Reason::RemoteWrongWallet,
        Reason::RemoteOutOfOrder,
        Reason::RemoteUnsequenced,
        Reason::TelemetryWrongInstitution,
        Reason::TelemetryClockSkew,
        Reason::TelemetryVehicleMismatch,
        Reason::TelemetrySignatureInvalid,
        Reason::TelemetrySequenceGap,
        Reason::TelemetrySequenceReplayed,
        Reason::TelemetrySequenceConflict,
        Reason::TelemetryChainBroken,
        Reason::TelemetryTimeNotRising,
        Reason::EntityUnsigned,
        Reason::EntitySignatureInvalid,
        Reason::EntityWrongSigner,
        Reason::EntityStaleVersion,
        Reason::EntityVersionConflict,
        Reason::EntityInvalidGeofence,
        Reason::EntityRegistryFull,
        Reason::PreauthWrongInstitution,
        Reason::PreauthWalletMismatch,
        Reason::PreauthSignatureInvalid,
        Reason::PreauthExpired,
        Reason::PreauthNotYetValid,
        Reason::PreauthLifetimeTooLong,
        Reason::PreauthWrongEntity,
        Reason::PreauthWrongService,
        Reason::PreauthVehicleMismatch,
        Reason::PreauthExceeded,
        Reason::PreauthMissing,
        Reason::PreauthConflict,
        Reason::TariffVehicleClass,
        Reason::TariffUnitMismatch,
        Reason::TariffOverflow,
        Reason::TariffMissing,
        Reason::TariffStayTooLong,
        Reason::TariffTimeReversed,
        Reason::ReportSignatureInvalid,
        Reason::ReportEntityMismatch,
        Reason::ReportUnknownSession,
        Reason::ReportWrongSession,
    ];

    /// Every reason, each once: the unwrapped ones, then every certificate and schema kind.
    pub fn all() -> impl Iterator<Item = Reason> {
        Reason::UNWRAPPED
            .into_iter()
            .chain(CERTIFICATE_KINDS.map(Reason::Certificate))
            .chain(CodecErrorKind::ALL.map(Reason::Schema))
    }

    /// The stable code, e.g. `cert.expired`, `contradiction.completed_unknown`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Certificate(kind) => match kind {
                CertErrorKind::Malformed => "cert.malformed",
                CertErrorKind::TooLarge => "cert.too_large",
                CertErrorKind::UnknownIssuer => "cert.unknown_issuer",
                CertErrorKind::SignatureInvalid => "cert.signature_invalid",
                CertErrorKind::NotYetValid => "cert.not_yet_valid",
                CertErrorKind::Expired => "cert.expired",
                CertErrorKind::Revoked => "cert.revoked",
                CertErrorKind::NotCa => "cert.not_ca",
                CertErrorKind::UnexpectedCa => "cert.unexpected_ca",
                CertErrorKind::KeyUsage => "cert.key_usage",
                CertErrorKind::WrongRole => "cert.wrong_role",
                CertErrorKind::WrongIssuer => "cert.wrong_issuer",
                CertErrorKind::InstitutionMismatch => "cert.institution_mismatch",
                CertErrorKind::UnsupportedAlgorithm => "cert.unsupported_algorithm",
                CertErrorKind::PathTooLong => "cert.path_too_long",
                CertErrorKind::UnknownCriticalExtension => "cert.unknown_critical_extension",
            },
            // The codec's codes belong to the schemas crate, the contract without dependencies.
            Reason::Schema(kind) => kind.reason_code(),
            Reason::PayeeConsentSignature => "sig.payee_consent_invalid",
            Reason::PayerSignature => "sig.payer_invalid",
            Reason::InstitutionSignature => "sig.institution_invalid",
            Reason::FactorMismatch => "txn.factor_mismatch",
            Reason::PinRequired => "txn.pin_required",
            Reason::PinProofInvalid => "txn.pin_proof_invalid",
            Reason::PartyMismatch => "txn.party_mismatch",
            Reason::WrongInstitution => "txn.wrong_institution",
            Reason::CurrencyUnsupported => "txn.currency_unsupported",
            Reason::ClockSkew => "txn.clock_skew",
            Reason::Conflict => "txn.conflict",
            Reason::Timeout => "txn.timeout",
            Reason::InvalidRequest => "txn.invalid_request",
            Reason::PayerUnknownWallet => "payer.unknown_wallet",
            Reason::PayerWalletLocked => "payer.wallet_locked",
            Reason::SinglePaymentLimit => "limit.single_payment",
            Reason::DailyLimit => "limit.daily",
            Reason::InsufficientFunds => "funds.insufficient",
            Reason::PayeeUnknownWallet => "payee.unknown_wallet",
            Reason::PayeeWalletLocked => "payee.wallet_locked",
            Reason::PayeeBalanceLimit => "payee.balance_limit",
            Reason::UnknownPayment => "txn.unknown_payment",
            Reason::SettlementNotAClearing => "settlement.not_a_clearing",
            Reason::SettlementConflict => "settlement.conflict",
            Reason::SettlementMalformedClearing => "settlement.malformed_clearing",
            Reason::SettlementInvalidAmount => "settlement.invalid_amount",
            Reason::StageRetriesExhausted => "stage.retries_exhausted",
            Reason::StageFatal => "stage.fatal",
            Reason::StageLedgerRefused => "stage.ledger_refused",
            Reason::StageOutputRefused => "stage.output_refused",
            Reason::CompletedUnknown => "contradiction.completed_unknown",
            Reason::CompletedVoided => "contradiction.completed_voided",
            Reason::VoidedCredited => "contradiction.voided_credited",
            Reason::DecisionChanged => "contradiction.decision_changed",
            Reason::TermsMismatch => "contradiction.terms_mismatch",
            Reason::RevocationUnknownIssuer => "revocation.unknown_issuer",
            Reason::RevocationSignatureInvalid => "revocation.signature_invalid",
            Reason::RevocationFull => "revocation.full",
            Reason::WalletWrongInstitution => "wallet.wrong_institution",
            Reason::WalletUnknown => "wallet.unknown",
            Reason::WalletCertificateMismatch => "wallet.certificate_mismatch",
            Reason::WalletSignature => "wallet.signature_invalid",
            Reason::WalletSatelliteTimeSkew => "wallet.satellite_time_skew",
            Reason::WalletDurationInconsistent => "wallet.duration_inconsistent",
            Reason::WalletKeySetReplayed => "wallet.keyset_replayed",
            Reason::WalletKeyVersionLowered => "wallet.key_version_lowered",
            Reason::WalletKeyUnknown => "wallet.key_unknown",
            Reason::WalletRotationUncertified => "wallet.rotation_uncertified",
            Reason::WalletChainBroken => "wallet.chain_broken",
            Reason::WalletSummaryMismatch => "wallet.summary_mismatch",
            Reason::WalletRecordForeign => "wallet.record_foreign",
            Reason::WalletRecordMalformed => "wallet.record_malformed",
            Reason::WalletBlacklisted => "wallet.blacklisted",
            Reason::OfflineSignature => "offline.signature_invalid",
            Reason::OfflinePartyMismatch => "offline.party_mismatch",
            Reason::OfflineCurrency => "offline.currency_unsupported",
            Reason::OfflineWrongPayee => "offline.wrong_payee",
            Reason::OfflinePayerBlacklisted => "offline.payer_blacklisted",
            Reason::OfflinePayerLocked => "offline.payer_locked",
            Reason::OfflineDoubleSpend => "offline.double_spend",
            Reason::OfflineBeyondPurse => "offline.beyond_purse",
            Reason::OfflineLimitExceeded => "offline.limit_exceeded",
            Reason::OfflineTimeInvalid => "offline.time_invalid",
            Reason::RemoteSignature => "remote.signature_invalid",
            Reason::RemoteWrongIssuer => "remote.wrong_issuer",
            Reason::RemoteWrongWallet => "remote.wrong_wallet",
            Reason::RemoteOutOfOrder => "remote.out_of_order",
            Reason::RemoteUnsequenced => "remote.unsequenced",
            Reason::TelemetryWrongInstitution => "telemetry.wrong_institution",
            Reason::TelemetryClockSkew => "telemetry.clock_skew",
            Reason::TelemetryVehicleMismatch => "telemetry.vehicle_mismatch",
            Reason::TelemetrySignatureInvalid => "telemetry.signature_invalid",
            Reason::TelemetrySequenceGap => "telemetry.sequence_gap",
            Reason::TelemetrySequenceReplayed => "telemetry.sequence_replayed",
            Reason::TelemetrySequenceConflict => "telemetry.sequence_conflict",
            Reason::TelemetryChainBroken => "telemetry.chain_broken",
            Reason::TelemetryTimeNotRising => "telemetry.time_not_rising",
            Reason::EntityUnsigned => "entity.unsigned",
            Reason::EntitySignatureInvalid => "entity.signature_invalid",
            Reason::EntityWrongSigner => "entity.wrong_signer",
            Reason::EntityStaleVersion => "entity.stale_version",
            Reason::EntityVersionConflict => "entity.version_conflict",
            Reason::EntityInvalidGeofence => "entity.invalid_geofence",
            Reason::EntityRegistryFull => "entity.registry_full",
            Reason::PreauthWrongInstitution => "preauth.wrong_institution",
            Reason::PreauthWalletMismatch => "preauth.wallet_mismatch",
            Reason::PreauthSignatureInvalid => "preauth.signature_invalid",
            Reason::PreauthExpired => "preauth.expired",
            Reason::PreauthNotYetValid => "preauth.not_yet_valid",
            Reason::PreauthLifetimeTooLong => "preauth.lifetime_too_long",
            Reason::PreauthWrongEntity => "preauth.wrong_entity",
            Reason::PreauthWrongService => "preauth.wrong_service",
            Reason::PreauthVehicleMismatch => "preauth.vehicle_mismatch",
            Reason::PreauthExceeded => "preauth.exceeded",
            Reason::PreauthMissing => "preauth.missing",
            Reason::PreauthConflict => "preauth.conflict",
            Reason::TariffVehicleClass => "tariff.vehicle_class",
            Reason::TariffUnitMismatch => "tariff.unit_mismatch",
            Reason::TariffOverflow => "tariff.overflow",
            Reason::TariffMissing => "tariff.missing",
            Reason::TariffStayTooLong => "tariff.stay_too_long",
            Reason::TariffTimeReversed => "tariff.time_reversed",
            Reason::ReportSignatureInvalid => "report.signature_invalid",
            Reason::ReportEntityMismatch => "report.entity_mismatch",
            Reason::ReportUnknownSession => "report.unknown_session",
            Reason::ReportWrongSession => "report.wrong_session",
        }
    }

    /// The reason with this stable code, if there is one.
    pub fn parse(code: &str) -> Option<Reason> {
        Reason::all().find(|reason| reason.as_str() == code)
    }

    /// Whether this reason is a contradiction between institutions: one side's records say
    /// something the other's deny. Each is dead-lettered and logged at error level.
    pub fn is_contradiction(self) -> bool {
        matches!(
            self,
            Reason::CompletedUnknown
                | Reason::CompletedVoided
                | Reason::VoidedCredited
                | Reason::DecisionChanged
                | Reason::TermsMismatch
        )
    }

    /// The reason for a refusal by the payer's ledger.
    pub fn from_payer_refusal(refusal: &LedgerRefusal) -> Self {
        match refusal {
            LedgerRefusal::UnknownWallet => Reason::PayerUnknownWallet,
            LedgerRefusal::WalletLocked => Reason::PayerWalletLocked,
            LedgerRefusal::SinglePaymentLimit { .. } => Reason::SinglePaymentLimit,
            LedgerRefusal::DailyLimit { .. } => Reason::DailyLimit,
            LedgerRefusal::InsufficientFunds { .. } => Reason::InsufficientFunds,
            LedgerRefusal::BalanceLimit { .. } => Reason::PayeeBalanceLimit,
            LedgerRefusal::MalformedRequest | LedgerRefusal::InvalidAmount => {
                Reason::InvalidRequest
            }
        }
    }

    /// The reason for a refusal by the payee's ledger.
    pub fn from_payee_refusal(refusal: &LedgerRefusal) -> Self {
        match refusal {
            LedgerRefusal::UnknownWallet => Reason::PayeeUnknownWallet,
            LedgerRefusal::WalletLocked => Reason::PayeeWalletLocked,
            LedgerRefusal::BalanceLimit { .. } => Reason::PayeeBalanceLimit,
            other => Reason::from_payer_refusal(other),
        }
    }

    /// The reason a payer-side ledger record holds: one of ours, or a refusal the ledger
    /// recorded under its own code. `None` for a code this version does not know.
    pub fn of_payer_record(stored: &str) -> Option<Reason> {
        match stored_refusal(stored) {
            Some(refusal) => Some(Reason::from_payer_refusal(refusal)),
            None => Reason::parse(stored),
        }
    }

    /// The reason a payee-side ledger record holds (see [`Reason::of_payer_record`]).
    pub fn of_payee_record(stored: &str) -> Option<Reason> {
        match stored_refusal(stored) {
            Some(refusal) => Some(Reason::from_payee_refusal(refusal)),
            None => Reason::parse(stored),
        }
    }
}

/// The ledger refusal whose stored code is `stored`.
fn stored_refusal(stored: &str) -> Option<&'static LedgerRefusal> {
    LEDGER_REFUSALS
        .iter()
        .find(|refusal| refusal.reason_code() == stored)
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is no reason code of this version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason code {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(code: &str) -> Result<Self, UnknownReason> {
        Reason::parse(code).ok_or_else(|| UnknownReason(code.to_owned()))
    }
}

/// A rejection with its reason and a human-readable detail (not stable; no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The reason.
    pub reason: Reason,
    /// What exactly failed.
    pub detail: String,
}

impl Rejected {
    /// A rejection.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejected {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Fails to compile when a variant is added without a place in [`Reason::UNWRAPPED`],
    /// [`CERTIFICATE_KINDS`] or the codec's kinds.
    fn listed(reason: Reason) -> bool {
        match reason {
            Reason::Certificate(kind) => CERTIFICATE_KINDS.contains(&kind),
            Reason::Schema(kind) => CodecErrorKind::ALL.contains(&kind),
            Reason::PayeeConsentSignature
            | Reason::PayerSignature
            | Reason::InstitutionSignature
            | Reason::FactorMismatch
            | Reason::PinRequired
            | Reason::PinProofInvalid
            | Reason::PartyMismatch
            | Reason::WrongInstitution
            | Reason::CurrencyUnsupported
            | Reason::ClockSkew
            | Reason::Conflict
            | Reason::Timeout
            | Reason::InvalidRequest
            | Reason::PayerUnknownWallet
            | Reason::PayerWalletLocked
            | Reason::SinglePaymentLimit
            | Reason::DailyLimit
            | Reason::InsufficientFunds
            | Reason::PayeeUnknownWallet
            | Reason::PayeeWalletLocked
            | Reason::PayeeBalanceLimit
            | Reason::UnknownPayment
            | Reason::SettlementNotAClearing
            | Reason::SettlementConflict
            | Reason::SettlementMalformedClearing
            | Reason::SettlementInvalidAmount
            | Reason::StageRetriesExhausted
            | Reason::StageFatal
            | Reason::StageLedgerRefused
            | Reason::StageOutputRefused
            | Reason::CompletedUnknown
            | Reason::CompletedVoided
            | Reason::VoidedCredited
            | Reason::DecisionChanged
            | Reason::TermsMismatch
            | Reason::RevocationUnknownIssuer
            | Reason::RevocationSignatureInvalid
            | Reason::RevocationFull
            | Reason::WalletWrongInstitution
            | Reason::WalletUnknown
            | Reason::WalletCertificateMismatch
            | Reason::WalletSignature
            | Reason::WalletSatelliteTimeSkew
            | Reason::WalletDurationInconsistent
            | Reason::WalletKeySetReplayed
            | Reason::WalletKeyVersionLowered
            | Reason::WalletKeyUnknown
            | Reason::WalletRotationUncertified
            | Reason::WalletChainBroken
            | Reason::WalletSummaryMismatch
            | Reason::WalletRecordForeign
            | Reason::WalletRecordMalformed
            | Reason::WalletBlacklisted
            | Reason::OfflineSignature
            | Reason::OfflinePartyMismatch
            | Reason::OfflineCurrency
            | Reason::OfflineWrongPayee
            | Reason::OfflinePayerBlacklisted
            | Reason::OfflinePayerLocked
            | Reason::OfflineDoubleSpend
            | Reason::OfflineBeyondPurse
            | Reason::OfflineLimitExceeded
            | Reason::OfflineTimeInvalid
            | Reason::RemoteSignature
            | Reason::RemoteWrongIssuer
            | Reason::RemoteWrongWallet
            | Reason::RemoteOutOfOrder
            | Reason::RemoteUnsequenced
            | Reason::TelemetryWrongInstitution
            | Reason::TelemetryClockSkew
            | Reason::TelemetryVehicleMismatch
            | Reason::TelemetrySignatureInvalid
            | Reason::TelemetrySequenceGap
            | Reason::TelemetrySequenceReplayed
            | Reason::TelemetrySequenceConflict
            | Reason::TelemetryChainBroken
            | Reason::TelemetryTimeNotRising
            | Reason::EntityUnsigned
            | Reason::EntitySignatureInvalid
            | Reason::EntityWrongSigner
            | Reason::EntityStaleVersion
            | Reason::EntityVersionConflict
            | Reason::EntityInvalidGeofence
            | Reason::EntityRegistryFull
            | Reason::PreauthWrongInstitution
            | Reason::PreauthWalletMismatch
            | Reason::PreauthSignatureInvalid
            | Reason::PreauthExpired
            | Reason::PreauthNotYetValid
            | Reason::PreauthLifetimeTooLong
            | Reason::PreauthWrongEntity
            | Reason::PreauthWrongService
            | Reason::PreauthVehicleMismatch
            | Reason::PreauthExceeded
            | Reason::PreauthMissing
            | Reason::PreauthConflict
            | Reason::TariffVehicleClass
            | Reason::TariffUnitMismatch
            | Reason::TariffOverflow
            | Reason::TariffMissing
            | Reason::TariffStayTooLong
            | Reason::TariffTimeReversed
            | Reason::ReportSignatureInvalid
            | Reason::ReportEntityMismatch
            | Reason::ReportUnknownSession
            | Reason::ReportWrongSession => Reason::UNWRAPPED.contains(&reason),
        }
    }

    #[test]
    fn every_reason_is_listed_once_with_a_unique_dotted_code() {
        let mut codes = HashSet::new();
        let all: Vec<Reason> = Reason::all().collect();
        for reason in &all {
            assert!(listed(*reason), "{reason:?}");
            let code = reason.as_str();
            assert!(
                code.contains('.')
                    && code
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'),
                "{code}"
            );
            assert!(codes.insert(code), "duplicate code {code}");
        }
        assert_eq!(
            all.len(),
            Reason::UNWRAPPED.len() + CERTIFICATE_KINDS.len() + CodecErrorKind::ALL.len()
        );
    }

    #[test]
    fn codes_parse_back() {
        for reason in Reason::all() {
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(reason));
            assert_eq!(reason.to_string(), reason.as_str());
        }
        assert_eq!(
            "txn.nonsense".parse::<Reason>(),
            Err(UnknownReason("txn.nonsense".to_owned()))
        );
    }

    #[test]
    fn certificate_codes_are_the_pki_kinds_codes() {
        for kind in CERTIFICATE_KINDS {
            assert_eq!(Reason::Certificate(kind).as_str(), kind.reason_code());
        }
    }

    #[test]
    fn stored_ledger_refusals_map_to_each_sides_reason() {
        let unknown = LedgerRefusal::UnknownWallet.reason_code();
        assert_eq!(
            Reason::of_payer_record(unknown),
            Some(Reason::PayerUnknownWallet)
        );
        assert_eq!(
            Reason::of_payee_record(unknown),
            Some(Reason::PayeeUnknownWallet)
        );
        for refusal in &LEDGER_REFUSALS {
            assert!(Reason::of_payer_record(refusal.reason_code()).is_some());
        }
        assert_eq!(
            Reason::of_payer_record(Reason::Timeout.as_str()),
            Some(Reason::Timeout)
        );
        assert_eq!(Reason::of_payer_record("ledger.unheard_of"), None);
    }
}
