//! What an institution's vehicle stages share: its back-end (ledger, signer, clock), its session
//! store, the registry of service entities this process follows, and the flow's policies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use dcpipe_connectors::bus::{Bus, BusError, Follow};
use dcpipe_connectors::session::SessionStore;
use dcpipe_schemas::ServiceEntity;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::preauth::PreauthPolicy;
use super::registry::{EntityRegistry, RegistryChange, verify_entity};
use super::session::SessionConfig;
use super::telemetry::TelemetryPolicy;
use crate::clearing::Institution;
use crate::pki::ChainVerifier;
use crate::reason::{Reason, Rejected};
use crate::runtime::{Follower, keep_following};
use crate::subjects;

/// Longest wait of one read of the registry follower for a new entry (a shutdown interrupts
/// it). A read that waited this long for nothing finds the follower caught up.
pub const REGISTRY_FOLLOW_WAIT: Duration = Duration::from_millis(200);

/// Records read per batch of the registry.
const REGISTRY_READ_BATCH_MAX: usize = 1_024;

/// The registry of service entities of this process, as its follower keeps it.
#[derive(Debug, Default)]
pub struct RegistryView {
    registry: RwLock<EntityRegistry>,
    /// Whether the follower has read the subject to its end once: before that, matching would
    /// miss entities and is held back.
    caught_up: AtomicBool,
    /// Woken when it is.
    caught_up_notify: Notify,
}

impl RegistryView {
    /// An empty registry, not caught up.
    pub fn new() -> Self {
        RegistryView::default()
    }

    /// The registry in force (read lock; held briefly).
    pub fn read(&self) -> RwLockReadGuard<'_, EntityRegistry> {
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the follower has read every entry published before it started.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Waits until the follower has caught up, at most `timeout`; returns whether it has.
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.caught_up_notify.notified();
            if self.is_caught_up() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_caught_up();
            }
        }
    }

    fn mark_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::AcqRel) {
            self.caught_up_notify.notify_waiters();
        }
    }

    /// Applies one entry checked by `verifier`.
    pub fn apply(
        &self,
        entity: &ServiceEntity,
        verifier: &ChainVerifier,
    ) -> Result<RegistryChange, Rejected> {
        let verified = verify_entity(entity, verifier)?;
        self.registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply(verified)
    }
}

/// Follows `vehicle.registry` from its beginning, live, into a [`RegistryView`].
///
/// Like the revocation follower it reads the subject with one long-lived follower
/// ([`Bus::follow`]) rather than joining a group or replaying it at each look: every process
/// needs every entry, and a replay per look made one broker consumer per process every few
/// hundred milliseconds. An entry that fails its checks is logged and counted under its reason,
/// and skipped; whoever published it reads the same code in the metrics.
#[derive(Debug)]
pub struct RegistryFollower {
    verifier: Arc<ChainVerifier>,
    view: Arc<RegistryView>,
    /// Next offset to read, per partition: what a new follower reads again is skipped.
    next: HashMap<u32, u64>,
}

impl RegistryFollower {
    /// A follower feeding `view`.
    pub fn new(verifier: Arc<ChainVerifier>, view: Arc<RegistryView>) -> Self {
        RegistryFollower {
            verifier,
            view,
            next: HashMap::new(),
        }
    }

    /// Applies what `follow` has (waiting up to `wait` for it); returns how many entries
    /// changed the registry. A read that found nothing within `wait` marks the view caught up.
    pub async fn read(
        &mut self,
        follow: &mut dyn Follow,
        wait: Duration,
    ) -> Result<usize, BusError> {
        let records = follow.next_batch(REGISTRY_READ_BATCH_MAX, wait).await?;
        if records.is_empty() {
            self.view.mark_caught_up();
            return Ok(0);
        }
        let mut changed = 0;
        for record in records {
            let next = self.next.entry(record.position.partition).or_insert(0);
            if record.position.offset < *next {
                continue;
            }
            *next = record.position.offset + 1;
            let applied = dcpipe_schemas::decode::<ServiceEntity>(&record.payload)
                .map_err(|e| Rejected::new(Reason::Schema(e.kind()), e.to_string()))
                .and_then(|entity| {
                    self.view
                        .apply(&entity, &self.verifier)
                        .map(|change| (entity, change))
                });
            match applied {
                Ok((_, RegistryChange::Duplicate)) => {}
                Ok((entity, change)) => {
                    tracing::debug!(entity = %entity.entity_id, version = entity.version, ?change, "registry entry applied");
                    metrics::counter!("dcpipe_vehicle_registry_applied_total").increment(1);
                    changed += 1;
                }
                Err(rejected) => {
                    tracing::warn!(reason = %rejected.reason, detail = %rejected.detail, "registry entry refused");
                    metrics::counter!("dcpipe_vehicle_registry_refused_total", "reason" => rejected.reason.as_str()).increment(1);
                }
            }
        }
        Ok(changed)
    }

    /// Follows `vehicle.registry` until `shutdown` is cancelled, following again with a
    /// backoff when the bus fails.
    pub async fn run(mut self, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
        keep_following("registry", &mut self, bus.as_ref(), &shutdown).await;
    }
}

impl Follower for RegistryFollower {
    /// One reader, read until the bus fails.
    async fn follow_until_error(&mut self, bus: &dyn Bus) -> BusError {
        let mut follow = match bus.follow(subjects::VEHICLE_REGISTRY).await {
            Ok(follow) => follow,
            Err(e) => return e,
        };
        loop {
            if let Err(e) = self.read(follow.as_mut(), REGISTRY_FOLLOW_WAIT).await {
                return e;
            }
        }
    }
}

/// Policies of the vehicle flow.
#[derive(Debug, Clone, Copy)]
pub struct VehiclePolicy {
    /// Time bounds of telemetry.
    pub telemetry: TelemetryPolicy,
    /// Thresholds of the session machine.
    pub sessions: SessionConfig,
    /// Bounds on pre-authorizations.
    pub preauth: PreauthPolicy,
    /// Deliveries of a batch after a gap before the gap is accepted (the missing reports
    /// counted as lost).
    pub gap_deliveries_max: u32,
}

impl Default for VehiclePolicy {
    fn default() -> Self {
        VehiclePolicy {
            telemetry: TelemetryPolicy::default(),
            sessions: SessionConfig::default(),
            preauth: PreauthPolicy::default(),
            gap_deliveries_max: GAP_DELIVERIES_DEFAULT,
        }
    }
}

/// Deliveries of a batch after a gap before the gap is accepted.
pub const GAP_DELIVERIES_DEFAULT: u32 = 3;

/// One institution's vehicle back-end: the payment back-end it charges through, its session
/// store, and the registry this process follows.
#[derive(Debug)]
pub struct VehicleInstitution {
    /// The institution (ledger, signer, verifier, clock, payment policy).
    pub institution: Arc<Institution>,
    /// Its session store.
    pub store: Arc<dyn SessionStore>,
    /// The registry of service entities in force.
    pub registry: Arc<RegistryView>,
    /// The flow's policies.
    pub policy: VehiclePolicy,
}
