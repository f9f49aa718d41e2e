//! The bus traits: [`Publisher`], [`Subscriber`], and the optional [`DeadLetters`] capability.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use windlass_core::{Group, RetryPolicy, Topic};

use crate::error::Result;
use crate::event::Event;
use crate::handler::{DeliveryContext, handler_fn};
use crate::handler::{FnHandler, Handler, HandlerResult};
use crate::subscription::Subscription;

/// Publishes events to topics. Implementations are cheap to share (`Arc`) and safe to call
/// from many tasks.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes one event. Returns once the backend accepted it durably (as durable as the
    /// backend is configured to be). On error the event may or may not have been published;
    /// the caller retries (consumers deduplicate by (`source`, `id`)).
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()>;

    /// Publishes events in order, as few round trips as the backend allows. On error, a prefix
    /// of the batch may have been published.
    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        for event in events {
            self.publish(topic, event).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for Arc<P> {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        (**self).publish(topic, event).await
    }
    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        (**self).publish_batch(topic, events).await
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for Box<P> {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        (**self).publish(topic, event).await
    }
    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        (**self).publish_batch(topic, events).await
    }
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartFrom {
    /// Every event the topic still holds (the default: nothing published before the first
    /// subscription is missed).
    #[default]
    Earliest,
    /// Only events published after the group was created.
    Latest,
}

/// How a subscription runs its handler.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Handlers running at once (events with the same ordering key never run concurrently).
    pub concurrency: usize,
    /// Deliveries read ahead of the handlers, in-flight ones included (at least `concurrency`).
    pub prefetch: usize,
    /// Retries of a failing handler, then the DLQ.
    pub retry: RetryPolicy,
    /// How long [`Subscription::shutdown`] waits for in-flight handlers.
    pub shutdown_timeout: Duration,
    /// Deadline of one handler attempt (default 5 s). Past it, the runner cancels
    /// [`DeliveryContext::cancel`](crate::DeliveryContext::cancel), drops the handler's future
    /// and counts a failed attempt (retried with backoff, then dead-lettered). On backends
    /// with partition leases (Redis Streams, memory) it must stay below the lease TTL, so a
    /// handler never outlives its partition's lease; it also bounds how long a partition's
    /// handover waits for the handlers in flight.
    pub handler_timeout: Duration,
    /// This member's consumer name in the group, for logs, `CLIENT LIST` and the backend's own
    /// tools. Defaults to a name unique to this process and subscription
    /// (`{host}-{pid}-{random}`). Ownership never depends on it: two live members with the same
    /// name are still two members (each has its own lease identity).
    pub consumer: Option<String>,
    /// Where a group created by this subscription starts.
    pub start_from: StartFrom,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            prefetch: 256,
            retry: RetryPolicy::default(),
            shutdown_timeout: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(5),
            consumer: None,
            start_from: StartFrom::Earliest,
        }
    }
}

impl SubscribeOptions {
    /// Sets the handler concurrency (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Sets the read-ahead (at least 1).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }
    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
    /// Sets the graceful shutdown deadline.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
    /// Sets the deadline of one handler attempt (checked at subscribe: above zero, and below
    /// the backend's lease TTL where there is one).
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }
    /// Sets the consumer name.
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }
    /// Sets where a new group starts.
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start_from = start;
        self
    }
}

/// Runs a handler for the events of a topic, as a member of a consumer group.
///
/// Every group gets every event; members of one group split them by partition: each partition
/// is owned by one live member at a time, so for one ordering key handler calls never overlap
/// and follow publish order across the whole group (see the crate docs for the exact promise).
/// Delivery is at least once: an event is handed to the handler until it succeeds, is
/// rejected, or exhausts the retry policy (then it goes to the topic's dead-letter queue with
/// the error).
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Starts consuming; returns a handle whose [`Subscription::shutdown`] stops gracefully.
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Result<Subscription>;
}

#[async_trait]
impl<S: Subscriber + ?Sized> Subscriber for Arc<S> {
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        (**self).subscribe(topic, group, handler, options).await
    }
}

/// Conveniences on every [`Subscriber`].
#[async_trait]
pub trait SubscriberExt: Subscriber {
    /// Subscribes an async closure with default options.
    async fn subscribe_fn<F, Fut>(&self, topic: &Topic, group: &Group, f: F) -> Result<Subscription>
    where
        F: Fn(Event, DeliveryContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
        FnHandler<F>: Handler,
    {
        self.subscribe(
            topic,
            group,
            Arc::new(handler_fn(f)),
            SubscribeOptions::default(),
        )
        .await
    }
}

impl<S: Subscriber + ?Sized> SubscriberExt for S {}

/// An entry of a dead-letter queue.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The backend's id of the DLQ entry (Redis and memory: `{partition}/{id}`; Kafka:
    /// `{partition}@{offset}` of the DLQ topic). Pass it to [`BusAdmin`](crate::admin::BusAdmin)
    /// calls to redrive or delete it.
    pub id: String,
    /// The topic the event came from.
    pub topic: String,
    /// The partition of the topic the entry was read from, when known.
    pub partition: Option<u32>,
    /// The id of the original entry in its partition (Redis stream id, Kafka offset, memory
    /// sequence), when known.
    pub entry_id: Option<String>,
    /// The group whose handler gave up (empty when unknown).
    pub group: String,
    /// The consumer (member) that dead-lettered it (empty when unknown).
    pub consumer: String,
    /// The event, when it decodes.
    pub event: Option<Event>,
    /// The payload as it was read (kept even when it does not decode).
    pub payload: Vec<u8>,
    /// Why it was dead-lettered.
    pub error: String,
    /// When.
    pub failed_at: DateTime<Utc>,
}

impl DeadLetter {
    /// The tenant of the event (`orgid`), when the payload decodes and carries one.
    pub fn org_id(&self) -> Option<&str> {
        self.event
            .as_ref()
            .and_then(|e| e.org_id())
            .map(|o| o.as_str())
    }
}

/// Capability of backends whose dead-letter queue can be read back.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Up to `limit` entries of the topic's dead-letter queue, oldest first (every partition).
    async fn dead_letters(&self, topic: &Topic, limit: usize) -> Result<Vec<DeadLetter>>;
}
