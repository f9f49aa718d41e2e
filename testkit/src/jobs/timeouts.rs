//! Conformance: honest timeouts and shutdown. A timed-out attempt keeps its slot until its
//! work has really ended (blocking work included), so a queue never runs more jobs at once
//! than its concurrency; shutdown never releases an attempt that is still running.

use std::sync::Arc;
use std::time::Duration;
use windlass_core::TenantScope;

use windlass_jobs::{JobState, JobStore, Jobs};

use super::{
    Action, ProbeEvent, T, assert_attempts_never_overlap, enqueue, events, fast_config, probe, q,
    start, token, wait_for, wait_state,
};

/// The most attempts running at once according to the recorded starts and ends.
pub fn max_running(evs: &[ProbeEvent]) -> usize {
    let (mut now, mut max) = (0usize, 0usize);
    for e in evs {
        match e.event {
            "start" => {
                now += 1;
                max = max.max(now);
            }
            "end" => now = now.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Jobs that block far past their timeout (in `run_blocking`, and right inside `run`) never
/// run more at once than the queue's concurrency: a timed-out attempt keeps its slot until the
/// blocking work returned. Work in `run_blocking` is abandoned at the timeout (the attempt
/// fails with "timed out"); code blocking inside `run` cannot be interrupted at all and its
/// late success is recorded (its work was done; running it again would repeat it).
pub async fn blocking_jobs_past_their_timeout_never_exceed_concurrency(store: Arc<dyn JobStore>) {
    for (action, concurrency, n, end_state) in [
        (Action::BlockInPool(400), 2usize, 5u64, JobState::Discarded),
        (Action::BlockInline(400), 1, 2, JobState::Completed),
    ] {
        let t = token();
        let jobs = Jobs::from_arc(store.clone());
        let w = start(&store, fast_config().queue("q", concurrency));
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(
                enqueue(
                    &jobs,
                    probe(&t, i, action.clone()),
                    q().timeout(Duration::from_millis(50)).max_attempts(1),
                )
                .await,
            );
        }
        for id in &ids {
            let rec = wait_state(&store, *id, end_state, T).await;
            if end_state == JobState::Discarded {
                assert!(
                    rec.errors[0].error.contains("timed out"),
                    "{:?}",
                    rec.errors
                );
            }
        }
        let evs = events(&t);
        assert_eq!(
            evs.iter().filter(|e| e.event == "end").count(),
            n as usize,
            "{evs:?}"
        );
        assert!(
            max_running(&evs) <= concurrency,
            "{action:?}: {} attempts ran at once with concurrency {concurrency}: {evs:?}",
            max_running(&evs)
        );
        w.shutdown().await.unwrap();
    }
}

/// Shutdown with a stuck attempt (blocking code that ignores cancellation and abort) while a
/// second worker runs: the row is not released (it stays `running`, leased by the stopped
/// worker), so the other worker does not start it until the lease expired; the attempts never
/// overlap.
pub async fn shutdown_never_releases_a_running_attempt(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    // The stuck attempt must end after the shutdown returned and before the rescue: shutdown
    // 200 ms + 2 x 100 ms cancel grace (about 0.4 s), the attempt 2 s, rescue 3 s after the
    // stopped worker's last heartbeat. Wide margins: a loaded CI machine once stretched a
    // 0.8 s shutdown past a 1 s attempt.
    let rescue = |c: windlass_jobs::WorkerConfig| {
        c.heartbeat(Duration::from_millis(50), Duration::from_secs(3))
    };
    let a = start(
        &store,
        rescue(fast_config())
            .shutdown_timeout(Duration::from_millis(200))
            .cancel_grace(Duration::from_millis(100))
            .worker_id("stopping"),
    );
    let id = enqueue(&jobs, probe(&t, 1, Action::BlockInline(2000)), q()).await;
    wait_for("the stuck attempt to start", T, || async {
        !events(&t).is_empty()
    })
    .await;
    let b = start(&store, rescue(fast_config()).worker_id("other"));
    a.shutdown().await.unwrap();
    assert!(
        events(&t).iter().all(|e| e.event != "end"),
        "the attempt was meant to outlive the shutdown"
    );
    let rec = store.get(&TenantScope::All, id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.locked_by.as_deref()),
        (JobState::Running, 1, Some("stopping")),
        "a still-running attempt was released at shutdown"
    );
    let rec = wait_state(&store, id, JobState::Completed, T).await;
    assert_eq!(rec.attempt, 2);
    assert_attempts_never_overlap(&events(&t), id);
    b.shutdown().await.unwrap();
}

/// A queue's global concurrency limit holds across workers: three workers allowing 5 each,
/// limit 3, never more than 3 jobs of the queue running at once (recorded starts and ends).
pub async fn global_limit_holds_across_workers(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    jobs.set_global_limit("q", Some(3)).await.unwrap();
    assert!(matches!(
        jobs.set_global_limit("q", Some(0)).await,
        Err(windlass_jobs::Error::InvalidOption { .. })
    ));
    jobs.set_global_limit("other", Some(7)).await.unwrap();
    assert_eq!(
        jobs.global_limits().await.unwrap(),
        vec![("other".to_owned(), 7), ("q".to_owned(), 3)],
        "the limits read back, by queue (the refused 0 changed nothing)"
    );
    jobs.set_global_limit("other", None).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..24 {
        ids.push(enqueue(&jobs, probe(&t, n, Action::BlockInPool(60)), q()).await);
    }
    let workers: Vec<_> = (0..3)
        .map(|_| start(&store, fast_config().queue("q", 5)))
        .collect();
    for id in &ids {
        wait_state(&store, *id, JobState::Completed, T).await;
    }
    for w in workers {
        w.shutdown().await.unwrap();
    }
    let evs = events(&t);
    let max = max_running(&evs);
    assert!(
        (2..=3).contains(&max),
        "{max} jobs ran at once under a global limit of 3: {evs:?}"
    );
    jobs.set_global_limit("q", None).await.unwrap();
    assert!(jobs.global_limits().await.unwrap().is_empty());
}
