//! The vehicle flow end to end: signed registry entries, pre-authorizations, telemetry and
//! station reports through the vehicle stages, and each charge through the clearing path to
//! the entity's wallet at another institution, on every bus and both session stores. The
//! scenarios are written once (`scenarios.rs`) and run from one module per backend.

#[allow(dead_code)]
#[path = "../payments/harness.rs"]
mod harness;
mod scenarios;
#[path = "../vehicle_fixtures/mod.rs"]
mod vehicle_fixtures;

#[macro_export]
macro_rules! vehicle_suite {
    ($backend:expr) => {
        $crate::vehicle_suite!(@each $backend;
            a_noisy_track_is_charged_once_per_session_with_the_right_amounts,
            a_charge_above_the_pre_authorization_is_refused_and_moves_no_money,
            forged_telemetry_is_dead_lettered,
            a_killed_matching_worker_is_resumed_without_losing_the_entry_or_charging_twice,
            registry_changes_are_in_force_without_a_restart,
            a_gap_holds_back_only_its_vehicle_and_version_1_reports_are_read,
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
    crate::vehicle_suite!(Backend::embedded_sqlite());
}

mod embedded_postgres {
    use super::harness::Backend;
    crate::vehicle_suite!(Backend::embedded_postgres().await);
}

mod nats {
    use super::harness::Backend;
    crate::vehicle_suite!(Backend::nats_sqlite().await);
}

mod kafka {
    use super::harness::Backend;
    crate::vehicle_suite!(Backend::kafka_sqlite().await);
}
