//! The jobs quickstart snippet (in-memory store, no service), through the `windlass` facade.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use windlass::jobs::memory::MemoryStore;
use windlass::jobs::{
    EnqueueOptions, Job, JobContext, JobError, JobState, Jobs, UniqueOptions, Worker, WorkerConfig,
};

/// A job: a serde struct with a kind name and an async `run`.
#[derive(Serialize, Deserialize)]
struct SendWelcomeEmail {
    user_id: u64,
}

impl Job for SendWelcomeEmail {
    const KIND: &'static str = "send_welcome_email";

    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        if ctx.attempt() == 1 && self.user_id == 2 {
            return Err(JobError::retry("mail server busy")); // retried with backoff
        }
        println!(
            "jobs: welcomed user {} (attempt {}, tenant {:?})",
            self.user_id,
            ctx.attempt(),
            ctx.org_id()
        );
        Ok(())
    }
}

/// Enqueue a few jobs on the in-memory store and let a worker run them.
pub async fn jobs_demo() -> Result<(), Box<dyn std::error::Error>> {
    let jobs = Jobs::new(MemoryStore::new()); // PgStore::new(pool) in production
    let worker = Worker::new(jobs.store().clone())
        .register::<SendWelcomeEmail>()
        .config(
            WorkerConfig::default().retry(
                windlass::core::RetryPolicy::default()
                    .with_delays(Duration::from_millis(10), Duration::from_secs(1)),
            ),
        )
        .start()?;

    let first = jobs
        .enqueue(
            &SendWelcomeEmail { user_id: 1 },
            &EnqueueOptions::new().queue("critical"),
        )
        .await?;
    let flaky = jobs
        .enqueue(
            &SendWelcomeEmail { user_id: 2 },
            &EnqueueOptions::new().org_id("acme"),
        )
        .await?;
    let unique = EnqueueOptions::new().unique(UniqueOptions::by_key("user-3"));
    jobs.enqueue(&SendWelcomeEmail { user_id: 3 }, &unique)
        .await?;
    let again = jobs
        .enqueue(&SendWelcomeEmail { user_id: 3 }, &unique)
        .await?;
    assert!(again.id().is_none(), "a unique job is enqueued once");

    for id in [first.id(), flaky.id()].into_iter().flatten() {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while jobs.get(id).await?.map(|j| j.state) != Some(JobState::Completed) {
            assert!(
                std::time::Instant::now() < deadline,
                "job {id} did not complete"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    worker.shutdown().await?; // finishes running jobs, releases the rest
    Ok(())
}

#[tokio::test]
async fn quickstart_jobs_demo_runs_without_services() {
    jobs_demo().await.unwrap();
}
