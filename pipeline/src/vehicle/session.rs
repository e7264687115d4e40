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
//! - a fix whose stated accuracy is worse than [`SessionConfig::accuracy_cm_max`] is ignored;
//!   so is an outlier: a fix farther from where the last two fixes predict the vehicle than
//!   acceleration and accuracy allow, or one that implies an impossible speed, unless several
//!   in a row agree (the vehicle really is there);
//! - **entry** counts only after [`SessionConfig::entry_fixes_min`] fixes inside spanning at
//!   least [`SessionConfig::entry_dwell_ms_min`], without as many fixes outside in a row as an
//!   exit needs in between; the session starts at the first of them;
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
/// consumer-grade receiver; toll passes need the 1 to 2 seconds of road-tolling units, as a
/// vehicle at highway speed crosses a gantry's zone in two seconds.
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
    /// A fix is an outlier when it lies farther than this from where its two predecessors
    /// predict it (plus what acceleration and the fixes' accuracies allow), in cm.
    pub gate_distance_cm_min: i32,
    /// The strongest acceleration of a vehicle, braking or turning, in cm/s².
    pub acceleration_cm_per_s2_max: i32,
    /// Fixes further apart than this predict nothing about each other, in ms.
    pub gate_ms_max: i64,
    /// Longest time between two fixes of a toll pass (from the last fix before the zone to the
    /// first fix past it) for the pass to count, in ms: a line drawn across a longer gap proves
    /// nothing.
    pub toll_chord_ms_max: i64,
    /// How far beside a toll zone (plus twice its accuracy) a fix may lie without ending a pass
    /// under way, in cm.
    pub toll_beside_cm_max: i32,
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
            gate_distance_cm_min: 1_000,
            acceleration_cm_per_s2_max: 400,
            gate_ms_max: 4_000,
            toll_chord_ms_max: 15_000,
            toll_beside_cm_max: 1_000,
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
    /// Fixes inside a dwell entity, not yet enough for an entry; fixes outside since the last
    /// one inside (as many as an exit needs end the attempt).
    Entering {
        first_inside_at_ms: i64,
        inside_fixes: u32,
        outside_fixes: u32,
        entity: Snapshot,
    },
    /// A session is open; `exit_run` counts fixes outside since the last one inside.
    Inside {
        session: OpenSession,
        exit_run: Option<(i64, u32)>,
    },
    /// A toll zone is being crossed: the last fix before it, when the vehicle entered, the
    /// last fix during the crossing and the longest time between two fixes so far.
    Crossing {
        approach: Option<TrackPoint>,
        entered_at_ms: i64,
        entity: Snapshot,
        last_at_ms: i64,
        gap_ms_max: i64,
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
    /// The fix kept before `last_fix`: with it, where the vehicle should be next.
    fix_before_last: Option<TrackPoint>,
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
            Some(last)
                if is_outlier(self.fix_before_last.as_ref(), &last, &point, config)
                    && self
                        .fix_before_last
                        .is_some_and(|before| is_back_on_track(&before, &last, &point, config)) =>
            {
                // The last fix was the outlier, and this one joins the track before it: forget
                // the last one for the predictions to come (what it caused stays; entries and
                // exits need several fixes, so one outlier decides nothing).
                self.last_fix = self.fix_before_last.take();
                self.last_fix
            }
            Some(last) if is_outlier(self.fix_before_last.as_ref(), &last, &point, config) => {
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
                self.last_fix = None;
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
        self.fix_before_last = self.last_fix;
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
                    outside_fixes,
                    entity,
                } => {
                    if inside {
                        *inside_fixes += 1;
                        *outside_fixes = 0;
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
                    } else if beyond {
                        *outside_fixes += 1;
                        *outside_fixes < config.exit_fixes_min
                    } else {
                        true
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
                    outside_fixes: 0,
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
                (Some(index), placement) => {
                    let goes_on = match placement {
                        Placement::Inside => true,
                        // Beside the zone, not past its ends and not far off: noise around a
                        // vehicle in the zone; the pass goes on.
                        Placement::Outside { distance_m } => {
                            zone.axis_side(here) == AxisSide::Within
                                && distance_m
                                    <= 2.0 * point.accuracy_m()
                                        + f64::from(config.toll_beside_cm_max) / 100.0
                        }
                    };
                    if let Phase::Crossing {
                        last_at_ms,
                        gap_ms_max,
                        ..
                    } = &mut self.zones[index].phase
                    {
                        *gap_ms_max = (*gap_ms_max).max(point.recorded_at_ms - *last_at_ms);
                        *last_at_ms = point.recorded_at_ms;
                    }
                    if goes_on {
                        continue;
                    }
                    let Phase::Crossing {
                        approach,
                        entered_at_ms,
                        entity: snapshot,
                        gap_ms_max,
                        ..
                    } = &self.zones[index].phase
                    else {
                        continue;
                    };
                    let side = zone.axis_side(here);
                    let approach_side = approach.map(|a| zone.axis_side(zone.project(a.position)));
                    let hopeless = match approach_side {
                        None | Some(AxisSide::Within) => true,
                        Some(from) => from == side,
                    };
                    if hopeless || *gap_ms_max > config.toll_chord_ms_max {
                        // No approach from an end, turned back, or lost too long: no pass.
                        self.zones.remove(index);
                        continue;
                    }
                    if side == AxisSide::Within {
                        // Far beside the zone: an outlier, or a vehicle leaving sideways, which
                        // never reaches the far end.
                        continue;
                    }
                    if let Some(approach) = approach
                        && crosses(entity, approach, point)
                    {
                        events.push(SessionEvent::Cross {
                            session: open_session(
                                vehicle_id,
                                entity.id(),
                                ServiceKind::Toll,
                                snapshot,
                                *entered_at_ms,
                            ),
                            exited_at_ms: point.recorded_at_ms,
                        });
                        self.zones.remove(index);
                    }
                    // Past the far end but the line misses the zone: an outlier, most likely;
                    // the next fix decides, within the time bound.
                }
                (None, Placement::Inside) => {
                    // The approach is the last fix before an end of the zone: the previous
                    // fix, or the one before it when noise put the previous one beside.
                    let at_an_end = |p: &&TrackPoint| {
                        zone.axis_side(zone.project(p.position)) != AxisSide::Within
                    };
                    let approach = previous
                        .filter(at_an_end)
                        .or(self
                            .fix_before_last
                            .as_ref()
                            .filter(|_| previous.is_some())
                            .filter(at_an_end))
                        .or(previous)
                        .copied();
                    if self.zones.len() < config.zones_max {
                        self.zones.push(ZoneTrack {
                            entity_id: entity.id().to_owned(),
                            kind: ServiceKind::Toll,
                            phase: Phase::Crossing {
                                approach,
                                entered_at_ms: point.recorded_at_ms,
                                entity: Snapshot::of(entity),
                                last_at_ms: point.recorded_at_ms,
                                gap_ms_max: approach
                                    .map_or(0, |p| point.recorded_at_ms - p.recorded_at_ms),
                            },
                        });
                    }
                }
                (None, Placement::Outside { .. }) => {
                    let Some(previous) = previous else {
                        continue;
                    };
                    let from = zone.project(previous.position);
                    if !zone.segment_intersects(from, here) {
                        continue;
                    }
                    if zone.axis_side(here) == AxisSide::Within {
                        // Entered between two fixes and now beside the zone: a pass may be
                        // under way.
                        if self.zones.len() < config.zones_max {
                            self.zones.push(ZoneTrack {
                                entity_id: entity.id().to_owned(),
                                kind: ServiceKind::Toll,
                                phase: Phase::Crossing {
                                    approach: Some(*previous),
                                    entered_at_ms: point.recorded_at_ms,
                                    entity: Snapshot::of(entity),
                                    last_at_ms: point.recorded_at_ms,
                                    gap_ms_max: point.recorded_at_ms - previous.recorded_at_ms,
                                },
                            });
                        }
                    } else if point.recorded_at_ms - previous.recorded_at_ms
                        <= config.toll_chord_ms_max
                        && crosses(entity, previous, point)
                    {
                        // Passed through between two fixes, none inside.
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
/// axis.
fn crosses(entity: &RegisteredEntity, approach: &TrackPoint, past: &TrackPoint) -> bool {
    let zone = entity.zone();
    let (a, b) = (zone.project(approach.position), zone.project(past.position));
    let opposite = matches!(
        (zone.axis_side(a), zone.axis_side(b)),
        (AxisSide::Before, AxisSide::After) | (AxisSide::After, AxisSide::Before)
    );
    opposite && zone.segment_intersects(a, b)
}

/// Whether `next` is an outlier: farther from where the vehicle should be than it could get
/// by accelerating (`a t² / 2` from the position its last two fixes predict at constant
/// velocity), with at least [`SessionConfig::gate_distance_cm_min`], plus the fixes'
/// accuracies. Without a prediction (a single fix kept, or fixes too far apart) only an
/// impossible speed makes an outlier.
fn is_outlier(
    before_last: Option<&TrackPoint>,
    last: &TrackPoint,
    next: &TrackPoint,
    config: &SessionConfig,
) -> bool {
    let frame = LocalFrame::around(last.position);
    let seen = frame.project(next.position);
    let elapsed_s = (next.recorded_at_ms - last.recorded_at_ms) as f64 / 1_000.0;
    let slack_m = last.accuracy_m() + next.accuracy_m();
    let length = |x: f64, y: f64| (x * x + y * y).sqrt();
    let too_fast =
        length(seen.x, seen.y) - slack_m > elapsed_s * f64::from(config.speed_cm_per_s_max) / 100.0;
    if too_fast {
        return true;
    }
    let gate_s = config.gate_ms_max as f64 / 1_000.0;
    let Some(before) = before_last else {
        return false;
    };
    let lead_s = (last.recorded_at_ms - before.recorded_at_ms) as f64 / 1_000.0;
    if elapsed_s > gate_s || lead_s > gate_s || lead_s <= 0.0 {
        return false;
    }
    let origin = frame.project(before.position);
    // Constant velocity from the last two fixes: last = (0, 0), before = origin.
    let predicted = (
        -origin.x / lead_s * elapsed_s,
        -origin.y / lead_s * elapsed_s,
    );
    let off_m = length(seen.x - predicted.0, seen.y - predicted.1);
    let acceleration_m =
        f64::from(config.acceleration_cm_per_s2_max) / 100.0 * elapsed_s * elapsed_s / 2.0;
    // Stated accuracies are 68% radii: twice them covers the noise of the three fixes.
    let uncertainty_m = 2.0 * (slack_m + before.accuracy_m() * elapsed_s / lead_s);
    off_m > acceleration_m + f64::from(config.gate_distance_cm_min) / 100.0 + uncertainty_m
}

/// Whether `next`, judged an outlier after `last`, follows on from `before` (the fix kept
/// before `last`) at a possible speed and much closer to it than to `last`: then `last` was the
/// outlier.
fn is_back_on_track(
    before: &TrackPoint,
    last: &TrackPoint,
    next: &TrackPoint,
    config: &SessionConfig,
) -> bool {
    let frame = LocalFrame::around(next.position);
    let length = |p: PositionE7| {
        let c = frame.project(p);
        (c.x * c.x + c.y * c.y).sqrt()
    };
    let (from_before_m, from_last_m) = (length(before.position), length(last.position));
    let elapsed_s = (next.recorded_at_ms - before.recorded_at_ms) as f64 / 1_000.0;
    from_before_m - before.accuracy_m() - next.accuracy_m()
        <= elapsed_s * f64::from(config.speed_cm_per_s_max) / 100.0
        && from_before_m < from_last_m / 2.0
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
