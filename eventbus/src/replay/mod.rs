//! Replay: re-read a topic from a point in time or from an event id, into a handler, without
//! touching any consumer group (so live consumers never notice).
//!
//! Backends implement [`Replay`]: Kafka (`offsets_for_times`, a reader with manual partition
//! assignment), Redis Streams (`XRANGE`; entry ids carry millisecond timestamps), and the
//! outbox history (feature `outbox-replay`: a query on the `windlass_outbox` table, as long as
//! its retention keeps the rows). A replay reads up to the end of the topic *as it was when the
//! replay started*, in order (per partition on Kafka), one event at a time, and then returns a
//! [`ReplayReport`]. To replay into a whole new consumer group instead, the Kafka and Redis
//! backends can create a group positioned at the replay start (`start_group_at`), which a
//! normal subscription then consumes.

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
    /// Overall deadline.
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

/// What a replay did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Events the handler acknowledged.
    pub delivered: u64,
    /// Entries that did not decode, were rejected, or failed every retry.
    pub failed: Vec<ReplayFailure>,
}

/// Re-reads a topic into a handler without touching consumer groups.
#[async_trait]
pub trait Replay: Send + Sync {
    /// Replays `topic` from `from` into `handler`.
    async fn replay(
        &self,
        topic: &Topic,
        from: ReplayFrom,
        handler: &dyn Handler,
        options: &ReplayOptions,
    ) -> Result<ReplayReport>;
}

/// Hands one entry to the handler with the replay's retry policy and records the outcome.
/// Returns `false` once the replay must stop (the limit is reached).
#[cfg_attr(
    not(any(feature = "kafka", feature = "redis", feature = "outbox-replay")),
    allow(dead_code)
)]
pub(crate) async fn deliver(
    report: &mut ReplayReport,
    handler: &dyn Handler,
    options: &ReplayOptions,
    topic: &Topic,
    position: String,
    entry: std::result::Result<Event, String>,
) -> bool {
    let event = match entry {
        Ok(e) => e,
        Err(reason) => {
            report.failed.push(ReplayFailure {
                position,
                event_id: None,
                error: reason,
            });
            return true;
        }
    };
    let mut attempt = 1;
    loop {
        let ctx = DeliveryContext::new(
            topic.clone(),
            options.group.clone(),
            "replay",
            position.clone(),
        )
        .with_attempt(attempt);
        match handler.handle(&event, &ctx).await {
            Ok(()) => {
                report.delivered += 1;
                break;
            }
            Err(e) if e.is_reject() || options.retry.is_exhausted(attempt) => {
                report.failed.push(ReplayFailure {
                    position,
                    event_id: Some(event.id().to_owned()),
                    error: e.to_string(),
                });
                break;
            }
            Err(e) => {
                let delay = e
                    .requested_delay()
                    .unwrap_or_else(|| options.retry.delay(attempt));
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
    options
        .limit
        .is_none_or(|l| report.delivered + (report.failed.len() as u64) < l)
}

#[cfg(feature = "outbox-replay")]
mod outbox;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "outbox-replay")]
pub use outbox::OutboxHistory;
