//! What a relay needs from a storage backend: claim rows, settle them, wait for work, report.
//!
//! The Postgres and SQLite stores implement [`OutboxStore`]; the [`Relay`](crate::Relay) is
//! written once against it. This module holds no SQL.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;

/// State of an outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Waiting to be published (possibly backing off after a failure).
    Pending,
    /// Accepted by the bus.
    Published,
    /// Given up on: the bus rejected it permanently or the retry policy ran out. Listed by
    /// [`OutboxStore::list_dead`], put back by [`OutboxStore::requeue`].
    Dead,
}

impl Status {
    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Published => "published",
            Self::Dead => "dead",
        }
    }
}

/// A row a relay claimed and now holds until it settles the claim.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClaimedRow {
    /// Row id.
    pub id: Uuid,
    /// Insertion order.
    pub seq: i64,
    /// Topic to publish to.
    pub topic: String,
    /// Ordering key (`partitionkey`, else `subject`); rows without one are not ordered.
    pub partition_key: Option<String>,
    /// The structured CloudEvents JSON.
    pub event: String,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// How a claimed row that was not published is settled.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FailedRow {
    /// Row id.
    pub id: Uuid,
    /// The error, kept in `last_error`.
    pub error: String,
    /// Wait before the next attempt (ignored when `dead`).
    pub retry_in: Duration,
    /// Give up: the row goes to `dead`.
    pub dead: bool,
}

/// A claimed batch. Rows stay claimed (invisible to other relays) until [`Claim::settle`] or
/// until the claim is dropped (then they are pending again, as after a crash).
#[async_trait]
pub trait Claim: Send + Sized {
    /// The claimed rows, in `seq` order. For every ordering key they are the oldest pending
    /// rows of that key, without gaps.
    fn rows(&self) -> &[ClaimedRow];

    /// Marks `published` as published and `failed` as failed (or dead), and releases the claim.
    async fn settle(self, published: &[Uuid], failed: &[FailedRow]) -> Result<()>;
}

/// Waits until new rows may be there: a notification, or the polling interval.
#[async_trait]
pub trait Waiter: Send {
    /// Returns after a wake-up or after `max`, whichever comes first.
    async fn wait(&mut self, max: Duration);
}

/// Counts of an outbox table, as [`OutboxStore::stats`] reports them.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Rows waiting to be published.
    pub pending: u64,
    /// Rows given up on.
    pub dead: u64,
    /// Published rows not yet deleted by retention.
    pub published: u64,
    /// Age of the oldest pending row (the relay's lag); `None` when nothing is pending.
    pub oldest_pending_age: Option<Duration>,
}

/// A dead row, as [`OutboxStore::list_dead`] returns it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadEvent {
    /// Row id (pass it to [`OutboxStore::requeue`]).
    pub id: Uuid,
    /// Insertion order.
    pub seq: i64,
    /// Topic.
    pub topic: String,
    /// Ordering key.
    pub partition_key: Option<String>,
    /// The structured CloudEvents JSON.
    pub event: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why it died.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
}

/// A storage backend of the outbox, as the [`Relay`](crate::Relay) and operators use it.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// A claimed batch.
    type Claim: Claim;
    /// A wake-up source.
    type Waiter: Waiter;

    /// Claims up to `limit` publishable rows: for each ordering key, its oldest pending rows
    /// when the oldest is due and no other relay holds that key.
    async fn claim(&self, limit: usize) -> Result<Self::Claim>;

    /// A wake-up source: LISTEN when `listen` is true and the backend has it, else polling.
    async fn waiter(&self, listen: bool) -> Result<Self::Waiter>;

    /// Counts pending, dead and published rows, and the age of the oldest pending one.
    async fn stats(&self) -> Result<Stats>;

    /// Up to `limit` dead rows, oldest first.
    async fn list_dead(&self, limit: usize) -> Result<Vec<DeadEvent>>;

    /// Puts a dead row back to pending with its attempts reset. [`Error::NotFound`] when no dead
    /// row has this id.
    ///
    /// [`Error::NotFound`]: crate::Error::NotFound
    async fn requeue(&self, id: Uuid) -> Result<()>;

    /// Puts every dead row back to pending; returns how many.
    async fn requeue_all_dead(&self) -> Result<u64>;

    /// Deletes published rows published more than `age` ago; returns how many.
    async fn delete_published_before(&self, age: Duration) -> Result<u64>;

    /// A short name of this outbox for logs and metric labels.
    fn label(&self) -> &str;
}
