//! What the console asks of each primitive: one small trait per primitive ([`JobsSource`],
//! [`OutboxSource`], [`BusSource`], [`CacheSource`]), the plain data they return, and the
//! implementations on the primitives' public APIs ([`JobsApi`], [`OutboxApi`], [`BusApi`],
//! [`CacheApi`]).
//!
//! Pages only talk to these traits, so a page never knows which store or bus backs it, and an
//! implementation can be swapped for a faster one without touching a page. Every call takes
//! the console's [`TenantScope`]: an implementation must treat another tenant's id as unknown
//! and never count, list or change another tenant's rows.
//!
//! This module holds no SQL and no Redis commands: implementations call the primitives only.

mod bus;
mod cache;
mod jobs;
mod outbox;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use windlass_core::{BoxError, TenantScope, Topic};
use windlass_jobs::{JobId, JobRecord, JobState};

pub use bus::BusApi;
pub use cache::CacheApi;
pub use jobs::JobsApi;
pub use outbox::OutboxApi;

/// Why a source call failed; the console maps each variant to an HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// No such row in this scope (404).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or out of bounds (400).
    #[error("{0}")]
    Invalid(String),
    /// The row exists but is not in a state the action applies to (409).
    #[error("{0}")]
    Conflict(String),
    /// The scope may not do this (403), e.g. pausing a queue every tenant shares.
    #[error("{0}")]
    Forbidden(String),
    /// The backing API cannot do this yet (501).
    #[error("{0}")]
    Unsupported(String),
    /// The store or bus failed (503); the message is logged, not shown.
    #[error("{what} failed: {source}")]
    Backend {
        /// The call that failed.
        what: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl SourceError {
    /// A backend failure of call `what`.
    pub fn backend(what: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            what,
            source: source.into(),
        }
    }
}

/// `Result` of a source call.
pub type SourceResult<T> = std::result::Result<T, SourceError>;

// ---------------------------------------------------------------------------------------------
// Jobs

/// Jobs of one queue by state.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct QueueDepth {
    /// Queue name.
    pub queue: String,
    /// Jobs per state (states with none may be absent).
    pub counts: BTreeMap<JobState, u64>,
    /// Whether the queue is paused.
    pub paused: bool,
    /// Its global concurrency limit (at most this many of its jobs run at once across every
    /// worker), if it has one.
    pub global_limit: Option<u32>,
}

/// How exact a set of counts is.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Exactness {
    /// Exact counts.
    Exact,
    /// Lower bounds: counting stopped after this many rows.
    AtLeast(u64),
    /// Exact as of `at`: a snapshot the primitive recounts periodically (the page says how
    /// old it is).
    Snapshot {
        /// When the counts were taken.
        at: DateTime<Utc>,
        /// How long that recount took, when known.
        took: Option<Duration>,
    },
    /// Not counted yet (no recount has run): the counts are empty.
    NotCounted(String),
}

/// Per-queue depths, with how exact they are.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Depths {
    /// One entry per queue, by name.
    pub queues: Vec<QueueDepth>,
    /// Exact or a lower bound.
    pub exactness: Exactness,
}

/// Completed and failed attempts of one queue per minute.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Throughput {
    /// Queue name.
    pub queue: String,
    /// Oldest first: (minute start, jobs completed, jobs that failed an attempt or were discarded).
    pub minutes: Vec<(DateTime<Utc>, u64, u64)>,
}

/// A filtered, keyset-paged listing of jobs.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct JobQuery {
    /// Only these states (empty: all).
    pub states: Vec<JobState>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this tenant (narrows the console's scope; it can never widen it).
    pub org_id: Option<String>,
    /// Only jobs whose arguments contain this text.
    pub text: Option<String>,
    /// Keyset cursor: jobs after this id.
    pub after: Option<JobId>,
    /// Page size.
    pub limit: u32,
}

/// One page of jobs.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct JobPage {
    /// The jobs, by id.
    pub jobs: Vec<JobRecord>,
    /// The cursor of the next page, when there may be one.
    pub next: Option<JobId>,
    /// A note on how the page was made (e.g. a text filter applied to a bounded scan).
    pub note: Option<String>,
}

/// An operator action on jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobAction {
    /// Run again now.
    Retry,
    /// Cancel (a running attempt stops at its next heartbeat).
    Cancel,
    /// Dead-letter.
    Discard,
}

impl JobAction {
    /// The form value naming the action.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Cancel => "cancel",
            Self::Discard => "discard",
        }
    }

    /// Parses a form value.
    pub fn parse(value: &str) -> Option<Self> {
        [Self::Retry, Self::Cancel, Self::Discard]
            .into_iter()
            .find(|a| a.as_str() == value)
    }
}

/// What an action did to each id.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ActionReport {
    /// Ids the action applied to.
    pub done: Vec<JobId>,
    /// Ids it did not apply to (unknown in this scope, or in a state it does not apply to).
    pub skipped: Vec<JobId>,
}

/// A cron schedule and its next runs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CronSchedule {
    /// The cron job's name.
    pub name: String,
    /// Its pattern, when the source knows it.
    pub pattern: Option<String>,
    /// Queue its ticks go to.
    pub queue: String,
    /// Kind of job it enqueues.
    pub kind: String,
    /// Its next ticks.
    pub next_runs: Vec<DateTime<Utc>>,
}

/// What the console needs from the jobs primitive.
#[async_trait]
pub trait JobsSource: Send + Sync + 'static {
    /// Jobs per queue and state.
    async fn depths(&self, scope: &TenantScope) -> SourceResult<Depths>;
    /// Completed and failed attempts per queue and minute over the last `window`; `None` when
    /// this source cannot tell for this scope.
    async fn throughput(
        &self,
        scope: &TenantScope,
        window: Duration,
    ) -> SourceResult<Option<Vec<Throughput>>>;
    /// A page of jobs.
    async fn list(&self, scope: &TenantScope, query: &JobQuery) -> SourceResult<JobPage>;
    /// One job (`None`: unknown in this scope).
    async fn get(&self, scope: &TenantScope, id: JobId) -> SourceResult<Option<JobRecord>>;
    /// Applies `action` to each id.
    async fn act(
        &self,
        scope: &TenantScope,
        action: JobAction,
        ids: &[JobId],
    ) -> SourceResult<ActionReport>;
    /// Pauses (`true`) or resumes a queue.
    async fn set_paused(&self, scope: &TenantScope, queue: &str, paused: bool) -> SourceResult<()>;
    /// Cron schedules with their next `n` runs.
    async fn cron(&self, scope: &TenantScope, n: usize) -> SourceResult<Vec<CronSchedule>>;
}

// ---------------------------------------------------------------------------------------------
// Outbox

/// Outbox counts of one topic and destination.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxTopicStats {
    /// Topic, or `None` for a line that covers every topic.
    pub topic: Option<String>,
    /// Destination (bus), or `None` for a line that covers every destination.
    pub destination: Option<String>,
    /// Rows waiting to be published.
    pub pending: u64,
    /// Dead rows.
    pub dead: u64,
    /// Keys held behind a dead row (block policy) until an operator requeues or skips it.
    pub blocked_keys: u64,
    /// Age of the oldest pending row.
    pub lag: Option<Duration>,
}

/// One delivery of one outbox row to one destination: what requeue and skip act on, and the
/// keyset position of the dead list. Written `seq@destination` in URLs and forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutboxDelivery {
    /// The row's insertion order.
    pub seq: i64,
    /// The destination (bus) the delivery goes to.
    pub destination: String,
}

impl OutboxDelivery {
    /// Parses `seq@destination`; `None` when it is not of that shape.
    pub fn parse(text: &str) -> Option<Self> {
        let (seq, destination) = text.split_once('@')?;
        let seq = seq.parse().ok()?;
        (!destination.is_empty()).then(|| Self {
            seq,
            destination: destination.to_owned(),
        })
    }
}

impl std::fmt::Display for OutboxDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.seq, self.destination)
    }
}

/// A dead outbox delivery.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadOutboxEvent {
    /// The row and destination (what requeue and skip take).
    pub delivery: OutboxDelivery,
    /// The event's id, when the stored JSON decodes.
    pub event_id: Option<String>,
    /// Topic.
    pub topic: String,
    /// Ordering key.
    pub partition_key: Option<String>,
    /// Tenant (`orgid`).
    pub org_id: Option<String>,
    /// Event type, when the stored JSON decodes.
    pub event_type: Option<String>,
    /// The stored CloudEvents JSON.
    pub event: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why it died.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
}

/// A page of dead outbox deliveries.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct DeadOutboxPage {
    /// Deliveries, oldest first.
    pub events: Vec<DeadOutboxEvent>,
    /// Cursor of the next page (the last delivery shown).
    pub next: Option<OutboxDelivery>,
    /// A note on how the page was made.
    pub note: Option<String>,
}

/// An ordering key whose head delivery is dead: the rows behind it on that key wait.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BlockedOutboxKey {
    /// The dead head (requeue or skip it to unblock the key).
    pub head: OutboxDelivery,
    /// Topic.
    pub topic: String,
    /// Ordering key.
    pub partition_key: String,
    /// Tenant of the dead head.
    pub org_id: Option<String>,
    /// Why the head died.
    pub last_error: Option<String>,
    /// When it died.
    pub failed_at: Option<DateTime<Utc>>,
    /// Rows waiting behind it (the outbox counts up to 10 000; more shows as 10 001).
    pub waiting: u64,
}

/// A page of blocked outbox keys.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct BlockedOutboxPage {
    /// Keys, by their head's position.
    pub keys: Vec<BlockedOutboxKey>,
    /// Cursor of the next page (the last head shown).
    pub next: Option<OutboxDelivery>,
}

/// What the console needs from the outbox.
#[async_trait]
pub trait OutboxSource: Send + Sync + 'static {
    /// Pending, lag, dead and blocked keys per topic and destination.
    async fn stats(&self, scope: &TenantScope) -> SourceResult<Vec<OutboxTopicStats>>;
    /// Dead deliveries after `after`, at most `limit`.
    async fn dead(
        &self,
        scope: &TenantScope,
        after: Option<&OutboxDelivery>,
        limit: u32,
    ) -> SourceResult<DeadOutboxPage>;
    /// Puts a dead delivery back to pending (it goes out before the rows behind it on its key).
    async fn requeue(&self, scope: &TenantScope, delivery: &OutboxDelivery) -> SourceResult<()>;
    /// Gives up on a dead delivery for good so the rows behind it on its key can go.
    async fn skip(&self, scope: &TenantScope, delivery: &OutboxDelivery) -> SourceResult<()>;
    /// Whether [`OutboxSource::skip`] is supported (the page hides the button otherwise).
    fn can_skip(&self) -> bool;
    /// Keys blocked by a dead head, after `after`, at most `limit`. A source without the notion
    /// answers [`SourceError::Unsupported`] (the default).
    async fn blocked(
        &self,
        _scope: &TenantScope,
        _after: Option<&OutboxDelivery>,
        _limit: u32,
    ) -> SourceResult<BlockedOutboxPage> {
        Err(SourceError::Unsupported(
            "this outbox source does not list blocked keys".into(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Bus

/// A consumer group's position on one topic (partition).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GroupStatus {
    /// Topic.
    pub topic: String,
    /// Group.
    pub group: String,
    /// Partition, where the bus has them.
    pub partition: Option<u32>,
    /// Member owning it.
    pub owner: Option<String>,
    /// Entries not yet delivered to the group.
    pub lag: Option<u64>,
    /// Entries delivered and not yet acknowledged.
    pub pending: Option<u64>,
    /// Age of the oldest unacknowledged entry.
    pub oldest_pending_age: Option<Duration>,
}

/// A dead letter, as the console shows it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DlqEntry {
    /// The backend's id of the entry.
    pub id: String,
    /// Topic it came from.
    pub topic: String,
    /// Group whose handler gave up.
    pub group: String,
    /// Tenant, from the event's `orgid`.
    pub org_id: Option<String>,
    /// Event type, when it decodes.
    pub event_type: Option<String>,
    /// The payload (lossy UTF-8).
    pub payload: String,
    /// Why it was dead-lettered.
    pub error: String,
    /// When.
    pub failed_at: DateTime<Utc>,
    /// Whether the payload decodes as an event (only those can be redriven).
    pub decodes: bool,
}

/// A page of dead letters.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct DlqPage {
    /// Entries, oldest first.
    pub entries: Vec<DlqEntry>,
    /// Cursor of the next page (an entry id).
    pub next: Option<String>,
    /// A note on how the page was made.
    pub note: Option<String>,
}

/// What the console needs from the bus.
#[async_trait]
pub trait BusSource: Send + Sync + 'static {
    /// The topics whose dead letters the console browses.
    fn topics(&self) -> Vec<Topic>;
    /// Groups (and partitions) with owner, lag, pending and oldest pending age.
    async fn groups(&self, scope: &TenantScope) -> SourceResult<Vec<GroupStatus>>;
    /// Dead letters of `topic` after the entry `after`, at most `limit`.
    async fn dead_letters(
        &self,
        scope: &TenantScope,
        topic: &Topic,
        after: Option<&str>,
        limit: u32,
    ) -> SourceResult<DlqPage>;
    /// Publishes the dead letter's event to its topic again.
    async fn redrive(&self, scope: &TenantScope, topic: &Topic, id: &str) -> SourceResult<()>;
}

// ---------------------------------------------------------------------------------------------
// Cache

/// Counters of one cache data type.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CacheTypeStats {
    /// Data type.
    pub data_type: String,
    /// Fresh hits (L1 and store).
    pub hits: u64,
    /// Misses.
    pub misses: u64,
    /// Stale values served.
    pub stale_served: u64,
    /// Loader runs that failed.
    pub load_errors: u64,
}

impl CacheTypeStats {
    /// Hits over lookups, `None` before the first lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0).then(|| self.hits as f64 / total as f64)
    }
}

/// What the console needs from the cache.
#[async_trait]
pub trait CacheSource: Send + Sync + 'static {
    /// Counters per data type.
    async fn stats(&self, scope: &TenantScope) -> SourceResult<Vec<CacheTypeStats>>;
}
