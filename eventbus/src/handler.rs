//! What a subscriber runs for each event, and how it says "retry" or "reject".

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use windlass_core::{BoxError, Group, Topic};

use crate::event::Event;

/// Where a delivery came from, which attempt this is, and until when the handler may run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeliveryContext {
    /// The topic the event was read from.
    pub topic: Topic,
    /// The consumer group reading it.
    pub group: Group,
    /// The consumer (member of the group) handling it.
    pub consumer: String,
    /// The backend's id for this delivery (Redis stream entry id `{partition}/{id}`, Kafka
    /// `partition@offset`, memory `{partition}/{sequence}`).
    pub delivery_id: String,
    /// The partition the event was read from, when the backend partitions topics.
    pub partition: Option<u32>,
    /// 1 for the first attempt; counts earlier deliveries the backend knows of (a crashed
    /// consumer's attempts included) and retries in this process.
    pub attempt: u32,
    /// When this attempt's deadline ([`SubscribeOptions::handler_timeout`]) passes; the runner
    /// then cancels [`DeliveryContext::cancel`] and drops the handler's future.
    ///
    /// [`SubscribeOptions::handler_timeout`]: crate::SubscribeOptions::handler_timeout
    pub deadline: Option<Instant>,
    /// Cancelled when the runner gives up on this attempt: its deadline passed, its partition
    /// moved to another member and the bounded wait for in-flight handlers ran out, or the
    /// subscription's shutdown deadline passed. Work the handler spawned should stop then; the
    /// handler's own future is dropped at the same moment.
    pub cancel: CancellationToken,
}

impl DeliveryContext {
    /// A context for a first attempt, without deadline or partition: for calling a handler
    /// outside a subscription (replays, unit tests of handlers).
    pub fn new(
        topic: Topic,
        group: Group,
        consumer: impl Into<String>,
        delivery_id: impl Into<String>,
    ) -> Self {
        Self {
            topic,
            group,
            consumer: consumer.into(),
            delivery_id: delivery_id.into(),
            partition: None,
            attempt: 1,
            deadline: None,
            cancel: CancellationToken::new(),
        }
    }

    /// Sets the attempt number (at least 1).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// Sets the partition.
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Time left before the deadline (`None` without deadline; zero once it passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// How a handler failed: retry later, or reject at once (straight to the DLQ).
pub struct HandlerError {
    reject: bool,
    retry_after: Option<Duration>,
    source: BoxError,
}

impl HandlerError {
    /// A failure that may pass: the event is retried with backoff, then dead-lettered once the
    /// retry policy is exhausted. `?` on any error gives this.
    pub fn retry(source: impl Into<BoxError>) -> Self {
        Self {
            reject: false,
            retry_after: None,
            source: source.into(),
        }
    }

    /// A failure that asks for the next attempt after `delay` rather than the policy's backoff.
    pub fn retry_after(source: impl Into<BoxError>, delay: Duration) -> Self {
        Self {
            reject: false,
            retry_after: Some(delay),
            source: source.into(),
        }
    }

    /// A permanent failure (invalid content, a bug the retry cannot fix): the event goes to the
    /// dead-letter queue now, with this error as the reason.
    pub fn reject(source: impl Into<BoxError>) -> Self {
        Self {
            reject: true,
            retry_after: None,
            source: source.into(),
        }
    }

    /// True when the handler rejected the event.
    pub fn is_reject(&self) -> bool {
        self.reject
    }

    /// The delay the handler asked for, if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("reject", &self.reject)
            .field("retry_after", &self.retry_after)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)?;
        let mut cause = self.source.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self::retry(e)
    }
}

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// Handles events of a subscription. Returning `Ok(())` acknowledges the event.
///
/// The runner may call `handle` for different events concurrently (up to the subscription's
/// concurrency), but never for two events with the same ordering key at once.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one event.
    async fn handle(&self, event: &Event, ctx: &DeliveryContext) -> HandlerResult;
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Arc<H> {
    async fn handle(&self, event: &Event, ctx: &DeliveryContext) -> HandlerResult {
        (**self).handle(event, ctx).await
    }
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Box<H> {
    async fn handle(&self, event: &Event, ctx: &DeliveryContext) -> HandlerResult {
        (**self).handle(event, ctx).await
    }
}

/// A [`Handler`] made from a closure; see [`handler_fn`].
pub struct FnHandler<F>(F);

impl<F> fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnHandler")
    }
}

/// Makes a [`Handler`] from an async closure taking the event and its context by value.
///
/// ```
/// use windlass_eventbus::{handler_fn, HandlerError};
///
/// let handler = handler_fn(|event, _ctx| async move {
///     let amount: Option<u64> = event.data_as().map_err(HandlerError::reject)?;
///     println!("{} paid {amount:?}", event.subject().unwrap_or("?"));
///     Ok(())
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Event, DeliveryContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    FnHandler(f)
}

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Event, DeliveryContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    async fn handle(&self, event: &Event, ctx: &DeliveryContext) -> HandlerResult {
        (self.0)(event.clone(), ctx.clone()).await
    }
}
