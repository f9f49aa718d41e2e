//! What a relay needs from a storage backend (claim keys under a lease, settle the claim under
//! its fencing token, wait for work) and what the elected maintenance relay needs (a leader
//! lease, retention, counters). Postgres and SQLite implement both; the [`Relay`](crate::Relay)
//! is written once against them. This module holds no SQL.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::config::{DeadPolicy, Destination};
use crate::error::Result;

/// A row of one destination that a relay claimed: it holds the lease on the row's key.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClaimedRow {
    /// Insertion order (the row's id). Per key, enqueue order.
    pub seq: i64,
    /// Topic to publish to.
    pub topic: String,
    /// Ordering key (`partitionkey`, else `subject`); rows without one are not ordered.
    pub partition_key: Option<String>,
    /// The structured CloudEvents JSON, exactly as enqueued.
    pub event: String,
    /// Failed publish attempts of this row for this destination so far.
    pub attempts: u32,
}

/// What a relay asks for in one claim.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClaimRequest {
    /// The destination whose rows are claimed.
    pub destination: Destination,
    /// Most rows in the claim.
    pub batch_size: usize,
    /// Most keys in the claim (heads); the rows behind them fill the batch. Fewer keys with
    /// more rows each let several relays share hot keys; the relay adapts it.
    pub max_keys: usize,
    /// Lease length: no other relay claims the keys before it ends.
    pub lease: Duration,
    /// Tenant after which the round-robin over tenants starts (the last one the previous claim
    /// served), so every tenant with pending work gets its turn.
    pub after_tenant: Option<String>,
}

impl ClaimRequest {
    /// A request for `destination`.
    pub fn new(destination: Destination, batch_size: usize, lease: Duration) -> Self {
        Self {
            destination,
            batch_size: batch_size.max(1),
            max_keys: batch_size.max(1),
            lease,
            after_tenant: None,
        }
    }
}

/// Rows claimed under one lease. For every ordering key they are the key's oldest undelivered
/// rows, without gaps, in `seq` order; no other relay claims those keys while the lease runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Claim {
    /// The destination.
    pub destination: Destination,
    /// The fencing token: every mark of this claim is conditional on it, so a relay that lost
    /// its lease (frozen, partitioned) cannot change rows another relay claimed since.
    pub token: i64,
    /// The claimed rows in `seq` order.
    pub rows: Vec<ClaimedRow>,
    /// When the claim was sent (before the database set the lease): the lease surely runs until
    /// `started + lease`.
    pub started: Instant,
    /// The lease length.
    pub lease: Duration,
    /// The last tenant this claim served (pass it as [`ClaimRequest::after_tenant`] next).
    pub last_tenant: Option<String>,
}

impl Claim {
    /// The instant before which this relay surely still holds the lease.
    pub fn lease_deadline(&self) -> Instant {
        self.started + self.lease
    }
}

/// A claimed row that was not published.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Failure {
    /// The row.
    pub seq: i64,
    /// Why (kept in `last_error`).
    pub error: String,
    /// Wait before the next attempt (ignored when `dead`).
    pub retry_in: Duration,
    /// The bus was asked and failed (`attempts` grows); false for heads left untried because
    /// the bus was down.
    pub tried: bool,
    /// The bus rejected it for good: the row goes `dead`.
    pub dead: bool,
}

/// How a claim ends: every claimed row is in exactly one of the three lists.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Settlement {
    /// Rows the bus accepted.
    pub published: Vec<i64>,
    /// Rows that failed (back off, or dead).
    pub failed: Vec<Failure>,
    /// Rows not tried (their key waits for a failed head, or the lease ran short): released
    /// as they were.
    pub released: Vec<i64>,
}

/// What settling changed. Rows the claim no longer held (its lease expired and another relay
/// claimed them) are not changed: `requested - applied` of each list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settled {
    /// Rows marked delivered.
    pub published: u64,
    /// Rows marked failed or dead.
    pub failed: u64,
    /// Rows released.
    pub released: u64,
}

/// Waits until new rows may be there: a notification, or the polling interval.
#[async_trait]
pub trait Waiter: Send {
    /// Returns after a wake-up or after `max`, whichever comes first: true when woken (a
    /// notification, or a writer of this process enqueued), false after `max`.
    async fn wait(&mut self, max: Duration) -> bool;
}

/// A storage backend as a relay uses it.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// A wake-up source.
    type Waiter: Waiter;

    /// Claims up to `request.batch_size` rows of one destination under a new lease: heads of
    /// due keys nobody holds, round-robin over tenants, then the rows behind them.
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim>;

    /// Marks the claim's rows, each change conditional on the claim's fencing token.
    async fn settle(&self, claim: &Claim, settlement: &Settlement) -> Result<Settled>;

    /// A wake-up source: LISTEN when `listen` is true and the backend has it, else polling
    /// (plus in-process wake-ups from writers of the same process).
    async fn waiter(&self, listen: bool) -> Result<Self::Waiter>;

    /// Whether `destination` still has rows waiting (pending, due or not; dead ones excluded).
    async fn has_pending(&self, destination: &Destination) -> Result<bool>;

    /// The dead-row policy the store applies.
    fn dead_policy(&self) -> DeadPolicy;

    /// A short name of this outbox for logs.
    fn label(&self) -> &str;
}

/// What the one elected maintenance relay does. Every method is safe to run twice at once (a
/// leader whose lease just ended and its successor): they only delete what is old enough.
#[async_trait]
pub trait OutboxMaintenance: Send + Sync + 'static {
    /// Takes or renews the maintenance leader lease for `holder`; true when `holder` leads.
    async fn lead(&self, holder: &str, lease: Duration) -> Result<bool>;

    /// Gives the leader lease up if `holder` has it (graceful shutdown).
    async fn resign(&self, holder: &str) -> Result<()>;

    /// Deletes up to `limit` events older than `age` that every destination has (oldest
    /// first); returns how many.
    async fn delete_delivered_before(&self, age: Duration, limit: usize) -> Result<u64>;

    /// Deletes up to `limit` dead or skipped delivery rows that failed more than `age` ago.
    async fn purge_dead_before(&self, age: Duration, limit: usize) -> Result<u64>;

    /// Deletes up to `limit` inbox records older than `age` (every consumer).
    async fn purge_inbox_before(&self, age: Duration, limit: usize) -> Result<u64>;

    /// Recounts pending, dead and blocked rows per destination, topic and tenant into the
    /// counters table the operator API reads (one grouped scan of the undelivered rows).
    async fn refresh_stats(&self) -> Result<()>;
}
