//! The operator API (what the console calls): counters, dead rows, blocked keys, requeue and
//! skip. Every call takes a [`TenantScope`]; a scoped call treats another tenant's rows as
//! unknown. Lists page by key (never `OFFSET`), counts come from the counters the maintenance
//! leader keeps (never `count(*)` over the table on a call).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use windlass_core::TenantScope;

use crate::config::Destination;
use crate::error::Result;

/// Pending, dead and blocked counts of one destination and topic.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TopicStats {
    /// The destination.
    pub destination: String,
    /// The topic.
    pub topic: String,
    /// Rows waiting for this destination.
    pub pending: u64,
    /// Dead rows.
    pub dead: u64,
    /// Keys whose oldest row is dead and that wait for an operator (block policy).
    pub blocked_keys: u64,
    /// Age of the oldest pending row (the destination's lag on this topic).
    pub oldest_pending_age: Option<Duration>,
}

/// The counters, as of `refreshed_at`.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct OutboxStats {
    /// One entry per destination and topic with pending or dead rows.
    pub topics: Vec<TopicStats>,
    /// When the maintenance leader last recounted (`None`: never; call
    /// [`OutboxMaintenance::refresh_stats`](crate::OutboxMaintenance::refresh_stats) or run a
    /// relay with maintenance on).
    pub refreshed_at: Option<DateTime<Utc>>,
}

impl OutboxStats {
    /// Pending rows summed over every destination and topic.
    pub fn pending(&self) -> u64 {
        self.topics.iter().map(|t| t.pending).sum()
    }
    /// Dead rows summed over every destination and topic.
    pub fn dead(&self) -> u64 {
        self.topics.iter().map(|t| t.dead).sum()
    }
    /// Blocked keys summed over every destination and topic.
    pub fn blocked_keys(&self) -> u64 {
        self.topics.iter().map(|t| t.blocked_keys).sum()
    }
}

/// One delivery of one row: what requeue and skip take.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DeliveryRef {
    /// The row.
    pub seq: i64,
    /// The destination.
    pub destination: Destination,
}

impl DeliveryRef {
    /// The delivery of row `seq` to `destination`.
    pub fn new(seq: i64, destination: Destination) -> Self {
        Self { seq, destination }
    }
}

/// A dead delivery, as [`OutboxAdmin::list_dead`] returns it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadEvent {
    /// The row and destination (pass it to requeue / skip).
    pub delivery: DeliveryRef,
    /// Topic.
    pub topic: String,
    /// Ordering key.
    pub partition_key: Option<String>,
    /// Tenant (`orgid`).
    pub org_id: Option<String>,
    /// The structured CloudEvents JSON.
    pub event: String,
    /// Publish attempts made.
    pub attempts: u32,
    /// Why it died.
    pub last_error: Option<String>,
    /// When it died.
    pub failed_at: Option<DateTime<Utc>>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
}

/// A key that waits for an operator: its oldest undelivered row is dead (block policy).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BlockedKey {
    /// The dead head (requeue or skip it to unblock the key).
    pub head: DeliveryRef,
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
    /// Rows waiting behind it (counted up to 10 000; more shows as 10 001).
    pub waiting: u64,
}

/// A position in a keyset-paged list (opaque; pass [`Page::next`] back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub(crate) seq: i64,
    pub(crate) destination: String,
}

impl Cursor {
    /// The position right after `delivery` (for a console that carries the cursor in a URL:
    /// keep the last item's [`DeliveryRef`] and rebuild the cursor from it).
    pub fn after(delivery: &DeliveryRef) -> Self {
        Self {
            seq: delivery.seq,
            destination: delivery.destination.as_str().to_owned(),
        }
    }

    /// The row sequence number this cursor resumes after.
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// The destination this cursor resumes after.
    pub fn destination(&self) -> &str {
        &self.destination
    }
}

/// One page of a list.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts (`None`: this is the last page).
    pub next: Option<Cursor>,
}

/// Which dead rows or blocked keys a list or bulk action covers.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DeadFilter {
    /// Only this destination.
    pub destination: Option<Destination>,
    /// Only this topic.
    pub topic: Option<String>,
}

impl DeadFilter {
    /// Only `destination`.
    pub fn destination(mut self, d: Destination) -> Self {
        self.destination = Some(d);
        self
    }
    /// Only `topic`.
    pub fn topic(mut self, t: impl Into<String>) -> Self {
        self.topic = Some(t.into());
        self
    }
}

/// The maintenance leader, as [`OutboxAdmin::leader`] reports it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeaderInfo {
    /// Who holds the lease (`host:pid:relay`).
    pub holder: String,
    /// Until when.
    pub expires_at: DateTime<Utc>,
}

/// Largest page an operator list returns.
pub const MAX_PAGE: usize = 1000;

/// What the operations console calls. Tenant-scoped, fast at a million rows.
#[async_trait]
pub trait OutboxAdmin: Send + Sync {
    /// Pending, dead and blocked counts and lag per destination and topic, from the counters
    /// the maintenance leader refreshes (see [`OutboxStats::refreshed_at`]).
    async fn stats(&self, scope: &TenantScope) -> Result<OutboxStats>;

    /// Dead deliveries, oldest first, `limit` (at most [`MAX_PAGE`]) per page, after `after`.
    async fn list_dead(
        &self,
        scope: &TenantScope,
        filter: &DeadFilter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<DeadEvent>>;

    /// Keys waiting on a dead head, oldest first (empty under the skip policy).
    async fn blocked_keys(
        &self,
        scope: &TenantScope,
        filter: &DeadFilter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<BlockedKey>>;

    /// Puts dead deliveries back to pending with their attempts reset, in place (a requeued head
    /// goes out before the rows behind it: order kept). Ids that are not dead or not in scope
    /// are ignored; returns how many were requeued.
    async fn requeue(&self, scope: &TenantScope, deliveries: &[DeliveryRef]) -> Result<u64>;

    /// Requeues every dead delivery the filter covers; returns how many.
    async fn requeue_all(&self, scope: &TenantScope, filter: &DeadFilter) -> Result<u64>;

    /// Gives dead deliveries up for good (status `skipped`): their keys go on. Ids that are not
    /// dead or not in scope are ignored; returns how many were skipped.
    async fn skip(&self, scope: &TenantScope, deliveries: &[DeliveryRef]) -> Result<u64>;

    /// Skips every dead delivery the filter covers; returns how many.
    async fn skip_all(&self, scope: &TenantScope, filter: &DeadFilter) -> Result<u64>;

    /// The maintenance leader, if one holds an unexpired lease.
    async fn leader(&self) -> Result<Option<LeaderInfo>>;
}
