//! Conformance: tenant handles. A handle scoped to one tenant never reads or changes another
//! tenant's jobs (by id, in listings, in counts), stamps its own tenant on what it enqueues, and
//! may not run queue-wide operations.

use std::sync::Arc;
use std::time::Duration;

use windlass_core::{OrgId, TenantScope};
use windlass_jobs::{EnqueueOptions, Error, JobFilter, JobState, JobStore, Jobs};

use super::{Action, probe, token};

/// Tenant isolation of every by-id, list and count operation, on both sides of each.
pub async fn tenant_handles_are_isolated(store: Arc<dyn JobStore>) {
    let t = token();
    let operator = Jobs::from_arc(store.clone());
    let acme = operator.for_tenant(OrgId::new("acme").unwrap());
    let globex = operator.for_tenant(OrgId::new("globex").unwrap());
    let opts = || {
        EnqueueOptions::new()
            .queue("q")
            .delay(Duration::from_secs(3600))
    };
    let enq = |jobs: &Jobs, n| {
        let jobs = jobs.clone();
        let t = t.clone();
        async move {
            jobs.enqueue(&probe(&t, n, Action::Succeed), &opts())
                .await
                .unwrap()
                .id()
                .unwrap()
        }
    };
    let a1 = enq(&acme, 1).await;
    let a2 = enq(&acme, 2).await;
    let g1 = enq(&globex, 3).await;
    let none = enq(&operator, 4).await;
    // Jobs enqueued through a tenant's handle carry its tenant.
    let rec = operator.get(a1).await.unwrap().unwrap();
    assert_eq!(rec.org_id.as_deref(), Some("acme"));
    assert_eq!(
        operator.get(none).await.unwrap().unwrap().org_id,
        None,
        "the operator's handle stamps no tenant"
    );
    // Another tenant's job, or one without a tenant, is missing for acme.
    for id in [g1, none] {
        assert!(acme.get(id).await.unwrap().is_none());
        assert!(!acme.cancel(id).await.unwrap());
        assert!(!acme.discard(id).await.unwrap());
        assert!(!acme.retry_now(id).await.unwrap());
        let rec = operator.get(id).await.unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.finalized_at),
            (JobState::Scheduled, None),
            "acme changed job {id} of another tenant"
        );
    }
    // Its own jobs it can act on.
    assert!(acme.get(a2).await.unwrap().is_some());
    assert!(acme.cancel(a2).await.unwrap());
    assert_eq!(
        operator.get(a2).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert!(acme.retry_now(a2).await.unwrap());
    // Listings and counts: own jobs only, whatever the filter asks.
    let listed: Vec<i64> = acme
        .list(&JobFilter::new().limit(1000))
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, vec![a1, a2]);
    assert!(
        acme.list(&JobFilter::new().org_id("globex"))
            .await
            .unwrap()
            .is_empty()
    );
    let count = |counts: Vec<windlass_jobs::QueueCount>| -> i64 {
        counts
            .iter()
            .filter(|c| c.queue == "q")
            .map(|c| c.count)
            .sum()
    };
    assert_eq!(count(acme.counts().await.unwrap()), 2);
    assert_eq!(count(globex.counts().await.unwrap()), 1);
    assert_eq!(count(operator.counts().await.unwrap()), 4);
    assert_eq!(
        store
            .counts(&TenantScope::org(OrgId::new("nobody").unwrap()))
            .await
            .unwrap(),
        vec![]
    );
    // A tenant cannot enqueue for another tenant, nor act on every tenant's queue.
    assert!(matches!(
        acme.enqueue(&probe(&t, 5, Action::Succeed), &opts().org_id("globex"))
            .await,
        Err(Error::OutOfScope { .. })
    ));
    assert!(matches!(
        acme.pause("q").await,
        Err(Error::OutOfScope { .. })
    ));
    assert!(matches!(
        acme.resume("q").await,
        Err(Error::OutOfScope { .. })
    ));
    assert!(matches!(
        acme.prune(Duration::from_secs(1)).await,
        Err(Error::OutOfScope { .. })
    ));
    assert_eq!(
        count(operator.counts().await.unwrap()),
        4,
        "nothing was added"
    );
}

/// Arguments the database cannot store (a NUL character in a value or a key) are refused at
/// validation with a typed error, and nothing of the batch is inserted.
pub async fn bad_args_are_refused_at_enqueue(store: Arc<dyn JobStore>) {
    let jobs = Jobs::from_arc(store.clone());
    let opts = EnqueueOptions::new().queue("q");
    for args in [
        serde_json::json!({"name": "a\0b"}),
        serde_json::json!({"list": ["ok", {"k\0": 1}]}),
    ] {
        let good = opts
            .build_raw("ok.kind", serde_json::json!({"v": 1}))
            .unwrap();
        let err = opts.build_raw("ok.kind", args).unwrap_err();
        assert!(matches!(err, Error::InvalidArgs { .. }), "{err:?}");
        // A batch of valid rows goes in; the bad one never reaches the store.
        assert_eq!(jobs.insert(vec![good]).await.unwrap().len(), 1);
    }
    assert_eq!(
        jobs.list(&JobFilter::new()).await.unwrap().len(),
        2,
        "only the valid rows"
    );
}
