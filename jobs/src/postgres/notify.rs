//! The NOTIFY limiter of the store's own inserts (River's notify limiter): at most one NOTIFY
//! per queue per interval from this store, sent inside the inserting transaction (so it is
//! delivered at commit); the inserts of a queue within the interval after it send none, and
//! one trailing NOTIFY goes out when the interval has passed. No wake-up is lost: a job whose
//! transaction committed before the trailing NOTIFY is sent is seen by the fetch that NOTIFY
//! triggers (the trailing slot is released before it is sent, so an insert that finds it taken
//! committed before the send), and polling stays the fallback if a NOTIFY fails.
//!
//! Why: every transaction that NOTIFYs takes a database-wide lock at commit, held through the
//! commit's WAL flush, so concurrent notifying commits serialize. Coalescing keeps one notifying
//! commit per queue per interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::CHANNEL;

/// Default interval of the NOTIFY limiter ([`PgJobStore::notify_interval`](super::PgJobStore::notify_interval)): at most one
/// NOTIFY per queue per 10 ms per store.
pub const DEFAULT_NOTIFY_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
struct Slot {
    /// When the last NOTIFY of the queue was decided (leading or trailing).
    last: Option<Instant>,
    /// A trailing NOTIFY is scheduled.
    trailing: bool,
}

/// Per-queue NOTIFY coalescing for one store (see the module docs).
#[derive(Debug)]
pub(super) struct NotifyLimiter {
    interval: Duration,
    slots: Mutex<HashMap<String, Slot>>,
}

impl NotifyLimiter {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Of the queues an insert is about to add waiting jobs to, those to NOTIFY in its own
    /// transaction (no NOTIFY of theirs within the interval); the others are returned second,
    /// for [`NotifyLimiter::after_commit`].
    pub(super) fn split(&self, queues: Vec<String>) -> (Vec<String>, Vec<String>) {
        if self.interval.is_zero() {
            return (queues, Vec::new());
        }
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut lead = Vec::new();
        let mut later = Vec::new();
        for q in queues {
            let slot = slots.entry(q.clone()).or_default();
            if slot
                .last
                .is_none_or(|at| now.duration_since(at) >= self.interval)
            {
                slot.last = Some(now);
                lead.push(q);
            } else {
                later.push(q);
            }
        }
        (lead, later)
    }

    /// After the insert committed: makes sure a trailing NOTIFY goes out for each of `later`
    /// once its interval has passed (one scheduled per queue at a time).
    pub(super) fn after_commit(self: &Arc<Self>, pool: &PgPool, later: Vec<String>) {
        if later.is_empty() {
            return;
        }
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for q in later {
            let slot = slots.entry(q.clone()).or_default();
            if slot.trailing {
                // The scheduled one is sent after this insert committed (its slot is released
                // before it is sent, and it was not released when we looked).
                continue;
            }
            slot.trailing = true;
            let due = slot.last.map_or(Duration::ZERO, |at| {
                self.interval.saturating_sub(at.elapsed())
            });
            let this = self.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                tokio::time::sleep(due).await;
                {
                    let mut slots = this.slots.lock().unwrap_or_else(|p| p.into_inner());
                    let slot = slots.entry(q.clone()).or_default();
                    slot.trailing = false;
                    slot.last = Some(Instant::now());
                }
                let sent = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(&q)
                    .execute(&pool)
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(queue = %q, error = %e, "windlass-jobs: trailing NOTIFY failed; workers will poll");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leads_once_per_interval_per_queue() {
        let l = NotifyLimiter::new(Duration::from_secs(3600));
        let (lead, later) = l.split(vec!["a".into(), "b".into()]);
        assert_eq!((lead.len(), later.len()), (2, 0));
        let (lead, later) = l.split(vec!["a".into(), "c".into()]);
        assert_eq!((lead, later), (vec!["c".to_owned()], vec!["a".to_owned()]));
        let off = NotifyLimiter::new(Duration::ZERO);
        assert_eq!(off.split(vec!["a".into()]).0.len(), 1);
        assert_eq!(off.split(vec!["a".into()]).0.len(), 1);
    }
}
