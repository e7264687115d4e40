//! The payer institution's decision on a submission, on arbitrary bytes as the payer stage
//! receives them: decoded, then every check of docs/PROTOCOL.md §6 against the vectors' PKI at
//! the vectors' time. Bytes are refused with a schema code or the envelope with a reason code,
//! never a panic; an accepted envelope is for this institution, in CNY, for a positive amount.
#![no_main]

use dcpipe_fuzz::{INSTITUTION, NOW_MS, verifier, verifier_sm2};
use dcpipe_pipeline::payment::{PaymentPolicy, verify_envelope};
use dcpipe_schemas::{TransactionEnvelope, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = decode::<TransactionEnvelope>(data) else {
        return;
    };
    let policy = PaymentPolicy::default();
    for verifier in [verifier(), verifier_sm2()] {
        match verify_envelope(&envelope, INSTITUTION, verifier, &policy, NOW_MS) {
            Ok(_) => {
                assert_eq!(envelope.payer.institution_id, INSTITUTION);
                assert_eq!(envelope.currency, "CNY");
                assert!(envelope.amount_fen > 0);
            }
            Err(rejection) => assert!(!rejection.rejected.reason.as_str().is_empty()),
        }
    }
});
