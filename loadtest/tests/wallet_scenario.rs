//! The synthetic offline wallets: a seeded run clears every payment once, conserves money and
//! answers each injected case with its code; the same seed gives the same run.

use dcpipe_loadtest::wallets::{WalletScenario, run_wallet_scenario};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::pki::{AlgorithmChoice, DemoPkiOptions, PkiDirectory};

fn scenario(seed: u64) -> WalletScenario {
    WalletScenario {
        seed,
        payments_per_wallet_max: 12,
        double_spender: true,
        forged_key_set: true,
        replayed_key_set: true,
    }
}

#[test]
fn a_seeded_run_clears_every_payment_once_and_catches_every_injected_case() {
    let t0 = system_now_ms();
    let pki = PkiDirectory::generate(&DemoPkiOptions::new(3, 24, AlgorithmChoice::Mixed, t0))
        .expect("PKI");
    let report = run_wallet_scenario(&pki, &scenario(42), t0 + 1_000).expect("runs");
    assert!(report.payments_made > 24, "{report:?}");
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    assert_eq!(report.payments_cleared, report.payments_made);
    assert!(report.totals.conserved(), "{:?}", report.totals);
    assert!(report.totals.loss_account_fen <= 0);
    assert!(report.double_spender_caught && report.forged_refused && report.replay_refused);
    assert!(report.valid());
    let again = run_wallet_scenario(&pki, &scenario(42), t0 + 1_000).expect("runs");
    assert_eq!(
        (again.payments_made, again.totals, again.answers.clone()),
        (report.payments_made, report.totals, report.answers.clone()),
        "the same seed replays the same run"
    );
}
