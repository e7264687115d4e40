//! Every message decoder on arbitrary bytes, as a stage, a follower or an audit receives them:
//! a frame either decodes or is refused with a typed error, never a panic; what decodes encodes
//! again to a frame that decodes to the same message; and the schema-less decoder of the
//! operator's tools (`decode_any`, its JSON) agrees on what is a frame.
#![no_main]

use dcpipe_schemas::{
    ClearingMessage, ClearingResponse, DeadLetter, Message, OfflinePayment, PaymentOutcome,
    RemoteControlCommand, RevocationUpdate, ServiceAuthorization, ServiceCompleteReport,
    ServiceEntity, SettlementInstruction, SettlementPosition, TransactionEnvelope,
    VehicleTelemetry, VehicleTelemetryBatch, WalletKeySet, WalletSyncResult, decode, decode_any,
    encode,
};
use libfuzzer_sys::fuzz_target;

/// Decodes `data` as `M`; when it decodes, its encoding decodes to the same message.
fn round_trip<M: Message + PartialEq + std::fmt::Debug>(data: &[u8]) -> bool {
    let Ok(message) = decode::<M>(data) else {
        return false;
    };
    let frame = encode(&message).expect("a decoded message encodes");
    let again = decode::<M>(&frame).expect("an encoded message decodes");
    assert_eq!(again, message);
    true
}

fuzz_target!(|data: &[u8]| {
    let decoded = [
        round_trip::<TransactionEnvelope>(data),
        round_trip::<PaymentOutcome>(data),
        round_trip::<ClearingMessage>(data),
        round_trip::<ClearingResponse>(data),
        round_trip::<SettlementPosition>(data),
        round_trip::<SettlementInstruction>(data),
        round_trip::<RevocationUpdate>(data),
        round_trip::<DeadLetter>(data),
        round_trip::<VehicleTelemetry>(data),
        round_trip::<VehicleTelemetryBatch>(data),
        round_trip::<ServiceAuthorization>(data),
        round_trip::<ServiceEntity>(data),
        round_trip::<ServiceCompleteReport>(data),
        round_trip::<WalletKeySet>(data),
        round_trip::<WalletSyncResult>(data),
        round_trip::<RemoteControlCommand>(data),
        round_trip::<OfflinePayment>(data),
    ];
    // A frame is one message: at most one type reads it.
    assert!(decoded.iter().filter(|d| **d).count() <= 1);
    if let Ok(any) = decode_any(data) {
        let json = any.to_json();
        assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    }
});
