//! Job store conformance suite: the same expectations for every [`JobStore`] backend (memory,
//! Postgres), at the store level (`store`: fetch order, fencing, unique keys, pause, prune, ...)
//! and through a real [`Worker`] (`worker`: retries, dead-letter, panics, timeouts, bad input,
//! cancel, shutdown, rescue, cron, priorities, queue isolation), plus fencing (`fencing`),
//! replace-on-conflict and the args size limit (`bulk`),
//! honest timeouts and shutdown (`timeouts`) and tenant scoping (`tenancy`). This file holds the
//! probe job, the helpers and the macro.
//!
//! A backend's test file instantiates every test with [`job_store_conformance!`](crate::job_store_conformance), giving an
//! async expression that yields `(Arc<dyn JobStore>, guard)`; the guard (e.g. the test
//! database) lives as long as the test.

mod bulk;
mod console;
mod fencing;
mod limits;
mod search;
mod store;
mod tenancy;
mod timeouts;
mod trace;
mod worker;

pub use bulk::*;
pub use console::*;
pub use fencing::*;
pub use limits::*;
pub use search::*;
pub use store::*;
pub use tenancy::*;
pub use timeouts::*;
pub use trace::*;
pub use worker::*;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use windlass_core::TenantScope;

use serde::{Deserialize, Serialize};
use windlass_core::RetryPolicy;
use windlass_jobs::{
    EnqueueOptions, Job, JobContext, JobError, JobId, JobRecord, JobState, JobStore, Jobs,
    RunningWorker, Worker, WorkerConfig,
};

/// What a [`Probe`] job does when it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Action {
    /// Succeed.
    Succeed,
    /// Fail the first `n` attempts, then succeed.
    FailTimes(u32),
    /// Panic in the first `n` attempts, then succeed.
    PanicTimes(u32),
    /// Sleep this many milliseconds (ignoring cancellation), then succeed.
    Sleep(u64),
    /// Wait for the cancellation token, record it, and return.
    WaitForCancel,
    /// Return [`JobError::discard`].
    Discard,
    /// Return [`JobError::cancel`].
    Cancel,
    /// First attempt: wait for the cancellation token, record `"cancelled"`, then take this
    /// many more milliseconds to stop (ignoring everything), record `"end"` and fail. Later attempts: record `"end"`
    /// and succeed at once. Start and end records show whether attempts overlapped.
    StopSlowlyFirst(u64),
    /// Block this many milliseconds in [`JobContext::run_blocking`], record `"end"` from inside
    /// the blocking closure, then succeed.
    BlockInPool(u64),
    /// Block this many milliseconds right inside `run` (`std::thread::sleep`: ignores
    /// cancellation and abort), record `"end"`, then succeed.
    BlockInline(u64),
    /// Start this many milliseconds of [`JobContext::run_blocking`] work (it records `"end"`)
    /// without waiting for it, record `"returned"` and succeed: the attempt's task has ended
    /// while its slot and lease are still held for the blocking work.
    LeaveBlockingBehind(u64),
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
            attempt: ctx.attempt() as i32,
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
                record(&self.token, ev("cancelled"));
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
            Action::LeaveBlockingBehind(ms) => {
                let (ms, token, end) = (*ms, self.token.clone(), ev("end"));
                let work = ctx.run_blocking(move || {
                    std::thread::sleep(Duration::from_millis(ms));
                    record(&token, end);
                });
                let mut work = std::pin::pin!(work);
                // One poll starts it on the blocking pool; dropping the future leaves it running.
                let _ = futures::poll!(work.as_mut());
                record(&self.token, ev("returned"));
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
        // Rescue after 1.5 s (self-fence after 750 ms): a loaded CI machine (parallel tests
        // creating databases) can hold a heartbeat for a few hundred ms, and a spurious
        // self-fence would fail tests that are not about fencing.
        .heartbeat(Duration::from_millis(50), Duration::from_millis(1500))
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

/// Instantiates the whole suite as `#[tokio::test]`s. `$make` is an async expression giving
/// `(Arc<dyn JobStore>, guard)`.
#[macro_export]
macro_rules! job_store_conformance {
    ($make:expr) => {
        $crate::job_store_conformance!(@tests $make;
            fetch_respects_priority_then_time,
            trace_context_is_carried_to_the_worker,
            scheduled_jobs_wait_for_run_at,
            completion_is_state_guarded,
            batched_finish_applies_many_outcomes,
            unique_jobs_are_enqueued_once,
            unique_replace_updates_only_a_waiting_holder,
            args_over_the_size_limit_are_refused,
            cancel_retry_discard_by_id,
            prune_deletes_old_final_jobs,
            paused_queues_are_not_fetched,
            list_and_counts,
            count_snapshot_is_exact_as_of_refresh_and_scoped,
            list_filters_page_in_id_order,
            args_contains_is_an_escaped_substring_scoped_and_paged,
            release_returns_jobs_without_counting_the_attempt,
            worker_retries_and_records_errors,
            exhausted_jobs_are_discarded,
            panics_are_caught_and_retried,
            timeouts_fail_the_attempt,
            undecodable_args_are_discarded_at_once,
            a_worker_serves_exactly_its_queues_and_kinds,
            tenant_handles_are_isolated,
            bad_args_are_refused_at_enqueue,
            drain_runs_the_queue_until_empty,
            kinds_bring_their_timeout_retry_policy_and_state,
            one_maintenance_leader_at_a_time,
            cron_catches_up_missed_ticks_once,
            global_limit_holds_across_workers,
            rate_limits_hold_in_every_window,
            per_partition_concurrency_holds_while_others_proceed,
            fair_fetch_serves_a_quiet_tenant_within_one_round,
            a_flooding_tenant_delays_another_by_at_most_one_round,
            partitions_by_an_args_field_or_kind,
            job_error_kinds_choose_the_outcome,
            cancel_stops_a_running_job,
            cancel_or_discard_then_retry_now_never_overlaps,
            a_stop_request_decides_an_attempt_stopped_for_another_reason,
            a_stop_request_after_the_attempt_returned_leaves_its_success,
            retry_now_racing_the_end_of_an_attempt_is_never_missing,
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
