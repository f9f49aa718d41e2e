//! Several worker PROCESSES (the `jobs_worker` example binary) on one Postgres database:
//! they drain a queue with no job run twice, when one is `kill -9`ed mid-job another rescues
//! and completes its job, and one frozen (SIGSTOP) past `rescue_after` then resumed stops its
//! stale attempt at once and has its outcome refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use windlass::jobs::postgres::{PgJobStore, migrate};
use windlass::jobs::{EnqueueOptions, JobState, Jobs};
use windlass_testkit::postgres::fresh_database;

static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn example_binary() -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/jobs_worker
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("examples").join("jobs_worker");
    let _one_build_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if !bin.exists() {
        // `cargo test --workspace` builds the facade's examples; a narrower run may not.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "windlass",
                "--example",
                "jobs_worker",
                "--features",
                "jobs-postgres",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build");
        assert!(
            status.success() && bin.exists(),
            "could not build {}",
            bin.display()
        );
    }
    bin
}

struct WorkerProcess {
    child: Child,
    id: String,
}

async fn spawn_worker(url: &str, extra: &[(&str, &str)]) -> WorkerProcess {
    let mut cmd = Command::new(example_binary());
    cmd.env("WINDLASS_POSTGRES_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn jobs_worker");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("worker did not get ready in 30 s")
        .expect("read stdout")
        .expect("worker exited before getting ready");
    let id = line
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    WorkerProcess { child, id }
}

async fn terminate(mut w: WorkerProcess) {
    let pid = w.child.id().expect("pid").to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
    let status = tokio::time::timeout(Duration::from_secs(30), w.child.wait())
        .await
        .expect("graceful stop")
        .unwrap();
    assert!(status.success(), "worker {} exited with {status}", w.id);
}

fn demo(n: u64, sleep_ms: u64, first_only: bool) -> windlass::jobs::NewJob {
    EnqueueOptions::new()
        .build_raw(
            "demo",
            json!({"n": n, "sleep_ms": sleep_ms, "sleep_first_attempt_only": first_only}),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_drain_one_queue_without_running_a_job_twice() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(spawn_worker(&db.url, &[]).await);
    }
    let jobs = Jobs::new(PgJobStore::new(db.pool.clone()));
    let total = 600;
    jobs.insert((0..total).map(|n| demo(n, 5, false)).collect())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM windlass_jobs WHERE state = 'completed'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if done == total as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {done}/{total} completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let starts: Vec<(i64, String)> =
        sqlx::query_as("SELECT job_id, worker FROM windlass_demo_runs WHERE phase = 'start'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut per_job: HashMap<i64, usize> = HashMap::new();
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for (job, worker) in &starts {
        *per_job.entry(*job).or_default() += 1;
        *per_worker.entry(worker.clone()).or_default() += 1;
    }
    assert_eq!(per_job.len(), total as usize);
    assert!(per_job.values().all(|&n| n == 1), "a job ran twice");
    assert!(
        per_worker.len() >= 2,
        "only one process did the work: {per_worker:?}"
    );
    for w in workers {
        terminate(w).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_rescued_and_completed_by_another() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let fast = [
        ("JOBS_HEARTBEAT_MS", "100"),
        ("JOBS_RESCUE_AFTER_MS", "1000"),
        ("JOBS_RESCUE_INTERVAL_MS", "200"),
        ("JOBS_CANCEL_GRACE_MS", "300"),
    ];
    let mut victim = spawn_worker(&db.url, &fast).await;
    let jobs = Jobs::new(PgJobStore::new(db.pool.clone()));
    let id = jobs.insert(vec![demo(1, 120_000, true)]).await.unwrap()[0]
        .id()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rec = jobs.get(id).await.unwrap().unwrap();
        if rec.state == JobState::Running {
            assert_eq!(rec.locked_by.as_deref(), Some(victim.id.as_str()));
            break;
        }
        assert!(Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let survivor = spawn_worker(&db.url, &fast).await;
    victim.child.start_kill().expect("kill -9"); // SIGKILL
    let _ = victim.child.wait().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let rec = loop {
        let rec = jobs.get(id).await.unwrap().unwrap();
        if rec.state == JobState::Completed {
            break rec;
        }
        assert!(
            Instant::now() < deadline,
            "job not rescued and completed: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rec.attempt, 2);
    assert!(
        rec.errors[0].error.contains("stopped heartbeating"),
        "{:?}",
        rec.errors
    );
    let runs: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT attempt, worker, phase FROM windlass_demo_runs WHERE job_id = $1 ORDER BY at",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        runs,
        vec![
            (1, victim.id.clone(), "start".to_owned()),
            (2, survivor.id.clone(), "start".to_owned()),
            (2, survivor.id.clone(), "end".to_owned()),
        ]
    );
    terminate(survivor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_resumed_after_its_rescue_stops_and_its_outcome_is_refused() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let fast = [
        ("JOBS_HEARTBEAT_MS", "100"),
        ("JOBS_RESCUE_AFTER_MS", "1000"),
        ("JOBS_RESCUE_INTERVAL_MS", "200"),
        ("JOBS_CANCEL_GRACE_MS", "300"),
    ];
    let victim = spawn_worker(&db.url, &fast).await;
    let jobs = Jobs::new(PgJobStore::new(db.pool.clone()));
    let id = jobs.insert(vec![demo(1, 120_000, true)]).await.unwrap()[0]
        .id()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while jobs.get(id).await.unwrap().unwrap().state != JobState::Running {
        assert!(Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let survivor = spawn_worker(&db.url, &fast).await;
    let pid = victim.child.id().expect("pid").to_string();
    let signal = |sig: &'static str| {
        let pid = pid.clone();
        async move {
            let status = Command::new("kill")
                .args([sig, &pid])
                .status()
                .await
                .unwrap();
            assert!(status.success(), "kill {sig} {pid}");
        }
    };
    signal("-STOP").await;
    // Frozen past rescue_after: the survivor rescues the job and runs attempt 2.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rec = loop {
        let rec = jobs.get(id).await.unwrap().unwrap();
        if rec.state == JobState::Completed {
            break rec;
        }
        assert!(Instant::now() < deadline, "job not rescued: {rec:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rec.attempt, 2);
    signal("-CONT").await;
    // Resumed: its watchdog (or its first heartbeat) stops the stale attempt 1 at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let runs = loop {
        let runs: Vec<(i32, String, String)> = sqlx::query_as(
            "SELECT attempt, worker, phase FROM windlass_demo_runs WHERE job_id = $1 ORDER BY at",
        )
        .bind(id)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        if runs.len() >= 4 {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed attempt never stopped: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        runs,
        vec![
            (1, victim.id.clone(), "start".to_owned()),
            (2, survivor.id.clone(), "start".to_owned()),
            (2, survivor.id.clone(), "end".to_owned()),
            (1, victim.id.clone(), "cancelled".to_owned()),
        ],
        "the frozen attempt must stop without finishing its work"
    );
    // Its failure outcome for attempt 1 was refused: still completed, one error (the rescue).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = jobs.get(id).await.unwrap().unwrap();
    assert_eq!(
        (after.state, after.attempt, after.errors.len()),
        (JobState::Completed, 2, 1),
        "{after:?}"
    );
    terminate(victim).await;
    terminate(survivor).await;
}
