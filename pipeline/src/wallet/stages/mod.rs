//! Flow 2's stages at each institution: thin runtimes around the pure core of
//! [`crate::wallet`], registered where they are defined.
//!
//! ```text
//! wallet.keyset.<oi>  ──▶ [wallet-sync]: verify, decide, clear the wallet's own payments,
//!                          commit at the version read ──▶ wallet.result.<oi> (signed answer),
//!                          wallet.command.<oi> (commands waiting), wallet.offline.<payer oi>
//!                          (received payments), clearing path (own payments)
//! wallet.offline.<oi> ──▶ [wallet-clearing]: verify, clear at the payer's institution with the
//!                          double-spending rule ──▶ clearing path
//! ```
//!
//! An offline payment clears from its payer's **purse account** (a ledger row of its own,
//! `<wallet>-purse`, funded from the wallet's online balance): it is recorded once by its
//! payment id with the part its purse pays and the part the loss account pays
//! (`OfflineLedger::commit_offline`), then takes the clearing path of every payment — reserved
//! on the purse account, a clearing message to the payee's institution, commit, outcome,
//! settlement. Recording again, reserving again and clearing again are all recognized by the
//! payment id, so a payment uploaded by both sides, and however often, moves money once.
//!
//! When the clearing path voids an offline payment (the payee's institution refuses the credit,
//! `payee.wallet_locked` or `payee.unknown_wallet`, or the reservation expires), the void
//! releases the whole amount into the purse account, and [`give_back_voided`] gives the record
//! its purse part back and the loss account its part, once: the purse record and the purse
//! account agree again, the payer's wallet learns its purse at its next synchronization.

pub mod blacklist;
pub mod clearing;
pub mod record;
pub mod sync;

use dcpipe_connectors::ledger::offline::{OfflineCommit, PURSE_SUFFIX, VoidedReturn};
use dcpipe_connectors::ledger::{
    OfflineLedger, PaymentRecord, PaymentState, Side, offline::OfflineUpdate,
};

use crate::clearing::Institution;

use crate::runtime::StageError;

/// How often a stage reads a wallet's record again after a competing worker wrote it between
/// its read and its write, before handing the message back.
pub const STALE_RETRIES_MAX: u32 = 8;

/// Writes `updates` at the versions read; `false` when a record changed since it was read.
pub(crate) async fn commit(
    offline: &dyn OfflineLedger,
    updates: &[OfflineUpdate],
) -> Result<bool, StageError> {
    match offline.commit_offline(updates).await? {
        OfflineCommit::Committed => Ok(true),
        OfflineCommit::Stale(wallet_id) => {
            tracing::debug!(wallet = %wallet_id, "offline record changed since read; deciding again");
            Ok(false)
        }
    }
}

/// Writes `updates` (each of another wallet) at the versions read, in one transaction, leaving
/// out those whose record changed since it was read; returns their wallet ids, to be decided
/// again. A transaction that meets a changed record is rolled back, nothing of it written, and
/// the rest tried again.
pub(crate) async fn commit_current(
    offline: &dyn OfflineLedger,
    mut updates: Vec<OfflineUpdate>,
) -> Result<Vec<String>, StageError> {
    let mut stale = Vec::new();
    while !updates.is_empty() {
        match offline.commit_offline(&updates).await? {
            OfflineCommit::Committed => break,
            OfflineCommit::Stale(wallet_id) => {
                tracing::debug!(wallet = %wallet_id, "offline record changed since read; deciding again");
                let before = updates.len();
                updates.retain(|u| u.record.wallet_id != wallet_id);
                if updates.len() == before {
                    return Err(StageError::fatal(format!(
                        "the ledger found {wallet_id} changed, which the write did not hold"
                    )));
                }
                stale.push(wallet_id);
            }
        }
    }
    Ok(stale)
}

/// The error when a record kept changing under a stage: the message comes back later.
pub(crate) fn kept_changing(wallet_id: &str) -> StageError {
    StageError::transient(format!(
        "the offline record of {wallet_id} changed {STALE_RETRIES_MAX} times while deciding"
    ))
}

/// Whether `record` is the payer's side of a voided payment from a purse account: an offline
/// payment whose money goes back ([`give_back_voided`]).
pub fn voided_offline(record: &PaymentRecord) -> bool {
    record.side == Side::Payer
        && record.state == PaymentState::Voided
        && record
            .wallet_id
            .as_deref()
            .is_some_and(|w| w.ends_with(PURSE_SUFFIX))
}

/// Called by the clearing path for every final payment it answers for (a repeat included, so
/// a return interrupted by a stop is done at the redelivery): when `record` is a voided
/// offline payment, gives its money back to the payer's record and the loss account, once.
pub(crate) async fn give_back_voided(
    inst: &Institution,
    record: &PaymentRecord,
) -> Result<(), StageError> {
    if !voided_offline(record) {
        return Ok(());
    }
    match inst
        .ledger
        .offline()
        .return_voided(&record.payment_id)
        .await?
    {
        VoidedReturn::Returned { purse_fen } => {
            tracing::info!(payment = %record.payment_id, wallet = ?record.wallet_id, purse_fen, "voided offline payment given back to its purse");
        }
        VoidedReturn::AlreadyReturned | VoidedReturn::NotOffline | VoidedReturn::NotVoided => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use dcpipe_connectors::ledger::offline::{OfflineOpening, OfflineRecord};
    use dcpipe_connectors::ledger::{
        Ledger, OpenResult, SqliteLedger, SqliteOptions, WalletAccount, WalletLimits,
    };

    use super::*;

    fn advanced(read: &OfflineRecord, counter: i64) -> OfflineUpdate {
        let mut record = read.clone();
        record.counter = counter;
        OfflineUpdate {
            record,
            clearings: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_batch_write_leaves_out_only_the_records_changed_since_read() {
        let ledger = SqliteLedger::open_in_memory("oi01", &SqliteOptions::default())
            .await
            .expect("ledger");
        let wallets = ["w1", "w2", "w3"];
        let accounts: Vec<WalletAccount> = wallets
            .iter()
            .map(|id| WalletAccount {
                wallet_id: (*id).to_owned(),
                institution_id: "oi01".to_owned(),
                tier: 4,
                balance_fen: 1_000,
                limits: WalletLimits {
                    balance_limit_fen: 1_000_000,
                    single_payment_limit_fen: 200_000,
                    daily_limit_fen: 500_000,
                    password_free_limit_fen: 100_000,
                },
                locked: false,
            })
            .collect();
        assert_eq!(
            ledger.open_wallets(&accounts).await.expect("opened"),
            vec![OpenResult::Created; 3]
        );
        let offline = ledger.offline();
        let openings: Vec<OfflineOpening> = wallets
            .iter()
            .map(|id| OfflineOpening {
                wallet_id: (*id).to_owned(),
                key_version: 1,
                key_fingerprint: [7; 32],
                last_sync_at_ms: 1_000,
                limits: record::terms_of(&crate::wallet::limits::OFFLINE_TIER_4),
            })
            .collect();
        offline.open_offline(&openings).await.expect("offline");
        let mut read = Vec::new();
        for id in wallets {
            read.push(
                offline
                    .offline_wallet(id)
                    .await
                    .expect("read")
                    .expect("record"),
            );
        }
        // w1 and w3 are written by another worker after the batch read them.
        for stale in [&read[0], &read[2]] {
            assert!(
                commit(offline, &[advanced(stale, 1)])
                    .await
                    .expect("written")
            );
        }

        let batch = read.iter().map(|r| advanced(r, 2)).collect();
        let left_out = commit_current(offline, batch).await.expect("committed");
        assert_eq!(left_out, vec!["w1".to_owned(), "w3".to_owned()]);
        let counters: Vec<i64> =
            futures::future::try_join_all(wallets.iter().map(|id| offline.offline_wallet(id)))
                .await
                .expect("read")
                .into_iter()
                .map(|r| r.expect("record").counter)
                .collect();
        assert_eq!(
            counters,
            vec![1, 2, 1],
            "only w2's write of the batch landed"
        );
        // Nothing left: nothing to write, nothing left out.
        assert!(
            commit_current(offline, Vec::new())
                .await
                .expect("empty")
                .is_empty()
        );
    }
}
