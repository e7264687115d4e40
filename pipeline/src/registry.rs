//! Every stage of the pipeline, registered where it is defined.
//!
//! A stage module declares itself with `inventory::submit!` and a [`StageDescriptor`]: its
//! name, who runs it, its flow, the subjects it consumes and publishes for an owner, and how to
//! build it. `dcpipe worker <stage>`, [`crate::network::Network::stages`] and
//! [`crate::network::Network::ensure_subjects`] read this registry, so adding a stage is one
//! new module and nothing else.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use dcpipe_connectors::ledger::SETTLEMENT_STORE_NAME;

use crate::payment::Institution;
use crate::runtime::Stage;
use crate::settlement::CentralBank;
use crate::subjects;
use crate::vehicle::backend::VehicleInstitution;

/// Which of the mission's flows a stage belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Flow {
    /// Flow 1: a payment between two terminals, cleared between their institutions.
    Payment,
    /// Flow 2: offline wallets publish key sets.
    WalletKeySet,
    /// Flow 3: vehicles pay where they are.
    Vehicle,
    /// Between institutions: net positions per settlement window.
    Settlement,
}

impl Flow {
    /// Stable name, e.g. `payment`.
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Payment => "payment",
            Flow::WalletKeySet => "wallet-key-set",
            Flow::Vehicle => "vehicle",
            Flow::Settlement => "settlement",
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who runs a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// Each operating institution runs its own instance.
    Institution,
    /// The central bank runs one instance.
    CentralBank,
}

/// How a stage is built from its operator's back-end.
#[derive(Clone, Copy)]
pub enum Build {
    /// From an institution's back-end.
    Institution(fn(Arc<Institution>) -> Arc<dyn Stage>),
    /// From the central bank's settlement service.
    CentralBank(fn(Arc<CentralBank>) -> Arc<dyn Stage>),
    /// From an institution's vehicle back-end (its payment back-end, session store and the
    /// registry of service entities its process follows).
    Vehicle(fn(Arc<VehicleInstitution>) -> Arc<dyn Stage>),
}

impl fmt::Debug for Build {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Build::Institution(_) => "Build::Institution",
            Build::CentralBank(_) => "Build::CentralBank",
            Build::Vehicle(_) => "Build::Vehicle",
        })
    }
}

/// A stage, as it declares itself.
#[derive(Debug)]
pub struct StageDescriptor {
    /// Stable name: consumer group suffix, dead-letter subject, metrics label, the argument of
    /// `dcpipe worker`.
    pub name: &'static str,
    /// One line for people (`dcpipe worker --help`).
    pub summary: &'static str,
    /// Its flow.
    pub flow: Flow,
    /// The subject it consumes, for an owner (an institution id, or the central bank's name).
    pub consumes: fn(owner: &str) -> String,
    /// The subjects it may publish to, for an owner, in a network of these institutions.
    pub publishes: fn(owner: &str, institutions: &[String]) -> Vec<String>,
    /// How to build an instance; also says who runs it.
    pub build: Build,
}

inventory::collect!(StageDescriptor);

impl StageDescriptor {
    /// Who runs it.
    pub fn operator(&self) -> Operator {
        match self.build {
            Build::Institution(_) | Build::Vehicle(_) => Operator::Institution,
            Build::CentralBank(_) => Operator::CentralBank,
        }
    }

    /// The owners of its instances in a network of these institutions.
    pub fn owners(&self, institutions: &[String]) -> Vec<String> {
        match self.operator() {
            Operator::Institution => institutions.to_vec(),
            Operator::CentralBank => vec![SETTLEMENT_STORE_NAME.to_owned()],
        }
    }

    /// Its dead-letter subject.
    pub fn dead_letter_subject(&self) -> String {
        dcpipe_connectors::bus::dead_letter_subject(self.name)
    }
}

/// Every subject a network of these institutions uses: what each registered stage of each
/// owner consumes and publishes, the stages' dead-letter subjects and the revocations every
/// process follows (and the registry of service entities the vehicle stages follow). What
/// `dcpipe bus init` provisions.
pub fn network_subjects(institutions: &[String]) -> BTreeSet<String> {
    subjects_of(stages(), institutions)
}

/// The subjects [`network_subjects`] lists, for these stages only.
pub fn subjects_of(
    descriptors: impl IntoIterator<Item = &'static StageDescriptor>,
    institutions: &[String],
) -> BTreeSet<String> {
    let mut names = BTreeSet::from([subjects::PKI_REVOCATION.to_owned()]);
    for descriptor in descriptors {
        for owner in descriptor.owners(institutions) {
            names.extend(descriptor.needs(&owner, institutions));
        }
    }
    names
}

impl StageDescriptor {
    /// Every subject one instance of this stage (for `owner`) needs to exist before it starts:
    /// what it consumes and publishes, its dead-letter subject and the revocations (and, for a
    /// vehicle stage, the registry of service entities).
    pub fn needs(&self, owner: &str, institutions: &[String]) -> BTreeSet<String> {
        let mut names = BTreeSet::from([
            subjects::PKI_REVOCATION.to_owned(),
            (self.consumes)(owner),
            self.dead_letter_subject(),
        ]);
        names.extend((self.publishes)(owner, institutions));
        if matches!(self.build, Build::Vehicle(_)) {
            names.insert(subjects::VEHICLE_REGISTRY.to_owned());
        }
        names
    }
}

/// Every registered stage, by name.
pub fn stages() -> Vec<&'static StageDescriptor> {
    let mut stages: Vec<&'static StageDescriptor> =
        inventory::iter::<StageDescriptor>.into_iter().collect();
    stages.sort_by_key(|d| d.name);
    stages
}

/// The stage registered under `name`.
pub fn stage(name: &str) -> Option<&'static StageDescriptor> {
    inventory::iter::<StageDescriptor>
        .into_iter()
        .find(|d| d.name == name)
}

/// The names of every registered stage, sorted.
pub fn names() -> Vec<&'static str> {
    stages().into_iter().map(|d| d.name).collect()
}

/// The central bank's owner id: the name its stages and its settlement store go by.
pub const CENTRAL_BANK: &str = SETTLEMENT_STORE_NAME;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_stage_of_the_pipeline_is_registered_once() {
        let names = names();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for expected in ["payer", "payee", "commit", "finalize", "settlement"] {
            assert!(
                unique.contains(expected),
                "{expected} missing from {names:?}"
            );
        }
    }

    #[test]
    fn institution_stages_consume_their_own_subjects() {
        let institutions = vec!["oi01".to_owned(), "oi02".to_owned()];
        for descriptor in stages() {
            for owner in descriptor.owners(&institutions) {
                let consumed = (descriptor.consumes)(&owner);
                dcpipe_connectors::bus::validate_subject(&consumed).expect("valid subject");
                if descriptor.operator() == Operator::Institution {
                    assert!(consumed.ends_with(&format!(".{owner}")), "{consumed}");
                }
                for published in (descriptor.publishes)(&owner, &institutions) {
                    dcpipe_connectors::bus::validate_subject(&published).expect("valid subject");
                }
            }
            assert_eq!(
                descriptor.dead_letter_subject(),
                format!("deadletter.{}", descriptor.name)
            );
        }
    }
}
