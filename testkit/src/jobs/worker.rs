//! Conformance through a real worker: retries, dead-letter, panics, timeouts, bad input,
//! queues and kinds, cancel, shutdown, rescue, priorities, queue isolation, schedules,
//! wake-ups, cron.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use windlass_core::TenantScope;
use windlass_jobs::{
    EnqueueOptions, Error, Job, JobFilter, JobId, JobState, JobStore, Jobs, RunningWorker, Worker,
    WorkerConfig,
};

use super::{
    Action, Probe, T, enqueue, events, fast_config, probe, q, raw, start, starts, token, wait_for,
    wait_state,
};

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

/// `RunningWorker::drain` returns once every due job of the worker's queues has run (retries
/// due meanwhile included) and every outcome is written: no polling of the store needed.
pub async fn drain_runs_the_queue_until_empty(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let mut ids = Vec::new();
    for n in 0..30 {
        let action = if n % 3 == 0 {
            Action::FailTimes(1)
        } else {
            Action::Sleep(20)
        };
        ids.push(enqueue(&jobs, probe(&t, n, action), q()).await);
    }
    let w = start(&store, fast_config().queue("q", 4));
    w.drain(T).await.unwrap();
    for id in ids {
        assert_eq!(
            store
                .get(&TenantScope::All, id)
                .await
                .unwrap()
                .unwrap()
                .state,
            JobState::Completed,
            "drain returned before job {id} completed"
        );
    }
    // A worker that cannot empty its queue in time says so.
    let slow = enqueue(&jobs, probe(&t, 99, Action::Sleep(2_000)), q()).await;
    let w = start(&store, fast_config());
    assert!(matches!(
        w.drain(Duration::from_millis(300)).await,
        Err(Error::DrainTimeout { .. })
    ));
    let _ = slow;
}

/// Shared state handed to jobs by type ([`Worker::state`]).
#[derive(Debug, Default)]
pub struct RunCounter(pub std::sync::atomic::AtomicUsize);

/// A kind with its own timeout (50 ms) and retry policy (1 h fixed) that counts its runs in
/// the worker's [`RunCounter`] state and then sleeps far past its timeout.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KindSettings;

impl Job for KindSettings {
    const KIND: &'static str = "windlass.kind_settings";

    async fn run(&self, ctx: windlass_jobs::JobContext) -> Result<(), windlass_jobs::JobError> {
        ctx.state::<RunCounter>()?
            .0
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    }

    fn timeout() -> Option<Duration> {
        Some(Duration::from_millis(50))
    }

    fn retry_policy() -> Option<windlass_core::RetryPolicy> {
        Some(
            windlass_core::RetryPolicy::default()
                .with_delays(Duration::from_secs(3600), Duration::from_secs(3600))
                .with_jitter(0.0),
        )
    }
}

/// Per-kind timeout and retry policy apply (an enqueue option would still win), and jobs get
/// the worker's typed state through their context.
pub async fn kinds_bring_their_timeout_retry_policy_and_state(store: Arc<dyn JobStore>) {
    let counter = Arc::new(RunCounter::default());
    let jobs = Jobs::from_arc(store.clone());
    let w = Worker::new(store.clone())
        .register::<KindSettings>()
        .shared_state(counter.clone())
        .config(fast_config())
        .start()
        .unwrap();
    let id = jobs
        .enqueue(&KindSettings, &q().max_attempts(3))
        .await
        .unwrap()
        .id()
        .unwrap();
    let rec = wait_state(&store, id, JobState::Retryable, T).await;
    assert!(
        rec.errors[0].error.contains("timed out after 50ms"),
        "{:?}",
        rec.errors
    );
    assert!(
        rec.run_at > chrono::Utc::now() + chrono::Duration::minutes(30),
        "the kind's 1 h backoff was not used: {}",
        rec.run_at
    );
    assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    w.shutdown().await.unwrap();
    // Without the state, the attempt fails with a clear error (and is retried).
    let w = Worker::new(store.clone())
        .register::<KindSettings>()
        .config(fast_config())
        .start()
        .unwrap();
    let id = jobs
        .enqueue(&KindSettings, &q())
        .await
        .unwrap()
        .id()
        .unwrap();
    let rec = wait_state(&store, id, JobState::Retryable, T).await;
    assert!(
        rec.errors[0].error.contains("no state of type"),
        "{:?}",
        rec.errors
    );
    w.shutdown().await.unwrap();
}

/// Ticks missed while no worker ran are caught up on start within the window (`CatchUp`),
/// each once however many workers catch up; `Latest` enqueues only the newest missed tick.
pub async fn cron_catches_up_missed_ticks_once(store: Arc<dyn JobStore>) {
    for (catch_up, expected) in [
        (
            windlass_jobs::CatchUp::All {
                within: Duration::from_secs(5),
            },
            4..=5usize,
        ),
        (
            windlass_jobs::CatchUp::Latest {
                within: Duration::from_secs(5),
            },
            1..=1,
        ),
    ] {
        let t = token();
        let name = format!("catch-up-{}", &t[..8]);
        let cron =
            windlass_jobs::CronJob::new(&name, "* * * * * *", &probe(&t, 1, Action::Succeed), &q())
                .expect("valid cron")
                .catch_up(catch_up);
        let started = chrono::Utc::now();
        let workers: Vec<RunningWorker> = (0..2)
            .map(|_| {
                Worker::new(store.clone())
                    .register::<Probe>()
                    .config(fast_config())
                    .cron(cron.clone())
                    .start()
                    .unwrap()
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for w in workers {
            w.shutdown().await.unwrap();
        }
        let rows: Vec<_> = Jobs::from_arc(store.clone())
            .list(&JobFilter::new().kind(Probe::KIND).limit(1000))
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.args["token"] == t.as_str())
            .collect();
        let ticks: HashSet<i64> = rows
            .iter()
            .filter_map(|r| r.unique_key.as_deref()?.rsplit(':').next()?.parse().ok())
            .collect();
        assert_eq!(ticks.len(), rows.len(), "a tick was enqueued twice");
        let caught_up = ticks
            .iter()
            .filter(|&&tick| tick <= started.timestamp())
            .count();
        assert!(
            expected.contains(&caught_up),
            "{catch_up:?}: {caught_up} missed ticks enqueued, wanted {expected:?}"
        );
    }
}
