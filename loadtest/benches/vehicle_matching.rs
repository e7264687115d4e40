//! Matching positions to service entities: look-ups against 100,000 entities of realistic
//! shapes and sizes (toll strips, parking lots, some L-shaped, charging and fuel stations as
//! irregular polygons) spread over a 30 km city, on one core.
//!
//! Positions are what vehicles report: 80% on streets (with metres of jitter), 20% inside
//! lots and stations; each look-up walks the R-tree with a 10 m accuracy radius and tests the
//! candidates' prepared geofences. Also measured: updating one entity in place (a newer
//! version moves it), and building the registry.
//!
//! Run with `cargo bench -p dcpipe-loadtest --bench vehicle_matching`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dcpipe_loadtest::vehicles::{City, CityConfig};
use dcpipe_pipeline::vehicle::geometry::PositionE7;
use dcpipe_pipeline::vehicle::registry::{EntityRegistry, VerifiedEntity};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Look-ups per measured iteration.
const POSITIONS: usize = 10_000;
/// Accuracy radius of a look-up, in metres.
const ACCURACY_M: f64 = 10.0;

fn city() -> City {
    City::generate(CityConfig {
        seed: 1,
        side_m: 30_000,
        street_spacing_m: 300,
        tolls: 10_000,
        parkings: 50_000,
        chargings: 20_000,
        fuels: 20_000,
        institutions: 8,
    })
}

fn positions(city: &City) -> Vec<PositionE7> {
    let mut rng = SmallRng::seed_from_u64(7);
    let side = f64::from(city.config().side_m);
    let spacing = f64::from(city.config().street_spacing_m);
    let lines = city.lines();
    (0..POSITIONS)
        .map(|_| {
            if rng.random_bool(0.8) {
                let along = rng.random_range(0.0..side);
                let street = rng.random_range(0..lines) as f64 * spacing;
                let jitter = rng.random_range(-8.0..8.0);
                if rng.random_bool(0.5) {
                    city.position(along, street + jitter)
                } else {
                    city.position(street + jitter, along)
                }
            } else {
                let site = &city.sites()[rng.random_range(0..city.sites().len())];
                let (east, north) = site.centre();
                city.position(
                    east + rng.random_range(-5.0..5.0),
                    north + rng.random_range(-5.0..5.0),
                )
            }
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let city = city();
    let entries: Vec<VerifiedEntity> = city
        .entities()
        .map(|e| VerifiedEntity::without_signature_check(e.clone()).expect("valid geofence"))
        .collect();
    let started = Instant::now();
    let (mut registry, refused) = EntityRegistry::from_entries(entries.iter().cloned());
    eprintln!(
        "registry of {} entities built in {:.0} ms ({} refused)",
        registry.len(),
        started.elapsed().as_secs_f64() * 1e3,
        refused.len()
    );
    let positions = positions(&city);
    let mut found = 0usize;
    for p in &positions {
        registry.locate(*p, ACCURACY_M, |_, _| found += 1);
    }
    eprintln!(
        "{:.2} entities within {ACCURACY_M} m of a position on average",
        found as f64 / positions.len() as f64
    );

    // Wall time counts whatever else the machine runs; the CPU time of this thread is what one
    // core spends per look-up.
    let rounds = 200;
    let (cpu_before, wall) = (thread_cpu_ms(), Instant::now());
    let mut hits = 0usize;
    for _ in 0..rounds {
        for p in &positions {
            registry.locate(black_box(*p), ACCURACY_M, |_, _| hits += 1);
        }
    }
    let (cpu_ms, wall_ms) = (thread_cpu_ms() - cpu_before, wall.elapsed().as_millis());
    let lookups = (rounds * positions.len()) as f64;
    eprintln!(
        "{lookups} look-ups ({hits} hits): {:.0}/s of this thread's CPU time ({cpu_ms} ms), \
         {:.0}/s of wall time ({wall_ms} ms)",
        lookups / (cpu_ms.max(1) as f64 / 1e3),
        lookups / (wall_ms.max(1) as f64 / 1e3),
    );

    let mut group = c.benchmark_group("registry");
    group.throughput(Throughput::Elements(POSITIONS as u64));
    group.bench_function("locate_100k_entities", |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for p in &positions {
                registry.locate(black_box(*p), ACCURACY_M, |_, _| hits += 1);
            }
            hits
        })
    });
    group.finish();

    let mut moved = entries[0].entity().clone();
    let mut version = moved.version;
    c.bench_function("registry/replace_one_of_100k", |b| {
        b.iter(|| {
            version += 1;
            moved.version = version;
            for point in &mut moved.geofence {
                point.longitude_e7 += if version % 2 == 0 { 1_000 } else { -1_000 };
            }
            let entry = VerifiedEntity::without_signature_check(moved.clone()).expect("valid");
            registry.apply(black_box(entry)).expect("newer version")
        })
    });
}

/// CPU time of the calling thread (user and system) in ms, from /proc (Linux; 0 elsewhere).
fn thread_cpu_ms() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0;
    };
    // Fields after the command name (which is in parentheses): utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // The kernel's USER_HZ is 100 on Linux.
    ticks * 10
}

criterion_group!(benches, matching);
criterion_main!(benches);
