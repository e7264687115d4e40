//! A short load test on the embedded bus: the report must be valid and its numbers consistent.
//! Nothing here asserts speed: the machine running the tests may be slow or busy.

use std::time::Duration;

use dcpipe_loadtest::{LoadConfig, Mode};

/// A small network and short ceilings, so the test takes a few seconds.
fn short_config(mode: Mode) -> LoadConfig {
    let mut config = LoadConfig::embedded(200, Duration::from_secs(2));
    config.mode = mode;
    config.institutions = 2;
    config.wallets = 200;
    config.warmup = Duration::from_millis(300);
    config.cooldown = Duration::from_millis(200);
    config.concurrency = 16;
    config.ceiling_duration = Duration::from_millis(300);
    config.drain_timeout = Duration::from_secs(30);
    config.mix.duplicate_share = 0.02;
    config.mix.conflict_share = 0.02;
    config.mix.forged_share = 0.02;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_run_on_the_embedded_bus_is_valid_and_consistent() {
    let report = dcpipe_loadtest::run(&short_config(Mode::Open))
        .await
        .expect("the load test runs");
    assert!(
        report.valid,
        "invalid: {:?} {:?}",
        report.invalid_reasons, report.violation_examples
    );
    assert!(report.submitted > 0);
    // Answers observed in the window may include submissions intended during the warm-up
    // (a busy machine delays them), so the achieved rate can exceed the offered one; what
    // cannot happen is more answers in the window than submissions in the whole run.
    let config = short_config(Mode::Open);
    let (start, end) = config.measured_window();
    let window_s = (end - start).as_secs_f64();
    assert!(
        report.achieved_rate * window_s <= report.submitted as f64 + 0.5,
        "achieved {}/s over {window_s} s, submitted {}",
        report.achieved_rate,
        report.submitted
    );
    let counted: u64 = report.counts_by_outcome.values().sum();
    assert_eq!(counted, report.submitted);
    assert_eq!(report.answered, report.submitted);
    assert!(report.distinct <= report.submitted);
    assert!(
        report
            .counts_by_outcome
            .get("COMPLETED")
            .copied()
            .unwrap_or(0)
            > 0
    );
    assert!(
        report.counts_by_outcome.contains_key("sig.payer_invalid"),
        "{:?}",
        report.counts_by_outcome
    );
    let l = report.latency_ms;
    assert!(l.samples > 0);
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{l:?}"
    );
    assert!(report.crypto_ceiling > 0.0 && report.bus_ceiling > 0.0);
    assert!((report.crypto_per_core * report.cores as f64 - report.crypto_ceiling).abs() < 1e-6);
    // No broker: the lower ceiling is the crypto one.
    assert!(report.broker_limit.is_none() && report.broker_ceiling == 0.0);
    assert!((report.ratio_to_lower_ceiling - report.ratio_to_crypto_ceiling).abs() < 1e-12);
    assert!(
        (report.ratio_to_crypto_ceiling - report.achieved_rate / report.crypto_ceiling).abs()
            < 1e-9
    );
    assert!(report.money.conserved);
    assert!(report.rss_mb_max > 0.0);
    assert!(!report.series.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_run_keeps_every_submission_answered() {
    let report = dcpipe_loadtest::run(&short_config(Mode::Closed))
        .await
        .expect("the load test runs");
    assert!(report.valid, "invalid: {:?}", report.invalid_reasons);
    assert_eq!(report.concurrency, Some(16));
    assert_eq!(report.answered, report.submitted);
    assert!(report.submitted > 0);
}
