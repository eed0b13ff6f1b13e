//! The retry policy: bounded attempts, a bounded total time, and capped exponential backoff with
//! jitter. Pure functions, so the bounds are unit-tested without a clock.

use std::time::Duration;

/// How often and how long the client retries a request that failed with a retriable error
/// (leadership moved, leader not elected yet, timeout, connection failure).
///
/// A request is attempted at most [`max_attempts`](Self::max_attempts) times, and no new attempt
/// starts once [`max_elapsed`](Self::max_elapsed) has passed since the first one, so an operation
/// gives up after at most `max_elapsed` plus one request timeout. Between attempts the client
/// sleeps `initial_backoff * 2^retry`, capped at `max_backoff`, minus up to 20 % jitter so that
/// many clients failing over together do not retry in lockstep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts per operation, counting the first (at least 1).
    pub max_attempts: u32,
    /// No attempt starts after this much time has passed since the first.
    pub max_elapsed: Duration,
    /// Sleep before the first retry.
    pub initial_backoff: Duration,
    /// Longest sleep between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 100 attempts within 20 s, backing off from 20 ms to at most 200 ms: long enough to ride
    /// out a leader election or a broker restart, short enough that a dead cluster is reported
    /// soon. The cap is low because a failover completes in well under a second: a long backoff
    /// would only add to the time the caller waits after the new leader is ready.
    fn default() -> Self {
        Self {
            max_attempts: 100,
            max_elapsed: Duration::from_secs(20),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
        }
    }
}

/// Largest fraction of a backoff the jitter removes.
const JITTER_FRACTION: f64 = 0.2;

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The un-jittered backoff before retry number `retry` (0 = the first retry):
    /// `initial_backoff * 2^retry`, capped at `max_backoff`.
    pub fn backoff(&self, retry: u32) -> Duration {
        // 2^20 * anything sensible is already past any cap; avoid overflow for large `retry`.
        let factor = 1u32 << retry.min(20);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The jittered backoff: `backoff(retry)` reduced by `jitter * 20 %`, `jitter` in `[0, 1]`
    /// (clamped). Always within `[0.8 * backoff(retry), backoff(retry)]`.
    pub fn backoff_with_jitter(&self, retry: u32, jitter: f64) -> Duration {
        let base = self.backoff(retry);
        let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        base.mul_f64(1.0 - JITTER_FRACTION * jitter)
    }

    /// Whether and how long to wait before the next attempt, after `attempts_made` attempts (>= 1)
    /// that started `elapsed` ago. `None` means give up. The wait never extends past
    /// `max_elapsed`.
    pub fn next_delay(&self, attempts_made: u32, elapsed: Duration, jitter: f64) -> Option<Duration> {
        if attempts_made >= self.max_attempts.max(1) || elapsed >= self.max_elapsed {
            return None;
        }
        let retry = attempts_made.saturating_sub(1);
        let delay = self.backoff_with_jitter(retry, jitter);
        Some(delay.min(self.max_elapsed - elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_from_20ms_and_caps_at_200ms() {
        let p = RetryPolicy::default();
        let seq: Vec<u64> = (0..8).map(|r| p.backoff(r).as_millis() as u64).collect();
        assert_eq!(seq, vec![20, 40, 80, 160, 200, 200, 200, 200]);
        assert_eq!(p.backoff(u32::MAX), ms(200));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = RetryPolicy::default();
        for retry in 0..40 {
            for j in [0.0, 0.25, 0.5, 0.999, 1.0, -3.0, 7.0, f64::NAN] {
                let d = p.backoff_with_jitter(retry, j);
                let base = p.backoff(retry);
                assert!(d <= base && d <= ms(200), "retry {retry} jitter {j}: {d:?}");
                assert!(d >= base.mul_f64(0.8), "retry {retry} jitter {j}: {d:?}");
                assert!(d >= ms(16), "retry {retry} jitter {j}: {d:?}");
            }
        }
    }

    #[test]
    fn attempts_are_bounded() {
        let p = RetryPolicy::default();
        // Simulate: every attempt fails instantly, the client sleeps the worst-case delay.
        let mut elapsed = Duration::ZERO;
        let mut attempts = 1;
        while let Some(d) = p.next_delay(attempts, elapsed, 0.0) {
            elapsed += d;
            attempts += 1;
        }
        assert_eq!(attempts, 100, "gives up after max_attempts");
        assert!(elapsed <= p.max_elapsed, "total sleep {elapsed:?}");
        // 20+40+80+160 + 95*200 ms
        assert_eq!(elapsed, ms(300 + 95 * 200));
    }

    #[test]
    fn elapsed_is_bounded() {
        let p = RetryPolicy::default();
        // Slow attempts: each takes 3 s before failing.
        let mut elapsed = Duration::ZERO;
        let mut attempts = 0;
        loop {
            elapsed += Duration::from_secs(3);
            attempts += 1;
            match p.next_delay(attempts, elapsed, 0.5) {
                Some(d) => {
                    assert!(elapsed + d <= p.max_elapsed, "a wait never crosses the deadline");
                    elapsed += d;
                }
                None => break,
            }
        }
        assert!(attempts <= 7, "{attempts} attempts of 3 s each within 20 s");
        assert!(p.next_delay(1, p.max_elapsed, 0.0).is_none());
        assert_eq!(p.next_delay(1, p.max_elapsed - ms(5), 0.0), Some(ms(5)));
    }

    #[test]
    fn none_never_retries() {
        assert_eq!(RetryPolicy::none().next_delay(1, Duration::ZERO, 0.0), None);
        let zero = RetryPolicy { max_attempts: 0, ..RetryPolicy::default() };
        assert_eq!(zero.next_delay(1, Duration::ZERO, 0.0), None);
    }
}
