//! # windlass-jobs
//!
//! Background jobs on Postgres (or in memory for tests): typed jobs, named queues with their
//! own concurrency, priorities, scheduled and cron jobs, retries with backoff and jitter, a
//! dead-letter state, per-job timeouts, unique jobs, transactional and bulk enqueue,
//! heartbeat-based rescue of jobs whose worker died, graceful shutdown, and metrics.
//!
//! - [`Job`]: a serde struct with a [`Job::KIND`] and an async `run`.
//! - [`Jobs`]: the client handle: enqueue (one, many), cancel / retry / discard by id, pause,
//!   prune, list.
//! - [`Worker`]: fetches and runs jobs; start as many as you like, in as many processes.
//! - Stores ([`JobStore`]): [`postgres::PgJobStore`] (feature `postgres`) and
//!   [`memory::MemoryJobStore`] (feature `memory`, default), with the same semantics.
//! - Tracing (feature `otel`): an enqueue stores the current span's W3C trace context with the
//!   job, and the worker's `windlass.job` span continues it as its parent (`docs/tracing.md`).
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use windlass_jobs::{EnqueueOptions, Job, JobContext, JobError, JobState, Jobs, Worker, WorkerConfig};
//! use windlass_jobs::memory::MemoryJobStore;
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendWelcome { user_id: u64 }
//!
//! impl Job for SendWelcome {
//!     const KIND: &'static str = "send_welcome";
//!     async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
//!         println!("welcoming user {} (attempt {})", self.user_id, ctx.attempt());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let jobs = Jobs::new(MemoryJobStore::new());
//! let worker = Worker::new(jobs.store().clone())
//!     .register::<SendWelcome>()
//!     .config(WorkerConfig::default().queue("critical", 20))
//!     .start()?;
//!
//! let id = jobs
//!     .enqueue(&SendWelcome { user_id: 7 }, &EnqueueOptions::new().queue("critical"))
//!     .await?
//!     .id()
//!     .unwrap();
//! // Wait until it ran.
//! let deadline = std::time::Instant::now() + Duration::from_secs(5);
//! while jobs.get(id).await?.unwrap().state != JobState::Completed {
//!     assert!(std::time::Instant::now() < deadline);
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//! }
//! worker.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! With Postgres: `windlass_jobs::postgres::migrate(&pool).await?` once, then
//! `Jobs::new(PgJobStore::new(pool))`; enqueue inside your own transaction with
//! [`postgres::PgJobStore::insert_in`]. Design notes: `docs/jobs.md` in the repository.
#![doc(test(attr(deny(warnings))))]

mod counts;
mod cron;
mod error;
mod job;
mod limits;
#[cfg(feature = "memory")]
pub mod memory;
pub mod metrics;
mod model;
mod options;
mod otel;
#[cfg(feature = "postgres")]
pub mod postgres;
mod store;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use windlass_core::{OrgId, TenantScope};

pub use counts::CountSnapshot;
pub use cron::{CatchUp, CronJob};
pub use error::{Error, Result};
pub use job::{Job, JobContext, JobError, JobErrorKind};
pub use limits::{MAX_RATE_PERIOD, PartitionBy, QueueLimits, RateLimit};
pub use model::{
    AttemptError, AttemptToken, Enqueued, FetchedJob, Finish, HeartbeatReply, JobFilter, JobId,
    JobRecord, JobState, NewJob, OnConflict, Outcome, QueueCount, Rescued,
};
pub use options::{
    DEFAULT_MAX_ARGS_SIZE, DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, DEFAULT_QUEUE, EnqueueOptions,
    MAX_ATTEMPTS, MAX_PRIORITY, MAX_SCHEDULE_AHEAD, MAX_TIMEOUT, UniqueOptions,
};
pub use store::{JobStore, WAKE_ALL};
pub use worker::{RunningWorker, Worker, WorkerConfig};

/// The client handle: enqueue and manage jobs. Cheap to clone.
///
/// A handle has a [`TenantScope`]: [`Jobs::new`] sees every tenant (an operator's view);
/// [`Jobs::for_tenant`] gives one tenant's handle, which can never read or change another
/// tenant's jobs: their ids behave as missing ones, listings and counts leave them out, jobs it
/// enqueues get its `org_id`, and queue-wide operations (pause, resume, prune) are refused.
#[derive(Clone)]
pub struct Jobs {
    store: Arc<dyn JobStore>,
    scope: TenantScope,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// A handle on `store`, scoped to every tenant.
    pub fn new(store: impl JobStore) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// A handle on a shared store, scoped to every tenant.
    pub fn from_arc(store: Arc<dyn JobStore>) -> Self {
        Self {
            store,
            scope: TenantScope::All,
        }
    }

    /// This handle limited to `scope` (e.g. `TenantScope::org(org)` for one tenant's API).
    pub fn scoped(&self, scope: TenantScope) -> Self {
        Self {
            store: self.store.clone(),
            scope,
        }
    }

    /// This handle limited to tenant `org`.
    pub fn for_tenant(&self, org: OrgId) -> Self {
        self.scoped(TenantScope::org(org))
    }

    /// The handle's tenant scope.
    pub fn scope(&self) -> &TenantScope {
        &self.scope
    }

    /// The store (to build a [`Worker`] on, or to call it directly).
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// Gives rows without a tenant this handle's tenant; refuses rows of another tenant.
    fn own(&self, mut rows: Vec<NewJob>) -> Result<Vec<NewJob>> {
        if let TenantScope::Org(org) = &self.scope {
            for row in &mut rows {
                match &row.org_id {
                    None => row.org_id = Some(org.clone()),
                    Some(o) if o == org => {}
                    Some(o) => {
                        return Err(Error::OutOfScope {
                            what: format!(
                                "a job of tenant {:?} enqueued through tenant {:?}'s handle",
                                o.as_str(),
                                org.as_str()
                            ),
                        });
                    }
                }
            }
        }
        Ok(rows)
    }

    fn operator_only(&self, op: &str) -> Result<()> {
        match &self.scope {
            TenantScope::Org(org) => Err(Error::OutOfScope {
                what: format!(
                    "{op} affects every tenant; tenant {:?}'s handle may not",
                    org.as_str()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Enqueues one job.
    pub async fn enqueue<J: Job>(&self, job: &J, options: &EnqueueOptions) -> Result<Enqueued> {
        otel::enqueue(J::KIND, async {
            let rows = self.own(vec![options.build(job)?])?;
            let mut out = self.store.insert(rows).await?;
            Ok(out.pop().unwrap_or(Enqueued::Duplicate(None)))
        })
        .await
    }

    /// Enqueues many jobs with the same options, atomically at any size (one transaction on
    /// Postgres: COPY from 2 000 rows, `unnest` statements below): nothing is inserted if any
    /// job fails validation or the database refuses any row.
    pub async fn enqueue_many<'a, J: Job>(
        &self,
        jobs: impl IntoIterator<Item = &'a J>,
        options: &EnqueueOptions,
    ) -> Result<Vec<Enqueued>> {
        otel::enqueue(J::KIND, async {
            let rows = jobs
                .into_iter()
                .map(|j| options.build(j))
                .collect::<Result<Vec<_>>>()?;
            self.store.insert(self.own(rows)?).await
        })
        .await
    }

    /// Inserts already built rows (mixed kinds and options) in one bulk insert.
    pub async fn insert(&self, rows: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.store.insert(self.own(rows)?).await
    }

    /// Cancels a job that is not final. A waiting job is cancelled at once; for a running job
    /// this is a request: its worker stops the attempt after its next heartbeat and the row
    /// becomes `cancelled` when the attempt has ended. False when missing (or out of scope) or
    /// already final.
    pub async fn cancel(&self, id: JobId) -> Result<bool> {
        self.store.cancel(&self.scope, id).await
    }

    /// Runs a job that is not running again now. False when missing (or out of scope);
    /// [`Error::JobRunning`] when running (a second attempt would overlap the first: cancel
    /// it and retry once it is final).
    pub async fn retry_now(&self, id: JobId) -> Result<bool> {
        self.store.retry_now(&self.scope, id).await
    }

    /// Dead-letters a job that is not final (for a running job, a request like
    /// [`Jobs::cancel`]). False when missing (or out of scope) or already final.
    pub async fn discard(&self, id: JobId) -> Result<bool> {
        self.store.discard(&self.scope, id).await
    }

    /// Pauses a queue for every worker (operator handles only).
    pub async fn pause(&self, queue: &str) -> Result<()> {
        self.operator_only("pausing a queue")?;
        self.store.set_paused(queue, true).await
    }

    /// Resumes a paused queue (operator handles only).
    pub async fn resume(&self, queue: &str) -> Result<()> {
        self.operator_only("resuming a queue")?;
        self.store.set_paused(queue, false).await
    }

    /// Sets (`Some(n)`) or removes a queue's global concurrency limit: at most `n` of its jobs
    /// run at once across every worker and process, enforced in the store at fetch (operator
    /// handles only). Takes effect within a second.
    pub async fn set_global_limit(&self, queue: &str, limit: Option<u32>) -> Result<()> {
        self.operator_only("limiting a queue")?;
        self.store.set_global_limit(queue, limit).await
    }

    /// The queues with a global concurrency limit and their limit (queues are shared by every
    /// tenant, so any handle may read them).
    pub async fn global_limits(&self) -> Result<Vec<(String, u32)>> {
        self.store.global_limits().await
    }

    /// Sets every limit of a queue at once, replacing the ones set before (the global
    /// concurrency limit included): concurrency and rate for the whole queue and per partition
    /// (tenant, kind or an args field), with round-robin claims between partitions (operator
    /// handles only). Enforced in the store at fetch, across every worker and process; takes
    /// effect within a second. `QueueLimits::new()` removes them all. See [`QueueLimits`] and
    /// `docs/jobs.md`, "Limits across workers".
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), windlass_jobs::Error> {
    /// use std::time::Duration;
    /// use windlass_jobs::{Jobs, PartitionBy, QueueLimits, RateLimit, memory::MemoryJobStore};
    ///
    /// let jobs = Jobs::new(MemoryJobStore::new());
    /// // Each account at most 2 at a time, 100 jobs per minute for the whole queue.
    /// jobs.set_queue_limits(
    ///     "sync",
    ///     QueueLimits::new()
    ///         .rate(RateLimit::new(100, Duration::from_secs(60)))
    ///         .partition_by(PartitionBy::Arg("account_id".into()))
    ///         .per_partition(2),
    /// )
    /// .await?;
    /// assert_eq!(jobs.queue_limits().await?.len(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn set_queue_limits(&self, queue: &str, limits: QueueLimits) -> Result<()> {
        self.operator_only("limiting a queue")?;
        self.store.set_queue_limits(queue, &limits).await
    }

    /// The queues with any limit set, by queue name (any handle may read them).
    pub async fn queue_limits(&self) -> Result<Vec<(String, QueueLimits)>> {
        self.store.queue_limits().await
    }

    /// Deletes final jobs older than `older_than` (operator handles only; workers also do it on
    /// their own, see [`WorkerConfig::retention`]).
    pub async fn prune(&self, older_than: Duration) -> Result<u64> {
        self.operator_only("pruning")?;
        self.store.prune(older_than).await
    }

    /// One job (`None` when missing or out of scope).
    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>> {
        self.store.get(&self.scope, id).await
    }

    /// A page of jobs matching `filter`, by id, within the handle's scope.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        self.store.list(&self.scope, filter).await
    }

    /// Job counts by queue and state, within the handle's scope: exact and live, but a count
    /// over the jobs table (seconds at ten million rows). Pages and dashboards should read
    /// [`Jobs::count_snapshot`] instead.
    pub async fn counts(&self) -> Result<Vec<QueueCount>> {
        self.store.counts(&self.scope).await
    }

    /// Whether [`JobFilter::args_contains`] is answered from an index: the opt-in trigram index
    /// ([`postgres::create_args_search_index`]) exists. Without it the filter is exact but
    /// reads every row of the other filters' range until the page fills.
    pub async fn args_search_indexed(&self) -> Result<bool> {
        self.store.args_search_indexed().await
    }

    /// Job counts by queue and state within the handle's scope, as of the last refresh of the
    /// snapshot (see [`CountSnapshot`]): cheap at any table size, never counted on the call.
    pub async fn count_snapshot(&self) -> Result<CountSnapshot> {
        self.store.count_snapshot(&self.scope).await
    }

    /// Recounts the snapshot [`Jobs::count_snapshot`] reads, now (operator handles only; a
    /// worker's maintenance leader does it on its own, see
    /// [`WorkerConfig::counts_interval`]). One scan of the jobs table.
    pub async fn refresh_counts(&self) -> Result<()> {
        self.operator_only("recounting the job counts")?;
        self.store.refresh_counts().await
    }
}
