//! What a backend gives the scenarios, and the macro that runs every scenario on it.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::ledger::LedgerError;
use dcpipe_connectors::session::SessionStore;

/// One database under test; each test gets its own.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    /// Opens a handle on `institution`'s store. Two calls give two independent handles on the
    /// same store (two connections, as two worker processes).
    async fn try_store(&self, institution: &str) -> Result<Arc<dyn SessionStore>, LedgerError>;

    /// [`Backend::try_store`], failing the test on error.
    async fn store(&self, institution: &str) -> Arc<dyn SessionStore> {
        self.try_store(institution)
            .await
            .unwrap_or_else(|e| panic!("opening session store {institution}: {e}"))
    }
}

/// Expands to one test per scenario, each on a backend made by `$make`.
macro_rules! session_suite {
    ($make:expr) => {
        session_suite!(@each $make;
            first_update_creates_the_vehicle_at_version_one,
            an_update_at_the_version_read_applies_and_raises_it,
            an_update_at_an_older_version_is_stale_and_changes_nothing,
            a_new_vehicle_updated_twice_as_new_applies_once,
            a_retried_commit_is_already_applied,
            reads_answer_each_vehicle_in_order,
            updates_of_one_vehicle_in_one_batch_chain,
            concurrent_workers_with_the_same_read_apply_once,
            holds_are_idempotent_and_conflict_on_other_content,
            a_charge_within_its_pre_authorization_is_counted,
            a_charge_above_what_remains_is_refused_and_nothing_applies,
            a_charge_under_an_unknown_or_foreign_pre_authorization_is_refused,
            a_session_is_charged_once,
            the_same_charge_sent_again_is_not_counted_twice,
            sessions_are_upserted_and_read_back,
            concurrent_charges_never_exceed_the_pre_authorization,
            oversized_and_malformed_batches_are_refused_whole,
            the_store_keeps_its_rows_when_reopened,
        );
    };
    (@each $make:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let backend = $make;
                crate::scenarios::$scenario(&backend).await;
            }
        )+
    };
}
