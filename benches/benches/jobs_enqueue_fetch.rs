//! The jobs' hot path: enqueue one job, and one fetch-run-complete cycle (insert, fetch,
//! finish) on the Postgres store (fresh database) and the memory store. Baseline in the same
//! run: a hand-written `INSERT ... RETURNING id` of the same row.
//!
//! ```text
//! cargo bench -p windlass-benches --bench jobs_enqueue_fetch
//! ```

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use windlass_jobs::memory::MemoryJobStore;
use windlass_jobs::postgres::PgJobStore;
use windlass_jobs::{EnqueueOptions, Finish, JobStore, Outcome};

fn row() -> windlass_jobs::NewJob {
    EnqueueOptions::new()
        .build_raw("noop", serde_json::json!({ "n": 1 }))
        .expect("valid job")
}

/// `store()` gives the store of each measurement: a fresh one for the memory store, whose
/// fetch scans every row it holds (so rows left by one measurement would slow the next).
fn cycle(
    c: &mut Criterion,
    name: &str,
    store: impl Fn() -> Arc<dyn JobStore>,
    rt: &tokio::runtime::Runtime,
) {
    let enqueue_store = store();
    let mut g = c.benchmark_group(format!("jobs_{name}"));
    g.bench_function("enqueue_one", |b| {
        b.to_async(rt)
            .iter(|| async { enqueue_store.insert(vec![row()]).await.expect("insert") })
    });
    let store = store();
    // Drain what enqueue_one left so the cycle fetches exactly its own job.
    rt.block_on(async {
        while !store
            .fetch("default", &[], 10_000, "drain")
            .await
            .expect("fetch")
            .is_empty()
        {}
    });
    g.bench_function("enqueue_fetch_complete_one", |b| {
        b.to_async(rt).iter(|| async {
            store.insert(vec![row()]).await.expect("insert");
            let jobs = store.fetch("default", &[], 1, "w").await.expect("fetch");
            let job = jobs.first().expect("a job");
            let n = store
                .finish("w", &[Finish::new(job.id, job.attempt, Outcome::Completed)])
                .await
                .expect("finish");
            assert_eq!(n, 1);
        })
    });
    g.finish();
}

fn jobs(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    cycle(c, "memory", || Arc::new(MemoryJobStore::new()), &rt);
    let db = rt.block_on(windlass_testkit::postgres::fresh_database());
    rt.block_on(windlass_jobs::postgres::migrate(&db.pool))
        .expect("migrate");
    let pool = rt.block_on(db.new_pool(4));
    let pg: Arc<dyn JobStore> = Arc::new(PgJobStore::new(pool.clone()));
    cycle(c, "postgres", || pg.clone(), &rt);
    c.bench_function("jobs_postgres/baseline_raw_insert_one", |b| {
        b.to_async(&rt).iter(|| async {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO windlass_jobs (queue, kind, args) VALUES ('baseline', 'noop', '{\"n\":1}') RETURNING id",
            )
            .fetch_one(&pool)
            .await
            .expect("insert");
            id
        })
    });
    drop(pool);
    drop(db);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        // Charts come from `src/bin/plot.rs`; criterion's own would need a TrueType font library.
        .without_plots()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(20);
    targets = jobs
}
criterion_main!(benches);
