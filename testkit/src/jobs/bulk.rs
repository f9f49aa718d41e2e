//! Enqueue options every store honours the same way: replace-on-conflict of unique jobs and
//! the args size limit.

use super::*;
use windlass_jobs::{Enqueued, Error, Finish, OnConflict, Outcome, UniqueOptions};

fn args_n(rec: &JobRecord) -> u64 {
    rec.args["n"].as_u64().expect("probe args")
}

/// `OnConflict::Replace`: a duplicate replaces a waiting holder's args, `run_at` and priority
/// in place (same id; a retryable holder stays retryable); a running holder is never touched
/// (plain duplicate); repeats inside one batch replace in order, the last one wins; the
/// default still skips.
pub async fn unique_replace_updates_only_a_waiting_holder(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let key = || UniqueOptions::by_key("digest");
    let replace = || q().unique(key().on_conflict(OnConflict::Replace));
    let get = |id| {
        let store = store.clone();
        async move { store.get(&TenantScope::All, id).await.unwrap().unwrap() }
    };
    // A scheduled holder, an hour ahead, priority 5.
    let id = jobs
        .enqueue(
            &probe(&t, 1, Action::Succeed),
            &q().unique(key()).delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    assert_eq!(get(id).await.state, JobState::Scheduled);
    // The default skips and changes nothing.
    assert_eq!(
        jobs.enqueue(&probe(&t, 2, Action::Succeed), &q().unique(key()))
            .await
            .unwrap(),
        Enqueued::Duplicate(Some(id))
    );
    assert_eq!(args_n(&get(id).await), 1);
    // Replace: now, priority 1.
    let out = jobs
        .enqueue(&probe(&t, 3, Action::Succeed), &replace().priority(1))
        .await
        .unwrap();
    assert_eq!(out, Enqueued::Replaced(id));
    assert_eq!((out.id(), out.job_id()), (None, Some(id)));
    let rec = get(id).await;
    assert_eq!(
        (args_n(&rec), rec.priority, rec.state, rec.attempt),
        (3, 1, JobState::Available, 0),
        "{rec:?}"
    );
    assert!(rec.run_at <= chrono::Utc::now());
    // A retryable holder stays retryable with the new run_at.
    let got = store.fetch("q", &[], 1, "w").await.unwrap();
    assert_eq!(got[0].id, id);
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let failed = Outcome::Retry {
        run_at: later,
        error: windlass_jobs::AttemptError::new(1, "boom", None),
    };
    store
        .finish("w", &[Finish::new(id, 1, failed)])
        .await
        .unwrap();
    assert_eq!(
        jobs.enqueue(&probe(&t, 4, Action::Succeed), &replace())
            .await
            .unwrap(),
        Enqueued::Replaced(id)
    );
    let rec = get(id).await;
    assert_eq!(
        (args_n(&rec), rec.state, rec.attempt),
        (4, JobState::Retryable, 1)
    );
    assert!(rec.run_at <= chrono::Utc::now(), "run_at replaced: {rec:?}");
    // A running holder is never touched.
    let got = store.fetch("q", &[], 1, "w").await.unwrap();
    assert_eq!(got[0].id, id);
    assert_eq!(
        jobs.enqueue(&probe(&t, 5, Action::Succeed), &replace().priority(0))
            .await
            .unwrap(),
        Enqueued::Duplicate(Some(id))
    );
    // (Priority 5 came with the replacement of the retryable holder.)
    let rec = get(id).await;
    assert_eq!(
        (args_n(&rec), rec.priority, rec.state),
        (4, 5, JobState::Running)
    );
    // Repeats inside one batch: the first inserts, each later one replaces it in turn.
    let batch = jobs
        .enqueue_many(
            &[
                probe(&t, 10, Action::Succeed),
                probe(&t, 11, Action::Succeed),
                probe(&t, 12, Action::Succeed),
            ],
            &q().unique(UniqueOptions::by_key("batch").on_conflict(OnConflict::Replace)),
        )
        .await
        .unwrap();
    let first = batch[0].id().expect("first of the batch is new");
    assert_eq!(
        batch[1..],
        [Enqueued::Replaced(first), Enqueued::Replaced(first)]
    );
    assert_eq!(args_n(&get(first).await), 12);
    let rows = jobs
        .list(&windlass_jobs::JobFilter::new().kind(Probe::KIND).limit(100))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "replacements insert no rows: {rows:?}");
}

/// Args over the enqueue's size limit are refused with a typed error before anything is
/// written: a bulk enqueue with one oversized job inserts nothing.
pub async fn args_over_the_size_limit_are_refused(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let mut probes: Vec<Probe> = (0..10).map(|n| probe(&t, n, Action::Succeed)).collect();
    probes[7].token = "x".repeat(2_000);
    let err = jobs
        .enqueue_many(&probes, &q().max_args_size(1_000))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ArgsTooLarge { limit: 1_000, size, .. } if size > 2_000),
        "{err:?}"
    );
    let big = probe(&"y".repeat(DEFAULT_LIMIT_PLUS), 0, Action::Succeed);
    assert!(matches!(
        jobs.enqueue(&big, &q()).await,
        Err(Error::ArgsTooLarge { limit, .. }) if limit == windlass_jobs::DEFAULT_MAX_ARGS_SIZE
    ));
    assert!(jobs.counts().await.unwrap().is_empty(), "nothing inserted");
    // Under the limit, the same jobs go in.
    assert_eq!(
        jobs.enqueue_many(&probes, &q().max_args_size(10_000))
            .await
            .unwrap()
            .len(),
        10
    );
}

const DEFAULT_LIMIT_PLUS: usize = windlass_jobs::DEFAULT_MAX_ARGS_SIZE + 1;
