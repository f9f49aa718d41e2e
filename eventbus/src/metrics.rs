//! The metrics this crate emits, listed once: `docs/metrics.md`, the Prometheus exporter's
//! descriptions and the Grafana dashboard check are built from [`CATALOG`]. Emit metrics
//! through these names only, and keep the catalog in step with every emission site.

use windlass_core::MetricDef;
use windlass_core::MetricKind::{Counter, Histogram};

/// Every metric of `windlass-eventbus`.
pub const CATALOG: &[MetricDef] = &[
    MetricDef::new(
        "windlass_bus_deliveries_total",
        Counter,
        &["topic", "group", "outcome"],
        "Deliveries finished by the handler runner, by outcome (acked, retried, dead_lettered).",
    ),
    MetricDef::new(
        "windlass_bus_handler_seconds",
        Histogram,
        &["topic", "group"],
        "Time a handler call took.",
    ),
];
