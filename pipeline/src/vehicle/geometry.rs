//! Geofences prepared for matching: each polygon projected once into a local plane in metres,
//! subdivided into monotone pieces for point-in-polygon tests in `O(log n)` (geo's
//! `MonotonicPolygons`), with its bounding box in 1e-7 degrees for the R-tree and, for toll
//! zones, the long axis a pass must traverse.
//!
//! The projection is equirectangular around the zone's own centre: within the few kilometres a
//! geofence may span ([`ZONE_SPAN_M_MAX`]) its distortion is far below GNSS noise. All geometry
//! (containment, distances, segment intersection, the minimum rotated rectangle, validity) is
//! geo's; nothing here tests a point against a polygon by hand.

use geo::{
    Area, Coord, Distance, Euclidean, Intersects, Line, LineString, MinimumRotatedRect,
    MonotonicPolygons, Point, Polygon, Validation,
};
use rstar::AABB;

use dcpipe_schemas::GeoPoint;

/// Metres per 1e-7 degree of latitude (and of longitude at the equator), on the sphere of mean
/// Earth radius 6,371,008.8 m.
pub const METRES_PER_E7: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0 / 1e7;

/// Largest extent of a geofence in either direction, in metres; larger shapes are refused (and
/// so is any ring that crosses the antimeridian, which would look 40,000 km wide).
pub const ZONE_SPAN_M_MAX: f64 = 5_000.0;

/// Smallest area of a geofence, in square metres.
pub const ZONE_AREA_M2_MIN: f64 = 1.0;

/// A position in 1e-7 degrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PositionE7 {
    /// Latitude in 1e-7 degrees.
    pub latitude_e7: i32,
    /// Longitude in 1e-7 degrees.
    pub longitude_e7: i32,
}

impl PositionE7 {
    /// A position.
    pub const fn new(latitude_e7: i32, longitude_e7: i32) -> Self {
        PositionE7 {
            latitude_e7,
            longitude_e7,
        }
    }

    /// The square of side `2 × radius_m` around the position, in 1e-7 degrees, as an R-tree
    /// envelope (`[longitude, latitude]`; whole 1e-7 degrees are exact in `f64`), widened by
    /// one unit so that rounding never loses a neighbour.
    pub fn envelope_around(&self, radius_m: f64) -> AABB<[f64; 2]> {
        let radius_m = radius_m.max(0.0);
        let lat_e7 = (radius_m / METRES_PER_E7).ceil() + 1.0;
        let cos = (f64::from(self.latitude_e7) * 1e-7)
            .to_radians()
            .cos()
            .max(1e-6);
        let lon_e7 = (radius_m / (METRES_PER_E7 * cos)).ceil() + 1.0;
        let (lat, lon) = (f64::from(self.latitude_e7), f64::from(self.longitude_e7));
        AABB::from_corners([lon - lon_e7, lat - lat_e7], [lon + lon_e7, lat + lat_e7])
    }
}

impl From<GeoPoint> for PositionE7 {
    fn from(point: GeoPoint) -> Self {
        PositionE7::new(point.latitude_e7, point.longitude_e7)
    }
}

/// An equirectangular plane around an origin, in metres (x east, y north).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalFrame {
    origin: PositionE7,
    metres_per_e7_longitude: f64,
}

impl LocalFrame {
    /// The plane around `origin`.
    pub fn around(origin: PositionE7) -> Self {
        let cos = (f64::from(origin.latitude_e7) * 1e-7).to_radians().cos();
        LocalFrame {
            origin,
            metres_per_e7_longitude: METRES_PER_E7 * cos,
        }
    }

    /// `position` in this plane.
    pub fn project(&self, position: PositionE7) -> Coord<f64> {
        let dlat = i64::from(position.latitude_e7) - i64::from(self.origin.latitude_e7);
        let dlon = i64::from(position.longitude_e7) - i64::from(self.origin.longitude_e7);
        Coord {
            x: dlon as f64 * self.metres_per_e7_longitude,
            y: dlat as f64 * METRES_PER_E7,
        }
    }
}

/// Where a point lies relative to a zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement {
    /// Inside the zone or on its boundary.
    Inside,
    /// Outside, at this distance from the zone in metres.
    Outside {
        /// Distance to the nearest point of the zone, in metres.
        distance_m: f64,
    },
}

/// Where a point lies along a toll zone's long axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AxisSide {
    /// Before the zone's first end.
    Before,
    /// Between its two ends (beside or inside it).
    Within,
    /// Past its second end.
    After,
}

/// Why a geofence cannot be prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GeofenceError(String);

/// A geofence ready for matching.
#[derive(Debug, Clone)]
pub struct PreparedZone {
    frame: LocalFrame,
    polygon: Polygon<f64>,
    monotone: MonotonicPolygons<f64>,
    envelope: AABB<[f64; 2]>,
    /// Bounding box in the zone's plane: `(min x, min y, max x, max y)`, in metres.
    bounds_m: (f64, f64, f64, f64),
    /// Unit vector of the long side of the minimum rotated rectangle.
    axis: Coord<f64>,
    /// Smallest and largest projection of the ring on `axis`, in metres.
    axis_extent_m: (f64, f64),
    area_m2: f64,
}

impl PreparedZone {
    /// Prepares a ring (3 or more points; the last connects back to the first): refuses rings
    /// that are not simple polygons, have no area, or exceed [`ZONE_SPAN_M_MAX`].
    pub fn new(ring: &[GeoPoint]) -> Result<Self, GeofenceError> {
        if ring.len() < 3 {
            return Err(GeofenceError(format!("{} points, at least 3", ring.len())));
        }
        let (mut lat_min, mut lat_max) = (i32::MAX, i32::MIN);
        let (mut lon_min, mut lon_max) = (i32::MAX, i32::MIN);
        for point in ring {
            lat_min = lat_min.min(point.latitude_e7);
            lat_max = lat_max.max(point.latitude_e7);
            lon_min = lon_min.min(point.longitude_e7);
            lon_max = lon_max.max(point.longitude_e7);
        }
        let middle = |a: i32, b: i32| ((i64::from(a) + i64::from(b)) / 2) as i32;
        let frame = LocalFrame::around(PositionE7::new(
            middle(lat_min, lat_max),
            middle(lon_min, lon_max),
        ));
        let coords: Vec<Coord<f64>> = ring
            .iter()
            .map(|p| frame.project(PositionE7::from(*p)))
            .collect();
        let span_x = coords.iter().map(|c| c.x).fold(f64::MIN, f64::max)
            - coords.iter().map(|c| c.x).fold(f64::MAX, f64::min);
        let span_y = coords.iter().map(|c| c.y).fold(f64::MIN, f64::max)
            - coords.iter().map(|c| c.y).fold(f64::MAX, f64::min);
        if span_x > ZONE_SPAN_M_MAX || span_y > ZONE_SPAN_M_MAX {
            return Err(GeofenceError(format!(
                "spans {span_x:.0} m by {span_y:.0} m, at most {ZONE_SPAN_M_MAX:.0} m"
            )));
        }
        let bounds_m = coords.iter().fold(
            (f64::MAX, f64::MAX, f64::MIN, f64::MIN),
            |(x0, y0, x1, y1), c| (x0.min(c.x), y0.min(c.y), x1.max(c.x), y1.max(c.y)),
        );
        let polygon = Polygon::new(LineString::new(coords), Vec::new());
        if let Some(problem) = polygon.validation_errors().into_iter().next() {
            return Err(GeofenceError(format!("not a simple polygon: {problem}")));
        }
        let area_m2 = polygon.unsigned_area();
        if area_m2 < ZONE_AREA_M2_MIN {
            return Err(GeofenceError(format!(
                "area {area_m2:.2} m², at least {ZONE_AREA_M2_MIN} m²"
            )));
        }
        let (axis, axis_extent_m) = long_axis(&polygon)
            .ok_or_else(|| GeofenceError("no minimum rotated rectangle".to_owned()))?;
        Ok(PreparedZone {
            frame,
            monotone: MonotonicPolygons::from(polygon.clone()),
            polygon,
            envelope: AABB::from_corners(
                [f64::from(lon_min), f64::from(lat_min)],
                [f64::from(lon_max), f64::from(lat_max)],
            ),
            bounds_m,
            axis,
            axis_extent_m,
            area_m2,
        })
    }

    /// Bounding box in 1e-7 degrees (`[longitude, latitude]`).
    pub fn envelope(&self) -> AABB<[f64; 2]> {
        self.envelope
    }

    /// Area in square metres.
    pub fn area_m2(&self) -> f64 {
        self.area_m2
    }

    /// `position` in the zone's plane, in metres.
    pub fn project(&self, position: PositionE7) -> Coord<f64> {
        self.frame.project(position)
    }

    /// Whether the point (in the zone's plane) is inside or on the boundary: `O(log n)`.
    pub fn contains(&self, point: Coord<f64>) -> bool {
        self.monotone.intersects(&point)
    }

    /// Inside, or outside at some distance (computed only for points outside).
    pub fn placement(&self, point: Coord<f64>) -> Placement {
        self.placement_within(point, f64::INFINITY)
            .unwrap_or(Placement::Outside {
                distance_m: f64::INFINITY,
            })
    }

    /// Like [`PreparedZone::placement`], but `None` for a point farther than `radius_m` from
    /// the zone, which a look at the bounding box settles for most points without testing the
    /// polygon.
    pub fn placement_within(&self, point: Coord<f64>, radius_m: f64) -> Option<Placement> {
        let (x0, y0, x1, y1) = self.bounds_m;
        let dx = (x0 - point.x).max(point.x - x1).max(0.0);
        let dy = (y0 - point.y).max(point.y - y1).max(0.0);
        if dx * dx + dy * dy > radius_m * radius_m {
            return None;
        }
        if self.contains(point) {
            return Some(Placement::Inside);
        }
        let distance_m = Euclidean.distance(&Point(point), self.polygon.exterior());
        (distance_m <= radius_m).then_some(Placement::Outside { distance_m })
    }

    /// Whether the segment from `a` to `b` (in the zone's plane) touches the zone.
    pub fn segment_intersects(&self, a: Coord<f64>, b: Coord<f64>) -> bool {
        self.polygon.intersects(&Line::new(a, b))
    }

    /// Where the point (in the zone's plane) lies along the zone's long axis.
    pub fn axis_side(&self, point: Coord<f64>) -> AxisSide {
        let along = point.x * self.axis.x + point.y * self.axis.y;
        if along < self.axis_extent_m.0 {
            AxisSide::Before
        } else if along > self.axis_extent_m.1 {
            AxisSide::After
        } else {
            AxisSide::Within
        }
    }
}

/// The unit vector of the long side of the polygon's minimum rotated rectangle, and the
/// polygon's extent along it.
fn long_axis(polygon: &Polygon<f64>) -> Option<(Coord<f64>, (f64, f64))> {
    let rect = polygon.minimum_rotated_rect()?;
    let corners: Vec<Coord<f64>> = rect.exterior().coords().copied().collect();
    let (c0, c1, c2) = (*corners.first()?, *corners.get(1)?, *corners.get(2)?);
    let (e0, e1) = (c1 - c0, c2 - c1);
    let length = |c: Coord<f64>| (c.x * c.x + c.y * c.y).sqrt();
    let long = if length(e0) >= length(e1) { e0 } else { e1 };
    let norm = length(long);
    if norm <= f64::EPSILON {
        return None;
    }
    let axis = Coord {
        x: long.x / norm,
        y: long.y / norm,
    };
    let (mut min, mut max) = (f64::MAX, f64::MIN);
    for c in polygon.exterior().coords() {
        let along = c.x * axis.x + c.y * axis.y;
        min = min.min(along);
        max = max.max(along);
    }
    Some((axis, (min, max)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A rectangle of `length_m` (east-west) by `width_m` (north-south) centred on `centre`.
    pub(crate) fn rectangle(centre: PositionE7, length_m: f64, width_m: f64) -> Vec<GeoPoint> {
        let frame_cos = (f64::from(centre.latitude_e7) * 1e-7).to_radians().cos();
        let dlon = (length_m / 2.0 / (METRES_PER_E7 * frame_cos)).round() as i32;
        let dlat = (width_m / 2.0 / METRES_PER_E7).round() as i32;
        [(-1, -1), (-1, 1), (1, 1), (1, -1)]
            .into_iter()
            .map(|(sy, sx)| GeoPoint {
                latitude_e7: centre.latitude_e7 + sy * dlat,
                longitude_e7: centre.longitude_e7 + sx * dlon,
            })
            .collect()
    }

    pub(crate) const BEIJING: PositionE7 = PositionE7::new(399_042_000, 1_164_074_000);

    /// The position `east_m` east and `north_m` north of `from`.
    pub(crate) fn offset(from: PositionE7, east_m: f64, north_m: f64) -> PositionE7 {
        let cos = (f64::from(from.latitude_e7) * 1e-7).to_radians().cos();
        PositionE7::new(
            from.latitude_e7 + (north_m / METRES_PER_E7).round() as i32,
            from.longitude_e7 + (east_m / (METRES_PER_E7 * cos)).round() as i32,
        )
    }

    #[test]
    fn a_rectangle_contains_its_centre_and_measures_its_outside() {
        let zone = PreparedZone::new(&rectangle(BEIJING, 100.0, 40.0)).expect("zone");
        assert!(
            (zone.area_m2() - 4_000.0).abs() < 10.0,
            "{}",
            zone.area_m2()
        );
        let centre = zone.project(BEIJING);
        assert_eq!(zone.placement(centre), Placement::Inside);
        match zone.placement(zone.project(offset(BEIJING, 0.0, 30.0))) {
            Placement::Outside { distance_m } => assert!((distance_m - 10.0).abs() < 0.1),
            Placement::Inside => panic!("30 m north of a 40 m wide strip is outside"),
        }
    }

    #[test]
    fn the_long_axis_runs_along_the_strip() {
        let zone = PreparedZone::new(&rectangle(BEIJING, 100.0, 40.0)).expect("zone");
        let west = zone.project(offset(BEIJING, -80.0, 0.0));
        let east = zone.project(offset(BEIJING, 80.0, 0.0));
        let north = zone.project(offset(BEIJING, 0.0, 60.0));
        let sides = [zone.axis_side(west), zone.axis_side(east)];
        assert!(
            sides == [AxisSide::Before, AxisSide::After]
                || sides == [AxisSide::After, AxisSide::Before],
            "{sides:?}"
        );
        assert_eq!(zone.axis_side(north), AxisSide::Within);
        assert!(zone.segment_intersects(west, east));
        assert!(!zone.segment_intersects(north, zone.project(offset(BEIJING, 80.0, 60.0))));
    }

    #[test]
    fn refuses_bow_ties_slivers_and_huge_rings() {
        let p = |lat: i32, lon: i32| GeoPoint {
            latitude_e7: BEIJING.latitude_e7 + lat,
            longitude_e7: BEIJING.longitude_e7 + lon,
        };
        let bow_tie = [p(0, 0), p(1_000, 1_000), p(0, 1_000), p(1_000, 0)];
        assert!(PreparedZone::new(&bow_tie).is_err());
        let line = [p(0, 0), p(0, 500), p(0, 1_000)];
        assert!(PreparedZone::new(&line).is_err());
        let huge = rectangle(BEIJING, 6_000.0, 100.0);
        assert!(PreparedZone::new(&huge).is_err());
        let antimeridian = [
            GeoPoint {
                latitude_e7: 0,
                longitude_e7: 1_799_999_000,
            },
            GeoPoint {
                latitude_e7: 1_000,
                longitude_e7: -1_799_999_000,
            },
            GeoPoint {
                latitude_e7: -1_000,
                longitude_e7: -1_799_999_000,
            },
        ];
        assert!(PreparedZone::new(&antimeridian).is_err());
    }

    #[test]
    fn envelopes_grow_with_the_radius() {
        let small = BEIJING.envelope_around(0.0);
        let large = BEIJING.envelope_around(100.0);
        assert!(rstar::Envelope::contains_envelope(&large, &small));
        // 100 m is about 0.0009 degrees of latitude.
        let lat_half = (large.upper()[1] - large.lower()[1]) / 2.0;
        assert!((8_990.0..=9_010.0).contains(&lat_half), "{lat_half}");
    }
}
