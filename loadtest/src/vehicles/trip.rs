//! One vehicle's trip through a [`City`], its fixes and the charges it must cause.

use dcpipe_pipeline::vehicle::geometry::{PositionE7, PreparedZone};
use dcpipe_pipeline::vehicle::tariff::{metered_fee, parking_fee, toll_fee};
use dcpipe_schemas::{MeterUnit, ServiceKind, TelemetryFix};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::city::{City, Site};

/// Speed into and out of a lot or station, in m/s.
const MANOEUVRE_SPEED_M_PER_S: f64 = 3.0;
/// Fix interval while stationary with the engine on, in ms (units report less often at rest).
const STATIONARY_INTERVAL_MS: i64 = 10_000;
/// No entity reaches farther than this from its centre, in metres.
const NEAR_M: f64 = 250.0;
/// Motion is simulated in steps of this many ms.
const STEP_MS: i64 = 100;
/// No reception gap covers a toll gantry or comes within this distance of it, in metres (a
/// gap over a gantry leaves nothing to charge: no real system could).
const GAP_CLEARANCE_M: f64 = 200.0;

/// How one vehicle drives and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TripConfig {
    /// The seed: the same seed (and city) gives the same trip.
    pub seed: u64,
    /// The vehicle.
    pub vehicle_id: String,
    /// Its toll class (1 to 6 in the generated tariffs).
    pub vehicle_class: i32,
    /// Entities visited: driven through (tolls) or stayed at.
    pub visits: usize,
    /// Entities driven past on purpose, without entering.
    pub decoys: usize,
    /// Fix interval while driving, in ms.
    pub interval_ms: i64,
    /// Receiver noise, one standard deviation per axis, in metres.
    pub sigma_m: f64,
    /// Share of fixes that are outliers (isolated spikes of 100 to 300 m).
    pub outlier_rate: f64,
    /// Share of fixes lost.
    pub drop_rate: f64,
    /// Reception gaps (10 to 20 s without fixes) per kilometre driven.
    pub gaps_per_km: f64,
    /// Share of stays with the engine off (only ignition fixes).
    pub engine_off_rate: f64,
    /// When the trip starts.
    pub start_at_ms: i64,
}

impl TripConfig {
    /// A typical trip: three visits, two decoys, a fix a second, a few metres of noise.
    pub fn typical(seed: u64, vehicle_id: impl Into<String>, start_at_ms: i64) -> Self {
        TripConfig {
            seed,
            vehicle_id: vehicle_id.into(),
            vehicle_class: 1 + (seed % 3) as i32,
            visits: 3,
            decoys: 2,
            interval_ms: 1_000,
            sigma_m: 1.0 + (seed % 4) as f64,
            outlier_rate: 0.005,
            drop_rate: 0.02,
            gaps_per_km: 0.2,
            engine_off_rate: 0.5,
            start_at_ms,
        }
    }
}

/// A charge a trip must cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedCharge {
    /// The entity paid.
    pub entity_id: String,
    /// What for.
    pub kind: ServiceKind,
    /// The amount, in fen, from the true entry and exit (or the reported quantity).
    pub amount_fen: i64,
    /// How far a correct matcher's amount may differ: a started minute of parking, since
    /// entry and exit are known to a fix; 0 otherwise.
    pub tolerance_fen: i64,
    /// When the vehicle truly entered (or passed).
    pub entered_at_ms: i64,
    /// When it truly left.
    pub exited_at_ms: i64,
    /// For charging and fuel: the quantity the station reports, in thousandths.
    pub quantity_milli: Option<i64>,
}

/// A generated trip.
#[derive(Debug, Clone)]
pub struct Trip {
    /// The vehicle.
    pub vehicle_id: String,
    /// Its toll class.
    pub vehicle_class: i32,
    /// Its fixes, oldest first, strictly rising times.
    pub fixes: Vec<TelemetryFix>,
    /// The charges it must cause.
    pub expected: Vec<ExpectedCharge>,
    /// Entities it drove past without entering: never to be charged.
    pub passed_by: Vec<String>,
}

/// What the vehicle does next.
#[derive(Debug, Clone, Copy)]
enum Leg {
    /// Drive to a point (metres) at a speed.
    Drive((f64, f64), f64),
    /// Stay where it is for a time, engine on or off.
    Stay(i64, bool),
}

impl Trip {
    /// Generates a trip of `config` through `city`. Visits and decoys are drawn among the
    /// entities that have a street block of their own.
    pub fn generate(city: &City, config: &TripConfig) -> Trip {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let spacing = f64::from(city.config().street_spacing_m);
        let lines = city.lines();
        let blocks = 2 * lines * (lines - 1);
        let usable: Vec<&Site> = city.sites().iter().take(blocks).collect();
        let speed = rng.random_range(10.0..18.0);

        let mut legs = Vec::new();
        let mut here = (
            rng.random_range(0..lines) as f64 * spacing,
            rng.random_range(0..lines) as f64 * spacing,
        );
        let start = here;
        let mut decoy_ids = Vec::new();
        let mut targets: Vec<(usize, bool)> = Vec::new(); // (site, visit)
        for _ in 0..config.visits {
            targets.push((rng.random_range(0..usable.len()), true));
        }
        for _ in 0..config.decoys {
            // Lots and stations the trip does not stop at.
            let decoys: Vec<usize> = (0..usable.len())
                .filter(|i| {
                    usable[*i].kind() != ServiceKind::Toll
                        && !targets.iter().any(|(t, visit)| t == i && *visit)
                })
                .collect();
            if !decoys.is_empty() {
                targets.push((decoys[rng.random_range(0..decoys.len())], false));
            }
        }
        for i in (1..targets.len()).rev() {
            targets.swap(i, rng.random_range(0..=i));
        }
        for (index, visit) in targets {
            let site = usable[index];
            let (block_start, block_end) = block_ends(site, spacing);
            route(&mut legs, &mut here, block_start, speed);
            if visit && site.kind() != ServiceKind::Toll {
                let kerb = site.street.point(site.along_m, 0.0);
                legs.push(Leg::Drive(kerb, speed));
                legs.push(Leg::Drive(site.centre(), MANOEUVRE_SPEED_M_PER_S));
                let minutes = match site.kind() {
                    ServiceKind::Parking => rng.random_range(20..240),
                    ServiceKind::Charging => rng.random_range(20..90),
                    _ => rng.random_range(3..10),
                };
                let engine_on = !rng.random_bool(config.engine_off_rate);
                legs.push(Leg::Stay(minutes * 60_000, engine_on));
                legs.push(Leg::Drive(kerb, MANOEUVRE_SPEED_M_PER_S));
            }
            if !visit {
                decoy_ids.push(site.entity.entity_id.clone());
            }
            legs.push(Leg::Drive(block_end, speed));
            here = block_end;
        }
        // Drive on a block, so that the last exit is seen.
        let onward = if here.0 + spacing <= f64::from(city.config().side_m) {
            (here.0 + spacing, here.1)
        } else {
            (here.0 - spacing, here.1)
        };
        route(&mut legs, &mut here, onward, speed);

        let mut trip = Trip {
            vehicle_id: config.vehicle_id.clone(),
            vehicle_class: config.vehicle_class,
            fixes: Vec::new(),
            expected: Vec::new(),
            passed_by: decoy_ids,
        };
        simulate(city, &usable, config, start, &legs, &mut rng, &mut trip);
        trip
    }
}

/// The two intersections at the ends of the block a site is on, in driving order.
fn block_ends(site: &Site, spacing: f64) -> ((f64, f64), (f64, f64)) {
    let first = (site.along_m / spacing).floor() * spacing;
    (
        site.street.point(first, 0.0),
        site.street.point(first + spacing, 0.0),
    )
}

/// Manhattan driving from `here` (an intersection) to `to` (an intersection): east-west first.
fn route(legs: &mut Vec<Leg>, here: &mut (f64, f64), to: (f64, f64), speed: f64) {
    if (here.0 - to.0).abs() > 0.5 {
        legs.push(Leg::Drive((to.0, here.1), speed));
    }
    if (here.1 - to.1).abs() > 0.5 {
        legs.push(Leg::Drive(to, speed));
    }
    *here = to;
}

/// A site's geofence, prepared.
fn zone(site: &Site) -> PreparedZone {
    PreparedZone::new(&site.entity.geofence).unwrap_or_else(|e| {
        panic!(
            "generated geofence of {} is invalid: {e}",
            site.entity.entity_id
        )
    })
}

/// Drives the legs in steps, records the true visits, and samples noisy fixes.
fn simulate(
    city: &City,
    sites: &[&Site],
    config: &TripConfig,
    start: (f64, f64),
    legs: &[Leg],
    rng: &mut SmallRng,
    trip: &mut Trip,
) {
    let zones: Vec<PreparedZone> = sites.iter().map(|s| zone(s)).collect();
    let centres: Vec<(f64, f64)> = sites.iter().map(|s| s.centre()).collect();
    let tolls: Vec<usize> = (0..sites.len())
        .filter(|i| sites[*i].kind() == ServiceKind::Toll)
        .collect();
    let mut inside: Vec<Option<i64>> = vec![None; sites.len()];
    let mut t_ms = config.start_at_ms;
    let mut next_fix_ms = t_ms;
    let mut gap_until_ms = i64::MIN;
    let mut last_was_outlier = false;
    let mut here = start;

    // Where the vehicle truly is at each step: entries and exits of every geofence.
    let mut step = |here: (f64, f64), t_ms: i64, trip: &mut Trip| {
        let position = city.position(here.0, here.1);
        for (i, site) in sites.iter().enumerate() {
            let c = centres[i];
            let far = (c.0 - here.0).abs() > NEAR_M || (c.1 - here.1).abs() > NEAR_M;
            if far && inside[i].is_none() {
                continue;
            }
            let now_inside = !far && zones[i].contains(zones[i].project(position));
            match (inside[i], now_inside) {
                (None, true) => inside[i] = Some(t_ms),
                (Some(entered), false) => {
                    inside[i] = None;
                    record_visit(site, trip, entered, t_ms);
                }
                _ => {}
            }
        }
    };

    for leg in legs {
        match *leg {
            Leg::Drive(to, speed) => {
                let (dx, dy) = (to.0 - here.0, to.1 - here.1);
                let length = (dx * dx + dy * dy).sqrt();
                let steps = ((length / speed) * 1_000.0 / STEP_MS as f64)
                    .ceil()
                    .max(1.0) as i64;
                let start = here;
                for s in 1..=steps {
                    let f = s as f64 / steps as f64;
                    here = (start.0 + dx * f, start.1 + dy * f);
                    t_ms += STEP_MS;
                    step(here, t_ms, trip);
                    if t_ms >= next_fix_ms {
                        next_fix_ms = t_ms + config.interval_ms;
                        // Maybe start a reception gap, away from gantries.
                        let gap_chance = config.gaps_per_km * speed * config.interval_ms as f64
                            / 1_000.0
                            / 1_000.0;
                        if t_ms > gap_until_ms && rng.random_bool(gap_chance.clamp(0.0, 1.0)) {
                            let gap_ms = rng.random_range(10_000..20_000);
                            let reach_m = GAP_CLEARANCE_M + speed * gap_ms as f64 / 1_000.0;
                            let near_toll = tolls.iter().any(|i| {
                                let c = sites[*i].centre();
                                ((c.0 - here.0).powi(2) + (c.1 - here.1).powi(2)).sqrt() < reach_m
                            });
                            if !near_toll {
                                gap_until_ms = t_ms + gap_ms;
                            }
                        }
                        if t_ms > gap_until_ms {
                            push_fix(city, config, rng, trip, here, t_ms, &mut last_was_outlier);
                        }
                    }
                }
            }
            Leg::Stay(ms, on) => {
                let until = t_ms + ms;
                // Ignition off: one fix as the engine stops, one as it starts.
                t_ms += 1_000;
                push_fix(city, config, rng, trip, here, t_ms, &mut last_was_outlier);
                let interval = if on { STATIONARY_INTERVAL_MS } else { ms };
                while t_ms + interval < until {
                    t_ms += interval;
                    push_fix(city, config, rng, trip, here, t_ms, &mut last_was_outlier);
                }
                t_ms = until;
                push_fix(city, config, rng, trip, here, t_ms, &mut last_was_outlier);
                next_fix_ms = t_ms + config.interval_ms;
            }
        }
    }
    // Charges of the stays, with the fee they make.
    let class = config.vehicle_class;
    for charge in &mut trip.expected {
        let site = sites
            .iter()
            .find(|s| s.entity.entity_id == charge.entity_id)
            .expect("a visited site");
        let tariff = &site.entity.tariff;
        match charge.kind {
            ServiceKind::Toll => {
                charge.amount_fen = toll_fee(tariff, class).expect("classes 1 to 6 are priced");
            }
            ServiceKind::Parking => {
                charge.amount_fen = parking_fee(tariff, charge.entered_at_ms, charge.exited_at_ms)
                    .expect("stays are short");
                charge.tolerance_fen = tariff.parking.as_ref().map_or(0, |p| p.fen_per_minute);
            }
            ServiceKind::Charging | ServiceKind::Fuel => {
                let unit = if charge.kind == ServiceKind::Charging {
                    MeterUnit::Kwh
                } else {
                    MeterUnit::Litre
                };
                let quantity = rng.random_range(5_000..60_000);
                charge.quantity_milli = Some(quantity);
                charge.amount_fen = metered_fee(tariff, unit, quantity).expect("priced");
            }
        }
    }
}

/// Records what a true visit (from entering to leaving the geofence) must cause: a pass
/// lengthwise through a toll strip is charged, a stay at a lot or station is charged, and a
/// toll strip touched otherwise is not.
fn record_visit(site: &Site, trip: &mut Trip, entered_at_ms: i64, exited_at_ms: i64) {
    let charge = ExpectedCharge {
        entity_id: site.entity.entity_id.clone(),
        kind: site.kind(),
        amount_fen: 0,
        tolerance_fen: 0,
        entered_at_ms,
        exited_at_ms,
        quantity_milli: None,
    };
    match site.kind() {
        // Driving along the street through the strip: tolls sit away from intersections, so
        // every entry into a strip is a pass along it.
        ServiceKind::Toll => trip.expected.push(charge),
        // Stays last minutes; a car crossing a lot's corner is not possible on this grid.
        _ if exited_at_ms - entered_at_ms >= 60_000 => trip.expected.push(charge),
        _ => trip.passed_by.push(site.entity.entity_id.clone()),
    }
}

fn push_fix(
    city: &City,
    config: &TripConfig,
    rng: &mut SmallRng,
    trip: &mut Trip,
    here: (f64, f64),
    t_ms: i64,
    last_was_outlier: &mut bool,
) {
    if trip
        .fixes
        .last()
        .is_some_and(|last| last.recorded_at_ms >= t_ms)
    {
        return;
    }
    if rng.random_bool(config.drop_rate.clamp(0.0, 1.0)) {
        return;
    }
    let gaussian = |rng: &mut SmallRng| {
        let u: f64 = rng.random_range(1e-12..1.0);
        let v: f64 = rng.random_range(0.0..1.0);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let mut east = here.0 + gaussian(rng) * config.sigma_m;
    let mut north = here.1 + gaussian(rng) * config.sigma_m;
    let outlier = !*last_was_outlier && rng.random_bool(config.outlier_rate.clamp(0.0, 1.0));
    *last_was_outlier = outlier;
    if outlier {
        let angle = rng.random_range(0.0..std::f64::consts::TAU);
        let jump = rng.random_range(100.0..300.0);
        east += jump * angle.cos();
        north += jump * angle.sin();
    }
    let p: PositionE7 = city.position(east, north);
    trip.fixes.push(TelemetryFix {
        latitude_e7: p.latitude_e7,
        longitude_e7: p.longitude_e7,
        horizontal_accuracy_cm: Some(((config.sigma_m * 1.5).max(3.0) * 100.0) as i32),
        speed_cm_per_s: 0,
        heading_cdeg: 0,
        recorded_at_ms: t_ms,
    });
}
