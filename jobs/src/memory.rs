//! In-process job store with the same semantics as the Postgres one (state guard, unique keys,
//! priorities, schedules, pause, rescue), for users' tests and the quickstart. Jobs live in
//! memory only and vanish with the process; it is not meant for production.

mod limits;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use windlass_core::TenantScope;

use crate::error::Result;
use crate::limits::QueueLimits;
use crate::model::{
    AttemptError, AttemptToken, Enqueued, FetchedJob, Finish, HeartbeatReply, JobFilter, JobId,
    JobRecord, JobState, MAX_RECORDED_ERRORS, NewJob, QueueCount, Rescued,
};
use crate::store::JobStore;

mod insert;

#[derive(Debug, Default)]
struct State {
    next_id: JobId,
    jobs: BTreeMap<JobId, Row>,
    paused: BTreeSet<String>,
    /// The maintenance lease: holder and expiry.
    leader: Option<(String, DateTime<Utc>)>,
    /// Queue limits and what enforcing them remembers.
    limits: limits::Limits,
    /// The count snapshot ([`JobStore::refresh_counts`]).
    snapshot: crate::counts::TenantCounts,
}

#[derive(Debug, Clone)]
struct Row {
    rec: JobRecord,
    unique_states: i16,
}

impl Row {
    fn holds_unique(&self) -> bool {
        self.rec.unique_key.is_some() && self.unique_states & self.rec.state.bit() != 0
    }
}

/// The former name of [`MemoryJobStore`].
#[deprecated(note = "renamed to `MemoryJobStore`, after the other stores (`MemoryCacheStore`)")]
pub type MemoryStore = MemoryJobStore;

/// The in-memory store. Cheap to clone (clones share the jobs).
///
/// ```
/// # tokio_test_shim::block_on(async {
/// use windlass_jobs::{EnqueueOptions, JobStore, memory::MemoryJobStore};
///
/// let store = MemoryJobStore::new();
/// let job = EnqueueOptions::new().build_raw("noop", serde_json::json!({})).unwrap();
/// let ids = store.insert(vec![job]).await.unwrap();
/// assert!(ids[0].id().is_some());
/// # });
/// # mod tokio_test_shim { pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f) } }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryJobStore {
    state: Arc<Mutex<State>>,
    wake: broadcast::Sender<String>,
}

impl Default for MemoryJobStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            wake: broadcast::channel(1024).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied change (every change is a
        // single assignment), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self, queue: &str) {
        let _ = self.wake.send(queue.to_owned());
    }

    /// Cancel or discard by id: at once for a waiting job, a request for a running one.
    fn stop(&self, scope: &TenantScope, id: JobId, state: JobState) -> bool {
        let mut st = self.lock();
        match st
            .jobs
            .get_mut(&id)
            .filter(|r| scope.allows(r.rec.org_id.as_deref()))
        {
            Some(row) if row.rec.state == JobState::Running => {
                row.rec.stop_requested.get_or_insert(state);
                true
            }
            Some(row) if !row.rec.state.is_final() => {
                finalize(&mut row.rec, state, Utc::now());
                true
            }
            _ => false,
        }
    }
}

fn is_waiting(s: JobState) -> bool {
    matches!(
        s,
        JobState::Available | JobState::Scheduled | JobState::Retryable
    )
}

fn kind_ok(kinds: &[String], kind: &str) -> bool {
    kinds.is_empty() || kinds.iter().any(|k| k == kind)
}

fn finalize(rec: &mut JobRecord, state: JobState, now: DateTime<Utc>) {
    rec.state = state;
    rec.finalized_at = if state.is_final() { Some(now) } else { None };
    rec.locked_by = None;
    rec.stop_requested = None;
}

/// The row of `token`, if `worker` still holds that attempt.
fn held<'a>(st: &'a mut State, worker: &str, token: AttemptToken) -> Option<&'a mut JobRecord> {
    st.jobs
        .get_mut(&token.id)
        .map(|row| &mut row.rec)
        .filter(|r| {
            r.state == JobState::Running
                && r.locked_by.as_deref() == Some(worker)
                && r.attempt == token.attempt
        })
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn insert(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let (out, notify) = insert::insert(&mut self.lock(), jobs, Utc::now());
        for q in notify {
            self.notify(&q);
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        queue: &str,
        kinds: &[String],
        limit: usize,
        worker: &str,
    ) -> Result<Vec<FetchedJob>> {
        let now = Utc::now();
        let mut st = self.lock();
        if st.paused.contains(queue) || limit == 0 {
            return Ok(Vec::new());
        }
        let due = limits::select(&st, queue, kinds, limit, now);
        let mut out = Vec::with_capacity(due.len());
        let by = st
            .limits
            .by_queue
            .get(queue)
            .and_then(|l| l.partition.clone());
        let mut parts = Vec::with_capacity(due.len());
        for id in due {
            let Some(row) = st.jobs.get_mut(&id) else {
                continue;
            };
            parts.push(
                by.as_ref()
                    .map(|by| limits::part(by, &row.rec))
                    .unwrap_or_default(),
            );
            let r = &mut row.rec;
            r.state = JobState::Running;
            r.attempt += 1;
            r.attempted_at = Some(now);
            r.heartbeat_at = Some(now);
            r.locked_by = Some(worker.to_owned());
            out.push(FetchedJob {
                id,
                queue: r.queue.clone(),
                kind: r.kind.clone(),
                args: r.args.clone(),
                org_id: r.org_id.clone(),
                priority: r.priority,
                attempt: r.attempt,
                max_attempts: r.max_attempts,
                run_at: r.run_at,
                timeout: r.timeout,
                traceparent: r.traceparent.clone(),
                tracestate: r.tracestate.clone(),
            });
        }
        limits::record(&mut st, queue, &parts, now);
        Ok(out)
    }

    async fn finish(&self, worker: &str, finished: &[Finish]) -> Result<u64> {
        let now = Utc::now();
        let mut st = self.lock();
        let mut applied = 0;
        for f in finished {
            let Some(r) = held(&mut st, worker, f.token()) else {
                continue;
            };
            // A stop requested by id wins over a retry or a snooze, and over any outcome of an
            // interrupted attempt; an attempt that ended on its own keeps its outcome.
            let stopped = r
                .stop_requested
                .filter(|_| f.interrupted || f.outcome.state() == JobState::Retryable);
            if stopped.is_none() {
                r.attempt += f.outcome.attempt_delta();
            }
            if let Some(at) = f.outcome.run_at() {
                r.run_at = at;
            }
            if let Some(e) = f.outcome.error() {
                if r.errors.len() >= MAX_RECORDED_ERRORS {
                    r.errors.drain(..=r.errors.len() - MAX_RECORDED_ERRORS);
                }
                r.errors.push(e.clone());
            }
            if let Some(state) = stopped
                && state != f.outcome.state()
            {
                r.errors.push(AttemptError::new(
                    r.attempt,
                    format!("{state} by request while running"),
                    Some(worker.to_owned()),
                ));
            }
            finalize(r, stopped.unwrap_or(f.outcome.state()), now);
            applied += 1;
        }
        Ok(applied)
    }

    async fn heartbeat(&self, worker: &str, attempts: &[AttemptToken]) -> Result<HeartbeatReply> {
        let now = Utc::now();
        let mut st = self.lock();
        let mut reply = HeartbeatReply::default();
        for token in attempts {
            if let Some(r) = held(&mut st, worker, *token) {
                r.heartbeat_at = Some(now);
                reply.held.push(*token);
                if let Some(state) = r.stop_requested {
                    reply.stop.push((*token, state));
                }
            }
        }
        Ok(reply)
    }

    async fn rescue(&self, stale_after: Duration) -> Result<Vec<Rescued>> {
        let now = Utc::now();
        let cutoff = now - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
        let mut out = Vec::new();
        {
            let mut st = self.lock();
            for row in st.jobs.values_mut() {
                let r = &mut row.rec;
                if r.state != JobState::Running || r.heartbeat_at.is_none_or(|h| h >= cutoff) {
                    continue;
                }
                let worker = r.locked_by.clone();
                r.errors.push(AttemptError::new(
                    r.attempt,
                    format!(
                        "rescued: worker {} stopped heartbeating",
                        worker.as_deref().unwrap_or("?")
                    ),
                    worker,
                ));
                let state = if let Some(requested) = r.stop_requested {
                    requested
                } else if r.attempt >= r.max_attempts {
                    JobState::Discarded
                } else {
                    JobState::Retryable
                };
                r.run_at = now;
                finalize(r, state, now);
                out.push(Rescued {
                    id: r.id,
                    queue: r.queue.clone(),
                    state,
                });
            }
        }
        for r in &out {
            self.notify(&r.queue);
        }
        Ok(out)
    }

    async fn release(&self, worker: &str, attempts: &[AttemptToken]) -> Result<u64> {
        let now = Utc::now();
        let mut queues = BTreeSet::new();
        let mut moved = 0;
        {
            let mut st = self.lock();
            for token in attempts {
                if let Some(r) = held(&mut st, worker, *token) {
                    let state = match r.stop_requested {
                        Some(requested) => requested,
                        None => {
                            r.attempt -= 1;
                            JobState::Available
                        }
                    };
                    r.run_at = now;
                    finalize(r, state, now);
                    queues.insert(r.queue.clone());
                    moved += 1;
                }
            }
        }
        for q in queues {
            self.notify(&q);
        }
        Ok(moved)
    }

    async fn next_due(&self, queue: &str, kinds: &[String]) -> Result<Option<DateTime<Utc>>> {
        let st = self.lock();
        if st.paused.contains(queue) {
            return Ok(None);
        }
        let due = st
            .jobs
            .values()
            .filter(|r| {
                r.rec.queue == queue && is_waiting(r.rec.state) && kind_ok(kinds, &r.rec.kind)
            })
            .map(|r| r.rec.run_at)
            .min();
        Ok(limits::next_due(&st, queue, due))
    }

    async fn cancel(&self, scope: &TenantScope, id: JobId) -> Result<bool> {
        Ok(self.stop(scope, id, JobState::Cancelled))
    }

    async fn retry_now(&self, scope: &TenantScope, id: JobId) -> Result<bool> {
        let now = Utc::now();
        let queue = {
            let mut st = self.lock();
            let Some(row) = st
                .jobs
                .get(&id)
                .filter(|r| scope.allows(r.rec.org_id.as_deref()))
                .cloned()
            else {
                return Ok(false);
            };
            if row.rec.state == JobState::Running {
                return Err(crate::Error::JobRunning { id });
            }
            if let Some(key) = &row.rec.unique_key
                && row.unique_states & JobState::Available.bit() != 0
                && !row.holds_unique()
                && st.jobs.values().any(|r| {
                    r.rec.id != id && r.rec.unique_key.as_ref() == Some(key) && r.holds_unique()
                })
            {
                return Err(crate::Error::UniqueConflict {
                    id,
                    unique_key: key.clone(),
                });
            }
            let Some(row) = st.jobs.get_mut(&id) else {
                return Ok(false);
            };
            let r = &mut row.rec;
            r.run_at = now;
            r.max_attempts = r.max_attempts.max(r.attempt + 1);
            finalize(r, JobState::Available, now);
            r.queue.clone()
        };
        self.notify(&queue);
        Ok(true)
    }

    async fn discard(&self, scope: &TenantScope, id: JobId) -> Result<bool> {
        Ok(self.stop(scope, id, JobState::Discarded))
    }

    async fn prune(&self, older_than: Duration) -> Result<u64> {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let mut st = self.lock();
        let before = st.jobs.len();
        st.jobs
            .retain(|_, r| r.rec.finalized_at.is_none_or(|f| f >= cutoff));
        limits::prune(&mut st, cutoff);
        Ok((before - st.jobs.len()) as u64)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        windlass_core::Name::parse("queue", queue)?;
        if paused {
            self.lock().paused.insert(queue.to_owned());
        } else {
            self.lock().paused.remove(queue);
            self.notify(queue);
        }
        Ok(())
    }

    async fn set_global_limit(&self, queue: &str, limit: Option<u32>) -> Result<()> {
        windlass_core::Name::parse("queue", queue)?;
        crate::store::validate_limit(limit)?;
        let limits = QueueLimits {
            global: limit,
            ..QueueLimits::default()
        };
        limits::set(&mut self.lock(), queue, &limits, true);
        Ok(())
    }

    async fn set_queue_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()> {
        windlass_core::Name::parse("queue", queue)?;
        limits.validate()?;
        limits::set(&mut self.lock(), queue, limits, false);
        Ok(())
    }

    async fn queue_limits(&self) -> Result<Vec<(String, QueueLimits)>> {
        Ok(limits::list(&self.lock()).collect())
    }

    async fn paused_queues(&self) -> Result<Vec<String>> {
        Ok(self.lock().paused.iter().cloned().collect())
    }

    async fn global_limits(&self) -> Result<Vec<(String, u32)>> {
        let st = self.lock();
        Ok(limits::list(&st)
            .filter_map(|(q, l)| Some((q, l.global?)))
            .collect())
    }

    async fn get(&self, scope: &TenantScope, id: JobId) -> Result<Option<JobRecord>> {
        Ok(self
            .lock()
            .jobs
            .get(&id)
            .filter(|r| scope.allows(r.rec.org_id.as_deref()))
            .map(|r| r.rec.clone()))
    }

    async fn list(&self, scope: &TenantScope, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let limit = filter.page_size() as usize;
        let st = self.lock();
        Ok(st
            .jobs
            .values()
            .map(|r| &r.rec)
            .filter(|r| scope.allows(r.org_id.as_deref()) && filter.matches(r))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn counts(&self, scope: &TenantScope) -> Result<Vec<QueueCount>> {
        let st = self.lock();
        let mut m: BTreeMap<(String, JobState), i64> = BTreeMap::new();
        for r in st
            .jobs
            .values()
            .filter(|r| scope.allows(r.rec.org_id.as_deref()))
        {
            *m.entry((r.rec.queue.clone(), r.rec.state)).or_default() += 1;
        }
        Ok(m.into_iter()
            .map(|((queue, state), count)| QueueCount {
                queue,
                state,
                count,
            })
            .collect())
    }

    async fn refresh_counts(&self) -> Result<()> {
        let mut st = self.lock();
        let snapshot = crate::counts::TenantCounts::count(
            st.jobs
                .values()
                .map(|r| (r.rec.org_id.as_deref(), r.rec.queue.as_str(), r.rec.state)),
        );
        st.snapshot = snapshot;
        Ok(())
    }

    async fn count_snapshot(&self, scope: &TenantScope) -> Result<crate::CountSnapshot> {
        Ok(self.lock().snapshot.scoped(scope))
    }

    async fn try_lead(&self, worker: &str, ttl: Duration) -> Result<bool> {
        let now = Utc::now();
        let mut st = self.lock();
        let free = st
            .leader
            .as_ref()
            .is_none_or(|(holder, until)| holder == worker || *until < now);
        if free {
            let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
            st.leader = Some((worker.to_owned(), until));
        }
        Ok(free)
    }

    async fn subscribe(&self) -> Result<Option<broadcast::Receiver<String>>> {
        Ok(Some(self.wake.subscribe()))
    }
}
