//! Pre-authorizations: a wallet allows one service entity to charge it up to an amount until a
//! moment; and the rule every charge obeys.
//!
//! The pre-authorization is signed by the paying wallet: by its terminal certificate (the
//! in-vehicle client acting as the wallet's terminal, as for flow 1's envelopes) or by the
//! wallet's own key (a hard wallet); either way the certificate's subject is the wallet and
//! its institution the wallet's. The institution holding the wallet verifies it and holds it;
//! each charge is then checked against what remains: never above it, never after the expiry,
//! never for another entity, service or vehicle.

use dcpipe_schemas::{AuthorizationId, Digest32, ServiceAuthorization, ServiceKind};
use serde::{Deserialize, Serialize};

use super::registry::EntityRegistry;
use super::signed::{service_authorization_bytes, service_authorization_digest};
use crate::pki::{ChainVerifier, Role, RoleSet, VerifiedIdentity};
use crate::reason::{Reason, Rejected};

/// The keys that may sign for a wallet: its terminal and its own wallet key.
pub const AUTHORIZATION_SIGNER_ROLES: RoleSet = RoleSet::of(&[Role::Terminal, Role::Wallet]);
/// How far in the future a pre-authorization may be issued.
pub const AUTHORIZATION_CLOCK_SKEW_MS_MAX: i64 = 2 * 60 * 1_000;
/// Longest lifetime of a pre-authorization (issue to expiry): a week.
pub const AUTHORIZATION_LIFETIME_MS_MAX: i64 = 7 * 24 * 60 * 60 * 1_000;

/// Bounds on pre-authorizations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreauthPolicy {
    /// See [`AUTHORIZATION_CLOCK_SKEW_MS_MAX`].
    pub clock_skew_ms_max: i64,
    /// See [`AUTHORIZATION_LIFETIME_MS_MAX`].
    pub lifetime_ms_max: i64,
}

impl Default for PreauthPolicy {
    fn default() -> Self {
        PreauthPolicy {
            clock_skew_ms_max: AUTHORIZATION_CLOCK_SKEW_MS_MAX,
            lifetime_ms_max: AUTHORIZATION_LIFETIME_MS_MAX,
        }
    }
}

/// A pre-authorization that checked out, ready to be held.
#[derive(Debug, Clone)]
pub struct VerifiedAuthorization {
    /// What the wallet allowed.
    pub held: HeldAuthorization,
    /// SHA-256 of what the wallet signed: a resubmission has the same, other content under the
    /// same id another.
    pub digest: Digest32,
    /// The wallet's signing certificate, verified.
    pub signer: VerifiedIdentity,
}

/// Checks a pre-authorization received by `institution` at `now_ms`: the institution holds the
/// wallet; issued no later than the clock bound, not expired, not longer-lived than allowed;
/// the entity is registered and sells the service authorized; the certificate chains to the
/// root as the wallet's terminal or wallet key (valid at issue, not revoked now) of the wallet
/// named; the signature verifies.
pub fn verify_authorization(
    authorization: &ServiceAuthorization,
    institution: &str,
    registry: &EntityRegistry,
    verifier: &ChainVerifier,
    policy: &PreauthPolicy,
    now_ms: i64,
) -> Result<VerifiedAuthorization, Rejected> {
    let a = authorization;
    if a.wallet.institution_id != institution {
        return Err(Rejected::new(
            Reason::PreauthWrongInstitution,
            format!(
                "the wallet is held by {}, not {institution}",
                a.wallet.institution_id
            ),
        ));
    }
    if a.issued_at_ms > now_ms.saturating_add(policy.clock_skew_ms_max) {
        return Err(Rejected::new(
            Reason::PreauthNotYetValid,
            format!("issued {} ms in the future", a.issued_at_ms - now_ms),
        ));
    }
    if a.expires_at_ms.saturating_sub(a.issued_at_ms) > policy.lifetime_ms_max {
        return Err(Rejected::new(
            Reason::PreauthLifetimeTooLong,
            format!(
                "valid for {} ms, at most {}",
                a.expires_at_ms.saturating_sub(a.issued_at_ms),
                policy.lifetime_ms_max
            ),
        ));
    }
    if now_ms > a.expires_at_ms {
        return Err(Rejected::new(
            Reason::PreauthExpired,
            format!("expired at {} ms, now {now_ms} ms", a.expires_at_ms),
        ));
    }
    let entity = registry.get(&a.entity_id).ok_or_else(|| {
        Rejected::new(
            Reason::PreauthWrongEntity,
            format!("entity {} is not registered", a.entity_id),
        )
    })?;
    if entity.kind() != a.service_kind {
        return Err(Rejected::new(
            Reason::PreauthWrongService,
            format!(
                "entity {} sells {:?}, not {:?}",
                a.entity_id,
                entity.kind(),
                a.service_kind
            ),
        ));
    }
    let signer = verify_authorization_signer(a, verifier)?;
    Ok(VerifiedAuthorization {
        held: HeldAuthorization {
            authorization_id: a.authorization_id,
            vehicle_id: a.vehicle_id.clone(),
            entity_id: a.entity_id.clone(),
            service_kind: a.service_kind,
            max_amount_fen: a.max_amount_fen,
            charged_fen: 0,
            expires_at_ms: a.expires_at_ms,
        },
        digest: service_authorization_digest(a),
        signer,
    })
}

/// Checks who signed a pre-authorization: the certificate chains to the root as the wallet's
/// terminal or wallet key (valid at issue; revocation as the verifier applies it), of the wallet
/// named, and its signature verifies. The stage's check and the audit's.
pub fn verify_authorization_signer(
    authorization: &ServiceAuthorization,
    verifier: &ChainVerifier,
) -> Result<VerifiedIdentity, Rejected> {
    let a = authorization;
    let signer = verifier
        .verify(&a.certificate, a.issued_at_ms, AUTHORIZATION_SIGNER_ROLES)
        .map_err(|e| {
            Rejected::new(
                Reason::Certificate(e.kind()),
                format!("pre-authorization signer: {e}"),
            )
        })?;
    if signer.id() != a.wallet.wallet_id || signer.institution_id() != a.wallet.institution_id {
        return Err(Rejected::new(
            Reason::PreauthWalletMismatch,
            format!(
                "signed by {}/{}, the pre-authorization names {}/{}",
                signer.institution_id(),
                signer.id(),
                a.wallet.institution_id,
                a.wallet.wallet_id
            ),
        ));
    }
    signer
        .public_key()
        .verify(&service_authorization_bytes(a), &a.signature)
        .map_err(|e| Rejected::new(Reason::PreauthSignatureInvalid, e.to_string()))?;
    Ok(signer)
}

/// A pre-authorization held by the wallet's institution, with what was charged under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAuthorization {
    /// Its id.
    pub authorization_id: AuthorizationId,
    /// The vehicle it is for.
    pub vehicle_id: String,
    /// The entity allowed to charge.
    pub entity_id: String,
    /// The service allowed.
    pub service_kind: ServiceKind,
    /// The most that may be charged under it, in fen.
    pub max_amount_fen: i64,
    /// What was charged under it so far, in fen.
    pub charged_fen: i64,
    /// After this moment nothing may be charged under it.
    pub expires_at_ms: i64,
}

impl HeldAuthorization {
    /// What may still be charged, in fen.
    pub fn remaining_fen(&self) -> i64 {
        self.max_amount_fen.saturating_sub(self.charged_fen).max(0)
    }
}

/// A charge to be made for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeRequest<'a> {
    /// The vehicle charged.
    pub vehicle_id: &'a str,
    /// The entity paid.
    pub entity_id: &'a str,
    /// The service paid for.
    pub service_kind: ServiceKind,
    /// The amount, in fen (positive).
    pub amount_fen: i64,
    /// When the charge is due: the exit, the pass or the report (a signed moment, not the
    /// worker's clock, so a redelivery decides the same).
    pub due_at_ms: i64,
}

/// Checks one charge against one held pre-authorization; returns what remains after it.
pub fn check_charge(held: &HeldAuthorization, charge: &ChargeRequest<'_>) -> Result<i64, Rejected> {
    if held.vehicle_id != charge.vehicle_id {
        return Err(Rejected::new(
            Reason::PreauthVehicleMismatch,
            format!(
                "held for vehicle {}, charged to {}",
                held.vehicle_id, charge.vehicle_id
            ),
        ));
    }
    if held.entity_id != charge.entity_id {
        return Err(Rejected::new(
            Reason::PreauthWrongEntity,
            format!(
                "held for entity {}, charged by {}",
                held.entity_id, charge.entity_id
            ),
        ));
    }
    if held.service_kind != charge.service_kind {
        return Err(Rejected::new(
            Reason::PreauthWrongService,
            format!(
                "held for {:?}, charged for {:?}",
                held.service_kind, charge.service_kind
            ),
        ));
    }
    if charge.due_at_ms > held.expires_at_ms {
        return Err(Rejected::new(
            Reason::PreauthExpired,
            format!(
                "due at {} ms, the pre-authorization expired at {} ms",
                charge.due_at_ms, held.expires_at_ms
            ),
        ));
    }
    let remaining = held.remaining_fen();
    if charge.amount_fen <= 0 || charge.amount_fen > remaining {
        return Err(Rejected::new(
            Reason::PreauthExceeded,
            format!(
                "{} fen charged, {remaining} fen remaining",
                charge.amount_fen
            ),
        ));
    }
    Ok(remaining - charge.amount_fen)
}

/// Chooses the held pre-authorization a charge goes under: of those for the vehicle and the
/// entity that allow it, the one expiring first (ties: the smallest id). When none allows it,
/// the refusal says why: [`Reason::PreauthMissing`] if none is held for the entity,
/// else the refusal of the one that would expire last.
pub fn select_authorization<'h>(
    held: &'h [HeldAuthorization],
    charge: &ChargeRequest<'_>,
) -> Result<&'h HeldAuthorization, Rejected> {
    let mut candidates: Vec<&HeldAuthorization> = held
        .iter()
        .filter(|h| h.vehicle_id == charge.vehicle_id && h.entity_id == charge.entity_id)
        .collect();
    candidates.sort_by_key(|h| (h.expires_at_ms, h.authorization_id));
    let mut last_refusal = None;
    for candidate in candidates {
        match check_charge(candidate, charge) {
            Ok(_) => return Ok(candidate),
            Err(refused) => last_refusal = Some(refused),
        }
    }
    Err(last_refusal.unwrap_or_else(|| {
        Rejected::new(
            Reason::PreauthMissing,
            format!(
                "no pre-authorization of vehicle {} for entity {}",
                charge.vehicle_id, charge.entity_id
            ),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: u8, max: i64, charged: i64, expires: i64) -> HeldAuthorization {
        HeldAuthorization {
            authorization_id: AuthorizationId::from_bytes([id; 16]),
            vehicle_id: "V1".to_owned(),
            entity_id: "PARK-1".to_owned(),
            service_kind: ServiceKind::Parking,
            max_amount_fen: max,
            charged_fen: charged,
            expires_at_ms: expires,
        }
    }

    fn charge(amount_fen: i64, due_at_ms: i64) -> ChargeRequest<'static> {
        ChargeRequest {
            vehicle_id: "V1",
            entity_id: "PARK-1",
            service_kind: ServiceKind::Parking,
            amount_fen,
            due_at_ms,
        }
    }

    #[test]
    fn a_charge_up_to_the_remaining_amount_passes() {
        let h = held(1, 10_000, 4_000, 1_000);
        assert_eq!(check_charge(&h, &charge(6_000, 1_000)), Ok(0));
        assert_eq!(check_charge(&h, &charge(1, 500)), Ok(5_999));
    }

    #[test]
    fn a_charge_above_the_remaining_amount_is_refused() {
        let h = held(1, 10_000, 4_000, 1_000);
        let refused = check_charge(&h, &charge(6_001, 500)).expect_err("above");
        assert_eq!(refused.reason, Reason::PreauthExceeded);
        let refused = check_charge(&h, &charge(0, 500)).expect_err("nothing to charge");
        assert_eq!(refused.reason, Reason::PreauthExceeded);
    }

    #[test]
    fn a_charge_after_the_expiry_is_refused() {
        let h = held(1, 10_000, 0, 1_000);
        let refused = check_charge(&h, &charge(1, 1_001)).expect_err("expired");
        assert_eq!(refused.reason, Reason::PreauthExpired);
    }

    #[test]
    fn a_charge_for_another_entity_service_or_vehicle_is_refused() {
        let h = held(1, 10_000, 0, 1_000);
        let mut other = charge(1, 0);
        other.entity_id = "PARK-2";
        assert_eq!(
            check_charge(&h, &other).map_err(|r| r.reason),
            Err(Reason::PreauthWrongEntity)
        );
        let mut other = charge(1, 0);
        other.service_kind = ServiceKind::Fuel;
        assert_eq!(
            check_charge(&h, &other).map_err(|r| r.reason),
            Err(Reason::PreauthWrongService)
        );
        let mut other = charge(1, 0);
        other.vehicle_id = "V2";
        assert_eq!(
            check_charge(&h, &other).map_err(|r| r.reason),
            Err(Reason::PreauthVehicleMismatch)
        );
    }

    #[test]
    fn the_authorization_expiring_first_that_allows_the_charge_is_chosen() {
        let all = vec![
            held(3, 100, 0, 3_000),
            held(1, 50, 45, 1_000),
            held(2, 500, 0, 2_000),
        ];
        let chosen = select_authorization(&all, &charge(80, 500)).expect("one allows 80");
        assert_eq!(
            chosen.authorization_id,
            AuthorizationId::from_bytes([2; 16])
        );
        let chosen = select_authorization(&all, &charge(5, 500)).expect("the first allows 5");
        assert_eq!(
            chosen.authorization_id,
            AuthorizationId::from_bytes([1; 16])
        );
        let refused = select_authorization(&all, &charge(1_000, 500)).expect_err("too much");
        assert_eq!(refused.reason, Reason::PreauthExceeded);
        let refused = select_authorization(&all, &charge(10, 5_000)).expect_err("all expired");
        assert_eq!(refused.reason, Reason::PreauthExpired);
        let mut elsewhere = charge(1, 0);
        elsewhere.entity_id = "PARK-9";
        let refused = select_authorization(&all, &elsewhere).expect_err("none held there");
        assert_eq!(refused.reason, Reason::PreauthMissing);
    }
}
