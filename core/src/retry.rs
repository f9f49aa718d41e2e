//! Retry policy: exponential backoff with jitter and an attempt limit.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How often and how far apart a failing operation is tried again.
///
/// Attempts are counted from 1. After attempt `n` fails, the next one waits
/// `min(initial * multiplier^(n-1), max)`, reduced by up to `jitter` (a fraction in `0..=1`)
/// at random so that many failing consumers do not retry in lock step ("equal jitter" when
/// `jitter = 0.5`). Once `max_attempts` attempts have failed the policy is exhausted and the
/// caller gives up (dead-letters the event, discards the job, marks the outbox row dead).
///
/// The policy is stateless: [`RetryPolicy::delay`] needs only the attempt number, so stores that
/// persist attempts (outbox rows, job rows) compute the next attempt time from the row itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included. `1` means no retry.
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    #[serde(with = "millis")]
    pub initial: Duration,
    /// Upper bound of any delay.
    #[serde(with = "millis")]
    pub max: Duration,
    /// Growth factor between consecutive delays.
    pub multiplier: f64,
    /// Fraction of each delay taken away at random, `0.0..=1.0`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 10 attempts, 100 ms doubling up to 30 s, 50% jitter.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries: the first failure exhausts it.
    pub fn no_retry() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Sets the number of attempts in all (at least 1).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Sets the first and the largest delay.
    pub fn with_delays(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial;
        self.max = max.max(initial);
        self
    }

    /// Sets the growth factor (clamped to at least 1.0).
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            2.0
        };
        self
    }

    /// Sets the jitter fraction (clamped to `0.0..=1.0`).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// True once `failed_attempts` failures used up the policy.
    pub fn is_exhausted(&self, failed_attempts: u32) -> bool {
        failed_attempts >= self.max_attempts
    }

    /// The delay before the attempt after failed attempt number `attempt` (1-based), without
    /// jitter. Saturates at [`RetryPolicy::max`].
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before the attempt after failed attempt number `attempt` (1-based), with
    /// jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        if self.jitter <= 0.0 || base.is_zero() {
            return base;
        }
        let cut: f64 = rand::rng().random_range(0.0..=self.jitter);
        base.mul_f64(1.0 - cut)
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u64::MAX as u128) as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_saturates() {
        let p = RetryPolicy::default()
            .with_delays(Duration::from_millis(10), Duration::from_millis(100))
            .with_jitter(0.0);
        assert_eq!(p.delay(1), Duration::from_millis(10));
        assert_eq!(p.delay(2), Duration::from_millis(20));
        assert_eq!(p.delay(3), Duration::from_millis(40));
        assert_eq!(p.delay(5), Duration::from_millis(100));
        assert_eq!(p.delay(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p =
            RetryPolicy::default().with_delays(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..1000 {
            let d = p.delay(1);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
    }

    #[test]
    fn exhaustion_counts_attempts() {
        let p = RetryPolicy::default().with_max_attempts(3);
        assert!(!p.is_exhausted(2));
        assert!(p.is_exhausted(3));
        assert!(RetryPolicy::no_retry().is_exhausted(1));
        assert_eq!(RetryPolicy::default().with_max_attempts(0).max_attempts, 1);
    }
}
