//! Quotas: how much a principal may produce, fetch and ask per second, on each node.
//!
//! As in Kafka, a quota is enforced by delaying, never by refusing or dropping: every request is
//! charged to its principal's rate limiter, and a principal in debt waits before its next request
//! is served. The answer to a produce or fetch reports the delay its own charge caused
//! (`throttle_time_ms`), so a well-behaved client waits on its own before sending again. The
//! delay comes *before* a request is carried out, never after: a client that gives up while
//! throttled has had nothing applied, so its retry cannot duplicate anything.
//!
//! Quotas are per node, like Kafka's per-broker quotas: a producer writing to partitions led by
//! three nodes may send three times its quota in total.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A principal's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub produce_bytes_per_sec: Option<u64>,
    pub fetch_bytes_per_sec: Option<u64>,
    pub requests_per_sec: Option<u64>,
}

impl Quota {
    pub fn limit(&self, kind: QuotaKind) -> Option<u64> {
        match kind {
            QuotaKind::ProduceBytes => self.produce_bytes_per_sec,
            QuotaKind::FetchBytes => self.fetch_bytes_per_sec,
            QuotaKind::Requests => self.requests_per_sec,
        }
        .filter(|r| *r > 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    ProduceBytes,
    FetchBytes,
    Requests,
}

/// A token bucket that may go into debt: a charge larger than what is available is accepted, and
/// the debt is paid off at `rate` before the next request goes through. Holds at most one
/// second's worth of unused allowance (the burst).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate_per_sec: u64, now: Instant) -> RateLimiter {
        let rate = rate_per_sec.max(1) as f64;
        RateLimiter { rate, tokens: rate, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// How long a request arriving at `now` must wait for the debt to be paid off.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Charges `amount` at `now`; returns the wait the next request will owe.
    pub fn charge(&mut self, amount: u64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= amount as f64;
        self.wait(now)
    }

    pub fn rate(&self) -> u64 {
        self.rate as u64
    }
}

/// The rate limiters of one node, per principal and kind of quota.
#[derive(Debug, Default)]
pub struct Throttles {
    limiters: HashMap<(String, QuotaKind), RateLimiter>,
}

impl Throttles {
    fn limiter(&mut self, principal: &str, kind: QuotaKind, limit: u64, now: Instant) -> &mut RateLimiter {
        let l = self.limiters.entry((principal.to_string(), kind)).or_insert_with(|| RateLimiter::new(limit, now));
        if l.rate() != limit.max(1) {
            // The quota changed: start afresh at the new rate.
            *l = RateLimiter::new(limit, now);
        }
        l
    }

    /// How long `principal` must wait before a request charged to `kind` is served.
    pub fn wait(&mut self, principal: &str, kind: QuotaKind, quota: &Quota, now: Instant) -> Duration {
        match quota.limit(kind) {
            Some(limit) => self.limiter(principal, kind, limit, now).wait(now),
            None => {
                self.limiters.remove(&(principal.to_string(), kind));
                Duration::ZERO
            }
        }
    }

    /// Charges `amount` to `principal`; returns the wait this causes for its next request.
    pub fn charge(&mut self, principal: &str, kind: QuotaKind, quota: &Quota, amount: u64, now: Instant) -> Duration {
        match quota.limit(kind) {
            Some(limit) => self.limiter(principal, kind, limit, now).charge(amount, now),
            None => Duration::ZERO,
        }
    }

    /// Forgets limiters of principals that no longer have a quota of that kind.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, QuotaKind) -> bool) {
        self.limiters.retain(|(p, k), _| keep(p, *k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_within_the_burst_costs_nothing_and_debt_is_paid_at_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1_000, t0);
        assert_eq!(l.charge(1_000, t0), Duration::ZERO);
        // 500 more than allowed: half a second of debt.
        assert_eq!(l.charge(500, t0), Duration::from_millis(500));
        assert_eq!(l.wait(t0 + Duration::from_millis(200)), Duration::from_millis(300));
        assert_eq!(l.wait(t0 + Duration::from_millis(500)), Duration::ZERO);
    }

    #[test]
    fn the_average_rate_of_a_throttled_sender_is_its_quota() {
        // A sender that always waits what it is told sends at the quota, whatever its batch size.
        let quota = Quota { produce_bytes_per_sec: Some(10_000), ..Default::default() };
        let mut t = Throttles::default();
        let start = Instant::now();
        let mut now = start;
        let mut sent = 0u64;
        for _ in 0..1_000 {
            now += t.wait("User:a", QuotaKind::ProduceBytes, &quota, now);
            t.charge("User:a", QuotaKind::ProduceBytes, &quota, 3_000, now);
            sent += 3_000;
        }
        let secs = now.duration_since(start).as_secs_f64();
        let rate = sent as f64 / secs;
        // 3,000,000 bytes at 10,000 B/s: 299 s after the first second's burst.
        assert!((rate - 10_000.0).abs() / 10_000.0 < 0.01, "rate {rate}");
        // Someone without a quota is never delayed.
        assert_eq!(t.charge("User:b", QuotaKind::ProduceBytes, &Quota::default(), 1 << 30, now), Duration::ZERO);
    }

    #[test]
    fn a_changed_quota_takes_effect_at_once() {
        let now = Instant::now();
        let mut t = Throttles::default();
        let slow = Quota { requests_per_sec: Some(1), ..Default::default() };
        t.charge("User:a", QuotaKind::Requests, &slow, 100, now);
        assert!(t.wait("User:a", QuotaKind::Requests, &slow, now) > Duration::from_secs(90));
        let fast = Quota { requests_per_sec: Some(1_000), ..Default::default() };
        assert_eq!(t.wait("User:a", QuotaKind::Requests, &fast, now), Duration::ZERO);
        assert_eq!(t.wait("User:a", QuotaKind::Requests, &Quota::default(), now), Duration::ZERO);
    }
}
