//! The metrics this crate emits, listed once: `docs/metrics.md`, the Prometheus exporter's
//! descriptions and the Grafana dashboard check are built from [`CATALOG`]. Emit metrics
//! through these names only, and keep the catalog in step with every emission site.

use windlass_core::MetricDef;
use windlass_core::MetricKind::{Counter, Gauge};

/// Every metric of `windlass-outbox`.
pub const CATALOG: &[MetricDef] = &[
    MetricDef::new(
        "windlass_outbox_published_total",
        Counter,
        &["table"],
        "Outbox rows the relay published.",
    ),
    MetricDef::new(
        "windlass_outbox_publish_failures_total",
        Counter,
        &["table"],
        "Publish attempts that failed.",
    ),
    MetricDef::new(
        "windlass_outbox_dead_total",
        Counter,
        &["table"],
        "Rows marked dead.",
    ),
    MetricDef::new(
        "windlass_outbox_relay_errors_total",
        Counter,
        &["table"],
        "Relay rounds that failed (store or bus errors).",
    ),
    MetricDef::new(
        "windlass_outbox_pending",
        Gauge,
        &["table"],
        "Rows waiting to be published.",
    ),
    MetricDef::new(
        "windlass_outbox_dead",
        Gauge,
        &["table"],
        "Rows in the dead state.",
    ),
    MetricDef::new(
        "windlass_outbox_oldest_pending_age_seconds",
        Gauge,
        &["table"],
        "Age of the oldest pending row.",
    ),
    MetricDef::new(
        "windlass_inbox_duplicates_total",
        Counter,
        &["consumer"],
        "Deliveries the inbox dropped as duplicates.",
    ),
];
