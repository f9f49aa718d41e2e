//! A job worker process on Postgres. Run it several times side by side; they share the work.
//!
//! ```text
//! export WINDLASS_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres
//! cargo run --example jobs_worker --features jobs-postgres              # a worker (Ctrl-C stops it)
//! cargo run --example jobs_worker --features jobs-postgres -- enqueue 1000   # enqueue demo jobs
//! ```
//!
//! Each `demo` job records its start and end in `windlass_demo_runs`, so you can see which
//! worker ran what (the multi-process tests read that table). Knobs, all optional:
//! `JOBS_CONCURRENCY` (default 10), `JOBS_HEARTBEAT_MS` / `JOBS_RESCUE_AFTER_MS` (how fast a
//! dead worker's jobs are rescued; defaults 5 000 / 60 000), `JOBS_CANCEL_GRACE_MS` (default
//! 5 000; self-fencing after half of `rescue_after` plus this grace must fit in it).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use windlass::jobs::postgres::{PgJobStore, migrate};
use windlass::jobs::{EnqueueOptions, Job, JobContext, JobError, Jobs, Worker, WorkerConfig};

/// The demo job: sleeps, then says so in `windlass_demo_runs`.
#[derive(Debug, Serialize, Deserialize)]
struct Demo {
    n: u64,
    sleep_ms: u64,
    /// Sleep only in the first attempt (lets a rescued retry finish at once).
    #[serde(default)]
    sleep_first_attempt_only: bool,
}

impl Job for Demo {
    const KIND: &'static str = "demo";

    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        // The pool is the worker's state (Worker::state): no `static` needed.
        let pool = ctx.state::<sqlx::PgPool>()?;
        let pool = &*pool;
        let worker = ctx.worker_id();
        let record = |phase: &'static str| {
            sqlx::query("INSERT INTO windlass_demo_runs (job_id, attempt, worker, phase) VALUES ($1, $2, $3, $4)")
                .bind(ctx.job_id())
                .bind(i64::from(ctx.attempt()))
                .bind(worker)
                .bind(phase)
                .execute(pool)
        };
        record("start").await?;
        if !self.sleep_first_attempt_only || ctx.attempt() == 1 {
            // Honour cancellation (cancel by id, self-fencing, shutdown): stop and say so.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(self.sleep_ms)) => {}
                _ = ctx.cancellation().cancelled() => {
                    record("cancelled").await?;
                    return Err(JobError::retry("cancelled while sleeping"));
                }
            }
        }
        record("end").await?;
        Ok(())
    }
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("WINDLASS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .map_err(|e| {
            format!(
                "cannot connect to {}: {e}",
                windlass::core::redact_url(&url)
            )
        })?;
    migrate(&pool).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS windlass_demo_runs (job_id bigint NOT NULL, attempt int NOT NULL, \
         worker text NOT NULL, phase text NOT NULL, at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    let store = PgJobStore::new(pool.clone());
    let jobs = Jobs::new(store);

    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("enqueue") {
        let n: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(100);
        let demos: Vec<Demo> = (0..n)
            .map(|n| Demo {
                n,
                sleep_ms: 10,
                sleep_first_attempt_only: false,
            })
            .collect();
        let out = jobs.enqueue_many(&demos, &EnqueueOptions::new()).await?;
        println!("enqueued {} jobs", out.len());
        return Ok(());
    }

    let concurrency = std::env::var("JOBS_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let config = WorkerConfig::default()
        .queue("default", concurrency)
        .heartbeat(
            env_ms("JOBS_HEARTBEAT_MS", 5_000),
            env_ms("JOBS_RESCUE_AFTER_MS", 60_000),
        )
        .rescue_interval(env_ms("JOBS_RESCUE_INTERVAL_MS", 15_000))
        .cancel_grace(env_ms("JOBS_CANCEL_GRACE_MS", 5_000));
    let worker = Worker::new(jobs.store().clone())
        .register::<Demo>()
        .state(pool)
        .config(config)
        .start()?;
    println!("ready {}", worker.id());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("shutting down {}", worker.id());
    worker.shutdown().await?;
    Ok(())
}
