//! Conformance of what the operations console reads: the count snapshot (exact as of its
//! refresh, tenant-scoped, never live) and listings under every filter shape (same rows, same
//! id order and the same keyset pages whichever index a backend answers them from).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use windlass_core::{OrgId, TenantScope};
use windlass_jobs::{
    AttemptError, EnqueueOptions, Error, Finish, JobFilter, JobId, JobRecord, JobState, JobStore,
    Jobs, Outcome, QueueCount,
};

use super::raw;

const QUEUES: [&str; 3] = ["qa", "qb", "qc"];
const KINDS: [&str; 3] = ["k.one", "k.two", "k.three"];
const ORGS: [Option<&str>; 3] = [Some("acme"), Some("globex"), None];

/// Inserts 63 jobs spread over queues, kinds and tenants, then moves them into every state
/// (scheduled, running, retryable, completed, cancelled, discarded; the rest stay available).
/// Returns every job, by id.
async fn seed(store: &Arc<dyn JobStore>) -> Vec<JobRecord> {
    let mut rows = Vec::new();
    for n in 0..63usize {
        let mut opts = EnqueueOptions::new().queue(QUEUES[n % 3]);
        if let Some(org) = ORGS[(n / 3) % 3] {
            opts = opts.org_id(org);
        }
        if n % 7 == 1 {
            opts = opts.delay(Duration::from_secs(3600));
        }
        rows.push(raw(
            KINDS[(n / 9) % 3],
            serde_json::json!({ "n": n }),
            &opts,
        ));
    }
    store.insert(rows).await.expect("insert");
    let all = TenantScope::All;
    let jobs = store
        .list(&all, &JobFilter::new().limit(1000))
        .await
        .expect("list");
    // Claim some jobs of each queue, then give each claimed job an outcome by its position.
    let mut finishes = Vec::new();
    let mut running = 0;
    for queue in QUEUES {
        for (i, job) in store
            .fetch(queue, &[], 12, "w")
            .await
            .expect("fetch")
            .into_iter()
            .enumerate()
        {
            let error = || AttemptError::new(job.attempt, "boom", None);
            let outcome = match i % 5 {
                0 => Outcome::Completed,
                1 => Outcome::Retry {
                    run_at: Utc::now() + chrono::Duration::hours(1),
                    error: error(),
                },
                2 => Outcome::Discard { error: error() },
                3 => Outcome::Cancel { error: error() },
                _ => {
                    running += 1;
                    continue;
                }
            };
            finishes.push(Finish::new(job.id, job.attempt, outcome));
        }
    }
    assert!(running > 0);
    store.finish("w", &finishes).await.expect("finish");
    // And a cancel by id of waiting jobs.
    for job in jobs.iter().filter(|j| j.id % 11 == 0) {
        let _ = store.cancel(&all, job.id).await.expect("cancel");
    }
    let jobs = store
        .list(&all, &JobFilter::new().limit(1000))
        .await
        .expect("list");
    for s in JobState::ALL {
        assert!(jobs.iter().any(|j| j.state == s), "the seed has no {s} job");
    }
    jobs
}

fn sorted(mut counts: Vec<QueueCount>) -> Vec<(String, JobState, i64)> {
    counts.sort_by(|a, b| (&a.queue, a.state).cmp(&(&b.queue, b.state)));
    counts
        .into_iter()
        .map(|c| (c.queue, c.state, c.count))
        .collect()
}

fn org(name: &str) -> TenantScope {
    TenantScope::org(OrgId::new(name).expect("org id"))
}

/// The snapshot is empty and undated before the first refresh, equals the live counts of
/// every scope right after one (per tenant: that tenant's jobs only), does not move with the
/// jobs until the next refresh, and is dated by it. Tenant handles may read their own
/// snapshot but not recount (a recount covers every tenant).
pub async fn count_snapshot_is_exact_as_of_refresh_and_scoped(store: Arc<dyn JobStore>) {
    let before = store.count_snapshot(&TenantScope::All).await.unwrap();
    assert_eq!(before.refreshed_at, None);
    assert!(before.counts.is_empty());
    let jobs = seed(&store).await;
    // Not live: still nothing counted.
    assert!(
        store
            .count_snapshot(&TenantScope::All)
            .await
            .unwrap()
            .counts
            .is_empty()
    );
    let t0 = Utc::now() - chrono::Duration::seconds(1);
    store.refresh_counts().await.unwrap();
    let scopes = [TenantScope::All, org("acme"), org("globex"), org("nobody")];
    for scope in &scopes {
        let snap = store.count_snapshot(scope).await.unwrap();
        let live = store.counts(scope).await.unwrap();
        assert_eq!(sorted(snap.counts.clone()), sorted(live), "scope {scope:?}");
        let at = snap.refreshed_at.expect("dated");
        assert!(at >= t0 && at <= Utc::now() + chrono::Duration::seconds(1));
        assert!(snap.refresh_took.is_some());
        let expected = jobs
            .iter()
            .filter(|j| scope.allows(j.org_id.as_deref()))
            .count() as i64;
        assert_eq!(snap.counts.iter().map(|c| c.count).sum::<i64>(), expected);
    }
    let acme = store.count_snapshot(&org("acme")).await.unwrap();
    assert_eq!(
        acme.total(JobState::Available) + acme.total(JobState::Scheduled),
        jobs.iter()
            .filter(|j| j.org_id.as_deref() == Some("acme"))
            .filter(|j| matches!(j.state, JobState::Available | JobState::Scheduled))
            .count() as i64
    );
    // A change shows only after the next refresh.
    let waiting = jobs
        .iter()
        .find(|j| j.state == JobState::Available && j.queue == "qa")
        .expect("an available job in qa");
    let old = store.count_snapshot(&TenantScope::All).await.unwrap();
    assert!(store.cancel(&TenantScope::All, waiting.id).await.unwrap());
    let same = store.count_snapshot(&TenantScope::All).await.unwrap();
    assert_eq!(same, old);
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.refresh_counts().await.unwrap();
    let new = store.count_snapshot(&TenantScope::All).await.unwrap();
    assert_eq!(
        new.count("qa", JobState::Available),
        old.count("qa", JobState::Available) - 1
    );
    assert_eq!(
        new.count("qa", JobState::Cancelled),
        old.count("qa", JobState::Cancelled) + 1
    );
    assert!(new.refreshed_at > old.refreshed_at);
    // Through the handles.
    let operator = Jobs::from_arc(store.clone());
    let tenant = operator.for_tenant(OrgId::new("globex").unwrap());
    assert!(matches!(
        tenant.refresh_counts().await,
        Err(Error::OutOfScope { .. })
    ));
    operator.refresh_counts().await.unwrap();
    assert_eq!(
        sorted(tenant.count_snapshot().await.unwrap().counts),
        sorted(store.counts(&org("globex")).await.unwrap())
    );
}

/// Pages every filter shape with a small page size: each gives exactly the jobs the filter
/// and the scope allow, in id order, each once, whatever mix of columns and states it names
/// (several states, none, a column with no matching row, a tenant asked outside the scope).
pub async fn list_filters_page_in_id_order(store: Arc<dyn JobStore>) {
    let jobs = seed(&store).await;
    let s = JobState::ALL;
    let mut filters = vec![JobFilter::new()];
    for state in s {
        filters.push(JobFilter::new().state(state));
    }
    filters.extend([
        JobFilter::new()
            .state(JobState::Discarded)
            .state(JobState::Retryable),
        JobFilter::new()
            .state(JobState::Completed)
            .state(JobState::Available)
            .state(JobState::Completed),
        JobFilter::new().queue("qb"),
        JobFilter::new().queue("qb").state(JobState::Available),
        JobFilter::new()
            .queue("qa")
            .state(JobState::Running)
            .state(JobState::Cancelled),
        JobFilter::new().kind("k.two"),
        JobFilter::new().kind("k.three").state(JobState::Scheduled),
        JobFilter::new().kind("k.one").queue("qc"),
        JobFilter::new().org_id("acme"),
        JobFilter::new().org_id("globex").state(JobState::Completed),
        JobFilter::new()
            .org_id("acme")
            .kind("k.two")
            .queue("qa")
            .state(JobState::Available)
            .state(JobState::Cancelled),
        JobFilter::new().kind("no.such.kind"),
        JobFilter::new()
            .queue("nosuchqueue")
            .state(JobState::Available),
        JobFilter::new().org_id("nobody"),
    ]);
    let scopes = [TenantScope::All, org("acme"), org("globex")];
    let mut nonempty = 0;
    for scope in &scopes {
        for filter in &filters {
            let expected: Vec<JobId> = jobs
                .iter()
                .filter(|j| scope.allows(j.org_id.as_deref()) && filter.matches(j))
                .map(|j| j.id)
                .collect();
            let mut got = Vec::new();
            let mut page_filter = filter.clone().limit(4);
            loop {
                let page = store.list(scope, &page_filter).await.unwrap();
                assert!(page.len() <= 4);
                for j in &page {
                    assert!(
                        scope.allows(j.org_id.as_deref()) && filter.matches(j),
                        "{filter:?} in {scope:?} returned job {} ({}, {}, {:?}, {})",
                        j.id,
                        j.queue,
                        j.kind,
                        j.org_id,
                        j.state
                    );
                }
                got.extend(page.iter().map(|j| j.id));
                match page.last() {
                    Some(last) if page.len() == 4 => page_filter = page_filter.after(last.id),
                    _ => break,
                }
            }
            assert_eq!(got, expected, "{filter:?} in {scope:?}");
            nonempty += usize::from(!expected.is_empty());
        }
    }
    assert!(nonempty > 30, "too few filters match anything: {nonempty}");
}
