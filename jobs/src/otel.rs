//! Trace context of jobs (feature `otel`; without it these are pass-throughs).
//!
//! - [`Jobs::enqueue`](crate::Jobs::enqueue), [`Jobs::enqueue_many`](crate::Jobs::enqueue_many)
//!   and `PgJobStore::enqueue_in` run in a `windlass.job.enqueue` span; the rows built there
//!   ([`EnqueueOptions::build`](crate::EnqueueOptions::build)) carry its W3C trace context in
//!   the `traceparent` / `tracestate` columns.
//! - The worker's `windlass.job` span (one per attempt) takes that context as its **parent**,
//!   so each attempt is part of the trace that enqueued the job. Cron ticks carry none: each
//!   starts a trace of its own.

use std::future::Future;

/// Runs an enqueue in its `windlass.job.enqueue` span.
#[cfg(feature = "otel")]
pub(crate) fn enqueue<F: Future>(kind: &str, fut: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    fut.instrument(tracing::info_span!("windlass.job.enqueue", job.kind = kind))
}

/// Runs an enqueue (no span without the `otel` feature).
#[cfg(not(feature = "otel"))]
pub(crate) fn enqueue<F: Future>(_kind: &str, fut: F) -> F {
    fut
}
