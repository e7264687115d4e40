//! What a process knows about its own health: whether each member of its stages is attached to
//! its consumer group, detached, or stopped on a fatal failure, and whether the parts it
//! depends on (the bus, each ledger) were reachable when last used. It answers "ready? and if
//! not, which part and why" as data, for whatever serves it (a readiness endpoint, a test).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

/// A part of a process whose state is reported.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// One member of a stage's consumer group.
    Member(MemberId),
    /// The bus.
    Bus,
    /// A ledger (an institution's, or the central bank's settlement store), by owner id.
    Ledger(String),
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Member(id) => id.fmt(f),
            Component::Bus => f.write_str("bus"),
            Component::Ledger(owner) => write!(f, "ledger of {owner}"),
        }
    }
}

/// Which member of which stage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId {
    /// The stage's name, e.g. `payer`.
    pub stage: &'static str,
    /// Whose stage it is: an institution id, or the central bank.
    pub owner: String,
    /// Which of the process's members of the group (0 for the first).
    pub index: usize,
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stage {} of {}, member {}",
            self.stage, self.owner, self.index
        )
    }
}

/// Where a member of a stage stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberState {
    /// Consuming from its group.
    Attached,
    /// Not consuming (starting, the bus unreachable, stopped), and why.
    Detached(String),
    /// Stopped on a fatal failure; it takes no more work until the process restarts.
    Fatal(String),
}

/// Whether a part was reachable when last used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachability {
    /// It answered.
    Reachable,
    /// It did not, and why.
    Unreachable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Member(MemberState),
    Part(Reachability),
}

/// The health of one process, shared by everything in it that reports.
#[derive(Debug, Default)]
pub struct Health {
    components: Mutex<BTreeMap<Component, Status>>,
    warnings: Mutex<BTreeMap<Component, String>>,
}

/// A component that keeps the process from being ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// Which one.
    pub component: Component,
    /// Why (the last error it met, or its state).
    pub why: String,
    /// Whether it stopped for good (a fatal failure) rather than for now.
    pub fatal: bool,
}

/// The answer to "is this process ready?".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Readiness {
    /// Every component that is not ready, in a stable order; empty when ready.
    pub not_ready: Vec<NotReady>,
    /// What an operator should know though it does not keep the process from being ready (a
    /// ledger that holds no wallets: the worker may be pointed at the wrong database), by
    /// component, in a stable order.
    pub warnings: Vec<(Component, String)>,
}

impl Readiness {
    /// Whether every reported component is ready.
    pub fn is_ready(&self) -> bool {
        self.not_ready.is_empty()
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ready() {
            f.write_str("ready")?;
        } else {
            f.write_str("not ready: ")?;
            for (i, part) in self.not_ready.iter().enumerate() {
                if i > 0 {
                    f.write_str("; ")?;
                }
                let state = if part.fatal { "stopped" } else { "down" };
                write!(f, "{} {state}: {}", part.component, part.why)?;
            }
        }
        for (component, warning) in &self.warnings {
            write!(f, "; warning: {component}: {warning}")?;
        }
        Ok(())
    }
}

impl Health {
    /// Nothing reported yet: ready.
    pub fn new() -> Self {
        Health::default()
    }

    /// Reports where a member stands.
    pub fn member(&self, id: &MemberId, state: MemberState) {
        self.set(Component::Member(id.clone()), Status::Member(state));
    }

    /// Reports whether the bus or a ledger answered. Not for members.
    pub fn reach(&self, component: Component, reachability: Reachability) {
        debug_assert!(!matches!(component, Component::Member(_)));
        self.set(component, Status::Part(reachability));
    }

    /// Reports what an operator should know of a part without it keeping the process from
    /// being ready (replaces that part's earlier warning).
    pub fn warn(&self, component: Component, warning: impl Into<String>) {
        self.warnings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(component, warning.into());
    }

    /// Withdraws a part's warning.
    pub fn clear_warning(&self, component: &Component) {
        self.warnings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(component);
    }

    /// Where a member stands, if it reported.
    pub fn member_state(&self, id: &MemberId) -> Option<MemberState> {
        match self.lock().get(&Component::Member(id.clone())) {
            Some(Status::Member(state)) => Some(state.clone()),
            _ => None,
        }
    }

    /// Whether every component reported is ready: members attached, parts reachable.
    pub fn readiness(&self) -> Readiness {
        let not_ready = self
            .lock()
            .iter()
            .filter_map(|(component, status)| {
                let (why, fatal) = match status {
                    Status::Member(MemberState::Attached)
                    | Status::Part(Reachability::Reachable) => return None,
                    Status::Member(MemberState::Detached(why))
                    | Status::Part(Reachability::Unreachable(why)) => (why.clone(), false),
                    Status::Member(MemberState::Fatal(why)) => (why.clone(), true),
                };
                Some(NotReady {
                    component: component.clone(),
                    why,
                    fatal,
                })
            })
            .collect();
        let warnings = self
            .warnings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(component, warning)| (component.clone(), warning.clone()))
            .collect();
        Readiness {
            not_ready,
            warnings,
        }
    }

    fn set(&self, component: Component, status: Status) {
        let mut components = self.lock();
        // A fatal member stays fatal: nothing after it (its own shutdown) may hide it.
        if let Some(Status::Member(MemberState::Fatal(_))) = components.get(&component) {
            return;
        }
        components.insert(component, status);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Component, Status>> {
        self.components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(index: usize) -> MemberId {
        MemberId {
            stage: "payer",
            owner: "oi01".to_owned(),
            index,
        }
    }

    #[test]
    fn a_warning_is_said_without_keeping_the_process_from_being_ready() {
        let health = Health::new();
        let ledger = Component::Ledger("oi01".to_owned());
        health.reach(ledger.clone(), Reachability::Reachable);
        health.warn(ledger.clone(), "holds no wallets");
        let readiness = health.readiness();
        assert!(readiness.is_ready());
        assert_eq!(
            readiness.warnings,
            vec![(ledger.clone(), "holds no wallets".to_owned())]
        );
        assert_eq!(
            readiness.to_string(),
            "ready; warning: ledger of oi01: holds no wallets"
        );
        health.clear_warning(&ledger);
        assert_eq!(health.readiness().to_string(), "ready");
    }

    #[test]
    fn nothing_reported_is_ready() {
        assert!(Health::new().readiness().is_ready());
    }

    #[test]
    fn ready_once_every_member_attached_and_parts_reachable() {
        let health = Health::new();
        health.member(&member(0), MemberState::Detached("starting".to_owned()));
        health.member(&member(1), MemberState::Attached);
        let readiness = health.readiness();
        assert!(!readiness.is_ready());
        assert_eq!(readiness.not_ready.len(), 1);
        assert_eq!(
            readiness.not_ready[0].component,
            Component::Member(member(0))
        );
        assert_eq!(readiness.not_ready[0].why, "starting");
        health.member(&member(0), MemberState::Attached);
        health.reach(Component::Bus, Reachability::Reachable);
        assert!(health.readiness().is_ready());
    }

    #[test]
    fn unreachable_part_says_which_and_why() {
        let health = Health::new();
        health.member(&member(0), MemberState::Attached);
        health.reach(
            Component::Ledger("oi01".to_owned()),
            Reachability::Unreachable("connection refused".to_owned()),
        );
        let readiness = health.readiness();
        assert_eq!(
            readiness.not_ready,
            vec![NotReady {
                component: Component::Ledger("oi01".to_owned()),
                why: "connection refused".to_owned(),
                fatal: false,
            }]
        );
        assert_eq!(
            readiness.to_string(),
            "not ready: ledger of oi01 down: connection refused"
        );
        health.reach(
            Component::Ledger("oi01".to_owned()),
            Reachability::Reachable,
        );
        assert!(health.readiness().is_ready());
    }

    #[test]
    fn fatal_member_stays_not_ready_after_it_stops() {
        let health = Health::new();
        health.member(
            &member(0),
            MemberState::Fatal("ledger integrity".to_owned()),
        );
        health.member(&member(0), MemberState::Detached("stopped".to_owned()));
        let readiness = health.readiness();
        assert!(readiness.not_ready[0].fatal);
        assert_eq!(readiness.not_ready[0].why, "ledger integrity");
        assert_eq!(
            health.member_state(&member(0)),
            Some(MemberState::Fatal("ledger integrity".to_owned()))
        );
    }
}
