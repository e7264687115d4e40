//! What an operator does from the command line, as library functions the `dcpipe` binary
//! calls and the tests call the same way: read subjects decoded ([`records`], [`follow`]),
//! submit one payment as a pair of terminals would ([`submit`]), list and redrive dead letters
//! ([`dead_letters`]) and read settlement verified ([`settlement`]).
//!
//! Everything here reads subjects by replay, never in a consumer group: an operator's look at a
//! subject leaves no durable consumer and no committed offset behind, so it cannot disturb the
//! workers' groups.

pub mod dead_letters;
pub mod follow;
pub mod records;
pub mod settlement;
pub mod submit;
pub mod tail;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::error::Error;
use crate::pki::{ChainVerifier, RevocationSet, TrustLayout, TrustStore, read_trust_anchors};

/// What went wrong in an operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpsErrorKind {
    /// The bus refused or failed (connection, publish, replay).
    Bus,
    /// An argument names something that does not exist or is malformed.
    Input,
    /// A key or certificate file could not be read or does not fit its role.
    Keys,
    /// The terminals could not make the payment (a certificate refused, signing failed).
    Touch,
    /// No answer came in time.
    Timeout,
}

impl fmt::Display for OpsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpsErrorKind::Bus => "bus",
            OpsErrorKind::Input => "input",
            OpsErrorKind::Keys => "keys",
            OpsErrorKind::Touch => "touch",
            OpsErrorKind::Timeout => "timeout",
        })
    }
}

/// An error of an operator's command.
pub type OpsError = Error<OpsErrorKind>;

impl From<dcpipe_connectors::bus::BusError> for OpsError {
    fn from(e: dcpipe_connectors::bus::BusError) -> Self {
        OpsError::with_source(OpsErrorKind::Bus, e.to_string(), e)
    }
}

/// The trust anchors of a trust directory (`pki init`'s `trust/`, or the PKI directory holding
/// it): the root's certificate, every institution CA's and the settlement signer's
/// (certificates only: no private key is read).
pub fn trust_anchors(pki: &Path) -> Result<TrustStore, OpsError> {
    read_trust_anchors(&TrustLayout::of(pki))
        .map(|(_, store)| store)
        .map_err(|e| OpsError::new(OpsErrorKind::Keys, e.to_string()))
}

/// A chain verifier over the trust anchors of a PKI directory, with no revocations.
pub fn verifier(pki: &Path) -> Result<ChainVerifier, OpsError> {
    Ok(ChainVerifier::new(
        Arc::new(trust_anchors(pki)?),
        Arc::new(RevocationSet::new()),
    ))
}
