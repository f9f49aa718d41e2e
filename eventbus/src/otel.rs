//! Trace context on events (feature `otel`): inject on publish, continue on delivery.
//!
//! - **Inject.** Every backend's [`Publisher`](crate::Publisher) (memory, Redis Streams, Kafka)
//!   fills an event's `traceparent` / `tracestate` from the current `tracing` span's
//!   OpenTelemetry context when the event carries none ([`inject`]). An event that already has
//!   one keeps it: it was set on purpose, or by an earlier hop (the outbox).
//! - **Continue.** The runner's `windlass.deliver` span (one per handler attempt) takes the
//!   event's context as its **parent** ([`set_parent`]), so the handler, and whatever it
//!   publishes or enqueues, is part of the publisher's trace. A parent rather than a span link:
//!   one event has exactly one producer, and a parent is what makes one trace run from the
//!   request that caused the event to the work it causes (see `docs/tracing.md`).
//!
//! With no OpenTelemetry layer installed every step is a no-op.

use std::borrow::Cow;

use windlass_core::otel::TraceContext;

use crate::event::Event;

/// `event` carrying the current span's trace context when it carries none (a copy), or
/// `event` itself (it has one already, or there is no current OpenTelemetry context).
pub fn inject(event: &Event) -> Cow<'_, Event> {
    if event.traceparent().is_some() {
        return Cow::Borrowed(event);
    }
    match TraceContext::current() {
        Some(cx) => Cow::Owned(event.with_trace_context(cx.traceparent, cx.tracestate)),
        None => Cow::Borrowed(event),
    }
}

/// A copy of `event` whose trace context is `span`'s (replacing the event's own), or `event`
/// itself when `span` has no OpenTelemetry context. The outbox relay uses it so consumers
/// hang under its publish span.
pub fn reparent(event: &Event, span: &tracing::Span) -> Event {
    match TraceContext::of_span(span) {
        Some(cx) => event.with_trace_context(cx.traceparent, cx.tracestate),
        None => event.clone(),
    }
}

/// Makes the event's trace context the OpenTelemetry parent of `span` (a span just created,
/// not entered yet). False when the event carries no valid context or no OpenTelemetry layer
/// is installed.
pub fn set_parent(span: &tracing::Span, event: &Event) -> bool {
    match event.traceparent() {
        Some(tp) => windlass_core::otel::set_parent(span, tp, event.tracestate()),
        None => false,
    }
}
