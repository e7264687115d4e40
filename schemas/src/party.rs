//! The address of a wallet: which institution holds it, and its id there.

use serde::{Deserialize, Serialize};

use crate::{check, error::CodecError};

/// A wallet and the operating institution that holds it (Avro record `PartyRef`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartyRef {
    /// Operating institution id (see [`ID_CHARS_MAX`](crate::ID_CHARS_MAX)).
    pub institution_id: String,
    /// Wallet id within the institution (see [`ID_CHARS_MAX`](crate::ID_CHARS_MAX)).
    pub wallet_id: String,
}

impl PartyRef {
    /// Checks both ids; `field` names the party in errors (`payer`, `payee`, `wallet`).
    pub(crate) fn check(&self, field: &str) -> Result<(), CodecError> {
        check::id("institution_id", &self.institution_id)
            .and_then(|()| check::id("wallet_id", &self.wallet_id))
            .map_err(|e| e.within(field))
    }
}
