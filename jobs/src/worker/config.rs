//! Worker settings.

use std::time::Duration;

use windlass_core::{Name, RetryPolicy};

use crate::error::{Error, Result};

/// Worker settings. Defaults: queues `critical` 20, `default` 10, `low` 5, `bulk` 5; fetch
/// batches of up to 100; poll every second; heartbeat every 5 s; self-fence after 30 s without
/// a heartbeat; rescue jobs silent for 60 s; 10 min default timeout; 5 s cancel grace; 30 s
/// shutdown deadline; keep final jobs 24 h.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Queues served and their concurrency (jobs running at once per queue). Exactly these
    /// are served. The default (`critical` 20, `default` 10, `low` 5, `bulk` 5) is replaced
    /// by the first [`WorkerConfig::queue`] call.
    pub queues: Vec<(String, usize)>,
    /// The queues are still the defaults (the first `queue()` call replaces them).
    default_queues: bool,
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
    /// Self-fencing: an attempt whose lease this worker could not renew for this long is
    /// cancelled (and aborted after `cancel_grace`), and the worker fetches nothing until a
    /// heartbeat succeeds again. `None`: half of `rescue_after`. Must leave room for
    /// `cancel_grace` before `rescue_after`, so an attempt that honours cancellation has
    /// stopped before anyone may rescue it.
    pub self_fence_after: Option<Duration>,
    /// How often this worker looks for jobs to rescue.
    pub rescue_interval: Duration,
    /// Timeout of a job enqueued without one.
    pub default_timeout: Duration,
    /// How long a cancelled (or timed-out) attempt may take to stop on its own before it is
    /// aborted. An aborted attempt keeps its slot (and its lease) until its task has really
    /// ended.
    pub cancel_grace: Duration,
    /// Backoff between attempts (the attempt limit comes from each job's `max_attempts`).
    pub retry: RetryPolicy,
    /// How long shutdown waits for running jobs before cancelling them. Attempts that then
    /// end without an outcome are released; attempts still running are never released (they
    /// are left to the lease).
    pub shutdown_timeout: Duration,
    /// Most outcomes written by one completion statement.
    pub completion_batch: usize,
    /// Final jobs older than this are pruned (`None`: never).
    pub retention: Option<Duration>,
    /// How often pruning runs.
    pub prune_interval: Duration,
    /// How often queue depth gauges are refreshed (`None`: never), from the count snapshot.
    pub metrics_interval: Option<Duration>,
    /// Shortest interval between two recounts of the count snapshot
    /// ([`Jobs::count_snapshot`](crate::Jobs::count_snapshot)) by the maintenance leader
    /// (`None`: this worker never recounts). The leader stretches it to 20 times the last
    /// recount's duration, so recounting a large table takes at most ~5% of the time (a 3 s
    /// recount at ten million rows: once a minute).
    pub counts_interval: Option<Duration>,
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
            default_queues: true,
            fetch_batch: 100,
            fetch_parallelism: 2,
            poll_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(5),
            rescue_after: Duration::from_secs(60),
            self_fence_after: None,
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
            counts_interval: Some(Duration::from_secs(10)),
            unknown_kind_delay: Duration::from_secs(60),
            worker_id: None,
        }
    }
}

impl WorkerConfig {
    /// Serves `queue` with `concurrency` (replacing its previous setting). The first call
    /// replaces the default queues: `WorkerConfig::default().queue("emails", 5)` serves
    /// `emails` only.
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        let queue = queue.into();
        if std::mem::take(&mut self.default_queues) {
            self.queues.clear();
        }
        self.queues.retain(|(q, _)| *q != queue);
        self.queues.push((queue, concurrency));
        self
    }

    /// Serves exactly these queues.
    pub fn queues(mut self, queues: impl IntoIterator<Item = (impl Into<String>, usize)>) -> Self {
        self.queues = queues.into_iter().map(|(q, n)| (q.into(), n)).collect();
        self.default_queues = false;
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

    /// Self-fencing threshold (see [`WorkerConfig::self_fence_after`]).
    pub fn self_fence_after(mut self, d: Duration) -> Self {
        self.self_fence_after = Some(d);
        self
    }

    /// The self-fencing threshold in force: the one set, or half of `rescue_after`.
    pub fn fence_after(&self) -> Duration {
        self.self_fence_after.unwrap_or(self.rescue_after / 2)
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

    /// Shortest interval between two recounts of the count snapshot (`None`: this worker
    /// never recounts); see [`WorkerConfig::counts_interval`](Self#structfield.counts_interval).
    pub fn counts_interval(mut self, d: Option<Duration>) -> Self {
        self.counts_interval = d;
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

    pub(crate) fn validate(&self) -> Result<()> {
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
        let fence = self.fence_after();
        if fence <= self.heartbeat_interval {
            return Err(Error::invalid(
                "self_fence_after",
                format!(
                    "{fence:?} must be longer than heartbeat_interval ({:?}), or a worker would fence itself between two heartbeats",
                    self.heartbeat_interval
                ),
            ));
        }
        if fence + self.cancel_grace > self.rescue_after {
            return Err(Error::invalid(
                "self_fence_after",
                format!(
                    "self_fence_after ({fence:?}) + cancel_grace ({:?}) must not exceed rescue_after ({:?}): \
                     an attempt cut off from the database must be stopped before it can be rescued",
                    self.cancel_grace, self.rescue_after
                ),
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
