//! Charging and fuel stations report what they delivered in a session, to the institution that
//! holds the vehicle's wallet: the report is verified, priced from the session's tariff,
//! checked against the pre-authorizations, and its charge committed to the session store at
//! the vehicle's version, then cleared.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::{Outgoing, Position};
use dcpipe_connectors::ledger::PaymentId as LedgerPaymentId;
use dcpipe_connectors::session::{ChargeRecord, UpdateResult, VehicleUpdate};
use dcpipe_schemas::ServiceCompleteReport;

use super::registry_ready;
use crate::reason::Rejected;
use crate::registry::{Build, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict};
use crate::subjects;
use crate::vehicle::backend::VehicleInstitution;
use crate::vehicle::charging::{clear_charges, redrive_charges, refused_charge_outcomes};
use crate::vehicle::matching::{RefusedCharge, held_authorization, open_session_of};
use crate::vehicle::preauth::{ChargeRequest, select_authorization};
use crate::vehicle::report::{report_fee, verify_service_report};
use crate::vehicle::session::OpenSession;
use crate::vehicle::signed::session_payment_id;

/// Name of this stage.
pub const STAGE: &str = "vehicle-report";

/// Reads and decisions of one report before the batch is handed back.
pub const STALE_ATTEMPTS_MAX: u32 = 16;

inventory::submit! {
    StageDescriptor {
        name: STAGE,
        summary: "the wallet institution's intake of station reports: price, charge",
        flow: Flow::Vehicle,
        consumes: subjects::vehicle_report,
        publishes: |_, institutions| {
            institutions
                .iter()
                .flat_map(|oi| [subjects::clearing_request(oi), subjects::txn_result(oi)])
                .collect()
        },
        build: Build::Vehicle(|vehicles| Arc::new(ReportStage::new(vehicles))),
    }
}

/// The intake of service-complete reports.
#[derive(Debug, Clone)]
pub struct ReportStage {
    vehicles: Arc<VehicleInstitution>,
}

impl ReportStage {
    /// The stage for an institution's vehicle back-end.
    pub fn new(vehicles: Arc<VehicleInstitution>) -> Self {
        ReportStage { vehicles }
    }

    /// What one report does.
    async fn one(
        &self,
        report: &ServiceCompleteReport,
        position: Position,
        now_ms: i64,
    ) -> Result<Verdict, StageError> {
        let vehicles = &self.vehicles;
        let inst = &vehicles.institution;
        let verified = match verify_service_report(report, &inst.verifier) {
            Ok(verified) => verified,
            Err(rejected) => return Ok(Verdict::dead_letter(rejected.reason, rejected.detail)),
        };
        let stored = vehicles.store.session(report.session_id.as_bytes()).await?;
        let session: Option<(String, OpenSession)> = match &stored {
            None => None,
            Some(record) => Some((
                record.vehicle_id.clone(),
                open_session_of(record).map_err(|e| StageError::fatal(e.to_string()))?,
            )),
        };
        let fee = report_fee(
            report,
            &verified,
            session
                .as_ref()
                .map(|(vehicle, session)| (vehicle.as_str(), session)),
        );
        let amount_fen = match fee {
            Ok(fee) => fee,
            Err(rejected) => return Ok(Verdict::dead_letter(rejected.reason, rejected.detail)),
        };
        let Some((vehicle_id, session)) = session else {
            return Err(StageError::fatal("a priced report without its session"));
        };
        let payment_id = session_payment_id(&session.session_id, session.entered_at_ms);
        for _ in 0..STALE_ATTEMPTS_MAX {
            // A report delivered again: its charge exists; clear it again if undecided.
            let charges = vehicles.store.charges(&vehicle_id).await?;
            if charges
                .iter()
                .any(|c| c.session_id == *session.session_id.as_bytes())
            {
                return Ok(Verdict::Done(
                    redrive_charges(vehicles, &vehicle_id, position, now_ms, STAGE).await?,
                ));
            }
            if amount_fen == 0 {
                return Ok(Verdict::Done(Vec::new()));
            }
            let held: Vec<_> = vehicles
                .store
                .authorizations(&vehicle_id)
                .await?
                .iter()
                .filter_map(|stored| {
                    held_authorization(stored).map(|h| (stored.hold.payer.clone(), h))
                })
                .collect();
            let request = ChargeRequest {
                vehicle_id: &vehicle_id,
                entity_id: &session.entity_id,
                service_kind: session.kind,
                amount_fen,
                due_at_ms: report.completed_at_ms,
            };
            let candidates: Vec<_> = held.iter().map(|(_, h)| h.clone()).collect();
            let chosen = match select_authorization(&candidates, &request) {
                Ok(chosen) => chosen,
                Err(refused) => {
                    // The vehicle's wallet, as its pre-authorizations name it (none held: the
                    // refusal still names the session's entity and the vehicle's institution).
                    let payer = held.first().map_or_else(
                        || dcpipe_schemas::PartyRef {
                            institution_id: inst.id.clone(),
                            wallet_id: String::new(),
                        },
                        |(payer, _)| dcpipe_schemas::PartyRef {
                            institution_id: payer.institution_id.clone(),
                            wallet_id: payer.wallet_id.clone(),
                        },
                    );
                    return Ok(Verdict::Done(self.refused(
                        &vehicle_id,
                        payer,
                        &session,
                        amount_fen,
                        report.completed_at_ms,
                        refused,
                        now_ms,
                    )?));
                }
            };
            let Some((payer, _)) = held
                .iter()
                .find(|(_, h)| h.authorization_id == chosen.authorization_id)
            else {
                return Err(StageError::fatal("a chosen pre-authorization not held"));
            };
            let charge = ChargeRecord {
                payment_id: LedgerPaymentId(*payment_id.as_bytes()),
                session_id: *session.session_id.as_bytes(),
                authorization_id: *chosen.authorization_id.as_bytes(),
                vehicle_id: vehicle_id.clone(),
                entity_id: session.entity_id.clone(),
                amount_fen,
                payer: payer.clone(),
                payee: dcpipe_connectors::ledger::Party {
                    institution_id: session.entity_wallet.institution_id.clone(),
                    wallet_id: session.entity_wallet.wallet_id.clone(),
                },
                due_at_ms: report.completed_at_ms,
            };
            let Some(record) = vehicles
                .store
                .vehicles(std::slice::from_ref(&vehicle_id))
                .await?
                .remove(0)
            else {
                return Err(StageError::fatal("a session of a vehicle without a record"));
            };
            let update = VehicleUpdate {
                vehicle_id: vehicle_id.clone(),
                expected_version: Some(record.version),
                batch_digest: *verified.digest.as_bytes(),
                next_sequence: record.next_sequence,
                state: record.state.clone(),
                sessions: Vec::new(),
                charges: vec![charge.clone()],
            };
            match vehicles.store.commit(&[update]).await?.first() {
                Some(UpdateResult::Applied { .. } | UpdateResult::AlreadyApplied { .. }) => {
                    return Ok(Verdict::Done(
                        clear_charges(vehicles, &[charge], position, now_ms, STAGE).await?,
                    ));
                }
                Some(_) => continue,
                None => {
                    return Err(StageError::fatal(
                        "the session store returned no result for an update",
                    ));
                }
            }
        }
        Err(StageError::transient(format!(
            "vehicle {vehicle_id}: still stale after {STALE_ATTEMPTS_MAX} reads"
        )))
    }

    #[allow(clippy::too_many_arguments)]
    fn refused(
        &self,
        vehicle_id: &str,
        payer: dcpipe_schemas::PartyRef,
        session: &OpenSession,
        amount_fen: i64,
        due_at_ms: i64,
        refused: Rejected,
        now_ms: i64,
    ) -> Result<Vec<Outgoing>, StageError> {
        refused_charge_outcomes(
            &self.vehicles,
            &[RefusedCharge {
                session_id: session.session_id,
                payment_id: session_payment_id(&session.session_id, session.entered_at_ms),
                entity_id: session.entity_id.clone(),
                payer,
                payee: session.entity_wallet.clone(),
                amount_fen,
                due_at_ms,
                refused,
            }],
            vehicle_id,
            now_ms,
            STAGE,
        )
    }
}

#[async_trait]
impl Stage for ReportStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        &self.vehicles.institution.id
    }

    fn subject(&self) -> String {
        subjects::vehicle_report(&self.vehicles.institution.id)
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        registry_ready(&self.vehicles.registry).await?;
        let now_ms = self.vehicles.institution.clock.now_ms();
        let mut verdicts = Vec::with_capacity(batch.len());
        for input in batch {
            verdicts.push(
                match dcpipe_schemas::decode::<ServiceCompleteReport>(input.payload) {
                    Err(e) => Verdict::undecodable(&e),
                    Ok(report) => self.one(&report, input.position, now_ms).await?,
                },
            );
        }
        Ok(verdicts)
    }
}
