//! The relay: claims outbox rows, publishes them to the bus, settles them.
//!
//! Written once against [`OutboxStore`]; it knows nothing of SQL. Delivery is at least once:
//! a row is marked published only after the bus accepted it, in the same claim, so a relay that
//! dies between the two leaves the row pending and another round publishes it again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use windlass_core::{RetryPolicy, Topic};
use windlass_eventbus::{Event, Publisher};

use crate::error::Result;
use crate::store::{Claim, ClaimedRow, FailedRow, OutboxStore, Waiter};

/// How a [`Relay`] runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayOptions {
    /// Rows claimed per round.
    pub batch_size: usize,
    /// Longest wait between rounds when idle (the only wake-up in poll-only mode).
    pub poll_interval: Duration,
    /// Wake up on `NOTIFY` (Postgres). Turn off behind PgBouncer in transaction mode.
    pub listen: bool,
    /// Backoff between attempts of a failing row, and when it goes `dead`.
    pub retry: RetryPolicy,
    /// Longest a publish may take before it counts as failed.
    pub publish_timeout: Duration,
    /// Delete published rows older than this (`None`: keep them).
    pub retention: Option<Duration>,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// How often the pending / dead / lag gauges are refreshed.
    pub metrics_interval: Duration,
    /// Pause after a database error before the next round.
    pub error_backoff: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            listen: true,
            retry: RetryPolicy::default(),
            publish_timeout: Duration::from_secs(30),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_interval: Duration::from_secs(60),
            metrics_interval: Duration::from_secs(5),
            error_backoff: Duration::from_millis(500),
        }
    }
}

impl RelayOptions {
    /// Sets the rows claimed per round (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }
    /// Sets the polling interval.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
    /// Turns LISTEN wake-ups on or off (off = poll-only mode, e.g. behind PgBouncer).
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }
    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
    /// Sets the publish timeout.
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.publish_timeout = d;
        self
    }
    /// Sets the retention of published rows (`None`: keep them).
    pub fn retention(mut self, age: Option<Duration>) -> Self {
        self.retention = age;
        self
    }
    /// Sets how often retention runs.
    pub fn retention_interval(mut self, d: Duration) -> Self {
        self.retention_interval = d;
        self
    }
    /// Sets how often the gauges are refreshed.
    pub fn metrics_interval(mut self, d: Duration) -> Self {
        self.metrics_interval = d;
        self
    }
    /// Sets the pause after a database error.
    pub fn error_backoff(mut self, d: Duration) -> Self {
        self.error_backoff = d;
        self
    }
}

/// What one relay round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Round {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows published and marked.
    pub published: usize,
    /// Rows that failed and back off.
    pub failed: usize,
    /// Rows that went `dead`.
    pub dead: usize,
    /// Shortest backoff among the failed rows (when the relay should look again).
    pub next_retry_in: Option<Duration>,
}

/// Publishes outbox rows to a bus. See the crate docs for the guarantees.
pub struct Relay<S, P> {
    store: Arc<S>,
    publisher: Arc<P>,
    options: RelayOptions,
}

impl<S, P> std::fmt::Debug for Relay<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<S, P> Clone for Relay<S, P> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            publisher: self.publisher.clone(),
            options: self.options.clone(),
        }
    }
}

impl<S: OutboxStore, P: Publisher + 'static> Relay<S, P> {
    /// A relay from `store` to `publisher` with default options.
    pub fn new(store: S, publisher: P) -> Self {
        Self::from_arcs(Arc::new(store), Arc::new(publisher))
    }

    /// A relay sharing an existing store and publisher.
    pub fn from_arcs(store: Arc<S>, publisher: Arc<P>) -> Self {
        Self {
            store,
            publisher,
            options: RelayOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: RelayOptions) -> Self {
        self.options = options;
        self
    }

    /// The options.
    pub fn options(&self) -> &RelayOptions {
        &self.options
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Claims one batch, publishes it and settles it.
    pub async fn run_once(&self) -> Result<Round> {
        let claim = self.store.claim(self.options.batch_size).await?;
        let rows = claim.rows();
        let mut round = Round {
            claimed: rows.len(),
            ..Round::default()
        };
        if rows.is_empty() {
            claim.settle(&[], &[]).await?;
            return Ok(round);
        }
        let (published, failed) = self.publish_rows(rows).await;
        round.published = published.len();
        round.dead = failed.iter().filter(|f| f.dead).count();
        round.failed = failed.len() - round.dead;
        round.next_retry_in = failed.iter().filter(|f| !f.dead).map(|f| f.retry_in).min();
        claim.settle(&published, &failed).await?;
        let label = self.store.label().to_owned();
        metrics::counter!("windlass_outbox_published_total", "table" => label.clone())
            .increment(round.published as u64);
        if round.failed > 0 {
            metrics::counter!("windlass_outbox_publish_failures_total", "table" => label.clone())
                .increment(round.failed as u64);
        }
        if round.dead > 0 {
            metrics::counter!("windlass_outbox_dead_total", "table" => label)
                .increment(round.dead as u64);
        }
        Ok(round)
    }

    async fn publish_rows(&self, rows: &[ClaimedRow]) -> (Vec<Uuid>, Vec<FailedRow>) {
        let mut published = Vec::with_capacity(rows.len());
        let mut failed = Vec::new();
        // Topics in order of their first row; rows of a topic in seq order.
        let mut order: Vec<&str> = Vec::new();
        let mut by_topic: HashMap<&str, Vec<&ClaimedRow>> = HashMap::new();
        for row in rows {
            by_topic
                .entry(row.topic.as_str())
                .or_insert_with(|| {
                    order.push(row.topic.as_str());
                    Vec::new()
                })
                .push(row);
        }
        for name in order {
            let group = &by_topic[name];
            let topic = match Topic::new(name) {
                Ok(t) => t,
                Err(e) => {
                    for row in group {
                        failed.push(self.dead(row, format!("invalid topic: {e}")));
                    }
                    continue;
                }
            };
            let mut events = Vec::with_capacity(group.len());
            let mut sendable = Vec::with_capacity(group.len());
            for row in group {
                match Event::from_json_str(&row.event) {
                    Ok(ev) => {
                        events.push(ev);
                        sendable.push(*row);
                    }
                    Err(e) => {
                        failed.push(self.dead(row, format!("stored event does not decode: {e}")))
                    }
                }
            }
            if events.is_empty() {
                continue;
            }
            match self
                .publish_timed(self.publisher.publish_batch(&topic, &events))
                .await
            {
                Ok(()) => published.extend(sendable.iter().map(|r| r.id)),
                Err(e) if sendable.len() == 1 => {
                    let row = sendable[0];
                    failed.push(if e.permanent {
                        self.dead(row, e.message)
                    } else {
                        self.failure(row, e.message)
                    });
                }
                Err(_) => {
                    self.publish_one_by_one(&topic, &sendable, &events, &mut published, &mut failed)
                        .await
                }
            }
        }
        (published, failed)
    }

    /// After a failed batch: find out which rows fail, one by one in order, so one bad key does
    /// not hold the others back. A key whose row failed is skipped for the rest of the round
    /// (its order is kept). After [`BUS_DOWN_AFTER`] transient failures in a row the bus is
    /// taken as down: the head of every remaining key counts a failed attempt without trying.
    async fn publish_one_by_one(
        &self,
        topic: &Topic,
        rows: &[&ClaimedRow],
        events: &[Event],
        published: &mut Vec<Uuid>,
        failed: &mut Vec<FailedRow>,
    ) {
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut transient_in_a_row = 0;
        let mut bus_down: Option<String> = None;
        for (row, ev) in rows.iter().zip(events) {
            let key = row.partition_key.as_deref();
            if key.is_some_and(|k| blocked.contains(k)) {
                continue;
            }
            if let Some(error) = &bus_down {
                if let Some(k) = key {
                    blocked.insert(k);
                }
                failed.push(self.failure(row, error.clone()));
                continue;
            }
            match self.publish_timed(self.publisher.publish(topic, ev)).await {
                Ok(()) => {
                    transient_in_a_row = 0;
                    published.push(row.id);
                }
                Err(e) if e.permanent => {
                    transient_in_a_row = 0;
                    failed.push(self.dead(row, e.message));
                }
                Err(e) => {
                    if let Some(k) = key {
                        blocked.insert(k);
                    }
                    transient_in_a_row += 1;
                    if transient_in_a_row >= BUS_DOWN_AFTER {
                        bus_down = Some(e.message.clone());
                    }
                    failed.push(self.failure(row, e.message));
                }
            }
        }
    }

    async fn publish_timed(
        &self,
        fut: impl std::future::Future<Output = windlass_eventbus::Result<()>>,
    ) -> Result<(), PublishError> {
        match tokio::time::timeout(self.options.publish_timeout, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PublishError {
                permanent: is_permanent(&e),
                message: error_chain(&e),
            }),
            Err(_) => Err(PublishError {
                permanent: false,
                message: format!("publish timed out after {:?}", self.options.publish_timeout),
            }),
        }
    }

    fn dead(&self, row: &ClaimedRow, error: String) -> FailedRow {
        tracing::warn!(id = %row.id, topic = %row.topic, %error, "outbox event is dead");
        FailedRow {
            id: row.id,
            error,
            retry_in: Duration::ZERO,
            dead: true,
        }
    }

    fn failure(&self, row: &ClaimedRow, error: String) -> FailedRow {
        let attempts = row.attempts.saturating_add(1);
        if self.options.retry.is_exhausted(attempts) {
            return self.dead(row, format!("gave up after {attempts} attempts: {error}"));
        }
        let retry_in = self.options.retry.delay(attempts);
        tracing::debug!(id = %row.id, topic = %row.topic, attempts, ?retry_in, %error, "outbox publish failed");
        FailedRow {
            id: row.id,
            error,
            retry_in,
            dead: false,
        }
    }

    /// Runs until `shutdown` is cancelled: rounds back to back while there is work, else waits
    /// for a notification or the polling interval; runs retention and refreshes the gauges on
    /// their intervals. A database error is logged and retried after
    /// [`RelayOptions::error_backoff`]; the relay never gives up by itself.
    ///
    /// On shutdown the round in progress finishes (publish and mark), then `run` returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let opts = self.options.clone();
        let label = self.store.label().to_owned();
        let mut waiter = loop {
            match self.store.waiter(opts.listen).await {
                Ok(w) => break w,
                Err(e) => {
                    tracing::warn!(error = %e, table = %label, "outbox relay cannot listen yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(opts.error_backoff) => {}
                    }
                }
            }
        };
        let mut next_retention = Instant::now();
        let mut next_metrics = Instant::now();
        let mut retry_at: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            let now = Instant::now();
            if now >= next_metrics {
                next_metrics = now + opts.metrics_interval;
                self.export_gauges().await;
            }
            if let Some(age) = opts.retention
                && now >= next_retention
            {
                next_retention = now + opts.retention_interval;
                match self.store.delete_published_before(age).await {
                    Ok(n) if n > 0 => {
                        tracing::debug!(deleted = n, table = %label, "outbox retention")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, table = %label, "outbox retention failed"),
                }
            }
            match self.run_once().await {
                Ok(round) => {
                    if let Some(d) = round.next_retry_in {
                        let at = Instant::now() + d;
                        retry_at = Some(retry_at.map_or(at, |r| r.min(at)));
                    }
                    if round.published > 0 || round.dead > 0 {
                        continue;
                    }
                    let mut wait = opts.poll_interval;
                    if let Some(at) = retry_at {
                        let left = at.saturating_duration_since(Instant::now());
                        if left < wait {
                            wait = left;
                            retry_at = None;
                        }
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = waiter.wait(wait) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, table = %label, "outbox relay round failed; retrying");
                    metrics::counter!("windlass_outbox_relay_errors_total", "table" => label.clone()).increment(1);
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(opts.error_backoff) => {}
                    }
                }
            }
        }
    }

    async fn export_gauges(&self) {
        let label = self.store.label().to_owned();
        match self.store.stats().await {
            Ok(s) => {
                metrics::gauge!("windlass_outbox_pending", "table" => label.clone())
                    .set(s.pending as f64);
                metrics::gauge!("windlass_outbox_dead", "table" => label.clone())
                    .set(s.dead as f64);
                metrics::gauge!("windlass_outbox_oldest_pending_age_seconds", "table" => label)
                    .set(s.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()));
            }
            Err(e) => tracing::warn!(error = %e, table = %label, "outbox stats failed"),
        }
    }

    /// Starts [`Relay::run`] on a task; the handle stops it.
    pub fn spawn(self) -> RelayHandle {
        let token = CancellationToken::new();
        let task = tokio::spawn(self.run(token.clone()));
        RelayHandle { token, task }
    }
}

/// A running relay task.
#[derive(Debug)]
pub struct RelayHandle {
    token: CancellationToken,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// Stops gracefully: the round in progress finishes, then the task ends.
    pub async fn shutdown(self) {
        self.token.cancel();
        let _ = self.task.await;
    }

    /// Stops at once, wherever the relay is (rows it held are released by the database and
    /// published again by the next round: at least once).
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// True once the task ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Transient failures in a row after which a round stops trying single events.
const BUS_DOWN_AFTER: usize = 3;

struct PublishError {
    permanent: bool,
    message: String,
}

/// Errors the bus will give again for the same event: retrying cannot help.
fn is_permanent(e: &windlass_eventbus::Error) -> bool {
    use windlass_eventbus::Error as E;
    matches!(
        e,
        E::Event(_) | E::Name(_) | E::TooLarge { .. } | E::Config(_)
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}
