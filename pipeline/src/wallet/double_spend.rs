//! The double-spending rule: how the platform clears a payer's offline payments, whichever of
//! payer and payee uploads them and however often, and what it does when they betray a
//! tampered wallet.
//!
//! Every payment is cleared once: its identity is its offline-payment digest (docs/PROTOCOL.md,
//! "Offline wallets"), so the same payment uploaded again, by its payer or its payee, is
//! recognized and clears nothing. Two kinds of evidence show a tampered secure element:
//!
//! - **the same counter used for two different payments** (two digests under one payer
//!   counter);
//! - **payments beyond the purse**: their total exceeds what the payer's purse held.
//!
//! Both payees of a double spend took a payment that verified offline: they are honest, and
//! both are credited in full. The payments of one clearing are taken in a deterministic order
//! — by counter, then by digest — and each is paid from the payer's purse as far as the purse
//! still holds money; whatever the purse cannot cover is paid from the **loss account** of the
//! payer's institution, whose balance goes below zero by that much. Money stays conserved and
//! visible: balances + purses + money in clearing + the loss account = what was issued. The
//! order decides only which payment is booked against which account; the totals (the purse
//! emptied, the loss equal to the excess) are the same in any order. Evidence locks the payer's
//! wallet and puts it on every wallet's blacklist.

use std::collections::BTreeMap;

use dcpipe_schemas::{Digest32, PaymentId};

use crate::reason::Reason;

/// A payment to clear for one payer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentToClear {
    /// Its payment id (from its digest).
    pub payment_id: PaymentId,
    /// Its offline-payment digest.
    pub digest: Digest32,
    /// The payer's counter it was made under.
    pub counter: i64,
    /// Its amount.
    pub amount_fen: i64,
}

/// What the platform already knows of one payer: the digests recorded under each counter
/// (from earlier clearings), and the purse left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayerHistory {
    /// The purse the platform records for the payer now.
    pub purse_fen: i64,
    /// Digests already cleared, by counter.
    pub cleared: BTreeMap<i64, Vec<Digest32>>,
}

/// How one payment is cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearingDecision {
    /// The payment.
    pub payment: PaymentToClear,
    /// Paid from the payer's purse.
    pub from_purse_fen: i64,
    /// Paid from the loss account of the payer's institution.
    pub from_loss_fen: i64,
    /// The evidence this payment adds, if any: `offline.double_spend` when another payment
    /// holds its counter, `offline.beyond_purse` when the purse could not cover it.
    pub evidence: Option<Reason>,
}

/// The outcome of clearing a batch of one payer's payments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerClearing {
    /// One decision per new payment, in the order they were cleared.
    pub decisions: Vec<ClearingDecision>,
    /// Payments of the batch already cleared before (or twice in the batch): nothing moves.
    pub already_cleared: Vec<PaymentId>,
    /// The purse after the batch.
    pub purse_after_fen: i64,
    /// Whether the batch holds evidence against the payer: lock it and blacklist it.
    pub fraud: bool,
}

/// Clears `payments` of one payer against what the platform knows of it (see the module
/// documentation for the rule). Pure: the caller stores the decisions in one transaction and
/// moves the money accordingly.
pub fn clear_payer_payments(history: &PayerHistory, payments: &[PaymentToClear]) -> PayerClearing {
    let mut ordered: Vec<&PaymentToClear> = payments.iter().collect();
    ordered.sort_by(|a, b| (a.counter, a.digest.as_bytes()).cmp(&(b.counter, b.digest.as_bytes())));
    let mut cleared = history.cleared.clone();
    let mut purse_fen = history.purse_fen.max(0);
    let mut decisions = Vec::with_capacity(ordered.len());
    let mut already_cleared = Vec::new();
    let mut fraud = false;
    for payment in ordered {
        let slot = cleared.entry(payment.counter).or_default();
        if slot.contains(&payment.digest) {
            already_cleared.push(payment.payment_id);
            continue;
        }
        let mut evidence = (!slot.is_empty()).then_some(Reason::OfflineDoubleSpend);
        slot.push(payment.digest);
        let from_purse_fen = payment.amount_fen.min(purse_fen);
        let from_loss_fen = payment.amount_fen - from_purse_fen;
        purse_fen -= from_purse_fen;
        if from_loss_fen > 0 && evidence.is_none() {
            evidence = Some(Reason::OfflineBeyondPurse);
        }
        fraud |= evidence.is_some();
        decisions.push(ClearingDecision {
            payment: payment.clone(),
            from_purse_fen,
            from_loss_fen,
            evidence,
        });
    }
    // Conservation of the batch: what left the purse plus the loss equals what was paid.
    debug_assert_eq!(
        decisions
            .iter()
            .map(|d| d.from_purse_fen + d.from_loss_fen)
            .sum::<i64>(),
        decisions.iter().map(|d| d.payment.amount_fen).sum::<i64>()
    );
    PayerClearing {
        decisions,
        already_cleared,
        purse_after_fen: purse_fen,
        fraud,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(counter: i64, digest: u8, amount_fen: i64) -> PaymentToClear {
        PaymentToClear {
            payment_id: PaymentId::from_bytes([digest; 16]),
            digest: Digest32::from_bytes([digest; 32]),
            counter,
            amount_fen,
        }
    }

    fn history(purse_fen: i64) -> PayerHistory {
        PayerHistory {
            purse_fen,
            cleared: BTreeMap::new(),
        }
    }

    #[test]
    fn honest_payments_come_from_the_purse() {
        let clearing = clear_payer_payments(
            &history(10_000),
            &[payment(1, 1, 3_000), payment(2, 2, 4_000)],
        );
        assert!(!clearing.fraud);
        assert_eq!(clearing.purse_after_fen, 3_000);
        assert!(
            clearing
                .decisions
                .iter()
                .all(|d| d.from_loss_fen == 0 && d.evidence.is_none())
        );
    }

    #[test]
    fn a_payment_cleared_before_clears_nothing_whoever_uploads_it() {
        let first = clear_payer_payments(&history(10_000), &[payment(1, 1, 3_000)]);
        let mut known = history(first.purse_after_fen);
        known.cleared.insert(1, vec![Digest32::from_bytes([1; 32])]);
        let again = clear_payer_payments(&known, &[payment(1, 1, 3_000), payment(1, 1, 3_000)]);
        assert!(again.decisions.is_empty());
        assert_eq!(again.already_cleared.len(), 2);
        assert_eq!(again.purse_after_fen, 7_000);
    }

    #[test]
    fn two_payments_under_one_counter_are_both_paid_and_are_evidence() {
        // Purse 5,000; the tampered wallet paid 4,000 twice under counter 1.
        let clearing = clear_payer_payments(
            &history(5_000),
            &[payment(1, 9, 4_000), payment(1, 3, 4_000)],
        );
        assert!(clearing.fraud);
        let [first, second] = clearing.decisions.as_slice() else {
            panic!("two decisions");
        };
        // Deterministic order: same counter, so the smaller digest first.
        assert_eq!(first.payment.digest, Digest32::from_bytes([3; 32]));
        assert_eq!((first.from_purse_fen, first.from_loss_fen), (4_000, 0));
        assert_eq!(first.evidence, None);
        assert_eq!(
            (second.from_purse_fen, second.from_loss_fen),
            (1_000, 3_000)
        );
        assert_eq!(second.evidence, Some(Reason::OfflineDoubleSpend));
        assert_eq!(clearing.purse_after_fen, 0);
    }

    #[test]
    fn a_double_spend_is_caught_across_uploads() {
        let mut known = history(1_000);
        known.cleared.insert(4, vec![Digest32::from_bytes([7; 32])]);
        let clearing = clear_payer_payments(&known, &[payment(4, 8, 500)]);
        assert!(clearing.fraud);
        assert_eq!(
            clearing.decisions[0].evidence,
            Some(Reason::OfflineDoubleSpend)
        );
        assert_eq!(clearing.decisions[0].from_purse_fen, 500);
    }

    #[test]
    fn payments_beyond_the_purse_are_paid_from_the_loss_account() {
        let clearing = clear_payer_payments(
            &history(2_000),
            &[payment(2, 2, 1_500), payment(1, 1, 1_500)],
        );
        assert!(clearing.fraud);
        let amounts: Vec<(i64, i64, i64)> = clearing
            .decisions
            .iter()
            .map(|d| (d.payment.counter, d.from_purse_fen, d.from_loss_fen))
            .collect();
        assert_eq!(amounts, vec![(1, 1_500, 0), (2, 500, 1_000)]);
        assert_eq!(
            clearing.decisions[1].evidence,
            Some(Reason::OfflineBeyondPurse)
        );
    }

    /// Whatever order the payments arrive in, the purse ends empty and the loss is the excess.
    #[test]
    fn totals_do_not_depend_on_the_order_of_arrival() {
        let payments = [payment(1, 1, 700), payment(1, 2, 900), payment(2, 3, 800)];
        let mut reversed = payments.clone();
        reversed.reverse();
        for batch in [&payments[..], &reversed[..]] {
            let clearing = clear_payer_payments(&history(2_000), batch);
            let loss: i64 = clearing.decisions.iter().map(|d| d.from_loss_fen).sum();
            assert_eq!((clearing.purse_after_fen, loss), (0, 400));
        }
        // One by one, in another order, across three uploads.
        let mut known = history(2_000);
        let mut loss = 0;
        for p in [&payments[2], &payments[0], &payments[1]] {
            let clearing = clear_payer_payments(&known, std::slice::from_ref(p));
            loss += clearing
                .decisions
                .iter()
                .map(|d| d.from_loss_fen)
                .sum::<i64>();
            known.purse_fen = clearing.purse_after_fen;
            known.cleared.entry(p.counter).or_default().push(p.digest);
        }
        assert_eq!((known.purse_fen, loss), (0, 400));
    }
}
