//! The typed side: the [`Job`] trait, the context an attempt gets, what a job may return, and
//! the enqueue options that turn a job value into a validated [`NewJob`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use windlass_core::{BoxError, Name, OrgId, RetryPolicy};

use crate::error::{Error, Result};
use crate::model::{JobId, JobState, NewJob};

/// Highest (least urgent) priority accepted; 0 runs first.
pub const MAX_PRIORITY: i16 = 9;
/// Most attempts a job may be given.
pub const MAX_ATTEMPTS: u32 = 1_000;
/// Longest per-job timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Furthest in the future a job may be scheduled.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// A background job: a serde value (its arguments) with a kind name and an async `run`.
///
/// The value is serialized into the `args` column at enqueue and deserialized by the worker
/// for each attempt, so keep it small (ids, not whole records) and evolve it compatibly: a row
/// whose arguments no longer deserialize is discarded at once with the decode error.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use windlass_jobs::{Job, JobContext, JobError};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendInvoice { invoice_id: u64 }
///
/// impl Job for SendInvoice {
///     const KIND: &'static str = "send_invoice";
///     async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
///         if ctx.attempt() > 3 { return Err(JobError::discard("mail server keeps refusing")); }
///         let _ = self.invoice_id;
///         Ok(())
///     }
/// }
/// # let _ = SendInvoice { invoice_id: 42 };
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind name stored with each row and used to find the job's type in a worker.
    /// `[A-Za-z0-9._-]`, 1-200 bytes; never rename it while rows of it may exist.
    const KIND: &'static str;

    /// Runs one attempt. `Err` is retried with backoff (see [`JobError`] for other outcomes);
    /// a panic is caught and retried too.
    fn run(&self, ctx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;

    /// This kind's attempt timeout. A job's own [`EnqueueOptions::timeout`] wins; `None` (the
    /// default): the worker's [`WorkerConfig::default_timeout`](crate::WorkerConfig).
    fn timeout() -> Option<Duration> {
        None
    }

    /// This kind's backoff between attempts. `None` (the default): the worker's
    /// [`WorkerConfig::retry`](crate::WorkerConfig).
    fn retry_policy() -> Option<RetryPolicy> {
        None
    }
}

/// What one attempt knows about itself.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) queue: String,
    pub(crate) org_id: Option<String>,
    pub(crate) cancel: CancellationToken,
    pub(crate) blocking: Arc<BlockingTracker>,
    pub(crate) worker: Arc<str>,
    pub(crate) states: Arc<States>,
}

/// Shared values handed to jobs by type ([`Worker::state`](crate::Worker::state)).
pub(crate) type States =
    std::collections::HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>;

/// Counts the [`JobContext::run_blocking`] calls of one attempt still running, so the worker
/// holds the attempt's slot until they returned.
#[derive(Debug, Default)]
pub(crate) struct BlockingTracker {
    running: AtomicUsize,
    idle: Notify,
}

impl BlockingTracker {
    fn enter(self: &Arc<Self>) -> BlockingGuard {
        self.running.fetch_add(1, Ordering::SeqCst);
        BlockingGuard(self.clone())
    }

    /// Waits until no blocking call of the attempt runs.
    #[cfg_attr(not(any(feature = "memory", feature = "postgres")), allow(dead_code))]
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct BlockingGuard(Arc<BlockingTracker>);

impl Drop for BlockingGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        self.0.idle.notify_waiters();
    }
}

impl JobContext {
    /// The job's id.
    pub fn job_id(&self) -> JobId {
        self.id
    }

    /// This attempt's number, from 1 (`u32` like the bus's `DeliveryContext::attempt`; bind it
    /// to Postgres as `i64::from(ctx.attempt())`).
    pub fn attempt(&self) -> u32 {
        u32::try_from(self.attempt).unwrap_or(0)
    }

    /// This attempt's fencing token (job id + attempt).
    pub fn token(&self) -> crate::AttemptToken {
        crate::AttemptToken::new(self.id, self.attempt)
    }

    /// The id of the worker running this attempt (the row's `locked_by`, its lease).
    pub fn worker_id(&self) -> &str {
        &self.worker
    }

    /// The shared value of type `S` the worker was given with
    /// [`Worker::state`](crate::Worker::state) (a pool, a client, your app state): no
    /// `static` needed. A worker without one is misconfigured: the error retries the attempt
    /// (a fixed deployment runs it).
    ///
    /// ```ignore
    /// let pool = ctx.state::<sqlx::PgPool>()?;
    /// ```
    pub fn state<S: Send + Sync + 'static>(&self) -> Result<Arc<S>, JobError> {
        self.states
            .get(&std::any::TypeId::of::<S>())
            .cloned()
            .and_then(|s| s.downcast::<S>().ok())
            .ok_or_else(|| {
                JobError::retry(format!(
                    "no state of type {} was given to this worker (Worker::state)",
                    std::any::type_name::<S>()
                ))
            })
    }

    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.max_attempts).unwrap_or(0)
    }

    /// The queue it runs in.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The tenant it was enqueued for.
    pub fn org_id(&self) -> Option<&str> {
        self.org_id.as_deref()
    }

    /// Fires when the attempt should stop: the job was cancelled by id, it was rescued
    /// elsewhere, its timeout passed, or the worker is shutting down past its deadline.
    /// Long jobs check it (`token.cancelled().await` in a `select!`) to stop cleanly; the
    /// worker aborts the attempt shortly after it fires anyway.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Runs blocking code (CPU work, a synchronous client) on Tokio's blocking pool and waits
    /// for it. **The rule for blocking jobs**: never block inside `run` itself (it stalls a
    /// runtime thread, and the worker's timeout and cancellation can only take effect at an
    /// `.await`); call this instead. Blocking code cannot be interrupted: when the attempt
    /// times out or is cancelled, the worker stops awaiting it but keeps the attempt's slot
    /// (the queue's concurrency is never exceeded) and its lease (the job is not rescued nor
    /// run again) until the closure has returned; only then is the outcome written. Check
    /// [`JobContext::cancellation`] inside long loops to stop early. A panic in `f` is a panic
    /// of the attempt (retried).
    pub async fn run_blocking<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let guard = self.blocking.enter();
        let handle = tokio::task::spawn_blocking(move || {
            let _running = guard;
            f()
        });
        match handle.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The blocking pool shut down (the runtime is going away): nothing can continue.
            Err(e) => panic!("blocking job work was cancelled: {e}"),
        }
    }
}

/// How a failed attempt should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobErrorKind {
    /// Retry with backoff while attempts remain (the default of `?`).
    Retry,
    /// Do not retry: move the job to `discarded` now.
    Discard,
    /// Stop: move the job to `cancelled`.
    Cancel,
    /// Not a failure: run again after this delay without counting the attempt.
    Snooze(Duration),
}

/// The error a job returns. Any `std::error::Error` converts into a retryable one with `?`;
/// [`JobError::discard`], [`JobError::cancel`] and [`JobError::snooze`] choose another outcome.
pub struct JobError {
    pub(crate) kind: JobErrorKind,
    pub(crate) source: BoxError,
}

impl JobError {
    /// A failure to retry with backoff.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        Self {
            kind: JobErrorKind::Retry,
            source: error.into(),
        }
    }

    /// A failure retrying cannot fix: the job goes to `discarded` now.
    pub fn discard(error: impl Into<BoxError>) -> Self {
        Self {
            kind: JobErrorKind::Discard,
            source: error.into(),
        }
    }

    /// The job decided to stop: it goes to `cancelled`.
    pub fn cancel(reason: impl Into<BoxError>) -> Self {
        Self {
            kind: JobErrorKind::Cancel,
            source: reason.into(),
        }
    }

    /// Run again after `delay`; the attempt is not counted.
    pub fn snooze(delay: Duration) -> Self {
        Self {
            kind: JobErrorKind::Snooze(delay),
            source: format!("snoozed for {delay:?}").into(),
        }
    }

    /// How the worker treats it.
    pub fn kind(&self) -> JobErrorKind {
        self.kind
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(error: E) -> Self {
        Self::retry(error)
    }
}

/// What a unique job's key covers: the key, an optional period bucket, and the states in
/// which an existing job blocks a new one.
///
/// The stored key is `job:{kind}:{key}` (plus `:{bucket}` with a period, the bucket being the
/// enqueue time divided by the period), so one key never blocks another kind. The covered
/// states always include the pending ones (available, scheduled, running, retryable); by
/// default `completed` is covered too, `cancelled` and `discarded` are not.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct UniqueOptions {
    /// The caller's key (e.g. the invoice id).
    pub key: String,
    /// Uniqueness window; `None`: for as long as a covered job exists.
    pub period: Option<Duration>,
    /// Covered states.
    pub states: Vec<JobState>,
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
        }
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
}

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
        })
    }
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
