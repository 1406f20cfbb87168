//! How long to wait before the next connection attempt: nothing after a connection that worked was
//! lost, then exponentially longer after each failed attempt, with "full jitter" (a random wait between
//! zero and the exponential bound) so that many clients cut off at once do not all come back at once.

use std::time::Duration;

use rand::{Rng, RngExt};

/// When to reconnect, and how often a call is tried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per call, the first included. Only requests that cannot be applied twice by a retry
    /// are retried (see [`ClientError::may_retry`](super::ClientError::may_retry)).
    pub attempts: u32,
    /// Upper bound of the wait after the first failed connection attempt; it doubles after each
    /// further failure.
    pub initial_backoff: Duration,
    /// The bound stops doubling here.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The state of reconnection: how many attempts in a row have failed.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// How long to wait before the next attempt.
    pub(super) fn delay(&self, policy: &RetryPolicy, rng: &mut impl Rng) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (self.failures - 1).min(30);
        let bound = policy.initial_backoff.saturating_mul(1 << doublings).min(policy.max_backoff);
        bound.mul_f64(rng.random::<f64>())
    }

    pub(super) fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    pub(super) fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn the_bound_doubles_per_failure_up_to_the_maximum_and_resets_on_success() {
        let policy = RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let mut rng = SmallRng::seed_from_u64(3);
        let mut backoff = Backoff::default();
        assert_eq!(backoff.delay(&policy, &mut rng), Duration::ZERO, "the first reconnect is immediate");
        let largest = |backoff: &Backoff, rng: &mut SmallRng| {
            (0..2000).map(|_| backoff.delay(&policy, rng)).max().unwrap_or_default()
        };
        for (failures, bound_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
            while backoff.failures < failures {
                backoff.failed();
            }
            let max = largest(&backoff, &mut rng);
            assert!(max <= Duration::from_millis(bound_ms), "{failures} failures: waited {max:?}");
            assert!(
                max >= Duration::from_millis(bound_ms * 9 / 10),
                "{failures} failures: jitter too narrow"
            );
        }
        backoff.succeeded();
        assert_eq!(backoff.delay(&policy, &mut rng), Duration::ZERO);
    }

    #[test]
    fn jitter_spreads_clients_over_the_whole_interval() {
        let policy = RetryPolicy::default();
        let mut rng = SmallRng::seed_from_u64(5);
        let mut backoff = Backoff::default();
        backoff.failed();
        let waits: Vec<Duration> = (0..1000).map(|_| backoff.delay(&policy, &mut rng)).collect();
        let early = waits.iter().filter(|w| **w < policy.initial_backoff / 2).count();
        assert!((400..600).contains(&early), "{early} of 1000 waits in the first half");
    }
}
