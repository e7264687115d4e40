//! Charging: each session's one charge, recorded in the session store, travels the clearing
//! path of every payment (`crate::clearing`): reserved on the vehicle's wallet at this
//! institution, a clearing message to the institution of the entity's wallet, its answer, the
//! commit or void, the outcome to both institutions (the vehicle reads it on
//! `txn.result.<oi>` by the payment id it derives from its session) and settlement.
//!
//! The stages call it after their store commit, and again whenever a message they handle was
//! applied before (a redelivery, a restarted worker): the ledger knows each charge by its
//! payment id and digest, so reserving again moves no money and only repeats the first answer.

use std::collections::{BTreeMap, HashMap};

use dcpipe_connectors::bus::{Outgoing, Position};
use dcpipe_connectors::ledger::{PaymentState, Side};
use dcpipe_connectors::session::ChargeRecord;
use dcpipe_schemas::{Digest32, PartyRef, PaymentId};

use super::backend::VehicleInstitution;
use super::matching::RefusedCharge;
use super::signed::charge_digest;
use crate::clearing::payer::{answer_reservation, rejection, reserve};
use crate::clearing::{Audience, Authorization, AuthorizationKind, PaymentIntent};
use crate::runtime::StageError;
use crate::terminal::CURRENCY;

fn party_ref(party: &dcpipe_connectors::ledger::Party) -> PartyRef {
    PartyRef {
        institution_id: party.institution_id.clone(),
        wallet_id: party.wallet_id.clone(),
    }
}

/// The intent to pay of a charge made under the pre-authorization whose digest is
/// `authorization_digest`.
pub fn charge_intent(charge: &ChargeRecord, authorization_digest: Digest32) -> PaymentIntent {
    let payment_id = PaymentId::from_bytes(charge.payment_id.0);
    let payer = party_ref(&charge.payer);
    let payee = party_ref(&charge.payee);
    PaymentIntent {
        payment_id,
        authorization: Authorization {
            kind: AuthorizationKind::VehicleCharge,
            digest: charge_digest(
                &payment_id,
                &charge.session_id,
                &charge.authorization_id,
                &charge.vehicle_id,
                &payer,
                &payee,
                charge.amount_fen,
                charge.due_at_ms,
            ),
            binding: authorization_digest,
        },
        payer,
        payee,
        amount_fen: charge.amount_fen,
        currency: CURRENCY.to_owned(),
        paid_at_ms: charge.due_at_ms,
    }
}

/// Reserves `charges` (one ledger transaction) and returns the clearing messages, or the first
/// answers of charges reserved before, or their rejections (limits, funds). `stage` names the
/// stage that rejects; `position` the message that led to them.
pub async fn clear_charges(
    vehicles: &VehicleInstitution,
    charges: &[ChargeRecord],
    position: Position,
    now_ms: i64,
    stage: &str,
) -> Result<Vec<Outgoing>, StageError> {
    if charges.is_empty() {
        return Ok(Vec::new());
    }
    // The digest of each pre-authorization a charge goes under: what binds the payment to the
    // wallet's consent.
    let mut digests: HashMap<[u8; 16], [u8; 32]> = HashMap::new();
    let vehicle_ids: BTreeMap<&str, ()> = charges
        .iter()
        .map(|c| (c.vehicle_id.as_str(), ()))
        .collect();
    for vehicle_id in vehicle_ids.keys() {
        for held in vehicles.store.authorizations(vehicle_id).await? {
            digests.insert(held.hold.authorization_id, held.hold.digest);
        }
    }
    let intents: Vec<PaymentIntent> = charges
        .iter()
        .map(|charge| {
            let digest = digests
                .get(&charge.authorization_id)
                .copied()
                .unwrap_or([0; 32]);
            charge_intent(charge, Digest32::from_bytes(digest))
        })
        .collect();
    let inst = &vehicles.institution;
    let refs: Vec<&PaymentIntent> = intents.iter().collect();
    let results = reserve(inst, &refs, now_ms).await?;
    let mut outputs = Vec::new();
    for (intent, result) in intents.iter().zip(&results) {
        metrics::counter!("dcpipe_vehicle_charges_total", "institution" => inst.id.clone())
            .increment(1);
        outputs.extend(answer_reservation(
            inst, intent, result, position, now_ms, stage,
        )?);
    }
    Ok(outputs)
}

/// Most charges of a vehicle looked at again when a message applied before comes back: the
/// latest ones (a worker that stopped between its commit and its clearing left at most the
/// charges of one batch).
pub const REDRIVE_CHARGES_MAX: usize = 64;

/// Clears again, after a message applied before came back, the latest charges of a vehicle
/// that the payer's ledger does not hold as decided: never reserved (the worker that committed
/// them stopped first) or still reserved (the clearing message is sent again; the bus drops
/// the copy by its id). Decided ones are left alone: their outcome was announced.
pub async fn redrive_charges(
    vehicles: &VehicleInstitution,
    vehicle_id: &str,
    position: Position,
    now_ms: i64,
    stage: &str,
) -> Result<Vec<Outgoing>, StageError> {
    let charges = vehicles.store.charges(vehicle_id).await?;
    let latest = &charges[charges.len().saturating_sub(REDRIVE_CHARGES_MAX)..];
    let mut undecided = Vec::new();
    for charge in latest {
        let record = vehicles
            .institution
            .ledger
            .payment(&charge.payment_id, Side::Payer)
            .await?;
        if record.is_none_or(|r| r.state == PaymentState::Reserved) {
            undecided.push(charge.clone());
        }
    }
    clear_charges(vehicles, &undecided, position, now_ms, stage).await
}

/// The outcomes announcing charges refused before any money moved (`preauth.*`, `tariff.*`):
/// REJECTED, to the institutions of both wallets.
pub fn refused_charge_outcomes(
    vehicles: &VehicleInstitution,
    refused: &[RefusedCharge],
    vehicle_id: &str,
    now_ms: i64,
    stage: &str,
) -> Result<Vec<Outgoing>, StageError> {
    let mut outputs = Vec::new();
    for charge in refused {
        let intent = PaymentIntent {
            payment_id: charge.payment_id,
            payer: charge.payer.clone(),
            payee: charge.payee.clone(),
            amount_fen: charge.amount_fen,
            currency: CURRENCY.to_owned(),
            paid_at_ms: charge.due_at_ms,
            authorization: Authorization {
                kind: AuthorizationKind::VehicleCharge,
                digest: charge_digest(
                    &charge.payment_id,
                    charge.session_id.as_bytes(),
                    &[0; 16],
                    vehicle_id,
                    &charge.payer,
                    &charge.payee,
                    charge.amount_fen,
                    charge.due_at_ms,
                ),
                binding: Digest32::from_bytes([0; 32]),
            },
        };
        tracing::info!(vehicle = vehicle_id, entity = %charge.entity_id, reason = %charge.refused.reason, detail = %charge.refused.detail, "charge refused");
        outputs.extend(rejection(
            &vehicles.institution,
            &intent,
            intent.authorization.digest,
            &charge.refused,
            now_ms,
            Audience::Everyone,
            stage,
        )?);
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use dcpipe_connectors::ledger::{Party, PaymentId as LedgerPaymentId};

    use super::*;

    fn charge(amount_fen: i64) -> ChargeRecord {
        ChargeRecord {
            payment_id: LedgerPaymentId([3; 16]),
            session_id: [4; 16],
            authorization_id: [5; 16],
            vehicle_id: "V1".to_owned(),
            entity_id: "PARK-1".to_owned(),
            amount_fen,
            payer: Party {
                institution_id: "oi01".to_owned(),
                wallet_id: "w1".to_owned(),
            },
            payee: Party {
                institution_id: "oi02".to_owned(),
                wallet_id: "w-park".to_owned(),
            },
            due_at_ms: 9_000,
        }
    }

    #[test]
    fn a_charge_is_an_intent_from_the_vehicle_wallet_to_the_entity_wallet() {
        let binding = Digest32::from_bytes([8; 32]);
        let intent = charge_intent(&charge(750), binding);
        assert_eq!(intent.payment_id.as_bytes(), &[3; 16]);
        assert_eq!(intent.payer.wallet_id, "w1");
        assert_eq!(intent.payee.institution_id, "oi02");
        assert_eq!(intent.amount_fen, 750);
        assert_eq!(intent.paid_at_ms, 9_000);
        assert_eq!(intent.authorization.kind, AuthorizationKind::VehicleCharge);
        assert_eq!(intent.authorization.binding, binding);
    }

    #[test]
    fn other_terms_under_one_payment_id_have_another_digest() {
        let binding = Digest32::from_bytes([8; 32]);
        let a = charge_intent(&charge(750), binding);
        assert_eq!(a, charge_intent(&charge(750), binding));
        assert_ne!(
            a.authorization.digest,
            charge_intent(&charge(751), binding).authorization.digest
        );
    }
}
