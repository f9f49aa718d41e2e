//! A publisher and a handler that validate through a [`SchemaRegistry`].

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use windlass_core::Topic;

use crate::error::Result;
use crate::event::Event;
use crate::handler::{DeliveryContext, Handler, HandlerError, HandlerResult};
use crate::schema::SchemaRegistry;
use crate::traits::Publisher;

/// A [`Publisher`] that validates every event before publishing it; an invalid event (or batch
/// holding one) fails with [`Error::Schema`](crate::Error::Schema) and nothing is sent. When
/// the registry's rule fills defaults, the event sent is the one with the defaults in place.
#[derive(Debug, Clone)]
pub struct ValidatingPublisher<P> {
    inner: P,
    registry: Arc<SchemaRegistry>,
}

impl<P: Publisher> ValidatingPublisher<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, registry: Arc<SchemaRegistry>) -> Self {
        Self { inner, registry }
    }

    /// The wrapped publisher.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

#[async_trait]
impl<P: Publisher> Publisher for ValidatingPublisher<P> {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        let checked = self.registry.validate(event)?;
        self.inner.publish(topic, &checked.event).await
    }

    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        let mut checked = Vec::with_capacity(events.len());
        for e in events {
            checked.push(self.registry.validate(e)?.event);
        }
        if checked.iter().all(|c| matches!(c, Cow::Borrowed(_))) {
            return self.inner.publish_batch(topic, events).await;
        }
        let owned: Vec<Event> = checked.into_iter().map(Cow::into_owned).collect();
        self.inner.publish_batch(topic, &owned).await
    }
}

/// A [`Handler`] wrapper that rejects events failing validation (the runner dead-letters them
/// with the validation errors as the reason) and hands the others to the inner handler, with
/// the defaults filled in when the registry's rule says readers fill them.
#[derive(Debug, Clone)]
pub struct ValidatingHandler<H> {
    inner: H,
    registry: Arc<SchemaRegistry>,
}

impl<H: Handler> ValidatingHandler<H> {
    /// Wraps `inner`.
    pub fn new(inner: H, registry: Arc<SchemaRegistry>) -> Self {
        Self { inner, registry }
    }
}

#[async_trait]
impl<H: Handler> Handler for ValidatingHandler<H> {
    async fn handle(&self, event: &Event, ctx: &DeliveryContext) -> HandlerResult {
        let checked = self
            .registry
            .validate(event)
            .map_err(HandlerError::reject)?;
        self.inner.handle(&checked.event, ctx).await
    }
}
