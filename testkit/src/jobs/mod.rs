//! Job store conformance suite: the same expectations for every [`JobStore`] backend (memory,
//! Postgres), at the store level (fetch order, state guard, unique keys, pause, prune, ...) and
//! through a real [`Worker`] (retries, dead-letter, panics, timeouts, bad input, cancel,
//! shutdown, rescue, cron, priorities, queue isolation).
//!
//! A backend's test file instantiates every test with [`job_store_conformance!`](crate::job_store_conformance), giving an
//! async expression that yields `(Arc<dyn JobStore>, guard)`; the guard (e.g. the test
//! database) lives as long as the test.

mod fencing;
mod tenancy;
mod timeouts;

pub use fencing::*;
pub use tenancy::*;
pub use timeouts::*;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use windlass_core::TenantScope;

use serde::{Deserialize, Serialize};
use windlass_core::RetryPolicy;
use windlass_jobs::{
    AttemptError, AttemptToken, EnqueueOptions, Enqueued, Error, Finish, Job, JobContext, JobError,
    JobFilter, JobId, JobRecord, JobState, JobStore, Jobs, Outcome, RunningWorker, UniqueOptions,
    Worker, WorkerConfig,
};

/// What a [`Probe`] job does when it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Action {
    /// Succeed.
    Succeed,
    /// Fail the first `n` attempts, then succeed.
    FailTimes(i32),
    /// Panic in the first `n` attempts, then succeed.
    PanicTimes(i32),
    /// Sleep this many milliseconds (ignoring cancellation), then succeed.
    Sleep(u64),
    /// Wait for the cancellation token, record it, and return.
    WaitForCancel,
    /// Return [`JobError::discard`].
    Discard,
    /// Return [`JobError::cancel`].
    Cancel,
    /// First attempt: wait for the cancellation token, then take this many more milliseconds
    /// to stop (ignoring everything), record `"end"` and fail. Later attempts: record `"end"`
    /// and succeed at once. Start and end records show whether attempts overlapped.
    StopSlowlyFirst(u64),
    /// Block this many milliseconds in [`JobContext::run_blocking`], record `"end"` from inside
    /// the blocking closure, then succeed.
    BlockInPool(u64),
    /// Block this many milliseconds right inside `run` (`std::thread::sleep`: ignores
    /// cancellation and abort), record `"end"`, then succeed.
    BlockInline(u64),
}

/// The job the suite runs: records each start (and each observed cancellation) under its
/// test's token, then does its [`Action`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    /// The test's token (keeps parallel tests apart).
    pub token: String,
    /// A number the test chooses (order checks).
    pub n: u64,
    /// What to do.
    pub action: Action,
}

/// One recorded event of a [`Probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeEvent {
    /// Job id.
    pub job_id: JobId,
    /// The probe's `n`.
    pub n: u64,
    /// Attempt.
    pub attempt: i32,
    /// `"start"`, `"cancelled"` or `"end"`.
    pub event: &'static str,
}

static EVENTS: LazyLock<Mutex<HashMap<String, Vec<ProbeEvent>>>> = LazyLock::new(Default::default);

fn record(token: &str, ev: ProbeEvent) {
    EVENTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(token.to_owned())
        .or_default()
        .push(ev);
}

/// The events recorded under `token`, in order.
pub fn events(token: &str) -> Vec<ProbeEvent> {
    EVENTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(token)
        .cloned()
        .unwrap_or_default()
}

fn starts(token: &str) -> Vec<ProbeEvent> {
    events(token)
        .into_iter()
        .filter(|e| e.event == "start")
        .collect()
}

impl Job for Probe {
    const KIND: &'static str = "windlass.probe";

    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        let ev = |event| ProbeEvent {
            job_id: ctx.job_id(),
            n: self.n,
            attempt: ctx.attempt(),
            event,
        };
        record(&self.token, ev("start"));
        match &self.action {
            Action::Succeed => Ok(()),
            Action::FailTimes(n) if ctx.attempt() <= *n => Err(JobError::retry(format!(
                "planned failure {}",
                ctx.attempt()
            ))),
            Action::FailTimes(_) => Ok(()),
            Action::PanicTimes(n) if ctx.attempt() <= *n => {
                panic!("planned panic {}", ctx.attempt())
            }
            Action::PanicTimes(_) => Ok(()),
            Action::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                Ok(())
            }
            Action::WaitForCancel => {
                ctx.cancellation().cancelled().await;
                record(&self.token, ev("cancelled"));
                Ok(())
            }
            Action::Discard => Err(JobError::discard("planned discard")),
            Action::Cancel => Err(JobError::cancel("planned cancel")),
            Action::StopSlowlyFirst(ms) if ctx.attempt() == 1 => {
                ctx.cancellation().cancelled().await;
                std::thread::sleep(Duration::from_millis(*ms));
                record(&self.token, ev("end"));
                Err(JobError::retry("stopped"))
            }
            Action::StopSlowlyFirst(_) => {
                record(&self.token, ev("end"));
                Ok(())
            }
            Action::BlockInPool(ms) => {
                let (ms, token, end) = (*ms, self.token.clone(), ev("end"));
                ctx.run_blocking(move || {
                    std::thread::sleep(Duration::from_millis(ms));
                    record(&token, end);
                })
                .await;
                Ok(())
            }
            Action::BlockInline(ms) => {
                std::thread::sleep(Duration::from_millis(*ms));
                record(&self.token, ev("end"));
                Ok(())
            }
        }
    }
}

/// A fresh token for one test.
pub fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn probe(token: &str, n: u64, action: Action) -> Probe {
    Probe {
        token: token.to_owned(),
        n,
        action,
    }
}

/// Polls `cond` every 10 ms until it holds; panics saying `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until job `id` is in `state` and returns it.
pub async fn wait_state(
    store: &Arc<dyn JobStore>,
    id: JobId,
    state: JobState,
    timeout: Duration,
) -> JobRecord {
    let deadline = Instant::now() + timeout;
    loop {
        let job = store
            .get(&TenantScope::All, id)
            .await
            .expect("get job")
            .expect("job exists");
        if job.state == state {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} still {} (wanted {state}) after {timeout:?}: {job:?}",
            job.state
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A worker configuration with short intervals for tests.
pub fn fast_config() -> WorkerConfig {
    WorkerConfig::default()
        .poll_interval(Duration::from_millis(200))
        .heartbeat(Duration::from_millis(50), Duration::from_millis(600))
        .rescue_interval(Duration::from_millis(100))
        .retry(
            RetryPolicy::default()
                .with_delays(Duration::from_millis(10), Duration::from_millis(50))
                .with_jitter(0.0),
        )
        .shutdown_timeout(Duration::from_secs(2))
        .cancel_grace(Duration::from_millis(300))
        .metrics_interval(None)
        .queue("q", 10)
}

fn start(store: &Arc<dyn JobStore>, config: WorkerConfig) -> RunningWorker {
    Worker::new(store.clone())
        .register::<Probe>()
        .config(config)
        .start()
        .expect("start worker")
}

async fn enqueue(jobs: &Jobs, p: Probe, opts: EnqueueOptions) -> JobId {
    jobs.enqueue(&p, &opts)
        .await
        .expect("enqueue")
        .id()
        .expect("new job")
}

fn q() -> EnqueueOptions {
    EnqueueOptions::new().queue("q")
}

fn raw(kind: &str, args: serde_json::Value, opts: &EnqueueOptions) -> windlass_jobs::NewJob {
    opts.build_raw(kind, args).expect("valid job")
}

const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- store level

/// Fetch claims due jobs of one queue, most urgent priority first, then oldest.
pub async fn fetch_respects_priority_then_time(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let low = enqueue(&jobs, probe(&t, 1, Action::Succeed), q().priority(9)).await;
    let mid = enqueue(&jobs, probe(&t, 2, Action::Succeed), q().priority(5)).await;
    let mid2 = enqueue(&jobs, probe(&t, 3, Action::Succeed), q().priority(5)).await;
    let high = enqueue(&jobs, probe(&t, 4, Action::Succeed), q().priority(0)).await;
    let other = enqueue(
        &jobs,
        probe(&t, 5, Action::Succeed),
        EnqueueOptions::new().queue("other"),
    )
    .await;
    let got = store.fetch("q", &[], 3, "w1").await.unwrap();
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![high, mid, mid2]
    );
    assert!(got.iter().all(|j| j.attempt == 1 && j.queue == "q"));
    let rec = store.get(&TenantScope::All, high).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.locked_by.as_deref(), rec.attempt),
        (JobState::Running, Some("w1"), 1)
    );
    assert!(rec.attempted_at.is_some() && rec.heartbeat_at.is_some());
    let rest = store.fetch("q", &[], 10, "w2").await.unwrap();
    assert_eq!(rest.iter().map(|j| j.id).collect::<Vec<_>>(), vec![low]);
    assert!(store.fetch("q", &[], 10, "w2").await.unwrap().is_empty());
    assert_eq!(
        store
            .get(&TenantScope::All, other)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Available
    );
}

/// A job with `run_at` in the future is `scheduled`, not fetched before its time, and
/// reported by `next_due`.
pub async fn scheduled_jobs_wait_for_run_at(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let id = enqueue(
        &jobs,
        probe(&t, 1, Action::Succeed),
        q().delay(Duration::from_millis(400)),
    )
    .await;
    let rec = store.get(&TenantScope::All, id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Scheduled);
    assert!(store.fetch("q", &[], 10, "w").await.unwrap().is_empty());
    let due = store.next_due("q", &[]).await.unwrap().expect("a due time");
    assert!(
        (due - rec.run_at).num_milliseconds().abs() < 5,
        "{due} vs {}",
        rec.run_at
    );
    let deadline = Instant::now() + T;
    let fetched = loop {
        let got = store.fetch("q", &[], 10, "w").await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduled job was never fetched"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(chrono::Utc::now() >= rec.run_at);
    assert_eq!(fetched[0].id, id);
}

/// Outcomes apply only while the row is running, locked by the reporting worker, at the
/// reported attempt: a rescued slow job never overwrites the next attempt.
pub async fn completion_is_state_guarded(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let id = enqueue(&jobs, probe(&t, 1, Action::Succeed), q()).await;
    let got = store.fetch("q", &[], 1, "w1").await.unwrap();
    assert_eq!(got[0].attempt, 1);
    assert_eq!(
        store
            .finish("w2", &[Finish::new(id, 1, Outcome::Completed)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .finish("w1", &[Finish::new(id, 2, Outcome::Completed)])
            .await
            .unwrap(),
        0
    );
    let a1 = AttemptToken::new(id, 1);
    let a2 = AttemptToken::new(id, 2);
    assert_eq!(store.heartbeat("w1", &[a1]).await.unwrap().held, vec![a1]);
    assert!(store.heartbeat("w2", &[a1]).await.unwrap().held.is_empty());
    assert!(
        store.heartbeat("w1", &[a2]).await.unwrap().held.is_empty(),
        "a heartbeat is fenced by attempt, not only by worker"
    );
    // w1 goes silent: rescue it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        store
            .rescue(Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "fresh heartbeat must not be rescued"
    );
    let rescued = store.rescue(Duration::from_millis(5)).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].state, JobState::Retryable);
    let rec = store.get(&TenantScope::All, id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Retryable);
    assert!(rec.errors[0].error.contains("rescued"), "{:?}", rec.errors);
    // The slow w1 finally reports: ignored.
    assert_eq!(
        store
            .finish("w1", &[Finish::new(id, 1, Outcome::Completed)])
            .await
            .unwrap(),
        0
    );
    assert!(store.heartbeat("w1", &[a1]).await.unwrap().held.is_empty());
    let again = store.fetch("q", &[], 1, "w2").await.unwrap();
    assert_eq!(again[0].attempt, 2);
    assert!(store.heartbeat("w1", &[a1]).await.unwrap().held.is_empty());
    assert_eq!(store.heartbeat("w2", &[a2]).await.unwrap().held, vec![a2]);
    assert_eq!(store.release("w2", &[a1]).await.unwrap(), 0);
    assert_eq!(
        store
            .finish("w1", &[Finish::new(id, 1, Outcome::Completed)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .finish("w2", &[Finish::new(id, 2, Outcome::Completed)])
            .await
            .unwrap(),
        1
    );
    let rec = store.get(&TenantScope::All, id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.locked_by),
        (JobState::Completed, 2, None)
    );
    assert!(rec.finalized_at.is_some());
}

/// One `finish` call applies many outcomes of different kinds.
pub async fn batched_finish_applies_many_outcomes(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let ps: Vec<Probe> = (0..40).map(|n| probe(&t, n, Action::Succeed)).collect();
    let ids: Vec<JobId> = jobs
        .enqueue_many(&ps, &q().max_attempts(3))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id().unwrap())
        .collect();
    assert_eq!(ids.len(), 40);
    let got = store.fetch("q", &[], 100, "w").await.unwrap();
    assert_eq!(got.len(), 40);
    let now = chrono::Utc::now();
    let finished: Vec<Finish> = got
        .iter()
        .map(|j| {
            let e = AttemptError::new(j.attempt, "boom", None);
            let outcome = match j.id % 4 {
                0 => Outcome::Completed,
                1 => Outcome::Retry {
                    run_at: now,
                    error: e,
                },
                2 => Outcome::Discard { error: e },
                _ => Outcome::Requeue {
                    run_at: now,
                    error: None,
                },
            };
            Finish::new(j.id, j.attempt, outcome)
        })
        .collect();
    assert_eq!(store.finish("w", &finished).await.unwrap(), 40);
    for f in &finished {
        let rec = store.get(&TenantScope::All, f.id).await.unwrap().unwrap();
        assert_eq!(rec.state, f.outcome.state(), "{f:?}");
        let (attempt, errors) = match f.id % 4 {
            0 => (1, 0),
            1 | 2 => (1, 1),
            _ => (0, 0),
        };
        assert_eq!((rec.attempt, rec.errors.len()), (attempt, errors), "{f:?}");
    }
    let counts = store.counts(&TenantScope::All).await.unwrap();
    let total: i64 = counts
        .iter()
        .filter(|c| c.queue == "q")
        .map(|c| c.count)
        .sum();
    assert_eq!(total, 40);
}

/// Unique keys: a duplicate is refused while a covered job exists, allowed once the holder
/// left the covered states, per period bucket; concurrent enqueues insert exactly one.
pub async fn unique_jobs_are_enqueued_once(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let opts = q().unique(UniqueOptions::by_key("invoice-1"));
    let first = jobs
        .enqueue(&probe(&t, 1, Action::Succeed), &opts)
        .await
        .unwrap();
    let id = first.id().expect("first is new");
    assert_eq!(
        jobs.enqueue(&probe(&t, 2, Action::Succeed), &opts)
            .await
            .unwrap(),
        Enqueued::Duplicate(Some(id))
    );
    // Another key, or another kind with the same key, is not blocked.
    assert!(
        jobs.enqueue(
            &probe(&t, 3, Action::Succeed),
            &q().unique(UniqueOptions::by_key("invoice-2"))
        )
        .await
        .unwrap()
        .id()
        .is_some()
    );
    let other_kind = store
        .insert(vec![raw("other.kind", serde_json::json!({}), &opts)])
        .await
        .unwrap();
    assert!(other_kind[0].id().is_some());
    // Completed is covered by default.
    let got = store.fetch("q", &[], 1, "w").await.unwrap();
    assert_eq!(got[0].id, id);
    assert_eq!(
        store
            .finish("w", &[Finish::new(id, 1, Outcome::Completed)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        jobs.enqueue(&probe(&t, 4, Action::Succeed), &opts)
            .await
            .unwrap(),
        Enqueued::Duplicate(Some(id))
    );
    // A key whose states leave out `discarded`: free again once the holder is discarded.
    let pending_only = q().unique(UniqueOptions::by_key("report").states([]));
    let a = jobs
        .enqueue(&probe(&t, 5, Action::Succeed), &pending_only)
        .await
        .unwrap()
        .id()
        .unwrap();
    assert_eq!(
        jobs.enqueue(&probe(&t, 6, Action::Succeed), &pending_only)
            .await
            .unwrap(),
        Enqueued::Duplicate(Some(a))
    );
    assert!(jobs.discard(a).await.unwrap());
    let b = jobs
        .enqueue(&probe(&t, 7, Action::Succeed), &pending_only)
        .await
        .unwrap()
        .id()
        .unwrap();
    // Bringing `a` back would make two holders: refused with a typed error.
    assert!(matches!(jobs.retry_now(a).await, Err(Error::UniqueConflict { id, .. }) if id == a));
    assert_eq!(
        store
            .get(&TenantScope::All, b)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Available
    );
    // Duplicates inside one bulk insert.
    let bulk = jobs
        .enqueue_many(
            &[probe(&t, 8, Action::Succeed), probe(&t, 9, Action::Succeed)],
            &q().unique(UniqueOptions::by_key("bulk")),
        )
        .await
        .unwrap();
    assert_eq!(bulk.iter().filter(|e| e.id().is_some()).count(), 1);
    assert_eq!(
        bulk[1],
        Enqueued::Duplicate(bulk[0].id()),
        "a key repeated in one batch: the repeat names the first"
    );
    // Concurrent enqueues of one key: exactly one row.
    let mut tasks = Vec::new();
    for n in 0..16 {
        let jobs = jobs.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            jobs.enqueue(
                &probe(&t, 100 + n, Action::Succeed),
                &q().unique(UniqueOptions::by_key("race")),
            )
            .await
            .unwrap()
        }));
    }
    let mut new = 0;
    for task in tasks {
        if task.await.unwrap().id().is_some() {
            new += 1;
        }
    }
    assert_eq!(new, 1, "concurrent unique enqueue inserted {new} rows");
}

/// Cancel, retry-now and discard by id, each refusing what makes no sense.
pub async fn cancel_retry_discard_by_id(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let a = enqueue(&jobs, probe(&t, 1, Action::Succeed), q()).await;
    assert!(jobs.cancel(a).await.unwrap());
    assert!(!jobs.cancel(a).await.unwrap(), "already final");
    assert!(!jobs.discard(a).await.unwrap(), "already final");
    let rec = store.get(&TenantScope::All, a).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Cancelled);
    assert!(rec.finalized_at.is_some());
    assert!(jobs.retry_now(a).await.unwrap());
    let rec = store.get(&TenantScope::All, a).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.finalized_at), (JobState::Available, None));
    let b = enqueue(
        &jobs,
        probe(&t, 2, Action::Succeed),
        q().delay(Duration::from_secs(3600)).max_attempts(1),
    )
    .await;
    assert!(jobs.retry_now(b).await.unwrap());
    assert_eq!(
        store
            .get(&TenantScope::All, b)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Available
    );
    let got = store.fetch("q", &[], 10, "w").await.unwrap();
    assert_eq!(got.len(), 2);
    let b1 = AttemptToken::new(b, 1);
    assert!(
        matches!(jobs.retry_now(b).await, Err(Error::JobRunning { id }) if id == b),
        "retrying a running job is refused with a typed error"
    );
    // Discarding a running job is a request: the row stays running, leased by its worker,
    // which learns it from its heartbeat.
    assert!(jobs.discard(b).await.unwrap());
    let rec = store.get(&TenantScope::All, b).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.stop_requested, rec.locked_by.as_deref()),
        (JobState::Running, Some(JobState::Discarded), Some("w"))
    );
    // A later cancel does not change the first request.
    assert!(jobs.cancel(b).await.unwrap());
    let beat = store.heartbeat("w", &[b1]).await.unwrap();
    assert_eq!(
        (beat.held, beat.stop),
        (vec![b1], vec![(b1, JobState::Discarded)])
    );
    assert!(matches!(
        jobs.retry_now(b).await,
        Err(Error::JobRunning { .. })
    ));
    // The attempt ends with a failure that would retry: the request wins.
    let retry = Outcome::Retry {
        run_at: chrono::Utc::now(),
        error: AttemptError::new(1, "stopped", Some("w".into())),
    };
    assert_eq!(
        store
            .finish("w", &[Finish::new(b, 1, retry)])
            .await
            .unwrap(),
        1
    );
    let rec = store.get(&TenantScope::All, b).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.stop_requested, rec.attempt),
        (JobState::Discarded, None, 1)
    );
    assert!(rec.finalized_at.is_some());
    // Retrying a job with no attempt left grants one more; the new attempt has a new token
    // and the old one can change nothing.
    assert!(jobs.retry_now(b).await.unwrap());
    let rec = store.get(&TenantScope::All, b).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.max_attempts), (JobState::Available, 2));
    let again = store.fetch("q", &[], 10, "w").await.unwrap();
    assert_eq!(again[0].token(), AttemptToken::new(b, 2));
    assert!(store.heartbeat("w", &[b1]).await.unwrap().held.is_empty());
    assert_eq!(
        store
            .finish("w", &[Finish::new(b, 1, Outcome::Completed)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.release("w", &[b1]).await.unwrap(), 0);
    assert_eq!(
        store
            .get(&TenantScope::All, b)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Running
    );
    // Cancel requested, then the worker dies: the rescue applies the request.
    assert!(jobs.cancel(b).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rescued = store.rescue(Duration::from_millis(5)).await.unwrap();
    assert_eq!(
        rescued
            .iter()
            .filter(|r| r.id == b)
            .map(|r| r.state)
            .collect::<Vec<_>>(),
        vec![JobState::Cancelled]
    );
    // A running job's stop request and a release at shutdown: the request wins too.
    let c = enqueue(&jobs, probe(&t, 3, Action::Succeed), q()).await;
    let got = store.fetch("q", &[], 10, "w").await.unwrap();
    let c1 = got.iter().find(|j| j.id == c).expect("c fetched").token();
    assert!(jobs.cancel(c).await.unwrap());
    assert_eq!(store.release("w", &[c1]).await.unwrap(), 1);
    let rec = store.get(&TenantScope::All, c).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempt), (JobState::Cancelled, 1));
    assert!(!jobs.cancel(987_654_321).await.unwrap());
    assert!(!jobs.retry_now(987_654_321).await.unwrap());
}

/// Pruning deletes final jobs older than the retention, nothing else.
pub async fn prune_deletes_old_final_jobs(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let done = enqueue(&jobs, probe(&t, 1, Action::Succeed), q()).await;
    let waiting = enqueue(
        &jobs,
        probe(&t, 2, Action::Succeed),
        q().delay(Duration::from_secs(60)),
    )
    .await;
    store.fetch("q", &[], 1, "w").await.unwrap();
    store
        .finish("w", &[Finish::new(done, 1, Outcome::Completed)])
        .await
        .unwrap();
    assert_eq!(jobs.prune(Duration::from_secs(3600)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(jobs.prune(Duration::from_millis(10)).await.unwrap(), 1);
    assert!(store.get(&TenantScope::All, done).await.unwrap().is_none());
    assert!(
        store
            .get(&TenantScope::All, waiting)
            .await
            .unwrap()
            .is_some()
    );
}

/// A paused queue yields nothing to any worker until resumed; the pause persists.
pub async fn paused_queues_are_not_fetched(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let id = enqueue(&jobs, probe(&t, 1, Action::Succeed), q()).await;
    jobs.pause("q").await.unwrap();
    assert!(matches!(jobs.pause("bad queue").await, Err(Error::Name(_))));
    assert_eq!(store.paused_queues().await.unwrap(), vec!["q".to_owned()]);
    assert!(store.fetch("q", &[], 10, "w").await.unwrap().is_empty());
    assert!(store.next_due("q", &[]).await.unwrap().is_none());
    jobs.resume("q").await.unwrap();
    assert!(store.paused_queues().await.unwrap().is_empty());
    assert_eq!(store.fetch("q", &[], 10, "w").await.unwrap()[0].id, id);
}

/// Listing filters by queue, state, kind and tenant and pages by id; counts group by queue
/// and state.
pub async fn list_and_counts(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(enqueue(&jobs, probe(&t, n, Action::Succeed), q().org_id("acme")).await);
    }
    enqueue(
        &jobs,
        probe(&t, 9, Action::Succeed),
        EnqueueOptions::new().queue("low"),
    )
    .await;
    store.fetch("q", &[], 2, "w").await.unwrap();
    let running = jobs
        .list(&JobFilter::new().queue("q").state(JobState::Running))
        .await
        .unwrap();
    assert_eq!(
        running.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids[..2].to_vec()
    );
    let page1 = jobs
        .list(&JobFilter::new().queue("q").limit(3))
        .await
        .unwrap();
    let page2 = jobs
        .list(&JobFilter::new().queue("q").limit(3).after(page1[2].id))
        .await
        .unwrap();
    assert_eq!(page1.len() + page2.len(), 5);
    assert_eq!(
        jobs.list(&JobFilter::new().org_id("acme"))
            .await
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        jobs.list(&JobFilter::new().kind(Probe::KIND).queue("low"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        jobs.list(&JobFilter::new().kind("nope"))
            .await
            .unwrap()
            .is_empty()
    );
    let rec = &page1[0];
    assert_eq!(
        (rec.kind.as_str(), rec.org_id.as_deref(), rec.priority),
        (Probe::KIND, Some("acme"), 5)
    );
    assert_eq!(rec.args["n"], 0);
    let counts = jobs.counts().await.unwrap();
    let get = |queue: &str, state| {
        counts
            .iter()
            .find(|c| c.queue == queue && c.state == state)
            .map_or(0, |c| c.count)
    };
    assert_eq!(
        (
            get("q", JobState::Running),
            get("q", JobState::Available),
            get("low", JobState::Available)
        ),
        (2, 3, 1)
    );
}

/// `release` puts held jobs back without counting the attempt.
pub async fn release_returns_jobs_without_counting_the_attempt(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let id = enqueue(&jobs, probe(&t, 1, Action::Succeed), q()).await;
    let got = store.fetch("q", &[], 1, "w").await.unwrap();
    let token = got[0].token();
    assert_eq!(store.release("other", &[token]).await.unwrap(), 0);
    assert_eq!(
        store
            .release("w", &[AttemptToken::new(id, token.attempt + 1)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.release("w", &[token]).await.unwrap(), 1);
    let rec = store.get(&TenantScope::All, id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.locked_by),
        (JobState::Available, 0, None)
    );
}

// ---------------------------------------------------------------- through a worker

/// Failed attempts are retried with backoff, each error recorded, until success.
pub async fn worker_retries_and_records_errors(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let w = start(&store, fast_config());
    let id = enqueue(
        &jobs,
        probe(&t, 1, Action::FailTimes(2)),
        q().max_attempts(5),
    )
    .await;
    let rec = wait_state(&store, id, JobState::Completed, T).await;
    assert_eq!(rec.attempt, 3);
    assert_eq!(rec.errors.len(), 2);
    assert_eq!(rec.errors[0].attempt, 1);
    assert!(
        rec.errors[1].error.contains("planned failure 2"),
        "{:?}",
        rec.errors
    );
    assert_eq!(rec.errors[0].worker.as_deref(), Some(w.id()));
    assert_eq!(starts(&t).len(), 3);
    w.shutdown().await.unwrap();
}

/// After `max_attempts` failures the job is dead-lettered (`discarded`).
pub async fn exhausted_jobs_are_discarded(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let w = start(&store, fast_config());
    let id = enqueue(
        &jobs,
        probe(&t, 1, Action::FailTimes(100)),
        q().max_attempts(2),
    )
    .await;
    let rec = wait_state(&store, id, JobState::Discarded, T).await;
    assert_eq!((rec.attempt, rec.errors.len()), (2, 2));
    assert!(rec.finalized_at.is_some());
    w.shutdown().await.unwrap();
    assert_eq!(starts(&t).len(), 2);
}

/// A panicking job is caught and retried; the worker goes on.
pub async fn panics_are_caught_and_retried(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let w = start(&store, fast_config());
    let id = enqueue(&jobs, probe(&t, 1, Action::PanicTimes(1)), q()).await;
    let rec = wait_state(&store, id, JobState::Completed, T).await;
    assert_eq!(rec.attempt, 2);
    assert!(
        rec.errors[0].error.contains("panicked: planned panic 1"),
        "{:?}",
        rec.errors
    );
    let after = enqueue(&jobs, probe(&t, 2, Action::Succeed), q()).await;
    wait_state(&store, after, JobState::Completed, T).await;
    w.shutdown().await.unwrap();
}

/// An attempt over its timeout fails (and is dead-lettered here, with one attempt).
pub async fn timeouts_fail_the_attempt(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let w = start(&store, fast_config());
    let id = enqueue(
        &jobs,
        probe(&t, 1, Action::Sleep(30_000)),
        q().timeout(Duration::from_millis(100)).max_attempts(1),
    )
    .await;
    let rec = wait_state(&store, id, JobState::Discarded, T).await;
    assert!(
        rec.errors[0].error.contains("timed out"),
        "{:?}",
        rec.errors
    );
    w.shutdown().await.unwrap();
}

/// Arguments that no longer decode: discarded at once with the decode error, whatever the
/// attempts left.
pub async fn undecodable_args_are_discarded_at_once(store: Arc<dyn JobStore>) {
    let w = start(&store, fast_config());
    let ids = store
        .insert(vec![raw(
            Probe::KIND,
            serde_json::json!({"unexpected": true}),
            &q().max_attempts(10),
        )])
        .await
        .unwrap();
    let rec = wait_state(&store, ids[0].id().unwrap(), JobState::Discarded, T).await;
    assert_eq!(rec.attempt, 1);
    assert!(
        rec.errors[0].error.contains("no longer decode"),
        "{:?}",
        rec.errors
    );
    w.shutdown().await.unwrap();
}

/// A worker serves exactly the queues it is given (the first `queue()` replaces the default
/// four) and fetches only the kinds it registered: a job of another queue, or of a kind it does
/// not know, is never claimed by it (stays `available`, attempt 0, no error), while its own
/// work runs.
pub async fn a_worker_serves_exactly_its_queues_and_kinds(store: Arc<dyn JobStore>) {
    let config = WorkerConfig::default().queue("x", 3);
    assert_eq!(config.queues, vec![("x".to_owned(), 3)]);
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let w = start(&store, fast_config().queues([("x", 3)]));
    let other_queue = enqueue(
        &jobs,
        probe(&t, 1, Action::Succeed),
        EnqueueOptions::new(), // `default`, served by default configs but not by this one
    )
    .await;
    let unknown = store
        .insert(vec![raw(
            "nobody.knows",
            serde_json::json!({}),
            &EnqueueOptions::new().queue("x"),
        )])
        .await
        .unwrap()[0]
        .id()
        .unwrap();
    let mine = enqueue(
        &jobs,
        probe(&t, 2, Action::Succeed),
        EnqueueOptions::new().queue("x"),
    )
    .await;
    wait_state(&store, mine, JobState::Completed, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in [other_queue, unknown] {
        let rec = store.get(&TenantScope::All, id).await.unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.attempt, rec.errors.len(), rec.locked_by),
            (JobState::Available, 0, 0, None),
            "job {id} ({}) was touched by a worker that does not serve it",
            rec.kind
        );
    }
    assert!(
        Worker::new(store.clone())
            .config(fast_config())
            .start()
            .is_err(),
        "a worker with no registered kind is refused"
    );
    w.shutdown().await.unwrap();
}

/// `JobError::discard` and `JobError::cancel` end the job at once.
pub async fn job_error_kinds_choose_the_outcome(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let w = start(&store, fast_config());
    let d = enqueue(&jobs, probe(&t, 1, Action::Discard), q()).await;
    let c = enqueue(&jobs, probe(&t, 2, Action::Cancel), q()).await;
    let rec = wait_state(&store, d, JobState::Discarded, T).await;
    assert_eq!(
        (rec.attempt, rec.errors[0].error.as_str()),
        (1, "planned discard")
    );
    let rec = wait_state(&store, c, JobState::Cancelled, T).await;
    assert_eq!(rec.errors[0].error, "planned cancel");
    w.shutdown().await.unwrap();
}

/// Cancelling a running job by id fires its cancellation token; it ends `cancelled`.
pub async fn cancel_stops_a_running_job(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let w = start(&store, fast_config());
    let id = enqueue(&jobs, probe(&t, 1, Action::WaitForCancel), q()).await;
    wait_state(&store, id, JobState::Running, T).await;
    assert!(jobs.cancel(id).await.unwrap());
    wait_for("the job to see its cancellation", T, || async {
        events(&t).iter().any(|e| e.event == "cancelled")
    })
    .await;
    let rec = wait_state(&store, id, JobState::Cancelled, T).await;
    assert_eq!(rec.attempt, 1);
    w.shutdown().await.unwrap();
}

/// Shutdown stops fetching, lets short jobs finish, and releases the ones past the deadline
/// back to `available` without counting their attempt.
pub async fn graceful_shutdown_finishes_or_releases(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let w = start(
        &store,
        fast_config().shutdown_timeout(Duration::from_millis(800)),
    );
    let short = enqueue(&jobs, probe(&t, 1, Action::Sleep(300)), q()).await;
    let long = enqueue(&jobs, probe(&t, 2, Action::Sleep(60_000)), q()).await;
    wait_for("both jobs to start", T, || async { starts(&t).len() == 2 }).await;
    w.shutdown().await.unwrap();
    assert_eq!(
        store
            .get(&TenantScope::All, short)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Completed
    );
    let rec = store.get(&TenantScope::All, long).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.locked_by),
        (JobState::Available, 0, None)
    );
    // Nothing new was fetched after shutdown started.
    let later = enqueue(&jobs, probe(&t, 3, Action::Succeed), q()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        store
            .get(&TenantScope::All, later)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Available
    );
}

/// A job held by a worker that stopped heartbeating is rescued and completed by another.
pub async fn dead_worker_jobs_are_rescued(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let id = enqueue(&jobs, probe(&t, 1, Action::Succeed), q()).await;
    // "dead" claims it and never reports back.
    assert_eq!(store.fetch("q", &[], 1, "dead").await.unwrap().len(), 1);
    let w = start(&store, fast_config());
    let rec = wait_state(&store, id, JobState::Completed, T).await;
    assert_eq!(rec.attempt, 2);
    assert!(
        rec.errors[0]
            .error
            .contains("worker dead stopped heartbeating"),
        "{:?}",
        rec.errors
    );
    assert_eq!(rec.errors[0].worker.as_deref(), Some("dead"));
    w.shutdown().await.unwrap();
}

/// Within a queue, higher priority (lower number) runs first.
pub async fn priorities_order_work_within_a_queue(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    jobs.pause("q").await.unwrap();
    let prios = [7i16, 2, 9, 0, 5, 2, 8, 1];
    for (n, p) in prios.iter().enumerate() {
        enqueue(
            &jobs,
            probe(&t, n as u64, Action::Succeed),
            q().priority(*p),
        )
        .await;
    }
    let w = start(&store, fast_config().queue("q", 1).fetch_batch(1));
    jobs.resume("q").await.unwrap();
    wait_for("all jobs to run", T, || async {
        starts(&t).len() == prios.len()
    })
    .await;
    let ran: Vec<i16> = starts(&t).iter().map(|e| prios[e.n as usize]).collect();
    let mut sorted = ran.clone();
    sorted.sort();
    assert_eq!(ran, sorted);
    w.shutdown().await.unwrap();
}

/// A flood in `bulk` does not delay `critical`: queues have their own concurrency.
pub async fn bulk_flood_does_not_delay_critical(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let flood: Vec<Probe> = (0..400).map(|n| probe(&t, n, Action::Sleep(20))).collect();
    jobs.enqueue_many(&flood, &EnqueueOptions::new().queue("bulk"))
        .await
        .unwrap();
    let w = start(&store, fast_config().queue("bulk", 2).queue("critical", 2));
    wait_for("the flood to start", T, || async { !starts(&t).is_empty() }).await;
    let id = enqueue(
        &jobs,
        probe(&t, 10_000, Action::Succeed),
        EnqueueOptions::new().queue("critical"),
    )
    .await;
    wait_state(&store, id, JobState::Completed, T).await;
    let waiting = jobs
        .list(
            &JobFilter::new()
                .queue("bulk")
                .state(JobState::Available)
                .limit(10),
        )
        .await
        .unwrap();
    assert!(
        !waiting.is_empty(),
        "critical must complete while the bulk flood is still queued"
    );
    w.shutdown().await.unwrap();
}

/// A scheduled job runs at its time (not before, and promptly after, without waiting for a
/// poll: the worker sleeps until the next due job).
pub async fn scheduled_jobs_run_on_time(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let w = start(&store, fast_config().poll_interval(Duration::from_secs(30)));
    let id = enqueue(
        &jobs,
        probe(&t, 1, Action::Succeed),
        q().delay(Duration::from_millis(500)),
    )
    .await;
    let rec = wait_state(&store, id, JobState::Completed, T).await;
    let started = rec.attempted_at.unwrap();
    assert!(
        started >= rec.run_at,
        "started {started} before run_at {}",
        rec.run_at
    );
    assert!(
        started - rec.run_at < chrono::Duration::seconds(3),
        "started {started}, due {}",
        rec.run_at
    );
    w.shutdown().await.unwrap();
}

/// An idle worker is woken by a new job (LISTEN/NOTIFY or the memory channel), not by polling.
pub async fn new_jobs_wake_an_idle_worker(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let w = start(&store, fast_config().poll_interval(Duration::from_secs(60)));
    // Let the worker reach its idle wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = enqueue(&jobs, probe(&t, 1, Action::Succeed), q()).await;
    wait_state(&store, id, JobState::Completed, Duration::from_secs(20)).await;
    w.shutdown().await.unwrap();
}

/// Three workers with the same cron entry enqueue each tick once.
pub async fn cron_fires_once_per_tick_across_workers(store: Arc<dyn JobStore>) {
    let t = token();
    let cron = windlass_jobs::CronJob::new(
        "every-second",
        "* * * * * *",
        &probe(&t, 1, Action::Succeed),
        &q(),
    )
    .expect("valid cron");
    let workers: Vec<RunningWorker> = (0..3)
        .map(|_| {
            Worker::new(store.clone())
                .register::<Probe>()
                .config(fast_config())
                .cron(cron.clone())
                .start()
                .unwrap()
        })
        .collect();
    wait_for("three ticks to run", Duration::from_secs(15), || async {
        starts(&t).len() >= 3
    })
    .await;
    for w in workers {
        w.shutdown().await.unwrap();
    }
    let rows = Jobs::from_arc(store.clone())
        .list(&JobFilter::new().kind(Probe::KIND).limit(1000))
        .await
        .unwrap();
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| r.args["token"] == t.as_str())
        .collect();
    let keys: HashSet<_> = rows
        .iter()
        .map(|r| {
            r.unique_key
                .clone()
                .expect("cron rows carry their tick key")
        })
        .collect();
    assert_eq!(
        keys.len(),
        rows.len(),
        "a tick was enqueued twice: {keys:?}"
    );
    assert!(rows.len() >= 3);
    let ran: HashSet<JobId> = starts(&t).iter().map(|e| e.job_id).collect();
    assert_eq!(ran.len(), starts(&t).len(), "a cron job ran twice");
    assert!(CronJobCheck::bad_schedule_is_refused());
}

struct CronJobCheck;

impl CronJobCheck {
    fn bad_schedule_is_refused() -> bool {
        matches!(
            windlass_jobs::CronJob::new(
                "x",
                "not a schedule",
                &probe("t", 1, Action::Succeed),
                &q()
            ),
            Err(Error::Cron { .. })
        )
    }
}

/// Instantiates the whole suite as `#[tokio::test]`s. `$make` is an async expression giving
/// `(Arc<dyn JobStore>, guard)`.
#[macro_export]
macro_rules! job_store_conformance {
    ($make:expr) => {
        $crate::job_store_conformance!(@tests $make;
            fetch_respects_priority_then_time,
            scheduled_jobs_wait_for_run_at,
            completion_is_state_guarded,
            batched_finish_applies_many_outcomes,
            unique_jobs_are_enqueued_once,
            cancel_retry_discard_by_id,
            prune_deletes_old_final_jobs,
            paused_queues_are_not_fetched,
            list_and_counts,
            release_returns_jobs_without_counting_the_attempt,
            worker_retries_and_records_errors,
            exhausted_jobs_are_discarded,
            panics_are_caught_and_retried,
            timeouts_fail_the_attempt,
            undecodable_args_are_discarded_at_once,
            a_worker_serves_exactly_its_queues_and_kinds,
            tenant_handles_are_isolated,
            bad_args_are_refused_at_enqueue,
            job_error_kinds_choose_the_outcome,
            cancel_stops_a_running_job,
            cancel_or_discard_then_retry_now_never_overlaps,
            a_worker_that_cannot_heartbeat_fences_itself,
            blocking_jobs_past_their_timeout_never_exceed_concurrency,
            shutdown_never_releases_a_running_attempt,
            graceful_shutdown_finishes_or_releases,
            dead_worker_jobs_are_rescued,
            priorities_order_work_within_a_queue,
            bulk_flood_does_not_delay_critical,
            scheduled_jobs_run_on_time,
            new_jobs_wake_an_idle_worker,
            cron_fires_once_per_tick_across_workers
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        mod job_store_conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _guard) = $make.await;
                    $crate::jobs::$name(store).await;
                }
            )*
        }
    };
}
