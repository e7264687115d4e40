//! The vehicle flow's stages at the institution holding the vehicles' wallets: thin runtimes
//! around the pure core of [`crate::vehicle`], registered where they are defined.
//!
//! ```text
//! vehicle.authorization.<oi> ──▶ [vehicle-authorization]: verify, hold in the session store
//! vehicle.telemetry.<oi>     ──▶ [vehicle-matching]: verify, decide, commit at the version
//!                                 read; charges of ended sessions ──▶ clearing path
//! vehicle.report.<oi>        ──▶ [vehicle-report]: verify, price the session, commit the
//!                                 charge ──▶ clearing path
//! vehicle.registry           ──▶ every process's RegistryFollower (not a group stage)
//! ```
//!
//! Charges leave through [`super::charging`]: reserved at this institution, cleared with the
//! entity's institution by the payment stages (`payee`, `commit`, `finalize`), settled.

pub mod authorization;
pub mod matching;
pub mod report;

use std::time::Duration;

use crate::runtime::StageError;
use crate::vehicle::backend::RegistryView;

/// How long a stage waits for the registry follower to catch up before handing its batch
/// back: long enough for a large registry to be read at start, short enough to stay well
/// inside the bus's acknowledgement wait.
pub const REGISTRY_WAIT_MAX: Duration = Duration::from_secs(4);

/// Waits until the registry was read to its end once: a vehicle at an entity not yet known
/// would be missed. Transient when it takes longer than [`REGISTRY_WAIT_MAX`]: the batch comes
/// back later.
pub(crate) async fn registry_ready(registry: &RegistryView) -> Result<(), StageError> {
    if registry.wait_caught_up(REGISTRY_WAIT_MAX).await {
        Ok(())
    } else {
        Err(StageError::transient(
            "the service-entity registry is not read to its end yet",
        ))
    }
}
