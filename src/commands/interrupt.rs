//! Ctrl-C and SIGTERM for commands that run for a while and report at the end (the demo, the
//! load test): the first stops the run so that it reports what it has, the second exits at
//! once.

use tokio_util::sync::CancellationToken;

/// Exit code of a run stopped by a signal (128 + SIGINT), as shells report it.
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// Cancelled on the first SIGINT or SIGTERM; the second one exits the process at once.
pub(crate) fn on_interrupt() -> CancellationToken {
    let interrupted = CancellationToken::new();
    let token = interrupted.clone();
    tokio::spawn(async move {
        super::worker::wait_for_termination().await;
        eprintln!("\ninterrupted: stopping, waiting briefly for answers (again to quit at once)");
        token.cancel();
        super::worker::wait_for_termination().await;
        eprintln!("interrupted again: quitting");
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    });
    interrupted
}
