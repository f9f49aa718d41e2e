//! [`RelayOptions`]: how a relay claims, publishes, waits and maintains.

use std::time::Duration;

use windlass_core::RetryPolicy;

use crate::config::Destination;

/// How a [`Relay`](crate::Relay) runs. Every field has a safe default; values that would make
/// no sense (a zero batch, a lease shorter than a publish) are corrected where they are used.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayOptions {
    /// The destination this relay delivers (one relay per destination; run one per bus when rows
    /// go to several).
    pub destination: Destination,
    /// Most rows per claim.
    pub batch_size: usize,
    /// Longest wait between two claims when idle. After a claim that found nothing the relay
    /// waits [`RelayOptions::min_poll`], then twice as long each time, up to this.
    pub poll_interval: Duration,
    /// First wait after an empty claim (the adaptive poll's floor).
    pub min_poll: Duration,
    /// Also wake up on `NOTIFY` (Postgres; only useful with [`OutboxConfig::notify`]). Off by
    /// default and behind PgBouncer in transaction mode.
    ///
    /// [`OutboxConfig::notify`]: crate::OutboxConfig::notify
    pub listen: bool,
    /// Backoff of a key whose head failed transiently (bus unreachable, timeout): delays grow
    /// with the head's attempts up to `retry.max`. Transient failures never make a row dead,
    /// whatever `retry.max_attempts` says.
    pub retry: RetryPolicy,
    /// Longest one publish call may take before it counts as a transient failure.
    pub publish_timeout: Duration,
    /// Lease on the keys of a claim. The relay starts no publish it could not finish within
    /// its lease (publish timeouts are cut to fit); another relay may take the keys over
    /// once the lease ends.
    pub lease: Duration,
    /// Take part in the election of the maintenance leader (one relay of the outbox runs
    /// retention, purges and counters).
    pub maintenance: bool,
    /// How often maintenance runs (and the leader lease is renewed; the lease lasts three
    /// intervals).
    pub maintenance_interval: Duration,
    /// Delete events every destination has once they are this old (`None`: keep them).
    pub retention: Option<Duration>,
    /// Delete dead and skipped deliveries this long after they died (`None`: keep them).
    pub dead_retention: Option<Duration>,
    /// Delete inbox records this old (`None`: keep them). Keep it well above how late a
    /// duplicate can arrive (bus redelivery, relay retries, replays).
    pub inbox_retention: Option<Duration>,
    /// Shortest interval between two recounts of the operator counters (the leader stretches
    /// it so recounting takes at most ~5% of the time on a large table).
    pub stats_interval: Duration,
    /// Pause after a database error before the next claim.
    pub error_backoff: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            destination: Destination::default(),
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            min_poll: Duration::from_millis(5),
            listen: false,
            retry: RetryPolicy::default(),
            publish_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            maintenance: true,
            maintenance_interval: Duration::from_secs(10),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            dead_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            inbox_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            stats_interval: Duration::from_secs(10),
            error_backoff: Duration::from_millis(500),
        }
    }
}

impl RelayOptions {
    /// Sets the destination.
    pub fn destination(mut self, d: Destination) -> Self {
        self.destination = d;
        self
    }
    /// Sets the rows per claim (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }
    /// Sets the longest idle wait.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
    /// Sets the first wait after an empty claim.
    pub fn min_poll(mut self, d: Duration) -> Self {
        self.min_poll = d;
        self
    }
    /// Turns LISTEN wake-ups on or off.
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }
    /// Sets the backoff policy of transient failures.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
    /// Sets the publish timeout.
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.publish_timeout = d;
        self
    }
    /// Sets the lease on claimed keys.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }
    /// Takes part in the maintenance leader election, or not.
    pub fn maintenance(mut self, on: bool) -> Self {
        self.maintenance = on;
        self
    }
    /// Sets how often maintenance runs.
    pub fn maintenance_interval(mut self, d: Duration) -> Self {
        self.maintenance_interval = d;
        self
    }
    /// Sets the retention of delivered events (`None`: keep them).
    pub fn retention(mut self, age: Option<Duration>) -> Self {
        self.retention = age;
        self
    }
    /// Sets the retention of dead and skipped deliveries (`None`: keep them).
    pub fn dead_retention(mut self, age: Option<Duration>) -> Self {
        self.dead_retention = age;
        self
    }
    /// Sets the retention of inbox records (`None`: keep them).
    pub fn inbox_retention(mut self, age: Option<Duration>) -> Self {
        self.inbox_retention = age;
        self
    }
    /// Sets the shortest interval between two recounts of the counters.
    pub fn stats_interval(mut self, d: Duration) -> Self {
        self.stats_interval = d;
        self
    }
    /// Sets the pause after a database error.
    pub fn error_backoff(mut self, d: Duration) -> Self {
        self.error_backoff = d;
        self
    }

    /// The lease actually used: at least twice the publish timeout plus a second.
    pub(crate) fn effective_lease(&self) -> Duration {
        self.lease
            .max(self.publish_timeout * 2 + Duration::from_secs(1))
    }

    /// Time kept in hand before the lease ends: no publish starts with less left.
    pub(crate) fn lease_margin(&self) -> Duration {
        (self.effective_lease() / 10).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }
}
