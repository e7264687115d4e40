//! The institution holding a wallet receives the pre-authorizations its wallets sign for
//! service entities, checks them and holds them in its session store; every charge is then
//! made under one of them.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::ledger::Party;
use dcpipe_connectors::session::{AuthorizationHold, HoldResult};
use dcpipe_schemas::ServiceAuthorization;

use super::registry_ready;
use crate::reason::{Reason, Rejected};
use crate::registry::{Build, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict};
use crate::subjects;
use crate::vehicle::backend::VehicleInstitution;
use crate::vehicle::preauth::{VerifiedAuthorization, verify_authorization};
use crate::vehicle::signed::service_kind_symbol;

/// Name of this stage.
pub const STAGE: &str = "vehicle-authorization";

inventory::submit! {
    StageDescriptor {
        name: STAGE,
        summary: "the wallet institution's intake of pre-authorizations: verify, hold",
        flow: Flow::Vehicle,
        consumes: subjects::vehicle_authorization,
        publishes: |_, _| Vec::new(),
        build: Build::Vehicle(|vehicles| Arc::new(AuthorizationStage::new(vehicles))),
    }
}

/// The intake of pre-authorizations.
#[derive(Debug, Clone)]
pub struct AuthorizationStage {
    vehicles: Arc<VehicleInstitution>,
}

impl AuthorizationStage {
    /// The stage for an institution's vehicle back-end.
    pub fn new(vehicles: Arc<VehicleInstitution>) -> Self {
        AuthorizationStage { vehicles }
    }
}

/// The hold of a verified pre-authorization.
pub fn hold_of(
    authorization: &ServiceAuthorization,
    verified: &VerifiedAuthorization,
) -> AuthorizationHold {
    AuthorizationHold {
        authorization_id: *authorization.authorization_id.as_bytes(),
        digest: *verified.digest.as_bytes(),
        vehicle_id: authorization.vehicle_id.clone(),
        payer: Party {
            institution_id: authorization.wallet.institution_id.clone(),
            wallet_id: authorization.wallet.wallet_id.clone(),
        },
        entity_id: authorization.entity_id.clone(),
        service_kind: service_kind_symbol(authorization.service_kind).to_owned(),
        max_amount_fen: authorization.max_amount_fen,
        issued_at_ms: authorization.issued_at_ms,
        expires_at_ms: authorization.expires_at_ms,
    }
}

#[async_trait]
impl Stage for AuthorizationStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        &self.vehicles.institution.id
    }

    fn subject(&self) -> String {
        subjects::vehicle_authorization(&self.vehicles.institution.id)
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        let vehicles = &self.vehicles;
        registry_ready(&vehicles.registry).await?;
        let inst = &vehicles.institution;
        let now_ms = inst.clock.now_ms();
        let checked: Vec<Result<AuthorizationHold, Verdict>> = {
            let registry = vehicles.registry.read();
            batch
                .iter()
                .map(|input| {
                    let authorization =
                        dcpipe_schemas::decode::<ServiceAuthorization>(input.payload)
                            .map_err(|e| Verdict::undecodable(&e))?;
                    let verified = verify_authorization(
                        &authorization,
                        &inst.id,
                        &registry,
                        &inst.verifier,
                        &vehicles.policy.preauth,
                        now_ms,
                    )
                    .map_err(|rejected: Rejected| {
                        Verdict::dead_letter(rejected.reason, rejected.detail)
                    })?;
                    Ok(hold_of(&authorization, &verified))
                })
                .collect()
        };
        let holds: Vec<AuthorizationHold> = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut results = if holds.is_empty() {
            Vec::new()
        } else {
            vehicles.store.hold(&holds).await?
        }
        .into_iter();
        let mut verdicts = Vec::with_capacity(batch.len());
        for item in checked {
            verdicts.push(match item {
                Err(verdict) => verdict,
                Ok(hold) => match results.next() {
                    None => {
                        return Err(StageError::fatal(
                            "the session store returned fewer holds than requests",
                        ));
                    }
                    Some(HoldResult::Held) => {
                        metrics::counter!("dcpipe_vehicle_authorizations_held_total", "institution" => inst.id.clone()).increment(1);
                        Verdict::Done(Vec::new())
                    }
                    Some(HoldResult::Duplicate) => Verdict::Done(Vec::new()),
                    Some(HoldResult::Conflict) => Verdict::dead_letter(
                        Reason::PreauthConflict,
                        format!(
                            "pre-authorization {} held before with other content",
                            hex::encode(hold.authorization_id)
                        ),
                    ),
                },
            });
        }
        Ok(verdicts)
    }
}
