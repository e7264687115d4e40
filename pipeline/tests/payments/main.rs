//! Payments end to end: terminals, both institutions, clearing, finalization and settlement,
//! on every bus and both ledgers. The scenarios are written once (`scenarios.rs`) and run from
//! one module per bus.

mod harness;
mod scenarios;

mod embedded {
    use super::harness::Backend;
    crate::payment_suite!(Backend::embedded_sqlite());
}

mod embedded_postgres {
    use super::harness::Backend;
    crate::payment_suite!(Backend::embedded_postgres().await);
}

mod nats {
    use super::harness::Backend;
    crate::payment_suite!(Backend::nats_sqlite().await);
}

mod kafka {
    use super::harness::Backend;
    crate::payment_suite!(Backend::kafka_sqlite().await);
}
