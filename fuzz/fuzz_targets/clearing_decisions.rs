//! The checks of the messages between institutions, on arbitrary bytes as the payee, commit
//! and finalize stages receive them: a clearing message (payee's institution), a clearing
//! response (payer's), an outcome (payee's), against the vectors' PKI at the vectors' time.
//! Each is accepted or refused with a reason code, never a panic; an accepted one names the
//! institution that checks it.
#![no_main]

use dcpipe_fuzz::{INSTITUTION, NOW_MS, PAYEE_INSTITUTION, verifier, verifier_sm2};
use dcpipe_pipeline::clearing::verify::{
    verify_clearing_message, verify_clearing_response, verify_outcome,
};
use dcpipe_schemas::{ClearingMessage, ClearingResponse, PaymentOutcome, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for verifier in [verifier(), verifier_sm2()] {
        if let Ok(message) = decode::<ClearingMessage>(data) {
            match verify_clearing_message(&message, PAYEE_INSTITUTION, verifier, NOW_MS) {
                Ok(_) => assert_eq!(message.payee.institution_id, PAYEE_INSTITUTION),
                Err(rejected) => assert!(!rejected.reason.as_str().is_empty()),
            }
        }
        if let Ok(response) = decode::<ClearingResponse>(data) {
            match verify_clearing_response(&response, INSTITUTION, verifier, NOW_MS) {
                Ok(_) => assert_eq!(response.payer_institution_id, INSTITUTION),
                Err(rejected) => assert!(!rejected.reason.as_str().is_empty()),
            }
        }
        if let Ok(outcome) = decode::<PaymentOutcome>(data) {
            match verify_outcome(&outcome, verifier, NOW_MS) {
                Ok(_) => assert_eq!(outcome.decided_by, outcome.payer.institution_id),
                Err(rejected) => assert!(!rejected.reason.as_str().is_empty()),
            }
        }
    }
});
