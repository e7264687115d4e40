//! Followers that live as long as their process (the revocation follower, the entity registry):
//! one long-lived reader of a subject, followed again with a backoff when the bus fails.

use std::time::Duration;

use dcpipe_connectors::bus::{Bus, BusError};
use tokio_util::sync::CancellationToken;

/// Backoff before following again after the bus failed, doubled per failure up to
/// [`FOLLOW_RETRY_MAX`].
pub const FOLLOW_RETRY: Duration = Duration::from_millis(250);
/// Longest backoff before following again.
pub const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(10);

/// The wait before following again after `failures` failures (1 for the first):
/// [`FOLLOW_RETRY`] doubled per failure, at most [`FOLLOW_RETRY_MAX`].
pub fn follow_backoff(failures: u32) -> Duration {
    FOLLOW_RETRY
        .saturating_mul(2u32.saturating_pow(failures.clamp(1, 16) - 1))
        .min(FOLLOW_RETRY_MAX)
}

/// A reader of one subject that lives as long as its process.
pub trait Follower: Send {
    /// Opens one reader and reads until the bus fails, returning the failure.
    fn follow_until_error(&mut self, bus: &dyn Bus) -> impl Future<Output = BusError> + Send;
}

/// Runs `follower` again and again, with [`follow_backoff`] between attempts, until `shutdown`
/// is cancelled. `what` names what is followed in the warning logged at each failure.
pub async fn keep_following(
    what: &str,
    follower: &mut impl Follower,
    bus: &dyn Bus,
    shutdown: &CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        let failed = tokio::select! {
            () = shutdown.cancelled() => return,
            failed = follower.follow_until_error(bus) => failed,
        };
        failures = failures.saturating_add(1);
        let backoff = follow_backoff(failures);
        tracing::warn!(error = %failed, ?backoff, "{what} not read; following again");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_the_first_retry_up_to_its_maximum() {
        assert_eq!(follow_backoff(1), FOLLOW_RETRY);
        assert_eq!(follow_backoff(2), FOLLOW_RETRY * 2);
        assert_eq!(follow_backoff(3), FOLLOW_RETRY * 4);
        assert_eq!(follow_backoff(6), FOLLOW_RETRY * 32);
        assert_eq!(follow_backoff(7), FOLLOW_RETRY_MAX);
        assert_eq!(follow_backoff(u32::MAX), FOLLOW_RETRY_MAX);
    }
}
