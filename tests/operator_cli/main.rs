//! The operator's commands against a running pipeline: submit, tail, dead letters (list and
//! redrive), settlement and the audit, on every bus. The scenarios are written once (`scenarios.rs`) and
//! run from one module per bus; each calls the library functions the `dcpipe` binary calls,
//! and the NATS module also runs the binary itself.

mod harness;
mod scenarios;

mod embedded {
    use super::harness::Backend;
    crate::operator_suite!(Backend::embedded());
}

mod nats {
    use super::harness::Backend;
    crate::operator_suite!(Backend::nats().await);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_binary_submits_tails_lists_and_settles() {
        super::scenarios::the_binary_submits_tails_lists_and_settles(Backend::nats().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_binary_audits_the_record_and_exits_by_what_it_found() {
        super::scenarios::the_binary_audits_the_record_and_exits_by_what_it_found(
            Backend::nats().await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_demo_is_audited_afterwards_by_the_command_it_prints() {
        super::scenarios::a_kept_demo_is_audited_afterwards_by_the_command_it_prints(
            Backend::nats().await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tail_follower_holds_one_consumer_and_sees_new_records() {
        super::scenarios::a_tail_follower_holds_one_consumer_and_sees_new_records(
            Backend::nats().await,
        )
        .await;
    }
}

mod kafka {
    use super::harness::Backend;
    crate::operator_suite!(Backend::kafka().await);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_demo_is_audited_afterwards_by_the_command_it_prints() {
        super::scenarios::a_kept_demo_is_audited_afterwards_by_the_command_it_prints(
            Backend::kafka().await,
        )
        .await;
    }
}
