//! Bulk and single-job enqueue harness for windlass-jobs on Postgres. Prints ONE JSON line,
//! each figure beside its same-run baselines; progress on stderr.
//!
//! ```text
//! cargo run --release -p windlass-benches --bin jobs_enqueue -- [--rows 200000] [--rounds 3]
//!     [--singles 4000] [--tasks 8] [--skip-indexes]
//! ```
//!
//! Bulk (`--rows` no-op jobs, one `enqueue_many` call; best and median of `--rounds`, the
//! variants alternating, a fresh database each):
//! - `raw_copy_bare`: raw `COPY` of the same rows (text format, encoded in the loop) into a
//!   table shaped like `windlass_jobs` with no index and no trigger: the floor;
//! - `raw_copy_jobs`: the same raw `COPY` into `windlass_jobs` (its indexes and trigger);
//! - `copy`: `Jobs::enqueue_many` on the default store (the COPY path);
//! - `unnest`: the same on a store that never uses COPY (`INSERT ... unnest`, 10 000 rows per
//!   statement);
//! - `copy_without_<index>`: the COPY path with one index dropped, to price each index (not
//!   with `--skip-indexes`).
//!
//! Singles: `--singles` jobs enqueued one per `Jobs::enqueue` call (one transaction each) by
//! `--tasks` concurrent tasks, with a LISTEN connection open: the NOTIFY limiter on (default
//! interval), off (`Duration::ZERO`: one NOTIFY per insert), and inserts through
//! `PgJobStore::insert_in` in a transaction each (the trigger's NOTIFY per transaction).

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use windlass_jobs::postgres::{PgJobStore, migrate};
use windlass_jobs::{EnqueueOptions, Jobs};
use windlass_testkit::postgres::{TestDatabase, fresh_database};

use windlass_benches::job_kinds::Noop;

struct Args {
    rows: u64,
    rounds: u64,
    singles: u64,
    tasks: u64,
    skip_indexes: bool,
}

fn args() -> Args {
    let mut a = Args {
        rows: 200_000,
        rounds: 3,
        singles: 4_000,
        tasks: 8,
        skip_indexes: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{k} needs a number"))
        };
        match k.as_str() {
            "--rows" => a.rows = num(),
            "--rounds" => a.rounds = num(),
            "--singles" => a.singles = num(),
            "--tasks" => a.tasks = num(),
            "--skip-indexes" => a.skip_indexes = true,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

async fn db() -> TestDatabase {
    let db = fresh_database().await;
    migrate(&db.pool).await.expect("migrate");
    db
}

/// Raw COPY of `rows` no-op rows into `table`, encoding included; seconds.
async fn raw_copy(pool: &PgPool, table: &str, rows: u64) -> f64 {
    let mut conn = pool.acquire().await.unwrap();
    let start = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} (queue, kind, args, priority, state, max_attempts) FROM STDIN"
        ))
        .await
        .unwrap();
    let mut buf = Vec::with_capacity(1 << 21);
    for n in 0..rows {
        use std::io::Write;
        let _ = writeln!(buf, "bench\tnoop\t{}\t5\tavailable\t10", json!({ "n": n }));
        if buf.len() >= 1 << 20 {
            copy.send(buf.as_slice()).await.unwrap();
            buf.clear();
        }
    }
    copy.send(buf.as_slice()).await.unwrap();
    copy.finish().await.unwrap();
    start.elapsed().as_secs_f64()
}

/// One `enqueue_many` of `rows` no-op jobs on `store`; seconds.
async fn enqueue_many(store: PgJobStore, rows: u64) -> f64 {
    let jobs = Jobs::new(store);
    let noops: Vec<Noop> = (0..rows).map(|n| Noop { n }).collect();
    let opts = EnqueueOptions::new().queue("bench");
    let start = Instant::now();
    let out = jobs.enqueue_many(&noops, &opts).await.unwrap();
    let took = start.elapsed().as_secs_f64();
    assert_eq!(out.len() as u64, rows);
    took
}

const INDEXES: [&str; 4] = [
    "windlass_jobs_fetch_idx",
    "windlass_jobs_list_state_idx",
    "windlass_jobs_list_queue_idx",
    "windlass_jobs_list_kind_idx",
];

async fn bulk_variant(name: &str, rows: u64) -> f64 {
    let db = db().await;
    match name {
        "raw_copy_bare" => {
            sqlx::query("CREATE TABLE bare (LIKE windlass_jobs INCLUDING DEFAULTS)")
                .execute(&db.pool)
                .await
                .unwrap();
            raw_copy(&db.pool, "bare", rows).await
        }
        "raw_copy_jobs" => raw_copy(&db.pool, "windlass_jobs", rows).await,
        "copy" => enqueue_many(PgJobStore::new(db.pool.clone()), rows).await,
        "unnest" => {
            enqueue_many(
                PgJobStore::new(db.pool.clone()).copy_threshold(usize::MAX),
                rows,
            )
            .await
        }
        "copy_without_list_indexes" => {
            for idx in &INDEXES[1..] {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX {idx}")))
                    .execute(&db.pool)
                    .await
                    .unwrap();
            }
            enqueue_many(PgJobStore::new(db.pool.clone()), rows).await
        }
        other => {
            let idx = other.strip_prefix("copy_without_").expect("variant");
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX {idx}")))
                .execute(&db.pool)
                .await
                .unwrap();
            enqueue_many(PgJobStore::new(db.pool.clone()), rows).await
        }
    }
}

/// `n` single-job enqueues by `tasks` tasks; jobs/s.
async fn singles(variant: &str, n: u64, tasks: u64) -> f64 {
    let db = db().await;
    let pool = db.pool.clone();
    // A listener, as a worker would have.
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("windlass_jobs").await.unwrap();
    let heard = tokio::spawn(async move {
        let mut heard = 0u64;
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), listener.recv()).await {
            heard += 1;
        }
        heard
    });
    let store = match variant {
        "limiter_on" => PgJobStore::new(pool.clone()),
        _ => PgJobStore::new(pool.clone()).notify_interval(Duration::ZERO),
    };
    let jobs = Jobs::new(store);
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let jobs = jobs.clone();
        let pool = pool.clone();
        let variant = variant.to_owned();
        handles.push(tokio::spawn(async move {
            let opts = EnqueueOptions::new().queue("bench");
            for i in 0..n / tasks {
                let job = Noop {
                    n: t * 1_000_000 + i,
                };
                if variant == "trigger_insert_in" {
                    let mut tx = pool.begin().await.unwrap();
                    PgJobStore::insert_in(&mut tx, vec![opts.build(&job).unwrap()])
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                } else {
                    jobs.enqueue(&job, &opts).await.unwrap();
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let rate = (n / tasks * tasks) as f64 / start.elapsed().as_secs_f64();
    let heard = heard.await.unwrap();
    eprintln!("  singles {variant}: {rate:.0} jobs/s, {heard} notifications heard");
    rate
}

fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2])
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut variants = vec!["raw_copy_bare", "raw_copy_jobs", "copy", "unnest"];
    let without: Vec<String> = INDEXES
        .iter()
        .map(|i| format!("copy_without_{i}"))
        .collect();
    if !a.skip_indexes {
        variants.extend(without.iter().map(String::as_str));
        variants.push("copy_without_list_indexes");
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..a.rounds {
        for (i, v) in variants.iter().enumerate() {
            let s = bulk_variant(v, a.rows).await;
            eprintln!(
                "round {round} {v}: {s:.3} s ({:.0} rows/s)",
                a.rows as f64 / s
            );
            times[i].push(s);
        }
    }
    let mut bulk = serde_json::Map::new();
    for (v, t) in variants.iter().zip(times.iter_mut()) {
        let (best, median) = stats(t);
        bulk.insert(
            v.to_string(),
            json!({
                "best_s": best, "median_s": median,
                "best_rows_per_s": (a.rows as f64 / best).round(),
                "median_rows_per_s": (a.rows as f64 / median).round(),
            }),
        );
    }
    let mut single = serde_json::Map::new();
    let single_variants = ["limiter_on", "limiter_off", "trigger_insert_in"];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); single_variants.len()];
    for _ in 0..a.rounds {
        for (i, v) in single_variants.iter().enumerate() {
            rates[i].push(singles(v, a.singles, a.tasks).await);
        }
    }
    for (v, r) in single_variants.iter().zip(rates.iter_mut()) {
        let (low, median) = stats(r);
        single.insert(
            v.to_string(),
            json!({ "median_jobs_per_s": median.round(), "worst_jobs_per_s": low.round(),
                    "best_jobs_per_s": r[r.len() - 1].round() }),
        );
    }
    println!(
        "{}",
        json!({
            "rows": a.rows, "rounds": a.rounds, "bulk": bulk,
            "singles": { "jobs": a.singles, "tasks": a.tasks, "results": single },
        })
    );
}
