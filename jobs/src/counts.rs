//! The job counts snapshot: counts by queue and state (per tenant and over every tenant) as of
//! one moment, recounted by the maintenance leader ([`JobStore::refresh_counts`]) and read by
//! [`JobStore::count_snapshot`] without counting anything.
//!
//! Why a snapshot: an exact live count is a scan of the table (seconds at ten million rows), and
//! counters kept up to date by every enqueue, fetch and finish would make every worker update
//! the same few rows (one per queue and state), serialising the hot path on their row locks.
//! A snapshot is exact as of [`CountSnapshot::refreshed_at`], costs one scan per refresh off
//! every request path, and the leader spaces refreshes so they take a bounded share of the
//! time ([`WorkerConfig::counts_interval`](crate::WorkerConfig::counts_interval)).
//!
//! [`JobStore::refresh_counts`]: crate::JobStore::refresh_counts
//! [`JobStore::count_snapshot`]: crate::JobStore::count_snapshot

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{JobState, QueueCount};

/// Job counts by queue and state as of [`refreshed_at`](Self::refreshed_at), within a tenant
/// scope.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct CountSnapshot {
    /// Counts by queue and state, sorted by queue then state (pairs with no job are absent).
    pub counts: Vec<QueueCount>,
    /// When the counts were taken (`None`: never yet; a worker's maintenance leader refreshes
    /// them, or call [`Jobs::refresh_counts`](crate::Jobs::refresh_counts)).
    pub refreshed_at: Option<DateTime<Utc>>,
    /// How long that recount took (the cost of one refresh at the table's current size).
    pub refresh_took: Option<Duration>,
}

impl CountSnapshot {
    /// The count of `state` in `queue` (0 when absent).
    pub fn count(&self, queue: &str, state: JobState) -> i64 {
        self.counts
            .iter()
            .filter(|c| c.queue == queue && c.state == state)
            .map(|c| c.count)
            .sum()
    }

    /// The count of `state` over every queue.
    pub fn total(&self, state: JobState) -> i64 {
        self.counts
            .iter()
            .filter(|c| c.state == state)
            .map(|c| c.count)
            .sum()
    }

    /// How old the snapshot is at `now` (`None`: never taken).
    pub fn age(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.refreshed_at
            .map(|t| (now - t).to_std().unwrap_or(Duration::ZERO))
    }
}

/// A whole snapshot as a store without SQL keeps it: counts by (tenant, queue, state), when
/// they were taken and how long that took.
#[cfg(feature = "memory")]
#[derive(Debug, Clone, Default)]
pub(crate) struct TenantCounts {
    counts: std::collections::BTreeMap<(Option<String>, String, JobState), i64>,
    at: Option<DateTime<Utc>>,
    took: Duration,
}

#[cfg(feature = "memory")]
impl TenantCounts {
    /// Counts `jobs` (tenant, queue, state of each), stamped now.
    pub(crate) fn count<'a>(
        jobs: impl Iterator<Item = (Option<&'a str>, &'a str, JobState)>,
    ) -> Self {
        let started = std::time::Instant::now();
        let at = Utc::now();
        let mut counts = std::collections::BTreeMap::new();
        for (org, queue, state) in jobs {
            *counts
                .entry((org.map(str::to_owned), queue.to_owned(), state))
                .or_default() += 1;
        }
        Self {
            counts,
            at: Some(at),
            took: started.elapsed(),
        }
    }

    /// The snapshot within `scope`.
    pub(crate) fn scoped(&self, scope: &windlass_core::TenantScope) -> CountSnapshot {
        let mut sums: std::collections::BTreeMap<(&str, JobState), i64> = Default::default();
        for ((org, queue, state), n) in &self.counts {
            if scope.allows(org.as_deref()) {
                *sums.entry((queue.as_str(), *state)).or_default() += n;
            }
        }
        CountSnapshot {
            counts: sums
                .into_iter()
                .map(|((queue, state), count)| QueueCount {
                    queue: queue.to_owned(),
                    state,
                    count,
                })
                .collect(),
            refreshed_at: self.at,
            refresh_took: self.at.map(|_| self.took),
        }
    }
}
