//! The synthetic vehicles against the session machine: every charge a trip must cause is
//! found exactly once, with its amount, and no entity a trip only drove past is ever charged.

use std::collections::BTreeMap;

use dcpipe_loadtest::vehicles::{City, CityConfig, ExpectedCharge, Trip, TripConfig};
use dcpipe_pipeline::vehicle::matching::ended_session_fee;
use dcpipe_pipeline::vehicle::registry::{EntityRegistry, VerifiedEntity};
use dcpipe_pipeline::vehicle::session::{SessionConfig, SessionEvent, VehicleSessions};
use dcpipe_pipeline::vehicle::tariff::metered_fee;
use dcpipe_schemas::{MeterUnit, ServiceKind};

const T0_MS: i64 = 1_764_000_000_000;

fn registry(city: &City) -> EntityRegistry {
    let (registry, refused) = EntityRegistry::from_entries(
        city.entities()
            .map(|e| VerifiedEntity::without_signature_check(e.clone()).expect("valid geofence")),
    );
    assert!(refused.is_empty(), "{refused:?}");
    registry
}

/// A charge the machine's events call for: entity, entry, amount (metered ones
/// priced with the quantity the trip's station reports).
#[derive(Debug)]
struct Found {
    entity_id: String,
    entered_at_ms: i64,
    amount_fen: i64,
}

fn found_charges(trip: &Trip, events: &[SessionEvent]) -> Vec<Found> {
    let mut found = Vec::new();
    for event in events {
        let (session, exited_at_ms) = match event {
            SessionEvent::Enter(_) => continue,
            SessionEvent::Exit {
                session,
                exited_at_ms,
            }
            | SessionEvent::Cross {
                session,
                exited_at_ms,
            } => (session, *exited_at_ms),
        };
        let amount_fen = ended_session_fee(session, trip.vehicle_class, exited_at_ms)
            .unwrap_or_else(|| {
                // The station reports the quantity of the stay (the one closest in time).
                let quantity = trip
                    .expected
                    .iter()
                    .filter(|e| e.entity_id == session.entity_id)
                    .min_by_key(|e| (e.entered_at_ms - session.entered_at_ms).abs())
                    .and_then(|e| e.quantity_milli)
                    .unwrap_or(0);
                let unit = if session.kind == ServiceKind::Charging {
                    MeterUnit::Kwh
                } else {
                    MeterUnit::Litre
                };
                metered_fee(&session.tariff, unit, quantity)
            })
            .expect("priced");
        found.push(Found {
            entity_id: session.entity_id.clone(),
            entered_at_ms: session.entered_at_ms,
            amount_fen,
        });
    }
    found
}

fn matches(expected: &ExpectedCharge, found: &Found) -> bool {
    expected.entity_id == found.entity_id
        && (found.entered_at_ms - expected.entered_at_ms).abs() <= 60_000
        && (found.amount_fen - expected.amount_fen).abs() <= expected.tolerance_fen
}

#[test]
fn every_expected_charge_is_found_once_and_no_decoy_is_charged() {
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for city_seed in 0..3u64 {
        let city = City::generate(CityConfig::district(city_seed));
        let registry = registry(&city);
        let config = SessionConfig::default();
        for v in 0..30u64 {
            let seed = city_seed * 1_000 + v;
            let trip = Trip::generate(&city, &TripConfig::typical(seed, format!("V{seed}"), T0_MS));
            assert!(
                trip.fixes
                    .windows(2)
                    .all(|w| w[0].recorded_at_ms < w[1].recorded_at_ms),
                "fix times rise"
            );
            let mut sessions = VehicleSessions::new();
            let mut events = Vec::new();
            sessions.apply_all(
                &trip.vehicle_id,
                &trip.fixes,
                &registry,
                &config,
                &mut events,
            );
            let found = found_charges(&trip, &events);
            // Pair each expected charge with the closest found one of its entity.
            let mut unpaired: Vec<&Found> = found.iter().collect();
            for expected in &trip.expected {
                let closest = unpaired
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| matches(expected, f))
                    .min_by_key(|(_, f)| (f.entered_at_ms - expected.entered_at_ms).abs())
                    .map(|(i, _)| i);
                let Some(index) = closest else {
                    panic!("city {city_seed} trip {seed}: {expected:?} not found in {found:?}");
                };
                unpaired.remove(index);
            }
            assert!(
                unpaired.is_empty(),
                "city {city_seed} trip {seed}: charged without cause: {unpaired:?} \
                 (expected {:?})",
                trip.expected
            );
            for f in &found {
                assert!(
                    !trip.passed_by.contains(&f.entity_id),
                    "decoy charged: {f:?}"
                );
            }
            for e in &trip.expected {
                *totals
                    .entry(match e.kind {
                        ServiceKind::Toll => "toll",
                        ServiceKind::Parking => "parking",
                        ServiceKind::Charging => "charging",
                        ServiceKind::Fuel => "fuel",
                    })
                    .or_default() += 1;
            }
            *totals.entry("decoys").or_default() += trip.passed_by.len();
        }
    }
    // The trips exercised every kind of charge, and decoys.
    for kind in ["toll", "parking", "charging", "fuel", "decoys"] {
        assert!(totals.get(kind).copied().unwrap_or(0) >= 5, "{totals:?}");
    }
}

#[test]
fn the_same_seed_gives_the_same_trip() {
    let city = City::generate(CityConfig::district(9));
    let again = City::generate(CityConfig::district(9));
    assert_eq!(
        city.entities().cloned().collect::<Vec<_>>(),
        again.entities().cloned().collect::<Vec<_>>()
    );
    let a = Trip::generate(&city, &TripConfig::typical(5, "V5", T0_MS));
    let b = Trip::generate(&city, &TripConfig::typical(5, "V5", T0_MS));
    assert_eq!(a.fixes, b.fixes);
    assert_eq!(a.expected, b.expected);
}
