//! Limits on a queue that hold across every worker and process: concurrency and rate, for the
//! whole queue and per partition (tenant, kind or an args field), with round-robin claims
//! between partitions. The stores enforce them at fetch ([`JobStore::fetch`](crate::JobStore::fetch));
//! this module only describes and validates them.

use std::time::Duration;

use crate::error::{Error, Result};

/// The longest rate-limit period.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// At most `jobs` job starts (claims) per `period`, in a sliding window: in any interval of
/// length `period` on the database's clock, at most `jobs` claims (see `docs/jobs.md`, "Limits
/// across workers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Claims allowed per period, `1..=i32::MAX`.
    pub jobs: u32,
    /// The window, 1 ms to [`MAX_RATE_PERIOD`], millisecond precision.
    pub period: Duration,
}

impl RateLimit {
    /// At most `jobs` starts per `period`.
    pub fn new(jobs: u32, period: Duration) -> Self {
        Self { jobs, period }
    }

    /// The period in whole milliseconds (as stored).
    pub fn period_ms(&self) -> i64 {
        self.period.as_millis().min(i64::MAX as u128) as i64
    }

    fn validate(&self, option: &'static str) -> Result<()> {
        validate_count(option, self.jobs)?;
        if self.period < Duration::from_millis(1) || self.period > MAX_RATE_PERIOD {
            return Err(Error::invalid(
                option,
                format!(
                    "period {:?} is outside 1ms..={MAX_RATE_PERIOD:?}",
                    self.period
                ),
            ));
        }
        Ok(())
    }
}

/// What splits a queue's jobs into partitions: per-partition limits apply to each partition on
/// its own, and a fetch claims round-robin between the partitions with due jobs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PartitionBy {
    /// The tenant (`org_id`); jobs without one form one partition.
    Org,
    /// The job kind.
    Kind,
    /// A top-level field of the args, as text (`args->>'field'`); jobs without it (or with
    /// JSON `null` or `""`) form one partition.
    Arg(String),
}

impl PartitionBy {
    /// The stored form: `org_id`, `kind` or `args:<field>`.
    pub fn as_stored(&self) -> String {
        match self {
            Self::Org => "org_id".to_owned(),
            Self::Kind => "kind".to_owned(),
            Self::Arg(f) => format!("args:{f}"),
        }
    }

    /// Parses the stored form ([`PartitionBy::as_stored`]); `None` for anything else.
    pub fn from_stored(s: &str) -> Option<Self> {
        let p = match s {
            "org_id" => Self::Org,
            "kind" => Self::Kind,
            _ => Self::Arg(s.strip_prefix("args:")?.to_owned()),
        };
        p.validate().ok().map(|_| p)
    }

    /// An args field name is 1 to 63 ASCII letters, digits, `_` or `-` (it is written into
    /// SQL as a literal, so nothing else is accepted).
    fn validate(&self) -> Result<()> {
        if let Self::Arg(f) = self
            && (f.is_empty()
                || f.len() > 63
                || !f
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            return Err(Error::invalid(
                "partition_by",
                format!("args field {f:?} must be 1-63 ASCII letters, digits, '_' or '-'"),
            ));
        }
        Ok(())
    }
}

/// Every limit of one queue, set at once with
/// [`Jobs::set_queue_limits`](crate::Jobs::set_queue_limits). All `None` (the default): no
/// limit beyond each worker's own concurrency, and the plain one-statement fetch.
///
/// ```
/// use std::time::Duration;
/// use windlass_jobs::{PartitionBy, QueueLimits, RateLimit};
///
/// // Each tenant at most 2 jobs at a time and 100 per minute, round-robin between tenants,
/// // and at most 50 at a time in all.
/// let limits = QueueLimits::new()
///     .global(50)
///     .partition_by(PartitionBy::Org)
///     .per_partition(2)
///     .per_partition_rate(RateLimit::new(100, Duration::from_secs(60)));
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueLimits {
    /// At most this many of the queue's jobs running at once.
    pub global: Option<u32>,
    /// At most this many of the queue's jobs started per period.
    pub rate: Option<RateLimit>,
    /// Partitions for the per-partition limits and round-robin claims.
    pub partition: Option<PartitionBy>,
    /// At most this many jobs of one partition running at once.
    pub per_partition: Option<u32>,
    /// At most this many jobs of one partition started per period.
    pub per_partition_rate: Option<RateLimit>,
}

impl QueueLimits {
    /// No limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `n` of the queue's jobs running at once, across every worker.
    pub fn global(mut self, n: u32) -> Self {
        self.global = Some(n);
        self
    }

    /// At most `rate.jobs` of the queue's jobs started per `rate.period`, across every worker.
    pub fn rate(mut self, rate: RateLimit) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Splits the queue into partitions: claims go round-robin between partitions with due
    /// jobs, and the per-partition limits apply.
    pub fn partition_by(mut self, by: PartitionBy) -> Self {
        self.partition = Some(by);
        self
    }

    /// At most `n` jobs of one partition running at once (needs [`QueueLimits::partition_by`]).
    pub fn per_partition(mut self, n: u32) -> Self {
        self.per_partition = Some(n);
        self
    }

    /// At most `rate.jobs` jobs of one partition started per `rate.period` (needs
    /// [`QueueLimits::partition_by`]).
    pub fn per_partition_rate(mut self, rate: RateLimit) -> Self {
        self.per_partition_rate = Some(rate);
        self
    }

    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether any rate limit is set.
    pub fn has_rate(&self) -> bool {
        self.rate.is_some() || self.per_partition_rate.is_some()
    }

    /// Checks every value: counts in `1..=i32::MAX`, periods in 1 ms..=[`MAX_RATE_PERIOD`],
    /// per-partition limits only with a partition, a valid args field name.
    pub fn validate(&self) -> Result<()> {
        if let Some(n) = self.global {
            validate_count("global_limit", n)?;
        }
        if let Some(n) = self.per_partition {
            validate_count("per_partition", n)?;
        }
        if let Some(r) = &self.rate {
            r.validate("rate")?;
        }
        if let Some(r) = &self.per_partition_rate {
            r.validate("per_partition_rate")?;
        }
        match &self.partition {
            Some(p) => p.validate(),
            None if self.per_partition.is_some() || self.per_partition_rate.is_some() => Err(
                Error::invalid("per_partition", "per-partition limits need partition_by"),
            ),
            None => Ok(()),
        }
    }

    /// How long start records are kept: the longest period.
    #[cfg_attr(not(any(feature = "memory", feature = "postgres")), allow(dead_code))]
    pub(crate) fn log_horizon(&self) -> Duration {
        let q = self.rate.map_or(Duration::ZERO, |r| r.period);
        let p = self.per_partition_rate.map_or(Duration::ZERO, |r| r.period);
        q.max(p)
    }
}

fn validate_count(option: &'static str, n: u32) -> Result<()> {
    if n == 0 || n > i32::MAX as u32 {
        return Err(Error::invalid(
            option,
            format!("{n} is outside 1..={}", i32::MAX),
        ));
    }
    Ok(())
}
