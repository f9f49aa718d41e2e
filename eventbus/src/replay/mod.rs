//! Replay: re-read a topic from a point in time or from an event id, into a handler, without
//! touching any consumer group (so live consumers never notice).
//!
//! Backends implement [`Replay`]: Kafka (`offsets_for_times`, a reader with manual partition
//! assignment), Redis Streams (`XRANGE`; entry ids carry millisecond timestamps), and the
//! outbox history (feature `outbox-replay`: a query on the `windlass_outbox` table, as long as
//! its retention keeps the rows).
//!
//! **A replay ends.** When it starts it takes the end position of every partition (Kafka: the
//! high watermark of each partition; Redis: the last entry id of each stream; outbox: the last
//! published `seq`) and reads up to it, in order per partition, one event at a time, however
//! fast live traffic keeps appending. It then returns a [`ReplayReport`]: also when the
//! [timeout](ReplayOptions::timeout) passes or the backend fails midway, with the reason in
//! [`ReplayReport::end`] and, per partition, the end taken and the last position handled (a
//! resume point). To replay into a whole new consumer group instead, the Kafka and Redis
//! backends can create a group positioned at the replay start (`start_group_at`), which a
//! normal subscription then consumes.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use windlass_core::{Group, RetryPolicy, Topic};

use crate::error::Result;
use crate::event::Event;
use crate::handler::{DeliveryContext, Handler};

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayFrom {
    /// The oldest event the topic still holds.
    Beginning,
    /// The first event appended at or after this time (the broker's append time: Kafka record
    /// timestamp, Redis entry id, outbox `created_at`).
    Time(DateTime<Utc>),
    /// The event with this CloudEvents `id` (included), found by scanning from the beginning.
    /// [`Error::EventNotFound`](crate::Error::EventNotFound) when the topic does not hold it.
    EventId(String),
}

/// How a replay runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplayOptions {
    /// Stop after this many events.
    pub limit: Option<u64>,
    /// Events appended after this time are not replayed.
    pub until: Option<DateTime<Utc>>,
    /// Retries of a failing handler; an event that still fails is recorded in
    /// [`ReplayReport::failed`] and the replay goes on.
    pub retry: RetryPolicy,
    /// The group name handlers see in their [`DeliveryContext`] (no group is created).
    pub group: Group,
    /// Overall deadline. Past it the replay stops and returns its report, with
    /// [`ReplayEnd::TimedOut`] and the progress of each partition.
    pub timeout: Duration,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            limit: None,
            until: None,
            retry: RetryPolicy::default().with_max_attempts(3),
            group: Group::new("replay").expect("a valid group name"),
            timeout: Duration::from_secs(300),
        }
    }
}

impl ReplayOptions {
    /// Stops after `n` events.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }
    /// Skips events appended after `t`.
    pub fn until(mut self, t: DateTime<Utc>) -> Self {
        self.until = Some(t);
        self
    }
    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
    /// Sets the group name shown to handlers.
    pub fn group(mut self, group: Group) -> Self {
        self.group = group;
        self
    }
    /// Sets the overall deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// An event a replay could not deliver.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplayFailure {
    /// The backend's position of the entry (`partition@offset`, stream id, outbox seq).
    pub position: String,
    /// The event id, when the entry decoded.
    pub event_id: Option<String>,
    /// Why.
    pub error: String,
}

/// Why a replay stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReplayEnd {
    /// Every partition was read up to the end position taken when the replay started.
    #[default]
    Complete,
    /// [`ReplayOptions::limit`] events were handled.
    Limit,
    /// [`ReplayOptions::timeout`] passed first; the report says how far each partition got.
    TimedOut,
    /// The backend failed after the replay had started (connection lost, broker error); the
    /// report says how far each partition got.
    Failed(String),
}

/// How far a replay got in one partition (Kafka partition, Redis stream, the outbox table).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayPartition {
    /// Kafka: the partition number; Redis: the stream key; outbox: the table.
    pub partition: String,
    /// The end position taken when the replay started: Kafka, the high watermark (exclusive:
    /// the last offset replayed is one less); Redis, the last entry id (inclusive); outbox,
    /// the last published `seq` (inclusive). `None` when the partition was empty.
    pub end: Option<String>,
    /// Position of the last entry handed to the handler or recorded as failed (a resume point:
    /// a new replay from just after it continues where this one stopped).
    pub last: Option<String>,
    /// Entries handed to the handler or recorded as failed in this partition.
    pub handled: u64,
    /// True once the partition was read up to `end`.
    pub complete: bool,
}

/// What a replay did. Returned whenever the replay got past its start (positions and end
/// positions known), also when it timed out or the backend failed midway: check
/// [`ReplayReport::end`] (or [`ReplayReport::is_complete`]) before trusting it as complete.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
#[must_use = "a replay may have stopped early: check `end` / `is_complete()`"]
pub struct ReplayReport {
    /// Events the handler acknowledged.
    pub delivered: u64,
    /// Entries that did not decode, were rejected, or failed every retry.
    pub failed: Vec<ReplayFailure>,
    /// Events skipped because they were appended after [`ReplayOptions::until`] (or before a
    /// [`ReplayFrom::Time`] start, on backends that can only start near it).
    pub skipped: u64,
    /// Why the replay stopped.
    pub end: ReplayEnd,
    /// Per partition: the end position taken at the start and how far the replay got.
    pub partitions: Vec<ReplayPartition>,
}

impl ReplayReport {
    /// True when every partition was read up to its end position
    /// ([`ReplayEnd::Complete`]).
    pub fn is_complete(&self) -> bool {
        self.end == ReplayEnd::Complete
    }
}

/// Re-reads a topic into a handler without touching consumer groups.
#[async_trait]
pub trait Replay: Send + Sync {
    /// Replays `topic` from `from` into `handler`, up to the end of the topic as it was when
    /// the replay started.
    ///
    /// `Err` only when the replay could not start (unknown topic, [`Error::EventNotFound`],
    /// no connection); once started it returns a [`ReplayReport`], whose
    /// [`end`](ReplayReport::end) says whether it completed, hit the limit, timed out or lost
    /// the backend.
    ///
    /// [`Error::EventNotFound`]: crate::Error::EventNotFound
    async fn replay(
        &self,
        topic: &Topic,
        from: ReplayFrom,
        handler: &dyn Handler,
        options: &ReplayOptions,
    ) -> Result<ReplayReport>;
}

/// What the caller of [`Run::deliver`] does next.
#[cfg_attr(
    not(any(feature = "kafka", feature = "redis", feature = "outbox-replay")),
    allow(dead_code)
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Continue,
    /// Stop: the report's end is set.
    Stop,
}

/// One replay in progress: the report being built, the deadline, the handler with its retry
/// policy. Backends read entries in order per partition and hand them to [`Run::deliver`].
#[cfg_attr(
    not(any(feature = "kafka", feature = "redis", feature = "outbox-replay")),
    allow(dead_code)
)]
pub(crate) struct Run<'a> {
    pub(crate) report: ReplayReport,
    handler: &'a dyn Handler,
    options: &'a ReplayOptions,
    topic: &'a Topic,
    pub(crate) deadline: tokio::time::Instant,
}

#[cfg_attr(
    not(any(feature = "kafka", feature = "redis", feature = "outbox-replay")),
    allow(dead_code)
)]
impl<'a> Run<'a> {
    pub(crate) fn new(
        handler: &'a dyn Handler,
        options: &'a ReplayOptions,
        topic: &'a Topic,
    ) -> Self {
        Self {
            report: ReplayReport::default(),
            handler,
            options,
            topic,
            deadline: tokio::time::Instant::now() + options.timeout,
        }
    }

    /// Declares a partition and the end position taken for it; returns its index.
    pub(crate) fn partition(&mut self, name: String, end: Option<String>) -> usize {
        let complete = end.is_none();
        self.report.partitions.push(ReplayPartition {
            partition: name,
            end,
            last: None,
            handled: 0,
            complete,
        });
        self.report.partitions.len() - 1
    }

    /// Marks partition `idx` as read up to its end.
    pub(crate) fn complete(&mut self, idx: usize) {
        if let Some(p) = self.report.partitions.get_mut(idx) {
            p.complete = true;
        }
    }

    /// Records an entry skipped by a time filter (progress, not a delivery).
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(crate) fn skip(&mut self, idx: usize, position: String) {
        self.report.skipped += 1;
        if let Some(p) = self.report.partitions.get_mut(idx) {
            p.last = Some(position);
        }
    }

    /// Ends the run with `end` and returns the report.
    pub(crate) fn finish(mut self, end: ReplayEnd) -> ReplayReport {
        if end == ReplayEnd::Complete && self.report.partitions.iter().any(|p| !p.complete) {
            // A backend said "done" with a partition short of its end: not complete.
            self.report.end = ReplayEnd::Failed("a partition was not read up to its end".into());
        } else {
            self.report.end = end;
        }
        self.report
    }

    /// Runs `fut` unless the deadline passes first.
    pub(crate) async fn before_deadline<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::time::timeout_at(self.deadline, fut).await.ok()
    }

    /// Hands one entry of partition `idx` to the handler with the replay's retry policy and
    /// records the outcome. Returns [`Step::Stop`] once the replay must stop (limit reached:
    /// the end is [`ReplayEnd::Limit`]; deadline passed mid-handler: [`ReplayEnd::TimedOut`],
    /// the entry not counted).
    pub(crate) async fn deliver(
        &mut self,
        idx: usize,
        position: String,
        entry: std::result::Result<Event, String>,
    ) -> Step {
        let outcome = match entry {
            Err(reason) => Some(ReplayFailure {
                position: position.clone(),
                event_id: None,
                error: reason,
            }),
            Ok(event) => match self.before_deadline(self.attempts(&event, &position)).await {
                None => {
                    self.report.end = ReplayEnd::TimedOut;
                    return Step::Stop;
                }
                Some(r) => r,
            },
        };
        match outcome {
            None => self.report.delivered += 1,
            Some(f) => self.report.failed.push(f),
        }
        if let Some(p) = self.report.partitions.get_mut(idx) {
            p.last = Some(position);
            p.handled += 1;
        }
        let handled = self.report.delivered + self.report.failed.len() as u64;
        if self.options.limit.is_some_and(|l| handled >= l) {
            self.report.end = ReplayEnd::Limit;
            return Step::Stop;
        }
        Step::Continue
    }

    /// Every attempt at one event; `None` when it was acknowledged.
    async fn attempts(&self, event: &Event, position: &str) -> Option<ReplayFailure> {
        let mut attempt = 1;
        loop {
            let ctx = DeliveryContext::new(
                self.topic.clone(),
                self.options.group.clone(),
                "replay",
                position.to_owned(),
            )
            .with_attempt(attempt);
            match self.handler.handle(event, &ctx).await {
                Ok(()) => return None,
                Err(e) if e.is_reject() || self.options.retry.is_exhausted(attempt) => {
                    return Some(ReplayFailure {
                        position: position.to_owned(),
                        event_id: Some(event.id().to_owned()),
                        error: e.to_string(),
                    });
                }
                Err(e) => {
                    let delay = e
                        .requested_delay()
                        .unwrap_or_else(|| self.options.retry.delay(attempt));
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(feature = "outbox-replay")]
mod outbox;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "outbox-replay")]
pub use outbox::OutboxHistory;
