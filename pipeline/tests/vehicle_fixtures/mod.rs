//! Shared by the vehicle tests: a small map (a parking lot, a toll strip, a charging station)
//! around a point in Beijing, and noisy synthetic drives over it, reproducible from a seed.

#![allow(dead_code, unreachable_pub)]

use dcpipe_pipeline::vehicle::geometry::{METRES_PER_E7, PositionE7};
use dcpipe_pipeline::vehicle::registry::{EntityRegistry, VerifiedEntity};
use dcpipe_schemas::{
    GeoPoint, MeterUnit, MeteredTariff, ParkingTariff, PartyRef, ServiceEntity, ServiceKind,
    Tariff, TelemetryFix, TollTariff,
};

pub const ORIGIN: PositionE7 = PositionE7::new(399_042_000, 1_164_074_000);
pub const T0_MS: i64 = 1_764_000_000_000;

/// A point `east_m`, `north_m` from the origin.
pub fn at(east_m: f64, north_m: f64) -> PositionE7 {
    let cos = (f64::from(ORIGIN.latitude_e7) * 1e-7).to_radians().cos();
    PositionE7::new(
        ORIGIN.latitude_e7 + (north_m / METRES_PER_E7).round() as i32,
        ORIGIN.longitude_e7 + (east_m / (METRES_PER_E7 * cos)).round() as i32,
    )
}

pub fn rectangle(east_m: f64, north_m: f64, length_m: f64, width_m: f64) -> Vec<GeoPoint> {
    [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
        .into_iter()
        .map(|(sx, sy)| {
            let p = at(east_m + sx * length_m / 2.0, north_m + sy * width_m / 2.0);
            GeoPoint {
                latitude_e7: p.latitude_e7,
                longitude_e7: p.longitude_e7,
            }
        })
        .collect()
}

pub fn entity(id: &str, kind: ServiceKind, geofence: Vec<GeoPoint>) -> VerifiedEntity {
    let tariff = match kind {
        ServiceKind::Toll => Tariff {
            toll: Some(TollTariff {
                fen_by_vehicle_class: vec![500, 800],
            }),
            parking: None,
            metered: None,
        },
        ServiceKind::Parking => Tariff {
            toll: None,
            parking: Some(ParkingTariff {
                fen_per_minute: 10,
                free_minutes: 15,
                daily_cap_fen: 6_000,
            }),
            metered: None,
        },
        ServiceKind::Charging | ServiceKind::Fuel => Tariff {
            toll: None,
            parking: None,
            metered: Some(MeteredTariff {
                unit: if kind == ServiceKind::Charging {
                    MeterUnit::Kwh
                } else {
                    MeterUnit::Litre
                },
                fen_per_unit: 150,
            }),
        },
    };
    VerifiedEntity::without_signature_check(ServiceEntity {
        entity_id: id.to_owned(),
        kind,
        name: id.to_owned(),
        wallet: PartyRef {
            institution_id: "oi02".to_owned(),
            wallet_id: format!("w-{id}"),
        },
        geofence,
        tariff,
        version: 1,
        updated_at_ms: T0_MS - 1,
        removed: false,
        certificate: Vec::new(),
        signature: Vec::new(),
    })
    .expect("valid entity")
}

/// A parking lot 80 m × 50 m at the origin, a toll strip 60 m along an east-west road by 24 m
/// across, 1 km east, and a charging station 30 m × 30 m, 500 m north.
pub fn registry() -> EntityRegistry {
    let mut registry = EntityRegistry::new();
    for e in [
        entity(
            "PARK-1",
            ServiceKind::Parking,
            rectangle(0.0, 0.0, 80.0, 50.0),
        ),
        entity(
            "TOLL-1",
            ServiceKind::Toll,
            rectangle(1_000.0, 0.0, 60.0, 24.0),
        ),
        entity(
            "CHG-1",
            ServiceKind::Charging,
            rectangle(0.0, 500.0, 30.0, 30.0),
        ),
    ] {
        registry.apply(e).expect("registers");
    }
    registry
}

/// splitmix64: the noise of a case comes from its seed alone.
pub struct Noise(pub u64);

impl Noise {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A normal deviate (Box-Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u = self.unit().max(1e-12);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// How noisy a receiver is. Outliers are isolated spikes of 100 to 300 m with the receiver's
/// usual stated accuracy (the worst kind: a run of bad fixes comes with a degraded accuracy,
/// which the machine ignores).
#[derive(Debug, Clone, Copy)]
pub struct Receiver {
    pub sigma_m: f64,
    pub outlier_rate: f64,
    pub drop_rate: f64,
    pub interval_ms: i64,
}

/// Fixes along a path of (east, north, dwell) legs driven at `speed_m_per_s`.
pub struct Drive {
    noise: Noise,
    receiver: Receiver,
    pub t_ms: i64,
    pub fixes: Vec<TelemetryFix>,
    here: (f64, f64),
    last_was_outlier: bool,
}

impl Drive {
    pub fn new(seed: u64, receiver: Receiver, start: (f64, f64)) -> Self {
        Drive {
            noise: Noise(seed),
            receiver,
            t_ms: T0_MS,
            fixes: Vec::new(),
            here: start,
            last_was_outlier: false,
        }
    }

    pub fn fix(&mut self) {
        let r = self.receiver;
        if self.noise.unit() < r.drop_rate {
            return;
        }
        let (mut e, mut n) = self.here;
        e += self.noise.gaussian() * r.sigma_m;
        n += self.noise.gaussian() * r.sigma_m;
        let outlier = !self.last_was_outlier && self.noise.unit() < r.outlier_rate;
        self.last_was_outlier = outlier;
        if outlier {
            let angle = self.noise.unit() * std::f64::consts::TAU;
            let jump = 100.0 + 200.0 * self.noise.unit();
            e += jump * angle.cos();
            n += jump * angle.sin();
        }
        let p = at(e, n);
        self.fixes.push(TelemetryFix {
            latitude_e7: p.latitude_e7,
            longitude_e7: p.longitude_e7,
            horizontal_accuracy_cm: Some(((r.sigma_m * 1.5).max(3.0) * 100.0) as i32),
            speed_cm_per_s: 0,
            heading_cdeg: 0,
            recorded_at_ms: self.t_ms,
        });
    }

    /// Drives in a straight line to `to`.
    pub fn to(&mut self, to: (f64, f64), speed_m_per_s: f64) -> &mut Self {
        let (de, dn) = (to.0 - self.here.0, to.1 - self.here.1);
        let length = (de * de + dn * dn).sqrt();
        let step_m = speed_m_per_s * self.receiver.interval_ms as f64 / 1_000.0;
        let steps = (length / step_m).ceil().max(1.0) as usize;
        let start = self.here;
        for i in 1..=steps {
            let f = i as f64 / steps as f64;
            self.here = (start.0 + de * f, start.1 + dn * f);
            self.t_ms += self.receiver.interval_ms;
            self.fix();
        }
        self
    }

    /// Stays where it is for `ms`, reporting, or silent with the engine off (then the unit
    /// reports once when the engine stops and once when it starts, as units do on ignition).
    pub fn stay(&mut self, ms: i64, reporting: bool) -> &mut Self {
        let until = self.t_ms + ms;
        let drop_rate = self.receiver.drop_rate;
        if !reporting {
            self.receiver.drop_rate = 0.0;
            self.t_ms += 1_000;
            self.fix();
        }
        while self.t_ms + self.receiver.interval_ms <= until {
            self.t_ms += self.receiver.interval_ms;
            if reporting {
                self.fix();
            }
        }
        self.t_ms = until;
        if !reporting {
            self.fix();
            self.receiver.drop_rate = drop_rate;
        }
        self
    }
}
