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
    /// This member's name in the group. A restarted consumer with the same name re-reads the
    /// entries it held but had not acknowledged. Defaults to the backend's default (host name
    /// plus a random suffix where the backend cannot reclaim by name).
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
/// Every group gets every event; members of one group split them. Delivery is at least once:
/// an event is handed to the handler until it succeeds, is rejected, or exhausts the retry
/// policy (then it goes to the topic's dead-letter queue with the error).
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
    /// The backend's id of the DLQ entry.
    pub id: String,
    /// The topic the event came from.
    pub topic: String,
    /// The group whose handler gave up (empty when unknown).
    pub group: String,
    /// The event, when it decodes.
    pub event: Option<Event>,
    /// The payload as it was read (kept even when it does not decode).
    pub payload: Vec<u8>,
    /// Why it was dead-lettered.
    pub error: String,
    /// When.
    pub failed_at: DateTime<Utc>,
}

/// Capability of backends whose dead-letter queue can be read back.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Up to `limit` entries of the topic's dead-letter queue, oldest first.
    async fn dead_letters(&self, topic: &Topic, limit: usize) -> Result<Vec<DeadLetter>>;
}
