//! The audit replay (`dcpipe audit`) against a recorded run on every bus: a clean record
//! reconciles with no discrepancy, and each tamper of the record is found with its code. The
//! scenarios are written once (`scenarios.rs`: payments and settlement; `vehicles.rs`: the
//! vehicle flow; `wallets.rs`: the offline-wallet flow) and run from one module per bus.

#[allow(dead_code)]
#[path = "../payments/harness.rs"]
mod harness;
mod scenarios;
#[path = "../vehicle_fixtures/mod.rs"]
mod vehicle_fixtures;
mod vehicles;
mod wallets;

#[macro_export]
macro_rules! audit_suite {
    ($backend:expr) => {
        $crate::audit_suite!(@each $backend;
            scenarios::a_clean_record_reconciles_and_each_tamper_is_found_with_its_code,
            vehicles::a_clean_vehicle_record_reconciles_and_each_vehicle_tamper_is_found,
            wallets::a_clean_wallet_record_reconciles_and_each_wallet_tamper_is_found,
        );
    };
    (@each $backend:expr; $($module:ident :: $scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let mut backend = $backend;
                $crate::$module::$scenario(&mut backend).await;
            }
        )+
    };
}

mod embedded {
    use super::harness::Backend;
    crate::audit_suite!(Backend::embedded_sqlite());
}

mod nats {
    use super::harness::Backend;
    crate::audit_suite!(Backend::nats_sqlite().await);
}

mod kafka {
    use super::harness::Backend;
    crate::audit_suite!(Backend::kafka_sqlite().await);
}
