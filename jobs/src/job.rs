//! The typed side: the [`Job`] trait, the context an attempt gets, and what a job may return.
//! The enqueue options live in `options.rs`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use windlass_core::{BoxError, RetryPolicy};

use crate::model::JobId;

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

    /// This kind's attempt timeout. A job's own [`EnqueueOptions::timeout`](crate::EnqueueOptions::timeout) wins; `None` (the
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
