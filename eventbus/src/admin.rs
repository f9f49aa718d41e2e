//! The operator API of a bus (what the windlass console calls): consumer groups with their
//! per-partition figures, dead letters with keyset paging, redrive, delete.
//!
//! Tenant scope: dead letters belong to the tenant of their event (`orgid`); a handle scoped to
//! one tenant sees and touches only that tenant's dead letters, and another tenant's id behaves
//! as an unknown id. Topics and consumer groups are shared by tenants, so the topic-wide calls
//! ([`BusAdmin::topic_groups`], [`BusAdmin::delete_topic`]) need [`TenantScope::All`] and return
//! [`Error::TenantScope`] otherwise.

use std::time::Duration;

use async_trait::async_trait;
use windlass_core::{TenantScope, Topic};

use crate::error::{Error, Result};
use crate::traits::DeadLetter;

/// A consumer group of a topic, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStatus {
    /// The group's name.
    pub group: String,
    /// Its live members (their lease identities), sorted.
    pub members: Vec<String>,
    /// One entry per partition of the topic, in partition order.
    pub partitions: Vec<PartitionStatus>,
}

/// One partition of a topic within one consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionStatus {
    /// The partition index.
    pub partition: u32,
    /// The member holding its lease now (`None`: free or expired).
    pub owner: Option<String>,
    /// The epoch of its lease (how many times it was acquired).
    pub epoch: u64,
    /// Entries not yet delivered to the group (`None` when the backend cannot tell, e.g. after
    /// entries were deleted out of order).
    pub lag: Option<u64>,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// How long ago the oldest pending entry was published.
    pub oldest_pending_age: Option<Duration>,
}

/// A page of dead letters, oldest first.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetterPage {
    /// The dead letters of this page.
    pub letters: Vec<DeadLetter>,
    /// Pass it as `after` to get the next page; `None` at the end. A page of a tenant-scoped
    /// call may hold fewer than `limit` letters while more follow (the scan of one call is
    /// bounded); keep paging until `next` is `None`.
    pub next: Option<String>,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redriven {
    /// Dead letters appended to their topic again (and removed from the DLQ).
    pub redriven: Vec<String>,
    /// Ids that are not dead letters of this topic visible in the scope (unknown, already
    /// redriven or deleted, another tenant's).
    pub unknown: Vec<String>,
}

/// The operator API of a bus backend.
#[async_trait]
pub trait BusAdmin: Send + Sync {
    /// Every consumer group of `topic`, with its members and, per partition, its owner, lag,
    /// pending count and the age of its oldest pending entry. Needs [`TenantScope::All`].
    async fn topic_groups(&self, topic: &Topic, scope: &TenantScope) -> Result<Vec<GroupStatus>>;

    /// Up to `limit` dead letters of `topic` visible in `scope`, oldest first, after the
    /// position `after` (a [`DeadLetterPage::next`] of an earlier page; `None`: from the start).
    async fn dead_letter_page(
        &self,
        topic: &Topic,
        scope: &TenantScope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage>;

    /// Appends the events of these dead letters to `topic` again (each to the partition it was
    /// read from, as a new entry behind what the partition holds) and removes them from the
    /// DLQ, each atomically. Ids unknown in `scope` are listed in [`Redriven::unknown`].
    async fn redrive(&self, topic: &Topic, scope: &TenantScope, ids: &[String])
    -> Result<Redriven>;

    /// Deletes one dead letter; `false` when it is unknown in `scope`.
    async fn delete_dead_letter(
        &self,
        topic: &Topic,
        scope: &TenantScope,
        id: &str,
    ) -> Result<bool>;

    /// Deletes the topic: its partitions, consumer groups, leases, members and dead letters.
    /// Stop its subscriptions first (a live subscription recreates its group). Needs
    /// [`TenantScope::All`].
    async fn delete_topic(&self, topic: &Topic, scope: &TenantScope) -> Result<()>;
}

/// Refuses topic-wide calls from a tenant-scoped handle.
pub(crate) fn require_all(scope: &TenantScope, what: &'static str) -> Result<()> {
    match scope {
        TenantScope::All => Ok(()),
        _ => Err(Error::TenantScope(what)),
    }
}

/// A dead-letter id `{partition}/{id}`, split.
pub(crate) fn split_id(id: &str) -> Option<(u32, &str)> {
    let (p, rest) = id.split_once('/')?;
    Some((p.parse().ok()?, rest))
}
