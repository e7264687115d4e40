//! The signing-input builders on every message a frame decodes to: each builds its bytes
//! without panicking, deterministically, starting with its domain tag (length-prefixed), and
//! two messages that differ give different bytes or equal digests only when equal.
#![no_main]

use dcpipe_pipeline::protocol::{
    self, TAG_CLEARING_MESSAGE, TAG_CLEARING_RESPONSE, TAG_OFFLINE_PAYMENT, TAG_PAYER_ENVELOPE,
    TAG_PAYMENT_OUTCOME, TAG_REMOTE_CONTROL_COMMAND, TAG_REVOCATION_UPDATE,
    TAG_SETTLEMENT_INSTRUCTION, TAG_WALLET_SYNC_RESULT,
};
use dcpipe_pipeline::vehicle::signed as vehicle;
use dcpipe_schemas::{
    ClearingMessage, ClearingResponse, Message, OfflinePayment, PaymentOutcome,
    RemoteControlCommand, RevocationUpdate, ServiceAuthorization, ServiceCompleteReport,
    ServiceEntity, SettlementInstruction, TransactionEnvelope, VehicleTelemetry,
    VehicleTelemetryBatch, WalletKeySet, WalletSyncResult, decode,
};
use libfuzzer_sys::fuzz_target;

/// Builds the signing input of the `M` that `data` decodes to, twice, and checks it.
fn check<M: Message>(data: &[u8], tag: Option<&str>, build: impl Fn(&M) -> Vec<u8>) {
    let Ok(message) = decode::<M>(data) else {
        return;
    };
    let bytes = build(&message);
    assert_eq!(bytes, build(&message), "not deterministic");
    if let Some(tag) = tag {
        let length = u16::try_from(tag.len()).expect("short tag").to_be_bytes();
        assert!(bytes.starts_with(&length), "no tag length");
        assert!(bytes[2..].starts_with(tag.as_bytes()), "no tag");
    }
}

fuzz_target!(|data: &[u8]| {
    check::<TransactionEnvelope>(
        data,
        Some(TAG_PAYER_ENVELOPE),
        protocol::payer_envelope_bytes,
    );
    check::<TransactionEnvelope>(data, None, |e| {
        let digest = protocol::envelope_digest(e);
        protocol::payee_consent_bytes(&digest)
            .into_iter()
            .chain(digest.as_bytes().iter().copied())
            .collect()
    });
    check::<ClearingMessage>(
        data,
        Some(TAG_CLEARING_MESSAGE),
        protocol::clearing_message_bytes,
    );
    check::<ClearingResponse>(
        data,
        Some(TAG_CLEARING_RESPONSE),
        protocol::clearing_response_bytes,
    );
    check::<PaymentOutcome>(
        data,
        Some(TAG_PAYMENT_OUTCOME),
        protocol::payment_outcome_bytes,
    );
    check::<SettlementInstruction>(
        data,
        Some(TAG_SETTLEMENT_INSTRUCTION),
        protocol::settlement_instruction_bytes,
    );
    check::<RevocationUpdate>(
        data,
        Some(TAG_REVOCATION_UPDATE),
        protocol::revocation_update_bytes,
    );
    check::<OfflinePayment>(
        data,
        Some(TAG_OFFLINE_PAYMENT),
        protocol::offline_payment_bytes,
    );
    check::<WalletKeySet>(data, None, |set| protocol::wallet_key_set_bytes(set, &[]));
    check::<WalletSyncResult>(
        data,
        Some(TAG_WALLET_SYNC_RESULT),
        protocol::wallet_sync_result_bytes,
    );
    check::<RemoteControlCommand>(
        data,
        Some(TAG_REMOTE_CONTROL_COMMAND),
        protocol::remote_control_command_bytes,
    );
    check::<VehicleTelemetryBatch>(data, None, vehicle::telemetry_batch_bytes);
    check::<VehicleTelemetry>(data, None, vehicle::telemetry_report_bytes);
    check::<ServiceEntity>(data, None, vehicle::service_entity_bytes);
    check::<ServiceAuthorization>(data, None, vehicle::service_authorization_bytes);
    check::<ServiceCompleteReport>(data, None, vehicle::service_complete_report_bytes);
    let _ = protocol::submission_digest(data);
    let _ = protocol::certificate_fingerprint(data);
});
