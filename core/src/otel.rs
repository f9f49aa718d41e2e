//! W3C trace context of `tracing` spans, through OpenTelemetry (feature `otel`).
//!
//! The bridge between a `tracing` span (with a [`tracing_opentelemetry`] layer installed) and
//! the two strings an event or a job carries across a process boundary: `traceparent` and
//! `tracestate` ([W3C Trace Context](https://www.w3.org/TR/trace-context/), level 1). The
//! codec follows the same rules as the OpenTelemetry SDK's `TraceContextPropagator`
//! (version `00`, lower-case hex, all-zero ids refused, flags other than `sampled` dropped) so
//! the crates that inject and extract need the OpenTelemetry API only, not the SDK.
//!
//! Without an OpenTelemetry layer in the subscriber (or with no subscriber at all) every
//! function here is a cheap no-op: [`TraceContext::current`] is `None`, [`set_parent`] is
//! `false`.
//!
//! ```
//! use windlass_core::otel::TraceContext;
//!
//! let cx = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None);
//! let span_context = cx.span_context().expect("valid traceparent");
//! assert!(span_context.is_sampled());
//! assert_eq!(TraceContext::from_span_context(&span_context), Some(cx));
//! // No OpenTelemetry layer here: nothing to inject.
//! assert_eq!(TraceContext::current(), None);
//! ```

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace context carried by an event (`traceparent` / `tracestate` extensions) or a job
/// (`traceparent` / `tracestate` columns).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceContext {
    /// `00-{trace id}-{parent id}-{flags}`.
    pub traceparent: String,
    /// Vendor entries, `None` when empty.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// A context from its two carried strings (not checked; see [`TraceContext::span_context`]).
    pub fn new(traceparent: impl Into<String>, tracestate: Option<String>) -> Self {
        Self {
            traceparent: traceparent.into(),
            tracestate: tracestate.filter(|s| !s.is_empty()),
        }
    }

    /// The context of the current `tracing` span, `None` when there is no span, no
    /// OpenTelemetry layer, or the span has no valid OpenTelemetry context.
    pub fn current() -> Option<Self> {
        Self::of_span(&tracing::Span::current())
    }

    /// The context of `span` (see [`TraceContext::current`]). Builds the span's OpenTelemetry
    /// context if it was not built yet, so call [`set_parent`] on a span before this.
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        let otel = cx.span();
        Self::from_span_context(otel.span_context())
    }

    /// Encodes a valid span context (`None` for an invalid one).
    pub fn from_span_context(sc: &SpanContext) -> Option<Self> {
        if !sc.is_valid() {
            return None;
        }
        let flags = sc.trace_flags() & TraceFlags::SAMPLED;
        let traceparent = format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            flags
        );
        let state = sc.trace_state().header();
        Some(Self::new(traceparent, Some(state)))
    }

    /// Decodes the carried strings into a remote span context; `None` when `traceparent` is
    /// not valid W3C trace context. An invalid `tracestate` is dropped (the spec's rule).
    pub fn span_context(&self) -> Option<SpanContext> {
        parse(&self.traceparent, self.tracestate.as_deref())
    }
}

/// Makes the carried context (`traceparent`, `tracestate`) the OpenTelemetry parent of `span`.
/// Call it right after creating the span, before it is entered or its context is read (an
/// OpenTelemetry span's parent is fixed when it starts). True when the parent was set; false
/// when `traceparent` does not decode, the span is disabled, or no OpenTelemetry layer is
/// installed.
pub fn set_parent(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) -> bool {
    if span.is_disabled() {
        return false;
    }
    let Some(sc) = parse(traceparent, tracestate) else {
        return false;
    };
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc))
        .is_ok()
}

fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version != "00" {
        return None;
    }
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(trace, 32) || !lower_hex(span, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?) & TraceFlags::SAMPLED;
    let state = tracestate
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let sc = SpanContext::new(trace_id, span_id, flags, true, state);
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn decodes_what_it_encodes_and_refuses_the_rest() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = TraceContext::new(tp, Some("congo=t61rcWkgMzE".into()));
        let sc = cx.span_context().unwrap();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_state().get("congo"), Some("t61rcWkgMzE"));
        assert_eq!(TraceContext::from_span_context(&sc), Some(cx));
        // Unknown flags are dropped, like the SDK's propagator does.
        let odd = TraceContext::new(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
            None,
        );
        assert_eq!(
            TraceContext::from_span_context(&odd.span_context().unwrap())
                .unwrap()
                .traceparent,
            tp
        );
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(
                TraceContext::new(bad, None).span_context().is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn injects_the_current_span_and_parents_a_new_one() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(TraceContext::current(), None, "no span yet");
            let carried = {
                let outer = tracing::info_span!("producer");
                let _g = outer.enter();
                TraceContext::current().expect("a context inside a span")
            };
            let consumer = tracing::info_span!("consumer");
            assert!(set_parent(&consumer, &carried.traceparent, None));
            drop(consumer);
            assert!(!set_parent(&tracing::info_span!("x"), "garbage", None));
        });
        let spans = exporter.get_finished_spans().unwrap();
        let producer = spans.iter().find(|s| s.name == "producer").unwrap();
        let consumer = spans.iter().find(|s| s.name == "consumer").unwrap();
        assert_eq!(
            consumer.span_context.trace_id(),
            producer.span_context.trace_id()
        );
        assert_eq!(consumer.parent_span_id, producer.span_context.span_id());
    }
}
