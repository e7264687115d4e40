//! Provisioning the bus: every stream or topic of the protocol created ahead of the workers,
//! and what a worker checks before it starts.
//!
//! Creating streams is an operator's step (`dcpipe bus init`), run once per deployment and
//! again after a change of configuration: it creates what is missing and reports, for what
//! exists, whether it matches the configuration and how it differs. It never changes a live
//! stream: that is for the broker's own tools. Workers create nothing; they check that every
//! subject they need exists and refuse to start otherwise ([`check_subjects`]).

use std::fmt;

use dcpipe_connectors::bus::{Bus, BusError, SubjectSpec, layout_drift};

/// The command an operator runs to provision the bus, named in every refusal.
pub const PROVISION_COMMAND: &str = "dcpipe bus init";

/// What provisioning found or did for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectState {
    /// Nothing held it; it was created.
    Created,
    /// Nothing holds it; a dry run would create it.
    WouldCreate,
    /// It exists as configured.
    Matches,
    /// It exists, otherwise than configured: one line per difference.
    Differs(Vec<String>),
}

impl SubjectState {
    /// A short word for reports: `created`, `would-create`, `exists`, `differs`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SubjectState::Created => "created",
            SubjectState::WouldCreate => "would-create",
            SubjectState::Matches => "exists",
            SubjectState::Differs(_) => "differs",
        }
    }
}

/// One line of a provisioning report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectReport {
    /// The subject.
    pub subject: String,
    /// What holds it on the bus (stream or topic), planned or found.
    pub holder: String,
    /// What was found or done.
    pub state: SubjectState,
}

impl fmt::Display for SubjectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<32} {:<32} {}",
            self.subject,
            self.holder,
            self.state.as_str()
        )?;
        if let SubjectState::Differs(drift) = &self.state {
            write!(f, ": {}", drift.join("; "))?;
        }
        Ok(())
    }
}

/// Creates every subject of `subjects` that nothing holds yet (none when `dry_run`), with
/// `partitions` on Kafka and the bus's configured replicas and retention, and reports on each,
/// in order. Idempotent: a second run reports every subject as [`SubjectState::Matches`].
pub async fn provision_subjects(
    bus: &dyn Bus,
    subjects: impl IntoIterator<Item = String>,
    partitions: u32,
    dry_run: bool,
) -> Result<Vec<SubjectReport>, BusError> {
    let mut reports = Vec::new();
    for subject in subjects {
        let spec = SubjectSpec::new(subject.clone()).with_partitions(partitions);
        let planned = bus.planned_layout(&spec);
        let (holder, state) = match bus.describe_subject(&subject).await? {
            Some(found) => {
                let drift = layout_drift(&planned, &found);
                let state = if drift.is_empty() {
                    SubjectState::Matches
                } else {
                    SubjectState::Differs(drift)
                };
                (found.holder, state)
            }
            None if dry_run => (planned.holder, SubjectState::WouldCreate),
            None => {
                bus.ensure_subject(&spec).await?;
                (planned.holder, SubjectState::Created)
            }
        };
        reports.push(SubjectReport {
            subject,
            holder,
            state,
        });
    }
    Ok(reports)
}

/// The subjects of `subjects` that nothing holds on `bus`, in order.
pub async fn missing_subjects(
    bus: &dyn Bus,
    subjects: impl IntoIterator<Item = String>,
) -> Result<Vec<String>, BusError> {
    let mut missing = Vec::new();
    for subject in subjects {
        if bus.describe_subject(&subject).await?.is_none() {
            missing.push(subject);
        }
    }
    Ok(missing)
}

/// Why a worker refuses to start on a bus that was not provisioned.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Subjects the worker needs do not exist.
    #[error(
        "the bus is not provisioned: nothing holds {}; run `{PROVISION_COMMAND}` with the same bus and the institutions of the network first",
        .0.join(", ")
    )]
    Missing(Vec<String>),
    /// The bus could not be asked.
    #[error("checking the subjects: {0}")]
    Bus(#[from] BusError),
}

/// Succeeds when every subject of `subjects` exists on `bus`; otherwise names the missing ones
/// and the command that creates them.
pub async fn check_subjects(
    bus: &dyn Bus,
    subjects: impl IntoIterator<Item = String>,
) -> Result<(), CheckError> {
    let missing = missing_subjects(bus, subjects).await?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CheckError::Missing(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_line_names_the_subject_its_holder_and_each_difference() {
        let line = SubjectReport {
            subject: "txn.submit.oi01".into(),
            holder: "TXN".into(),
            state: SubjectState::Differs(vec![
                "replicas 1, configured 3".into(),
                "max age 3d, configured 30d".into(),
            ]),
        }
        .to_string();
        assert!(line.starts_with("txn.submit.oi01 "), "{line}");
        assert!(line.contains(" TXN "), "{line}");
        assert!(
            line.ends_with("differs: replicas 1, configured 3; max age 3d, configured 30d"),
            "{line}"
        );
    }

    #[test]
    fn a_refusal_names_the_missing_subjects_and_the_command() {
        let message =
            CheckError::Missing(vec!["txn.submit.oi01".into(), "deadletter.payer".into()])
                .to_string();
        assert!(
            message.contains("txn.submit.oi01, deadletter.payer"),
            "{message}"
        );
        assert!(message.contains("dcpipe bus init"), "{message}");
    }
}
