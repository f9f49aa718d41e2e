//! Postgres only: the opt-in trigram index for text search over args. Created and dropped on
//! demand, detected by `args_search_indexed`, and used by the listing: with it, a text matching
//! one job of 60 000 is read through the index (its scan counter moves, the table is not
//! scanned); without it, the same listing is still exact.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use windlass_core::{OrgId, TenantScope};
use windlass_jobs::postgres::{
    ARGS_SEARCH_INDEX, PgJobStore, create_args_search_index, drop_args_search_index, migrate,
};
use windlass_jobs::{JobFilter, JobStore, Jobs};
use windlass_testkit::postgres::fresh_database;

const ROWS: i64 = 60_000;

/// (sequential scans of `windlass_jobs`, scans of the trigram index).
async fn scans(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(t.seq_scan, 0), \
                coalesce((SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = $1), 0) \
           FROM pg_stat_user_tables t WHERE t.relname = 'windlass_jobs'",
    )
    .bind(ARGS_SEARCH_INDEX)
    .fetch_one(pool)
    .await
    .expect("pg_stat")
}

#[tokio::test]
async fn args_search_index_is_created_detected_and_used() {
    let db = fresh_database().await;
    migrate(&db.pool).await.expect("migrate");
    sqlx::query(
        "INSERT INTO windlass_jobs (queue, kind, org_id, state, finalized_at, args) \
         SELECT 'q' || (g % 4), 'kind_' || (g % 20), 'org' || (g % 100), 'completed', now(), \
                jsonb_build_object('email', 'user' || g || '@example.com', 'n', g) \
           FROM generate_series(1, $1::int8) g",
    )
    .bind(ROWS)
    .execute(&db.pool)
    .await
    .expect("seed");
    // The store on one connection, whose statistics we ask it to flush after each listing.
    let opts = (*db.pool.connect_options()).clone();
    let one = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .expect("connect");
    let store = PgJobStore::new(one.clone());
    let jobs = Jobs::new(store.clone());
    let needle = JobFilter::new().args_contains("user4242@example");
    let org42 = TenantScope::org(OrgId::new("org42").unwrap());
    let org7 = TenantScope::org(OrgId::new("org7").unwrap());

    // No index: not detected, still exact.
    assert!(!jobs.args_search_indexed().await.unwrap());
    let page = store.list(&TenantScope::All, &needle).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].args["n"], 4242);

    create_args_search_index(&db.pool).await.expect("create");
    create_args_search_index(&db.pool)
        .await
        .expect("create again (idempotent)");
    assert!(jobs.args_search_indexed().await.unwrap());
    sqlx::query("ANALYZE windlass_jobs")
        .execute(&db.pool)
        .await
        .expect("analyze");

    let (seq0, trgm0) = scans(&db.pool).await;
    let page = store.list(&TenantScope::All, &needle).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].args["n"], 4242);
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&one)
        .await
        .expect("flush");
    // The flush happens when that connection goes idle: wait for the index scan to show.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (seq, trgm) = scans(&db.pool).await;
        if trgm > trgm0 {
            assert_eq!(seq, seq0, "the search scanned the table");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scan of the trigram index recorded (sequential scans: {})",
            seq - seq0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Tenant scope and paging still hold with the index.
    assert_eq!(store.list(&org42, &needle).await.unwrap().len(), 1);
    assert!(store.list(&org7, &needle).await.unwrap().is_empty());
    let mut wide = JobFilter::new().args_contains("user4242").limit(4);
    let mut ns: Vec<i64> = Vec::new();
    loop {
        let page = store.list(&TenantScope::All, &wide).await.unwrap();
        ns.extend(page.iter().map(|j| j.args["n"].as_i64().unwrap()));
        match page.last() {
            Some(last) if page.len() == 4 => wide = wide.after(last.id),
            _ => break,
        }
    }
    // 4242 and 42420..=42429, by id (= by n here).
    let mut want = vec![4242];
    want.extend(42_420..=42_429);
    assert_eq!(ns, want);

    drop_args_search_index(&db.pool).await.expect("drop");
    assert!(!jobs.args_search_indexed().await.unwrap());
}
