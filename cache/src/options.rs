//! Options: [`CacheOptions`] (with [`L1Options`], [`BreakerOptions`]) per cache, [`TypePolicy`]
//! per data type and [`CallOptions`] per call. Fields are public for reading and for struct
//! update; every path that uses them validates them first ([`Cache::with_options`],
//! [`Cache::entry`], [`CacheEntry::with_options`]), so no field value can cause a panic: an
//! invalid one is an [`Error::Config`].
//!
//! [`Cache::with_options`]: crate::Cache::with_options
//! [`Cache::entry`]: crate::Cache::entry
//! [`CacheEntry::with_options`]: crate::CacheEntry::with_options

use std::time::Duration;

use crate::error::{Error, Result};

/// The longest duration any option accepts (about 10 years): durations are turned into
/// milliseconds for the store and added to clocks, which must never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn check_duration(what: &str, d: Duration, allow_zero: bool) -> Result<()> {
    if !allow_zero && d.is_zero() {
        return Err(Error::Config(format!("{what} must be above zero")));
    }
    if d > MAX_DURATION {
        return Err(Error::Config(format!(
            "{what} of {d:?} is over the limit of {MAX_DURATION:?}"
        )));
    }
    Ok(())
}

/// Settings of the optional in-process tier.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct L1Options {
    /// Values held (least recently and least frequently used go first). At least 1.
    pub capacity: u64,
    /// Longest time a value stays in the L1, whatever its own TTL.
    pub ttl: Duration,
    /// The L1's staleness bound: a value is served from the L1 only while every change
    /// notice published by any instance more than `max_staleness` ago is known to have been
    /// applied (the store's heartbeat proves it). Past that, the L1 is out of use and reads
    /// go to the store until notices flow again. Must be above the store's heartbeat interval.
    pub max_staleness: Duration,
}

impl Default for L1Options {
    /// 10 000 values, 60 s, staleness bound 1 s.
    fn default() -> Self {
        Self {
            capacity: 10_000,
            ttl: Duration::from_secs(60),
            max_staleness: Duration::from_secs(1),
        }
    }
}

impl L1Options {
    /// An L1 holding up to `capacity` values (at least 1).
    pub fn capacity(capacity: u64) -> Self {
        Self {
            capacity: capacity.max(1),
            ..Self::default()
        }
    }
    /// Sets the longest time a value stays in the L1.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// Sets the staleness bound (see [`L1Options::max_staleness`]).
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.max_staleness = bound;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.capacity == 0 {
            return Err(Error::Config("L1 capacity must be at least 1".into()));
        }
        check_duration("L1 ttl", self.ttl, false)?;
        check_duration("L1 max_staleness", self.max_staleness, false)
    }
}

/// The circuit breaker around the store: after `failures` consecutive failed or timed-out
/// store calls it opens, and every store call fails at once (reads are misses, `get_or_load`
/// calls the loader) for `open_for`; then one probe call is let through, and its success
/// closes the breaker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BreakerOptions {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures: u32,
    /// How long the breaker stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerOptions {
    /// 5 failures, open for 2 s.
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: Duration::from_secs(2),
        }
    }
}

impl BreakerOptions {
    /// Sets the consecutive failures that open the breaker.
    pub fn failures(mut self, n: u32) -> Self {
        self.failures = n.max(1);
        self
    }
    /// Sets how long the breaker stays open before a probe.
    pub fn open_for(mut self, d: Duration) -> Self {
        self.open_for = d;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.failures == 0 {
            return Err(Error::Config("breaker failures must be at least 1".into()));
        }
        check_duration("breaker open_for", self.open_for, false)
    }
}

/// Settings of a [`Cache`](crate::Cache).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheOptions {
    /// Deadline of every store call. A read that misses it is a miss (and `get_or_load` runs
    /// the loader); a write or an invalidation returns [`Error::Timeout`].
    pub timeout: Duration,
    /// The in-process tier, off by default.
    pub l1: Option<L1Options>,
    /// How long `delete` keeps a tombstone. A load whose write would land later than this
    /// after it read the entry is refused by the store (compared on the store's own clock),
    /// so a slow load can never write over a `delete`, whatever its duration.
    pub tombstone_ttl: Duration,
    /// The circuit breaker around the store.
    pub breaker: BreakerOptions,
    /// Most invalidations (tags and deleted keys) kept for replay while the store is
    /// unavailable. Past it, the oldest tenant's pending work is folded into one
    /// invalidation of that whole tenant.
    pub max_pending_invalidations: usize,
    /// Delay between replay attempts of pending invalidations.
    pub replay_interval: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(250),
            l1: None,
            tombstone_ttl: Duration::from_secs(60),
            breaker: BreakerOptions::default(),
            max_pending_invalidations: 10_000,
            replay_interval: Duration::from_millis(500),
        }
    }
}

impl CacheOptions {
    /// Sets the store call deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Turns the L1 on.
    pub fn l1(mut self, l1: L1Options) -> Self {
        self.l1 = Some(l1);
        self
    }
    /// Sets the tombstone TTL.
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }
    /// Sets the circuit breaker.
    pub fn breaker(mut self, breaker: BreakerOptions) -> Self {
        self.breaker = breaker;
        self
    }
    /// Sets the most invalidations kept for replay.
    pub fn max_pending_invalidations(mut self, n: usize) -> Self {
        self.max_pending_invalidations = n;
        self
    }
    /// Sets the delay between replay attempts.
    pub fn replay_interval(mut self, d: Duration) -> Self {
        self.replay_interval = d;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        check_duration("timeout", self.timeout, false)?;
        check_duration("tombstone_ttl", self.tombstone_ttl, false)?;
        if self.tombstone_ttl < Duration::from_secs(2) {
            return Err(Error::Config(
                "tombstone_ttl must be at least 2 s (it bounds how late a load may write)".into(),
            ));
        }
        check_duration("replay_interval", self.replay_interval, false)?;
        if self.max_pending_invalidations == 0 {
            return Err(Error::Config(
                "max_pending_invalidations must be at least 1".into(),
            ));
        }
        self.breaker.validate()?;
        if let Some(l1) = &self.l1 {
            l1.validate()?;
        }
        Ok(())
    }
}

/// How a data type is cached.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TypePolicy {
    /// How long a value is fresh.
    pub ttl: Duration,
    /// Fraction of the TTL taken away at random (`0.0..=1.0`), so values written together do
    /// not all expire together.
    pub jitter: f64,
    /// How long a value stays usable as *stale* after its TTL (by stale-while-revalidate,
    /// fail-safe or the soft timeout). Zero: a value is gone at its TTL. Invalidated values are
    /// never stale, they are gone.
    pub stale_for: Duration,
    /// Serve a stale value at once while a load refreshes it.
    pub stale_while_revalidate: bool,
    /// Serve a stale value when the loader fails or times out.
    pub fail_safe: bool,
    /// With a stale value at hand (fail-safe on), stop waiting for a load after this long and
    /// serve the stale value; the load goes on (in the background for
    /// [`get_or_load_owned`](crate::CacheEntry::get_or_load_owned)). `None`: no soft timeout.
    pub soft_timeout: Option<Duration>,
    /// A load (and every caller waiting for it) gives up after this long: the loader is
    /// dropped and the key is free for the next caller. Default 30 s.
    pub hard_timeout: Duration,
    /// Refresh-ahead: a hit on a value older than this fraction of its TTL (`0.0 < f < 1.0`)
    /// starts one background load for it while the hit is served
    /// ([`get_or_load_owned`](crate::CacheEntry::get_or_load_owned) only).
    pub refresh_ahead: Option<f64>,
    /// Keep decoded values of this type in the L1 (when the cache has one).
    pub l1: bool,
    /// Largest encoded value stored, in bytes.
    pub max_value_bytes: usize,
}

impl Default for TypePolicy {
    /// 5 minutes, 10% jitter, no stale values, hard timeout 30 s, L1 on, 1 MiB.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            jitter: 0.1,
            stale_for: Duration::ZERO,
            stale_while_revalidate: false,
            fail_safe: false,
            soft_timeout: None,
            hard_timeout: Duration::from_secs(30),
            refresh_ahead: None,
            l1: true,
            max_value_bytes: 1 << 20,
        }
    }
}

impl TypePolicy {
    /// The default policy with this TTL.
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            ..Self::default()
        }
    }
    /// Sets the jitter fraction (clamped to `0.0..=1.0`; NaN is 0).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }
    /// Turns fail-safe on: when the loader fails or times out, a value up to `grace` past its
    /// TTL is served.
    pub fn fail_safe(mut self, grace: Duration) -> Self {
        self.fail_safe = true;
        self.stale_for = self.stale_for.max(grace);
        self
    }
    /// Turns stale-while-revalidate on: a value up to `window` past its TTL is served at once
    /// while one load refreshes it.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = true;
        self.stale_for = self.stale_for.max(window);
        self
    }
    /// Sets the loader soft timeout (effective with fail-safe and a stale value).
    pub fn soft_timeout(mut self, after: Duration) -> Self {
        self.soft_timeout = Some(after);
        self
    }
    /// Sets the loader hard timeout.
    pub fn hard_timeout(mut self, after: Duration) -> Self {
        self.hard_timeout = after;
        self
    }
    /// Turns refresh-ahead on at this fraction of the TTL (clamped to `0.05..=0.95`).
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = Some(if fraction.is_finite() {
            fraction.clamp(0.05, 0.95)
        } else {
            0.8
        });
        self
    }
    /// Keeps this type out of the L1.
    pub fn without_l1(mut self) -> Self {
        self.l1 = false;
        self
    }
    /// Sets the largest encoded value stored.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Checks every field; the cache calls it wherever a policy comes in.
    pub fn validate(&self) -> Result<()> {
        check_duration("ttl", self.ttl, false)?;
        if !(self.jitter.is_finite() && (0.0..=1.0).contains(&self.jitter)) {
            return Err(Error::Config(format!(
                "jitter must be within 0.0..=1.0, got {}",
                self.jitter
            )));
        }
        check_duration("stale_for", self.stale_for, true)?;
        check_duration("hard_timeout", self.hard_timeout, false)?;
        if let Some(soft) = self.soft_timeout {
            check_duration("soft_timeout", soft, false)?;
            if soft >= self.hard_timeout {
                return Err(Error::Config(format!(
                    "soft_timeout ({soft:?}) must be below hard_timeout ({:?})",
                    self.hard_timeout
                )));
            }
        }
        if let Some(f) = self.refresh_ahead
            && !(f.is_finite() && f > 0.0 && f < 1.0)
        {
            return Err(Error::Config(format!(
                "refresh_ahead must be within (0.0, 1.0), got {f}"
            )));
        }
        if self.max_value_bytes == 0 {
            return Err(Error::Config("max_value_bytes must be above zero".into()));
        }
        Ok(())
    }

    pub(crate) fn keeps_stale(&self) -> bool {
        (self.stale_while_revalidate || self.fail_safe) && !self.stale_for.is_zero()
    }

    /// (fresh TTL with jitter, TTL the store keeps the value). The policy is validated.
    pub(crate) fn ttls(&self) -> (Duration, Duration) {
        use rand::Rng;
        let cut = if self.jitter > 0.0 {
            rand::rng().random_range(0.0..=self.jitter)
        } else {
            0.0
        };
        let fresh = self
            .ttl
            .mul_f64((1.0 - cut).clamp(0.0, 1.0))
            .max(Duration::from_millis(1));
        let hard = if self.keeps_stale() {
            fresh.saturating_add(self.stale_for)
        } else {
            fresh
        };
        (fresh, hard)
    }
}

/// Options of one call, applied over the data type's [`TypePolicy`] with
/// [`CacheEntry::with_options`](crate::CacheEntry::with_options).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Fresh time of values written by this call.
    pub ttl: Option<Duration>,
    /// Hard timeout of loads made by this call.
    pub hard_timeout: Option<Duration>,
    /// Soft timeout of loads made by this call.
    pub soft_timeout: Option<Duration>,
    /// Neither read nor fill the L1.
    pub skip_l1: bool,
    /// Serve no stale value (no stale-while-revalidate, no fail-safe) in this call.
    pub no_stale: bool,
}

impl CallOptions {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }
    /// Overrides the fresh time.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// Overrides the hard timeout.
    pub fn hard_timeout(mut self, after: Duration) -> Self {
        self.hard_timeout = Some(after);
        self
    }
    /// Overrides the soft timeout.
    pub fn soft_timeout(mut self, after: Duration) -> Self {
        self.soft_timeout = Some(after);
        self
    }
    /// Bypasses the L1.
    pub fn skip_l1(mut self) -> Self {
        self.skip_l1 = true;
        self
    }
    /// Serves no stale value.
    pub fn no_stale(mut self) -> Self {
        self.no_stale = true;
        self
    }

    /// The policy these options make of `base`, validated.
    pub(crate) fn apply(&self, base: &TypePolicy) -> Result<TypePolicy> {
        let mut p = base.clone();
        if let Some(ttl) = self.ttl {
            p.ttl = ttl;
        }
        if let Some(h) = self.hard_timeout {
            p.hard_timeout = h;
        }
        if let Some(s) = self.soft_timeout {
            p.soft_timeout = Some(s);
        }
        if self.skip_l1 {
            p.l1 = false;
        }
        if self.no_stale {
            p.stale_while_revalidate = false;
            p.fail_safe = false;
        }
        p.validate()?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::field_reassign_with_default)] // what a user outside the crate can do
    fn public_fields_cannot_cause_a_panic() {
        let mut p = TypePolicy::default();
        p.jitter = 2.0;
        assert!(matches!(p.validate(), Err(Error::Config(_))));
        p.jitter = f64::NAN;
        assert!(p.validate().is_err());
        p.jitter = -0.5;
        assert!(p.validate().is_err());
        p = TypePolicy::default();
        p.ttl = Duration::MAX;
        assert!(p.validate().is_err());
        p = TypePolicy::default();
        p.soft_timeout = Some(p.hard_timeout);
        assert!(p.validate().is_err());
        p = TypePolicy::default();
        p.refresh_ahead = Some(1.5);
        assert!(p.validate().is_err());
        p = TypePolicy::default();
        p.hard_timeout = Duration::ZERO;
        assert!(p.validate().is_err());
        // Builders clamp instead.
        let p = TypePolicy::ttl(Duration::from_secs(1))
            .jitter(7.0)
            .refresh_ahead(3.0);
        assert!(p.validate().is_ok());
        assert_eq!(p.jitter, 1.0);
        // A valid policy never panics computing its TTLs, even at the limits.
        let p = TypePolicy::ttl(MAX_DURATION)
            .jitter(1.0)
            .fail_safe(MAX_DURATION);
        p.validate().unwrap();
        for _ in 0..100 {
            let (fresh, hard) = p.ttls();
            assert!(fresh >= Duration::from_millis(1) && hard >= fresh);
        }

        let mut o = CacheOptions::default();
        o.timeout = Duration::ZERO;
        assert!(o.validate().is_err());
        let mut o = CacheOptions::default();
        o.breaker.failures = 0;
        assert!(o.validate().is_err());
        let mut o = CacheOptions::default().l1(L1Options::default());
        if let Some(l1) = o.l1.as_mut() {
            l1.capacity = 0;
        }
        assert!(o.validate().is_err());
        assert!(
            CallOptions::new()
                .ttl(Duration::ZERO)
                .apply(&TypePolicy::default())
                .is_err()
        );
    }
}
