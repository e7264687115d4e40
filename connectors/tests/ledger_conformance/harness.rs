//! What a backend gives the scenarios, and the macro that runs every scenario on it.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::ledger::{Ledger, LedgerError, SettlementConfig, SettlementStore};

/// One database under test. Each test gets a backend of its own (a fresh directory or
/// database), so scenarios never see each other's rows.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    /// Opens a handle on `institution`'s ledger. Two calls with the same institution give two
    /// independent handles on the same ledger (two connections, as two worker processes).
    async fn try_ledger(&self, institution: &str) -> Result<Arc<dyn Ledger>, LedgerError>;

    /// Opens a handle on the settlement store.
    async fn try_settlement(
        &self,
        config: SettlementConfig,
    ) -> Result<Arc<dyn SettlementStore>, LedgerError>;

    /// [`Backend::try_ledger`], failing the test on error.
    async fn ledger(&self, institution: &str) -> Arc<dyn Ledger> {
        self.try_ledger(institution)
            .await
            .unwrap_or_else(|e| panic!("opening ledger {institution}: {e}"))
    }

    /// [`Backend::try_settlement`], failing the test on error.
    async fn settlement(&self, config: SettlementConfig) -> Arc<dyn SettlementStore> {
        self.try_settlement(config)
            .await
            .unwrap_or_else(|e| panic!("opening settlement store: {e}"))
    }
}

/// Expands to one test per scenario, each on a backend made by `$make` (an expression that may
/// `.await`): `ledger_suite!(SqliteBackend::new().await);`.
macro_rules! ledger_suite {
    ($make:expr) => {
        ledger_suite!(@each $make;
            scenarios::open_wallets_is_idempotent,
            scenarios::open_wallets_refuses_other_terms,
            scenarios::payments_issue_no_money,
            scenarios::open_wallets_refuses_another_institutions_wallet,
            scenarios::wallets_answers_each_requested_id_in_order,
            scenarios::wallets_of_no_ids_is_empty,
            scenarios::wallets_refuses_more_ids_than_a_batch,
            scenarios::reserve_holds_amount_in_balance_but_not_available,
            scenarios::reserve_duplicate_returns_first_record_and_moves_nothing,
            scenarios::reserve_with_other_digest_is_a_conflict,
            scenarios::reserve_refuses_unknown_wallet_and_remembers_it,
            scenarios::reserve_refuses_locked_wallet,
            scenarios::reserve_refuses_amount_over_single_payment_limit,
            scenarios::reserve_refuses_amount_over_daily_limit,
            scenarios::daily_limit_resets_at_midnight_china_time,
            scenarios::reserve_refuses_amount_over_available_funds,
            scenarios::reserve_refuses_non_positive_amount,
            scenarios::reserve_refuses_oversized_wallet_id,
            scenarios::items_of_one_batch_share_the_wallet,
            scenarios::commit_takes_amount_out_of_balance,
            scenarios::commit_twice_is_already_final,
            scenarios::void_releases_hold_and_daily_total,
            scenarios::commit_after_void_is_already_final_voided,
            scenarios::void_after_commit_is_already_final_committed,
            scenarios::commit_and_void_of_unknown_payment_are_not_found,
            scenarios::rejections_are_recorded_once,
            scenarios::reserve_after_recorded_rejection_is_duplicate,
            scenarios::expired_reservations_lists_only_due_holds_earliest_first,
            scenarios::commit_and_void_stamp_the_decision_time,
            scenarios::decided_since_lists_payer_decisions_oldest_update_first,
            scenarios::decided_since_starts_at_the_given_update_time,
            scenarios::decided_since_honours_the_limit,
            scenarios::decided_since_excludes_open_rejected_and_payee_records,
            scenarios::credit_pending_is_outside_balance,
            scenarios::wallet_openings_page_balances_against_openings_and_moving_payments,
            scenarios::credit_duplicate_and_conflict_move_nothing,
            scenarios::credit_refuses_unknown_and_locked_wallet,
            scenarios::credit_refuses_over_balance_limit_counting_pending_credits,
            scenarios::finalize_completed_credits_payee_once,
            scenarios::finalize_voided_reverses_pending_credit,
            scenarios::void_before_clearing_leaves_tombstone_that_refuses_it,
            scenarios::completion_of_unknown_payment_is_not_found,
            scenarios::reapplied_batches_move_no_money,
            scenarios::oversized_batch_is_refused_whole,
            scenarios::payer_and_payee_at_one_institution_keep_both_sides,
            scenarios::state_counts_count_by_side_and_state,
            scenarios::set_locked_and_set_limits_update_the_wallet,
            scenarios::ledger_keeps_its_rows_when_reopened,
            scenarios::concurrent_batches_conserve_money_and_never_overdraw,
            offline::offline_opening_makes_an_empty_purse_account_once,
            offline::funding_moves_online_money_into_the_purse_once,
            offline::funding_never_passes_the_purse_limit,
            offline::a_cleared_payment_is_recorded_once_and_the_excess_is_a_loss,
            offline::a_payment_cleared_before_moves_nothing_and_another_digest_is_refused,
            offline::a_cleared_payment_takes_the_clearing_path_from_the_purse_account,
            offline::a_stale_write_of_several_wallets_writes_none,
            offline::an_order_to_rotate_the_key_is_written_read_and_ended_with_the_record,
            offline::a_lock_in_the_record_locks_the_online_wallet_and_blacklisting_lists_it,
            offline::commands_queue_once_in_sequence,
            offline::a_write_cannot_clear_another_payers_payment,
            offline::a_voided_offline_payment_gives_its_purse_and_loss_back_once,
            settlement::positions_sum_to_zero,
            settlement::late_clearing_goes_to_first_open_window_and_is_counted,
            settlement::recording_a_clearing_again_is_a_no_op,
            settlement::clearing_with_other_content_is_a_conflict,
            settlement::malformed_clearing_is_refused,
            settlement::windows_close_once_and_stay_readable,
            settlement::open_window_has_no_report_and_empty_closed_window_has_empty_report,
            settlement::reopening_with_another_window_length_is_refused,
        );
    };
    (@each $make:expr; $($module:ident :: $scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let backend = $make;
                crate::$module::$scenario(&backend).await;
            }
        )+
    };
}
