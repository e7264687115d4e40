//! Synthetic vehicles: a city of service entities on a street grid, and vehicles driving
//! through it with a realistic GNSS receiver, reproducible from a seed.
//!
//! [`City::generate`] lays out toll gantries (strips across a street, along it), parking lots,
//! charging and fuel stations (beside the streets, their edges a setback away from the
//! carriageway) with realistic shapes and sizes. [`Trip::generate`] sends one vehicle on an
//! itinerary through that city: along streets (through the gantries on its way), into lots
//! and stations for a stay, and past entities without entering them. Its fixes carry the
//! noise of a consumer receiver: metres of jitter, isolated outliers of hundreds of metres,
//! dropped fixes and gaps, an engine switched off while parked.
//!
//! Every trip knows, by construction, the charges that must follow from it: each gantry it
//! drives through lengthwise, each stay with its true entry and exit (and the fee they make),
//! each charging or fuel stay with the quantity the station reports; and the entities it only
//! drove past, which must never be charged.
//!
//! [`run_fleet`] replays whole trips at once and checks them (the demo); [`run_vehicles`] is
//! the load test of the flow (`dcpipe loadtest --vehicles N`).

mod city;
pub mod fleet;
pub mod load;
mod trip;

pub use city::{
    CITY_CENTRE, City, CityConfig, SETBACK_M, Site, Street, TOLL_LENGTH_M, TOLL_WIDTH_M,
};
pub use fleet::{Fleet, FleetConfig, FleetReport, SignedBatch, fleet_policy, run_fleet};
pub use load::{VehicleReport, run_vehicles};
pub use trip::{ExpectedCharge, Trip, TripConfig};
