//! The worker, split along its seams:
//! - `config`: [`WorkerConfig`];
//! - `fetch`: per-queue fetch loops under a concurrency limit, launching attempts;
//! - `execute`: one attempt (timeout, cancellation, panic capture, outcome), which keeps its
//!   slot until its task has really ended;
//! - `fence`: heartbeats (fenced by attempt token) and self-fencing;
//! - `complete`: batched, fenced completion;
//! - `maintenance`: rescue, pruning, depth metrics;
//! - this file: building, starting and shutting down.
//!
//! Everything the worker writes goes through the fenced [`JobStore`] calls; the worker holds
//! no state another process needs.

mod complete;
pub(crate) mod config;
mod execute;
mod fence;
mod fetch;
mod maintenance;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use windlass_core::Name;

use crate::cron::CronJob;
use crate::error::{Error, Result};
use crate::job::{Job, JobContext, JobError};
use crate::model::{AttemptToken, Finish, JobState};
use crate::store::{JobStore, WAKE_ALL};

pub use config::WorkerConfig;

/// Runs one job type: decodes the arguments and returns the attempt's future.
trait Runner: Send + Sync {
    fn start(
        &self,
        args: serde_json::Value,
        ctx: JobContext,
    ) -> Result<BoxFuture<'static, Result<(), JobError>>, serde_json::Error>;

    /// The kind's own timeout ([`Job::timeout`]).
    fn timeout(&self) -> Option<std::time::Duration>;

    /// The kind's own backoff ([`Job::retry_policy`]).
    fn retry(&self) -> Option<windlass_core::RetryPolicy>;
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

    fn timeout(&self) -> Option<std::time::Duration> {
        J::timeout()
    }

    fn retry(&self) -> Option<windlass_core::RetryPolicy> {
        J::retry_policy()
    }
}

/// A worker, being configured. [`Worker::start`] runs it.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use serde::{Deserialize, Serialize};
/// use windlass_jobs::{EnqueueOptions, Job, JobContext, JobError, Jobs, Worker, WorkerConfig};
/// use windlass_jobs::memory::MemoryJobStore;
///
/// #[derive(Serialize, Deserialize)]
/// struct Hello { name: String }
/// impl Job for Hello {
///     const KIND: &'static str = "hello";
///     async fn run(&self, _ctx: JobContext) -> Result<(), JobError> { Ok(()) }
/// }
///
/// let jobs = Jobs::new(MemoryJobStore::new());
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
    states: crate::job::States,
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
            states: HashMap::new(),
            config: WorkerConfig::default(),
            crons: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Registers job type `J`. A worker fetches only the kinds it registered: a job of a kind
    /// no worker of its queue knows stays waiting (visible in listings and counts), untouched.
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

    /// Hands `state` (a pool, a client, your app state) to every job of this worker, by type:
    /// jobs get it with [`JobContext::state`]. One value per type; a second replaces the first.
    pub fn state<S: Send + Sync + 'static>(self, state: S) -> Self {
        self.shared_state(Arc::new(state))
    }

    /// Like [`Worker::state`] for a value you keep a handle on too: jobs get this very `Arc`
    /// from `ctx.state::<S>()`.
    pub fn shared_state<S: Send + Sync + 'static>(mut self, state: Arc<S>) -> Self {
        self.states.insert(std::any::TypeId::of::<S>(), state);
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
        if self.registry.is_empty() {
            return Err(Error::invalid(
                "kinds",
                "register at least one job type (Worker::register): a worker fetches only the kinds it knows",
            ));
        }
        let mut kinds: Vec<String> = self.registry.keys().cloned().collect();
        kinds.sort();
        let inner = Arc::new(Inner {
            store: self.store,
            registry: self.registry,
            states: Arc::new(self.states),
            kinds,
            fence_after: self.config.fence_after(),
            config: self.config,
            id: id.clone(),
            in_flight: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            finish_tx,
            wakers,
            hard_stop: AtomicBool::new(false),
            fetching: std::sync::atomic::AtomicUsize::new(0),
            last_heartbeat: Mutex::new(Instant::now()),
            attempt_fenced_at: Mutex::new(None),
        });
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run(inner.clone(), self.crons, finish_rx, stop.clone()));
        Ok(RunningWorker {
            id,
            stop,
            handle,
            inner,
        })
    }
}

/// A started worker. Dropping it leaves the worker running; call [`RunningWorker::shutdown`].
pub struct RunningWorker {
    id: String,
    stop: CancellationToken,
    handle: JoinHandle<Result<()>>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RunningWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningWorker")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RunningWorker {
    /// This worker's id (the `locked_by` of the jobs it runs).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Graceful shutdown: stops fetching, lets running jobs finish up to the shutdown
    /// deadline (still heartbeating them), then cancels the rest and waits up to twice
    /// `cancel_grace` for them to end. Attempts that ended without an outcome are released
    /// back to `available`; an attempt still running is **never** released: its row stays
    /// `running` and is rescued `rescue_after` after the last heartbeat (exit the process so
    /// it cannot overlap the next attempt). Every outcome is written before this returns.
    pub async fn shutdown(self) -> Result<()> {
        self.stop.cancel();
        self.wait().await
    }

    /// For tests: runs until no job of this worker's queues and kinds is due and none is
    /// running or waiting to have its outcome written, then shuts down gracefully. Jobs
    /// scheduled (or retrying) in the future are not waited for. Errors with
    /// [`Error::DrainTimeout`] (after shutting down) when that does not happen within
    /// `timeout`.
    pub async fn drain(self, timeout: std::time::Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.idle().await? {
                return self.shutdown().await;
            }
            if tokio::time::Instant::now() >= deadline {
                self.shutdown().await?;
                return Err(Error::DrainTimeout { after: timeout });
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Nothing due, nothing being fetched, nothing in flight (checked again after the store
    /// was asked, so a fetch racing the check is seen).
    async fn idle(&self) -> Result<bool> {
        let inner = &self.inner;
        let quiet = || inner.fetching.load(Ordering::SeqCst) == 0 && inner.flights().is_empty();
        if !quiet() {
            return Ok(false);
        }
        let now = chrono::Utc::now();
        for (queue, _) in &inner.config.queues {
            if inner
                .store
                .next_due(queue, &inner.kinds)
                .await?
                .is_some_and(|at| at <= now)
            {
                return Ok(false);
            }
        }
        Ok(quiet())
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

/// Why an attempt's lease is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// A heartbeat found the row no longer held at this attempt (rescued).
    Rescued,
    /// This worker could not renew the lease for `self_fence_after` and stopped it itself.
    Fenced,
}

/// One attempt this worker runs, keyed by its [`AttemptToken`] in `Inner::in_flight`.
struct Flight {
    cancel: CancellationToken,
    abort: Option<AbortHandle>,
    /// The lease is known renewed as of this instant: when the fetch that claimed it, or the
    /// last heartbeat that held it, was sent.
    renewed: Instant,
    /// A stop (cancel / discard by id) delivered to the attempt.
    stop: Option<JobState>,
    /// The lease was lost.
    lost: Option<Lost>,
    /// The attempt's task (the handler) has ended: from then on no stop request reaches it,
    /// and `interrupted` is final. Set under the flights lock, so a stop delivered by a
    /// heartbeat lands either before it (and decides the outcome) or not at all.
    ended: bool,
    /// The attempt's token had fired when its task ended (a stop, a lost lease, shutdown).
    interrupted: bool,
    /// The attempt's task has ended and its outcome was handed to the completer (the row
    /// stays `running` until the completer wrote it, so it is still heartbeated).
    done: bool,
    /// The attempt's task has ended at hard shutdown without an outcome: to be released.
    released: bool,
}

struct Inner {
    store: Arc<dyn JobStore>,
    registry: HashMap<String, Arc<dyn Runner>>,
    states: Arc<crate::job::States>,
    /// The registered kinds: the only ones fetched.
    kinds: Vec<String>,
    config: WorkerConfig,
    fence_after: std::time::Duration,
    id: String,
    in_flight: Mutex<HashMap<AttemptToken, Flight>>,
    idle: Notify,
    finish_tx: mpsc::UnboundedSender<Finish>,
    wakers: HashMap<String, Arc<Notify>>,
    hard_stop: AtomicBool,
    /// Fetches in progress (claimed rows not yet launched).
    fetching: std::sync::atomic::AtomicUsize,
    /// When the last successful heartbeat was sent.
    last_heartbeat: Mutex<Instant>,
    /// When the watchdog last self-fenced an attempt. An attempt's lease can go stale before
    /// the worker's last heartbeat does (a heartbeat that started before the attempt was
    /// claimed does not renew it), so the worker also counts as fenced from that moment until
    /// a heartbeat sent after it succeeds.
    attempt_fenced_at: Mutex<Option<Instant>>,
}

impl Inner {
    fn flights(&self) -> MutexGuard<'_, HashMap<AttemptToken, Flight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_all(&self) {
        for n in self.wakers.values() {
            n.notify_one();
        }
    }

    /// Self-fenced: no heartbeat succeeded for `self_fence_after`, or none was sent since the
    /// watchdog last fenced an attempt; fetch nothing.
    fn fenced(&self) -> bool {
        let last = *self
            .last_heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.elapsed() > self.fence_after {
            return true;
        }
        let fenced_at = *self
            .attempt_fenced_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        fenced_at.is_some_and(|at| last < at)
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
    let completer = tokio::spawn(complete::completer(
        inner.clone(),
        finish_rx,
        completer_stop.clone(),
    ));

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
    bg.spawn(fence::heartbeat_loop(inner.clone(), background.clone()));
    bg.spawn(fence::watchdog_loop(inner.clone(), background.clone()));
    bg.spawn(maintenance::maintenance_loop(
        inner.clone(),
        background.clone(),
    ));
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
            fetchers.spawn(fetch::fetch_loop(
                inner.clone(),
                queue.clone(),
                sem.clone(),
                stop.clone(),
            ));
        }
    }
    tracing::info!(worker = %inner.id, "windlass-jobs worker started");
    while fetchers.join_next().await.is_some() {}

    let result = drain(&inner).await;
    completer_stop.cancel();
    let _ = completer.await;
    background.cancel();
    while bg.join_next().await.is_some() {}
    tracing::info!(worker = %inner.id, "windlass-jobs worker stopped");
    result
}

/// Shutdown after fetching stopped: waits for running attempts (heartbeats go on), cancels
/// those past the deadline, releases the ones that ended without an outcome, and never
/// releases one still running.
async fn drain(inner: &Arc<Inner>) -> Result<()> {
    let all_ended =
        |flights: &HashMap<AttemptToken, Flight>| flights.values().all(|f| f.done || f.released);
    let deadline = tokio::time::Instant::now() + inner.config.shutdown_timeout;
    loop {
        let notified = inner.idle.notified();
        if all_ended(&inner.flights()) {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    // Past the deadline: cancel what still runs. Each attempt gets `cancel_grace` to stop,
    // is then aborted, and reports once its task has really ended.
    inner.hard_stop.store(true, Ordering::SeqCst);
    for f in inner.flights().values().filter(|f| !f.done && !f.released) {
        f.cancel.cancel();
    }
    let settle = tokio::time::Instant::now() + inner.config.cancel_grace * 2;
    loop {
        let notified = inner.idle.notified();
        if all_ended(&inner.flights()) {
            break;
        }
        if tokio::time::timeout_at(settle, notified).await.is_err() {
            break;
        }
    }
    let (ended, stuck): (Vec<AttemptToken>, usize) = {
        let flights = inner.flights();
        let ended = flights
            .iter()
            .filter(|(_, f)| f.released)
            .map(|(t, _)| *t)
            .collect();
        let stuck = flights.values().filter(|f| !f.done && !f.released).count();
        (ended, stuck)
    };
    if stuck > 0 {
        tracing::warn!(
            worker = %inner.id,
            attempts = stuck,
            "attempts still running at shutdown (blocking code that ignores cancellation); \
             not released: their rows stay running and are rescued after rescue_after"
        );
    }
    if ended.is_empty() {
        return Ok(());
    }
    match inner.store.release(&inner.id, &ended).await {
        Ok(n) => {
            tracing::info!(worker = %inner.id, released = n, "released interrupted jobs at shutdown");
            let mut flights = inner.flights();
            for t in &ended {
                flights.remove(t);
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(worker = %inner.id, error = %e, "could not release jobs; they will be rescued");
            Err(e)
        }
    }
}

/// `now + d`, with `d` capped at [`MAX_SCHEDULE_AHEAD`](crate::MAX_SCHEDULE_AHEAD): a job may
/// snooze for any `Duration`, and an overflowing timestamp would panic the attempt's task
/// (leaving its row `running`, heartbeated forever).
fn from_now(d: std::time::Duration) -> chrono::DateTime<chrono::Utc> {
    let d = chrono::Duration::from_std(d.min(crate::options::MAX_SCHEDULE_AHEAD))
        .unwrap_or(chrono::Duration::MAX);
    let now = chrono::Utc::now();
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
