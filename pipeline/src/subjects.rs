//! Every subject (NATS) or topic (Kafka) dcpipe uses: the same names on every bus.
//!
//! `<oi>` is an operating institution's id. docs/PROTOCOL.md lists them with their messages.

/// Payer terminals publish [`dcpipe_schemas::TransactionEnvelope`]s to their institution.
pub fn txn_submit(institution: &str) -> String {
    format!("txn.submit.{institution}")
}

/// Payment outcomes for an institution and its terminals.
pub fn txn_result(institution: &str) -> String {
    format!("txn.result.{institution}")
}

/// Clearing messages addressed to the payee's institution.
pub fn clearing_request(institution: &str) -> String {
    format!("clearing.request.{institution}")
}

/// Clearing responses addressed to the payer's institution.
pub fn clearing_response(institution: &str) -> String {
    format!("clearing.response.{institution}")
}

/// Completed interbank payments, for the central bank's settlement.
pub const SETTLEMENT_CLEARING: &str = "settlement.clearing";

/// Settlement instructions, one per closed window.
pub const SETTLEMENT_INSTRUCTION: &str = "settlement.instruction";

/// An institution's net position per closed window.
pub fn settlement_position(institution: &str) -> String {
    format!("settlement.position.{institution}")
}

/// Certificate revocations, for every worker.
pub const PKI_REVOCATION: &str = "pki.revocation";

/// Telemetry of vehicles whose wallet `institution` holds.
pub fn vehicle_telemetry(institution: &str) -> String {
    format!("vehicle.telemetry.{institution}")
}

/// The service-entity registry, followed by every matching process from its beginning.
pub const VEHICLE_REGISTRY: &str = "vehicle.registry";

/// Pre-authorizations signed by wallets `institution` holds.
pub fn vehicle_authorization(institution: &str) -> String {
    format!("vehicle.authorization.{institution}")
}

/// Session events (enter, exit, cross) of vehicles whose wallet `institution` holds: what
/// their in-vehicle clients follow.
pub fn vehicle_session(institution: &str) -> String {
    format!("vehicle.session.{institution}")
}

/// Service-complete reports for vehicles whose wallet `institution` holds.
pub fn vehicle_report(institution: &str) -> String {
    format!("vehicle.report.{institution}")
}

/// Key sets of offline wallets `institution` holds, published when they reconnect.
pub fn wallet_keyset(institution: &str) -> String {
    format!("wallet.keyset.{institution}")
}

/// Sync results for wallets of `institution`, keyed by wallet id.
pub fn wallet_result(institution: &str) -> String {
    format!("wallet.result.{institution}")
}

/// Remote control commands for wallets of `institution`, keyed by wallet id.
pub fn wallet_command(institution: &str) -> String {
    format!("wallet.command.{institution}")
}

/// Blacklist entries for `institution` to follow: a wallet of another institution found
/// committing offline fraud, signed by its institution (docs/PROTOCOL.md, "Offline wallets").
pub fn wallet_blacklist(institution: &str) -> String {
    format!("wallet.blacklist.{institution}")
}

/// Offline payments uploaded by their payees, to be cleared by the payer's `institution`.
pub fn wallet_offline(institution: &str) -> String {
    format!("wallet.offline.{institution}")
}
