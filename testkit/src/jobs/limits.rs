//! Limits across workers: rate limits (whole queue and per partition) in every window, a
//! per-partition concurrency limit while other partitions proceed, and round-robin claims
//! between partitions (a flooding tenant never holds back another one's job for more than one
//! fetch round).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use windlass_core::TenantScope;
use windlass_jobs::{
    EnqueueOptions, JobId, JobState, JobStore, Jobs, PartitionBy, QueueLimits, RateLimit,
};

use super::{
    Action, T, enqueue, events, fast_config, max_running, probe, q, raw, start, starts, token,
    wait_state,
};

/// The most claim times (`attempted_at`, the store's clock) in any window `[s, s + period)`.
fn max_in_window(mut at: Vec<DateTime<Utc>>, period: Duration) -> usize {
    at.sort_unstable();
    let period = chrono::Duration::from_std(period).unwrap();
    (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t < at[i] + period).count())
        .max()
        .unwrap_or(0)
}

async fn claim_times(store: &Arc<dyn JobStore>, ids: &[JobId]) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    for id in ids {
        let rec = store.get(&TenantScope::All, *id).await.unwrap().unwrap();
        assert_eq!(rec.attempt, 1, "job {id} ran more than once: {rec:?}");
        out.push(rec.attempted_at.expect("claimed"));
    }
    out
}

/// A rate limit holds in every window across three workers: the whole queue at most 5 starts
/// per 500 ms, then each tenant at most 3 per 500 ms (per-partition rate) while both tenants
/// start in the same window. Checked on the claim times the store recorded.
pub async fn rate_limits_hold_in_every_window(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    let period = Duration::from_millis(500);
    assert!(matches!(
        jobs.set_queue_limits(
            "q",
            QueueLimits::new().rate(RateLimit::new(5, Duration::ZERO))
        )
        .await,
        Err(windlass_jobs::Error::InvalidOption { .. })
    ));
    assert!(matches!(
        jobs.set_queue_limits("q", QueueLimits::new().per_partition(2))
            .await,
        Err(windlass_jobs::Error::InvalidOption { .. })
    ));
    let whole = QueueLimits::new().rate(RateLimit::new(5, period));
    jobs.set_queue_limits("q", whole.clone()).await.unwrap();
    assert_eq!(
        jobs.queue_limits().await.unwrap(),
        vec![("q".to_owned(), whole)]
    );
    let mut ids = Vec::new();
    for n in 0..15 {
        ids.push(enqueue(&jobs, probe(&t, n, Action::Succeed), q()).await);
    }
    let workers: Vec<_> = (0..3)
        .map(|_| start(&store, fast_config().queue("q", 5)))
        .collect();
    for id in &ids {
        wait_state(&store, *id, JobState::Completed, T).await;
    }
    let at = claim_times(&store, &ids).await;
    let max = max_in_window(at.clone(), period);
    assert_eq!(
        max, 5,
        "{max} starts in one {period:?} window under a rate of 5: {at:?}"
    );

    // Per tenant: 3 per period each, two tenants side by side.
    let per_tenant = QueueLimits::new()
        .partition_by(PartitionBy::Org)
        .per_partition_rate(RateLimit::new(3, period));
    jobs.set_queue_limits("q", per_tenant).await.unwrap();
    let mut by_tenant: Vec<Vec<JobId>> = vec![Vec::new(), Vec::new()];
    for n in 0..8 {
        for (i, org) in ["org-a", "org-b"].iter().enumerate() {
            let id = enqueue(&jobs, probe(&t, 100 + n, Action::Succeed), q().org_id(*org)).await;
            by_tenant[i].push(id);
        }
    }
    let mut all = Vec::new();
    for ids in &by_tenant {
        for id in ids {
            wait_state(&store, *id, JobState::Completed, T).await;
        }
        let at = claim_times(&store, ids).await;
        let max = max_in_window(at.clone(), period);
        assert_eq!(
            max, 3,
            "{max} starts of one tenant in a window under 3 per tenant: {at:?}"
        );
        all.extend(at);
    }
    let max = max_in_window(all, period);
    assert!(
        max > 3,
        "tenants held each other back: at most {max} starts per window in all"
    );
    for w in workers {
        w.shutdown().await.unwrap();
    }
    jobs.set_queue_limits("q", QueueLimits::new())
        .await
        .unwrap();
    assert!(jobs.queue_limits().await.unwrap().is_empty());
}

/// Each tenant at most 2 jobs at a time across three workers (recorded starts and ends), while
/// the other tenants' jobs run beside them.
pub async fn per_partition_concurrency_holds_while_others_proceed(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    jobs.set_queue_limits(
        "q",
        QueueLimits::new()
            .partition_by(PartitionBy::Org)
            .per_partition(2),
    )
    .await
    .unwrap();
    let tenants = ["org-a", "org-b", "org-c"];
    let mut ids = Vec::new();
    for n in 0..8 {
        for (i, org) in tenants.iter().enumerate() {
            let p = probe(&t, i as u64 * 100 + n, Action::BlockInPool(60));
            ids.push(enqueue(&jobs, p, q().org_id(*org)).await);
        }
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
    let mut reached = 0;
    for i in 0..tenants.len() as u64 {
        let mine: Vec<_> = evs.iter().filter(|e| e.n / 100 == i).cloned().collect();
        let max = max_running(&mine);
        assert!(
            max <= 2,
            "tenant {i}: {max} at once under 2 per tenant: {mine:?}"
        );
        reached = reached.max(max);
    }
    assert_eq!(reached, 2, "no tenant ever ran 2 at once: {evs:?}");
    let max = max_running(&evs);
    assert!(
        (3..=6).contains(&max),
        "{max} jobs at once across 3 tenants limited to 2 each: {evs:?}"
    );
}

/// A partitioned queue claims round-robin: after a tenant flooded 20 000 jobs and was served,
/// the next fetch of one job takes another tenant's single job, and fetches of one rotate
/// between tenants, least recently served first. Each tenant's own jobs keep their order.
pub async fn fair_fetch_serves_a_quiet_tenant_within_one_round(store: Arc<dyn JobStore>) {
    let jobs = Jobs::from_arc(store.clone());
    jobs.set_queue_limits("q", QueueLimits::new().partition_by(PartitionBy::Org))
        .await
        .unwrap();
    let opts = |org: &str| q().org_id(org);
    let flood: Vec<_> = (0..20_000)
        .map(|n| raw("flood", serde_json::json!({ "n": n }), &opts("org-a")))
        .collect();
    store.insert(flood).await.unwrap();
    let org = |j: &windlass_jobs::FetchedJob| j.org_id.clone().unwrap_or_default();
    let first = store.fetch("q", &[], 10, "w").await.unwrap();
    assert_eq!(first.len(), 10);
    assert!(first.iter().all(|j| org(j) == "org-a"));
    let quiet = jobs
        .insert(vec![raw("quiet", serde_json::json!({}), &opts("org-b"))])
        .await
        .unwrap()[0]
        .id()
        .unwrap();
    let next = store.fetch("q", &[], 1, "w").await.unwrap();
    assert_eq!(
        next.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![quiet],
        "the quiet tenant's job waited behind the flood"
    );
    // Three tenants, fetches of one: a rotation, least recently served first.
    for org in ["org-b", "org-c"] {
        let more: Vec<_> = (0..3)
            .map(|n| raw("quiet", serde_json::json!({ "n": n }), &opts(org)))
            .collect();
        jobs.insert(more).await.unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..6 {
        let got = store.fetch("q", &[], 1, "w").await.unwrap();
        assert_eq!(got.len(), 1);
        order.push(org(&got[0]));
    }
    assert_eq!(
        order,
        ["org-c", "org-a", "org-b", "org-c", "org-a", "org-b"],
        "fetches of one job did not rotate between tenants"
    );
    // A fetch of many takes each tenant's head first: every tenant with work is in it.
    let many = store.fetch("q", &[], 10, "w").await.unwrap();
    let mut orgs: Vec<_> = many.iter().map(org).collect();
    orgs.sort();
    orgs.dedup();
    assert_eq!(orgs, ["org-a", "org-b", "org-c"], "{many:?}");
    let a: Vec<_> = many
        .iter()
        .filter(|j| org(j) == "org-a")
        .map(|j| j.id)
        .collect();
    assert!(
        a.windows(2).all(|w| w[0] < w[1]),
        "a tenant's jobs out of order: {a:?}"
    );
    // Nothing was skipped or lost: every job not fetched is still available.
    let fetched = first.len() + 1 + order.len() + many.len();
    let available: i64 = store
        .counts(&TenantScope::All)
        .await
        .unwrap()
        .iter()
        .filter(|c| c.queue == "q" && c.state == JobState::Available)
        .map(|c| c.count)
        .sum();
    assert_eq!(available as usize, 20_000 + 1 + 6 - fetched);
}

/// Through workers: while tenant A's 20 000 jobs drain, tenant B's one job starts before more
/// than two fetch rounds of A's jobs (the one fetch that may have missed it, plus the jobs
/// already in flight: at most the worker's concurrency each). Counted in start order.
pub async fn a_flooding_tenant_delays_another_by_at_most_one_round(store: Arc<dyn JobStore>) {
    let t = token();
    let jobs = Jobs::from_arc(store.clone());
    jobs.set_queue_limits("q", QueueLimits::new().partition_by(PartitionBy::Org))
        .await
        .unwrap();
    let flood: Vec<_> = (0..20_000)
        .map(|n| {
            EnqueueOptions::new()
                .queue("q")
                .org_id("org-a")
                .build(&probe(&t, n, Action::Succeed))
                .unwrap()
        })
        .collect();
    store.insert(flood).await.unwrap();
    let concurrency = 10;
    let w = start(&store, fast_config().queue("q", concurrency));
    super::wait_for("the flood to start", T, || async { starts(&t).len() >= 50 }).await;
    let before = starts(&t).len();
    let quiet = enqueue(
        &jobs,
        probe(&t, 1_000_000, Action::Succeed),
        q().org_id("org-b"),
    )
    .await;
    wait_state(&store, quiet, JobState::Completed, T).await;
    w.shutdown().await.unwrap();
    let all = starts(&t);
    let pos = all
        .iter()
        .position(|e| e.job_id == quiet)
        .expect("the quiet job started");
    let flood_between = pos - before.min(pos);
    assert!(
        flood_between <= 2 * concurrency,
        "{flood_between} of the flood's jobs started between the quiet tenant's enqueue and its start"
    );
    assert!(
        all.len() < 15_000,
        "the flood had drained first ({} started)",
        all.len()
    );
}

/// Partitions by an args field and by kind: a per-partition limit of 1 claims one job of each
/// value (jobs without the field form one partition); an args field that is not a plain name
/// is refused.
pub async fn partitions_by_an_args_field_or_kind(store: Arc<dyn JobStore>) {
    let jobs = Jobs::from_arc(store.clone());
    assert!(matches!(
        jobs.set_queue_limits(
            "q",
            QueueLimits::new().partition_by(PartitionBy::Arg("a'b".into()))
        )
        .await,
        Err(windlass_jobs::Error::InvalidOption { .. })
    ));
    let by_account = QueueLimits::new()
        .partition_by(PartitionBy::Arg("account".into()))
        .per_partition(1);
    jobs.set_queue_limits("q", by_account.clone())
        .await
        .unwrap();
    assert_eq!(
        jobs.queue_limits().await.unwrap(),
        vec![("q".to_owned(), by_account)]
    );
    let rows = [
        serde_json::json!({ "account": "x" }),
        serde_json::json!({ "account": "x" }),
        serde_json::json!({ "account": 7 }),
        serde_json::json!({ "account": 7 }),
        serde_json::json!({}),
        serde_json::json!({ "account": null }),
    ]
    .into_iter()
    .map(|args| raw("k1", args, &q()))
    .collect();
    store.insert(rows).await.unwrap();
    let got = store.fetch("q", &[], 10, "w").await.unwrap();
    let mut accounts: Vec<_> = got.iter().map(|j| j.args["account"].to_string()).collect();
    accounts.sort();
    assert_eq!(
        accounts,
        ["\"x\"", "7", "null"],
        "one job per account value: {got:?}"
    );
    assert!(store.fetch("q", &[], 10, "w").await.unwrap().is_empty());

    // By kind, on another queue.
    let other = EnqueueOptions::new().queue("other");
    jobs.set_queue_limits(
        "other",
        QueueLimits::new()
            .partition_by(PartitionBy::Kind)
            .per_partition(1),
    )
    .await
    .unwrap();
    let rows = ["k1", "k1", "k2", "k2"]
        .into_iter()
        .map(|k| raw(k, serde_json::json!({}), &other))
        .collect();
    store.insert(rows).await.unwrap();
    let got = store.fetch("other", &[], 10, "w").await.unwrap();
    let mut kinds: Vec<_> = got.iter().map(|j| j.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["k1", "k2"]);
}
