//! The city: a grid of streets and the service entities along them.

use dcpipe_pipeline::vehicle::geometry::{METRES_PER_E7, PositionE7};
use dcpipe_schemas::{
    GeoPoint, MeterUnit, MeteredTariff, ParkingTariff, PartyRef, ServiceEntity, ServiceKind,
    Tariff, TollTariff,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The centre of the generated cities: Tiananmen, Beijing.
pub const CITY_CENTRE: PositionE7 = PositionE7::new(399_054_000, 1_163_976_000);

/// Distance from a street's centre line to the near edge of a lot or station, in metres:
/// the carriageway, the pavement and a setback. Traffic passing in the street stays that far
/// from the entity.
pub const SETBACK_M: f64 = 30.0;
/// A toll strip's length along its street, in metres.
pub const TOLL_LENGTH_M: f64 = 60.0;
/// A toll strip's width across its street, in metres.
pub const TOLL_WIDTH_M: f64 = 24.0;
/// Entities keep this far from intersections, in metres, so no vehicle turns inside a zone.
const INTERSECTION_CLEARANCE_M: f64 = 120.0;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CityConfig {
    /// The seed: the same seed gives the same city.
    pub seed: u64,
    /// Side of the square city, in metres.
    pub side_m: u32,
    /// Distance between parallel streets, in metres.
    pub street_spacing_m: u32,
    /// Toll gantries.
    pub tolls: usize,
    /// Parking lots.
    pub parkings: usize,
    /// Charging stations.
    pub chargings: usize,
    /// Fuel stations.
    pub fuels: usize,
    /// Institutions holding the entities' wallets (`oi01`...).
    pub institutions: usize,
}

impl CityConfig {
    /// A district of 6 km with a few hundred entities, each on a street block of its own.
    pub fn district(seed: u64) -> Self {
        CityConfig {
            seed,
            side_m: 6_000,
            street_spacing_m: 500,
            tolls: 40,
            parkings: 80,
            chargings: 40,
            fuels: 40,
            institutions: 4,
        }
    }
}

/// A street of the grid: east-west at `north_m`, or north-south at `east_m`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Street {
    /// An east-west street at this northing (metres from the city's south-west corner).
    EastWest {
        /// Its northing.
        north_m: f64,
    },
    /// A north-south street at this easting.
    NorthSouth {
        /// Its easting.
        east_m: f64,
    },
}

impl Street {
    /// The point at `along_m` on the street, `beside_m` to its left (north of an east-west
    /// street, west of a north-south one).
    pub fn point(&self, along_m: f64, beside_m: f64) -> (f64, f64) {
        match *self {
            Street::EastWest { north_m } => (along_m, north_m + beside_m),
            Street::NorthSouth { east_m } => (east_m - beside_m, along_m),
        }
    }
}

/// An entity with where it is on the grid.
#[derive(Debug, Clone)]
pub struct Site {
    /// The registry entry (unsigned; the caller signs it if needed).
    pub entity: ServiceEntity,
    /// The street it is on.
    pub street: Street,
    /// Its middle, along the street, in metres.
    pub along_m: f64,
    /// Which side of the street (+1 left, -1 right; 0 for a toll across the street).
    pub side: f64,
    /// Distance from the street's centre line to the entity's centre, in metres.
    pub depth_m: f64,
}

impl Site {
    /// The entity's kind.
    pub fn kind(&self) -> ServiceKind {
        self.entity.kind
    }

    /// Its centre, in metres.
    pub fn centre(&self) -> (f64, f64) {
        self.street.point(self.along_m, self.side * self.depth_m)
    }
}

/// A generated city.
#[derive(Debug, Clone)]
pub struct City {
    config: CityConfig,
    sites: Vec<Site>,
}

impl City {
    /// Generates the city of `config`. Each entity sits on a street block of its own while
    /// blocks last; past that (dense benchmark cities) blocks are shared and entities may
    /// overlap, which matching handles but trips do not visit.
    pub fn generate(config: CityConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let spacing = f64::from(config.street_spacing_m);
        let lines = (config.side_m / config.street_spacing_m).max(1) as usize;
        // Blocks: (street, index of the block along it).
        let mut blocks: Vec<(Street, usize)> = Vec::new();
        for line in 0..=lines {
            let at = line as f64 * spacing;
            for block in 0..lines {
                blocks.push((Street::EastWest { north_m: at }, block));
                blocks.push((Street::NorthSouth { east_m: at }, block));
            }
        }
        for i in (1..blocks.len()).rev() {
            blocks.swap(i, rng.random_range(0..=i));
        }
        let kinds = std::iter::repeat_n(ServiceKind::Toll, config.tolls)
            .chain(std::iter::repeat_n(ServiceKind::Parking, config.parkings))
            .chain(std::iter::repeat_n(ServiceKind::Charging, config.chargings))
            .chain(std::iter::repeat_n(ServiceKind::Fuel, config.fuels));
        let mut sites = Vec::new();
        for (index, kind) in kinds.enumerate() {
            let (street, block) = blocks[index % blocks.len()];
            let free = spacing - 2.0 * INTERSECTION_CLEARANCE_M;
            let along_m = block as f64 * spacing
                + INTERSECTION_CLEARANCE_M
                + rng.random_range(0.0..free.max(1.0));
            let institution = format!("oi{:02}", index % config.institutions.max(1) + 1);
            sites.push(site(
                &mut rng,
                (index, kind),
                street,
                along_m,
                &institution,
                f64::from(config.side_m),
            ));
        }
        City { config, sites }
    }

    /// The configuration.
    pub fn config(&self) -> &CityConfig {
        &self.config
    }

    /// Every site.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The registry entries.
    pub fn entities(&self) -> impl Iterator<Item = &ServiceEntity> {
        self.sites.iter().map(|s| &s.entity)
    }

    /// Number of streets in each direction.
    pub fn lines(&self) -> usize {
        (self.config.side_m / self.config.street_spacing_m).max(1) as usize + 1
    }

    /// A position `east_m`, `north_m` from the city's south-west corner.
    pub fn position(&self, east_m: f64, north_m: f64) -> PositionE7 {
        position(east_m, north_m, f64::from(self.config.side_m))
    }
}

fn position(east_m: f64, north_m: f64, side_m: f64) -> PositionE7 {
    let cos = (f64::from(CITY_CENTRE.latitude_e7) * 1e-7)
        .to_radians()
        .cos();
    let (x, y) = (east_m - side_m / 2.0, north_m - side_m / 2.0);
    PositionE7::new(
        CITY_CENTRE.latitude_e7 + (y / METRES_PER_E7).round() as i32,
        CITY_CENTRE.longitude_e7 + (x / (METRES_PER_E7 * cos)).round() as i32,
    )
}

fn site(
    rng: &mut SmallRng,
    (index, kind): (usize, ServiceKind),
    street: Street,
    along_m: f64,
    institution: &str,
    side_m: f64,
) -> Site {
    let side = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    // Outline in street coordinates (along, beside), then placed.
    let (outline, side, depth_m): (Vec<(f64, f64)>, f64, f64) = match kind {
        ServiceKind::Toll => (rectangle(TOLL_LENGTH_M, TOLL_WIDTH_M, 0.0), 0.0, 0.0),
        ServiceKind::Parking => {
            let length = rng.random_range(40.0..150.0);
            let depth = rng.random_range(30.0..110.0);
            let mut outline = rectangle(length, depth, SETBACK_M + depth / 2.0);
            if rng.random_bool(0.4) {
                // An L-shaped lot: a corner cut away at the back.
                let (cut_along, cut_depth) = (length * 0.4, depth * 0.4);
                let back = SETBACK_M + depth;
                outline = vec![
                    (-length / 2.0, SETBACK_M),
                    (length / 2.0, SETBACK_M),
                    (length / 2.0, back - cut_depth),
                    (length / 2.0 - cut_along, back - cut_depth),
                    (length / 2.0 - cut_along, back),
                    (-length / 2.0, back),
                ];
            }
            (outline, side, SETBACK_M + depth * 0.3)
        }
        ServiceKind::Charging | ServiceKind::Fuel => {
            let radius = rng.random_range(12.0..25.0);
            let vertices = rng.random_range(6..=10);
            let outline = (0..vertices)
                .map(|v| {
                    let angle = std::f64::consts::TAU * v as f64 / f64::from(vertices);
                    let r = radius * rng.random_range(0.8..1.0);
                    (r * angle.cos(), SETBACK_M + radius + r * angle.sin())
                })
                .collect();
            (outline, side, SETBACK_M + radius)
        }
    };
    let side_sign = if side == 0.0 { 1.0 } else { side };
    let geofence = outline
        .iter()
        .map(|(a, b)| {
            let (east, north) = street.point(along_m + a, side_sign * b);
            let p = position(east, north, side_m);
            GeoPoint {
                latitude_e7: p.latitude_e7,
                longitude_e7: p.longitude_e7,
            }
        })
        .collect();
    let id = format!(
        "{}-{index:06}",
        match kind {
            ServiceKind::Toll => "TOLL",
            ServiceKind::Parking => "PARK",
            ServiceKind::Charging => "CHG",
            ServiceKind::Fuel => "FUEL",
        }
    );
    let tariff = match kind {
        ServiceKind::Toll => Tariff {
            toll: Some(TollTariff {
                fen_by_vehicle_class: vec![500, 800, 1_200, 1_500, 2_000, 2_500],
            }),
            parking: None,
            metered: None,
        },
        ServiceKind::Parking => Tariff {
            toll: None,
            parking: Some(ParkingTariff {
                fen_per_minute: rng.random_range(5..=20),
                free_minutes: 15,
                daily_cap_fen: 6_000,
            }),
            metered: None,
        },
        ServiceKind::Charging => Tariff {
            toll: None,
            parking: None,
            metered: Some(MeteredTariff {
                unit: MeterUnit::Kwh,
                fen_per_unit: rng.random_range(120..=200),
            }),
        },
        ServiceKind::Fuel => Tariff {
            toll: None,
            parking: None,
            metered: Some(MeteredTariff {
                unit: MeterUnit::Litre,
                fen_per_unit: rng.random_range(750..=850),
            }),
        },
    };
    Site {
        entity: ServiceEntity {
            entity_id: id.clone(),
            kind,
            name: id.clone(),
            wallet: PartyRef {
                institution_id: institution.to_owned(),
                wallet_id: format!("w-{id}"),
            },
            geofence,
            tariff,
            version: 1,
            updated_at_ms: 0,
            removed: false,
            certificate: Vec::new(),
            signature: Vec::new(),
        },
        street,
        along_m,
        side,
        depth_m,
    }
}

/// A rectangle `length` along by `depth` across, centred `offset` beside the centre line.
fn rectangle(length: f64, depth: f64, offset: f64) -> Vec<(f64, f64)> {
    vec![
        (-length / 2.0, offset - depth / 2.0),
        (length / 2.0, offset - depth / 2.0),
        (length / 2.0, offset + depth / 2.0),
        (-length / 2.0, offset + depth / 2.0),
    ]
}
