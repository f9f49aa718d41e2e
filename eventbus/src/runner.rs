//! The handler runner every backend shares, and the [`Transport`] trait backends implement to
//! plug into it.
//!
//! A backend only moves entries: fetch a batch, acknowledge, dead-letter. The runner owns the
//! semantics: bounded read-ahead, a concurrency limit, order per ordering key (the next event of
//! a key starts only when the previous one is acknowledged or dead-lettered; other keys go on),
//! retry with backoff, dead-lettering, panics caught, batched acknowledgements, a `tracing`
//! span per delivery and graceful shutdown. It must not know any backend.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use windlass_core::{Group, RetryPolicy, Topic};

use crate::error::Result;
use crate::event::Event;
use crate::handler::{DeliveryContext, Handler};
use crate::subscription::Subscription;
use crate::traits::SubscribeOptions;

/// An entry a backend read and could not decode into an [`Event`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Undecodable {
    /// The bytes as read.
    pub raw: Vec<u8>,
    /// Why they do not decode.
    pub reason: String,
}

impl Undecodable {
    /// Describes an entry that does not decode.
    pub fn new(raw: impl Into<Vec<u8>>, reason: impl Into<String>) -> Self {
        Self {
            raw: raw.into(),
            reason: reason.into(),
        }
    }
}

/// One entry handed to the runner by a [`Transport`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Delivery<T> {
    /// The decoded event, or why the entry does not decode (it then goes to the DLQ at once).
    pub payload: std::result::Result<Event, Undecodable>,
    /// What the transport needs to acknowledge or dead-letter this entry.
    pub token: T,
    /// The backend's id of the entry, for logs and the handler's context.
    pub delivery_id: String,
    /// How many times the backend delivered this entry, this time included (1 the first time).
    pub delivery_count: u32,
}

impl<T> Delivery<T> {
    /// Describes one delivery.
    pub fn new(
        payload: std::result::Result<Event, Undecodable>,
        token: T,
        delivery_id: impl Into<String>,
        delivery_count: u32,
    ) -> Self {
        Self {
            payload,
            token,
            delivery_id: delivery_id.into(),
            delivery_count: delivery_count.max(1),
        }
    }
}

/// What a backend implements to be driven by the runner. For backend authors; applications use
/// [`Subscriber`](crate::Subscriber).
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Identifies one delivery for acknowledgement.
    type Token: Send + Sync + 'static;

    /// This consumer's name in its group.
    fn consumer(&self) -> &str;

    /// Waits a short, backend-defined time for up to `max` entries; an empty batch is fine.
    /// Must not lose entries when the returned future is dropped (they stay pending).
    async fn fetch(&self, max: usize) -> Result<Vec<Delivery<Self::Token>>>;

    /// Acknowledges handled entries.
    async fn ack(&self, tokens: &[Self::Token]) -> Result<()>;

    /// Moves an entry to the dead-letter queue with `reason`, then acknowledges it.
    async fn dead_letter(&self, delivery: &Delivery<Self::Token>, reason: &str) -> Result<()>;

    /// Gives back entries that were fetched but will not be handled (shutdown). The default
    /// leaves them pending for redelivery.
    async fn release(&self, _tokens: Vec<Self::Token>) {}
}

struct Shared<T: Transport> {
    transport: T,
    handler: Arc<dyn Handler>,
    topic: Topic,
    group: Group,
    retry: RetryPolicy,
    concurrency: Arc<Semaphore>,
    acks: mpsc::UnboundedSender<T::Token>,
    cancel: CancellationToken,
    metrics: Metrics,
}

#[derive(Clone)]
struct Metrics {
    acked: metrics::Counter,
    retried: metrics::Counter,
    dead: metrics::Counter,
    duration: metrics::Histogram,
}

impl Metrics {
    fn new(topic: &Topic, group: &Group) -> Self {
        let (t, g) = (topic.to_string(), group.to_string());
        let counter = |outcome: &'static str| metrics::counter!("windlass_bus_deliveries_total", "topic" => t.clone(), "group" => g.clone(), "outcome" => outcome);
        Self {
            acked: counter("acked"),
            retried: counter("retried"),
            dead: counter("dead_lettered"),
            duration: metrics::histogram!("windlass_bus_handler_seconds", "topic" => t.clone(), "group" => g.clone()),
        }
    }
}

type Item<T> = (Delivery<T>, OwnedSemaphorePermit);

enum Outcome {
    Acked,
    DeadLettered,
    Abandoned,
}

impl<T: Transport> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish()
    }
}

/// Largest batch the runner asks a transport for in one fetch.
const FETCH_BATCH_MAX: usize = 512;
/// Largest batch of acknowledgements sent at once.
const ACK_BATCH_MAX: usize = 1024;

/// Starts the runner for one subscription over `transport`.
pub fn spawn<T: Transport>(
    transport: T,
    topic: Topic,
    group: Group,
    handler: Arc<dyn Handler>,
    options: SubscribeOptions,
) -> Subscription {
    let cancel = CancellationToken::new();
    let concurrency = options.concurrency.max(1);
    let prefetch = options.prefetch.max(concurrency);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let metrics = Metrics::new(&topic, &group);
    let shared = Arc::new(Shared {
        transport,
        handler,
        topic,
        group,
        retry: options.retry,
        concurrency: Arc::new(Semaphore::new(concurrency)),
        acks: ack_tx,
        cancel: cancel.clone(),
        metrics,
    });
    let (item_tx, item_rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(prefetch));
    // Fetch again once a quarter of the read-ahead is free, not after every single handler:
    // a drained backlog is then read in batches (few round trips) instead of one by one.
    let refill = (prefetch / 4).clamp(1, FETCH_BATCH_MAX);
    let fetcher = tokio::spawn(fetch_loop(shared.clone(), room, refill, item_tx));
    let acks_done = CancellationToken::new();
    let acker = tokio::spawn(ack_loop(shared.clone(), ack_rx, acks_done.clone()));
    let abort = vec![fetcher.abort_handle(), acker.abort_handle()];
    let main = tokio::spawn(dispatch_loop(
        shared,
        item_rx,
        options.shutdown_timeout,
        fetcher,
        (acker, acks_done),
    ));
    Subscription::new(cancel, main, abort)
}

async fn fetch_loop<T: Transport>(
    shared: Arc<Shared<T>>,
    room: Arc<Semaphore>,
    refill: usize,
    items: mpsc::UnboundedSender<Item<T::Token>>,
) {
    let mut failures = 0u32;
    let reconnect = RetryPolicy::default()
        .with_delays(Duration::from_millis(50), Duration::from_secs(5))
        .with_max_attempts(u32::MAX);
    loop {
        let mut permit = tokio::select! {
            p = room.clone().acquire_many_owned(refill as u32) => match p { Ok(p) => p, Err(_) => return },
            _ = shared.cancel.cancelled() => return,
        };
        let extra = room
            .available_permits()
            .min(FETCH_BATCH_MAX.saturating_sub(permit.num_permits()));
        if extra > 0
            && let Ok(p) = room.clone().try_acquire_many_owned(extra as u32)
        {
            permit.merge(p);
        }
        let max = permit.num_permits();
        let fetched = tokio::select! {
            r = shared.transport.fetch(max) => r,
            _ = shared.cancel.cancelled() => return,
        };
        match fetched {
            Ok(batch) => {
                failures = 0;
                for delivery in batch {
                    let one = match permit.split(1) {
                        Some(p) => p,
                        // A transport returned more than asked: wait for room like anyone else.
                        None => match room.clone().acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                    };
                    if items.send((delivery, one)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let delay = reconnect.delay(failures);
                tracing::warn!(topic = %shared.topic, group = %shared.group, error = %e, retry_in = ?delay, "fetch failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.cancel.cancelled() => return,
                }
            }
        }
    }
}

/// Sends acknowledgements in batches. Ends once `done` fires and everything queued is flushed
/// (the sender lives in `Shared`, which this task holds, so the channel never closes by itself).
async fn ack_loop<T: Transport>(
    shared: Arc<Shared<T>>,
    mut rx: mpsc::UnboundedReceiver<T::Token>,
    done: CancellationToken,
) {
    let policy = RetryPolicy::default()
        .with_delays(Duration::from_millis(20), Duration::from_secs(2))
        .with_max_attempts(8);
    let mut batch = Vec::with_capacity(64);
    let mut finishing = false;
    loop {
        if finishing {
            match rx.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => return,
            }
        } else {
            tokio::select! {
                biased;
                t = rx.recv() => match t {
                    Some(t) => batch.push(t),
                    None => return,
                },
                _ = done.cancelled() => {
                    finishing = true;
                    continue;
                }
            }
        }
        while batch.len() < ACK_BATCH_MAX {
            match rx.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match shared.transport.ack(&batch).await {
                Ok(()) => break,
                Err(e) if !policy.is_exhausted(attempt) => {
                    tracing::warn!(topic = %shared.topic, group = %shared.group, error = %e, "ack failed; retrying");
                    tokio::time::sleep(policy.delay(attempt)).await;
                }
                Err(e) => {
                    // Unacknowledged entries stay pending and are delivered again: at least once.
                    tracing::error!(topic = %shared.topic, group = %shared.group, error = %e, n = batch.len(), "ack failed; entries will be redelivered");
                    break;
                }
            }
        }
        batch.clear();
    }
}

async fn dispatch_loop<T: Transport>(
    shared: Arc<Shared<T>>,
    mut items: mpsc::UnboundedReceiver<Item<T::Token>>,
    shutdown_timeout: Duration,
    fetcher: tokio::task::JoinHandle<()>,
    (acker, acks_done): (tokio::task::JoinHandle<()>, CancellationToken),
) -> Result<()> {
    // Keys with a delivery in flight, and what waits behind each.
    let mut waiting: HashMap<String, VecDeque<Item<T::Token>>> = HashMap::new();
    let mut tasks: JoinSet<Option<String>> = JoinSet::new();
    let mut stopping = false;
    let cancel = shared.cancel.clone();
    loop {
        tokio::select! {
            biased;
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(Some(key)) = done {
                    let next = waiting.get_mut(&key).and_then(VecDeque::pop_front);
                    match next {
                        Some(item) if !stopping => start(&shared, &mut tasks, item, Some(key)),
                        Some(item) => {
                            shared.transport.release(vec![item.0.token]).await;
                        }
                        None => { waiting.remove(&key); }
                    }
                }
            }
            _ = cancel.cancelled(), if !stopping => {
                stopping = true;
                items.close();
            }
            item = items.recv(), if !stopping => match item {
                Some(item) => {
                    let key = match &item.0.payload {
                        Ok(event) => event.ordering_key().map(str::to_owned),
                        Err(_) => None,
                    };
                    match key {
                        Some(key) => match waiting.get_mut(&key) {
                            Some(queue) => queue.push_back(item),
                            None => {
                                waiting.insert(key.clone(), VecDeque::new());
                                start(&shared, &mut tasks, item, Some(key));
                            }
                        },
                        None => start(&shared, &mut tasks, item, None),
                    }
                }
                None => stopping = true,
            },
        }
        if stopping && tasks.is_empty() {
            break;
        }
        if stopping {
            // Drain in-flight handlers up to the deadline.
            let deadline = tokio::time::sleep(shutdown_timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    done = tasks.join_next() => match done {
                        None => break,
                        Some(_) => continue,
                    },
                    _ = &mut deadline => {
                        tracing::warn!(topic = %shared.topic, group = %shared.group, left = tasks.len(), "shutdown deadline passed; aborting handlers (their events will be redelivered)");
                        tasks.abort_all();
                        while tasks.join_next().await.is_some() {}
                        break;
                    }
                }
            }
            break;
        }
    }
    // Give back what was read but never started.
    let mut released = Vec::new();
    for (_, queue) in waiting.drain() {
        released.extend(queue.into_iter().map(|(d, _)| d.token));
    }
    while let Ok((d, _)) = items.try_recv() {
        released.push(d.token);
    }
    fetcher.abort();
    let _ = fetcher.await;
    while let Ok((d, _)) = items.try_recv() {
        released.push(d.token);
    }
    if !released.is_empty() {
        shared.transport.release(released).await;
    }
    // Every handler task has ended, so no acknowledgement is still coming: flush and stop.
    acks_done.cancel();
    let _ = acker.await;
    Ok(())
}

fn start<T: Transport>(
    shared: &Arc<Shared<T>>,
    tasks: &mut JoinSet<Option<String>>,
    item: Item<T::Token>,
    key: Option<String>,
) {
    let shared = shared.clone();
    tasks.spawn(async move {
        let (delivery, _room) = item;
        let _slot = shared.concurrency.clone().acquire_owned().await;
        let outcome = process(&shared, &delivery).await;
        match outcome {
            Outcome::Acked => {
                shared.metrics.acked.increment(1);
                let _ = shared.acks.send(delivery.token);
            }
            Outcome::DeadLettered => shared.metrics.dead.increment(1),
            Outcome::Abandoned => shared.transport.release(vec![delivery.token]).await,
        }
        key
    });
}

async fn dead_letter<T: Transport>(
    shared: &Shared<T>,
    delivery: &Delivery<T::Token>,
    reason: &str,
) -> Outcome {
    let policy = RetryPolicy::default()
        .with_delays(Duration::from_millis(50), Duration::from_secs(5))
        .with_max_attempts(u32::MAX);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match shared.transport.dead_letter(delivery, reason).await {
            Ok(()) => {
                tracing::warn!(topic = %shared.topic, group = %shared.group, delivery = %delivery.delivery_id, reason, "dead-lettered");
                return Outcome::DeadLettered;
            }
            Err(e) => {
                tracing::warn!(topic = %shared.topic, group = %shared.group, error = %e, "dead-lettering failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(policy.delay(attempt)) => {}
                    _ = shared.cancel.cancelled() => return Outcome::Abandoned,
                }
            }
        }
    }
}

async fn process<T: Transport>(shared: &Shared<T>, delivery: &Delivery<T::Token>) -> Outcome {
    let event = match &delivery.payload {
        Ok(event) => event,
        Err(bad) => {
            let reason = format!("undecodable entry: {}", bad.reason);
            return dead_letter(shared, delivery, &reason).await;
        }
    };
    let mut attempt = delivery.delivery_count.max(1);
    if shared.retry.is_exhausted(attempt - 1) && attempt > 1 {
        let reason = format!(
            "delivered {} times without being acknowledged (a consumer died while handling it?)",
            attempt - 1
        );
        return dead_letter(shared, delivery, &reason).await;
    }
    loop {
        let ctx = DeliveryContext {
            topic: shared.topic.clone(),
            group: shared.group.clone(),
            consumer: shared.transport.consumer().to_owned(),
            delivery_id: delivery.delivery_id.clone(),
            attempt,
        };
        let span = tracing::info_span!(
            "windlass.deliver",
            event.id = %event.id(),
            event.type = %event.ty(),
            event.source = %event.source(),
            orgid = event.org_id().map(|o| o.as_str()).unwrap_or(""),
            correlationid = event.correlation_id().unwrap_or(""),
            topic = %shared.topic,
            group = %shared.group,
            attempt,
        );
        let started = Instant::now();
        let result = AssertUnwindSafe(shared.handler.handle(event, &ctx).instrument(span.clone()))
            .catch_unwind()
            .await;
        shared
            .metrics
            .duration
            .record(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(Ok(())) => return Outcome::Acked,
            Ok(Err(e)) if e.is_reject() => {
                let reason = format!("rejected by handler: {e}");
                return dead_letter(shared, delivery, &reason)
                    .instrument(span)
                    .await;
            }
            Ok(Err(e)) => e,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                crate::handler::HandlerError::retry(format!("handler panicked: {msg}"))
            }
        };
        if shared.retry.is_exhausted(attempt) {
            let reason = format!("failed {attempt} attempts; last error: {error}");
            return dead_letter(shared, delivery, &reason).await;
        }
        let delay = error
            .requested_delay()
            .unwrap_or_else(|| shared.retry.delay(attempt));
        tracing::debug!(parent: &span, error = %error, retry_in = ?delay, "handler failed; will retry");
        shared.metrics.retried.increment(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.cancel.cancelled() => return Outcome::Abandoned,
        }
        attempt += 1;
    }
}
