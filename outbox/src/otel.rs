//! Trace context through the outbox (feature `otel`; without it these are pass-throughs).
//!
//! - Enqueue runs in a `windlass.outbox.enqueue` span; an event without `traceparent` is
//!   stored with that span's context (W3C trace context, the bytes the relay will publish).
//! - The relay opens one `windlass.outbox.publish` span per row it publishes, whose **parent**
//!   is the stored context, and publishes the event with the publish span's context in its
//!   place, so consumers continue under the relay's span: request -> enqueue -> relay publish
//!   -> consumer, one trace. The span covers the publishing of the claim the row belongs to.

use std::future::Future;

use windlass_core::Topic;
#[cfg(feature = "otel")]
use windlass_eventbus::Event;

/// Runs an enqueue of `events` events in its `windlass.outbox.enqueue` span.
#[cfg(feature = "otel")]
pub(crate) fn enqueue<F: Future>(
    topic: &Topic,
    events: usize,
    fut: F,
) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    fut.instrument(tracing::info_span!("windlass.outbox.enqueue", topic = %topic, events))
}

/// Runs an enqueue (no span without the `otel` feature).
#[cfg(not(feature = "otel"))]
pub(crate) fn enqueue<F: Future>(_topic: &Topic, _events: usize, fut: F) -> F {
    fut
}

/// The relay's span for one stored event, and the event to publish under it.
#[cfg(feature = "otel")]
pub(crate) fn publish_span(
    destination: &str,
    topic: &str,
    seq: i64,
    event: Event,
) -> (tracing::Span, Event) {
    let span = tracing::info_span!(
        "windlass.outbox.publish",
        destination,
        topic,
        seq,
        event.id = %event.id(),
    );
    // A row stored without a context still hands the relay's own on: its consumers hang under
    // this span, which then starts the trace.
    windlass_eventbus::otel::set_parent(&span, &event);
    let event = windlass_eventbus::otel::reparent(&event, &span);
    (span, event)
}
