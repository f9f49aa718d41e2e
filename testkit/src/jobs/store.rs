//! Conformance at the store level: fetch order, schedules, fenced completion, batched
//! outcomes, unique keys, by-id operations, pruning, pause, listings, release.

use std::sync::Arc;
use std::time::{Duration, Instant};

use windlass_core::TenantScope;
use windlass_jobs::{
    AttemptError, AttemptToken, EnqueueOptions, Enqueued, Error, Finish, Job, JobFilter, JobId,
    JobState, JobStore, Jobs, Outcome, UniqueOptions,
};

use super::{Action, Probe, T, enqueue, probe, q, raw, token};

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

/// One maintenance leader at a time: the lease is exclusive, renewable by its holder, and
/// taken over once it expired.
pub async fn one_maintenance_leader_at_a_time(store: Arc<dyn JobStore>) {
    let ttl = Duration::from_millis(300);
    assert!(store.try_lead("w1", ttl).await.unwrap());
    assert!(!store.try_lead("w2", ttl).await.unwrap());
    assert!(
        store.try_lead("w1", ttl).await.unwrap(),
        "the holder renews"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(store.try_lead("w1", ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !store.try_lead("w2", ttl).await.unwrap(),
        "the renewal extended the lease"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        store.try_lead("w2", ttl).await.unwrap(),
        "expired: taken over"
    );
    assert!(!store.try_lead("w1", ttl).await.unwrap());
}
