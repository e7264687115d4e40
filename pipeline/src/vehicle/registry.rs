//! The registry of service entities: signed entries in, a spatial index out.
//!
//! Entries are ServiceEntity messages (version 2) on a subject every matching process follows
//! from its beginning. Each is signed by the institution signer of the institution that holds
//! the entity's wallet: that institution knows its merchant and vouches that the geofence and
//! the tariff are the ones agreed with it, and no one else can register an entity paying into
//! one of its wallets. A newer version replaces an older one, a version marked `removed` takes
//! the entity out, and anything older than the version in force is refused, so the registry
//! reaches the same state whatever the order it reads a redelivered subject in.
//!
//! In memory, each geofence is prepared once ([`PreparedZone`]) and its bounding box sits in an
//! R*-tree (`rstar`), updated in place on every change: [`EntityRegistry::locate`] answers
//! "which entities contain this point, or lie within its accuracy radius" with one tree walk
//! and a logarithmic point-in-polygon test per candidate.

use std::collections::HashMap;

use dcpipe_schemas::{Digest32, PartyRef, ServiceEntity, ServiceKind, Tariff};
use rstar::{AABB, Envelope, RTree, RTreeObject};

use super::geometry::{Placement, PositionE7, PreparedZone};
use super::signed::{service_entity_bytes, service_entity_digest};
use crate::pki::{ChainVerifier, Role};
use crate::reason::{Reason, Rejected};

/// Most entities (live or removed) a registry holds.
pub const REGISTRY_ENTITIES_MAX: usize = 1_000_000;

/// A registry entry whose signature, signer and geofence checked out.
#[derive(Debug, Clone)]
pub struct VerifiedEntity {
    entity: ServiceEntity,
    digest: Digest32,
    zone: PreparedZone,
}

impl VerifiedEntity {
    /// Prepares an entry without checking its signature: only for registries whose entries
    /// the caller made itself (benchmarks, simulations). Everything read from a bus goes
    /// through [`verify_entity`].
    pub fn without_signature_check(entity: ServiceEntity) -> Result<Self, Rejected> {
        let zone = PreparedZone::new(&entity.geofence)
            .map_err(|e| Rejected::new(Reason::EntityInvalidGeofence, e.to_string()))?;
        Ok(VerifiedEntity {
            digest: service_entity_digest(&entity),
            entity,
            zone,
        })
    }

    /// The entry.
    pub fn entity(&self) -> &ServiceEntity {
        &self.entity
    }

    /// SHA-256 of what the institution signed.
    pub fn digest(&self) -> &Digest32 {
        &self.digest
    }
}

/// Checks a registry entry: signed (version 1 entries are not), by an institution signer whose
/// chain is valid at the entry's time and not revoked now, of the institution holding the
/// entity's wallet; the signature; and a geofence that is a simple polygon within the bounds.
pub fn verify_entity(
    entity: &ServiceEntity,
    verifier: &ChainVerifier,
) -> Result<VerifiedEntity, Rejected> {
    if entity.certificate.is_empty() || entity.signature.is_empty() {
        return Err(Rejected::new(
            Reason::EntityUnsigned,
            format!(
                "entry {} version {} is not signed",
                entity.entity_id, entity.version
            ),
        ));
    }
    let signer = verifier
        .verify(
            &entity.certificate,
            entity.updated_at_ms,
            Role::InstitutionSigner,
        )
        .map_err(|e| {
            Rejected::new(
                Reason::Certificate(e.kind()),
                format!("registry signer: {e}"),
            )
        })?;
    if signer.institution_id() != entity.wallet.institution_id {
        return Err(Rejected::new(
            Reason::EntityWrongSigner,
            format!(
                "signed by {}, the entity's wallet is held by {}",
                signer.institution_id(),
                entity.wallet.institution_id
            ),
        ));
    }
    signer
        .public_key()
        .verify(&service_entity_bytes(entity), &entity.signature)
        .map_err(|e| Rejected::new(Reason::EntitySignatureInvalid, e.to_string()))?;
    let mut kept = entity.clone();
    // The registry keeps what matching needs; the proof stays on the bus.
    kept.certificate = Vec::new();
    kept.signature = Vec::new();
    let zone = PreparedZone::new(&kept.geofence)
        .map_err(|e| Rejected::new(Reason::EntityInvalidGeofence, e.to_string()))?;
    Ok(VerifiedEntity {
        digest: service_entity_digest(entity),
        entity: kept,
        zone,
    })
}

/// An entity in force.
#[derive(Debug, Clone)]
pub struct RegisteredEntity {
    entity: ServiceEntity,
    digest: Digest32,
    zone: PreparedZone,
}

impl RegisteredEntity {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.entity.entity_id
    }

    /// What it sells.
    pub fn kind(&self) -> ServiceKind {
        self.entity.kind
    }

    /// The version in force.
    pub fn version(&self) -> i64 {
        self.entity.version
    }

    /// The wallet payments go to.
    pub fn wallet(&self) -> &PartyRef {
        &self.entity.wallet
    }

    /// Its tariff.
    pub fn tariff(&self) -> &Tariff {
        &self.entity.tariff
    }

    /// The whole entry (without its certificate and signature).
    pub fn entity(&self) -> &ServiceEntity {
        &self.entity
    }

    /// The entry digest.
    pub fn digest(&self) -> &Digest32 {
        &self.digest
    }

    /// Its prepared geofence.
    pub fn zone(&self) -> &PreparedZone {
        &self.zone
    }
}

/// What applying an entry changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryChange {
    /// A new entity is in force.
    Registered,
    /// A newer version replaced the one in force (or a removed one).
    Replaced {
        /// The version replaced.
        previous_version: i64,
    },
    /// The entity is no longer in force.
    Removed,
    /// The same entry was applied before: nothing changed.
    Duplicate,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct IndexedZone {
    envelope: AABB<[f64; 2]>,
    slot: u32,
}

impl RTreeObject for IndexedZone {
    type Envelope = AABB<[f64; 2]>;

    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

#[derive(Debug, Clone, Copy)]
struct Known {
    version: i64,
    digest: Digest32,
    /// Where the entity sits while in force; `None` once removed.
    slot: Option<u32>,
}

/// The entities in force, indexed by geofence.
#[derive(Debug, Default)]
pub struct EntityRegistry {
    tree: RTree<IndexedZone>,
    slots: Vec<Option<RegisteredEntity>>,
    free_slots: Vec<u32>,
    known: HashMap<String, Known>,
}

impl EntityRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        EntityRegistry::default()
    }

    /// A registry of `entries` built at once (bulk-loaded R-tree), applying them in order as
    /// [`EntityRegistry::apply`] would; returns the refusals with the index of their entry.
    pub fn from_entries(
        entries: impl IntoIterator<Item = VerifiedEntity>,
    ) -> (Self, Vec<(usize, Rejected)>) {
        let mut registry = EntityRegistry::new();
        let mut refusals = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            if let Err(refused) = registry.decide(&entry) {
                refusals.push((index, refused));
                continue;
            }
            registry.commit(entry, false);
        }
        let indexed: Vec<IndexedZone> = registry
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, entity)| {
                entity.as_ref().map(|e| IndexedZone {
                    envelope: e.zone.envelope(),
                    slot: slot as u32,
                })
            })
            .collect();
        registry.tree = RTree::bulk_load(indexed);
        (registry, refusals)
    }

    /// Applies one entry: registers, replaces or removes the entity, or refuses an entry older
    /// than (or conflicting with) the version in force.
    pub fn apply(&mut self, entry: VerifiedEntity) -> Result<RegistryChange, Rejected> {
        let change = self.decide(&entry)?;
        if change != RegistryChange::Duplicate {
            self.commit(entry, true);
        }
        Ok(change)
    }

    fn decide(&self, entry: &VerifiedEntity) -> Result<RegistryChange, Rejected> {
        let entity = &entry.entity;
        let Some(known) = self.known.get(&entity.entity_id) else {
            if self.known.len() >= REGISTRY_ENTITIES_MAX {
                return Err(Rejected::new(
                    Reason::EntityRegistryFull,
                    format!("{REGISTRY_ENTITIES_MAX} entities registered"),
                ));
            }
            return Ok(if entity.removed {
                RegistryChange::Removed
            } else {
                RegistryChange::Registered
            });
        };
        if entity.version < known.version {
            return Err(Rejected::new(
                Reason::EntityStaleVersion,
                format!(
                    "{} version {} is older than version {} in force",
                    entity.entity_id, entity.version, known.version
                ),
            ));
        }
        if entity.version == known.version {
            return if entry.digest == known.digest {
                Ok(RegistryChange::Duplicate)
            } else {
                Err(Rejected::new(
                    Reason::EntityVersionConflict,
                    format!(
                        "{} version {} was registered with other content",
                        entity.entity_id, entity.version
                    ),
                ))
            };
        }
        Ok(if entity.removed {
            RegistryChange::Removed
        } else {
            RegistryChange::Replaced {
                previous_version: known.version,
            }
        })
    }

    /// Puts a decided entry in force; with `index`, also updates the tree (not during a bulk
    /// load, which builds the tree at the end).
    fn commit(&mut self, entry: VerifiedEntity, index: bool) {
        let VerifiedEntity {
            entity,
            digest,
            zone,
        } = entry;
        if let Some(slot) = self.known.get(&entity.entity_id).and_then(|k| k.slot) {
            if let Some(old) = self.slots[slot as usize].take()
                && index
            {
                self.tree.remove(&IndexedZone {
                    envelope: old.zone.envelope(),
                    slot,
                });
            }
            self.free_slots.push(slot);
        }
        let slot = if entity.removed {
            None
        } else {
            let envelope = zone.envelope();
            let registered = RegisteredEntity {
                entity: entity.clone(),
                digest,
                zone,
            };
            let slot = match self.free_slots.pop() {
                Some(slot) => {
                    self.slots[slot as usize] = Some(registered);
                    slot
                }
                None => {
                    self.slots.push(Some(registered));
                    (self.slots.len() - 1) as u32
                }
            };
            if index {
                self.tree.insert(IndexedZone { envelope, slot });
            }
            Some(slot)
        };
        self.known.insert(
            entity.entity_id,
            Known {
                version: entity.version,
                digest,
                slot,
            },
        );
    }

    /// The entity in force with this id.
    pub fn get(&self, entity_id: &str) -> Option<&RegisteredEntity> {
        let slot = self.known.get(entity_id)?.slot?;
        self.slots[slot as usize].as_ref()
    }

    /// The version last applied for this id (in force or removed).
    pub fn known_version(&self, entity_id: &str) -> Option<i64> {
        self.known.get(entity_id).map(|k| k.version)
    }

    /// Entities in force.
    pub fn len(&self) -> usize {
        self.tree.size()
    }

    /// Whether no entity is in force.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `visit` for every entity whose geofence contains `position`, or lies within
    /// `radius_m` metres of it, with where the point lies.
    pub fn locate<'a>(
        &'a self,
        position: PositionE7,
        radius_m: f64,
        mut visit: impl FnMut(&'a RegisteredEntity, Placement),
    ) {
        let envelope = position.envelope_around(radius_m);
        for indexed in self.tree.locate_in_envelope_intersecting(&envelope) {
            let Some(entity) = self.slots[indexed.slot as usize].as_ref() else {
                continue;
            };
            let point = entity.zone.project(position);
            if let Some(placement) = entity.zone.placement_within(point, radius_m) {
                visit(entity, placement);
            }
        }
    }

    /// The entities whose geofence contains `position`.
    pub fn containing(&self, position: PositionE7) -> Vec<&RegisteredEntity> {
        let mut found = Vec::new();
        self.locate(position, 0.0, |entity, placement| {
            if placement == Placement::Inside {
                found.push(entity);
            }
        });
        found
    }

    /// Calls `visit` for every entity whose bounding box meets the box around the segment from
    /// `from` to `to`, widened by `margin_m`; the caller tests the segment itself.
    pub fn near_segment<'a>(
        &'a self,
        from: PositionE7,
        to: PositionE7,
        margin_m: f64,
        mut visit: impl FnMut(&'a RegisteredEntity),
    ) {
        let envelope = from
            .envelope_around(margin_m)
            .merged(&to.envelope_around(margin_m));
        for indexed in self.tree.locate_in_envelope_intersecting(&envelope) {
            if let Some(entity) = self.slots[indexed.slot as usize].as_ref() {
                visit(entity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use dcpipe_schemas::{ParkingTariff, Tariff};

    use super::*;
    use crate::vehicle::geometry::tests::{BEIJING, offset, rectangle};

    fn parking(id: &str, centre: PositionE7, version: i64) -> ServiceEntity {
        ServiceEntity {
            entity_id: id.to_owned(),
            kind: ServiceKind::Parking,
            name: format!("lot {id}"),
            wallet: PartyRef {
                institution_id: "oi02".to_owned(),
                wallet_id: format!("w-{id}"),
            },
            geofence: rectangle(centre, 80.0, 50.0),
            tariff: Tariff {
                toll: None,
                parking: Some(ParkingTariff {
                    fen_per_minute: 10,
                    free_minutes: 15,
                    daily_cap_fen: 6_000,
                }),
                metered: None,
            },
            version,
            updated_at_ms: 1_764_000_000_000 + version,
            removed: false,
            certificate: Vec::new(),
            signature: Vec::new(),
        }
    }

    fn verified(entity: ServiceEntity) -> VerifiedEntity {
        VerifiedEntity::without_signature_check(entity).expect("valid geofence")
    }

    #[test]
    fn finds_the_entity_containing_a_point_and_none_beside_it() {
        let mut registry = EntityRegistry::new();
        registry
            .apply(verified(parking("P1", BEIJING, 1)))
            .expect("registers");
        registry
            .apply(verified(parking("P2", offset(BEIJING, 500.0, 0.0), 1)))
            .expect("registers");
        let ids = |p: PositionE7| -> Vec<String> {
            registry
                .containing(p)
                .iter()
                .map(|e| e.id().to_owned())
                .collect()
        };
        assert_eq!(ids(BEIJING), vec!["P1"]);
        assert_eq!(ids(offset(BEIJING, 510.0, 5.0)), vec!["P2"]);
        assert!(ids(offset(BEIJING, 0.0, 40.0)).is_empty());
    }

    #[test]
    fn the_accuracy_radius_reaches_entities_nearby() {
        let mut registry = EntityRegistry::new();
        registry
            .apply(verified(parking("P1", BEIJING, 1)))
            .expect("registers");
        let beside = offset(BEIJING, 0.0, 35.0); // 10 m north of the lot
        let mut seen = Vec::new();
        registry.locate(beside, 15.0, |entity, placement| {
            seen.push((entity.id(), placement))
        });
        assert_eq!(seen.len(), 1);
        assert!(
            matches!(seen[0].1, Placement::Outside { distance_m } if (distance_m - 10.0).abs() < 0.5)
        );
        seen.clear();
        registry.locate(beside, 5.0, |entity, placement| {
            seen.push((entity.id(), placement))
        });
        assert!(seen.is_empty());
    }

    #[test]
    fn a_newer_version_moves_the_entity_and_an_older_one_is_refused() {
        let mut registry = EntityRegistry::new();
        registry
            .apply(verified(parking("P1", BEIJING, 1)))
            .expect("v1");
        let moved = offset(BEIJING, 1_000.0, 0.0);
        assert_eq!(
            registry.apply(verified(parking("P1", moved, 2))),
            Ok(RegistryChange::Replaced {
                previous_version: 1
            })
        );
        assert!(registry.containing(BEIJING).is_empty());
        assert_eq!(registry.containing(moved).len(), 1);
        let stale = registry
            .apply(verified(parking("P1", BEIJING, 1)))
            .expect_err("older version");
        assert_eq!(stale.reason, Reason::EntityStaleVersion);
        assert_eq!(
            registry.apply(verified(parking("P1", moved, 2))),
            Ok(RegistryChange::Duplicate)
        );
        let mut other = parking("P1", moved, 2);
        other.name = "renamed".to_owned();
        let conflict = registry
            .apply(verified(other))
            .expect_err("same version, other content");
        assert_eq!(conflict.reason, Reason::EntityVersionConflict);
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn a_removal_takes_the_entity_out_until_a_newer_version() {
        let mut registry = EntityRegistry::new();
        registry
            .apply(verified(parking("P1", BEIJING, 1)))
            .expect("v1");
        let mut removal = parking("P1", BEIJING, 2);
        removal.removed = true;
        assert_eq!(
            registry.apply(verified(removal)),
            Ok(RegistryChange::Removed)
        );
        assert!(registry.containing(BEIJING).is_empty() && registry.get("P1").is_none());
        assert_eq!(registry.known_version("P1"), Some(2));
        let refused = registry
            .apply(verified(parking("P1", BEIJING, 1)))
            .expect_err("stale");
        assert_eq!(refused.reason, Reason::EntityStaleVersion);
        assert_eq!(
            registry.apply(verified(parking("P1", BEIJING, 3))),
            Ok(RegistryChange::Replaced {
                previous_version: 2
            })
        );
        assert_eq!(registry.containing(BEIJING).len(), 1);
    }

    #[test]
    fn a_bulk_load_answers_like_entries_applied_one_by_one() {
        let entries: Vec<ServiceEntity> = (0..200)
            .map(|i| {
                parking(
                    &format!("P{i}"),
                    offset(BEIJING, f64::from(i) * 100.0, 0.0),
                    1,
                )
            })
            .collect();
        let (bulk, refusals) = EntityRegistry::from_entries(entries.iter().cloned().map(verified));
        assert!(refusals.is_empty());
        let mut incremental = EntityRegistry::new();
        for entity in &entries {
            incremental
                .apply(verified(entity.clone()))
                .expect("applies");
        }
        for i in 0..400 {
            let p = offset(BEIJING, f64::from(i) * 50.0, 3.0);
            let a: Vec<&str> = bulk.containing(p).iter().map(|e| e.id()).collect();
            let b: Vec<&str> = incremental.containing(p).iter().map(|e| e.id()).collect();
            assert_eq!(a, b, "{i}");
        }
        assert_eq!(bulk.len(), 200);
    }

    #[test]
    fn a_self_intersecting_geofence_is_refused() {
        let mut entity = parking("P1", BEIJING, 1);
        entity.geofence.swap(1, 2);
        let refused = VerifiedEntity::without_signature_check(entity).expect_err("bow tie");
        assert_eq!(refused.reason, Reason::EntityInvalidGeofence);
    }
}
