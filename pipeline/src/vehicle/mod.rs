//! Flow 3: vehicles pay where they are (docs/PROTOCOL.md, "Vehicles").
//!
//! The pure core of the flow, without bus or database:
//! - [`signed`]: the exact bytes every vehicle-flow signature covers, and the derived ids;
//! - [`telemetry`]: signed, hash-chained telemetry batches: the builder an in-vehicle client
//!   uses and the verification a matching worker applies, sequence checks included;
//! - [`registry`]: signed registry entries and the spatial index of geofences;
//! - [`session`]: per-vehicle sessions (enter, exit, cross) from noisy GNSS fixes;
//! - [`tariff`]: fees in integer fen from an entity's tariff;
//! - [`preauth`]: pre-authorizations and the rule that caps every charge;
//! - [`report`]: service-complete reports of charging and fuel stations;
//! - [`matching`]: what one batch does to a vehicle, between reading its record from the
//!   session store and committing the update back.
//!
//! Around it, the runtime: [`backend`] (an institution's vehicle back-end, the registry
//! follower), [`stages`] (pre-authorizations, matching, station reports) and [`charging`]
//! (each session's charge on the clearing path of every payment, [`crate::clearing`]).
//!
//! Every refusal is a [`crate::reason::Rejected`]: one of the vehicle codes of the one
//! [`crate::reason::Reason`] enum (docs/PROTOCOL.md §10.10), or a certificate's `cert.*`.

pub mod backend;
pub mod charging;
pub mod geometry;
pub mod matching;
pub mod preauth;
pub mod registry;
pub mod report;
pub mod session;
pub mod signed;
pub mod stages;
pub mod tariff;
pub mod telemetry;
