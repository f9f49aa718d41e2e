//! The data a job store keeps and exchanges with workers: states, rows, new jobs, outcomes.
//! Plain data only; no I/O lives here.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use windlass_core::{Name, OrgId};

/// A job's id (the `id` column, a `bigserial`).
pub type JobId = i64;

/// Where a job is in its life.
///
/// `available` / `scheduled` / `retryable` wait for a worker (the last two until `run_at`),
/// `running` is held by one worker, and `completed`, `cancelled`, `discarded` are final
/// (`discarded` is the dead-letter state: attempts used up, or arguments that no longer decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobState {
    /// Ready to run now.
    Available,
    /// Waits for its `run_at`.
    Scheduled,
    /// Held by a worker.
    Running,
    /// Failed an attempt; runs again at `run_at`.
    Retryable,
    /// Ran successfully.
    Completed,
    /// Cancelled by request or by the job itself.
    Cancelled,
    /// Dead-lettered: attempts exhausted, undecodable arguments, or discarded by request.
    Discarded,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Available,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Discarded,
    ];

    /// The states a job waits or runs in; unique keys always cover them.
    pub const PENDING: [JobState; 4] = [
        JobState::Available,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retryable,
    ];

    /// The name stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
            JobState::Discarded => "discarded",
        }
    }

    /// Parses a `state` column value.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// True for `completed`, `cancelled` and `discarded`.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Discarded
        )
    }

    /// This state's bit in a unique-states mask (the `unique_states` column). Must match
    /// `windlass_jobs_state_bit` in the SQL migration.
    pub fn bit(self) -> i16 {
        1 << (self as i16)
    }

    /// The mask of a set of states.
    pub fn mask(states: &[JobState]) -> i16 {
        states.iter().fold(0, |m, s| m | s.bit())
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most attempt errors kept per job (the oldest make room): as many as a job may have
/// attempts, yet a job requeued forever (an unknown kind) cannot grow its row without bound.
#[cfg_attr(not(any(feature = "memory", feature = "postgres")), allow(dead_code))]
pub(crate) const MAX_RECORDED_ERRORS: usize = 1_000;

/// One failed attempt, as appended to the `errors` column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AttemptError {
    /// The attempt that failed (1-based).
    pub attempt: i32,
    /// When it failed.
    pub at: DateTime<Utc>,
    /// What went wrong.
    pub error: String,
    /// The worker that ran it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

impl AttemptError {
    /// An error of `attempt` happening now.
    pub fn new(attempt: i32, error: impl Into<String>, worker: Option<String>) -> Self {
        Self {
            attempt,
            at: Utc::now(),
            error: error.into(),
            worker,
        }
    }
}

/// A job as it is stored: every column of `windlass_jobs`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobRecord {
    /// Id.
    pub id: JobId,
    /// Queue.
    pub queue: String,
    /// Kind (the job type's [`Job::KIND`](crate::Job::KIND)).
    pub kind: String,
    /// Arguments (the serialized job).
    pub args: serde_json::Value,
    /// Tenant.
    pub org_id: Option<String>,
    /// Priority inside the queue, 0 runs first.
    pub priority: i16,
    /// State.
    pub state: JobState,
    /// Attempts started so far.
    pub attempt: i32,
    /// Attempts allowed in all.
    pub max_attempts: i32,
    /// When it may run (next).
    pub run_at: DateTime<Utc>,
    /// When the last attempt started.
    pub attempted_at: Option<DateTime<Utc>>,
    /// Last heartbeat of the worker running it.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// The worker holding it while `running`.
    pub locked_by: Option<String>,
    /// Unique key, if the job was enqueued as unique.
    pub unique_key: Option<String>,
    /// Each failed attempt's error, oldest first.
    pub errors: Vec<AttemptError>,
    /// Per-job timeout, if one was set.
    pub timeout: Option<Duration>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it reached a final state.
    pub finalized_at: Option<DateTime<Utc>>,
    /// A pending stop request of the running attempt (`cancelled` or `discarded`): the row
    /// moves to that state when the attempt ends. `None` when not running or not requested.
    pub stop_requested: Option<JobState>,
    /// W3C `traceparent` of the span that enqueued it (feature `otel`; `None` otherwise or
    /// when there was no OpenTelemetry context): the worker's `windlass.job` span continues it.
    pub traceparent: Option<String>,
    /// W3C `tracestate` that goes with `traceparent`.
    pub tracestate: Option<String>,
}

/// One attempt of one job, as a worker holds it: the fencing token every transition a worker
/// makes (heartbeat, complete, fail, snooze, release) is conditional on, together with the
/// worker's id (its lease). A later attempt of the same job has a greater `attempt`, so a late
/// or rescued worker can never change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptToken {
    /// Job id.
    pub id: JobId,
    /// The attempt number (1-based) the worker runs.
    pub attempt: i32,
}

impl AttemptToken {
    /// The token of `attempt` of job `id`.
    pub fn new(id: JobId, attempt: i32) -> Self {
        Self { id, attempt }
    }
}

impl fmt::Display for AttemptToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {} attempt {}", self.id, self.attempt)
    }
}

/// What a heartbeat learned: which attempts the worker still holds (their `heartbeat_at` was
/// refreshed) and which of those have a stop request (cancel or discard by id) to act on.
/// An attempt in neither list was lost (rescued, or the row changed): stop it, its outcome
/// will be refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeartbeatReply {
    /// Attempts still held, their lease renewed.
    pub held: Vec<AttemptToken>,
    /// Held attempts with a stop request, and the state requested.
    pub stop: Vec<(AttemptToken, JobState)>,
}

/// A job ready to be inserted: built by [`EnqueueOptions`](crate::EnqueueOptions) from a typed
/// job, with every option already validated.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NewJob {
    /// Queue.
    pub queue: Name,
    /// Kind.
    pub kind: Name,
    /// Arguments.
    pub args: serde_json::Value,
    /// Tenant.
    pub org_id: Option<OrgId>,
    /// Priority, `0..=9`, 0 first.
    pub priority: i16,
    /// Not before this time (`None`: now).
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts in all.
    pub max_attempts: i32,
    /// Per-job timeout in milliseconds (`None`: the worker's default).
    pub timeout_ms: Option<i32>,
    /// Full unique key (kind, user key and period bucket), if unique.
    pub unique_key: Option<String>,
    /// Mask of the states the unique key covers ([`JobState::mask`]).
    pub unique_states: i16,
    /// W3C `traceparent` of the span that enqueued it (feature `otel`; `None` otherwise or
    /// when there was no OpenTelemetry context): the worker's `windlass.job` span continues it.
    pub traceparent: Option<String>,
    /// W3C `tracestate` that goes with `traceparent`.
    pub tracestate: Option<String>,
    /// What to do when the unique key is held ([`OnConflict`]; `Skip` for jobs without a key).
    pub on_conflict: OnConflict,
}

/// What an enqueue of a unique job does when another job holds its key
/// ([`UniqueOptions::on_conflict`](crate::UniqueOptions::on_conflict)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnConflict {
    /// Insert nothing; report [`Enqueued::Duplicate`] with the holder's id (the default).
    #[default]
    Skip,
    /// When the holder is still waiting (`available`, `scheduled` or `retryable`), replace its
    /// `args`, `run_at` and `priority` with the new job's, in place (same id, same attempts
    /// and errors), and report [`Enqueued::Replaced`]. A holder that is `running` (or final,
    /// when the key covers final states) is never touched: the enqueue is then a plain
    /// [`Enqueued::Duplicate`].
    Replace,
}

/// What an insert did for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Enqueued {
    /// A new row with this id.
    New(JobId),
    /// A job with the same unique key already exists in a covered state (or earlier in the
    /// same batch); nothing was inserted. Carries the existing job's id, `None` only when that
    /// job left its covered states (or was pruned) between the conflict and the lookup.
    Duplicate(Option<JobId>),
    /// A waiting job held the unique key and [`OnConflict::Replace`] was asked: that job's
    /// `args`, `run_at` and `priority` were replaced by this one's. Carries its id.
    Replaced(JobId),
}

impl Enqueued {
    /// The new job's id, `None` for a duplicate.
    pub fn id(self) -> Option<JobId> {
        match self {
            Enqueued::New(id) => Some(id),
            Enqueued::Duplicate(_) | Enqueued::Replaced(_) => None,
        }
    }

    /// The id of the job that holds the key, for a duplicate or a replacement.
    pub fn existing(self) -> Option<JobId> {
        match self {
            Enqueued::New(_) => None,
            Enqueued::Duplicate(existing) => existing,
            Enqueued::Replaced(id) => Some(id),
        }
    }

    /// The job this enqueue stands for: the new one, or the existing one for a duplicate or a
    /// replacement.
    pub fn job_id(self) -> Option<JobId> {
        match self {
            Enqueued::New(id) | Enqueued::Replaced(id) => Some(id),
            Enqueued::Duplicate(existing) => existing,
        }
    }
}

/// A job handed to a worker by a fetch; the row is now `running` and locked by that worker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FetchedJob {
    /// Id.
    pub id: JobId,
    /// Queue.
    pub queue: String,
    /// Kind.
    pub kind: String,
    /// Arguments.
    pub args: serde_json::Value,
    /// Tenant.
    pub org_id: Option<String>,
    /// Priority.
    pub priority: i16,
    /// This attempt's number (1-based).
    pub attempt: i32,
    /// Attempts allowed in all.
    pub max_attempts: i32,
    /// When it became due.
    pub run_at: DateTime<Utc>,
    /// Per-job timeout, if set.
    pub timeout: Option<Duration>,
    /// W3C `traceparent` of the span that enqueued it (feature `otel`; `None` otherwise or
    /// when there was no OpenTelemetry context): the worker's `windlass.job` span continues it.
    pub traceparent: Option<String>,
    /// W3C `tracestate` that goes with `traceparent`.
    pub tracestate: Option<String>,
}

impl FetchedJob {
    /// The attempt's fencing token.
    pub fn token(&self) -> AttemptToken {
        AttemptToken::new(self.id, self.attempt)
    }
}

/// How an attempt ended, as a worker reports it to the store.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// Success: `completed`.
    Completed,
    /// Failure with attempts left: `retryable` at `run_at`, error appended.
    Retry {
        /// Next attempt time.
        run_at: DateTime<Utc>,
        /// The failure.
        error: AttemptError,
    },
    /// Failure with no retry: `discarded`, error appended.
    Discard {
        /// The failure.
        error: AttemptError,
    },
    /// The job cancelled itself: `cancelled`, reason appended.
    Cancel {
        /// The reason.
        error: AttemptError,
    },
    /// Put back without counting the attempt (snoozed, or a kind this worker does not know):
    /// `retryable` at `run_at`, with an optional note appended.
    Requeue {
        /// When to try again.
        run_at: DateTime<Utc>,
        /// Why, if worth recording.
        error: Option<AttemptError>,
    },
}

impl Outcome {
    /// The state the job moves to.
    pub fn state(&self) -> JobState {
        match self {
            Outcome::Completed => JobState::Completed,
            Outcome::Retry { .. } | Outcome::Requeue { .. } => JobState::Retryable,
            Outcome::Discard { .. } => JobState::Discarded,
            Outcome::Cancel { .. } => JobState::Cancelled,
        }
    }

    /// The error to append, if any.
    pub fn error(&self) -> Option<&AttemptError> {
        match self {
            Outcome::Completed => None,
            Outcome::Retry { error, .. }
            | Outcome::Discard { error }
            | Outcome::Cancel { error } => Some(error),
            Outcome::Requeue { error, .. } => error.as_ref(),
        }
    }

    /// The next `run_at`, if it changes.
    pub fn run_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Outcome::Retry { run_at, .. } | Outcome::Requeue { run_at, .. } => Some(*run_at),
            _ => None,
        }
    }

    /// How the attempt counter moves: `-1` for a requeue (the attempt does not count).
    pub fn attempt_delta(&self) -> i32 {
        if matches!(self, Outcome::Requeue { .. }) {
            -1
        } else {
            0
        }
    }
}

/// The end of one attempt: which job, which attempt (the state guard), and how it ended.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Finish {
    /// Job id.
    pub id: JobId,
    /// The attempt number that ran. The store applies the outcome only if the row is still
    /// `running`, locked by this worker, at this attempt.
    pub attempt: i32,
    /// How it ended.
    pub outcome: Outcome,
    /// The attempt's cancellation token had fired before it ended (a stop request, a timeout,
    /// a lost lease or a shutdown). A stop requested by id then decides the final state even
    /// when the handler returned `Ok` (it may have returned early because it was asked to
    /// stop); an attempt that was not interrupted keeps a success, a discard or a cancel of
    /// its own.
    pub interrupted: bool,
}

impl Finish {
    /// Builds a finish record (not interrupted).
    pub fn new(id: JobId, attempt: i32, outcome: Outcome) -> Self {
        Self {
            id,
            attempt,
            outcome,
            interrupted: false,
        }
    }

    /// Marks whether the attempt's cancellation token fired before it ended.
    pub fn interrupted(mut self, interrupted: bool) -> Self {
        self.interrupted = interrupted;
        self
    }

    /// The attempt this outcome belongs to.
    pub fn token(&self) -> AttemptToken {
        AttemptToken::new(self.id, self.attempt)
    }
}

/// A job whose worker stopped heartbeating and that was moved back to `retryable` (or to
/// `discarded` when it had no attempts left).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rescued {
    /// Job id.
    pub id: JobId,
    /// Queue.
    pub queue: String,
    /// The state it was moved to.
    pub state: JobState,
}

/// Which jobs [`JobStore::list`](crate::JobStore::list) returns: filters are ANDed; the page
/// is ordered by id and starts after `after_id`.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct JobFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only these states (empty: all).
    pub states: Vec<JobState>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this tenant.
    pub org_id: Option<String>,
    /// Only jobs whose args, as JSON text, contain this text (case-sensitive substring; see
    /// [`JobFilter::args_contains`]).
    pub args_contains: Option<String>,
    /// Keyset cursor: ids greater than this.
    pub after_id: Option<JobId>,
    /// Page size (default 100, at most 10 000).
    pub limit: Option<u32>,
}

impl JobFilter {
    /// Everything, first page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only `state` (may be called several times).
    pub fn state(mut self, state: JobState) -> Self {
        self.states.push(state);
        self
    }

    /// Only `kind`.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Only tenant `org_id`.
    pub fn org_id(mut self, org_id: impl Into<String>) -> Self {
        self.org_id = Some(org_id.into());
        self
    }

    /// Only jobs whose args' JSON text contains `text`: a case-sensitive substring match, with
    /// no wildcard (`%`, `_` and `\` match themselves). An empty text matches every job.
    ///
    /// The JSON text is the store's: Postgres renders `jsonb` with a space after `:` and `,`
    /// and its own key order, the memory store compactly, so search for a key or a value
    /// (`"alice@example.com"`, `invoice-42`), not for punctuation spanning both.
    ///
    /// Cost: without an index Postgres reads every row of the other filters' range (the whole
    /// table when there is no other filter) until the page fills; with the opt-in trigram index
    /// ([`crate::postgres::create_args_search_index`]) it reads the index's candidate rows.
    /// See [`crate::Jobs::args_search_indexed`].
    pub fn args_contains(mut self, text: impl Into<String>) -> Self {
        self.args_contains = Some(text.into());
        self
    }

    /// Ids greater than `id` (next page).
    pub fn after(mut self, id: JobId) -> Self {
        self.after_id = Some(id);
        self
    }

    /// Page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The page size in force: `limit`, default 100, clamped to `1..=10_000`.
    pub fn page_size(&self) -> i64 {
        i64::from(self.limit.unwrap_or(100).clamp(1, 10_000))
    }

    /// Whether `job` passes the filter (page size aside).
    pub fn matches(&self, job: &JobRecord) -> bool {
        self.queue.as_deref().is_none_or(|q| q == job.queue)
            && (self.states.is_empty() || self.states.contains(&job.state))
            && self.kind.as_deref().is_none_or(|k| k == job.kind)
            && self
                .org_id
                .as_deref()
                .is_none_or(|o| Some(o) == job.org_id.as_deref())
            && self.after_id.is_none_or(|a| job.id > a)
            && self
                .args_contains
                .as_deref()
                .is_none_or(|t| job.args.to_string().contains(t))
    }
}

/// How many jobs of one queue are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueCount {
    /// Queue.
    pub queue: String,
    /// State.
    pub state: JobState,
    /// Jobs.
    pub count: i64,
}
