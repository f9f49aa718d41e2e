//! The metrics this crate emits, listed once: `docs/metrics.md`, the Prometheus exporter's
//! descriptions and the Grafana dashboard check are built from [`CATALOG`]. Every emission goes
//! through the functions of this module, so the catalog and the emission sites cannot drift.
//!
//! Labels are bounded: `destination` and `topic` (names the application configures), `kind`
//! (`transient` / `permanent`), `op` (`claim` / `mark` / `wait` / `maintenance`), `what`
//! (`events` / `dead` / `inbox`), `consumer` (inbox consumer names). Never tenant or event ids.

use windlass_core::MetricDef;
use windlass_core::MetricKind::{Counter, Gauge};

/// Every metric of `windlass-outbox`.
pub const CATALOG: &[MetricDef] = &[
    MetricDef::new(
        "windlass_outbox_published_total",
        Counter,
        &["destination", "topic"],
        "Rows the relay published and marked delivered.",
    ),
    MetricDef::new(
        "windlass_outbox_publish_failures_total",
        Counter,
        &["destination", "topic", "kind"],
        "Publish attempts that failed (kind: transient = backs off, permanent = dead).",
    ),
    MetricDef::new(
        "windlass_outbox_dead_total",
        Counter,
        &["destination", "topic"],
        "Rows marked dead (the bus rejected them, or they do not decode).",
    ),
    MetricDef::new(
        "windlass_outbox_lease_lost_total",
        Counter,
        &["destination"],
        "Row marks refused because the relay's lease had passed to another relay (fencing).",
    ),
    MetricDef::new(
        "windlass_outbox_relay_errors_total",
        Counter,
        &["destination", "op"],
        "Relay database operations that failed and were retried (op: claim, mark, wait, maintenance).",
    ),
    MetricDef::new(
        "windlass_outbox_pending",
        Gauge,
        &["destination", "topic"],
        "Rows waiting for the destination (maintenance leader's counters).",
    ),
    MetricDef::new(
        "windlass_outbox_dead",
        Gauge,
        &["destination", "topic"],
        "Dead rows (maintenance leader's counters).",
    ),
    MetricDef::new(
        "windlass_outbox_blocked_keys",
        Gauge,
        &["destination", "topic"],
        "Keys waiting on a dead head for an operator (block policy; maintenance leader's counters).",
    ),
    MetricDef::new(
        "windlass_outbox_oldest_pending_age_seconds",
        Gauge,
        &["destination", "topic"],
        "Age of the oldest pending row: the destination's lag (maintenance leader's counters).",
    ),
    MetricDef::new(
        "windlass_outbox_deleted_total",
        Counter,
        &["what"],
        "Rows deleted by the maintenance leader (what: events = delivered events past retention, dead = dead or skipped deliveries past their retention, inbox = inbox records).",
    ),
    MetricDef::new(
        "windlass_outbox_requeued_total",
        Counter,
        &[],
        "Dead deliveries an operator put back to pending.",
    ),
    MetricDef::new(
        "windlass_outbox_skipped_total",
        Counter,
        &[],
        "Dead deliveries an operator skipped.",
    ),
    MetricDef::new(
        "windlass_outbox_inbox_duplicates_total",
        Counter,
        &["consumer"],
        "Deliveries the inbox dropped as duplicates.",
    ),
];

pub(crate) fn published(destination: &str, topic: &str, n: u64) {
    if n > 0 {
        metrics::counter!("windlass_outbox_published_total", "destination" => destination.to_owned(), "topic" => topic.to_owned())
            .increment(n);
    }
}

pub(crate) fn failure(destination: &str, topic: &str, permanent: bool) {
    let kind = if permanent { "permanent" } else { "transient" };
    metrics::counter!("windlass_outbox_publish_failures_total", "destination" => destination.to_owned(), "topic" => topic.to_owned(), "kind" => kind)
        .increment(1);
}

pub(crate) fn dead(destination: &str, topic: &str) {
    metrics::counter!("windlass_outbox_dead_total", "destination" => destination.to_owned(), "topic" => topic.to_owned())
        .increment(1);
}

pub(crate) fn lease_lost(destination: &str, n: u64) {
    if n > 0 {
        metrics::counter!("windlass_outbox_lease_lost_total", "destination" => destination.to_owned())
            .increment(n);
    }
}

pub(crate) fn relay_error(destination: &str, op: &'static str) {
    metrics::counter!("windlass_outbox_relay_errors_total", "destination" => destination.to_owned(), "op" => op)
        .increment(1);
}

/// Sets the four gauges of one destination and topic.
pub(crate) fn topic_gauges(
    destination: &str,
    topic: &str,
    pending: u64,
    dead: u64,
    blocked: u64,
    lag_secs: f64,
) {
    let (d, t) = (destination.to_owned(), topic.to_owned());
    metrics::gauge!("windlass_outbox_pending", "destination" => d.clone(), "topic" => t.clone())
        .set(pending as f64);
    metrics::gauge!("windlass_outbox_dead", "destination" => d.clone(), "topic" => t.clone())
        .set(dead as f64);
    metrics::gauge!("windlass_outbox_blocked_keys", "destination" => d.clone(), "topic" => t.clone())
        .set(blocked as f64);
    metrics::gauge!("windlass_outbox_oldest_pending_age_seconds", "destination" => d, "topic" => t)
        .set(lag_secs);
}

pub(crate) fn deleted(what: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("windlass_outbox_deleted_total", "what" => what).increment(n);
    }
}

#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) fn requeued(n: u64) {
    metrics::counter!("windlass_outbox_requeued_total").increment(n);
}

#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) fn skipped(n: u64) {
    metrics::counter!("windlass_outbox_skipped_total").increment(n);
}

#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) fn inbox_duplicate(consumer: &str) {
    metrics::counter!("windlass_outbox_inbox_duplicates_total", "consumer" => consumer.to_owned())
        .increment(1);
}
