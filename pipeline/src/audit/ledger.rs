//! Reconciliation with the institutions' ledgers (`dcpipe audit --ledger`): each payment the
//! record shows whole was debited and credited exactly once with its amount when it completed,
//! and moved nothing when it was rejected; each ledger's stored totals agree with its payment
//! records. The judgement is pure ([`reconcile_payment`]); reading the ledgers is
//! [`LedgerReconciler`]'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use dcpipe_connectors::ledger::{
    Ledger, PaymentRecord, PaymentState, Side, WALLET_OPENINGS_PAGE_MAX, WalletOpening,
};
use futures::{StreamExt, TryStreamExt};

use super::book::JudgedPayment;
use super::code::AuditCode;
use super::report::{AuditReport, Discrepancy, Location};
use crate::clearing::ledger_id_of;

/// What the ledgers should hold for `payment`, given the payer institution's record and the
/// payee institution's (`None`: no record). `Err((expected, found))` when they do not.
pub fn reconcile_payment(
    payment: &JudgedPayment,
    payer: Option<&PaymentRecord>,
    payee: Option<&PaymentRecord>,
) -> Result<(), (String, String)> {
    let describe = |record: Option<&PaymentRecord>| match record {
        None => "no record".to_owned(),
        Some(r) => format!(
            "{:?} {} fen of {}",
            r.state,
            r.amount_fen,
            r.wallet_id.as_deref().unwrap_or("-")
        ),
    };
    let terms = &payment.terms;
    if payment.completed {
        let payer_ok = payer.is_some_and(|r| {
            r.state == PaymentState::Committed
                && r.amount_fen == terms.amount_fen
                && r.wallet_id.as_deref() == Some(terms.payer.wallet_id.as_str())
        });
        let payee_ok = payee.is_some_and(|r| {
            r.state == PaymentState::Credited
                && r.amount_fen == terms.amount_fen
                && r.wallet_id.as_deref() == Some(terms.payee.wallet_id.as_str())
        });
        if payer_ok && payee_ok {
            return Ok(());
        }
        return Err((
            format!(
                "payer Committed {} fen of {}, payee Credited {} fen of {}",
                terms.amount_fen, terms.payer.wallet_id, terms.amount_fen, terms.payee.wallet_id
            ),
            format!("payer {}, payee {}", describe(payer), describe(payee)),
        ));
    }
    let payer_ok =
        payer.is_none_or(|r| matches!(r.state, PaymentState::Rejected | PaymentState::Voided));
    let payee_ok = payee.is_none_or(|r| {
        matches!(
            r.state,
            PaymentState::Rejected | PaymentState::Voided | PaymentState::Reversed
        )
    });
    if payer_ok && payee_ok {
        Ok(())
    } else {
        Err((
            "nothing moved (no record, rejected, voided or reversed)".to_owned(),
            format!("payer {}, payee {}", describe(payer), describe(payee)),
        ))
    }
}

/// What the record explains of one wallet's balance: the completed payments it holds for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Explained {
    /// Credits minus debits, in fen.
    pub net_fen: i64,
    /// Completed payments that moved it.
    pub payments: u64,
    /// For a purse account: the part of its completed payments the loss account paid.
    pub from_loss_fen: i64,
}

/// What the record explains of each wallet, by (institution, wallet): state per wallet the
/// range's completed payments touched, not per message.
pub type WalletTally = BTreeMap<(String, String), Explained>;

/// Adds a judged payment to the tally of its two wallets (a completed one moved money; a
/// rejected one nothing).
pub fn tally_payment(tally: &mut WalletTally, payment: &JudgedPayment) {
    if !payment.completed {
        return;
    }
    let terms = &payment.terms;
    for (party, sign) in [(&terms.payer, -1), (&terms.payee, 1)] {
        let entry = tally
            .entry((party.institution_id.clone(), party.wallet_id.clone()))
            .or_default();
        entry.net_fen = entry.net_fen.saturating_add(sign * terms.amount_fen);
        entry.payments += 1;
    }
}

/// How a wallet's balance compares with what the record explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalanceVerdict {
    /// Opening plus the record's completed payments: the balance.
    Balanced,
    /// The range does not cover the wallet whole (why): not an error.
    Partial(&'static str),
    /// The range covers it whole and the balance differs: (expected, found).
    Differs(String, String),
}

/// Judges one wallet: its balance must be its opening plus `explained`, when the range covers
/// it whole (`covers_opening`: the range starts before the wallet was opened; no money in
/// flight; no offline money; no payment moved it that the range does not hold whole).
pub fn reconcile_balance(
    wallet: &WalletOpening,
    explained: Explained,
    covers_opening: bool,
) -> BalanceVerdict {
    let expected_fen = wallet.opening_fen.saturating_add(explained.net_fen);
    let differs = || {
        BalanceVerdict::Differs(
            format!(
                "balance {expected_fen} fen: opening {} fen and {} completed payments netting {} fen",
                wallet.opening_fen, explained.payments, explained.net_fen
            ),
            format!(
                "balance {} fen, {} payments moved it in the ledger",
                wallet.balance_fen, wallet.moving_payments
            ),
        )
    };
    if wallet.offline {
        return BalanceVerdict::Partial("offline money");
    }
    if !covers_opening {
        return BalanceVerdict::Partial("opened before the range");
    }
    if wallet.held_fen != 0 || wallet.pending_credit_fen != 0 {
        return BalanceVerdict::Partial("payments in flight");
    }
    if wallet.moving_payments > explained.payments {
        return BalanceVerdict::Partial("payments the range does not hold whole");
    }
    if wallet.moving_payments < explained.payments || wallet.balance_fen != expected_fen {
        return differs();
    }
    BalanceVerdict::Balanced
}

/// Ledger reads of one batch's payments in flight at once.
const LEDGER_READS_IN_FLIGHT: usize = 64;

/// What the ledgers hold of one judged payment.
struct LedgerReads {
    payer: Option<PaymentRecord>,
    payee: Option<PaymentRecord>,
    /// The part of an offline payment its payer's loss account paid, when it has one.
    from_loss_fen: Option<i64>,
}

/// The ledgers of the institutions, by id.
#[derive(Clone, Default)]
pub struct LedgerReconciler {
    ledgers: BTreeMap<String, Arc<dyn Ledger>>,
}

impl std::fmt::Debug for LedgerReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerReconciler")
            .field("institutions", &self.ledgers.keys())
            .finish()
    }
}

impl LedgerReconciler {
    /// Reconciles with these ledgers.
    pub fn new(ledgers: BTreeMap<String, Arc<dyn Ledger>>) -> Self {
        LedgerReconciler { ledgers }
    }

    /// Checks each judged payment against the ledgers of its two institutions; a payment with
    /// an institution whose ledger was not given is skipped (partial coverage), and so is one
    /// last seen at or after `settling_from_ms` that a ledger still holds in flight (a hold or a
    /// pending credit: the range ends before its last stage ran).
    /// Each judged payment is also added to `tally`, for [`LedgerReconciler::check_balances`].
    pub async fn check(
        &self,
        payments: &[JudgedPayment],
        settling_from_ms: i64,
        tally: &mut WalletTally,
        report: &mut AuditReport,
    ) -> Result<(), dcpipe_connectors::ledger::LedgerError> {
        // The reads of the batch side by side (in order, a bounded number at once): one
        // hand-off to each ledger's thread after another, not a wake-up of this task for each.
        let reads: Vec<Option<LedgerReads>> = futures::stream::iter(payments)
            .map(|payment| self.reads(payment))
            .buffered(LEDGER_READS_IN_FLIGHT)
            .try_collect()
            .await?;
        for (payment, reads) in payments.iter().zip(reads) {
            tally_payment(tally, payment);
            let Some(LedgerReads {
                payer,
                payee,
                from_loss_fen,
            }) = reads
            else {
                continue;
            };
            let in_flight = |r: &Option<PaymentRecord>| {
                r.as_ref().is_some_and(|r| {
                    matches!(
                        r.state,
                        PaymentState::Reserved | PaymentState::PendingCredit
                    )
                })
            };
            if payment.last_seen_ms >= settling_from_ms && (in_flight(&payer) || in_flight(&payee))
            {
                continue;
            }
            report.counts.ledger_payments_checked += 1;
            if let Some(from_loss_fen) = from_loss_fen {
                super::wallet::tally_loss_part(tally, payment, from_loss_fen);
            }
            if let Err((expected, found)) =
                reconcile_payment(payment, payer.as_ref(), payee.as_ref())
            {
                report.push(Discrepancy::new(
                    AuditCode::LedgerMismatch,
                    payment.location.clone(),
                    Some(payment.payment_id),
                    expected,
                    found,
                ));
            }
        }
        Ok(())
    }

    /// What the two institutions' ledgers hold of `payment`; `None` when a ledger is not given.
    async fn reads(
        &self,
        payment: &JudgedPayment,
    ) -> Result<Option<LedgerReads>, dcpipe_connectors::ledger::LedgerError> {
        let (Some(payer_ledger), Some(payee_ledger)) = (
            self.ledgers.get(&payment.terms.payer.institution_id),
            self.ledgers.get(&payment.terms.payee.institution_id),
        ) else {
            return Ok(None);
        };
        let id = ledger_id_of(&payment.payment_id);
        let (payer, payee, from_loss_fen) = futures::try_join!(
            payer_ledger.payment(&id, Side::Payer),
            payee_ledger.payment(&id, Side::Payee),
            super::wallet::loss_part(payment, payer_ledger.as_ref()),
        )?;
        Ok(Some(LedgerReads {
            payer,
            payee,
            from_loss_fen,
        }))
    }

    /// Each wallet's balance against its opening plus what the record explains (`tally`);
    /// `covers_opening(opened_ms)` tells whether the range starts before an opening. Wallets
    /// the range does not cover whole are counted as partially covered, not as discrepancies.
    pub async fn check_balances(
        &self,
        tally: &WalletTally,
        covers_opening: impl Fn(i64) -> bool,
        report: &mut AuditReport,
    ) -> Result<(), dcpipe_connectors::ledger::LedgerError> {
        for (institution, ledger) in &self.ledgers {
            let mut purses = super::wallet::PurseCheck::default();
            let mut after: Option<String> = None;
            loop {
                let page = ledger
                    .wallet_openings(after.as_deref(), WALLET_OPENINGS_PAGE_MAX)
                    .await?;
                for wallet in &page {
                    if wallet.offline {
                        purses
                            .check(
                                institution,
                                ledger.as_ref(),
                                wallet,
                                tally,
                                covers_opening(wallet.opened_ms),
                                report,
                            )
                            .await?;
                    }
                    let explained = tally
                        .get(&(institution.clone(), wallet.wallet_id.clone()))
                        .copied()
                        .unwrap_or_default();
                    match reconcile_balance(wallet, explained, covers_opening(wallet.opened_ms)) {
                        BalanceVerdict::Balanced => report.counts.wallets_checked += 1,
                        BalanceVerdict::Partial(_) => report.counts.wallets_partial += 1,
                        BalanceVerdict::Differs(expected, found) => {
                            report.counts.wallets_checked += 1;
                            report.push(Discrepancy::new(
                                AuditCode::WalletBalanceMismatch,
                                Location {
                                    subject: format!(
                                        "ledger {institution} wallet {}",
                                        wallet.wallet_id
                                    ),
                                    partition: 0,
                                    offset: 0,
                                },
                                None,
                                expected,
                                found,
                            ));
                        }
                    }
                }
                if page.len() < WALLET_OPENINGS_PAGE_MAX {
                    break;
                }
                after = page.last().map(|w| w.wallet_id.clone());
            }
            purses
                .check_loss(
                    institution,
                    ledger.as_ref(),
                    covers_opening(i64::MIN),
                    report,
                )
                .await?;
        }
        Ok(())
    }

    /// Each ledger's stored balances, holds and pending credits recomputed from its records.
    pub async fn check_integrity(
        &self,
        report: &mut AuditReport,
    ) -> Result<(), dcpipe_connectors::ledger::LedgerError> {
        for (institution, ledger) in &self.ledgers {
            if let Err(e) = ledger.verify_integrity().await {
                if e.kind() != dcpipe_connectors::ledger::LedgerErrorKind::Integrity {
                    return Err(e);
                }
                report.push(Discrepancy::new(
                    AuditCode::LedgerMismatch,
                    Location {
                        subject: format!("ledger {institution}"),
                        partition: 0,
                        offset: 0,
                    },
                    None,
                    "stored totals equal to the payment records",
                    e.to_string(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use dcpipe_connectors::ledger::{Digest, Party};
    use dcpipe_schemas::{PartyRef, PaymentId};

    use super::*;
    use crate::audit::check::Terms;

    fn judged(completed: bool) -> JudgedPayment {
        JudgedPayment {
            payment_id: PaymentId::from_bytes([3; 16]),
            terms: Terms {
                payer: PartyRef {
                    institution_id: "oi01".into(),
                    wallet_id: "w1".into(),
                },
                payee: PartyRef {
                    institution_id: "oi02".into(),
                    wallet_id: "w2".into(),
                },
                amount_fen: 500,
                currency: "CNY".into(),
            },
            completed,
            location: Location {
                subject: "txn.result.oi01".into(),
                partition: 0,
                offset: 9,
            },
            last_seen_ms: 0,
        }
    }

    fn record(side: Side, state: PaymentState, wallet: &str, amount_fen: i64) -> PaymentRecord {
        PaymentRecord {
            payment_id: ledger_id_of(&PaymentId::from_bytes([3; 16])),
            side,
            state,
            digest: Some(Digest([0; 32])),
            wallet_id: Some(wallet.into()),
            counterparty: None::<Party>,
            amount_fen,
            reason_code: None,
            paid_at_ms: 0,
            created_ms: 0,
            updated_ms: 0,
            expires_at_ms: None,
        }
    }

    #[test]
    fn a_completed_payment_is_debited_and_credited_with_its_amount() {
        let payer = record(Side::Payer, PaymentState::Committed, "w1", 500);
        let payee = record(Side::Payee, PaymentState::Credited, "w2", 500);
        assert!(reconcile_payment(&judged(true), Some(&payer), Some(&payee)).is_ok());
        let changed = record(Side::Payee, PaymentState::Credited, "w2", 501);
        assert!(reconcile_payment(&judged(true), Some(&payer), Some(&changed)).is_err());
        assert!(reconcile_payment(&judged(true), Some(&payer), None).is_err());
    }

    #[test]
    fn a_rejected_payment_moved_nothing() {
        let voided = record(Side::Payer, PaymentState::Voided, "w1", 500);
        assert!(reconcile_payment(&judged(false), Some(&voided), None).is_ok());
        assert!(reconcile_payment(&judged(false), None, None).is_ok());
        let committed = record(Side::Payer, PaymentState::Committed, "w1", 500);
        assert!(reconcile_payment(&judged(false), Some(&committed), None).is_err());
    }

    fn wallet(balance_fen: i64, moving_payments: u64) -> WalletOpening {
        WalletOpening {
            wallet_id: "w1".into(),
            opening_fen: 1_000,
            opened_ms: 10,
            balance_fen,
            held_fen: 0,
            pending_credit_fen: 0,
            moving_payments,
            offline: false,
        }
    }

    #[test]
    fn a_balance_is_its_opening_plus_the_completed_payments_of_the_record() {
        let mut tally = WalletTally::new();
        tally_payment(&mut tally, &judged(true));
        tally_payment(&mut tally, &judged(false));
        let payer = tally[&("oi01".to_owned(), "w1".to_owned())];
        let payee = tally[&("oi02".to_owned(), "w2".to_owned())];
        assert_eq!(
            payer,
            Explained {
                net_fen: -500,
                payments: 1,
                from_loss_fen: 0,
            }
        );
        assert_eq!(
            payee,
            Explained {
                net_fen: 500,
                payments: 1,
                from_loss_fen: 0,
            }
        );
        assert_eq!(
            reconcile_balance(&wallet(500, 1), payer, true),
            BalanceVerdict::Balanced
        );
        assert!(matches!(
            reconcile_balance(&wallet(501, 1), payer, true),
            BalanceVerdict::Differs(..)
        ));
        // The record shows a completed payment the ledger never applied.
        assert!(matches!(
            reconcile_balance(&wallet(1_000, 0), payer, true),
            BalanceVerdict::Differs(..)
        ));
        // An untouched wallet keeps its opening.
        assert_eq!(
            reconcile_balance(&wallet(1_000, 0), Explained::default(), true),
            BalanceVerdict::Balanced
        );
    }

    #[test]
    fn a_wallet_the_range_does_not_cover_whole_is_partial_not_a_discrepancy() {
        let payer = Explained {
            net_fen: -500,
            payments: 1,
            from_loss_fen: 0,
        };
        assert_eq!(
            reconcile_balance(&wallet(7, 1), payer, false),
            BalanceVerdict::Partial("opened before the range")
        );
        assert_eq!(
            reconcile_balance(&wallet(7, 2), payer, true),
            BalanceVerdict::Partial("payments the range does not hold whole")
        );
        let mut held = wallet(7, 1);
        held.held_fen = 3;
        assert_eq!(
            reconcile_balance(&held, payer, true),
            BalanceVerdict::Partial("payments in flight")
        );
        let mut offline = wallet(7, 1);
        offline.offline = true;
        assert_eq!(
            reconcile_balance(&offline, payer, true),
            BalanceVerdict::Partial("offline money")
        );
    }
}
