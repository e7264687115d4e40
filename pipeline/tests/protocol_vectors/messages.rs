//! The message vectors of one algorithm: one payment from the touch to settlement, and a
//! revocation, built with the production builders from fixed fields and the fixed keys of
//! [`World`]. Each entry holds the fields that enter its signing input (as named in
//! `pipeline/src/protocol/layout.rs`), the input, the digest the algorithm signs, the signature
//! and, for whole messages, the Confluent frame.

use dcpipe_pipeline::pki::{Algorithm, CertifiedKey, sha256, sm3};
use dcpipe_pipeline::protocol::layout::{
    CLEARING_MESSAGE, CLEARING_RESPONSE, PAYEE_CONSENT, PAYER_ENVELOPE, PAYMENT_OUTCOME, PIN_PROOF,
    REVOCATION_UPDATE, SETTLEMENT_INSTRUCTION, TRANSACTION_FACTOR,
};
use dcpipe_pipeline::protocol::{
    FactorHash, FactorInput, SigningLayout, clearing_message_bytes, clearing_response_bytes,
    envelope_digest, payee_consent_bytes, payer_envelope_bytes, payment_outcome_bytes,
    pin_proof_bytes, revocation_update_bytes, settlement_instruction_bytes, submission_digest,
    transaction_factor,
};
use dcpipe_schemas::{
    Channel, ClearingMessage, ClearingResponse, ClearingStatus, Digest32, InstructionId, Nonce,
    OutcomeStatus, PartyRef, PaymentId, PaymentOutcome, PinProof, RevocationUpdate,
    RevocationUpdateId, RevokedCertificate, SettlementInstruction, SettlementPosition,
    TransactionEnvelope,
};
use serde_json::{Map, Value, json};

use super::algorithm_name;
use super::world::{World, sm2_z};

/// The payer terminal's clock at the touch: 2025-11-24T16:00:00Z.
pub(crate) const CREATED_AT_MS: i64 = 1_764_000_000_000;
/// The amount: 1,234.56 CNY, above the default password-free limit of 1,000 CNY.
const AMOUNT_FEN: i64 = 123_456;
/// Settlement windows of the default length, 60 s.
const WINDOW_MS: i64 = 60_000;

fn hex_value(bytes: &[u8]) -> Value {
    Value::String(hex::encode(bytes))
}

fn party_value(party: &PartyRef) -> Value {
    json!({"institution_id": party.institution_id, "wallet_id": party.wallet_id})
}

fn fingerprint(der: &[u8]) -> Value {
    hex_value(&sha256(der))
}

/// The entries of one algorithm, signing with the world's keys, or keeping a signature of the
/// previous file that still verifies over the same input (ECDSA and SM2 signatures are
/// randomized, so signing again would rewrite every signature).
struct Entries<'a> {
    world: &'a World,
    previous: Option<&'a Value>,
    out: Map<String, Value>,
}

impl Entries<'_> {
    fn add(&mut self, entry: &str, name: &str, value: Value) {
        let Some(Value::Object(object)) = self.out.get_mut(entry) else {
            panic!("no entry {entry}");
        };
        object.insert(name.to_owned(), value);
    }

    /// Signs `input` as `signer`, records the entry, returns the signature.
    fn sign(
        &mut self,
        entry: &str,
        layout: &SigningLayout,
        signer: &str,
        fields: Value,
        input: &[u8],
    ) -> Vec<u8> {
        let key: &CertifiedKey = self.world.party(signer);
        let public_key = key.key().public_key();
        let previous = self
            .previous
            .and_then(|p| {
                p["signed"][algorithm_name(self.world.algorithm)][entry]["signature"].as_str()
            })
            .and_then(|h| hex::decode(h).ok())
            .filter(|signature| public_key.verify(input, signature).is_ok());
        let signature = previous.unwrap_or_else(|| key.key().sign(input).expect("signs"));
        let mut value = json!({
            "layout": layout.name,
            "signed_by": signer,
            "fields": fields,
            "signing_input": hex::encode(input),
            "signature": hex::encode(&signature),
        });
        match self.world.algorithm {
            Algorithm::EcdsaP256Sha256 => {
                value["signed_digest"] = hex_value(&sha256(input));
            }
            Algorithm::Sm2Sm3 => {
                let z = sm2_z(public_key.sec1_point());
                value["sm2_z"] = hex_value(&z);
                value["signed_digest"] = hex_value(&sm3(&[&z[..], input].concat()));
            }
        }
        self.out.insert(entry.to_owned(), value);
        signature
    }
}

fn envelope_fields(envelope: &TransactionEnvelope) -> Value {
    json!({
        "transaction_factor": hex_value(envelope.transaction_factor.as_bytes()),
        "payee_signature": hex_value(&envelope.payee_signature),
        "pin_proof": envelope.pin_proof.as_ref().map(|proof| json!({
            "secure_element_certificate": fingerprint(&proof.secure_element_certificate),
            "verified_at_ms": proof.verified_at_ms,
            "signature": hex_value(&proof.signature),
        })),
    })
}

fn outcome_fields(outcome: &PaymentOutcome) -> Value {
    json!({
        "payment_id": hex_value(outcome.payment_id.as_bytes()),
        "envelope_digest": hex_value(outcome.envelope_digest.as_bytes()),
        "status": match outcome.status {
            OutcomeStatus::Completed => "COMPLETED",
            OutcomeStatus::Rejected => "REJECTED",
        },
        "reason_code": outcome.reason_code,
        "detail": outcome.detail,
        "payer": party_value(&outcome.payer),
        "payee": party_value(&outcome.payee),
        "amount_fen": outcome.amount_fen,
        "currency": outcome.currency,
        "decided_at_ms": outcome.decided_at_ms,
        "decided_by": outcome.decided_by,
        "stage": outcome.stage,
        "institution_certificate": fingerprint(&outcome.institution_certificate),
    })
}

fn frame<M: dcpipe_schemas::Message>(message: &M) -> Vec<u8> {
    dcpipe_schemas::encode(message).expect("a vector message encodes")
}

/// The `signed` section of one algorithm.
pub(crate) fn message_vectors(world: &World, previous: Option<&Value>) -> Value {
    let mut entries = Entries {
        world,
        previous,
        out: Map::new(),
    };
    let payer_terminal = world.party("payer_terminal").certificate();
    let payee_terminal = world.party("payee_terminal").certificate();
    let secure_element = world.party("payer_secure_element").certificate();
    let oi01_signer = world.party("oi01_signer").certificate();
    let oi02_signer = world.party("oi02_signer").certificate();

    // The touch: the factor, the payee's consent, the PIN proof.
    let payment_id = PaymentId::from_bytes([
        0x01, 0x9a, 0xb6, 0x97, 0xe8, 0x00, 0x7c, 0x3d, 0x9e, 0x5f, 0x41, 0x52, 0x63, 0x74, 0x85,
        0x96,
    ]);
    let payer = PartyRef {
        institution_id: "oi01".into(),
        wallet_id: "w-oi01-000001".into(),
    };
    let payee = PartyRef {
        institution_id: "oi02".into(),
        wallet_id: "w-oi02-000002".into(),
    };
    let payer_nonce = Nonce::from_bytes([0xa1; 32]);
    let payee_nonce = Nonce::from_bytes([0xb2; 32]);
    let factor_input = FactorInput {
        payment_id: &payment_id,
        payer: &payer,
        payee: &payee,
        amount_fen: AMOUNT_FEN,
        currency: "CNY",
        created_at_ms: CREATED_AT_MS,
        channel: Channel::Nfc,
        payer_nonce: &payer_nonce,
        payee_nonce: &payee_nonce,
        payer_certificate_fingerprint: payer_terminal.fingerprint(),
        payee_certificate_fingerprint: payee_terminal.fingerprint(),
    };
    let hash = FactorHash::for_payer(world.algorithm);
    let factor = transaction_factor(&factor_input, hash);
    entries.out.insert(
        "transaction_factor".to_owned(),
        json!({
            "layout": TRANSACTION_FACTOR.name,
            "fields": {
                "payment_id": hex_value(payment_id.as_bytes()),
                "payer": party_value(&payer),
                "payee": party_value(&payee),
                "amount_fen": AMOUNT_FEN,
                "currency": "CNY",
                "created_at_ms": CREATED_AT_MS,
                "channel": "NFC",
                "payer_nonce": hex_value(payer_nonce.as_bytes()),
                "payee_nonce": hex_value(payee_nonce.as_bytes()),
                "payer_certificate": hex_value(payer_terminal.fingerprint()),
                "payee_certificate": hex_value(payee_terminal.fingerprint()),
            },
            "signing_input": hex::encode(factor_input.signing_input().as_bytes()),
            "factor_hash": match hash { FactorHash::Sha256 => "SHA-256", FactorHash::Sm3 => "SM3" },
            "transaction_factor": hex_value(factor.as_bytes()),
        }),
    );
    let payee_signature = entries.sign(
        "payee_consent",
        &PAYEE_CONSENT,
        "payee_terminal",
        json!({"transaction_factor": hex_value(factor.as_bytes())}),
        &payee_consent_bytes(&factor),
    );
    let verified_at_ms = CREATED_AT_MS + 1_500;
    let pin_signature = entries.sign(
        "pin_proof",
        &PIN_PROOF,
        "payer_secure_element",
        json!({
            "transaction_factor": hex_value(factor.as_bytes()),
            "payer.wallet_id": payer.wallet_id,
            "pin_proof.verified_at_ms": verified_at_ms,
        }),
        &pin_proof_bytes(&factor, &payer.wallet_id, verified_at_ms),
    );

    // The envelope, with the PIN proof (as a terminal makes it above the password-free limit)
    // and without it (as below the limit).
    let unsigned_envelope = |pin_proof: Option<PinProof>| TransactionEnvelope {
        payment_id,
        payer: payer.clone(),
        payee: payee.clone(),
        amount_fen: AMOUNT_FEN,
        currency: "CNY".to_owned(),
        created_at_ms: CREATED_AT_MS,
        channel: Channel::Nfc,
        payer_nonce,
        payee_nonce,
        payer_certificate: payer_terminal.der().to_vec(),
        payee_certificate: payee_terminal.der().to_vec(),
        transaction_factor: factor,
        payee_signature: payee_signature.clone(),
        pin_proof,
        payer_signature: Vec::new(),
    };
    let mut envelopes = Vec::new();
    for (entry, pin_proof) in [
        (
            "payer_envelope",
            Some(PinProof {
                secure_element_certificate: secure_element.der().to_vec(),
                verified_at_ms,
                signature: pin_signature.clone(),
            }),
        ),
        ("payer_envelope_without_pin_proof", None),
    ] {
        let mut envelope = unsigned_envelope(pin_proof);
        envelope.payer_signature = entries.sign(
            entry,
            &PAYER_ENVELOPE,
            "payer_terminal",
            envelope_fields(&envelope),
            &payer_envelope_bytes(&envelope),
        );
        let envelope_frame = frame(&envelope);
        entries.add(
            entry,
            "envelope_digest",
            hex_value(envelope_digest(&envelope).as_bytes()),
        );
        entries.add(
            entry,
            "submission_digest",
            hex_value(submission_digest(&envelope_frame).as_bytes()),
        );
        entries.add(entry, "frame", hex_value(&envelope_frame));
        envelopes.push((envelope, envelope_frame));
    }
    let (envelope, _) = &envelopes[0];
    let digest = envelope_digest(envelope);

    // The payer institution reserves and asks the payee institution to credit.
    let reserved_at_ms = CREATED_AT_MS + 200;
    let mut clearing = ClearingMessage {
        payment_id,
        payer: payer.clone(),
        payee: payee.clone(),
        amount_fen: AMOUNT_FEN,
        currency: "CNY".to_owned(),
        transaction_factor: factor,
        envelope_digest: digest,
        reserved_at_ms,
        expires_at_ms: reserved_at_ms + 30_000,
        institution_certificate: oi01_signer.der().to_vec(),
        institution_signature: Vec::new(),
    };
    clearing.institution_signature = entries.sign(
        "clearing_message",
        &CLEARING_MESSAGE,
        "oi01_signer",
        json!({
            "payment_id": hex_value(payment_id.as_bytes()),
            "payer": party_value(&payer),
            "payee": party_value(&payee),
            "amount_fen": AMOUNT_FEN,
            "currency": "CNY",
            "transaction_factor": hex_value(factor.as_bytes()),
            "envelope_digest": hex_value(digest.as_bytes()),
            "reserved_at_ms": clearing.reserved_at_ms,
            "expires_at_ms": clearing.expires_at_ms,
            "institution_certificate": fingerprint(oi01_signer.der()),
        }),
        &clearing_message_bytes(&clearing),
    );
    entries.add("clearing_message", "frame", hex_value(&frame(&clearing)));

    // The payee institution accepts.
    let mut response = ClearingResponse {
        payment_id,
        payer_institution_id: payer.institution_id.clone(),
        payee_institution_id: payee.institution_id.clone(),
        status: ClearingStatus::Accepted,
        reason_code: None,
        amount_fen: AMOUNT_FEN,
        responded_at_ms: reserved_at_ms + 350,
        institution_certificate: oi02_signer.der().to_vec(),
        institution_signature: Vec::new(),
    };
    response.institution_signature = entries.sign(
        "clearing_response",
        &CLEARING_RESPONSE,
        "oi02_signer",
        json!({
            "payment_id": hex_value(payment_id.as_bytes()),
            "payer_institution_id": response.payer_institution_id,
            "payee_institution_id": response.payee_institution_id,
            "status": "ACCEPTED",
            "reason_code": null,
            "amount_fen": AMOUNT_FEN,
            "responded_at_ms": response.responded_at_ms,
            "institution_certificate": fingerprint(oi02_signer.der()),
        }),
        &clearing_response_bytes(&response),
    );
    entries.add("clearing_response", "frame", hex_value(&frame(&response)));

    // The payer institution commits and tells everyone.
    let decided_at_ms = response.responded_at_ms + 100;
    let mut completed = PaymentOutcome {
        payment_id,
        envelope_digest: digest,
        status: OutcomeStatus::Completed,
        reason_code: None,
        detail: "cleared".to_owned(),
        payer: payer.clone(),
        payee: payee.clone(),
        amount_fen: AMOUNT_FEN,
        currency: "CNY".to_owned(),
        decided_at_ms,
        decided_by: payer.institution_id.clone(),
        stage: "commit".to_owned(),
        institution_certificate: oi01_signer.der().to_vec(),
        institution_signature: Vec::new(),
    };
    completed.institution_signature = entries.sign(
        "payment_outcome",
        &PAYMENT_OUTCOME,
        "oi01_signer",
        outcome_fields(&completed),
        &payment_outcome_bytes(&completed),
    );
    entries.add("payment_outcome", "frame", hex_value(&frame(&completed)));

    // The envelope without PIN proof, submitted three minutes late: refused before its payer
    // is authenticated, so answered under its submission digest.
    let (_, late_frame) = &envelopes[1];
    let mut refused = PaymentOutcome {
        envelope_digest: submission_digest(late_frame),
        status: OutcomeStatus::Rejected,
        reason_code: Some("txn.clock_skew".to_owned()),
        detail: "envelope time is 180000 ms from the institution's clock (at most 120000)"
            .to_owned(),
        decided_at_ms: CREATED_AT_MS + 180_000,
        stage: "payer".to_owned(),
        institution_signature: Vec::new(),
        ..completed.clone()
    };
    refused.institution_signature = entries.sign(
        "payment_outcome_unauthenticated_rejection",
        &PAYMENT_OUTCOME,
        "oi01_signer",
        outcome_fields(&refused),
        &payment_outcome_bytes(&refused),
    );
    entries.add(
        "payment_outcome_unauthenticated_rejection",
        "frame",
        hex_value(&frame(&refused)),
    );

    // The central bank settles the window of the decision.
    let window_id = decided_at_ms / WINDOW_MS;
    let (start_ms, end_ms) = (window_id * WINDOW_MS, (window_id + 1) * WINDOW_MS);
    let position = |institution: &str, debit_fen: i64, credit_fen: i64| SettlementPosition {
        window_id,
        window_start_at_ms: start_ms,
        window_end_at_ms: end_ms,
        institution_id: institution.to_owned(),
        net_fen: credit_fen - debit_fen,
        debit_fen,
        credit_fen,
        clearing_count: 1,
    };
    let mut instruction_id = [0u8; 16];
    instruction_id.copy_from_slice(
        &sha256(format!("dcpipe/v1/settlement-window/{window_id}").as_bytes())[..16],
    );
    let settlement_signer = world.party("settlement_signer").certificate();
    let mut instruction = SettlementInstruction {
        instruction_id: InstructionId::from_bytes(instruction_id),
        window_id,
        window_start_at_ms: start_ms,
        window_end_at_ms: end_ms,
        positions: vec![
            position("oi01", AMOUNT_FEN, 0),
            position("oi02", 0, AMOUNT_FEN),
        ],
        late_clearing_count: 0,
        late_amount_fen: 0,
        issued_at_ms: end_ms,
        issuer_certificate: settlement_signer.der().to_vec(),
        signature: Vec::new(),
    };
    let positions: Vec<Value> = instruction
        .positions
        .iter()
        .map(|p| {
            json!({
                "institution_id": p.institution_id,
                "net_fen": p.net_fen,
                "debit_fen": p.debit_fen,
                "credit_fen": p.credit_fen,
                "clearing_count": p.clearing_count,
            })
        })
        .collect();
    instruction.signature = entries.sign(
        "settlement_instruction",
        &SETTLEMENT_INSTRUCTION,
        "settlement_signer",
        json!({
            "instruction_id": hex_value(&instruction_id),
            "window_id": window_id,
            "window_start_at_ms": start_ms,
            "window_end_at_ms": end_ms,
            "positions": positions,
            "late_clearing_count": 0,
            "late_amount_fen": 0,
            "issued_at_ms": end_ms,
            "issuer_certificate": fingerprint(settlement_signer.der()),
        }),
        &settlement_instruction_bytes(&instruction),
    );
    entries.add(
        "settlement_instruction",
        "frame",
        hex_value(&frame(&instruction)),
    );

    // Later, the payer's institution CA revokes the payer's terminal and secure element.
    let ca = world.party("oi01_ca").certificate();
    let revoked_at_ms = CREATED_AT_MS + 600_000;
    let mut update = RevocationUpdate {
        update_id: RevocationUpdateId::from_bytes([
            0x01, 0x9a, 0xb6, 0xa1, 0x0f, 0xc0, 0x7e, 0x11, 0xa2, 0x33, 0x44, 0x55, 0x66, 0x77,
            0x88, 0x99,
        ]),
        sequence: 1,
        issuer_fingerprint: Digest32::from_bytes(*ca.fingerprint()),
        revoked: vec![
            RevokedCertificate {
                serial: payer_terminal.serial().to_vec(),
                revoked_at_ms,
                reason: "keyCompromise".to_owned(),
            },
            RevokedCertificate {
                serial: secure_element.serial().to_vec(),
                revoked_at_ms,
                reason: "cessationOfOperation".to_owned(),
            },
        ],
        issued_at_ms: revoked_at_ms,
        issuer_certificate: ca.der().to_vec(),
        signature: Vec::new(),
    };
    let revoked: Vec<Value> = update
        .revoked
        .iter()
        .map(|r| {
            json!({
                "serial": hex_value(&r.serial),
                "revoked_at_ms": r.revoked_at_ms,
                "reason": r.reason,
            })
        })
        .collect();
    update.signature = entries.sign(
        "revocation_update",
        &REVOCATION_UPDATE,
        "oi01_ca",
        json!({
            "update_id": hex_value(update.update_id.as_bytes()),
            "sequence": 1,
            "issuer_fingerprint": hex_value(ca.fingerprint()),
            "revoked": revoked,
            "issued_at_ms": revoked_at_ms,
            "issuer_certificate": fingerprint(ca.der()),
        }),
        &revocation_update_bytes(&update),
    );
    entries.add("revocation_update", "frame", hex_value(&frame(&update)));

    Value::Object(entries.out)
}
