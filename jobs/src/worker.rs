//! The worker: per-queue fetch loops under a concurrency limit, job execution (timeout, panic
//! capture, retries), batched completion, heartbeats, rescue, pruning, depth metrics, cron and
//! graceful shutdown. Everything the worker writes goes through the state-guarded [`JobStore`]
//! calls; the worker holds no state another process needs.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::BoxFuture;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use windlass_core::{Name, RetryPolicy};

use crate::cron::CronJob;
use crate::error::{Error, Result};
use crate::job::{Job, JobContext, JobError, JobErrorKind, MAX_SCHEDULE_AHEAD};
use crate::model::{AttemptError, FetchedJob, Finish, JobId, JobState, Outcome};
use crate::store::{JobStore, WAKE_ALL};

/// Worker settings. Defaults: queues `critical` 20, `default` 10, `low` 5, `bulk` 5; fetch
/// batches of up to 100; poll every second; heartbeat every 5 s; rescue jobs silent for 60 s;
/// 10 min default timeout; 30 s shutdown deadline; keep final jobs 24 h.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Queues served and their concurrency (jobs running at once per queue).
    pub queues: Vec<(String, usize)>,
    /// Most jobs claimed by one fetch (also bounded by free concurrency).
    pub fetch_batch: usize,
    /// Fetches in flight at once per queue (they share the queue's concurrency), so one
    /// fetch's commit latency overlaps another's work. Default 2.
    pub fetch_parallelism: usize,
    /// Poll period when no wake-up arrives (the fallback of LISTEN/NOTIFY).
    pub poll_interval: Duration,
    /// How often running jobs' heartbeats are refreshed.
    pub heartbeat_interval: Duration,
    /// A running job whose heartbeat is older than this is rescued (its worker is deemed dead).
    pub rescue_after: Duration,
    /// How often this worker looks for jobs to rescue.
    pub rescue_interval: Duration,
    /// Timeout of a job enqueued without one.
    pub default_timeout: Duration,
    /// How long a cancelled attempt may take to stop on its own before it is aborted.
    pub cancel_grace: Duration,
    /// Backoff between attempts (the attempt limit comes from each job's `max_attempts`).
    pub retry: RetryPolicy,
    /// How long shutdown waits for running jobs before aborting and releasing them.
    pub shutdown_timeout: Duration,
    /// Most outcomes written by one completion statement.
    pub completion_batch: usize,
    /// Final jobs older than this are pruned (`None`: never).
    pub retention: Option<Duration>,
    /// How often pruning runs.
    pub prune_interval: Duration,
    /// How often queue depth gauges are refreshed (`None`: never).
    pub metrics_interval: Option<Duration>,
    /// When a job of a kind this worker does not know comes back.
    pub unknown_kind_delay: Duration,
    /// Worker id (the `locked_by` value); default `{hostname-ish}-{uuid}`.
    pub worker_id: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            queues: vec![
                ("critical".into(), 20),
                ("default".into(), 10),
                ("low".into(), 5),
                ("bulk".into(), 5),
            ],
            fetch_batch: 100,
            fetch_parallelism: 2,
            poll_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(5),
            rescue_after: Duration::from_secs(60),
            rescue_interval: Duration::from_secs(15),
            default_timeout: Duration::from_secs(600),
            cancel_grace: Duration::from_secs(5),
            retry: RetryPolicy::default()
                .with_delays(Duration::from_secs(1), Duration::from_secs(3600)),
            shutdown_timeout: Duration::from_secs(30),
            completion_batch: 1000,
            retention: Some(Duration::from_secs(24 * 3600)),
            prune_interval: Duration::from_secs(60),
            metrics_interval: Some(Duration::from_secs(15)),
            unknown_kind_delay: Duration::from_secs(60),
            worker_id: None,
        }
    }
}

impl WorkerConfig {
    /// Serves `queue` with `concurrency` (replacing its previous setting).
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        let queue = queue.into();
        self.queues.retain(|(q, _)| *q != queue);
        self.queues.push((queue, concurrency));
        self
    }

    /// Serves exactly these queues.
    pub fn queues(mut self, queues: impl IntoIterator<Item = (impl Into<String>, usize)>) -> Self {
        self.queues = queues.into_iter().map(|(q, n)| (q.into(), n)).collect();
        self
    }

    /// Fetch batch size.
    pub fn fetch_batch(mut self, n: usize) -> Self {
        self.fetch_batch = n;
        self
    }

    /// Fetches in flight at once per queue.
    pub fn fetch_parallelism(mut self, n: usize) -> Self {
        self.fetch_parallelism = n;
        self
    }

    /// Poll period.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Heartbeat period and rescue threshold (keep `rescue_after` several heartbeats long).
    pub fn heartbeat(mut self, interval: Duration, rescue_after: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.rescue_after = rescue_after;
        self
    }

    /// How often to look for jobs to rescue.
    pub fn rescue_interval(mut self, d: Duration) -> Self {
        self.rescue_interval = d;
        self
    }

    /// Default timeout.
    pub fn default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout = d;
        self
    }

    /// Grace before a cancelled attempt is aborted.
    pub fn cancel_grace(mut self, d: Duration) -> Self {
        self.cancel_grace = d;
        self
    }

    /// Retry backoff.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Shutdown deadline.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Retention of final jobs (`None`: keep forever) and pruning period.
    pub fn retention(mut self, retention: Option<Duration>, prune_interval: Duration) -> Self {
        self.retention = retention;
        self.prune_interval = prune_interval;
        self
    }

    /// Depth gauge refresh period (`None`: off).
    pub fn metrics_interval(mut self, d: Option<Duration>) -> Self {
        self.metrics_interval = d;
        self
    }

    /// Delay before a job of an unknown kind is offered again.
    pub fn unknown_kind_delay(mut self, d: Duration) -> Self {
        self.unknown_kind_delay = d;
        self
    }

    /// Worker id.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    fn validate(&self) -> Result<()> {
        if self.queues.is_empty() {
            return Err(Error::invalid("queues", "serve at least one queue"));
        }
        for (q, n) in &self.queues {
            Name::parse("queue", q.as_str())?;
            if !(1..=10_000).contains(n) {
                return Err(Error::invalid(
                    "concurrency",
                    format!("queue {q}: {n} is outside 1..=10000"),
                ));
            }
        }
        if !(1..=10_000).contains(&self.fetch_batch) {
            return Err(Error::invalid("fetch_batch", "must be in 1..=10000"));
        }
        if !(1..=16).contains(&self.fetch_parallelism) {
            return Err(Error::invalid("fetch_parallelism", "must be in 1..=16"));
        }
        if self.completion_batch == 0 {
            return Err(Error::invalid("completion_batch", "must be at least 1"));
        }
        for (name, d) in [
            ("poll_interval", self.poll_interval),
            ("heartbeat_interval", self.heartbeat_interval),
            ("rescue_interval", self.rescue_interval),
            ("default_timeout", self.default_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("prune_interval", self.prune_interval),
            ("unknown_kind_delay", self.unknown_kind_delay),
        ] {
            if d.is_zero() {
                return Err(Error::invalid(name, "must be greater than zero"));
            }
        }
        if self.rescue_after <= self.heartbeat_interval {
            return Err(Error::invalid(
                "rescue_after",
                "must be longer than heartbeat_interval, or live jobs would be rescued",
            ));
        }
        if let Some(id) = &self.worker_id
            && (id.is_empty() || id.len() > 200)
        {
            return Err(Error::invalid("worker_id", "must be 1-200 bytes"));
        }
        Ok(())
    }
}

/// Runs one job type: decodes the arguments and returns the attempt's future.
trait Runner: Send + Sync {
    fn start(
        &self,
        args: serde_json::Value,
        ctx: JobContext,
    ) -> Result<BoxFuture<'static, Result<(), JobError>>, serde_json::Error>;
}

struct TypedRunner<J>(PhantomData<fn() -> J>);

impl<J: Job> Runner for TypedRunner<J> {
    fn start(
        &self,
        args: serde_json::Value,
        ctx: JobContext,
    ) -> Result<BoxFuture<'static, Result<(), JobError>>, serde_json::Error> {
        let job: J = serde_json::from_value(args)?;
        Ok(Box::pin(async move { job.run(ctx).await }))
    }
}

/// A worker, being configured. [`Worker::start`] runs it.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use serde::{Deserialize, Serialize};
/// use windlass_jobs::{EnqueueOptions, Job, JobContext, JobError, Jobs, Worker, WorkerConfig};
/// use windlass_jobs::memory::MemoryStore;
///
/// #[derive(Serialize, Deserialize)]
/// struct Hello { name: String }
/// impl Job for Hello {
///     const KIND: &'static str = "hello";
///     async fn run(&self, _ctx: JobContext) -> Result<(), JobError> { Ok(()) }
/// }
///
/// let jobs = Jobs::new(MemoryStore::new());
/// let worker = Worker::new(jobs.store().clone())
///     .register::<Hello>()
///     .config(WorkerConfig::default().queue("default", 4))
///     .start()
///     .unwrap();
/// jobs.enqueue(&Hello { name: "ada".into() }, &EnqueueOptions::new()).await.unwrap();
/// worker.shutdown().await.unwrap();
/// # });
/// ```
pub struct Worker {
    store: Arc<dyn JobStore>,
    registry: HashMap<String, Arc<dyn Runner>>,
    config: WorkerConfig,
    crons: Vec<CronJob>,
    errors: Vec<Error>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("kinds", &self.registry.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .field("crons", &self.crons)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker on `store` with the default configuration and no job types.
    pub fn new(store: Arc<dyn JobStore>) -> Self {
        Self {
            store,
            registry: HashMap::new(),
            config: WorkerConfig::default(),
            crons: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Registers job type `J`. Every worker serving a queue must register every kind enqueued
    /// there; a kind nobody registered stays `retryable` with an error saying so.
    pub fn register<J: Job>(mut self) -> Self {
        match Name::parse("job kind", J::KIND) {
            Ok(_) => {
                self.registry
                    .insert(J::KIND.to_owned(), Arc::new(TypedRunner::<J>(PhantomData)));
            }
            Err(e) => self.errors.push(e.into()),
        }
        self
    }

    /// Sets the configuration.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a periodic job. Each tick is enqueued once however many workers run it.
    pub fn cron(mut self, cron: CronJob) -> Self {
        self.crons.push(cron);
        self
    }

    /// Validates the configuration and starts the worker on the current Tokio runtime.
    pub fn start(mut self) -> Result<RunningWorker> {
        if let Some(e) = self.errors.pop() {
            return Err(e);
        }
        self.config.validate()?;
        let id = self.config.worker_id.clone().unwrap_or_else(|| {
            format!(
                "worker-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            )
        });
        let (finish_tx, finish_rx) = mpsc::unbounded_channel();
        let wakers = self
            .config
            .queues
            .iter()
            .map(|(q, _)| (q.clone(), Arc::new(Notify::new())))
            .collect();
        let inner = Arc::new(Inner {
            store: self.store,
            registry: self.registry,
            config: self.config,
            id: id.clone(),
            in_flight: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            finish_tx,
            wakers,
            hard_stop: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run(inner, self.crons, finish_rx, stop.clone()));
        Ok(RunningWorker { id, stop, handle })
    }
}

/// A started worker. Dropping it leaves the worker running; call [`RunningWorker::shutdown`].
#[derive(Debug)]
pub struct RunningWorker {
    id: String,
    stop: CancellationToken,
    handle: JoinHandle<Result<()>>,
}

impl RunningWorker {
    /// This worker's id (the `locked_by` of the jobs it runs).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Graceful shutdown: stops fetching, lets running jobs finish up to the shutdown
    /// deadline, aborts and releases the rest back to `available`, writes every outcome.
    pub async fn shutdown(self) -> Result<()> {
        self.stop.cancel();
        self.wait().await
    }

    /// A token that starts the graceful shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the worker stopped (after [`RunningWorker::shutdown_token`] fired).
    pub async fn wait(self) -> Result<()> {
        match self.handle.await {
            Ok(r) => r,
            Err(e) => Err(Error::Store {
                backend: "worker",
                op: "run",
                source: Box::new(e),
            }),
        }
    }
}

struct Flight {
    attempt: i32,
    cancel: CancellationToken,
    abort: Option<AbortHandle>,
    /// The outcome was handed to the completer.
    done: bool,
    /// Stopped at hard shutdown without an outcome: to be released.
    released: bool,
}

struct Inner {
    store: Arc<dyn JobStore>,
    registry: HashMap<String, Arc<dyn Runner>>,
    config: WorkerConfig,
    id: String,
    in_flight: Mutex<HashMap<JobId, Flight>>,
    idle: Notify,
    finish_tx: mpsc::UnboundedSender<Finish>,
    wakers: HashMap<String, Arc<Notify>>,
    hard_stop: AtomicBool,
}

impl Inner {
    fn flights(&self) -> MutexGuard<'_, HashMap<JobId, Flight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_all(&self) {
        for n in self.wakers.values() {
            n.notify_one();
        }
    }
}

async fn run(
    inner: Arc<Inner>,
    crons: Vec<CronJob>,
    finish_rx: mpsc::UnboundedReceiver<Finish>,
    stop: CancellationToken,
) -> Result<()> {
    let background = CancellationToken::new();
    let mut bg = JoinSet::new();
    let completer_stop = CancellationToken::new();
    let completer = tokio::spawn(completer(inner.clone(), finish_rx, completer_stop.clone()));

    if let Some(mut rx) = inner.store.subscribe().await? {
        let inner = inner.clone();
        let token = background.clone();
        bg.spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = token.cancelled() => return,
                    m = rx.recv() => m,
                };
                match msg {
                    Ok(q) if q == WAKE_ALL => inner.wake_all(),
                    Ok(q) => {
                        if let Some(n) = inner.wakers.get(&q) {
                            n.notify_one();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => inner.wake_all(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    bg.spawn(heartbeat_loop(inner.clone(), background.clone()));
    bg.spawn(maintenance_loop(inner.clone(), background.clone()));
    for cron in crons {
        bg.spawn(crate::cron::cron_loop(
            inner.store.clone(),
            cron,
            background.clone(),
        ));
    }

    let mut fetchers = JoinSet::new();
    for (queue, concurrency) in inner.config.queues.clone() {
        let sem = Arc::new(Semaphore::new(concurrency));
        for _ in 0..inner.config.fetch_parallelism.min(concurrency) {
            fetchers.spawn(fetch_loop(
                inner.clone(),
                queue.clone(),
                sem.clone(),
                stop.clone(),
            ));
        }
    }
    tracing::info!(worker = %inner.id, "windlass-jobs worker started");
    while fetchers.join_next().await.is_some() {}

    // Stop fetching done; let running jobs finish up to the deadline.
    let deadline = tokio::time::Instant::now() + inner.config.shutdown_timeout;
    loop {
        let notified = inner.idle.notified();
        if inner.flights().values().all(|f| f.done) {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    // Abort what is still running and hand it back.
    inner.hard_stop.store(true, Ordering::SeqCst);
    let leftover: Vec<JobId> = {
        let flights = inner.flights();
        flights
            .iter()
            .filter(|(_, f)| !f.done)
            .map(|(id, f)| {
                f.cancel.cancel();
                if let Some(a) = &f.abort {
                    a.abort();
                }
                *id
            })
            .collect()
    };
    // Let the stopped attempts settle before releasing anything: one that completed on its own
    // meanwhile (e.g. it could not be interrupted) reports its success, and releasing its row
    // would run it again. Attempts still stuck after the grace period are released anyway.
    let settle = tokio::time::Instant::now() + inner.config.cancel_grace;
    loop {
        let notified = inner.idle.notified();
        let settled = {
            let flights = inner.flights();
            leftover
                .iter()
                .all(|id| flights.get(id).is_none_or(|f| f.done || f.released))
        };
        if settled || tokio::time::timeout_at(settle, notified).await.is_err() {
            break;
        }
    }
    let leftover: Vec<JobId> = {
        let flights = inner.flights();
        leftover
            .into_iter()
            .filter(|id| flights.get(id).is_some_and(|f| !f.done))
            .collect()
    };
    let mut result = Ok(());
    if !leftover.is_empty() {
        match inner.store.release(&inner.id, &leftover).await {
            Ok(n) => {
                tracing::info!(worker = %inner.id, released = n, "released unfinished jobs at shutdown")
            }
            Err(e) => {
                tracing::warn!(worker = %inner.id, error = %e, "could not release jobs; they will be rescued");
                result = Err(e);
            }
        }
    }
    completer_stop.cancel();
    let _ = completer.await;
    background.cancel();
    while bg.join_next().await.is_some() {}
    tracing::info!(worker = %inner.id, "windlass-jobs worker stopped");
    result
}

const MIN_IDLE_WAIT: Duration = Duration::from_millis(5);

async fn fetch_loop(
    inner: Arc<Inner>,
    queue: String,
    sem: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let wake = inner.wakers.get(&queue).cloned().unwrap_or_default();
    let mut failures: u32 = 0;
    let retry =
        RetryPolicy::default().with_delays(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let mut permits = vec![first];
        while permits.len() < inner.config.fetch_batch {
            match sem.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let wanted = permits.len();
        let jobs = match inner.store.fetch(&queue, wanted, &inner.id).await {
            Ok(jobs) => {
                failures = 0;
                jobs
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(queue = %queue, error = %e, "windlass-jobs fetch failed; retrying");
                drop(permits);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry.delay(failures)) => {}
                }
                continue;
            }
        };
        let got = jobs.len();
        for job in jobs {
            let Some(permit) = permits.pop() else { break };
            launch(&inner, job, permit);
        }
        drop(permits);
        if got < wanted {
            let mut wait = inner.config.poll_interval;
            if let Ok(Some(at)) = inner.store.next_due(&queue).await {
                let until = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                wait = wait.min(until.max(MIN_IDLE_WAIT));
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn launch(inner: &Arc<Inner>, job: FetchedJob, permit: OwnedSemaphorePermit) {
    let cancel = CancellationToken::new();
    inner.flights().insert(
        job.id,
        Flight {
            attempt: job.attempt,
            cancel: cancel.clone(),
            abort: None,
            done: false,
            released: false,
        },
    );
    let span = tracing::info_span!(
        "windlass.job",
        job.id = job.id,
        job.kind = %job.kind,
        job.queue = %job.queue,
        job.attempt = job.attempt,
        job.org_id = job.org_id.as_deref().unwrap_or(""),
        job.outcome = tracing::field::Empty,
    );
    let inner = inner.clone();
    tokio::spawn(
        async move {
            let _permit = permit;
            let id = job.id;
            let attempt = job.attempt;
            let outcome = execute(&inner, job, cancel).await;
            match outcome {
                Some(outcome) => {
                    tracing::Span::current().record("job.outcome", outcome.state().as_str());
                    let _ = inner.finish_tx.send(Finish::new(id, attempt, outcome));
                    if let Some(f) = inner.flights().get_mut(&id) {
                        f.done = true;
                    }
                }
                None => {
                    tracing::Span::current().record("job.outcome", "released");
                    if let Some(f) = inner.flights().get_mut(&id) {
                        f.released = true;
                    }
                }
            }
            inner.idle.notify_waiters();
        }
        .instrument(span),
    );
}

/// `now + d`, with `d` capped at [`MAX_SCHEDULE_AHEAD`]: a job may snooze for any
/// `Duration`, and an overflowing timestamp would panic the attempt's task (leaving its row
/// `running`, heartbeated forever).
fn from_now(d: Duration) -> chrono::DateTime<Utc> {
    let d = chrono::Duration::from_std(d.min(MAX_SCHEDULE_AHEAD)).unwrap_or(chrono::Duration::MAX);
    let now = Utc::now();
    now.checked_add_signed(d).unwrap_or(now)
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Runs one attempt; `None` when the worker is shutting down hard (the job is released).
async fn execute(
    inner: &Arc<Inner>,
    job: FetchedJob,
    cancel: CancellationToken,
) -> Option<Outcome> {
    let queue = job.queue.clone();
    let wait = (Utc::now() - job.run_at).to_std().unwrap_or(Duration::ZERO);
    metrics::histogram!("windlass_jobs_wait_seconds", "queue" => queue.clone())
        .record(wait.as_secs_f64());
    let worker = Some(inner.id.clone());
    let failed = |reason: &'static str, message: String| -> Outcome {
        metrics::counter!("windlass_jobs_failed_total", "queue" => queue.clone(), "reason" => reason).increment(1);
        tracing::warn!(error = %message, reason, "job attempt failed");
        let error = AttemptError::new(job.attempt, message, worker.clone());
        if job.attempt >= job.max_attempts {
            Outcome::Discard { error }
        } else {
            Outcome::Retry {
                run_at: from_now(inner.config.retry.delay(job.attempt.max(1) as u32)),
                error,
            }
        }
    };

    let Some(runner) = inner.registry.get(&job.kind) else {
        metrics::counter!("windlass_jobs_failed_total", "queue" => queue.clone(), "reason" => "unknown_kind")
            .increment(1);
        metrics::counter!("windlass_jobs_unknown_kind_total", "queue" => queue.clone())
            .increment(1);
        let message = format!(
            "no worker registered job kind {:?} (worker {} knows {:?}); register it with Worker::register",
            job.kind,
            inner.id,
            inner.registry.keys().collect::<Vec<_>>()
        );
        tracing::error!(error = %message, "unknown job kind");
        return Some(Outcome::Requeue {
            run_at: from_now(inner.config.unknown_kind_delay),
            error: Some(AttemptError::new(job.attempt, message, worker)),
        });
    };
    let ctx = JobContext {
        id: job.id,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        queue: job.queue.clone(),
        org_id: job.org_id.clone(),
        cancel: cancel.clone(),
    };
    let future = match runner.start(job.args.clone(), ctx) {
        Ok(f) => f,
        Err(e) => {
            metrics::counter!("windlass_jobs_failed_total", "queue" => queue.clone(), "reason" => "decode").increment(1);
            let message = format!("arguments no longer decode as job kind {:?}: {e}", job.kind);
            tracing::error!(error = %message, "discarding job");
            return Some(Outcome::Discard {
                error: AttemptError::new(job.attempt, message, worker),
            });
        }
    };
    let started = Instant::now();
    let mut handle = tokio::spawn(future.in_current_span());
    if let Some(f) = inner.flights().get_mut(&job.id) {
        f.abort = Some(handle.abort_handle());
    }
    let timeout = job.timeout.unwrap_or(inner.config.default_timeout);
    let result = tokio::select! {
        r = &mut handle => Some(r),
        _ = tokio::time::sleep(timeout) => None,
        _ = cancel.cancelled() => {
            // Cancelled by id, rescued elsewhere, or hard shutdown: give it a moment to stop.
            match tokio::time::timeout(inner.config.cancel_grace, &mut handle).await {
                Ok(r) => Some(r),
                Err(_) => { handle.abort(); Some((&mut handle).await) }
            }
        }
    };
    metrics::histogram!("windlass_jobs_run_seconds", "queue" => queue.clone(), "kind" => job.kind.clone())
        .record(started.elapsed().as_secs_f64());
    // Stopped by a hard shutdown: released without counting the attempt, unless it completed
    // (a success is recorded, never run again).
    if inner.hard_stop.load(Ordering::SeqCst)
        && cancel.is_cancelled()
        && !matches!(result, Some(Ok(Ok(()))))
    {
        return None;
    }
    let outcome = match result {
        None => {
            cancel.cancel();
            handle.abort();
            failed("timeout", format!("timed out after {timeout:?}"))
        }
        Some(Ok(Ok(()))) => {
            metrics::counter!("windlass_jobs_completed_total", "queue" => queue.clone())
                .increment(1);
            Outcome::Completed
        }
        Some(Ok(Err(e))) => match e.kind {
            JobErrorKind::Retry => failed("error", e.to_string()),
            JobErrorKind::Discard => {
                metrics::counter!("windlass_jobs_failed_total", "queue" => queue.clone(), "reason" => "discarded")
                    .increment(1);
                Outcome::Discard {
                    error: AttemptError::new(job.attempt, e.to_string(), worker.clone()),
                }
            }
            JobErrorKind::Cancel => Outcome::Cancel {
                error: AttemptError::new(job.attempt, e.to_string(), worker.clone()),
            },
            JobErrorKind::Snooze(d) => Outcome::Requeue {
                run_at: from_now(d),
                error: None,
            },
        },
        Some(Err(join)) if join.is_panic() => failed(
            "panic",
            format!("panicked: {}", panic_message(join.into_panic())),
        ),
        Some(Err(_)) => {
            if cancel.is_cancelled() {
                Outcome::Cancel {
                    error: AttemptError::new(
                        job.attempt,
                        "attempt stopped: job no longer held",
                        worker.clone(),
                    ),
                }
            } else {
                failed("error", "attempt aborted".to_owned())
            }
        }
    };
    Some(outcome)
}

async fn completer(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Finish>,
    stop: CancellationToken,
) {
    let max = inner.config.completion_batch;
    loop {
        let first = tokio::select! {
            f = rx.recv() => f,
            _ = stop.cancelled() => None,
        };
        let mut batch = Vec::new();
        match first {
            Some(f) => batch.push(f),
            None => {
                while let Ok(f) = rx.try_recv() {
                    batch.push(f);
                }
                if !batch.is_empty() {
                    flush(&inner, batch, true).await;
                }
                return;
            }
        }
        while batch.len() < max {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        flush(&inner, batch, false).await;
    }
}

async fn flush(inner: &Arc<Inner>, batch: Vec<Finish>, last: bool) {
    let retry =
        RetryPolicy::default().with_delays(Duration::from_millis(20), Duration::from_secs(2));
    for chunk in batch.chunks(inner.config.completion_batch) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match inner.store.finish(&inner.id, chunk).await {
                Ok(applied) => {
                    if (applied as usize) < chunk.len() {
                        tracing::debug!(
                            stale = chunk.len() - applied as usize,
                            "outcomes of jobs no longer held (cancelled or rescued) were dropped"
                        );
                    }
                    break;
                }
                // Outcomes are state-guarded, so writing them again is safe. Jobs whose outcome
                // can never be written are rescued once their heartbeat stops.
                Err(e) if attempt < if last { 5 } else { 50 } => {
                    tracing::warn!(error = %e, "windlass-jobs completion failed; retrying");
                    tokio::time::sleep(retry.delay(attempt)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, jobs = chunk.len(), "giving up writing outcomes; jobs will be rescued");
                    break;
                }
            }
        }
        let mut retries = 0usize;
        {
            let mut flights = inner.flights();
            for f in chunk {
                if flights.get(&f.id).is_some_and(|fl| fl.attempt == f.attempt) {
                    flights.remove(&f.id);
                }
                if matches!(f.outcome, Outcome::Retry { .. } | Outcome::Requeue { .. }) {
                    retries += 1;
                }
            }
        }
        if retries > 0 {
            // A retry may be due before the next poll: let fetchers recompute their wait.
            inner.wake_all();
        }
    }
    inner.idle.notify_waiters();
}

async fn heartbeat_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(inner.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ids: Vec<JobId> = inner.flights().keys().copied().collect();
        if ids.is_empty() {
            continue;
        }
        match inner.store.heartbeat(&inner.id, &ids).await {
            Ok(held) => {
                let held: std::collections::HashSet<JobId> = held.into_iter().collect();
                let flights = inner.flights();
                for id in ids.iter().filter(|id| !held.contains(id)) {
                    if let Some(f) = flights.get(id)
                        && !f.done
                    {
                        tracing::info!(
                            job.id = id,
                            "job no longer held (cancelled, discarded or rescued); stopping it"
                        );
                        f.cancel.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "windlass-jobs heartbeat failed"),
        }
    }
}

async fn maintenance_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let start = tokio::time::Instant::now();
    let mut rescue = tokio::time::interval_at(
        start + inner.config.rescue_interval / 2,
        inner.config.rescue_interval,
    );
    let mut prune = tokio::time::interval_at(
        start + inner.config.prune_interval,
        inner.config.prune_interval,
    );
    let metrics_every = inner
        .config
        .metrics_interval
        .unwrap_or(Duration::from_secs(3600 * 24 * 365));
    let mut depth = tokio::time::interval(metrics_every);
    for t in [&mut rescue, &mut prune, &mut depth] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = rescue.tick() => match inner.store.rescue(inner.config.rescue_after).await {
                Ok(rescued) => for r in rescued {
                    tracing::warn!(job.id = r.id, queue = %r.queue, state = %r.state, "rescued job of a dead worker");
                    metrics::counter!("windlass_jobs_rescued_total", "queue" => r.queue).increment(1);
                },
                Err(e) => tracing::warn!(error = %e, "windlass-jobs rescue failed"),
            },
            _ = prune.tick() => if let Some(retention) = inner.config.retention {
                match inner.store.prune(retention).await {
                    Ok(n) if n > 0 => tracing::debug!(pruned = n, "pruned final jobs"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "windlass-jobs prune failed"),
                }
            },
            _ = depth.tick() => if inner.config.metrics_interval.is_some() {
                match inner.store.counts().await {
                    Ok(counts) => {
                        let mut seen: HashMap<(String, JobState), i64> = HashMap::new();
                        for (q, _) in &inner.config.queues {
                            for s in JobState::ALL {
                                seen.insert((q.clone(), s), 0);
                            }
                        }
                        for c in counts {
                            seen.insert((c.queue, c.state), c.count);
                        }
                        for ((queue, state), n) in seen {
                            metrics::gauge!("windlass_jobs_depth", "queue" => queue, "state" => state.as_str())
                                .set(n as f64);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "windlass-jobs depth query failed"),
                }
            },
        }
    }
}
