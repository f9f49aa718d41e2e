//! Enqueue options: what turns a job value into a validated [`NewJob`] (queue, priority,
//! schedule, attempts, timeout, uniqueness, tenant, args size), and their limits.

use std::time::Duration;

use chrono::{DateTime, Utc};
use windlass_core::{Name, OrgId};

use crate::error::{Error, Result};
use crate::job::Job;
use crate::model::{JobState, NewJob, OnConflict};

/// Highest (least urgent) priority accepted; 0 runs first.
pub const MAX_PRIORITY: i16 = 9;
/// Most attempts a job may be given.
pub const MAX_ATTEMPTS: u32 = 1_000;
/// Longest per-job timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Furthest in the future a job may be scheduled.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// What a unique job's key covers: the key, an optional period bucket, and the states in
/// which an existing job blocks a new one.
///
/// The stored key is `job:{kind}:{key}` (plus `:{bucket}` with a period, the bucket being the
/// enqueue time divided by the period), so one key never blocks another kind. The covered
/// states always include the pending ones (available, scheduled, running, retryable); by
/// default `completed` is covered too, `cancelled` and `discarded` are not.
///
/// A duplicate is skipped by default; [`UniqueOptions::on_conflict`] with
/// [`OnConflict::Replace`] makes it replace a still-waiting holder's args, `run_at` and
/// priority instead (a running holder is never touched).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct UniqueOptions {
    /// The caller's key (e.g. the invoice id).
    pub key: String,
    /// Uniqueness window; `None`: for as long as a covered job exists.
    pub period: Option<Duration>,
    /// Covered states.
    pub states: Vec<JobState>,
    /// What a duplicate does (default [`OnConflict::Skip`]).
    pub on_conflict: OnConflict,
}

impl UniqueOptions {
    /// Unique by `key` while a pending or completed job with it exists.
    pub fn by_key(key: impl Into<String>) -> Self {
        let mut states = JobState::PENDING.to_vec();
        states.push(JobState::Completed);
        Self {
            key: key.into(),
            period: None,
            states,
            on_conflict: OnConflict::Skip,
        }
    }

    /// What a duplicate enqueue does: [`OnConflict::Skip`] (the default) or
    /// [`OnConflict::Replace`] (replace a waiting holder's args, `run_at` and priority).
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.on_conflict = on_conflict;
        self
    }

    /// Limits uniqueness to one job per `period` bucket.
    pub fn period(mut self, period: Duration) -> Self {
        self.period = Some(period);
        self
    }

    /// Sets the covered states (the pending states are added if missing).
    pub fn states(mut self, states: impl IntoIterator<Item = JobState>) -> Self {
        let mut all: Vec<JobState> = JobState::PENDING.to_vec();
        for s in states {
            if !all.contains(&s) {
                all.push(s);
            }
        }
        self.states = all;
        self
    }
}

/// Options of one enqueue. Everything is validated when the job is built; bad values are
/// refused with [`Error::InvalidOption`] or [`Error::Name`].
///
/// ```
/// use std::time::Duration;
/// use windlass_jobs::{EnqueueOptions, UniqueOptions};
///
/// let opts = EnqueueOptions::new()
///     .queue("critical")
///     .priority(0)
///     .delay(Duration::from_secs(30))
///     .max_attempts(5)
///     .timeout(Duration::from_secs(60))
///     .unique(UniqueOptions::by_key("invoice-42").period(Duration::from_secs(3600)))
///     .org_id("acme");
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct EnqueueOptions {
    /// Queue (default `default`).
    pub queue: Option<String>,
    /// Priority `0..=9`, 0 first (default 5).
    pub priority: Option<i16>,
    /// Not before this time.
    pub run_at: Option<DateTime<Utc>>,
    /// Not before now + this delay (ignored when `run_at` is set).
    pub delay: Option<Duration>,
    /// Attempts in all, `1..=1000` (default 10).
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout (default: the worker's).
    pub timeout: Option<Duration>,
    /// Uniqueness.
    pub unique: Option<UniqueOptions>,
    /// Tenant.
    pub org_id: Option<String>,
    /// Largest encoded args accepted, in bytes (default [`DEFAULT_MAX_ARGS_SIZE`]).
    pub max_args_size: Option<usize>,
}

/// Default limit of a job's encoded arguments (compact JSON): 1 MiB. Jobs should carry ids,
/// not documents; raise it per enqueue with [`EnqueueOptions::max_args_size`].
pub const DEFAULT_MAX_ARGS_SIZE: usize = 1 << 20;

/// Default priority.
pub const DEFAULT_PRIORITY: i16 = 5;
/// Default attempts in all.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Default queue.
pub const DEFAULT_QUEUE: &str = "default";

impl EnqueueOptions {
    /// Defaults: queue `default`, priority 5, now, 10 attempts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue name (`[A-Za-z0-9._-]`, validated at enqueue).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Priority `0..=9`, 0 first.
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Run not before `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Run not before now + `delay`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Attempts in all.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Make the job unique.
    pub fn unique(mut self, unique: UniqueOptions) -> Self {
        self.unique = Some(unique);
        self
    }

    /// Tenant.
    pub fn org_id(mut self, org_id: impl Into<String>) -> Self {
        self.org_id = Some(org_id.into());
        self
    }

    /// Largest encoded arguments accepted (compact JSON, in bytes; default
    /// [`DEFAULT_MAX_ARGS_SIZE`], 1 MiB). A bigger job is refused when it is built, with
    /// [`Error::ArgsTooLarge`]: nothing is inserted.
    pub fn max_args_size(mut self, bytes: usize) -> Self {
        self.max_args_size = Some(bytes);
        self
    }

    /// Validates the options and serializes `job` into a row to insert.
    pub fn build<J: Job>(&self, job: &J) -> Result<NewJob> {
        let args = serde_json::to_value(job).map_err(|source| Error::Serialize {
            kind: J::KIND.to_owned(),
            source,
        })?;
        self.build_raw(J::KIND, args)
    }

    /// Like [`EnqueueOptions::build`] for an untyped job (a kind name and JSON arguments).
    ///
    /// With the `otel` feature the row carries the W3C trace context of the current `tracing`
    /// span ([`NewJob::traceparent`]), which the worker's `windlass.job` span continues.
    pub fn build_raw(&self, kind: &str, args: serde_json::Value) -> Result<NewJob> {
        let kind = Name::parse("job kind", kind)?;
        if let Some(path) = nul_path(&args, "$") {
            return Err(Error::InvalidArgs {
                kind: kind.as_str().to_owned(),
                reason: format!(
                    "{path} contains a NUL character (\\u0000), which Postgres jsonb cannot store"
                ),
            });
        }
        let limit = self.max_args_size.unwrap_or(DEFAULT_MAX_ARGS_SIZE);
        let size = encoded_size(&args);
        if size > limit {
            return Err(Error::ArgsTooLarge {
                kind: kind.as_str().to_owned(),
                size,
                limit,
            });
        }
        let queue = Name::parse("queue", self.queue.as_deref().unwrap_or(DEFAULT_QUEUE))?;
        let priority = self.priority.unwrap_or(DEFAULT_PRIORITY);
        if !(0..=MAX_PRIORITY).contains(&priority) {
            return Err(Error::invalid(
                "priority",
                format!("{priority} is outside 0..={MAX_PRIORITY}"),
            ));
        }
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(Error::invalid(
                "max_attempts",
                format!("{max_attempts} is outside 1..={MAX_ATTEMPTS}"),
            ));
        }
        let now = Utc::now();
        let run_at = match (self.run_at, self.delay) {
            (Some(at), _) => Some(at),
            (None, Some(d)) => {
                Some(now + chrono::Duration::from_std(d).map_err(|_| too_far("delay"))?)
            }
            (None, None) => None,
        };
        if let Some(at) = run_at {
            let ahead = at.signed_duration_since(now);
            if ahead
                > chrono::Duration::from_std(MAX_SCHEDULE_AHEAD).unwrap_or(chrono::Duration::MAX)
            {
                return Err(too_far(if self.run_at.is_some() {
                    "run_at"
                } else {
                    "delay"
                }));
            }
        }
        let timeout_ms = match self.timeout {
            None => None,
            Some(t) if t.is_zero() => {
                return Err(Error::invalid("timeout", "must be greater than zero"));
            }
            Some(t) if t > MAX_TIMEOUT => {
                return Err(Error::invalid(
                    "timeout",
                    format!("{t:?} is over the limit of {MAX_TIMEOUT:?}"),
                ));
            }
            Some(t) => Some(t.as_millis().max(1) as i32),
        };
        let org_id = self.org_id.as_deref().map(OrgId::new).transpose()?;
        let on_conflict = self
            .unique
            .as_ref()
            .map_or(OnConflict::Skip, |u| u.on_conflict);
        let (unique_key, unique_states) = match &self.unique {
            None => (None, 0),
            Some(u) => {
                windlass_core::validate_key_segment("unique key", &u.key)?;
                // Scoped by tenant: one tenant's key never blocks another's job. Neither the
                // org id nor the key can contain ':', so the shapes cannot collide.
                let mut key = match &org_id {
                    Some(org) => format!("job:{kind}:org:{}:{}", org.as_str(), u.key),
                    None => format!("job:{kind}:{}", u.key),
                };
                if let Some(period) = u.period {
                    if period.as_secs() == 0 {
                        return Err(Error::invalid(
                            "unique.period",
                            "must be at least one second",
                        ));
                    }
                    let bucket = now.timestamp().max(0) as u64 / period.as_secs();
                    key.push_str(&format!(":{bucket}"));
                }
                if !JobState::PENDING.iter().all(|s| u.states.contains(s)) {
                    return Err(Error::invalid(
                        "unique.states",
                        "must cover available, scheduled, running and retryable (use UniqueOptions::states)",
                    ));
                }
                (Some(key), JobState::mask(&u.states))
            }
        };
        // The enqueuing span's trace context (feature `otel`): the worker continues it.
        #[cfg(feature = "otel")]
        let (traceparent, tracestate) = match windlass_core::otel::TraceContext::current() {
            Some(cx) => (Some(cx.traceparent), cx.tracestate),
            None => (None, None),
        };
        #[cfg(not(feature = "otel"))]
        let (traceparent, tracestate) = (None, None);
        Ok(NewJob {
            queue,
            kind,
            args,
            org_id,
            priority,
            run_at,
            // Checked above: at most MAX_ATTEMPTS.
            max_attempts: max_attempts as i32,
            timeout_ms,
            unique_key,
            unique_states,
            traceparent,
            tracestate,
            on_conflict,
        })
    }
}

/// The length of `v` as compact JSON, counted without building the text.
fn encoded_size(v: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Writing a `Value` to an in-memory sink cannot fail.
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}

/// Where in `v` a string (or an object key) holds a NUL character, as a JSON path.
fn nul_path(v: &serde_json::Value, at: &str) -> Option<String> {
    match v {
        serde_json::Value::String(s) if s.contains('\0') => Some(at.to_owned()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_path(x, &format!("{at}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, x)| {
            if k.contains('\0') {
                Some(format!("a key of {at}"))
            } else {
                nul_path(x, &format!("{at}.{k}"))
            }
        }),
        _ => None,
    }
}

fn too_far(option: &'static str) -> Error {
    Error::invalid(
        option,
        format!(
            "is more than {} days ahead",
            MAX_SCHEDULE_AHEAD.as_secs() / 86_400
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobContext, JobError};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Noop;

    impl Job for Noop {
        const KIND: &'static str = "noop";
        async fn run(&self, _ctx: JobContext) -> Result<(), JobError> {
            Ok(())
        }
    }

    #[test]
    fn refuses_absurd_options() {
        let bad = [
            EnqueueOptions::new().queue("a:b"),
            EnqueueOptions::new().queue(""),
            EnqueueOptions::new().priority(-1),
            EnqueueOptions::new().priority(10),
            EnqueueOptions::new().max_attempts(0),
            EnqueueOptions::new().max_attempts(1_000_000),
            EnqueueOptions::new().timeout(Duration::ZERO),
            EnqueueOptions::new().timeout(Duration::from_secs(365 * 24 * 3600)),
            EnqueueOptions::new().delay(Duration::from_secs(100 * 365 * 24 * 3600)),
            EnqueueOptions::new().delay(Duration::MAX),
            EnqueueOptions::new().org_id("ac me"),
            EnqueueOptions::new()
                .unique(UniqueOptions::by_key("k").period(Duration::from_millis(10))),
            EnqueueOptions::new().unique(UniqueOptions::by_key("")),
            EnqueueOptions::new().unique(UniqueOptions {
                key: "k".into(),
                period: None,
                states: vec![],
                on_conflict: OnConflict::Skip,
            }),
        ];
        for opts in bad {
            let err = opts.build(&Noop).unwrap_err();
            assert!(
                matches!(err, Error::InvalidOption { .. } | Error::Name(_)),
                "{opts:?} -> {err}"
            );
        }
    }

    #[test]
    fn refuses_args_over_the_limit() {
        let big = serde_json::json!({ "s": "x".repeat(100) });
        let size = serde_json::to_vec(&big).unwrap().len();
        let opts = EnqueueOptions::new().max_args_size(size - 1);
        let err = opts.build_raw("noop", big.clone()).unwrap_err();
        assert!(
            matches!(err, Error::ArgsTooLarge { size: s, limit, .. } if s == size && limit == size - 1),
            "{err}"
        );
        assert!(
            EnqueueOptions::new()
                .max_args_size(size)
                .build_raw("noop", big)
                .is_ok()
        );
        let huge = serde_json::json!("x".repeat(DEFAULT_MAX_ARGS_SIZE));
        assert!(matches!(
            EnqueueOptions::new().build_raw("noop", huge),
            Err(Error::ArgsTooLarge { .. })
        ));
    }

    #[test]
    fn builds_unique_keys_per_kind_and_bucket() {
        let job = EnqueueOptions::new()
            .unique(UniqueOptions::by_key("inv-1").period(Duration::from_secs(60)))
            .build(&Noop)
            .unwrap();
        let key = job.unique_key.unwrap();
        assert!(key.starts_with("job:noop:inv-1:"), "{key}");
        assert_eq!(
            job.unique_states & JobState::Completed.bit(),
            JobState::Completed.bit()
        );
        assert_eq!(job.unique_states & JobState::Discarded.bit(), 0);
        let defaults = EnqueueOptions::new().build(&Noop).unwrap();
        assert_eq!(defaults.queue.as_str(), "default");
        assert_eq!(defaults.priority, DEFAULT_PRIORITY);
        assert!(defaults.run_at.is_none() && defaults.unique_key.is_none());
    }
}
