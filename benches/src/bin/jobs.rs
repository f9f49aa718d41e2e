//! Jobs throughput / latency harness. Prints ONE JSON line: windlass-jobs figures beside
//! apalis-postgres 1.0 (the baseline) measured on the same Postgres in the same run.
//!
//! ```text
//! cargo run --release -p windlass-benches --bin jobs -- [--jobs 100000] [--backlog 1000000]
//!     [--samples 200] [--concurrency 200] [--batch 100] [--skip-apalis]
//!     [--args-index-ab ROUNDS]
//! ```
//!
//! `--args-index-ab ROUNDS` measures only the write cost of the opt-in args trigram index:
//! bulk enqueue + drain without and with the index, alternating, `ROUNDS` times each.
//!
//! Each measurement gets a fresh database (windlass-testkit). No-op jobs throughout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis_core::backend::TaskSink;
use apalis_core::error::BoxDynError;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::context::WorkerContext;
use apalis_core::worker::ext::parallelize::ParallelizeExt;
use hdrhistogram::Histogram;
use serde_json::json;
use windlass_jobs::postgres::{PgJobStore, migrate};
use windlass_jobs::{EnqueueOptions, Jobs, Worker, WorkerConfig};
use windlass_testkit::postgres::fresh_database;

use windlass_benches::job_kinds::{Noop, Ping, RAN, STARTED_AT};

struct Args {
    jobs: u64,
    backlog: u64,
    samples: u64,
    concurrency: usize,
    batch: usize,
    skip_apalis: bool,
    args_index_ab: u64,
}

fn args() -> Args {
    let mut a = Args {
        jobs: 100_000,
        backlog: 1_000_000,
        samples: 200,
        concurrency: 200,
        batch: 100,
        skip_apalis: false,
        args_index_ab: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{k} needs a number"))
        };
        match k.as_str() {
            "--jobs" => a.jobs = num(),
            "--backlog" => a.backlog = num(),
            "--samples" => a.samples = num(),
            "--concurrency" => a.concurrency = num() as usize,
            "--batch" => a.batch = num() as usize,
            "--skip-apalis" => a.skip_apalis = true,
            "--args-index-ab" => a.args_index_ab = num(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn config(a: &Args) -> WorkerConfig {
    WorkerConfig::default()
        .queues([("bench", a.concurrency)])
        .fetch_batch(a.batch)
        .metrics_interval(None)
        .retention(None, Duration::from_secs(3600))
}

async fn completed(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM windlass_jobs WHERE state = 'completed'")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn enqueue_noops(jobs: &Jobs, n: u64) -> f64 {
    let opts = EnqueueOptions::new().queue("bench");
    let start = Instant::now();
    let mut next = 0;
    while next < n {
        let end = (next + 10_000).min(n);
        let batch: Vec<Noop> = (next..end).map(|n| Noop { n }).collect();
        jobs.enqueue_many(&batch, &opts).await.unwrap();
        next = end;
    }
    start.elapsed().as_secs_f64()
}

/// Enqueue `n` no-op jobs with bulk insert, then drain them with one worker.
async fn windlass_throughput(a: &Args, async_commit: bool) -> serde_json::Value {
    windlass_throughput_with(a, async_commit, false).await
}

/// [`windlass_throughput`], with the opt-in args trigram index when `args_index`.
async fn windlass_throughput_with(
    a: &Args,
    async_commit: bool,
    args_index: bool,
) -> serde_json::Value {
    let db = fresh_database().await;
    let pool = db.new_pool(20).await;
    migrate(&pool).await.unwrap();
    if args_index {
        windlass_jobs::postgres::create_args_search_index(&pool)
            .await
            .unwrap();
    }
    let jobs = Jobs::new(PgJobStore::new(pool.clone()));
    let enqueue_s = enqueue_noops(&jobs, a.jobs).await;
    RAN.store(0, Ordering::SeqCst);
    let start = Instant::now();
    let worker_store: std::sync::Arc<dyn windlass_jobs::JobStore> = if async_commit {
        std::sync::Arc::new(PgJobStore::new(async_commit_pool(&db.url).await))
    } else {
        jobs.store().clone()
    };
    let worker = Worker::new(worker_store)
        .register::<Noop>()
        .config(config(a))
        .start()
        .unwrap();
    // Every job ran (in-process counter), then every outcome is committed (counted once the
    // runs are done, so the count query does not load the database during the drain).
    while RAN.load(Ordering::Relaxed) < a.jobs {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while completed(&pool).await < a.jobs as i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_s = start.elapsed().as_secs_f64();
    worker.shutdown().await.unwrap();
    json!({
        "jobs": a.jobs,
        "enqueue_jobs_per_s": (a.jobs as f64 / enqueue_s).round(),
        "drain_jobs_per_s": (a.jobs as f64 / drain_s).round(),
        "drain_s": drain_s,
        "concurrency": a.concurrency,
        "fetch_batch": a.batch,
        "worker_pool_synchronous_commit": if async_commit { "off" } else { "on" },
        "args_index": args_index,
    })
}

/// A pool whose sessions run with `synchronous_commit = off`: the worker's own bookkeeping
/// (fetch, completion, heartbeat) then does not wait for the WAL flush. A crash of Postgres
/// can lose the last few ms of those writes: jobs go back to available / get rescued and run
/// again, which at-least-once allows. Enqueues stay on the caller's (synchronous) pool.
async fn async_commit_pool(url: &str) -> sqlx::PgPool {
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect_with(opts.options([("synchronous_commit", "off")]))
        .await
        .unwrap()
}

/// Idle worker; one job at a time; enqueue call -> job start.
async fn windlass_pickup_latency(a: &Args, async_commit: bool) -> serde_json::Value {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let jobs = Jobs::new(PgJobStore::new(db.pool.clone()));
    let worker_store: std::sync::Arc<dyn windlass_jobs::JobStore> = if async_commit {
        std::sync::Arc::new(PgJobStore::new(async_commit_pool(&db.url).await))
    } else {
        jobs.store().clone()
    };
    STARTED_AT.lock().unwrap().clear();
    let worker = Worker::new(worker_store)
        .register::<Ping>()
        .config(config(a).poll_interval(Duration::from_secs(5)))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let opts = EnqueueOptions::new().queue("bench");
    for seq in 0..a.samples {
        let sent = Instant::now();
        jobs.enqueue(&Ping { seq }, &opts).await.unwrap();
        let started = loop {
            if let Some(t) = STARTED_AT.lock().unwrap().get(&seq) {
                break *t;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        hist.record(started.duration_since(sent).as_micros() as u64)
            .unwrap();
        // Let the worker go idle again.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.shutdown().await.unwrap();
    json!({
        "samples": a.samples,
        "p50_ms": hist.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": hist.max() as f64 / 1000.0,
        "worker_pool_synchronous_commit": if async_commit { "off" } else { "on" },
    })
}

/// A backlog of `n` jobs; time until 95% of them started.
async fn windlass_backlog(a: &Args) -> serde_json::Value {
    let db = fresh_database().await;
    let pool = db.new_pool(20).await;
    migrate(&pool).await.unwrap();
    let jobs = Jobs::new(PgJobStore::new(pool.clone()));
    let enqueue_s = enqueue_noops(&jobs, a.backlog).await;
    RAN.store(0, Ordering::SeqCst);
    let target = a.backlog * 95 / 100;
    let start = Instant::now();
    let worker = Worker::new(jobs.store().clone())
        .register::<Noop>()
        .config(config(a))
        .start()
        .unwrap();
    while RAN.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let p95_s = start.elapsed().as_secs_f64();
    worker.shutdown().await.unwrap();
    json!({ "backlog": a.backlog, "enqueue_s": enqueue_s, "time_to_95pct_started_s": p95_s })
}

/// Longest an apalis drain may take; a slower one reports the rate over this window.
const APALIS_LIMIT_S: u64 = 150;

static APALIS_DONE: AtomicU64 = AtomicU64::new(0);
static APALIS_TARGET: AtomicU64 = AtomicU64::new(0);

async fn apalis_noop(_n: u64, wrk: WorkerContext) -> Result<(), BoxDynError> {
    if APALIS_DONE.fetch_add(1, Ordering::SeqCst) + 1 == APALIS_TARGET.load(Ordering::SeqCst) {
        wrk.stop()?;
    }
    Ok(())
}

/// apalis-postgres 1.0: the same enqueue + drain, fetch batch `batch`.
async fn apalis_throughput(n: u64, batch: usize) -> serde_json::Value {
    let db = fresh_database().await;
    let pool = db.new_pool(20).await;
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .unwrap();
    let config = apalis_postgres::Config::default()
        .queue("bench")
        .batch_size(batch);
    let mut backend: apalis_postgres::PostgresStorage<u64> =
        apalis_postgres::PostgresStorage::new(&pool).with_config(config);
    let start = Instant::now();
    let mut next = 0;
    while next < n {
        let end = (next + 10_000).min(n);
        let tasks: Vec<_> = (next..end).map(|i| TaskBuilder::new(i).build()).collect();
        backend
            .push_all(&mut futures::stream::iter(tasks))
            .await
            .unwrap();
        next = end;
    }
    let enqueue_s = start.elapsed().as_secs_f64();
    APALIS_DONE.store(0, Ordering::SeqCst);
    APALIS_TARGET.store(n, Ordering::SeqCst);
    let worker = WorkerBuilder::new(format!("apalis-bench-{batch}"))
        .backend(backend)
        .parallelize(tokio::spawn)
        .build(apalis_noop);
    let start = Instant::now();
    let limit = Duration::from_secs(APALIS_LIMIT_S);
    let finished = tokio::time::timeout(limit, worker.run()).await.is_ok();
    let drain_s = start.elapsed().as_secs_f64();
    let done = APALIS_DONE.load(Ordering::SeqCst);
    json!({
        "fetch_batch": batch,
        "enqueue_jobs_per_s": (n as f64 / enqueue_s).round(),
        "drain_jobs_per_s": (done as f64 / drain_s).round(),
        "drained": done,
        "finished_within_limit": finished,
        "limit_s": APALIS_LIMIT_S,
    })
}

#[tokio::main]
async fn main() {
    let a = args();
    if a.args_index_ab > 0 {
        let mut runs = Vec::new();
        for round in 0..a.args_index_ab {
            for index in [false, true] {
                let r = windlass_throughput_with(&a, false, index).await;
                eprintln!("round {round}, args index {index}: {r}");
                runs.push(r);
            }
        }
        println!("{}", json!({ "bench": "jobs_args_index_ab", "runs": runs }));
        return;
    }
    let throughput = windlass_throughput(&a, false).await;
    eprintln!("windlass throughput: {throughput}");
    let throughput_async = windlass_throughput(&a, true).await;
    eprintln!("windlass throughput, worker pool with synchronous_commit=off: {throughput_async}");
    let latency = windlass_pickup_latency(&a, false).await;
    eprintln!("windlass pickup latency: {latency}");
    let latency_async = windlass_pickup_latency(&a, true).await;
    eprintln!("windlass pickup latency, worker pool with synchronous_commit=off: {latency_async}");
    let mut apalis = Vec::new();
    if !a.skip_apalis {
        for batch in [10, 100] {
            let r = apalis_throughput(a.jobs, batch).await;
            eprintln!("apalis batch {batch}: {r}");
            apalis.push(r);
        }
    }
    let backlog = if a.backlog > 0 {
        windlass_backlog(&a).await
    } else {
        json!(null)
    };
    eprintln!("windlass backlog: {backlog}");
    let best_apalis = apalis
        .iter()
        .filter_map(|r| r["drain_jobs_per_s"].as_f64())
        .fold(0.0, f64::max);
    let ours = throughput["drain_jobs_per_s"].as_f64().unwrap_or(0.0);
    println!(
        "{}",
        json!({
            "bench": "jobs",
            "windlass": { "throughput": throughput, "throughput_async_commit_worker_pool": throughput_async, "pickup_latency_idle": latency, "pickup_latency_idle_async_commit_worker_pool": latency_async, "backlog": backlog },
            "apalis_postgres_1_0": apalis,
            "drain_ratio_vs_best_apalis": if best_apalis > 0.0 { json!((ours / best_apalis * 100.0).round() / 100.0) } else { json!(null) },
        })
    );
}
