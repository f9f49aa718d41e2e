//! The [`JobStore`] trait: what a backend (Postgres, memory) does for clients and workers.
//! Every state change a worker makes is fenced by its attempt token: it applies only while the
//! row is `running`, locked by that worker, at that attempt ([`AttemptToken`]), so a late,
//! frozen or rescued worker can never change another attempt's row.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use windlass_core::TenantScope;

use crate::counts::CountSnapshot;
use crate::error::Result;
use crate::limits::QueueLimits;
use crate::model::{
    AttemptToken, Enqueued, FetchedJob, Finish, HeartbeatReply, JobFilter, JobId, JobRecord,
    NewJob, QueueCount, Rescued,
};

/// Wake-up message meaning "look at every queue" (sent after a listener reconnects, when
/// notifications may have been lost).
pub const WAKE_ALL: &str = "*";

/// A job backend. By-id operations, listings and counts take a [`TenantScope`]: a job of a
/// tenant the scope does not allow behaves as a missing one. Implemented by [`PgJobStore`](crate::postgres::PgJobStore) and
/// [`MemoryJobStore`](crate::memory::MemoryJobStore); the conformance suite in `windlass-testkit`
/// checks both against the same expectations.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Inserts jobs, atomically: all or none (Postgres: one transaction; COPY for large
    /// batches). A job whose unique key is held by a job in a covered state (or by an earlier
    /// job of the batch) is skipped and reported as [`Enqueued::Duplicate`] with the holder's
    /// id, or, with [`OnConflict::Replace`](crate::OnConflict::Replace) and a holder still
    /// waiting, replaces the holder's args, `run_at` and priority and is reported as
    /// [`Enqueued::Replaced`] (a running holder is never changed). Results are in input order.
    async fn insert(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;

    /// Claims up to `limit` due jobs of `queue` (available, or scheduled / retryable whose
    /// `run_at` passed) whose kind is one of `kinds` (empty: any kind), most urgent first
    /// (priority, then `run_at`, then id), moving them to `running`, locked by `worker`,
    /// attempt + 1. A paused queue yields nothing.
    async fn fetch(
        &self,
        queue: &str,
        kinds: &[String],
        limit: usize,
        worker: &str,
    ) -> Result<Vec<FetchedJob>>;

    /// Applies attempt outcomes in one go, each only if its row is still `running`, locked by
    /// `worker`, at the given attempt. A stop requested by id
    /// ([`JobRecord::stop_requested`]) replaces a retry or a snooze, and any outcome of an
    /// [interrupted](Finish::interrupted) attempt (recording a "by request" error when it
    /// changed the state); other outcomes stand. Returns how many applied.
    async fn finish(&self, worker: &str, finished: &[Finish]) -> Result<u64>;

    /// Refreshes `heartbeat_at` of the attempts `worker` runs, each only while its row is
    /// still `running`, locked by `worker`, at that attempt. Returns the attempts still held
    /// and the stop requests among them; a missing attempt was rescued meanwhile. Backends
    /// should run it apart from the connections jobs use (Postgres: a dedicated connection),
    /// so busy jobs cannot starve it. Called with no attempts, it still checks the store is
    /// reachable (the worker's self-fencing counts on it).
    async fn heartbeat(&self, worker: &str, attempts: &[AttemptToken]) -> Result<HeartbeatReply>;

    /// Moves `running` jobs whose heartbeat is older than `stale_after` back to `retryable`
    /// (or `discarded` when no attempt is left, or the requested state when a stop was
    /// requested), recording why.
    async fn rescue(&self, stale_after: Duration) -> Result<Vec<Rescued>>;

    /// Puts attempts `worker` still holds (fenced like [`JobStore::finish`]) back to
    /// `available` without counting the attempt, or to the requested state when a stop was
    /// requested. Only for attempts whose task has ended (graceful shutdown). Returns how many
    /// moved.
    async fn release(&self, worker: &str, attempts: &[AttemptToken]) -> Result<u64>;

    /// The earliest `run_at` among jobs of `queue` of one of `kinds` (empty: any) waiting for
    /// a worker, `None` when there is none or the queue is paused.
    async fn next_due(&self, queue: &str, kinds: &[String]) -> Result<Option<DateTime<Utc>>>;

    /// Cancels a job that is not final yet. A waiting job becomes `cancelled` at once; for a
    /// running job it is a request: the row stays `running` (with
    /// [`JobRecord::stop_requested`]), its worker learns it at its next heartbeat and stops the
    /// attempt, and the row becomes `cancelled` when the attempt ends. False when the job is
    /// missing or already final.
    async fn cancel(&self, scope: &TenantScope, id: JobId) -> Result<bool>;

    /// Makes a job that is neither running nor waiting available now (granting one more
    /// attempt if it had none left); a waiting job is moved up to now. False when the job is
    /// missing; [`Error::JobRunning`](crate::Error::JobRunning) when it is running (a second
    /// attempt would overlap the first).
    async fn retry_now(&self, scope: &TenantScope, id: JobId) -> Result<bool>;

    /// Dead-letters a job that is not final yet; like [`JobStore::cancel`], a request for a
    /// running job (the row becomes `discarded` when its attempt ends). False when missing or
    /// final.
    async fn discard(&self, scope: &TenantScope, id: JobId) -> Result<bool>;

    /// Deletes final jobs that reached their final state more than `older_than` ago.
    async fn prune(&self, older_than: Duration) -> Result<u64>;

    /// Pauses (`true`) or resumes a queue, persistently: no worker fetches from a paused queue.
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()>;

    /// Sets (`Some`) or removes a queue's global concurrency limit: at most that many of its
    /// jobs run at once across every worker, enforced at fetch (workers' own per-queue
    /// concurrency still applies). Takes effect within a second.
    async fn set_global_limit(&self, queue: &str, limit: Option<u32>) -> Result<()>;

    /// Sets every limit of `queue` at once, replacing what was set (including the global
    /// concurrency limit): see [`QueueLimits`]. Enforced at fetch across every worker; takes
    /// effect within a second. Refuses invalid limits with [`Error::InvalidOption`](crate::Error::InvalidOption).
    async fn set_queue_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()>;

    /// The queues with any limit set, by queue name.
    async fn queue_limits(&self) -> Result<Vec<(String, QueueLimits)>>;

    /// The paused queues.
    async fn paused_queues(&self) -> Result<Vec<String>>;

    /// The queues with a global concurrency limit and their limit, by queue name.
    async fn global_limits(&self) -> Result<Vec<(String, u32)>>;

    /// One job, if it exists and `scope` allows its tenant.
    async fn get(&self, scope: &TenantScope, id: JobId) -> Result<Option<JobRecord>>;

    /// A page of the jobs `scope` allows that match `filter`, by id. Postgres answers any
    /// filter from an index range (per state when several or none are asked, merged by id), so
    /// a filter matching few or no rows costs about as much as one matching many.
    async fn list(&self, scope: &TenantScope, filter: &JobFilter) -> Result<Vec<JobRecord>>;

    /// Whether [`JobFilter::args_contains`] is answered from an index (Postgres: the opt-in
    /// trigram index of [`crate::postgres::create_args_search_index`] exists and is valid).
    /// When false the filter is still exact but reads every row of the other filters' range.
    /// The default (and the memory store, which scans its jobs anyway) is false.
    async fn args_search_indexed(&self) -> Result<bool> {
        Ok(false)
    }

    /// Counts by queue and state of the jobs `scope` allows: exact, live, and a scan of the
    /// jobs (Postgres: of the table, or of the tenant's index range).
    async fn counts(&self, scope: &TenantScope) -> Result<Vec<QueueCount>>;

    /// Recounts the count snapshot (by queue, state and tenant, plus the totals over every
    /// tenant) and records when. One scan of the jobs; the maintenance leader calls it. A call
    /// while another refresh runs (another process) returns at once without recounting.
    async fn refresh_counts(&self) -> Result<()>;

    /// The counts of the jobs `scope` allows as of the last [`JobStore::refresh_counts`]
    /// (never counted on the call; [`CountSnapshot::refreshed_at`] is `None` before the
    /// first refresh).
    async fn count_snapshot(&self, scope: &TenantScope) -> Result<CountSnapshot>;

    /// Takes or renews the maintenance lease for `ttl` (one leader among all workers runs the
    /// depth gauges' count and the pruning). True when `worker` holds it now: it was free,
    /// expired, or already `worker`'s.
    async fn try_lead(&self, worker: &str, ttl: Duration) -> Result<bool>;

    /// Wake-ups: the name of a queue that got new work (or [`WAKE_ALL`]). `None` when the
    /// store cannot notify (poll-only); workers then rely on polling.
    async fn subscribe(&self) -> Result<Option<broadcast::Receiver<String>>>;
}

/// A global concurrency limit must be in `1..=i32::MAX`.
#[cfg_attr(not(any(feature = "memory", feature = "postgres")), allow(dead_code))]
pub(crate) fn validate_limit(limit: Option<u32>) -> Result<()> {
    match limit {
        Some(n) if n == 0 || n > i32::MAX as u32 => Err(crate::Error::InvalidOption {
            option: "global_limit",
            reason: format!("{n} is outside 1..={}", i32::MAX),
        }),
        _ => Ok(()),
    }
}
