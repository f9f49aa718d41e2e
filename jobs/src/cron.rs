//! Periodic jobs. Every worker that has a [`CronJob`] enqueues its ticks; each tick's row
//! carries the unique key `windlass.cron:{name}:{tick unix seconds}` covering every state, so
//! however many workers run, a tick is enqueued once (the unique index refuses the others).
//! Ticks are awaited on the wall clock (checked at least every second, so a clock step is
//! followed); ticks missed while no worker ran are skipped, or caught up on start within a
//! window ([`CatchUp`]).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use tokio_util::sync::CancellationToken;
use windlass_core::{Name, RetryPolicy};

use crate::error::{Error, Result};
use crate::job::Job;
use crate::model::{Enqueued, JobState, NewJob};
use crate::options::EnqueueOptions;
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
    catch_up: CatchUp,
}

/// What a starting worker does about ticks missed while no worker ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CatchUp {
    /// Skip them: the first tick enqueued is the next one (the default).
    #[default]
    Skip,
    /// Enqueue the latest tick of the last `within` (if it was not enqueued already).
    Latest {
        /// How far back to look. Keep it below the pruning retention: a tick whose row was
        /// pruned would be enqueued again.
        within: std::time::Duration,
    },
    /// Enqueue every tick of the last `within` not enqueued already (at most 1 000).
    All {
        /// How far back to look (below the pruning retention, as for `Latest`).
        within: std::time::Duration,
    },
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
            catch_up: CatchUp::Skip,
        })
    }

    /// What to do about ticks missed while no worker ran (default [`CatchUp::Skip`]). Each
    /// tick is still enqueued once, whichever workers catch up (its unique key).
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// The ticks in `(now - within, now]`, oldest first, at most 1 000.
    fn missed(&self, now: DateTime<Utc>, within: Duration) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let Ok(window) = chrono::Duration::from_std(within) else {
            return out;
        };
        let mut at = now - window;
        while out.len() < 1_000 {
            match self.next_tick(at) {
                Ok(t) if t <= now => {
                    out.push(t);
                    at = t;
                }
                _ => break,
            }
        }
        out
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
        // Each tick starts its own trace, not the one of the span that registered the cron.
        job.traceparent = None;
        job.tracestate = None;
        job
    }
}

pub(crate) async fn cron_loop(store: Arc<dyn JobStore>, cron: CronJob, stop: CancellationToken) {
    let retry =
        RetryPolicy::default().with_delays(Duration::from_millis(100), Duration::from_secs(5));
    let mut last: Option<DateTime<Utc>> = None;
    // Ticks missed while no worker ran.
    let missed = match cron.catch_up {
        CatchUp::Skip => Vec::new(),
        CatchUp::Latest { within } => cron.missed(Utc::now(), within).pop().into_iter().collect(),
        CatchUp::All { within } => cron.missed(Utc::now(), within),
    };
    for tick in missed {
        if !enqueue_tick(&*store, &cron, tick, &retry, &stop).await {
            return;
        }
        last = Some(tick);
    }
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
        // Wait on the wall clock: sleep at most a second at a time and look again, so a clock
        // step (NTP, a resumed VM) moves the tick with it.
        loop {
            let wait = (tick - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if wait.is_zero() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait.min(WALL_CLOCK_CHECK)) => {}
            }
        }
        last = Some(tick);
        if !enqueue_tick(&*store, &cron, tick, &retry, &stop).await {
            return;
        }
    }
}

/// How often a cron loop re-reads the wall clock while waiting for a tick.
const WALL_CLOCK_CHECK: Duration = Duration::from_secs(1);

/// Enqueues one tick (once across workers: its unique key), retrying a failing store a few
/// times. False when stopped.
async fn enqueue_tick(
    store: &dyn JobStore,
    cron: &CronJob,
    tick: DateTime<Utc>,
    retry: &RetryPolicy,
    stop: &CancellationToken,
) -> bool {
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
                return true;
            }
            Err(e) if attempt < 5 => {
                tracing::warn!(cron = %cron.name, error = %e, "cron enqueue failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(retry.delay(attempt)) => {}
                }
            }
            Err(e) => {
                tracing::error!(cron = %cron.name, %tick, error = %e, "cron tick lost: enqueue kept failing");
                return true;
            }
        }
    }
}
