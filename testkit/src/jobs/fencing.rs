//! Conformance: fenced attempts never overlap. Cancel / discard of a running job followed by
//! `retry_now`, and a worker cut off from its heartbeats while another rescues its job; the
//! probes record start and end of every attempt, and the tests assert that no attempt starts
//! before the previous one ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use windlass_core::TenantScope;
use windlass_jobs::{
    AttemptToken, Enqueued, Error, FetchedJob, Finish, HeartbeatReply, JobFilter, JobId, JobRecord,
    JobState, JobStore, Jobs, NewJob, QueueCount, QueueLimits, Rescued, Result,
};

use super::{Action, ProbeEvent, T, enqueue, events, fast_config, probe, q, start, token};
use super::{wait_for, wait_state};

/// A store whose heartbeats can be made to hang (a blocked heartbeat connection), delegating
/// everything else to the real store.
#[derive(Clone)]
pub struct HeartbeatGate {
    inner: Arc<dyn JobStore>,
    blocked: Arc<AtomicBool>,
    /// Armed once the worker is known to be fenced: every `fetch` call counts as a violation.
    fenced: Arc<AtomicBool>,
    claims_while_fenced: Arc<AtomicUsize>,
}

impl std::fmt::Debug for HeartbeatGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatGate")
            .field("blocked", &self.blocked)
            .finish_non_exhaustive()
    }
}

impl HeartbeatGate {
    /// Wraps `inner`, heartbeats passing.
    pub fn new(inner: Arc<dyn JobStore>) -> Self {
        Self {
            inner,
            blocked: Arc::new(AtomicBool::new(false)),
            fenced: Arc::new(AtomicBool::new(false)),
            claims_while_fenced: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// From now on (`true`) the worker is known to be self-fenced: any `fetch` it calls is
    /// counted by [`claims_while_fenced`](Self::claims_while_fenced).
    pub fn known_fenced(&self, fenced: bool) {
        self.fenced.store(fenced, Ordering::SeqCst);
    }

    /// `fetch` calls made while [`known_fenced`](Self::known_fenced) was on.
    pub fn claims_while_fenced(&self) -> usize {
        self.claims_while_fenced.load(Ordering::SeqCst)
    }

    /// Heartbeats hang (`true`) or pass (`false`) from now on.
    pub fn block(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
    }
}

#[async_trait]
impl JobStore for HeartbeatGate {
    async fn insert(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.inner.insert(jobs).await
    }
    async fn fetch(
        &self,
        queue: &str,
        kinds: &[String],
        limit: usize,
        worker: &str,
    ) -> Result<Vec<FetchedJob>> {
        if self.fenced.load(Ordering::SeqCst) {
            self.claims_while_fenced.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.fetch(queue, kinds, limit, worker).await
    }
    async fn finish(&self, worker: &str, finished: &[Finish]) -> Result<u64> {
        self.inner.finish(worker, finished).await
    }
    async fn heartbeat(&self, worker: &str, attempts: &[AttemptToken]) -> Result<HeartbeatReply> {
        if self.blocked.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.heartbeat(worker, attempts).await
    }
    async fn rescue(&self, stale_after: Duration) -> Result<Vec<Rescued>> {
        self.inner.rescue(stale_after).await
    }
    async fn release(&self, worker: &str, attempts: &[AttemptToken]) -> Result<u64> {
        self.inner.release(worker, attempts).await
    }
    async fn next_due(&self, queue: &str, kinds: &[String]) -> Result<Option<DateTime<Utc>>> {
        self.inner.next_due(queue, kinds).await
    }
    async fn cancel(&self, scope: &TenantScope, id: JobId) -> Result<bool> {
        self.inner.cancel(scope, id).await
    }
    async fn retry_now(&self, scope: &TenantScope, id: JobId) -> Result<bool> {
        self.inner.retry_now(scope, id).await
    }
    async fn discard(&self, scope: &TenantScope, id: JobId) -> Result<bool> {
        self.inner.discard(scope, id).await
    }
    async fn prune(&self, older_than: Duration) -> Result<u64> {
        self.inner.prune(older_than).await
    }
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.inner.set_paused(queue, paused).await
    }
    async fn set_global_limit(&self, queue: &str, limit: Option<u32>) -> Result<()> {
        self.inner.set_global_limit(queue, limit).await
    }
    async fn set_queue_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()> {
        self.inner.set_queue_limits(queue, limits).await
    }
    async fn queue_limits(&self) -> Result<Vec<(String, QueueLimits)>> {
        self.inner.queue_limits().await
    }
    async fn paused_queues(&self) -> Result<Vec<String>> {
        self.inner.paused_queues().await
    }
    async fn global_limits(&self) -> Result<Vec<(String, u32)>> {
        self.inner.global_limits().await
    }
    async fn get(&self, scope: &TenantScope, id: JobId) -> Result<Option<JobRecord>> {
        self.inner.get(scope, id).await
    }
    async fn list(&self, scope: &TenantScope, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        self.inner.list(scope, filter).await
    }
    async fn counts(&self, scope: &TenantScope) -> Result<Vec<QueueCount>> {
        self.inner.counts(scope).await
    }
    async fn refresh_counts(&self) -> Result<()> {
        self.inner.refresh_counts().await
    }
    async fn count_snapshot(&self, scope: &TenantScope) -> Result<windlass_jobs::CountSnapshot> {
        self.inner.count_snapshot(scope).await
    }
    async fn try_lead(&self, worker: &str, ttl: Duration) -> Result<bool> {
        self.inner.try_lead(worker, ttl).await
    }
    async fn subscribe(&self) -> Result<Option<broadcast::Receiver<String>>> {
        self.inner.subscribe().await
    }
}

/// Asserts that the recorded attempts of `job` never overlap: each attempt's `"end"` comes
/// before the next attempt's `"start"`, attempts in order.
pub fn assert_attempts_never_overlap(evs: &[ProbeEvent], job: JobId) {
    let mut running: Option<i32> = None;
    let mut last = 0;
    for e in evs.iter().filter(|e| e.job_id == job) {
        match e.event {
            "start" => {
                assert!(
                    running.is_none(),
                    "attempt {} of job {job} started while attempt {running:?} still ran: {evs:?}",
                    e.attempt
                );
                assert!(e.attempt > last, "attempts out of order: {evs:?}");
                running = Some(e.attempt);
                last = e.attempt;
            }
            "end" => {
                assert_eq!(running, Some(e.attempt), "end without start: {evs:?}");
                running = None;
            }
            _ => {}
        }
    }
}

/// Cancel (or discard) of a running job is a request: the row stays `running` until the
/// attempt has really ended; `retry_now` meanwhile is refused with [`Error::JobRunning`]; once
/// final, `retry_now` starts attempt 2, which never overlaps attempt 1.
pub async fn cancel_or_discard_then_retry_now_never_overlaps(store: Arc<dyn JobStore>) {
    for stop in [JobState::Cancelled, JobState::Discarded] {
        let t = token();
        let jobs = Jobs::from_arc(store.clone());
        let w = start(&store, fast_config());
        // Attempt 1 takes 400 ms to stop once asked (blocking: its abort cannot cut it short).
        let id = enqueue(&jobs, probe(&t, 1, Action::StopSlowlyFirst(400)), q()).await;
        wait_for("attempt 1 to start", T, || async {
            events(&t).iter().any(|e| e.event == "start")
        })
        .await;
        let requested = match stop {
            JobState::Cancelled => jobs.cancel(id).await.unwrap(),
            _ => jobs.discard(id).await.unwrap(),
        };
        assert!(requested);
        // Hammer retry_now until it is accepted: every refusal must be JobRunning, and it may
        // only be accepted once attempt 1 has ended.
        let mut refused = 0;
        loop {
            match jobs.retry_now(id).await {
                Err(Error::JobRunning { id: got }) => {
                    assert_eq!(got, id);
                    refused += 1;
                }
                Ok(true) => break,
                other => panic!("unexpected retry_now answer {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(refused > 0, "retry_now was accepted while the job ran");
        assert!(
            events(&t)
                .iter()
                .any(|e| e.event == "end" && e.attempt == 1),
            "retry_now accepted before attempt 1 ended: {:?}",
            events(&t)
        );
        let rec = wait_state(&store, id, JobState::Completed, T).await;
        assert_eq!(rec.attempt, 2);
        let evs = events(&t);
        assert_attempts_never_overlap(&evs, id);
        assert_eq!(
            evs.iter()
                .filter(|e| e.event != "cancelled")
                .map(|e| (e.attempt, e.event))
                .collect::<Vec<_>>(),
            vec![(1, "start"), (1, "end"), (2, "start"), (2, "end")]
        );
        // Attempt 1 ended in the requested state, and said so.
        assert!(
            rec.errors
                .iter()
                .any(|e| e.attempt == 1 && e.error.contains("by request")),
            "{:?}",
            rec.errors
        );
        w.shutdown().await.unwrap();
    }
}

/// A worker whose heartbeats hang fences itself: it stops its attempt (which honours
/// cancellation) before `rescue_after`, so the rescuing worker's attempt never overlaps it; it
/// fetches nothing while fenced, and works again once a heartbeat succeeds.
pub async fn a_worker_that_cannot_heartbeat_fences_itself(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let gate = HeartbeatGate::new(store.clone());
    let gated: Arc<dyn JobStore> = Arc::new(gate.clone());
    // fast_config: heartbeat 50 ms, self-fence after 750 ms, rescue after 1.5 s.
    let a = start(&gated, fast_config().worker_id("gated"));
    let id = enqueue(&jobs, probe(&t, 1, Action::StopSlowlyFirst(100)), q()).await;
    wait_for("attempt 1 to start", T, || async {
        events(&t).iter().any(|e| e.event == "start")
    })
    .await;
    gate.block(true);
    let b = start(&store, fast_config().worker_id("rescuer"));
    // The watchdog cancelled attempt 1: the worker is fenced from here on, and must not even
    // try to claim (its slot frees when attempt 1 ends: a loop waiting for it claimed once).
    wait_for("the self-fence to cancel attempt 1", T, || async {
        events(&t).iter().any(|e| e.event == "cancelled")
    })
    .await;
    gate.known_fenced(true);
    let rec = wait_state(&store, id, JobState::Completed, T).await;
    assert_eq!(rec.attempt, 2);
    assert_attempts_never_overlap(&events(&t), id);
    assert!(
        rec.errors[0].error.contains("self-fenced") || rec.errors[0].error.contains("rescued"),
        "{:?}",
        rec.errors
    );
    // While fenced, the gated worker fetches nothing.
    b.shutdown().await.unwrap();
    let waiting = enqueue(&jobs, probe(&t, 2, Action::Succeed), q()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let rec = store
        .get(&TenantScope::All, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.state,
        JobState::Available,
        "a fenced worker fetched a job: {rec:?}; events {:?}",
        events(&t)
    );
    assert_eq!(
        gate.claims_while_fenced(),
        0,
        "the fenced worker tried to claim"
    );
    // Heartbeats pass again: it unfences and works.
    gate.known_fenced(false);
    gate.block(false);
    wait_state(&store, waiting, JobState::Completed, T).await;
    a.shutdown().await.unwrap();
}

/// A stop requested by id decides the outcome even when the worker never received it: its
/// heartbeats hang, so it self-fences; the attempt, stopped by its token, returns `Ok`; the
/// job ends in the requested state (not `completed`) and its errors say it was requested.
pub async fn a_stop_request_decides_an_attempt_stopped_for_another_reason(
    store: Arc<dyn JobStore>,
) {
    for stop in [JobState::Cancelled, JobState::Discarded] {
        let t = token();
        let jobs = Jobs::from_arc(store.clone());
        let gate = HeartbeatGate::new(store.clone());
        let gated: Arc<dyn JobStore> = Arc::new(gate.clone());
        let w = start(&gated, fast_config());
        let id = enqueue(&jobs, probe(&t, 1, Action::WaitForCancel), q()).await;
        wait_state(&store, id, JobState::Running, T).await;
        // From now on the worker hears nothing: neither the request nor its lease renewals.
        gate.block(true);
        let requested = match stop {
            JobState::Cancelled => jobs.cancel(id).await.unwrap(),
            _ => jobs.discard(id).await.unwrap(),
        };
        assert!(requested);
        let rec = wait_state(&store, id, stop, T).await;
        assert_eq!(rec.attempt, 1);
        assert!(
            events(&t).iter().any(|e| e.event == "cancelled"),
            "the attempt was stopped by its token"
        );
        assert!(
            rec.errors
                .iter()
                .any(|e| e.attempt == 1 && e.error.contains("by request")),
            "{:?}",
            rec.errors
        );
        gate.block(false);
        w.shutdown().await.unwrap();
    }
}

/// A stop requested after the attempt's task returned `Ok` (its slot and lease still held for
/// blocking work it left running) does not turn the success into a stop: the job completes.
pub async fn a_stop_request_after_the_attempt_returned_leaves_its_success(
    store: Arc<dyn JobStore>,
) {
    for stop in [JobState::Cancelled, JobState::Discarded] {
        let t = token();
        let jobs = Jobs::from_arc(store.clone());
        let w = start(&store, fast_config());
        let id = enqueue(&jobs, probe(&t, 1, Action::LeaveBlockingBehind(1500)), q()).await;
        wait_for("the attempt returned", T, || {
            let returned = events(&t).iter().any(|e| e.event == "returned");
            async move { returned }
        })
        .await;
        // The row still runs (the blocking work holds it): the request is taken, and a
        // heartbeat (every 50 ms here) hands it to the worker before the work ends.
        let requested = match stop {
            JobState::Cancelled => jobs.cancel(id).await.unwrap(),
            _ => jobs.discard(id).await.unwrap(),
        };
        assert!(requested, "the job was still running");
        let rec = wait_state(&store, id, JobState::Completed, T).await;
        assert!(
            events(&t).iter().any(|e| e.event == "end"),
            "the outcome was written after the blocking work ended"
        );
        assert!(rec.errors.is_empty(), "{:?}", rec.errors);
        w.shutdown().await.unwrap();
    }
}

/// `retry_now` racing the end of the attempt it waits for: refused with `JobRunning` while the
/// row runs, accepted once it is final; never "missing" (`Ok(false)`) for a job that exists.
pub async fn retry_now_racing_the_end_of_an_attempt_is_never_missing(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    for n in 0..150u64 {
        let id = enqueue(&jobs, probe(&t, n, Action::Succeed), q()).await;
        let got = store.fetch("q", &[], 1, "racer").await.unwrap();
        assert_eq!(got.len(), 1);
        let attempt = got[0].attempt;
        let finisher = {
            let store = store.clone();
            tokio::spawn(async move {
                // Vary where the end lands among the retries.
                for _ in 0..(n % 7) {
                    tokio::task::yield_now().await;
                }
                let error = windlass_jobs::AttemptError::new(attempt, "stop", None);
                let outcome = windlass_jobs::Outcome::Cancel { error };
                assert_eq!(
                    store
                        .finish("racer", &[Finish::new(id, attempt, outcome)])
                        .await
                        .unwrap(),
                    1
                );
            })
        };
        loop {
            match jobs.retry_now(id).await {
                Err(Error::JobRunning { id: got }) => assert_eq!(got, id),
                Ok(true) => break,
                other => panic!("retry_now of job {id} (iteration {n}) answered {other:?}"),
            }
        }
        finisher.await.unwrap();
        let rec = store.get(&TenantScope::All, id).await.unwrap().unwrap();
        assert_eq!(rec.state, JobState::Available);
        // Out of the way of the next iteration's fetch.
        assert!(jobs.cancel(id).await.unwrap());
    }
}
