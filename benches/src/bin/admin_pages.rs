//! Console page timings at scale. Seeds a database with `--jobs` job rows and `--outbox`
//! outbox rows (realistic state mix, 100 tenants, 4 queues, 20 kinds), then times every page of
//! the console (in process through its router, authenticated by a bearer header, no network)
//! and prints ONE JSON line: per page, the median and the worst of `--samples` requests and
//! the status. Progress goes to stderr.
//!
//! ```text
//! cargo run --release -p windlass-benches --bin admin_pages -- --jobs 10000000 --outbox 1000000
//!     [--samples 5] [--keep] [--name DATABASE] [--args-index]
//! ```
//!
//! `--args-index` creates the opt-in trigram index for text search over args
//! (`windlass_jobs::postgres::create_args_search_index`) before the pages, timed, and reports
//! its size; the console then answers `q=` from it instead of its bounded scan.
//!
//! Queue, kind and tenant are spread independently of the state (state from `g % 100`; tenant,
//! kind and queue from Postgres' `hashint8` of `g`), so every filter combination matches about
//! its share of the rows.
//!
//! Seeding writes the rows with `INSERT ... SELECT generate_series` (the harness's own SQL:
//! the console itself only calls the primitives' APIs): 10M job rows take a few minutes here.
//! The database is named after the sizes (`windlass_admin_seed2_j{jobs}_o{outbox}`, or
//! `--name`) and reused by the next run when `--keep` kept it (migrated to the current schema
//! first, timed); without `--keep` it is dropped at the end. The job counts are recounted once
//! before the pages (timed: the cost of one refresh by the jobs maintenance leader).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use tower::ServiceExt;
use windlass_admin::{Console, ConsoleConfig, JobsApi, OutboxApi, TenantScope};
use windlass_core::OrgId;
use windlass_jobs::Jobs;

const TOKEN: &str = "bench-token-0123456789";

struct Args {
    jobs: u64,
    outbox: u64,
    samples: usize,
    keep: bool,
    name: Option<String>,
    args_index: bool,
}

fn args() -> Args {
    let mut a = Args {
        jobs: 1_000_000,
        outbox: 100_000,
        samples: 5,
        keep: false,
        name: None,
        args_index: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || -> u64 {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--jobs" => a.jobs = num(),
            "--outbox" => a.outbox = num(),
            "--samples" => a.samples = num() as usize,
            "--keep" => a.keep = true,
            "--args-index" => a.args_index = true,
            "--name" => a.name = Some(it.next().expect("--name takes a database name")),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Seeds jobs in chunks so progress shows and no statement runs for minutes.
async fn seed_jobs(pool: &PgPool, total: u64) {
    const CHUNK: u64 = 500_000;
    let mut done = 0;
    while done < total {
        let n = CHUNK.min(total - done);
        let t = Instant::now();
        sqlx::query(
            "INSERT INTO windlass_jobs (queue, kind, args, org_id, priority, state, attempt, max_attempts, \
                                        run_at, attempted_at, errors, created_at, finalized_at) \
             SELECT (ARRAY['default','critical','low','bulk'])[1 + abs(hashint8(g)) % 4], \
                    'kind_' || (abs(hashint8(g + 1)) % 20), \
                    jsonb_build_object('user_id', g, 'email', 'user' || g || '@example.com', 'plan', (ARRAY['free','pro','team'])[1 + (g % 3)]), \
                    'org' || (abs(hashint8(g + 2)) % 100), \
                    (g % 10)::smallint, \
                    s.state, \
                    CASE WHEN s.state IN ('available','scheduled') THEN 0 ELSE 1 END, \
                    3, \
                    now() - interval '1 day' + (g % 86400) * interval '1 second' \
                        + CASE WHEN s.state = 'scheduled' THEN interval '2 days' ELSE interval '0' END, \
                    CASE WHEN s.state IN ('available','scheduled') THEN NULL ELSE now() - (g % 86400) * interval '1 second' END, \
                    CASE WHEN s.state IN ('discarded','retryable') \
                         THEN jsonb_build_array(jsonb_build_object('attempt', 1, 'at', now(), 'error', 'smtp timeout after 30s talking to mx' || (g % 7))) \
                         ELSE '[]'::jsonb END, \
                    now() - interval '1 day' + (g % 86400) * interval '1 second', \
                    CASE WHEN s.state IN ('completed','cancelled','discarded') THEN now() - (g % 86400) * interval '1 second' END \
               FROM generate_series($1::bigint, $2::bigint) g \
               CROSS JOIN LATERAL (SELECT CASE \
                    WHEN g % 100 < 85 THEN 'completed' WHEN g % 100 < 90 THEN 'discarded' \
                    WHEN g % 100 < 95 THEN 'scheduled' WHEN g % 100 < 98 THEN 'available' \
                    WHEN g % 100 < 99 THEN 'retryable' ELSE 'cancelled' END AS state) s",
        )
        .bind(done as i64 + 1)
        .bind((done + n) as i64)
        .execute(pool)
        .await
        .expect("seed jobs");
        done += n;
        eprintln!(
            "jobs: {done}/{total} ({:.1} s for this chunk)",
            t.elapsed().as_secs_f64()
        );
    }
}

async fn seed_outbox(pool: &PgPool, total: u64) {
    const CHUNK: u64 = 250_000;
    let mut done = 0;
    while done < total {
        let n = CHUNK.min(total - done);
        // The event log, then delivery rows for what is not delivered yet: 2 % pending, 1 % dead
        // (delivered rows have no delivery row left, as in a running outbox).
        sqlx::query(
            "WITH ins AS ( \
               INSERT INTO windlass_outbox (org_id, topic, partition_key, event_type, destinations, event, created_at) \
               SELECT 'org' || (g % 100), 'topic' || (g % 10), 'key' || (g % 5000), 'order.placed', ARRAY['default'], \
                      jsonb_build_object('specversion','1.0','id', g::text,'source','/seed','type','order.placed', \
                                         'orgid','org' || (g % 100),'partitionkey','key' || (g % 5000),'data', jsonb_build_object('order', g))::text, \
                      now() - (g % 86400) * interval '1 second' \
                 FROM generate_series($1::bigint, $2::bigint) g \
               RETURNING seq, org_id, topic, partition_key) \
             INSERT INTO windlass_outbox_delivery (seq, destination, tenant, topic, partition_key, status, attempts, last_error, failed_at) \
             SELECT seq, 'default', org_id, topic, partition_key, \
                    CASE WHEN seq % 100 < 99 THEN 'pending' ELSE 'dead' END, \
                    CASE WHEN seq % 100 < 99 THEN 0 ELSE 1 END, \
                    CASE WHEN seq % 100 = 99 THEN 'destination refused: schema mismatch' END, \
                    CASE WHEN seq % 100 = 99 THEN now() END \
               FROM ins WHERE seq % 100 >= 97",
        )
        .bind(done as i64 + 1)
        .bind((done + n) as i64)
        .execute(pool)
        .await
        .expect("seed outbox");
        done += n;
        eprintln!("outbox: {done}/{total}");
    }
}

async fn database(a: &Args) -> (PgPool, String, bool) {
    let admin_url = windlass_testkit::postgres::url();
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("windlass_admin_seed2_j{}_o{}", a.jobs, a.outbox));
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("postgres");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .expect("pg_database");
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
    }
    let opts: sqlx::postgres::PgConnectOptions = admin_url.parse().expect("url");
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(opts.database(&name))
        .await
        .expect("connect");
    (pool, name, exists)
}

async fn time_page(router: &axum::Router, path: &str, samples: usize) -> serde_json::Value {
    let mut times = Vec::with_capacity(samples);
    let mut status = StatusCode::OK;
    for _ in 0..samples {
        let req = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .expect("request");
        let t = Instant::now();
        let resp = router.clone().oneshot(req).await.expect("infallible");
        status = resp.status();
        let _ = axum::body::to_bytes(resp.into_body(), usize::MAX).await;
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    let out = json!({
        "path": path,
        "status": status.as_u16(),
        "median_ms": ms(times[times.len() / 2]),
        "max_ms": ms(*times.last().expect("samples")),
    });
    eprintln!("{out}");
    out
}

#[tokio::main]
async fn main() {
    let a = args();
    let (pool, name, reused) = database(&a).await;
    // Always: a database kept by an older build gets the newer migrations (timed: at scale
    // that is the cost of upgrading, e.g. building the jobs list indexes).
    let t = Instant::now();
    windlass_jobs::postgres::migrate(&pool)
        .await
        .expect("migrate jobs");
    windlass_outbox::postgres::migrate(&pool)
        .await
        .expect("migrate outbox");
    let migrate_ms = t.elapsed().as_millis();
    eprintln!("migrations: {migrate_ms} ms");
    if !reused {
        let t = Instant::now();
        seed_jobs(&pool, a.jobs).await;
        seed_outbox(&pool, a.outbox).await;
        sqlx::query("VACUUM ANALYZE windlass_jobs")
            .execute(&pool)
            .await
            .expect("vacuum");
        for table in ["windlass_outbox", "windlass_outbox_delivery"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
                .execute(&pool)
                .await
                .expect("vacuum");
        }
        eprintln!("seeded in {:.0} s", t.elapsed().as_secs_f64());
    } else {
        eprintln!("reusing the seeded database {name}");
    }
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
            .fetch_one(&pool)
            .await
            .expect("size");

    let jobs = Jobs::new(windlass_jobs::postgres::PgJobStore::new(pool.clone()));
    let outbox = windlass_outbox::postgres::PgOutboxStore::new(pool.clone());
    // The counters the maintenance leaders keep (a running relay, a running worker refresh
    // them); the job recount is timed: it is what the jobs leader pays per refresh.
    windlass_outbox::OutboxMaintenance::refresh_stats(&outbox)
        .await
        .expect("outbox counters");
    let t = Instant::now();
    jobs.refresh_counts().await.expect("job counts");
    let refresh_counts_ms = t.elapsed().as_millis();
    eprintln!("jobs refresh_counts: {refresh_counts_ms} ms");
    let args_index = if a.args_index {
        let t = Instant::now();
        windlass_jobs::postgres::create_args_search_index(&pool)
            .await
            .expect("args index");
        let build_ms = t.elapsed().as_millis();
        sqlx::query("ANALYZE windlass_jobs")
            .execute(&pool)
            .await
            .expect("analyze");
        let (bytes, pretty): (i64, String) = sqlx::query_as(
            "SELECT pg_relation_size(to_regclass($1)), pg_size_pretty(pg_relation_size(to_regclass($1)))",
        )
        .bind(windlass_jobs::postgres::ARGS_SEARCH_INDEX)
        .fetch_one(&pool)
        .await
        .expect("index size");
        eprintln!("args index: built in {build_ms} ms, {pretty}");
        json!({ "build_ms": build_ms, "bytes": bytes, "size": pretty })
    } else {
        let _ = windlass_jobs::postgres::drop_args_search_index(&pool).await;
        json!(null)
    };
    let console = |scope: TenantScope| {
        Console::new(
            ConsoleConfig::default()
                .token(TOKEN)
                .expect("token")
                .scope(scope),
        )
        .jobs(JobsApi::new(jobs.clone()))
        .outbox(OutboxApi::new(outbox.clone()))
        .router()
    };
    let all = console(TenantScope::All);
    let org = console(TenantScope::org(OrgId::new("org7").expect("org")));
    let mid = a.jobs / 2;
    let some_job = (a.jobs * 7 / 10).max(1);
    let mut pages = Vec::new();
    for path in [
        "/".to_owned(),
        "/jobs".to_owned(),
        "/jobs?state=discarded".to_owned(),
        "/jobs?state=retryable&queue=critical".to_owned(),
        "/jobs?kind=kind_3&state=available".to_owned(),
        // A filter matching no row: the worst case of a list without a fitting index.
        "/jobs?kind=no_such_kind".to_owned(),
        format!("/jobs?after={mid}"),
        "/jobs?q=user4242%40".to_owned(),
        // A text no job holds (the scan reads its cap; the index a few posting lists) and
        // one every job holds.
        "/jobs?q=no-such-text".to_owned(),
        "/jobs?q=example.com".to_owned(),
        format!("/jobs/{some_job}"),
        "/outbox".to_owned(),
        "/cron".to_owned(),
    ] {
        pages.push(time_page(&all, &path, a.samples).await);
    }
    let mut tenant_pages = Vec::new();
    for path in [
        "/",
        "/jobs",
        "/jobs?state=discarded",
        "/jobs?state=retryable&queue=critical",
        "/jobs?kind=no_such_kind",
        "/jobs?q=user4242%40",
        "/jobs?q=no-such-text",
        "/jobs?q=example.com",
        "/outbox",
    ] {
        tenant_pages.push(time_page(&org, path, a.samples).await);
    }
    println!(
        "{}",
        json!({
            "bench": "admin_pages",
            "jobs": a.jobs,
            "outbox": a.outbox,
            "database_size": size,
            "migrate_ms": migrate_ms,
            "refresh_counts_ms": refresh_counts_ms,
            "args_index": args_index,
            "samples": a.samples,
            "all_tenants": pages,
            "tenant_org7": tenant_pages,
        })
    );
    drop(pool);
    if !a.keep {
        let mut admin = sqlx::PgConnection::connect(&windlass_testkit::postgres::url())
            .await
            .expect("postgres");
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}
