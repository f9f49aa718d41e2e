//! [`JobsSource`] on the public API of `windlass-jobs` ([`Jobs`]), as it is today.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use windlass_core::TenantScope;
use windlass_jobs::{CronJob, JobFilter, JobId, JobRecord, JobState, Jobs};

use super::{
    ActionReport, CronSchedule, Depths, Exactness, JobAction, JobPage, JobQuery, JobsSource,
    QueueDepth, SourceError, SourceResult, Throughput,
};

/// Rows a text search reads at most (see the `GAP` below).
const DEFAULT_SCAN_CAP: u64 = 5_000;
/// Page size of those scans.
const SCAN_PAGE: u32 = 1_000;

/// [`JobsSource`] on a [`Jobs`] handle (any store: Postgres or memory).
///
/// Cron schedules are not stored by `windlass-jobs` (each worker holds its own), so register
/// the same [`CronJob`]s here with [`JobsApi::cron_job`] to see them and their next runs.
#[derive(Clone)]
pub struct JobsApi {
    jobs: Jobs,
    crons: Arc<Vec<CronJob>>,
    scan_cap: u64,
    sampler: Arc<Samplers>,
}

impl std::fmt::Debug for JobsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsApi")
            .field("crons", &self.crons.len())
            .field("scan_cap", &self.scan_cap)
            .finish_non_exhaustive()
    }
}

impl JobsApi {
    /// A source on `jobs`.
    pub fn new(jobs: Jobs) -> Self {
        Self {
            jobs,
            crons: Arc::new(Vec::new()),
            scan_cap: DEFAULT_SCAN_CAP,
            sampler: Arc::new(Samplers::new(Duration::from_secs(60))),
        }
    }

    /// Shows `cron` on the cron page (register the same cron jobs your workers run).
    pub fn cron_job(mut self, cron: CronJob) -> Self {
        Arc::make_mut(&mut self.crons).push(cron);
        self
    }

    /// Rows read at most by a text search per page (default 5 000, at least one page of
    /// 1 000).
    pub fn scan_cap(mut self, rows: u64) -> Self {
        self.scan_cap = rows.max(u64::from(SCAN_PAGE));
        self
    }

    /// How often the throughput chart reads the job count snapshot (default every minute; a
    /// cheap read: the chart moves when the jobs maintenance leader recounts).
    pub fn sample_every(mut self, every: Duration) -> Self {
        self.sampler = Arc::new(Samplers::new(every.max(Duration::from_millis(100))));
        self
    }

    fn visible(scope: &TenantScope, job: &JobRecord) -> bool {
        scope.allows(job.org_id.as_deref())
    }

    /// One page of `filter` (its limit `limit`) as the store answers it; a full page links on.
    async fn page(
        &self,
        scope: &TenantScope,
        filter: JobFilter,
        limit: u32,
        note: Option<String>,
    ) -> SourceResult<JobPage> {
        let jobs = self.jobs.list(&filter).await.map_err(backend("list"))?;
        let next = (jobs.len() == limit as usize)
            .then(|| jobs.last().map(|j| j.id))
            .flatten();
        let jobs = jobs
            .into_iter()
            .filter(|j| Self::visible(scope, j))
            .collect();
        Ok(JobPage { jobs, next, note })
    }

    /// The store filter for `query` in `scope`; `None` when the query names another tenant
    /// than the scope's (nothing can match).
    fn filter(scope: &TenantScope, query: &JobQuery) -> Option<JobFilter> {
        let mut filter = JobFilter::new();
        if let Some(q) = &query.queue {
            filter = filter.queue(q.clone());
        }
        for s in &query.states {
            filter = filter.state(*s);
        }
        if let Some(k) = &query.kind {
            filter = filter.kind(k.clone());
        }
        match (scope.org_id(), &query.org_id) {
            (Some(own), Some(asked)) if own.as_str() != asked => return None,
            (Some(own), _) => filter = filter.org_id(own.as_str()),
            (None, Some(asked)) => filter = filter.org_id(asked.clone()),
            (None, None) => {}
        }
        Some(filter)
    }
}

fn backend(what: &'static str) -> impl FnOnce(windlass_jobs::Error) -> SourceError {
    move |e| SourceError::backend(what, e)
}

#[async_trait]
impl JobsSource for JobsApi {
    async fn depths(&self, scope: &TenantScope) -> SourceResult<Depths> {
        let paused = self
            .jobs
            .store()
            .paused_queues()
            .await
            .map_err(backend("paused queues"))?;
        let limits: BTreeMap<String, u32> = self
            .jobs
            .global_limits()
            .await
            .map_err(backend("global limits"))?
            .into_iter()
            .collect();
        let mut queues: BTreeMap<String, QueueDepth> = BTreeMap::new();
        // The count snapshot the jobs maintenance leader recounts (tenant-scoped by the
        // store): no count on the request path, exact as of its time, which the page shows.
        let snapshot = self
            .jobs
            .scoped(scope.clone())
            .count_snapshot()
            .await
            .map_err(backend("job counts"))?;
        for c in &snapshot.counts {
            let q = queues.entry(c.queue.clone()).or_default();
            *q.counts.entry(c.state).or_default() += c.count.max(0) as u64;
        }
        let exactness = match snapshot.refreshed_at {
            Some(at) => Exactness::Snapshot {
                at,
                took: snapshot.refresh_took,
            },
            None => Exactness::NotCounted(
                "job counts not computed yet: a running worker's maintenance leader recounts them \
                 (every 10 s by default, WorkerConfig::counts_interval), or call \
                 Jobs::refresh_counts"
                    .into(),
            ),
        };
        // Paused or limited queues show even without jobs.
        for name in paused.iter().chain(limits.keys()) {
            queues.entry(name.clone()).or_default();
        }
        for (name, q) in queues.iter_mut() {
            q.queue = name.clone();
            q.paused = paused.contains(name);
            q.global_limit = limits.get(name).copied();
        }
        Ok(Depths {
            queues: queues.into_values().collect(),
            exactness,
        })
    }

    async fn throughput(
        &self,
        scope: &TenantScope,
        window: Duration,
    ) -> SourceResult<Option<Vec<Throughput>>> {
        // GAP: windlass-jobs keeps no completion history; the chart is built from successive
        // count snapshots (completed and discarded per queue, within the scope) that this
        // console reads since its first overview, so it starts empty and its resolution is the
        // snapshot's refresh interval.
        let sampler = self.sampler.for_scope(scope, &self.jobs);
        Ok(Some(sampler.throughput(window)))
    }

    async fn list(&self, scope: &TenantScope, query: &JobQuery) -> SourceResult<JobPage> {
        let Some(filter) = Self::filter(scope, query) else {
            return Ok(JobPage::default());
        };
        let limit = query.limit.max(1);
        let mut filter = filter;
        if let Some(after) = query.after {
            filter = filter.after(after);
        }
        let Some(text) = query.text.as_deref().filter(|t| !t.is_empty()) else {
            // GAP: `Jobs::list` pages by id ascending only (oldest first, no newest-first). Any
            // one filter column (with any states) is an index range in the Postgres store;
            // queue and kind together filter one column's range by the other.
            return self.page(scope, filter.limit(limit), limit, None).await;
        };
        // With the opt-in trigram index the store answers the text from it; without, an
        // unindexed `args_contains` could read the whole table for a rare text, so the console
        // scans at most `scan_cap` rows of the other filters per page and says so.
        if self
            .jobs
            .args_search_indexed()
            .await
            .map_err(backend("args_search_indexed"))?
        {
            let note =
                "Text search through the args trigram index: every matching job, no scan cap.";
            return self
                .page(
                    scope,
                    filter.args_contains(text).limit(limit),
                    limit,
                    Some(note.into()),
                )
                .await;
        }
        let mut jobs = Vec::new();
        let mut scanned = 0u64;
        let mut cursor = query.after;
        let mut exhausted = false;
        while jobs.len() < limit as usize && scanned < self.scan_cap {
            let mut f = filter.clone().limit(SCAN_PAGE);
            if let Some(c) = cursor {
                f = f.after(c);
            }
            let page = self.jobs.list(&f).await.map_err(backend("list"))?;
            scanned += page.len() as u64;
            let full = page.len() == SCAN_PAGE as usize;
            for job in page {
                cursor = Some(job.id);
                if Self::visible(scope, &job) && job.args.to_string().contains(text) {
                    jobs.push(job);
                    if jobs.len() == limit as usize {
                        break;
                    }
                }
            }
            if !full {
                exhausted = true;
                break;
            }
        }
        let next = if exhausted && jobs.len() < limit as usize {
            None
        } else {
            cursor
        };
        Ok(JobPage {
            jobs,
            next,
            note: Some(format!(
                "Text search without an index scanned {scanned} jobs (at most {} per page) of the \
                 other filters; an operator can create the args index \
                 (windlass_jobs::postgres::create_args_search_index) to search them all.",
                self.scan_cap
            )),
        })
    }

    async fn get(&self, scope: &TenantScope, id: JobId) -> SourceResult<Option<JobRecord>> {
        let job = self
            .jobs
            .scoped(scope.clone())
            .get(id)
            .await
            .map_err(backend("get"))?;
        Ok(job.filter(|j| Self::visible(scope, j)))
    }

    async fn act(
        &self,
        scope: &TenantScope,
        action: JobAction,
        ids: &[JobId],
    ) -> SourceResult<ActionReport> {
        let mut report = ActionReport::default();
        // The jobs handle scoped to the console's tenant: another tenant's id is unknown to it.
        let jobs = self.jobs.scoped(scope.clone());
        for &id in ids {
            let applied = match action {
                JobAction::Retry => match jobs.retry_now(id).await {
                    Ok(done) => done,
                    // A running job is not retried (two attempts would overlap): skipped.
                    Err(
                        windlass_jobs::Error::UniqueConflict { .. }
                        | windlass_jobs::Error::JobRunning { .. },
                    ) => false,
                    Err(e) => return Err(SourceError::backend("retry", e)),
                },
                JobAction::Cancel => jobs.cancel(id).await.map_err(backend("cancel"))?,
                JobAction::Discard => jobs.discard(id).await.map_err(backend("discard"))?,
            };
            if applied {
                report.done.push(id);
            } else {
                report.skipped.push(id);
            }
        }
        Ok(report)
    }

    async fn set_paused(&self, scope: &TenantScope, queue: &str, paused: bool) -> SourceResult<()> {
        if scope.org_id().is_some() {
            return Err(SourceError::Forbidden(
                "queues are shared by every tenant: a tenant-scoped console cannot pause or resume them"
                    .into(),
            ));
        }
        let result = if paused {
            self.jobs.pause(queue).await
        } else {
            self.jobs.resume(queue).await
        };
        result.map_err(|e| match e {
            windlass_jobs::Error::Name(n) => SourceError::Invalid(n.to_string()),
            e => SourceError::backend("pause", e),
        })
    }

    async fn cron(&self, _scope: &TenantScope, n: usize) -> SourceResult<Vec<CronSchedule>> {
        let now = Utc::now();
        let mut out = Vec::with_capacity(self.crons.len());
        for cron in self.crons.iter() {
            let mut next_runs = Vec::with_capacity(n);
            let mut from = now;
            for _ in 0..n {
                match cron.next_tick(from) {
                    Ok(t) => {
                        next_runs.push(t);
                        from = t;
                    }
                    Err(_) => break,
                }
            }
            let template = cron.job_for_tick(now);
            out.push(CronSchedule {
                name: cron.name().to_owned(),
                // GAP: `CronJob` does not expose its pattern.
                pattern: None,
                queue: template.queue.to_string(),
                kind: template.kind.to_string(),
                next_runs,
            });
        }
        Ok(out)
    }
}

/// When a snapshot was taken, and per queue the (completed, discarded) counts then.
type Sample = (DateTime<Utc>, BTreeMap<String, (u64, u64)>);

/// One [`Sampler`] per tenant scope a console asked for (keyed by the scope's tenant).
struct Samplers {
    every: Duration,
    by_scope: Mutex<BTreeMap<Option<String>, Arc<Sampler>>>,
}

impl Samplers {
    fn new(every: Duration) -> Self {
        Self {
            every,
            by_scope: Mutex::new(BTreeMap::new()),
        }
    }

    /// The sampler of `scope`, started on first use.
    fn for_scope(&self, scope: &TenantScope, jobs: &Jobs) -> Arc<Sampler> {
        let key = scope.org_id().map(|o| o.as_str().to_owned());
        let mut map = self.by_scope.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| {
                let sampler = Arc::new(Sampler::new(self.every));
                sampler.start(jobs.scoped(scope.clone()));
                sampler
            })
            .clone()
    }
}

/// Reads the count snapshot at a fixed interval, keeps one sample per snapshot, and derives
/// completed / discarded per minute.
struct Sampler {
    every: Duration,
    samples: Mutex<VecDeque<Sample>>,
}

impl Sampler {
    fn new(every: Duration) -> Self {
        Self {
            every,
            samples: Mutex::new(VecDeque::new()),
        }
    }

    fn start(self: &Arc<Self>, jobs: Jobs) {
        let weak = Arc::downgrade(self);
        let every = self.every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let Ok(snapshot) = jobs.count_snapshot().await else {
                    continue;
                };
                let Some(at) = snapshot.refreshed_at else {
                    continue;
                };
                let mut per_queue: BTreeMap<String, (u64, u64)> = BTreeMap::new();
                for c in snapshot.counts {
                    let e = per_queue.entry(c.queue).or_default();
                    match c.state {
                        JobState::Completed => e.0 += c.count.max(0) as u64,
                        JobState::Discarded => e.1 += c.count.max(0) as u64,
                        _ => {}
                    }
                }
                let mut samples = me.samples.lock().unwrap_or_else(|p| p.into_inner());
                // One sample per snapshot: reading the same snapshot twice adds nothing.
                if samples.back().is_some_and(|(last, _)| *last >= at) {
                    continue;
                }
                samples.push_back((at, per_queue));
                let horizon = at - chrono::Duration::seconds(3_700);
                while samples.len() > 2 && samples.front().is_some_and(|(t, _)| *t < horizon) {
                    samples.pop_front();
                }
            }
        });
    }

    fn throughput(&self, window: Duration) -> Vec<Throughput> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let since = Utc::now() - chrono::Duration::from_std(window).unwrap_or_default();
        let mut out: BTreeMap<String, BTreeMap<DateTime<Utc>, (u64, u64)>> = BTreeMap::new();
        for pair in samples.iter().collect::<Vec<_>>().windows(2) {
            let (_, before) = pair[0];
            let (at, after) = pair[1];
            if *at < since {
                continue;
            }
            let minute = at
                .duration_trunc(chrono::TimeDelta::minutes(1))
                .unwrap_or(*at);
            for (queue, (done, failed)) in after {
                let (d0, f0) = before.get(queue).copied().unwrap_or((0, 0));
                // Pruning lowers the counts; a drop is not negative throughput.
                let e = out
                    .entry(queue.clone())
                    .or_default()
                    .entry(minute)
                    .or_default();
                e.0 += done.saturating_sub(d0);
                e.1 += failed.saturating_sub(f0);
            }
        }
        out.into_iter()
            .map(|(queue, m)| Throughput {
                queue,
                minutes: m.into_iter().map(|(t, (d, f))| (t, d, f)).collect(),
            })
            .collect()
    }
}

use chrono::DurationRound as _;
