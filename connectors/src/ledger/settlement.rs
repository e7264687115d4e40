//! The central bank's settlement store: cleared payments netted per settlement window.
//!
//! Windows are `[k * window_ms, (k + 1) * window_ms)` with `k` the window id. A clearing goes to
//! the window containing its decision time while that window is open; once a window is closed a
//! clearing decided in it goes to the earliest open window and is counted there as late, so a
//! closed window's positions never change. Closing is a watermark: every window before it is
//! closed. Each closed window gets one position per institution: what it paid (debit), what it
//! received (credit) and the net, and the nets sum to zero (multilateral netting conserves
//! money; checked on every close).

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

use super::error::{LedgerError, LedgerErrorKind};
use super::types::{AMOUNT_FEN_MAX, BATCH_ITEMS_MAX, ID_LEN_MAX, InstitutionId, PaymentId};

/// Longest settlement window: one day.
pub const WINDOW_MS_MAX: i64 = 24 * 60 * 60 * 1000;

/// How the settlement store cuts time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettlementConfig {
    /// Length of a window, in ms (1 to [`WINDOW_MS_MAX`]). Fixed for a store's life: opening a
    /// store with another length is a [`LedgerErrorKind::Config`] error.
    pub window_ms: i64,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        SettlementConfig { window_ms: 60_000 }
    }
}

impl SettlementConfig {
    pub(crate) fn validate(&self) -> Result<(), LedgerError> {
        if !(1..=WINDOW_MS_MAX).contains(&self.window_ms) {
            return Err(LedgerError::new(
                LedgerErrorKind::Config,
                format!("window_ms must be 1 to {WINDOW_MS_MAX}"),
            ));
        }
        Ok(())
    }

    /// The id of the window containing `at_ms`.
    pub fn window_of(&self, at_ms: i64) -> i64 {
        at_ms.div_euclid(self.window_ms)
    }

    /// Start and end (exclusive) of window `window_id`, in ms.
    pub fn bounds(&self, window_id: i64) -> (i64, i64) {
        let start_ms = window_id.saturating_mul(self.window_ms);
        (start_ms, start_ms.saturating_add(self.window_ms))
    }

    /// The first window that is not yet due at `now_ms`: windows before it ended at least
    /// `grace_ms` ago.
    pub(crate) fn first_not_due(&self, now_ms: i64, grace_ms: i64) -> i64 {
        now_ms
            .saturating_sub(grace_ms.max(0))
            .div_euclid(self.window_ms)
    }
}

/// One payment cleared between two institutions, as the central bank learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearingRecord {
    /// The payment (idempotency key).
    pub payment_id: PaymentId,
    /// The paying institution.
    pub payer_institution: InstitutionId,
    /// The receiving institution.
    pub payee_institution: InstitutionId,
    /// The amount, in fen.
    pub amount_fen: i64,
    /// When the payer institution decided (committed) it.
    pub decided_at_ms: i64,
}

/// Result of recording one clearing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearingOutcome {
    /// Recorded in `window_id`; `late` when its own window was already closed.
    Recorded {
        /// The window it counts in.
        window_id: i64,
        /// Whether it was moved out of its closed window.
        late: bool,
    },
    /// Already recorded with the same content: nothing changed.
    Duplicate {
        /// The window it counts in.
        window_id: i64,
    },
    /// Already recorded with other content: nothing changed; the caller must investigate.
    Conflict {
        /// The window the first record counts in.
        window_id: i64,
    },
    /// Malformed (amount not in `1..=AMOUNT_FEN_MAX`, empty or oversized institution id): not
    /// recorded.
    Refused {
        /// Stable reason code.
        reason_code: &'static str,
    },
}

/// One institution's net position in a closed window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The institution.
    pub institution_id: InstitutionId,
    /// What it paid, in fen.
    pub debit_fen: i64,
    /// What it received, in fen.
    pub credit_fen: i64,
    /// `credit_fen - debit_fen`: positive means the central bank pays it.
    pub net_fen: i64,
    /// Clearings it took part in.
    pub clearing_count: u64,
}

/// A closed settlement window with its positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedWindow {
    /// The window id.
    pub window_id: i64,
    /// Its start, in ms.
    pub start_ms: i64,
    /// Its end (exclusive), in ms.
    pub end_ms: i64,
    /// Positions, by institution id; their `net_fen` sum to zero.
    pub positions: Vec<Position>,
    /// Clearings in the window (late ones included).
    pub clearing_count: u64,
    /// Clearings moved here because their own window was closed.
    pub late_count: u64,
    /// Their amount, in fen.
    pub late_amount_fen: i64,
}

/// The central bank's settlement store. Object-safe.
#[async_trait]
pub trait SettlementStore: Send + Sync + fmt::Debug {
    /// The window configuration.
    fn config(&self) -> SettlementConfig;

    /// Records clearings, idempotent by payment id, in one transaction. `now_ms` stamps them.
    async fn record_clearings(
        &self,
        clearings: &[ClearingRecord],
        now_ms: i64,
    ) -> Result<Vec<ClearingOutcome>, LedgerError>;

    /// Closes every window whose end plus `grace_ms` is at or before `now_ms`, returning the
    /// newly closed windows that hold clearings (earliest first). A window is returned by one
    /// close only; [`Self::window_report`] reads it afterwards.
    async fn close_due_windows(
        &self,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Vec<ClosedWindow>, LedgerError>;

    /// The report of a closed window (empty if it closed without clearings); `None` while open.
    async fn window_report(&self, window_id: i64) -> Result<Option<ClosedWindow>, LedgerError>;
}

/// Checks the size of a batch of clearings.
pub(crate) fn check_batch(len: usize) -> Result<(), LedgerError> {
    if len > BATCH_ITEMS_MAX {
        return Err(LedgerError::invalid_input(format!(
            "batch of {len} clearings exceeds {BATCH_ITEMS_MAX}"
        )));
    }
    Ok(())
}

/// Why a clearing is malformed, if it is.
pub(crate) fn refusal(clearing: &ClearingRecord) -> Option<&'static str> {
    let valid_id = |id: &str| !id.is_empty() && id.len() <= ID_LEN_MAX;
    if !valid_id(&clearing.payer_institution) || !valid_id(&clearing.payee_institution) {
        return Some("settlement.malformed_clearing");
    }
    if !(1..=AMOUNT_FEN_MAX).contains(&clearing.amount_fen) {
        return Some("settlement.invalid_amount");
    }
    None
}

/// A stored clearing, as far as duplicate detection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredClearing {
    pub(crate) payer_institution: String,
    pub(crate) payee_institution: String,
    pub(crate) amount_fen: i64,
    pub(crate) decided_at_ms: i64,
    pub(crate) window_id: i64,
}

impl StoredClearing {
    pub(crate) fn same_content(&self, clearing: &ClearingRecord) -> bool {
        self.payer_institution == clearing.payer_institution
            && self.payee_institution == clearing.payee_institution
            && self.amount_fen == clearing.amount_fen
            && self.decided_at_ms == clearing.decided_at_ms
    }
}

/// Where a new clearing goes: its own window while open, else the first open one (late).
pub(crate) fn placement(
    config: &SettlementConfig,
    first_open: Option<i64>,
    decided_at_ms: i64,
) -> (i64, bool) {
    let own = config.window_of(decided_at_ms);
    match first_open {
        Some(first_open) if own < first_open => (first_open, true),
        _ => (own, false),
    }
}

/// One aggregate row: clearings of a window between one payer and one payee institution.
#[derive(Debug, Clone)]
pub(crate) struct PairTotal {
    pub(crate) window_id: i64,
    pub(crate) payer_institution: String,
    pub(crate) payee_institution: String,
    pub(crate) amount_fen: i64,
    pub(crate) count: u64,
    pub(crate) late_count: u64,
    pub(crate) late_amount_fen: i64,
}

fn overflow() -> LedgerError {
    LedgerError::integrity("settlement totals overflow")
}

fn position_mut<'a>(positions: &'a mut BTreeMap<String, Position>, id: &str) -> &'a mut Position {
    positions.entry(id.to_owned()).or_insert_with(|| Position {
        institution_id: id.to_owned(),
        debit_fen: 0,
        credit_fen: 0,
        net_fen: 0,
        clearing_count: 0,
    })
}

/// Nets pair totals into one [`ClosedWindow`] per window, checking that nets sum to zero.
pub(crate) fn net_windows(
    config: &SettlementConfig,
    pairs: &[PairTotal],
) -> Result<Vec<ClosedWindow>, LedgerError> {
    let mut windows: BTreeMap<i64, (BTreeMap<String, Position>, u64, u64, i64)> = BTreeMap::new();
    for pair in pairs {
        let (positions, count, late_count, late_amount_fen) =
            windows.entry(pair.window_id).or_default();
        *count += pair.count;
        *late_count += pair.late_count;
        *late_amount_fen = late_amount_fen
            .checked_add(pair.late_amount_fen)
            .ok_or_else(overflow)?;
        let payer = position_mut(positions, &pair.payer_institution);
        payer.debit_fen = payer
            .debit_fen
            .checked_add(pair.amount_fen)
            .ok_or_else(overflow)?;
        payer.clearing_count += pair.count;
        let payee = position_mut(positions, &pair.payee_institution);
        payee.credit_fen = payee
            .credit_fen
            .checked_add(pair.amount_fen)
            .ok_or_else(overflow)?;
        if pair.payer_institution != pair.payee_institution {
            payee.clearing_count += pair.count;
        }
    }
    let mut closed = Vec::with_capacity(windows.len());
    for (window_id, (positions, clearing_count, late_count, late_amount_fen)) in windows {
        let mut positions: Vec<Position> = positions.into_values().collect();
        let mut sum_fen: i64 = 0;
        for position in &mut positions {
            position.net_fen = position
                .credit_fen
                .checked_sub(position.debit_fen)
                .ok_or_else(overflow)?;
            sum_fen = sum_fen.checked_add(position.net_fen).ok_or_else(overflow)?;
        }
        if sum_fen != 0 {
            return Err(LedgerError::integrity(format!(
                "positions of window {window_id} sum to {sum_fen}, not zero"
            )));
        }
        let (start_ms, end_ms) = config.bounds(window_id);
        closed.push(ClosedWindow {
            window_id,
            start_ms,
            end_ms,
            positions,
            clearing_count,
            late_count,
            late_amount_fen,
        });
    }
    Ok(closed)
}

/// The report of a window that closed without clearings.
pub(crate) fn empty_window(config: &SettlementConfig, window_id: i64) -> ClosedWindow {
    let (start_ms, end_ms) = config.bounds(window_id);
    ClosedWindow {
        window_id,
        start_ms,
        end_ms,
        positions: Vec::new(),
        clearing_count: 0,
        late_count: 0,
        late_amount_fen: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(window_id: i64, payer: &str, payee: &str, amount_fen: i64) -> PairTotal {
        PairTotal {
            window_id,
            payer_institution: payer.into(),
            payee_institution: payee.into(),
            amount_fen,
            count: 1,
            late_count: 0,
            late_amount_fen: 0,
        }
    }

    #[test]
    fn nets_three_institutions_to_zero() {
        let config = SettlementConfig { window_ms: 1000 };
        let pairs = [
            pair(3, "a", "b", 500),
            pair(3, "b", "c", 200),
            pair(3, "c", "a", 50),
        ];
        let windows = net_windows(&config, &pairs).expect("net");
        assert_eq!(windows.len(), 1);
        let nets: Vec<(String, i64)> = windows[0]
            .positions
            .iter()
            .map(|p| (p.institution_id.clone(), p.net_fen))
            .collect();
        assert_eq!(
            nets,
            vec![("a".into(), -450), ("b".into(), 300), ("c".into(), 150)]
        );
        assert_eq!((windows[0].start_ms, windows[0].end_ms), (3000, 4000));
    }

    #[test]
    fn late_clearing_goes_to_first_open_window() {
        let config = SettlementConfig { window_ms: 1000 };
        assert_eq!(placement(&config, Some(5), 2_500), (5, true));
        assert_eq!(placement(&config, Some(5), 5_000), (5, false));
        assert_eq!(placement(&config, None, 2_500), (2, false));
    }

    #[test]
    fn windows_before_now_minus_grace_are_due() {
        let config = SettlementConfig { window_ms: 1000 };
        assert_eq!(config.first_not_due(10_500, 500), 10);
        assert_eq!(config.first_not_due(10_499, 500), 9);
    }
}
