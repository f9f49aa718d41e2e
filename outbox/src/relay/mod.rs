//! The relay: claims keys of one destination under a lease, publishes their rows to the bus,
//! marks them under the claim's fencing token.
//!
//! Written once against [`OutboxStore`]; it knows nothing of SQL. Delivery is at least once: a
//! row is marked delivered only after the bus accepted it, so a relay that dies between the two
//! leaves the row to be published again once its lease ends. One relay serves one destination;
//! run one per destination (each with its own publisher) when rows go to several.

mod maintenance;
mod options;
mod publish;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use windlass_eventbus::Publisher;

use crate::admin::OutboxAdmin;
use crate::error::{Error, Result};
use crate::store::{ClaimRequest, OutboxMaintenance, OutboxStore, Waiter};

pub use options::RelayOptions;

/// What one relay round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Round {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows published and marked delivered.
    pub published: usize,
    /// Rows whose key backs off after a transient failure (tried or not).
    pub failed: usize,
    /// Rows that went dead.
    pub dead: usize,
    /// Rows released untried (their key waits behind a failed head, or the lease ran short).
    pub released: usize,
    /// Marks refused because the lease had passed to another relay.
    pub lease_lost: usize,
}

/// Publishes outbox rows of one destination to a bus. See the crate docs for the guarantees.
pub struct Relay<S, P> {
    store: Arc<S>,
    publisher: Arc<P>,
    options: RelayOptions,
    after_tenant: Arc<std::sync::Mutex<Option<String>>>,
    max_keys: Arc<std::sync::atomic::AtomicUsize>,
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
            after_tenant: Arc::default(),
            max_keys: Arc::default(),
        }
    }
}

impl<S, P> Relay<S, P>
where
    S: OutboxStore + OutboxMaintenance + OutboxAdmin,
    P: Publisher + 'static,
{
    /// A relay from `store` to `publisher` with default options (destination `"default"`).
    pub fn new(store: S, publisher: P) -> Self {
        Self::from_arcs(Arc::new(store), Arc::new(publisher))
    }

    /// A relay sharing an existing store and publisher.
    pub fn from_arcs(store: Arc<S>, publisher: Arc<P>) -> Self {
        Self {
            store,
            publisher,
            options: RelayOptions::default(),
            after_tenant: Arc::default(),
            max_keys: Arc::default(),
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

    /// Claims one batch, publishes it and marks it.
    pub async fn run_once(&self) -> Result<Round> {
        let o = &self.options;
        let dest = o.destination.as_str();
        let mut request =
            ClaimRequest::new(o.destination.clone(), o.batch_size, o.effective_lease());
        request.after_tenant = self.after_tenant.lock().expect("not poisoned").clone();
        let batch = o.batch_size.max(1);
        let keys = match self.max_keys.load(std::sync::atomic::Ordering::Relaxed) {
            0 => batch.div_ceil(2),
            k => k.min(batch),
        };
        request.max_keys = keys;
        let claim = self.store.claim(&request).await.inspect_err(|_| {
            crate::metrics::relay_error(dest, "claim");
        })?;
        self.max_keys.store(
            adapt_keys(&claim, batch, keys),
            std::sync::atomic::Ordering::Relaxed,
        );
        *self.after_tenant.lock().expect("not poisoned") = claim.last_tenant.clone();
        let mut round = Round {
            claimed: claim.rows.len(),
            ..Round::default()
        };
        if claim.rows.is_empty() {
            return Ok(round);
        }
        let settlement = publish::Publishing {
            destination: dest,
            publisher: &*self.publisher,
            publish_timeout: o.publish_timeout,
            margin: o.lease_margin(),
            retry: o.retry,
            policy: self.store.dead_policy(),
        }
        .run(&claim)
        .await;
        let settled = self
            .store
            .settle(&claim, &settlement)
            .await
            .inspect_err(|_| crate::metrics::relay_error(dest, "mark"))?;
        round.published = settled.published as usize;
        round.dead = settlement.failed.iter().filter(|f| f.dead).count();
        round.failed = settlement.failed.len() - round.dead;
        round.released = settlement.released.len();
        let requested = (settlement.published.len()
            + settlement.failed.len()
            + settlement.released.len()) as u64;
        let applied = settled.published + settled.failed + settled.released;
        round.lease_lost = requested.saturating_sub(applied) as usize;
        if round.lease_lost > 0 {
            tracing::warn!(
                destination = dest,
                refused = round.lease_lost,
                "outbox marks refused: the lease passed to another relay (its rows were or will be published again)"
            );
            crate::metrics::lease_lost(dest, round.lease_lost as u64);
        }
        let mut per_topic: std::collections::HashMap<&str, u64> = Default::default();
        let published: std::collections::HashSet<i64> =
            settlement.published.iter().copied().collect();
        for row in &claim.rows {
            if published.contains(&row.seq) {
                *per_topic.entry(row.topic.as_str()).or_default() += 1;
            }
        }
        for (topic, n) in per_topic {
            crate::metrics::published(dest, topic, n);
        }
        Ok(round)
    }

    /// Runs rounds until nothing is pending for this relay's destination (rows behind a
    /// blocked key count as pending), waiting out backoffs; for tests and one-off jobs.
    /// [`Error::Timeout`] when `timeout` passes first.
    pub async fn drain(&self, timeout: Duration) -> Result<Round> {
        let deadline = Instant::now() + timeout;
        let mut total = Round::default();
        loop {
            let r = self.run_once().await?;
            total.claimed += r.claimed;
            total.published += r.published;
            total.failed += r.failed;
            total.dead += r.dead;
            total.released += r.released;
            total.lease_lost += r.lease_lost;
            if r.claimed == 0 && !self.store.has_pending(&self.options.destination).await? {
                return Ok(total);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "outbox destination {} not drained after {timeout:?}",
                    self.options.destination
                )));
            }
            if r.claimed == 0 {
                tokio::time::sleep(self.options.min_poll.max(Duration::from_millis(5))).await;
            }
        }
    }

    /// Runs until `shutdown` is cancelled: rounds back to back while there is work, else waits
    /// (adaptive poll, LISTEN if on, in-process wake-ups from writers); takes part in the
    /// maintenance election if [`RelayOptions::maintenance`]. A database error is logged and
    /// retried after [`RelayOptions::error_backoff`]; the relay never gives up by itself.
    ///
    /// On shutdown the round in progress finishes (publish and mark), then `run` returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let o = self.options.clone();
        let dest = o.destination.as_str().to_owned();
        let maintenance = o.maintenance.then(|| {
            tokio::spawn(maintenance::run(
                self.store.clone(),
                o.clone(),
                shutdown.clone(),
            ))
        });
        let mut waiter: Option<S::Waiter> = None;
        let mut next_listen_try = Instant::now();
        let min_poll = o.min_poll.max(Duration::from_millis(1));
        let mut idle = min_poll;
        while !shutdown.is_cancelled() {
            if waiter.is_none() && Instant::now() >= next_listen_try {
                match self.store.waiter(o.listen).await {
                    Ok(w) => waiter = Some(w),
                    Err(e) => {
                        // Poll meanwhile; try to listen again later.
                        tracing::warn!(error = %e, destination = %dest, "outbox relay cannot listen; polling, will retry");
                        crate::metrics::relay_error(&dest, "wait");
                        next_listen_try = Instant::now() + o.poll_interval.max(o.error_backoff);
                    }
                }
            }
            match self.run_once().await {
                Ok(round) => {
                    if round.claimed > 0 {
                        idle = min_poll;
                        continue;
                    }
                    let wait = idle;
                    idle = (idle * 2).min(o.poll_interval.max(min_poll));
                    let woken = tokio::select! {
                        _ = shutdown.cancelled() => false,
                        w = async {
                            match waiter.as_mut() {
                                Some(w) => w.wait(wait).await,
                                None => { tokio::time::sleep(wait).await; false }
                            }
                        } => w,
                    };
                    if woken {
                        idle = min_poll;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, destination = %dest, table = self.store.label(), "outbox relay round failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(o.error_backoff) => {}
                    }
                }
            }
        }
        if let Some(m) = maintenance {
            let _ = m.await;
        }
    }

    /// Starts [`Relay::run`] on a task; the handle stops it.
    pub fn spawn(self) -> RelayHandle {
        let token = CancellationToken::new();
        let task = tokio::spawn(self.run(token.clone()));
        RelayHandle { token, task }
    }
}

/// The next claim's key limit: fewer keys when the rows behind the heads filled the claim (hot
/// keys: several relays then share the keys), more when every allowed head was taken and room
/// was left (many distinct keys: fewer round trips).
fn adapt_keys(claim: &crate::store::Claim, batch: usize, keys: usize) -> usize {
    let mut seen = std::collections::HashSet::new();
    let heads = claim
        .rows
        .iter()
        .filter(|r| match &r.partition_key {
            Some(k) => seen.insert((r.topic.as_str(), k.as_str())),
            None => true,
        })
        .count();
    let floor = (batch / 16).max(1);
    if claim.rows.len() >= batch && heads < claim.rows.len() {
        (keys / 2).max(floor)
    } else if heads >= keys && claim.rows.len() < batch {
        (keys * 2).min(batch)
    } else {
        keys
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

    /// Stops at once, wherever the relay is (its claimed keys are taken over once their lease
    /// ends and published again: at least once).
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// True once the task ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
