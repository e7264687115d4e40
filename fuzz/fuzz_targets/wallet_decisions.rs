//! The offline wallets' checks on arbitrary bytes: an offline payment frame as the platform
//! clears it, and a remote control command as a wallet receives it, against the vectors' PKI.
//! Accepted or refused with a reason code, never a panic.
#![no_main]

use dcpipe_fuzz::{verifier, verifier_sm2};
use dcpipe_pipeline::wallet::{verify_command, verify_offline_payment_frame};
use dcpipe_schemas::{PartyRef, RemoteControlCommand, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for verifier in [verifier(), verifier_sm2()] {
        if let Err(rejected) = verify_offline_payment_frame(data, verifier) {
            assert!(!rejected.reason.as_str().is_empty());
        }
        if let Ok(command) = decode::<RemoteControlCommand>(data) {
            let wallet = PartyRef {
                institution_id: command.institution_id.clone(),
                wallet_id: command.wallet_id.clone(),
            };
            if let Err(rejected) = verify_command(&command, &wallet, verifier) {
                assert!(!rejected.reason.as_str().is_empty());
            }
        }
    }
});
