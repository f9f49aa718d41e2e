//! Periodic jobs. Every worker that has a [`CronJob`] enqueues its ticks; each tick's row
//! carries the unique key `windlass.cron:{name}:{tick unix seconds}` covering every state, so
//! however many workers run, a tick is enqueued once (the unique index refuses the others).
//! A tick missed while no worker ran is not made up for.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use tokio_util::sync::CancellationToken;
use windlass_core::{Name, RetryPolicy};

use crate::error::{Error, Result};
use crate::job::{EnqueueOptions, Job};
use crate::model::{Enqueued, JobState, NewJob};
use crate::store::JobStore;

/// A job enqueued on a cron schedule (5 fields, or 6 with seconds first; `@hourly` & co).
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use windlass_jobs::{CronJob, EnqueueOptions, Job, JobContext, JobError};
///
/// #[derive(Serialize, Deserialize)]
/// struct Digest;
/// impl Job for Digest {
///     const KIND: &'static str = "digest";
///     async fn run(&self, _ctx: JobContext) -> Result<(), JobError> { Ok(()) }
/// }
///
/// let cron = CronJob::new("nightly-digest", "0 3 * * *", &Digest, &EnqueueOptions::new().queue("low")).unwrap();
/// assert_eq!(cron.name(), "nightly-digest");
/// ```
#[derive(Debug, Clone)]
pub struct CronJob {
    name: Name,
    schedule: Cron,
    template: NewJob,
}

impl CronJob {
    /// A cron job named `name` (unique among your cron jobs: it forms the tick key) that
    /// enqueues `job` with `options` at each tick of `schedule`. Unique options are ignored
    /// (the tick key replaces them).
    pub fn new<J: Job>(
        name: &str,
        schedule: &str,
        job: &J,
        options: &EnqueueOptions,
    ) -> Result<Self> {
        let name = Name::parse("cron name", name)?;
        let schedule = Cron::from_str(schedule).map_err(|e| Error::Cron {
            pattern: schedule.to_owned(),
            reason: e.to_string(),
        })?;
        let mut options = options.clone();
        options.unique = None;
        options.run_at = None;
        options.delay = None;
        let template = options.build(job)?;
        Ok(Self {
            name,
            schedule,
            template,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The first tick strictly after `after`.
    pub fn next_tick(&self, after: DateTime<Utc>) -> Result<DateTime<Utc>> {
        self.schedule
            .find_next_occurrence(&after, false)
            .map_err(|e| Error::Cron {
                pattern: self.schedule.pattern.to_string(),
                reason: e.to_string(),
            })
    }

    /// The row of the tick at `tick`.
    pub fn job_for_tick(&self, tick: DateTime<Utc>) -> NewJob {
        let mut job = self.template.clone();
        job.unique_key = Some(format!("windlass.cron:{}:{}", self.name, tick.timestamp()));
        job.unique_states = JobState::mask(&JobState::ALL);
        job
    }
}

pub(crate) async fn cron_loop(store: Arc<dyn JobStore>, cron: CronJob, stop: CancellationToken) {
    let retry =
        RetryPolicy::default().with_delays(Duration::from_millis(100), Duration::from_secs(5));
    let mut last: Option<DateTime<Utc>> = None;
    loop {
        // Never go back to a tick already handled, even if the wall clock stepped back.
        let from = last.map_or_else(Utc::now, |l| l.max(Utc::now()));
        let tick = match cron.next_tick(from) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(cron = %cron.name, error = %e, "cron schedule has no next tick; stopping it");
                return;
            }
        };
        let wait = (tick - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        last = Some(tick);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match store.insert(vec![cron.job_for_tick(tick)]).await {
                Ok(r) => {
                    if matches!(r.first(), Some(Enqueued::New(_))) {
                        metrics::counter!("windlass_jobs_cron_enqueued_total", "cron" => cron.name.to_string())
                            .increment(1);
                        tracing::debug!(cron = %cron.name, %tick, "cron tick enqueued");
                    }
                    break;
                }
                Err(e) if attempt < 5 => {
                    tracing::warn!(cron = %cron.name, error = %e, "cron enqueue failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(retry.delay(attempt)) => {}
                    }
                }
                Err(e) => {
                    tracing::error!(cron = %cron.name, %tick, error = %e, "cron tick lost: enqueue kept failing");
                    break;
                }
            }
        }
    }
}
