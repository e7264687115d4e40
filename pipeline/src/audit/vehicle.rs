//! The audit of flow 3, vehicles (docs/PROTOCOL.md §10), in one place: what each vehicle
//! record is once verified ([`fact_of`], run in parallel with the other records' checks) and
//! the reconciliation of vehicle charges with sessions, station reports, pre-authorizations
//! and the registry ([`VehicleBook`], in record order).
//!
//! Every check is the vehicle stages' own: [`verify_telemetry_batch`] and
//! [`verify_telemetry_report`] (at the first report's time, not at the clock of a worker),
//! [`TelemetryChain::check`] for the sequence and hash chain of each vehicle,
//! [`verify_service_report`] for stations, [`verify_entity`] for registry entries,
//! [`verify_authorization_signer`] for pre-authorizations, the derived ids and the charge
//! digest of [`crate::vehicle::signed`], and the fees of [`crate::vehicle::tariff`]. Each
//! signer's chain is judged valid and not revoked at the message's own time.
//!
//! State is held per vehicle (its telemetry chain, forgotten when it is idle), per session
//! until it is charged, per live pre-authorization, and per registry entity version; never
//! per telemetry record.

use std::collections::{BTreeMap, HashMap, VecDeque};

use dcpipe_connectors::bus::{Bus, BusError, BusErrorKind, ReplayFrom, ReplayRequest};
use dcpipe_schemas::{
    AuthorizationId, Digest32, MeterUnit, PartyRef, PaymentId, ServiceAuthorization,
    ServiceCompleteReport, ServiceEntity, ServiceKind, SessionEventKind, SessionId, Tariff,
    VehicleSessionEvent, VehicleTelemetry, VehicleTelemetryBatch,
};

use super::check::{AuditRecord, CheckContext, Fact, Terms};
use super::code::AuditCode;
use super::report::{AuditReport, Discrepancy, Location};
use crate::pki::{CertErrorKind, Role, sha256};
use crate::reason::{Reason, Rejected};
use crate::subjects;
use crate::vehicle::preauth::verify_authorization_signer;
use crate::vehicle::registry::verify_entity;
use crate::vehicle::report::verify_service_report;
use crate::vehicle::signed::{
    charge_digest, service_authorization_digest, session_id, session_payment_id,
};
use crate::vehicle::tariff::{metered_fee, parking_fee, toll_fee};
use crate::vehicle::telemetry::{
    SequenceVerdict, TelemetryChain, TelemetryPolicy, VerifiedBatch, verify_telemetry_batch,
    verify_telemetry_report,
};

/// How long (bus time) a vehicle's chain is kept without a new batch: a batch more than an
/// hour old is refused by the stage anyway, so a chain idle for longer restarts at its next
/// batch.
pub const CHAIN_IDLE_MS: i64 = 2 * crate::vehicle::telemetry::TELEMETRY_AGE_MS_MAX;

/// How long (bus time) an ended session, or a station report, waits for its charge.
pub const SESSION_RETENTION_MS: i64 = 60 * 60_000;

/// Vehicle charges waiting to be checked, at most (more are checked at once).
pub const PENDING_CHARGES_MAX: usize = 100_000;

/// The time bounds the audit applies to telemetry: none. A worker refuses reports too far
/// from its own clock; the audit judges each batch at its own time.
const NO_CLOCK_BOUND: TelemetryPolicy = TelemetryPolicy {
    clock_skew_ms_max: i64::MAX / 4,
    age_ms_max: i64::MAX / 4,
};

/// Whether `outcome` is a charge a vehicle stage refused before any money moved (`preauth.*`,
/// `tariff.*`): announced without a clearing message or a pre-authorization bound to it.
pub fn is_refused_charge(outcome: &super::check::OutcomeFact) -> bool {
    use crate::vehicle::stages::{matching, report};
    outcome.status == dcpipe_schemas::OutcomeStatus::Rejected
        && (outcome.stage == matching::STAGE || outcome.stage == report::STAGE)
}

/// What a vehicle record says, once decoded and verified.
#[derive(Debug, Clone)]
pub enum VehicleFact {
    /// A pre-authorization whose wallet's signature verifies at its issue time.
    Authorization(AuthorizationFact),
    /// A telemetry batch (or version 1 report) whose signature verifies at its first report's
    /// time; its place in the vehicle's chain is judged in record order.
    Telemetry {
        /// The batch as verified.
        batch: Box<VerifiedBatch>,
        /// The vehicle.
        vehicle_id: String,
        /// The class it states (the toll's).
        vehicle_class: i32,
        /// SHA-256 of the frame, to match a dead letter's original.
        payload_sha256: [u8; 32],
    },
    /// A station's report whose signature verifies at its completion time.
    Report(ReportFact),
    /// A session event whose ids are derived from its session (it is not signed).
    Session(Box<VehicleSessionEvent>),
    /// A registry entry: whether it verifies (a refused one is the registry's to ignore).
    Entity {
        /// Signed by the institution holding the entity's wallet, a valid geofence.
        verified: bool,
    },
}

/// A verified pre-authorization, as the charges under it are judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationFact {
    /// SHA-256 of what the wallet signed: a charge's clearing message carries it.
    pub digest: Digest32,
    /// Its id (in the charge digest).
    pub authorization_id: AuthorizationId,
    /// The vehicle.
    pub vehicle_id: String,
    /// The paying wallet.
    pub wallet: PartyRef,
    /// The entity.
    pub entity_id: String,
    /// The most it allows, in total.
    pub max_amount_fen: i64,
    /// Until when a charge may fall due.
    pub expires_at_ms: i64,
}

/// A verified station report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFact {
    /// The session it prices.
    pub session_id: SessionId,
    /// The station.
    pub entity_id: String,
    /// The vehicle.
    pub vehicle_id: String,
    /// Its unit.
    pub unit: MeterUnit,
    /// What was delivered, in thousandths.
    pub quantity_milli: i64,
    /// When delivery ended: the charge's due time.
    pub completed_at_ms: i64,
}

fn refused(code: AuditCode, found: String, payload: &[u8]) -> Fact {
    Fact::Refused {
        code,
        payment_id: None,
        found,
        payload_sha256: sha256(payload),
    }
}

fn undecodable(error: &dcpipe_schemas::CodecError, payload: &[u8]) -> Fact {
    refused(
        AuditCode::UndecodableNotDeadLettered,
        format!("{}: {error}", error.kind().reason_code()),
        payload,
    )
}

/// The audit code of a vehicle message refused with `rejected`: its certificate's, or
/// `otherwise`.
fn code_of(rejected: &Rejected, otherwise: AuditCode) -> AuditCode {
    match rejected.reason {
        Reason::Certificate(CertErrorKind::Revoked) => AuditCode::CertificateRevoked,
        Reason::Certificate(_) => AuditCode::CertificateInvalid,
        _ => otherwise,
    }
}

fn revoked(e: crate::pki::CertError) -> Rejected {
    Rejected::new(Reason::Certificate(e.kind()), e.to_string())
}

/// Decodes and verifies one record of a `vehicle.*` subject; `None` for another subject.
pub fn fact_of(context: &CheckContext, record: &AuditRecord) -> Option<Fact> {
    let subject = record.subject.as_str();
    let payload = &record.payload[..];
    let tokens: Vec<&str> = subject.split('.').collect();
    let fact = match tokens.as_slice() {
        ["vehicle", "authorization", _] => {
            match dcpipe_schemas::decode::<ServiceAuthorization>(payload) {
                Ok(a) => authorization_fact(context, &a),
                Err(e) => undecodable(&e, payload),
            }
        }
        ["vehicle", "telemetry", institution] => telemetry_fact(context, institution, payload),
        ["vehicle", "report", _] => {
            match dcpipe_schemas::decode::<ServiceCompleteReport>(payload) {
                Ok(report) => report_fact(context, &report, payload),
                Err(e) => undecodable(&e, payload),
            }
        }
        ["vehicle", "session", institution] => {
            match dcpipe_schemas::decode::<VehicleSessionEvent>(payload) {
                Ok(event) => session_fact(event, institution, payload),
                Err(e) => undecodable(&e, payload),
            }
        }
        ["vehicle", "registry"] => match dcpipe_schemas::decode::<ServiceEntity>(payload) {
            Ok(entity) => Fact::Vehicle(VehicleFact::Entity {
                verified: entity_check(context, &entity).is_ok(),
            }),
            // Version 1 entries (unsigned) are read and refused by the registry.
            Err(_) => Fact::Vehicle(VehicleFact::Entity { verified: false }),
        },
        ["vehicle", ..] => match dcpipe_schemas::decode_any(payload) {
            Ok(_) => Fact::Unaudited,
            Err(e) => undecodable(&e, payload),
        },
        _ => return None,
    };
    Some(fact)
}

fn authorization_fact(context: &CheckContext, a: &ServiceAuthorization) -> Fact {
    let checked = verify_authorization_signer(a, context.verifier.chains()).and_then(|signer| {
        context
            .verifier
            .check_revocation(&signer, a.issued_at_ms)
            .map_err(revoked)
    });
    match checked {
        // A wallet's signature is not an institution's: a bad one is the vehicle stage's to
        // refuse, and it authorizes nothing here.
        Err(_) => Fact::Unaudited,
        Ok(()) => Fact::Vehicle(VehicleFact::Authorization(AuthorizationFact {
            digest: service_authorization_digest(a),
            authorization_id: a.authorization_id,
            vehicle_id: a.vehicle_id.clone(),
            wallet: a.wallet.clone(),
            entity_id: a.entity_id.clone(),
            max_amount_fen: a.max_amount_fen,
            expires_at_ms: a.expires_at_ms,
        })),
    }
}

/// A batch (or a version 1 report, read as a batch of one) verified as the matching stage
/// does, at its first report's time, and not revoked as of then.
fn telemetry_fact(context: &CheckContext, institution: &str, payload: &[u8]) -> Fact {
    let chains = context.verifier.chains();
    let version_1 = dcpipe_schemas::schema_id(payload)
        .is_ok_and(|id| id == <VehicleTelemetry as dcpipe_schemas::Message>::SCHEMA_ID);
    let verified = if version_1 {
        match dcpipe_schemas::decode::<VehicleTelemetry>(payload) {
            Ok(report) => verify_telemetry_report(
                &report,
                institution,
                chains,
                &NO_CLOCK_BOUND,
                report.recorded_at_ms,
            )
            .map(|v| (v, report.vehicle_id.clone(), report.vehicle_class)),
            Err(e) => return undecodable(&e, payload),
        }
    } else {
        match dcpipe_schemas::decode::<VehicleTelemetryBatch>(payload) {
            Ok(batch) => {
                let at_ms = batch.reports.first().map_or(0, |r| r.recorded_at_ms);
                verify_telemetry_batch(&batch, institution, chains, &NO_CLOCK_BOUND, at_ms)
                    .map(|v| (v, batch.vehicle_id.clone(), batch.vehicle_class))
            }
            Err(e) => return undecodable(&e, payload),
        }
    };
    let verified = verified.and_then(|(v, vehicle_id, class)| {
        context
            .verifier
            .check_revocation(&v.vehicle, v.first_recorded_at_ms)
            .map_err(revoked)?;
        Ok((v, vehicle_id, class))
    });
    match verified {
        Ok((batch, vehicle_id, vehicle_class)) => Fact::Vehicle(VehicleFact::Telemetry {
            batch: Box::new(batch),
            vehicle_id,
            vehicle_class,
            payload_sha256: sha256(payload),
        }),
        Err(r) => refused(
            code_of(&r, AuditCode::VehicleTelemetrySignatureInvalid),
            r.to_string(),
            payload,
        ),
    }
}

fn report_fact(context: &CheckContext, report: &ServiceCompleteReport, payload: &[u8]) -> Fact {
    let checked = verify_service_report(report, context.verifier.chains()).and_then(|v| {
        context
            .verifier
            .check_revocation(&v.station, report.completed_at_ms)
            .map_err(revoked)
    });
    match checked {
        Ok(()) => Fact::Vehicle(VehicleFact::Report(ReportFact {
            session_id: report.session_id,
            entity_id: report.entity_id.clone(),
            vehicle_id: report.vehicle_id.clone(),
            unit: report.unit,
            quantity_milli: report.quantity_milli,
            completed_at_ms: report.completed_at_ms,
        })),
        Err(r) => refused(
            code_of(&r, AuditCode::VehicleReportForged),
            r.to_string(),
            payload,
        ),
    }
}

/// A session event is not signed: what can be checked alone is that its ids are derived from
/// its session (docs/PROTOCOL.md §10.5) and that it is on its wallet's institution's subject.
fn session_fact(event: VehicleSessionEvent, institution: &str, payload: &[u8]) -> Fact {
    let derived = session_id(&event.vehicle_id, &event.entity_id, event.entered_at_ms);
    let payment = session_payment_id(&derived, event.entered_at_ms);
    let wrong = if event.wallet.institution_id != institution {
        Some(format!(
            "the wallet of {} is held by {}, the event is on {institution}'s subject",
            event.vehicle_id, event.wallet.institution_id
        ))
    } else if event.session_id != derived || event.payment_id != payment {
        Some(format!(
            "session {} payment {}; derived: session {derived} payment {payment}",
            event.session_id, event.payment_id
        ))
    } else {
        None
    };
    match wrong {
        Some(found) => Fact::Refused {
            code: AuditCode::VehicleSessionInvalid,
            payment_id: Some(event.payment_id),
            found,
            payload_sha256: sha256(payload),
        },
        None => Fact::Vehicle(VehicleFact::Session(Box::new(event))),
    }
}

/// A registry entry checked as the registry does, its signer's chain valid at the entry's
/// time and not revoked as of then.
fn entity_check(context: &CheckContext, entity: &ServiceEntity) -> Result<(), Rejected> {
    verify_entity(entity, context.verifier.chains())?;
    context
        .verifier
        .verify(
            &entity.certificate,
            entity.updated_at_ms,
            Role::InstitutionSigner,
        )
        .map_err(revoked)?;
    Ok(())
}

/// An entity version of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityVersion {
    /// What it sells.
    pub kind: ServiceKind,
    /// The wallet its charges pay into.
    pub wallet: PartyRef,
    /// Its tariff.
    pub tariff: Tariff,
    /// Taken out by this version.
    pub removed: bool,
    /// SHA-256 of what the institution signed.
    pub digest: Digest32,
}

/// The registry's history: every version of every entity the registry applied, in the order
/// `vehicle.registry` holds them (a version not newer than the one in force is refused, as
/// the registry refuses it).
#[derive(Debug, Clone, Default)]
pub struct RegistryHistory {
    entities: HashMap<String, BTreeMap<i64, EntityVersion>>,
    /// Entries read that the registry refuses.
    pub refused: u64,
}

impl RegistryHistory {
    /// An empty history.
    pub fn new() -> Self {
        RegistryHistory::default()
    }

    /// Applies one entry: false when the registry refuses it.
    pub fn apply(&mut self, context: &CheckContext, entity: &ServiceEntity) -> bool {
        if entity_check(context, entity).is_err() {
            self.refused += 1;
            return false;
        }
        self.insert(entity)
    }

    /// Applies an entry already verified.
    fn insert(&mut self, entity: &ServiceEntity) -> bool {
        let versions = self.entities.entry(entity.entity_id.clone()).or_default();
        if versions
            .last_key_value()
            .is_some_and(|(newest, _)| *newest >= entity.version)
        {
            self.refused += 1;
            return false;
        }
        versions.insert(
            entity.version,
            EntityVersion {
                kind: entity.kind,
                wallet: entity.wallet.clone(),
                tariff: entity.tariff.clone(),
                removed: entity.removed,
                digest: crate::vehicle::signed::service_entity_digest(entity),
            },
        );
        true
    }

    /// Version `version` of `entity_id`, if the registry applied it.
    pub fn version(&self, entity_id: &str, version: i64) -> Option<&EntityVersion> {
        self.entities.get(entity_id)?.get(&version)
    }

    /// Entities known.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Whether no entity is known.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }
}

/// Reads `vehicle.registry` from its beginning to `until_ms` (a session names the entity
/// version it started with, which may be older than the range).
pub async fn registry_history(
    bus: &dyn Bus,
    context: &CheckContext,
    until_ms: i64,
) -> Result<RegistryHistory, BusError> {
    let mut history = RegistryHistory::new();
    let mut replay = match bus
        .replay(ReplayRequest {
            subject: subjects::VEHICLE_REGISTRY.to_owned(),
            from: ReplayFrom::Beginning,
            until_ms: Some(until_ms),
        })
        .await
    {
        Ok(replay) => replay,
        Err(e) if e.kind() == BusErrorKind::UnknownSubject => return Ok(history),
        Err(e) => return Err(e),
    };
    loop {
        let records = replay.next_batch(super::READ_BATCH_MAX).await?;
        if records.is_empty() {
            break;
        }
        for record in records {
            match dcpipe_schemas::decode::<ServiceEntity>(&record.payload) {
                Ok(entity) => {
                    history.apply(context, &entity);
                }
                Err(_) => history.refused += 1,
            }
        }
    }
    Ok(history)
}

/// What the book keeps of a pre-authorization while it can still be charged.
#[derive(Debug, Clone)]
struct AuthorizationSeen {
    fact: AuthorizationFact,
    /// The charges under it, by payment: what is left of it.
    charged: HashMap<PaymentId, i64>,
}

/// A session as its events show it.
#[derive(Debug, Clone)]
struct SessionSeen {
    session_id: SessionId,
    vehicle_id: String,
    wallet: PartyRef,
    entity_id: String,
    entity_version: i64,
    kind: ServiceKind,
    entered_at_ms: i64,
    /// The end (exit or pass), when seen.
    ended_at_ms: Option<i64>,
    /// The class the vehicle's telemetry stated when the session ended.
    vehicle_class: Option<i32>,
    last_seen_ms: i64,
}

/// A charge: a clearing message bound to a pre-authorization.
#[derive(Debug, Clone)]
struct ChargeSeen {
    terms: Terms,
    digest: Digest32,
    authorization: Digest32,
    location: Location,
    at_ms: i64,
}

#[derive(Debug, Clone)]
struct VehicleChain {
    chain: TelemetryChain,
    vehicle_class: i32,
    last_seen_ms: i64,
}

/// A record the book refuses in record order (a batch out of its vehicle's sequence): a
/// discrepancy unless a stage dead-lettered it.
#[derive(Debug, Clone)]
pub struct BookRefusal {
    /// What is wrong.
    pub code: AuditCode,
    /// What the check found.
    pub found: String,
    /// SHA-256 of the record's bytes.
    pub payload_sha256: [u8; 32],
}

/// The vehicle flow's part of the reconciliation.
#[derive(Debug, Default)]
pub struct VehicleBook {
    registry: Option<RegistryHistory>,
    range_start_ms: Option<i64>,
    edge_ms: i64,
    reorder_ms: i64,
    authorizations: HashMap<Digest32, AuthorizationSeen>,
    authorization_order: VecDeque<(i64, Digest32)>,
    chains: HashMap<String, VehicleChain>,
    chain_order: VecDeque<(i64, String)>,
    sessions: HashMap<PaymentId, SessionSeen>,
    session_order: VecDeque<(i64, PaymentId)>,
    reports: HashMap<SessionId, (Vec<ReportFact>, i64)>,
    report_order: VecDeque<(i64, SessionId)>,
    charges: HashMap<PaymentId, ChargeSeen>,
    charge_order: VecDeque<(i64, PaymentId)>,
    pending: VecDeque<(i64, PaymentId)>,
    coverage: Option<Coverage>,
}

/// The institutions whose session events and station reports the audit reads (`None` in
/// [`VehicleBook`]: all of them).
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    /// Institutions whose `vehicle.session.<oi>` is read.
    pub sessions: std::collections::HashSet<String>,
    /// Institutions whose `vehicle.report.<oi>` is read.
    pub reports: std::collections::HashSet<String>,
}

impl Coverage {
    /// What `subjects` (the audited subjects) cover.
    pub fn of(subjects: &[String]) -> Self {
        let institutions = |prefix: &str| {
            subjects
                .iter()
                .filter_map(|s| s.strip_prefix(prefix))
                .map(str::to_owned)
                .collect()
        };
        Coverage {
            sessions: institutions("vehicle.session."),
            reports: institutions("vehicle.report."),
        }
    }
}

/// The entry time a derived payment id carries (its first 48 bits, docs/PROTOCOL.md §10.5).
fn entered_at_of(payment_id: &PaymentId) -> i64 {
    let b = payment_id.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&b[..6]);
    i64::from_be_bytes(ms)
}

impl VehicleBook {
    /// A book for a range starting at `range_start_ms` (`None`: the record's beginning), with
    /// edges of `edge_ms`, judging a charge `reorder_ms` of bus time after it is read.
    pub fn new(range_start_ms: Option<i64>, edge_ms: i64, reorder_ms: i64) -> Self {
        VehicleBook {
            range_start_ms,
            edge_ms,
            reorder_ms,
            ..VehicleBook::default()
        }
    }

    /// Judges sessions against `registry` (without one, entity versions are not checked and
    /// fees not computed).
    pub fn set_registry(&mut self, registry: RegistryHistory) {
        self.registry = Some(registry);
    }

    /// Judges charges only on what `coverage` reads: a charge whose vehicle's session events
    /// (or station reports) are not read is partial, not without session.
    pub fn set_coverage(&mut self, coverage: Coverage) {
        self.coverage = Some(coverage);
    }

    /// Whether the session events (`reports`: the station reports) of vehicles whose wallet
    /// `institution` holds are read.
    fn covers(&self, institution: &str, reports: bool) -> bool {
        self.coverage.as_ref().is_none_or(|c| {
            if reports {
                c.reports.contains(institution)
            } else {
                c.sessions.contains(institution)
            }
        })
    }

    /// Sessions, pre-authorizations, vehicles, station reports and charges held now.
    pub fn held(&self) -> usize {
        self.sessions.len()
            + self.authorizations.len()
            + self.chains.len()
            + self.reports.len()
            + self.charges.len()
    }

    /// Whether `binding` (a clearing message's `transaction_factor`) is the digest of a
    /// pre-authorization in the record: the payment is a vehicle charge.
    pub fn authorizes(&self, binding: &Digest32) -> bool {
        self.authorizations.contains_key(binding)
    }

    /// Takes a vehicle fact in record order; returns a refusal of the record, if any.
    pub fn apply(
        &mut self,
        fact: VehicleFact,
        at_ms: i64,
        report: &mut AuditReport,
    ) -> Option<BookRefusal> {
        match fact {
            VehicleFact::Authorization(a) => {
                report.counts.verified += 1;
                self.authorization_order
                    .push_back((a.expires_at_ms, a.digest));
                self.authorizations
                    .entry(a.digest)
                    .or_insert_with(|| AuthorizationSeen {
                        fact: a,
                        charged: HashMap::new(),
                    });
                None
            }
            VehicleFact::Telemetry {
                batch,
                vehicle_id,
                vehicle_class,
                payload_sha256,
            } => {
                report.counts.verified += 1;
                self.telemetry(*batch, vehicle_id, vehicle_class, at_ms, report)
                    .map(|(code, found)| BookRefusal {
                        code,
                        found,
                        payload_sha256,
                    })
            }
            VehicleFact::Report(r) => {
                report.counts.verified += 1;
                let entry = self
                    .reports
                    .entry(r.session_id)
                    .or_insert_with(|| (Vec::new(), at_ms));
                entry.1 = at_ms;
                if !entry.0.contains(&r) {
                    entry.0.push(r.clone());
                }
                self.report_order.push_back((at_ms, r.session_id));
                None
            }
            VehicleFact::Session(event) => {
                report.counts.vehicle_session_events += 1;
                self.session(*event, at_ms)
            }
            VehicleFact::Entity { verified } => {
                if verified {
                    report.counts.verified += 1;
                } else {
                    report.counts.vehicle_entities_refused += 1;
                }
                None
            }
        }
    }

    fn telemetry(
        &mut self,
        batch: VerifiedBatch,
        vehicle_id: String,
        vehicle_class: i32,
        at_ms: i64,
        report: &mut AuditReport,
    ) -> Option<(AuditCode, String)> {
        let known = self.chains.get(&vehicle_id);
        // The record is final: what a worker would wait for never comes, so a gap is accepted.
        match TelemetryChain::check(known.map(|c| &c.chain), &batch, true) {
            Ok(SequenceVerdict::Apply { missing_reports }) => {
                // A vehicle first seen in a range that does not start at the beginning began
                // before it: what it reported before is not missing.
                if known.is_some() || self.range_start_ms.is_none() {
                    report.counts.vehicle_telemetry_reports_missing +=
                        u64::try_from(missing_reports).unwrap_or(0);
                }
                report.counts.vehicle_telemetry_batches += 1;
                let chain = TelemetryChain::advanced(known.map(|c| &c.chain), &batch, 0);
                if known.is_none() {
                    self.chain_order.push_back((at_ms, vehicle_id.clone()));
                }
                self.chains.insert(
                    vehicle_id,
                    VehicleChain {
                        chain,
                        vehicle_class,
                        last_seen_ms: at_ms,
                    },
                );
                None
            }
            Ok(SequenceVerdict::Duplicate) => {
                report.counts.vehicle_telemetry_duplicates += 1;
                None
            }
            Ok(SequenceVerdict::Gap { .. }) => None,
            Err(r) => Some((AuditCode::VehicleTelemetryOutOfSequence, r.to_string())),
        }
    }

    fn session(&mut self, event: VehicleSessionEvent, at_ms: i64) -> Option<BookRefusal> {
        // The entity version the session started with must be one the registry applied, of the
        // kind the event states, not a removal.
        let wrong = self.registry.as_ref().and_then(|registry| {
            match registry.version(&event.entity_id, event.entity_version) {
                None => Some("no such version in the registry".to_owned()),
                Some(v) if v.removed => Some("a version that removes the entity".to_owned()),
                Some(v) if v.kind != event.service_kind => Some(format!(
                    "the version sells {:?}, the event says {:?}",
                    v.kind, event.service_kind
                )),
                Some(_) => None,
            }
        });
        let vehicle_class = self.chains.get(&event.vehicle_id).map(|c| c.vehicle_class);
        let ended = matches!(
            event.event,
            SessionEventKind::Exit | SessionEventKind::Cross
        )
        .then_some(event.occurred_at_ms);
        let session = self
            .sessions
            .entry(event.payment_id)
            .or_insert_with(|| SessionSeen {
                session_id: event.session_id,
                vehicle_id: event.vehicle_id.clone(),
                wallet: event.wallet.clone(),
                entity_id: event.entity_id.clone(),
                entity_version: event.entity_version,
                kind: event.service_kind,
                entered_at_ms: event.entered_at_ms,
                ended_at_ms: None,
                vehicle_class: None,
                last_seen_ms: at_ms,
            });
        session.last_seen_ms = at_ms;
        if ended.is_some() && session.ended_at_ms.is_none() {
            session.ended_at_ms = ended;
            session.vehicle_class = vehicle_class;
        }
        self.session_order.push_back((at_ms, event.payment_id));
        wrong.map(|why| BookRefusal {
            code: AuditCode::VehicleSessionInvalid,
            found: format!(
                "entity {} version {}: {why}",
                event.entity_id, event.entity_version
            ),
            payload_sha256: [0; 32],
        })
    }

    /// A clearing message bound to a pre-authorization of the record: a charge, checked
    /// against its session once the records around it are read. A second one with other
    /// terms for the same session is reported here.
    #[allow(clippy::too_many_arguments)]
    pub fn charge(
        &mut self,
        payment_id: PaymentId,
        terms: &Terms,
        digest: Digest32,
        binding: Digest32,
        location: &Location,
        at_ms: i64,
        report: &mut AuditReport,
    ) {
        if let Some(first) = self.charges.get(&payment_id) {
            if first.digest != digest || first.terms != *terms {
                report.push(Discrepancy::new(
                    AuditCode::VehicleChargeTwice,
                    location.clone(),
                    Some(payment_id),
                    format!(
                        "one charge per session (as at {} {}: {})",
                        first.location.subject,
                        first.location.offset,
                        first.terms.describe()
                    ),
                    terms.describe(),
                ));
            }
            return;
        }
        self.charges.insert(
            payment_id,
            ChargeSeen {
                terms: terms.clone(),
                digest,
                authorization: binding,
                location: location.clone(),
                at_ms,
            },
        );
        self.charge_order.push_back((at_ms, payment_id));
        self.pending.push_back((at_ms, payment_id));
    }

    /// A charge a vehicle stage refused before any money moved ([`is_refused_charge`]): it is
    /// announced under the payment id of a session, which the record must show like a charge's.
    pub fn refused_charge(
        &mut self,
        payment_id: PaymentId,
        outcome: &super::check::OutcomeFact,
        location: &Location,
        report: &mut AuditReport,
    ) {
        report.counts.vehicle_charges_checked += 1;
        if self.sessions.contains_key(&payment_id) {
            return;
        }
        let at_start = self
            .range_start_ms
            .is_some_and(|from| entered_at_of(&payment_id) < from.saturating_add(self.edge_ms));
        if at_start || !self.covers(&outcome.terms.payer.institution_id, false) {
            report.counts.vehicle_charges_partial += 1;
            return;
        }
        report.push(Discrepancy::new(
            AuditCode::VehicleChargeWithoutSession,
            location.clone(),
            Some(payment_id),
            "a session event with the refused charge's payment id",
            format!(
                "none ({} {})",
                outcome.describe_status(),
                outcome.terms.describe()
            ),
        ));
    }

    /// Checks the charges read more than the reorder delay before `newest_ms`, and forgets
    /// what nothing can need any more.
    pub fn tick(&mut self, newest_ms: i64, report: &mut AuditReport) {
        let horizon = newest_ms.saturating_sub(self.reorder_ms);
        while let Some(&(at_ms, payment_id)) = self.pending.front() {
            if at_ms > horizon && self.pending.len() <= PENDING_CHARGES_MAX {
                break;
            }
            self.pending.pop_front();
            self.check_charge(payment_id, None, report);
        }
        self.forget(newest_ms);
    }

    /// Checks every charge left, at the end of a range ending at `range_end_ms`: one read
    /// within the edge of the end without its session is partial.
    pub fn finish(&mut self, range_end_ms: i64, report: &mut AuditReport) {
        let end_edge = range_end_ms.saturating_sub(self.edge_ms);
        while let Some((_, payment_id)) = self.pending.pop_front() {
            self.check_charge(payment_id, Some(end_edge), report);
        }
    }

    fn check_charge(
        &mut self,
        payment_id: PaymentId,
        end_edge: Option<i64>,
        report: &mut AuditReport,
    ) {
        let Some(charge) = self.charges.get(&payment_id).cloned() else {
            return;
        };
        let Some(authorization) = self.authorizations.get(&charge.authorization).cloned() else {
            return;
        };
        let a = &authorization.fact;
        let terms = &charge.terms;
        let discrepancy = |code, expected: String, found: String| {
            Discrepancy::new(
                code,
                charge.location.clone(),
                Some(payment_id),
                expected,
                found,
            )
        };
        // What remains of the pre-authorization, and its expiry.
        let charged_before: i64 = authorization
            .charged
            .iter()
            .filter(|(id, _)| **id != payment_id)
            .map(|(_, fen)| *fen)
            .sum();
        if let Some(held) = self.authorizations.get_mut(&charge.authorization) {
            held.charged.insert(payment_id, terms.amount_fen);
        }
        if charged_before.saturating_add(terms.amount_fen) > a.max_amount_fen {
            report.push(discrepancy(
                AuditCode::ClearingMismatch,
                format!(
                    "at most what remains of the pre-authorized {} fen ({} fen)",
                    a.max_amount_fen,
                    a.max_amount_fen - charged_before
                ),
                format!("{} fen", terms.amount_fen),
            ));
        }
        report.counts.vehicle_charges_checked += 1;
        let Some(session) = self.sessions.get(&payment_id).cloned() else {
            let entered_at_ms = entered_at_of(&payment_id);
            let at_start = self
                .range_start_ms
                .is_some_and(|from| entered_at_ms < from.saturating_add(self.edge_ms));
            let at_end = end_edge.is_some_and(|edge| charge.at_ms >= edge);
            let unread = !self.covers(&terms.payer.institution_id, false);
            if at_start || at_end || unread {
                report.counts.vehicle_charges_partial += 1;
            } else {
                report.push(discrepancy(
                    AuditCode::VehicleChargeWithoutSession,
                    "a session event with the charge's payment id".to_owned(),
                    format!("none ({})", terms.describe()),
                ));
            }
            return;
        };
        let version = self
            .registry
            .as_ref()
            .and_then(|r| r.version(&session.entity_id, session.entity_version));
        let parties_differ = session.vehicle_id != a.vehicle_id
            || session.entity_id != a.entity_id
            || session.wallet != terms.payer
            || a.wallet != terms.payer
            || version.is_some_and(|v| v.wallet != terms.payee);
        if parties_differ {
            report.push(discrepancy(
                AuditCode::VehicleChargeMismatch,
                format!(
                    "vehicle {} at {} paid by {}/{}{}",
                    session.vehicle_id,
                    session.entity_id,
                    session.wallet.institution_id,
                    session.wallet.wallet_id,
                    version
                        .map(|v| format!(" to {}/{}", v.wallet.institution_id, v.wallet.wallet_id))
                        .unwrap_or_default()
                ),
                format!(
                    "pre-authorization of {} at {}: {}",
                    a.vehicle_id,
                    a.entity_id,
                    terms.describe()
                ),
            ));
            return;
        }
        // The fee and its due time, from the session's end or the station's report.
        let fees: Vec<(Result<i64, Rejected>, i64)> = match session.kind {
            ServiceKind::Toll | ServiceKind::Parking => {
                let Some(ended_at_ms) = session.ended_at_ms else {
                    report.push(discrepancy(
                        AuditCode::VehicleChargeWithoutSession,
                        "the end of its session".to_owned(),
                        format!(
                            "session {} entered at {} ms, not ended",
                            session.session_id, session.entered_at_ms
                        ),
                    ));
                    return;
                };
                let fee = version.map(|v| match session.kind {
                    ServiceKind::Toll => match session.vehicle_class {
                        Some(class) => toll_fee(&v.tariff, class),
                        // The class is stated by telemetry the range does not hold.
                        None => Ok(terms.amount_fen),
                    },
                    _ => parking_fee(&v.tariff, session.entered_at_ms, ended_at_ms),
                });
                vec![(fee.unwrap_or(Ok(terms.amount_fen)), ended_at_ms)]
            }
            ServiceKind::Charging | ServiceKind::Fuel => {
                let reports: Vec<ReportFact> = self
                    .reports
                    .get(&session.session_id)
                    .map(|(r, _)| r.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| {
                        r.entity_id == session.entity_id && r.vehicle_id == session.vehicle_id
                    })
                    .collect();
                if reports.is_empty() && !self.covers(&terms.payer.institution_id, true) {
                    report.counts.vehicle_charges_partial += 1;
                    return;
                }
                if reports.is_empty() {
                    report.push(discrepancy(
                        AuditCode::VehicleChargeWithoutSession,
                        "the station's report of its session".to_owned(),
                        format!("no verified report for session {}", session.session_id),
                    ));
                    return;
                }
                reports
                    .iter()
                    .map(|r| {
                        let fee = version.map_or(Ok(terms.amount_fen), |v| {
                            metered_fee(&v.tariff, r.unit, r.quantity_milli)
                        });
                        (fee, r.completed_at_ms)
                    })
                    .collect()
            }
        };
        let Some(&(_, due_at_ms)) = fees
            .iter()
            .find(|(fee, _)| fee.as_ref().is_ok_and(|fee| *fee == terms.amount_fen))
        else {
            let expected = match &fees[0].0 {
                Ok(fee) => format!("{fee} fen"),
                Err(r) => format!("no charge ({r})"),
            };
            report.push(discrepancy(
                AuditCode::VehicleChargeAmountMismatch,
                format!(
                    "{expected} for {:?} session {} under {} version {}",
                    session.kind, session.session_id, session.entity_id, session.entity_version
                ),
                format!("{} fen", terms.amount_fen),
            ));
            return;
        };
        if due_at_ms > a.expires_at_ms {
            report.push(discrepancy(
                AuditCode::ClearingMismatch,
                format!(
                    "due before the pre-authorization expires at {} ms",
                    a.expires_at_ms
                ),
                format!("due at {due_at_ms} ms"),
            ));
        }
        let expected = charge_digest(
            &payment_id,
            session.session_id.as_bytes(),
            a.authorization_id.as_bytes(),
            &session.vehicle_id,
            &terms.payer,
            &terms.payee,
            terms.amount_fen,
            due_at_ms,
        );
        if expected != charge.digest {
            report.push(discrepancy(
                AuditCode::VehicleChargeMismatch,
                format!("charge digest {expected} of its session, pre-authorization and terms"),
                format!("{}", charge.digest),
            ));
        }
    }

    /// Forgets idle chains, expired pre-authorizations, and sessions, reports and charges
    /// that nothing read from now on can need.
    fn forget(&mut self, newest_ms: i64) {
        let horizon = newest_ms.saturating_sub(SESSION_RETENTION_MS);
        let idle_horizon = newest_ms.saturating_sub(CHAIN_IDLE_MS);
        while let Some((at_ms, vehicle)) = self.chain_order.pop_front() {
            if at_ms >= idle_horizon {
                self.chain_order.push_front((at_ms, vehicle));
                break;
            }
            // One entry per vehicle, moved back while it is active.
            match self.chains.get(&vehicle).map(|c| c.last_seen_ms) {
                Some(last_seen_ms) if last_seen_ms > at_ms => {
                    self.chain_order.push_back((last_seen_ms, vehicle));
                }
                Some(_) => {
                    self.chains.remove(&vehicle);
                }
                None => {}
            }
        }
        while let Some(&(expires_at_ms, digest)) = self.authorization_order.front() {
            if expires_at_ms >= horizon {
                break;
            }
            self.authorization_order.pop_front();
            self.authorizations.remove(&digest);
        }
        while let Some(&(at_ms, payment_id)) = self.session_order.front() {
            if at_ms >= horizon {
                break;
            }
            self.session_order.pop_front();
            // An open session is kept until it ends.
            if self
                .sessions
                .get(&payment_id)
                .is_some_and(|s| s.last_seen_ms <= at_ms && s.ended_at_ms.is_some())
            {
                self.sessions.remove(&payment_id);
            }
        }
        while let Some(&(at_ms, session_id)) = self.report_order.front() {
            if at_ms >= horizon {
                break;
            }
            self.report_order.pop_front();
            if self.reports.get(&session_id).is_some_and(|r| r.1 <= at_ms) {
                self.reports.remove(&session_id);
            }
        }
        while let Some(&(at_ms, payment_id)) = self.charge_order.front() {
            if at_ms >= horizon || self.pending.iter().any(|(_, p)| *p == payment_id) {
                break;
            }
            self.charge_order.pop_front();
            self.charges.remove(&payment_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::audit::book::tests::record;
    use std::sync::Arc;

    use bytes::Bytes;
    use dcpipe_connectors::bus::Position;
    use dcpipe_schemas::{
        GeoPoint, OutcomeStatus, ParkingTariff, ReportId, TelemetryFix, VehicleTelemetryBatch,
    };

    use super::*;
    use crate::audit::book::{Book, BookConfig};
    use crate::audit::check::{Checked, OutcomeFact, check_record};
    use crate::audit::trust::{RevocationHistory, TimedVerifier};
    use crate::pki::{
        Algorithm, AlgorithmChoice, CertifiedKey, DemoPkiOptions, PkiDirectory, SubjectSpec,
    };
    use crate::vehicle::signed::service_complete_report_bytes;
    use crate::vehicle::telemetry::TelemetryBatcher;

    const T0_MS: i64 = 1_800_000_000_000;
    const MINUTE_MS: i64 = 60_000;
    const VEHICLE: &str = "LSVAU2180N2000001";

    fn party(institution: &str, wallet: &str) -> PartyRef {
        PartyRef {
            institution_id: institution.into(),
            wallet_id: wallet.into(),
        }
    }

    fn payer() -> PartyRef {
        party("oi01", "w1")
    }

    /// The parking lot: its wallet is held by the vehicle's institution (no settlement).
    fn parking_lot() -> ServiceEntity {
        ServiceEntity {
            entity_id: "PARK-1".into(),
            kind: ServiceKind::Parking,
            name: "PARK-1".into(),
            wallet: party("oi01", "w-park"),
            geofence: vec![
                GeoPoint {
                    latitude_e7: 0,
                    longitude_e7: 0,
                },
                GeoPoint {
                    latitude_e7: 0,
                    longitude_e7: 1_000,
                },
                GeoPoint {
                    latitude_e7: 1_000,
                    longitude_e7: 1_000,
                },
            ],
            tariff: Tariff {
                toll: None,
                parking: Some(ParkingTariff {
                    fen_per_minute: 10,
                    free_minutes: 15,
                    daily_cap_fen: 6_000,
                }),
                metered: None,
            },
            version: 1,
            updated_at_ms: T0_MS - 3_600_000,
            removed: false,
            certificate: Vec::new(),
            signature: Vec::new(),
        }
    }

    fn registry() -> RegistryHistory {
        let mut registry = RegistryHistory::new();
        assert!(registry.insert(&parking_lot()));
        registry
    }

    fn authorization(max_amount_fen: i64) -> AuthorizationFact {
        AuthorizationFact {
            digest: Digest32::from_bytes([9; 32]),
            authorization_id: AuthorizationId::from_bytes([4; 16]),
            vehicle_id: VEHICLE.into(),
            wallet: payer(),
            entity_id: "PARK-1".into(),
            max_amount_fen,
            expires_at_ms: T0_MS + 24 * 60 * MINUTE_MS,
        }
    }

    const ENTERED_MS: i64 = T0_MS;
    const EXITED_MS: i64 = T0_MS + 30 * MINUTE_MS;

    fn stay() -> (SessionId, PaymentId) {
        let session = session_id(VEHICLE, "PARK-1", ENTERED_MS);
        (session, session_payment_id(&session, ENTERED_MS))
    }

    fn event(kind: SessionEventKind, occurred_at_ms: i64) -> VehicleSessionEvent {
        let (session_id, payment_id) = stay();
        VehicleSessionEvent {
            event: kind,
            session_id,
            payment_id,
            vehicle_id: VEHICLE.into(),
            wallet: payer(),
            entity_id: "PARK-1".into(),
            entity_version: 1,
            service_kind: ServiceKind::Parking,
            entered_at_ms: ENTERED_MS,
            occurred_at_ms,
            batch_first_sequence: 0,
            decided_at_ms: occurred_at_ms + 1_000,
        }
    }

    fn terms(amount_fen: i64) -> Terms {
        Terms {
            payer: payer(),
            payee: party("oi01", "w-park"),
            amount_fen,
            currency: "CNY".into(),
        }
    }

    fn digest_of(amount_fen: i64) -> Digest32 {
        let (session, payment) = stay();
        let t = terms(amount_fen);
        charge_digest(
            &payment,
            session.as_bytes(),
            authorization(0).authorization_id.as_bytes(),
            VEHICLE,
            &t.payer,
            &t.payee,
            amount_fen,
            EXITED_MS,
        )
    }

    /// A pre-authorization, the stay's events and its charge cleared for `amount_fen` (named
    /// by `digest`), accepted and completed.
    fn charged_stay(max_amount_fen: i64, amount_fen: i64, digest: Digest32) -> Vec<Checked> {
        let payment_id = stay().1;
        vec![
            record(
                "vehicle.authorization.oi01",
                1,
                T0_MS - 10,
                Fact::Vehicle(VehicleFact::Authorization(authorization(max_amount_fen))),
            ),
            record(
                "vehicle.session.oi01",
                1,
                ENTERED_MS + 1_000,
                Fact::Vehicle(VehicleFact::Session(Box::new(event(
                    SessionEventKind::Enter,
                    ENTERED_MS,
                )))),
            ),
            record(
                "vehicle.session.oi01",
                2,
                EXITED_MS + 1_000,
                Fact::Vehicle(VehicleFact::Session(Box::new(event(
                    SessionEventKind::Exit,
                    EXITED_MS,
                )))),
            ),
            record(
                "clearing.request.oi01",
                1,
                EXITED_MS + 1_001,
                Fact::Clearing {
                    payment_id,
                    terms: terms(amount_fen),
                    digest,
                    binding: authorization(0).digest,
                },
            ),
            record(
                "clearing.response.oi01",
                1,
                EXITED_MS + 1_002,
                Fact::Response {
                    payment_id,
                    accepted: true,
                    amount_fen,
                },
            ),
            record(
                "txn.result.oi01",
                1,
                EXITED_MS + 1_003,
                Fact::Outcome(OutcomeFact {
                    payment_id,
                    digest,
                    status: OutcomeStatus::Completed,
                    reason_code: None,
                    terms: terms(amount_fen),
                    stage: "commit".into(),
                    decided_at_ms: EXITED_MS + 1_003,
                }),
            ),
        ]
    }

    fn audit(config: BookConfig, records: Vec<Checked>) -> AuditReport {
        let mut book = Book::new(config);
        book.set_registry(registry());
        let mut report = AuditReport::default();
        for r in records {
            book.apply(r, &mut report);
        }
        book.finish(EXITED_MS + 60 * MINUTE_MS, &mut report);
        report
    }

    /// Half an hour with 15 free minutes at 10 fen a minute.
    const FEE_FEN: i64 = 150;

    #[test]
    fn a_charge_of_its_sessions_fee_under_its_pre_authorization_reconciles() {
        let fee = parking_fee(&parking_lot().tariff, ENTERED_MS, EXITED_MS).expect("a fee");
        assert_eq!(fee, FEE_FEN);
        let report = audit(
            BookConfig::default(),
            charged_stay(1_000, FEE_FEN, digest_of(FEE_FEN)),
        );
        assert!(report.is_clean(), "{:#?}", report.discrepancies);
        assert_eq!(report.counts.vehicle_charges_checked, 1);
        assert_eq!(report.counts.vehicle_session_events, 2);
        assert_eq!(report.counts.payments_completed, 1);
    }

    #[test]
    fn a_charge_other_than_the_tariff_is_found() {
        let report = audit(
            BookConfig::default(),
            charged_stay(1_000, 200, digest_of(200)),
        );
        assert_eq!(report.count_of(AuditCode::VehicleChargeAmountMismatch), 1);
        assert_eq!(report.discrepancies.len(), 1, "{:#?}", report.discrepancies);
        let found = &report.discrepancies[0];
        assert_eq!(found.location.subject, "clearing.request.oi01");
        assert!(found.expected.starts_with("150 fen"), "{}", found.expected);
    }

    #[test]
    fn a_charge_whose_digest_is_not_its_sessions_is_found() {
        let report = audit(
            BookConfig::default(),
            charged_stay(1_000, FEE_FEN, Digest32::from_bytes([7; 32])),
        );
        assert_eq!(report.count_of(AuditCode::VehicleChargeMismatch), 1);
        assert_eq!(report.discrepancies.len(), 1, "{:#?}", report.discrepancies);
    }

    #[test]
    fn a_charge_above_its_pre_authorization_is_found() {
        let report = audit(
            BookConfig::default(),
            charged_stay(100, FEE_FEN, digest_of(FEE_FEN)),
        );
        assert_eq!(report.count_of(AuditCode::ClearingMismatch), 1);
        assert_eq!(report.discrepancies.len(), 1, "{:#?}", report.discrepancies);
    }

    #[test]
    fn a_charge_without_its_session_is_found_unless_the_session_began_before_the_range() {
        let without_events = || {
            let mut records = charged_stay(1_000, FEE_FEN, digest_of(FEE_FEN));
            records.retain(|r| !r.subject.starts_with("vehicle.session"));
            records
        };
        let report = audit(BookConfig::default(), without_events());
        assert_eq!(report.count_of(AuditCode::VehicleChargeWithoutSession), 1);
        assert_eq!(report.discrepancies.len(), 1, "{:#?}", report.discrepancies);

        // The range starts during the stay: its events are before it.
        let config = BookConfig {
            range_start_ms: Some(T0_MS - 20),
            ..BookConfig::default()
        };
        let report = audit(config, without_events());
        assert!(report.is_clean(), "{:#?}", report.discrepancies);
        assert_eq!(report.counts.vehicle_charges_partial, 1);
    }

    #[test]
    fn a_charge_whose_sessions_are_not_read_is_partial() {
        let mut records = charged_stay(1_000, FEE_FEN, digest_of(FEE_FEN));
        records.retain(|r| !r.subject.starts_with("vehicle.session"));
        let mut book = Book::new(BookConfig::default());
        book.set_registry(registry());
        let subjects = vec![
            "vehicle.authorization.oi01".to_owned(),
            "clearing.request.oi01".to_owned(),
            "vehicle.session.oi02".to_owned(),
        ];
        book.set_vehicle_coverage(Coverage::of(&subjects));
        let mut report = AuditReport::default();
        for r in records {
            book.apply(r, &mut report);
        }
        book.finish(EXITED_MS + 60 * MINUTE_MS, &mut report);
        assert!(report.is_clean(), "{:#?}", report.discrepancies);
        assert_eq!(report.counts.vehicle_charges_partial, 1);
    }

    #[test]
    fn a_refused_charge_is_its_sessions() {
        let refused = |offset| {
            record(
                "txn.result.oi01",
                offset,
                EXITED_MS + 1_003,
                Fact::Outcome(OutcomeFact {
                    payment_id: stay().1,
                    digest: Digest32::from_bytes([6; 32]),
                    status: OutcomeStatus::Rejected,
                    reason_code: Some("preauth.exceeded".into()),
                    terms: terms(FEE_FEN),
                    stage: crate::vehicle::stages::matching::STAGE.into(),
                    decided_at_ms: EXITED_MS + 1_003,
                }),
            )
        };
        let mut records: Vec<Checked> = charged_stay(100, FEE_FEN, digest_of(FEE_FEN))
            .into_iter()
            .filter(|r| r.subject.starts_with("vehicle."))
            .collect();
        records.push(refused(1));
        records.push(refused(2));
        let report = audit(BookConfig::default(), records.clone());
        assert!(report.is_clean(), "{:#?}", report.discrepancies);
        assert_eq!(report.counts.vehicle_charges_checked, 1);
        assert_eq!(report.counts.payments_rejected, 1);

        records.retain(|r| !r.subject.starts_with("vehicle.session"));
        let report = audit(BookConfig::default(), records);
        assert_eq!(report.count_of(AuditCode::VehicleChargeWithoutSession), 1);
        assert_eq!(report.discrepancies.len(), 1, "{:#?}", report.discrepancies);
    }

    #[test]
    fn a_second_charge_for_one_session_is_found() {
        let mut records = charged_stay(1_000, FEE_FEN, digest_of(FEE_FEN));
        records.push(record(
            "clearing.request.oi01",
            2,
            EXITED_MS + 2_000,
            Fact::Clearing {
                payment_id: stay().1,
                terms: terms(FEE_FEN + 10),
                digest: digest_of(FEE_FEN + 10),
                binding: authorization(0).digest,
            },
        ));
        let report = audit(BookConfig::default(), records);
        assert_eq!(report.count_of(AuditCode::VehicleChargeTwice), 1);
        assert_eq!(report.discrepancies.len(), 1, "{:#?}", report.discrepancies);
    }

    #[test]
    fn a_session_of_an_entity_version_the_registry_does_not_hold_is_found() {
        let mut records = charged_stay(1_000, FEE_FEN, digest_of(FEE_FEN));
        for r in &mut records {
            if let Fact::Vehicle(VehicleFact::Session(event)) = &mut r.fact {
                event.entity_version = 2;
            }
        }
        let report = audit(BookConfig::default(), records);
        // Both events name it; the charge is still its session's.
        assert_eq!(report.count_of(AuditCode::VehicleSessionInvalid), 2);
        assert_eq!(report.discrepancies.len(), 2, "{:#?}", report.discrepancies);
    }

    fn pki() -> PkiDirectory {
        PkiDirectory::generate(&DemoPkiOptions::new(2, 2, AlgorithmChoice::P256, T0_MS))
            .expect("demo PKI")
    }

    fn context(pki: &PkiDirectory) -> CheckContext {
        CheckContext::new(TimedVerifier::new(
            Arc::clone(pki.trust_store()),
            RevocationHistory::new(),
        ))
    }

    fn issue(pki: &PkiDirectory, role: Role, id: &str, institution: &str) -> CertifiedKey {
        pki.issue(
            &SubjectSpec {
                role,
                id,
                institution,
                algorithm: Algorithm::EcdsaP256Sha256,
            },
            T0_MS - 86_400_000,
            T0_MS + 86_400_000,
        )
        .expect("certificate")
    }

    fn audit_record(subject: &str, offset: u64, payload: Vec<u8>) -> AuditRecord {
        AuditRecord {
            subject: subject.into(),
            position: Position {
                partition: 0,
                offset,
            },
            timestamp_ms: T0_MS + offset as i64,
            payload: Bytes::from(payload),
        }
    }

    fn fixes(from_ms: i64, n: i64) -> Vec<TelemetryFix> {
        (0..n)
            .map(|i| TelemetryFix {
                latitude_e7: 399_042_000 + i as i32,
                longitude_e7: 1_164_074_000,
                horizontal_accuracy_cm: Some(300),
                speed_cm_per_s: 100,
                heading_cdeg: 0,
                recorded_at_ms: from_ms + i * 2_000,
            })
            .collect()
    }

    #[test]
    fn telemetry_is_verified_at_its_own_time_and_held_to_its_vehicles_chain() {
        let pki = pki();
        let context = context(&pki);
        let key = issue(&pki, Role::Vehicle, VEHICLE, "oi01");
        let wallet = payer();
        let mut batcher =
            TelemetryBatcher::new(VEHICLE, 1, wallet.clone(), key.certificate(), key.key());
        let batches: Vec<VehicleTelemetryBatch> = (0..3)
            .map(|i| batcher.seal(fixes(T0_MS + i * 20_000, 5)).expect("signs"))
            .collect();
        let subject = subjects::vehicle_telemetry("oi01");
        let frame = |b: &VehicleTelemetryBatch| dcpipe_schemas::encode(b).expect("encodes");

        // A report changed after the vehicle signed: refused.
        let mut forged = batches[1].clone();
        forged.reports[2].latitude_e7 += 10;
        let checked = check_record(&context, &audit_record(&subject, 9, frame(&forged)));
        assert!(
            matches!(
                checked.fact,
                Fact::Refused {
                    code: AuditCode::VehicleTelemetrySignatureInvalid,
                    ..
                }
            ),
            "{:?}",
            checked.fact
        );
        // On another institution's subject: refused.
        let checked = check_record(
            &context,
            &audit_record(&subjects::vehicle_telemetry("oi02"), 9, frame(&batches[0])),
        );
        assert!(
            matches!(checked.fact, Fact::Refused { .. }),
            "{:?}",
            checked.fact
        );

        // In order, a copy of the second, then another history from sequence 5 (signed by the
        // vehicle: authentic, but out of its chain).
        let mut other = TelemetryBatcher::new(VEHICLE, 1, wallet, key.certificate(), key.key())
            .resume(5, Digest32::from_bytes([1; 32]));
        let conflicting = other.seal(fixes(T0_MS + 90_000, 5)).expect("signs");
        let frames = [
            frame(&batches[0]),
            frame(&batches[1]),
            frame(&batches[1]),
            frame(&batches[2]),
            frame(&conflicting),
        ];
        let mut book = Book::new(BookConfig::default());
        let mut report = AuditReport::default();
        for (i, f) in frames.into_iter().enumerate() {
            let checked = check_record(&context, &audit_record(&subject, i as u64 + 1, f));
            assert!(
                matches!(checked.fact, Fact::Vehicle(VehicleFact::Telemetry { .. })),
                "{:?}",
                checked.fact
            );
            book.apply(checked, &mut report);
        }
        book.finish(T0_MS + 3_600_000, &mut report);
        assert_eq!(report.counts.vehicle_telemetry_batches, 3);
        assert_eq!(report.counts.vehicle_telemetry_duplicates, 1);
        assert_eq!(report.counts.vehicle_telemetry_reports_missing, 0);
        assert_eq!(
            report.count_of(AuditCode::VehicleTelemetryOutOfSequence),
            1,
            "{:#?}",
            report.discrepancies
        );
        assert_eq!(report.discrepancies[0].location.offset, 5);
        assert_eq!(report.discrepancies.len(), 1);
    }

    #[test]
    fn a_station_report_is_verified_and_a_changed_quantity_is_forged() {
        let pki = pki();
        let context = context(&pki);
        let station = issue(&pki, Role::ServiceEntity, "CHG-1", "oi02");
        let mut signed = ServiceCompleteReport {
            report_id: ReportId::from_bytes([3; 16]),
            entity_id: "CHG-1".into(),
            vehicle_id: VEHICLE.into(),
            session_id: session_id(VEHICLE, "CHG-1", T0_MS),
            unit: MeterUnit::Kwh,
            quantity_milli: 20_000,
            completed_at_ms: T0_MS + 600_000,
            certificate: station.certificate().der().to_vec(),
            signature: Vec::new(),
        };
        signed.signature = station
            .key()
            .sign(&service_complete_report_bytes(&signed))
            .expect("signs");
        let subject = subjects::vehicle_report("oi01");
        let checked = check_record(
            &context,
            &audit_record(
                &subject,
                1,
                dcpipe_schemas::encode(&signed).expect("encodes"),
            ),
        );
        assert!(
            matches!(&checked.fact, Fact::Vehicle(VehicleFact::Report(r)) if r.quantity_milli == 20_000),
            "{:?}",
            checked.fact
        );
        let mut changed = signed.clone();
        changed.quantity_milli = 40_000;
        let checked = check_record(
            &context,
            &audit_record(
                &subject,
                2,
                dcpipe_schemas::encode(&changed).expect("encodes"),
            ),
        );
        assert!(
            matches!(
                checked.fact,
                Fact::Refused {
                    code: AuditCode::VehicleReportForged,
                    ..
                }
            ),
            "{:?}",
            checked.fact
        );
    }

    #[test]
    fn a_session_event_carries_the_ids_derived_from_its_session() {
        let pki = pki();
        let context = context(&pki);
        let subject = subjects::vehicle_session("oi01");
        let good = event(SessionEventKind::Exit, EXITED_MS);
        let checked = check_record(
            &context,
            &audit_record(&subject, 1, dcpipe_schemas::encode(&good).expect("encodes")),
        );
        assert!(
            matches!(checked.fact, Fact::Vehicle(VehicleFact::Session(_))),
            "{:?}",
            checked.fact
        );
        let mut other = good.clone();
        other.payment_id = PaymentId::from_bytes([1; 16]);
        let checked = check_record(
            &context,
            &audit_record(
                &subject,
                2,
                dcpipe_schemas::encode(&other).expect("encodes"),
            ),
        );
        assert!(
            matches!(
                checked.fact,
                Fact::Refused {
                    code: AuditCode::VehicleSessionInvalid,
                    ..
                }
            ),
            "{:?}",
            checked.fact
        );
    }

    #[test]
    fn registry_versions_are_applied_as_the_registry_applies_them() {
        let mut registry = RegistryHistory::new();
        let mut lot = parking_lot();
        assert!(registry.insert(&lot));
        assert!(!registry.insert(&lot), "the version held");
        lot.version = 3;
        lot.tariff.parking = None;
        assert!(registry.insert(&lot));
        lot.version = 2;
        assert!(!registry.insert(&lot), "older than the version in force");
        assert!(
            registry
                .version("PARK-1", 1)
                .is_some_and(|v| v.tariff.parking.is_some())
        );
        assert!(registry.version("PARK-1", 2).is_none());
        assert_eq!(registry.refused, 2);
    }
}
