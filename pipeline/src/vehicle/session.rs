//! A vehicle's sessions at service entities, from its GNSS fixes: a pure state machine.
//!
//! Time comes only from the fixes (`recorded_at_ms`, signed by the vehicle); nothing here
//! reads a clock. The state of one vehicle ([`VehicleSessions`]) is small and serializable, so
//! a matching worker keeps it in the session store between batches, and a successor resumes
//! from there.
//!
//! Events use Tile38's vocabulary: **enter** and **exit** for dwell entities (parking lots,
//! charging and fuel stations), **cross** for toll gantries. GNSS noise is handled the way
//! trackers do:
//! - a fix whose stated accuracy is worse than [`SessionConfig::accuracy_cm_max`] is ignored,
//!   and so is a fix that would imply an impossible speed from the last one kept (an outlier),
//!   unless several in a row agree (the vehicle really is there);
//! - **entry** counts only after [`SessionConfig::entry_fixes_min`] fixes inside spanning at
//!   least [`SessionConfig::entry_dwell_ms_min`]; the session starts at the first of them;
//! - **exit** counts only after [`SessionConfig::exit_fixes_min`] fixes outside by more than
//!   their accuracy, spanning at least [`SessionConfig::exit_hysteresis_ms`] (hysteresis); the
//!   session ends at the first of them. Fixes outside but within their accuracy of the geofence
//!   neither count for nor against an exit;
//! - a **toll pass** counts when the track crosses the gantry's zone along its long axis: the
//!   straight line from the last fix before the zone to the first fix past its far end must
//!   cross the zone, and the two fixes must lie beyond opposite ends. With a fix interval of a
//!   second or two a fast vehicle may leave no fix inside at all and still pass; a single noisy
//!   fix landing in the zone from a track beside it does not make that line cross, and a road
//!   that crosses the zone sideways never reaches beyond its ends.

use dcpipe_schemas::{PartyRef, ServiceKind, SessionId, Tariff, TelemetryFix};
use serde::{Deserialize, Serialize};

use super::geometry::{AxisSide, LocalFrame, Placement, PositionE7};
use super::registry::{EntityRegistry, RegisteredEntity};
use super::signed::session_id;

/// Thresholds of the session machine. The defaults suit fixes every 1 to 5 seconds from a
/// consumer-grade receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Fixes inside before an entry counts.
    pub entry_fixes_min: u32,
    /// Time from the first fix inside before an entry counts, in ms.
    pub entry_dwell_ms_min: i64,
    /// Fixes outside (beyond their accuracy) before an exit counts.
    pub exit_fixes_min: u32,
    /// Time from the first fix outside before an exit counts, in ms.
    pub exit_hysteresis_ms: i64,
    /// Accuracy assumed for a fix that states none, in cm.
    pub accuracy_cm_default: i32,
    /// Fixes less accurate than this are ignored, in cm.
    pub accuracy_cm_max: i32,
    /// A fix implying a faster move from the last fix kept is an outlier, in cm/s.
    pub speed_cm_per_s_max: i32,
    /// Outliers in a row after which the next fix is believed (the track is re-anchored).
    pub outliers_in_a_row_max: u32,
    /// Longest time between the two fixes around a toll zone for a pass to count, in ms.
    pub toll_chord_ms_max: i64,
    /// Most entities a vehicle is tracked at at once (open sessions, entries being confirmed,
    /// toll zones being crossed); beyond it, new candidate entries are not tracked.
    pub zones_max: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            entry_fixes_min: 3,
            entry_dwell_ms_min: 30_000,
            exit_fixes_min: 3,
            exit_hysteresis_ms: 10_000,
            accuracy_cm_default: 1_000,
            accuracy_cm_max: 5_000,
            speed_cm_per_s_max: 7_000,
            outliers_in_a_row_max: 3,
            toll_chord_ms_max: 15_000,
            zones_max: 16,
        }
    }
}

/// A fix as the machine keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackPoint {
    /// Where.
    pub position: PositionE7,
    /// Horizontal accuracy in cm (the default when the fix stated none).
    pub accuracy_cm: i32,
    /// When.
    pub recorded_at_ms: i64,
}

impl TrackPoint {
    fn accuracy_m(&self) -> f64 {
        f64::from(self.accuracy_cm) / 100.0
    }
}

/// What a session is about, fixed at its start: the entity version in force then, with its
/// tariff and wallet, so that a later change of the entity does not change the fee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSession {
    /// Derived from vehicle, entity and entry ([`session_id`]).
    pub session_id: SessionId,
    /// The entity.
    pub entity_id: String,
    /// Its version at the start of the session.
    pub entity_version: i64,
    /// What it sells.
    pub kind: ServiceKind,
    /// Its wallet (the payee).
    pub entity_wallet: PartyRef,
    /// Its tariff at the start of the session.
    pub tariff: Tariff,
    /// When the session started: the first fix inside of an entry, the first fix at or after
    /// entering a toll zone.
    pub entered_at_ms: i64,
}

/// A session event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEvent {
    /// The vehicle entered a dwell entity (entry confirmed).
    Enter(OpenSession),
    /// The vehicle left a dwell entity (exit confirmed).
    Exit {
        /// The session that ends.
        session: OpenSession,
        /// The first fix of the exit.
        exited_at_ms: i64,
    },
    /// The vehicle passed through a toll zone.
    Cross {
        /// The pass, as a session of no duration.
        session: OpenSession,
        /// The first fix past the zone.
        exited_at_ms: i64,
    },
}

impl SessionEvent {
    /// The session the event is about.
    pub fn session(&self) -> &OpenSession {
        match self {
            SessionEvent::Enter(session)
            | SessionEvent::Exit { session, .. }
            | SessionEvent::Cross { session, .. } => session,
        }
    }

    /// `enter`, `exit` or `cross`.
    pub fn name(&self) -> &'static str {
        match self {
            SessionEvent::Enter(_) => "enter",
            SessionEvent::Exit { .. } => "exit",
            SessionEvent::Cross { .. } => "cross",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Snapshot {
    version: i64,
    wallet: PartyRef,
    tariff: Tariff,
}

impl Snapshot {
    fn of(entity: &RegisteredEntity) -> Self {
        Snapshot {
            version: entity.version(),
            wallet: entity.wallet().clone(),
            tariff: entity.tariff().clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    /// Fixes inside a dwell entity, not yet enough for an entry.
    Entering {
        first_inside_at_ms: i64,
        inside_fixes: u32,
        entity: Snapshot,
    },
    /// A session is open; `exit_run` counts fixes outside since the last one inside.
    Inside {
        session: OpenSession,
        exit_run: Option<(i64, u32)>,
    },
    /// A toll zone is being crossed: the last fix before it, and when the vehicle entered.
    Crossing {
        approach: Option<TrackPoint>,
        entered_at_ms: i64,
        entity: Snapshot,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ZoneTrack {
    entity_id: String,
    kind: ServiceKind,
    phase: Phase,
}

/// The session state of one vehicle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VehicleSessions {
    last_fix: Option<TrackPoint>,
    outliers_in_a_row: u32,
    zones: Vec<ZoneTrack>,
}

/// A dwell entity seen from one fix.
struct Seen<'a> {
    entity: &'a RegisteredEntity,
    placement: Placement,
}

impl VehicleSessions {
    /// A vehicle never seen.
    pub fn new() -> Self {
        VehicleSessions::default()
    }

    /// The sessions open now.
    pub fn open_sessions(&self) -> impl Iterator<Item = &OpenSession> {
        self.zones.iter().filter_map(|zone| match &zone.phase {
            Phase::Inside { session, .. } => Some(session),
            _ => None,
        })
    }

    /// The last fix kept.
    pub fn last_fix(&self) -> Option<&TrackPoint> {
        self.last_fix.as_ref()
    }

    /// Applies the fixes of a batch, oldest first, appending the events they cause.
    pub fn apply_all(
        &mut self,
        vehicle_id: &str,
        fixes: &[TelemetryFix],
        registry: &EntityRegistry,
        config: &SessionConfig,
        events: &mut Vec<SessionEvent>,
    ) {
        for fix in fixes {
            self.apply(vehicle_id, fix, registry, config, events);
        }
    }

    /// Applies one fix, appending the events it causes.
    pub fn apply(
        &mut self,
        vehicle_id: &str,
        fix: &TelemetryFix,
        registry: &EntityRegistry,
        config: &SessionConfig,
        events: &mut Vec<SessionEvent>,
    ) {
        let point = TrackPoint {
            position: PositionE7::new(fix.latitude_e7, fix.longitude_e7),
            accuracy_cm: fix
                .horizontal_accuracy_cm
                .unwrap_or(config.accuracy_cm_default),
            recorded_at_ms: fix.recorded_at_ms,
        };
        if point.accuracy_cm > config.accuracy_cm_max {
            return;
        }
        let previous = match self.last_fix {
            Some(last) if point.recorded_at_ms <= last.recorded_at_ms => return,
            Some(last) if is_outlier(&last, &point, config) => {
                self.outliers_in_a_row += 1;
                if self.outliers_in_a_row <= config.outliers_in_a_row_max {
                    return;
                }
                // The track moved: believe it, but draw no line across the jump.
                for zone in &mut self.zones {
                    if let Phase::Crossing { approach, .. } = &mut zone.phase {
                        *approach = None;
                    }
                }
                None
            }
            last => last,
        };
        self.outliers_in_a_row = 0;
        self.apply_tolls(
            vehicle_id,
            previous.as_ref(),
            &point,
            registry,
            config,
            events,
        );
        self.apply_dwells(vehicle_id, &point, registry, config, events);
        self.last_fix = Some(point);
    }

    fn apply_dwells(
        &mut self,
        vehicle_id: &str,
        point: &TrackPoint,
        registry: &EntityRegistry,
        config: &SessionConfig,
        events: &mut Vec<SessionEvent>,
    ) {
        let accuracy_m = point.accuracy_m();
        let mut seen: Vec<Seen<'_>> = Vec::new();
        registry.locate(point.position, accuracy_m, |entity, placement| {
            if entity.kind() != ServiceKind::Toll {
                seen.push(Seen { entity, placement });
            }
        });
        seen.sort_by(|a, b| a.entity.id().cmp(b.entity.id()));

        let mut kept = Vec::with_capacity(self.zones.len() + 1);
        for mut zone in std::mem::take(&mut self.zones) {
            if zone.kind == ServiceKind::Toll {
                kept.push(zone);
                continue;
            }
            let placement = seen
                .iter()
                .find(|s| s.entity.id() == zone.entity_id)
                .map(|s| s.placement);
            let inside = placement == Some(Placement::Inside);
            let beyond = match placement {
                None => true,
                Some(Placement::Inside) => false,
                Some(Placement::Outside { distance_m }) => distance_m > accuracy_m,
            };
            let keep = match &mut zone.phase {
                Phase::Entering {
                    first_inside_at_ms,
                    inside_fixes,
                    entity,
                } => {
                    if inside {
                        *inside_fixes += 1;
                        if *inside_fixes >= config.entry_fixes_min
                            && point.recorded_at_ms - *first_inside_at_ms
                                >= config.entry_dwell_ms_min
                        {
                            let session = open_session(
                                vehicle_id,
                                &zone.entity_id,
                                zone.kind,
                                entity,
                                *first_inside_at_ms,
                            );
                            events.push(SessionEvent::Enter(session.clone()));
                            zone.phase = Phase::Inside {
                                session,
                                exit_run: None,
                            };
                        }
                        true
                    } else {
                        !beyond
                    }
                }
                Phase::Inside { session, exit_run } => {
                    if inside {
                        *exit_run = None;
                        true
                    } else if beyond {
                        let (first_outside_at_ms, fixes) =
                            exit_run.get_or_insert((point.recorded_at_ms, 0));
                        *fixes += 1;
                        if *fixes >= config.exit_fixes_min
                            && point.recorded_at_ms - *first_outside_at_ms
                                >= config.exit_hysteresis_ms
                        {
                            events.push(SessionEvent::Exit {
                                session: session.clone(),
                                exited_at_ms: *first_outside_at_ms,
                            });
                            false
                        } else {
                            true
                        }
                    } else {
                        true
                    }
                }
                Phase::Crossing { .. } => true,
            };
            if keep {
                kept.push(zone);
            }
        }
        self.zones = kept;

        for s in seen {
            if s.placement != Placement::Inside
                || self.zones.iter().any(|z| z.entity_id == s.entity.id())
                || self.zones.len() >= config.zones_max
            {
                continue;
            }
            let mut zone = ZoneTrack {
                entity_id: s.entity.id().to_owned(),
                kind: s.entity.kind(),
                phase: Phase::Entering {
                    first_inside_at_ms: point.recorded_at_ms,
                    inside_fixes: 1,
                    entity: Snapshot::of(s.entity),
                },
            };
            if config.entry_fixes_min <= 1 && config.entry_dwell_ms_min <= 0 {
                let session = open_session(
                    vehicle_id,
                    &zone.entity_id,
                    zone.kind,
                    &Snapshot::of(s.entity),
                    point.recorded_at_ms,
                );
                events.push(SessionEvent::Enter(session.clone()));
                zone.phase = Phase::Inside {
                    session,
                    exit_run: None,
                };
            }
            self.zones.push(zone);
        }
    }

    fn apply_tolls(
        &mut self,
        vehicle_id: &str,
        previous: Option<&TrackPoint>,
        point: &TrackPoint,
        registry: &EntityRegistry,
        config: &SessionConfig,
        events: &mut Vec<SessionEvent>,
    ) {
        // Toll zones the last segment (or, without one, the fix) touches, and those being
        // crossed.
        let mut candidates: Vec<&RegisteredEntity> = Vec::new();
        let from = previous.map_or(point.position, |p| p.position);
        registry.near_segment(from, point.position, point.accuracy_m(), |entity| {
            if entity.kind() == ServiceKind::Toll {
                candidates.push(entity);
            }
        });
        for zone in &self.zones {
            if let Phase::Crossing { .. } = zone.phase
                && !candidates.iter().any(|c| c.id() == zone.entity_id)
                && let Some(entity) = registry.get(&zone.entity_id)
            {
                candidates.push(entity);
            }
        }
        candidates.sort_by(|a, b| a.id().cmp(b.id()));
        candidates.dedup_by(|a, b| a.id() == b.id());

        // A crossing whose entity left the registry is dropped.
        self.zones.retain(|zone| {
            !matches!(zone.phase, Phase::Crossing { .. })
                || candidates.iter().any(|c| c.id() == zone.entity_id)
        });

        for entity in candidates {
            let zone = entity.zone();
            let here = zone.project(point.position);
            let placement = zone.placement(here);
            let track = self.zones.iter().position(|z| {
                z.entity_id == entity.id() && matches!(z.phase, Phase::Crossing { .. })
            });
            match (track, placement) {
                (Some(_), Placement::Inside) => {}
                (Some(index), Placement::Outside { distance_m }) => {
                    let side = zone.axis_side(here);
                    if side == AxisSide::Within && distance_m <= point.accuracy_m() {
                        // Beside the zone within the fix's accuracy: the pass goes on.
                        continue;
                    }
                    let track = self.zones.remove(index);
                    if let Phase::Crossing {
                        approach: Some(approach),
                        entered_at_ms,
                        entity: snapshot,
                    } = track.phase
                        && crosses(entity, &approach, point, config)
                    {
                        events.push(SessionEvent::Cross {
                            session: open_session(
                                vehicle_id,
                                entity.id(),
                                ServiceKind::Toll,
                                &snapshot,
                                entered_at_ms,
                            ),
                            exited_at_ms: point.recorded_at_ms,
                        });
                    }
                }
                (None, Placement::Inside) => {
                    if self.zones.len() < config.zones_max {
                        self.zones.push(ZoneTrack {
                            entity_id: entity.id().to_owned(),
                            kind: ServiceKind::Toll,
                            phase: Phase::Crossing {
                                approach: previous.copied(),
                                entered_at_ms: point.recorded_at_ms,
                                entity: Snapshot::of(entity),
                            },
                        });
                    }
                }
                (None, Placement::Outside { .. }) => {
                    // Passed through between two fixes, none inside.
                    if let Some(previous) = previous
                        && crosses(entity, previous, point, config)
                    {
                        events.push(SessionEvent::Cross {
                            session: open_session(
                                vehicle_id,
                                entity.id(),
                                ServiceKind::Toll,
                                &Snapshot::of(entity),
                                point.recorded_at_ms,
                            ),
                            exited_at_ms: point.recorded_at_ms,
                        });
                    }
                }
            }
        }
    }
}

/// Whether the line from `approach` to `past` crosses the toll zone of `entity` along its
/// axis, within the time bound.
fn crosses(
    entity: &RegisteredEntity,
    approach: &TrackPoint,
    past: &TrackPoint,
    config: &SessionConfig,
) -> bool {
    if past.recorded_at_ms - approach.recorded_at_ms > config.toll_chord_ms_max {
        return false;
    }
    let zone = entity.zone();
    let (a, b) = (zone.project(approach.position), zone.project(past.position));
    let opposite = matches!(
        (zone.axis_side(a), zone.axis_side(b)),
        (AxisSide::Before, AxisSide::After) | (AxisSide::After, AxisSide::Before)
    );
    opposite && zone.segment_intersects(a, b)
}

/// Whether reaching `next` from `last` needs a speed above the bound.
fn is_outlier(last: &TrackPoint, next: &TrackPoint, config: &SessionConfig) -> bool {
    let frame = LocalFrame::around(last.position);
    let moved = frame.project(next.position);
    let distance_m = (moved.x * moved.x + moved.y * moved.y).sqrt();
    let elapsed_s = (next.recorded_at_ms - last.recorded_at_ms) as f64 / 1_000.0;
    // Both positions are uncertain by their accuracy: only a move beyond it is evidence.
    let slack_m = last.accuracy_m() + next.accuracy_m();
    distance_m - slack_m > elapsed_s * f64::from(config.speed_cm_per_s_max) / 100.0
}

fn open_session(
    vehicle_id: &str,
    entity_id: &str,
    kind: ServiceKind,
    entity: &Snapshot,
    entered_at_ms: i64,
) -> OpenSession {
    OpenSession {
        session_id: session_id(vehicle_id, entity_id, entered_at_ms),
        entity_id: entity_id.to_owned(),
        entity_version: entity.version,
        kind,
        entity_wallet: entity.wallet.clone(),
        tariff: entity.tariff.clone(),
        entered_at_ms,
    }
}
