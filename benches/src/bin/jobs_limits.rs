//! Queue limits harness (issue 13 item 5). Prints ONE JSON line; every limited figure beside
//! its same-run baseline, each measurement on a fresh database (windlass-testkit), no-op jobs.
//!
//! ```text
//! cargo run --release -p windlass-benches --bin jobs_limits -- [--jobs 50000] [--flood 100000]
//!     [--samples 100] [--concurrency 200] [--batch 100]
//! ```
//!
//! - **drain**: `--jobs` enqueued, then one worker (queue concurrency `--concurrency`, fetch
//!   batch `--batch`) drains them: unlimited (the baseline: the one-statement fetch), with a
//!   global concurrency limit above the worker's concurrency (never binding: the cost of the
//!   limited fetch path alone), and with one at half of it (binding).
//! - **fairness**: tenant A floods `--flood` jobs, one worker drains them; once it runs,
//!   tenant B enqueues `--samples` jobs, one every 20 ms; B's wait (enqueue call -> start) p50 /
//!   p99 / max, with the queue partitioned by tenant (round-robin, partition index on) against
//!   the same queue unpartitioned (one FIFO: the baseline).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use windlass_jobs::postgres::{PgJobStore, create_partition_index, migrate};
use windlass_jobs::{
    EnqueueOptions, JobStore, Jobs, PartitionBy, QueueLimits, Worker, WorkerConfig,
};
use windlass_testkit::postgres::fresh_database;

use windlass_benches::job_kinds::{Noop, Ping, RAN, STARTED_AT};

struct Args {
    jobs: u64,
    flood: u64,
    samples: u64,
    concurrency: usize,
    batch: usize,
}

fn args() -> Args {
    let mut a = Args {
        jobs: 50_000,
        flood: 100_000,
        samples: 100,
        concurrency: 200,
        batch: 100,
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
            "--flood" => a.flood = num(),
            "--samples" => a.samples = num(),
            "--concurrency" => a.concurrency = num() as usize,
            "--batch" => a.batch = num() as usize,
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

async fn enqueue_noops(jobs: &Jobs, n: u64, org: &str) {
    let opts = EnqueueOptions::new().queue("bench").org_id(org);
    let mut next = 0;
    while next < n {
        let end = (next + 10_000).min(n);
        let batch: Vec<Noop> = (next..end).map(|n| Noop { n }).collect();
        jobs.enqueue_many(&batch, &opts).await.unwrap();
        next = end;
    }
}

async fn completed(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM windlass_jobs WHERE state = 'completed'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Enqueue `--jobs`, then one worker drains them under `limits`.
async fn drain(a: &Args, limits: QueueLimits) -> serde_json::Value {
    let db = fresh_database().await;
    let pool = db.new_pool(20).await;
    migrate(&pool).await.unwrap();
    let jobs = Jobs::new(PgJobStore::new(pool.clone()));
    jobs.set_queue_limits("bench", limits.clone())
        .await
        .unwrap();
    enqueue_noops(&jobs, a.jobs, "org-a").await;
    RAN.store(0, Ordering::SeqCst);
    let start = Instant::now();
    let worker = Worker::new(jobs.store().clone())
        .register::<Noop>()
        .config(config(a))
        .start()
        .unwrap();
    while RAN.load(Ordering::Relaxed) < a.jobs {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while completed(&pool).await < a.jobs as i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = start.elapsed().as_secs_f64();
    worker.shutdown().await.unwrap();
    json!({
        "limits": format!("{limits:?}"),
        "jobs": a.jobs,
        "drain_jobs_per_s": (a.jobs as f64 / s).round(),
        "drain_s": s,
    })
}

/// Tenant A floods, tenant B's jobs trickle in: B's wait, partitioned by tenant or not.
async fn fairness(a: &Args, partitioned: bool) -> serde_json::Value {
    let db = fresh_database().await;
    let pool = db.new_pool(20).await;
    migrate(&pool).await.unwrap();
    let store: Arc<dyn JobStore> = Arc::new(PgJobStore::new(pool.clone()));
    let jobs = Jobs::from_arc(store.clone());
    if partitioned {
        create_partition_index(&pool, &PartitionBy::Org)
            .await
            .unwrap();
        jobs.set_queue_limits("bench", QueueLimits::new().partition_by(PartitionBy::Org))
            .await
            .unwrap();
    }
    enqueue_noops(&jobs, a.flood, "org-a").await;
    sqlx::query("ANALYZE windlass_jobs")
        .execute(&pool)
        .await
        .unwrap();
    RAN.store(0, Ordering::SeqCst);
    STARTED_AT.lock().unwrap().clear();
    let start = Instant::now();
    let worker = Worker::new(store)
        .register::<Noop>()
        .register::<Ping>()
        .config(config(a))
        .start()
        .unwrap();
    while RAN.load(Ordering::Relaxed) < 1_000 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let opts = EnqueueOptions::new().queue("bench").org_id("org-b");
    let mut sent = Vec::new();
    for seq in 0..a.samples {
        sent.push(Instant::now());
        jobs.enqueue(&Ping { seq }, &opts).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flood_left_at_last_sample = a.flood.saturating_sub(RAN.load(Ordering::Relaxed));
    let deadline = Instant::now() + Duration::from_secs(300);
    while STARTED_AT.lock().unwrap().len() < a.samples as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut hist = Histogram::<u64>::new(3).unwrap();
    {
        let started = STARTED_AT.lock().unwrap();
        for (seq, at) in sent.iter().enumerate() {
            if let Some(s) = started.get(&(seq as u64)) {
                hist.record(s.duration_since(*at).as_micros() as u64)
                    .unwrap();
            }
        }
    }
    while RAN.load(Ordering::Relaxed) < a.flood && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_s = start.elapsed().as_secs_f64();
    worker.shutdown().await.unwrap();
    json!({
        "partitioned_by_tenant": partitioned,
        "flood": a.flood,
        "samples": hist.len(),
        "flood_jobs_left_at_last_sample": flood_left_at_last_sample,
        "quiet_wait_p50_ms": hist.value_at_quantile(0.50) as f64 / 1000.0,
        "quiet_wait_p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
        "quiet_wait_max_ms": hist.max() as f64 / 1000.0,
        "flood_drain_jobs_per_s": (a.flood as f64 / drain_s).round(),
    })
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut drains = Vec::new();
    let above = (a.concurrency * 5) as u32;
    let half = (a.concurrency / 2).max(1) as u32;
    for limits in [
        QueueLimits::new(),
        QueueLimits::new().global(above),
        QueueLimits::new().global(half),
    ] {
        let r = drain(&a, limits).await;
        eprintln!("drain: {r}");
        drains.push(r);
    }
    let base = drains[0]["drain_jobs_per_s"].as_f64().unwrap_or(1.0);
    let ratio = |i: usize| {
        (drains[i]["drain_jobs_per_s"].as_f64().unwrap_or(0.0) / base * 100.0).round() / 100.0
    };
    let fifo = fairness(&a, false).await;
    eprintln!("fairness, unpartitioned: {fifo}");
    let fair = fairness(&a, true).await;
    eprintln!("fairness, partitioned by tenant: {fair}");
    println!(
        "{}",
        json!({
            "bench": "jobs_limits",
            "drain": drains,
            "global_limit_above_concurrency_vs_unlimited": ratio(1),
            "global_limit_half_concurrency_vs_unlimited": ratio(2),
            "fairness": { "unpartitioned_baseline": fifo, "partitioned_by_tenant": fair },
        })
    );
}
