//! Flow 2 end to end on a bus: hard wallets pay each other offline, reconnect and publish their
//! key sets; the `wallet-sync` and `wallet-clearing` stages verify, answer with signed sync
//! results, clear every offline payment once through the clearing path (across institutions,
//! to settlement), catch a double spender and refuse forged and replayed key sets. On every bus
//! and both ledger databases; the scenarios are written once (`scenarios.rs`).

#[allow(dead_code)]
#[path = "../payments/harness.rs"]
mod harness;
mod scenarios;

#[macro_export]
macro_rules! wallet_suite {
    ($backend:expr) => {
        $crate::wallet_suite!(@each $backend;
            offline_payments_clear_once_whoever_uploads_first,
            a_double_spender_is_caught_locked_and_blacklisted,
            forged_and_replayed_key_sets_are_refused_with_their_codes,
            key_sets_nobody_here_can_answer_are_dead_lettered,
            a_seeded_scenario_ends_as_the_reference_model_says,
            a_command_issued_while_offline_is_applied_once_after_reconnection,
            a_payment_refused_by_its_payee_gives_its_purse_back,
            a_blacklist_entry_written_but_not_published_is_published_once,
            a_wallet_ordered_to_rotate_its_key_rotates_and_its_old_payments_clear,
            key_sets_and_uploads_of_one_batch_are_decided_together,
        );
    };
    (@each $backend:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let backend = $backend;
                $crate::scenarios::$scenario(&backend).await;
            }
        )+
    };
}

mod embedded {
    use super::harness::Backend;
    crate::wallet_suite!(Backend::embedded_sqlite());
}

mod embedded_postgres {
    use super::harness::Backend;
    crate::wallet_suite!(Backend::embedded_postgres().await);
}

mod nats {
    use super::harness::Backend;
    crate::wallet_suite!(Backend::nats_sqlite().await);
}

mod kafka {
    use super::harness::Backend;
    crate::wallet_suite!(Backend::kafka_sqlite().await);
}
