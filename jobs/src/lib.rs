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
//! - Stores ([`JobStore`]): [`postgres::PgStore`] (feature `postgres`) and
//!   [`memory::MemoryStore`] (feature `memory`, default), with the same semantics.
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use windlass_jobs::{EnqueueOptions, Job, JobContext, JobError, JobState, Jobs, Worker, WorkerConfig};
//! use windlass_jobs::memory::MemoryStore;
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
//! let jobs = Jobs::new(MemoryStore::new());
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
//! `Jobs::new(PgStore::new(pool))`; enqueue inside your own transaction with
//! [`postgres::PgStore::insert_in`]. Design notes: `docs/jobs.md` in the repository.
#![doc(test(attr(deny(warnings))))]

mod cron;
mod error;
mod job;
#[cfg(feature = "memory")]
pub mod memory;
pub mod metrics;
mod model;
#[cfg(feature = "postgres")]
pub mod postgres;
mod store;
mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use cron::CronJob;
pub use error::{Error, Result};
pub use job::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, DEFAULT_QUEUE, EnqueueOptions, Job, JobContext,
    JobError, JobErrorKind, MAX_ATTEMPTS, MAX_PRIORITY, MAX_SCHEDULE_AHEAD, MAX_TIMEOUT,
    UniqueOptions,
};
pub use model::{
    AttemptError, AttemptToken, Enqueued, FetchedJob, Finish, HeartbeatReply, JobFilter, JobId,
    JobRecord, JobState, NewJob, Outcome, QueueCount, Rescued,
};
pub use store::{JobStore, WAKE_ALL};
pub use worker::{RunningWorker, Worker, WorkerConfig};

/// The client handle: enqueue and manage jobs. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    store: Arc<dyn JobStore>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

impl Jobs {
    /// A handle on `store`.
    pub fn new(store: impl JobStore) -> Self {
        Self {
            store: Arc::new(store),
        }
    }

    /// A handle on a shared store.
    pub fn from_arc(store: Arc<dyn JobStore>) -> Self {
        Self { store }
    }

    /// The store (to build a [`Worker`] on, or to call it directly).
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// Enqueues one job.
    pub async fn enqueue<J: Job>(&self, job: &J, options: &EnqueueOptions) -> Result<Enqueued> {
        let row = options.build(job)?;
        let mut out = self.store.insert(vec![row]).await?;
        Ok(out.pop().unwrap_or(Enqueued::Duplicate))
    }

    /// Enqueues many jobs with the same options in one bulk insert (per 10 000 on Postgres).
    /// Nothing is inserted if any job fails validation.
    pub async fn enqueue_many<'a, J: Job>(
        &self,
        jobs: impl IntoIterator<Item = &'a J>,
        options: &EnqueueOptions,
    ) -> Result<Vec<Enqueued>> {
        let rows = jobs
            .into_iter()
            .map(|j| options.build(j))
            .collect::<Result<Vec<_>>>()?;
        self.store.insert(rows).await
    }

    /// Inserts already built rows (mixed kinds and options) in one bulk insert.
    pub async fn insert(&self, rows: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.store.insert(rows).await
    }

    /// Cancels a job that is not final. A waiting job is cancelled at once; for a running job
    /// this is a request: its worker stops the attempt after its next heartbeat and the row
    /// becomes `cancelled` when the attempt has ended. False when missing or already final.
    pub async fn cancel(&self, id: JobId) -> Result<bool> {
        self.store.cancel(id).await
    }

    /// Runs a job that is not running again now. False when missing;
    /// [`Error::JobRunning`] when running (a second attempt would overlap the first: cancel
    /// it and retry once it is final).
    pub async fn retry_now(&self, id: JobId) -> Result<bool> {
        self.store.retry_now(id).await
    }

    /// Dead-letters a job that is not final (for a running job, a request like
    /// [`Jobs::cancel`]). False when missing or already final.
    pub async fn discard(&self, id: JobId) -> Result<bool> {
        self.store.discard(id).await
    }

    /// Pauses a queue for every worker.
    pub async fn pause(&self, queue: &str) -> Result<()> {
        self.store.set_paused(queue, true).await
    }

    /// Resumes a paused queue.
    pub async fn resume(&self, queue: &str) -> Result<()> {
        self.store.set_paused(queue, false).await
    }

    /// Deletes final jobs older than `older_than` (workers also do it on their own, see
    /// [`WorkerConfig::retention`]).
    pub async fn prune(&self, older_than: Duration) -> Result<u64> {
        self.store.prune(older_than).await
    }

    /// One job.
    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>> {
        self.store.get(id).await
    }

    /// A page of jobs matching `filter`, by id.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        self.store.list(filter).await
    }

    /// Job counts by queue and state.
    pub async fn counts(&self) -> Result<Vec<QueueCount>> {
        self.store.counts().await
    }
}
