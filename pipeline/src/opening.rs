//! Opening wallets from a file: a bank operation, and the only way money enters a ledger.
//!
//! The file holds JSON lines, one wallet a line (blank lines are skipped):
//!
//! ```text
//! {"wallet_id": "w-000001", "tier": 4, "opening_balance_fen": 500000}
//! {"wallet_id": "w-000002", "tier": 2, "opening_balance_fen": 20000000, "password_free_limit_fen": 50000}
//! ```
//!
//! - `wallet_id`: 1 to 64 bytes, unique in the institution;
//! - `tier`: 2 or 4, whose limits the wallet takes (see [`crate::tier`]);
//! - `opening_balance_fen`: money issued to the wallet, in fen, from 0 to the tier's balance
//!   limit;
//! - `password_free_limit_fen` (optional, the default of the tier otherwise): up to this amount
//!   a payment needs no PIN; at most the tier's single-payment limit.
//!
//! Every line is checked before anything is opened: a file with one bad line opens nothing.
//! Opening is idempotent: the same line twice opens its wallet once; a line naming a wallet
//! that was opened on other terms is refused (see [`dcpipe_connectors::ledger::OpenResult`]).

use dcpipe_connectors::ledger::{ID_LEN_MAX, WalletAccount};
use serde::Deserialize;

use crate::tier::{TIER_2, TIER_4, Tier};

/// One line of a wallet file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletLine {
    /// The wallet's id.
    pub wallet_id: String,
    /// Its tier: 2 or 4.
    pub tier: u8,
    /// Money issued to it, in fen.
    pub opening_balance_fen: i64,
    /// Its password-free limit, in fen; the tier's default when absent.
    #[serde(default)]
    pub password_free_limit_fen: Option<i64>,
}

/// A line of a wallet file that cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// The tiers a wallet file may name.
pub fn tier(number: u8) -> Option<Tier> {
    [TIER_2, TIER_4].into_iter().find(|t| t.number == number)
}

/// The accounts of `institution` that `text` (a wallet file) opens, each with its 1-based line
/// number, in file order; every bad line is reported, and none is opened then.
pub fn parse_wallet_file(
    institution: &str,
    text: &str,
) -> Result<Vec<(usize, WalletAccount)>, Vec<LineError>> {
    let mut accounts = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<WalletLine>(raw)
            .map_err(|e| e.to_string())
            .and_then(|parsed| account_of(institution, &parsed))
        {
            Ok(account) => accounts.push((line, account)),
            Err(message) => errors.push(LineError { line, message }),
        }
    }
    if errors.is_empty() {
        Ok(accounts)
    } else {
        Err(errors)
    }
}

/// The account a line opens, or why it cannot.
fn account_of(institution: &str, line: &WalletLine) -> Result<WalletAccount, String> {
    if line.wallet_id.is_empty() || line.wallet_id.len() > ID_LEN_MAX {
        return Err(format!("wallet_id must be 1 to {ID_LEN_MAX} bytes"));
    }
    let tier = tier(line.tier).ok_or_else(|| format!("tier {} is not 2 or 4", line.tier))?;
    let mut limits = tier.limits;
    if !(0..=limits.balance_limit_fen).contains(&line.opening_balance_fen) {
        return Err(format!(
            "opening_balance_fen {} is outside 0..={} (the balance limit of tier {})",
            line.opening_balance_fen, limits.balance_limit_fen, tier.number
        ));
    }
    if let Some(limit) = line.password_free_limit_fen {
        if !(0..=limits.single_payment_limit_fen).contains(&limit) {
            return Err(format!(
                "password_free_limit_fen {limit} is outside 0..={} (the single-payment limit of tier {})",
                limits.single_payment_limit_fen, tier.number
            ));
        }
        limits.password_free_limit_fen = limit;
    }
    Ok(WalletAccount {
        wallet_id: line.wallet_id.clone(),
        institution_id: institution.to_owned(),
        tier: tier.number,
        balance_fen: line.opening_balance_fen,
        limits,
        locked: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_open_wallets_with_their_tier_limits() {
        let text = "{\"wallet_id\":\"w1\",\"tier\":4,\"opening_balance_fen\":500000}\n\n\
                    {\"wallet_id\":\"w2\",\"tier\":2,\"opening_balance_fen\":7,\"password_free_limit_fen\":50000}\n";
        let accounts = parse_wallet_file("oi01", text).expect("valid");
        assert_eq!(accounts.len(), 2);
        let (line, w1) = &accounts[0];
        assert_eq!(*line, 1);
        assert_eq!(w1.institution_id, "oi01");
        assert_eq!((w1.tier, w1.balance_fen), (4, 500_000));
        assert_eq!(w1.limits, TIER_4.limits);
        let (line, w2) = &accounts[1];
        assert_eq!(*line, 3);
        assert_eq!(w2.limits.password_free_limit_fen, 50_000);
        assert_eq!(
            w2.limits.single_payment_limit_fen,
            TIER_2.limits.single_payment_limit_fen
        );
    }

    #[test]
    fn every_bad_line_is_reported_and_nothing_is_opened() {
        let text = [
            r#"{"wallet_id":"ok","tier":4,"opening_balance_fen":1}"#,
            r#"{"wallet_id":"w","tier":3,"opening_balance_fen":1}"#,
            r#"{"wallet_id":"w","tier":4,"opening_balance_fen":-1}"#,
            r#"{"wallet_id":"w","tier":4,"opening_balance_fen":100000000}"#,
            r#"{"wallet_id":"w","tier":4,"opening_balance_fen":1,"password_free_limit_fen":300000}"#,
            r#"{"wallet_id":"","tier":4,"opening_balance_fen":1}"#,
            r#"{"wallet_id":"w","tier":4,"opening_balance_fen":1.5}"#,
            r#"{"wallet_id":"w","tier":4,"opening_balance":1}"#,
        ]
        .join("\n");
        let errors = parse_wallet_file("oi01", &text).expect_err("bad lines");
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6, 7, 8]
        );
        assert!(errors[0].message.contains("tier 3"), "{}", errors[0]);
        assert!(errors[2].message.contains("balance limit"), "{}", errors[2]);
        assert!(
            errors[3].message.contains("single-payment"),
            "{}",
            errors[3]
        );
        assert!(
            errors[6].to_string().starts_with("line 8: "),
            "{}",
            errors[6]
        );
    }
}
