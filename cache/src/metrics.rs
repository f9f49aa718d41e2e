//! The metrics this crate emits, listed once: `docs/metrics.md`, the Prometheus exporter's
//! descriptions and the Grafana dashboard check are built from [`CATALOG`]. Emit metrics
//! through these names only, and keep the catalog in step with every emission site.

use windlass_core::MetricDef;
use windlass_core::MetricKind::{Counter, Histogram};

/// Every metric of `windlass-cache`.
pub const CATALOG: &[MetricDef] = &[
    MetricDef::new(
        "windlass_cache_hits_total",
        Counter,
        &["type", "tier"],
        "Hits, by data type and tier (l1, l2).",
    ),
    MetricDef::new("windlass_cache_misses_total", Counter, &["type"], "Misses."),
    MetricDef::new(
        "windlass_cache_stale_served_total",
        Counter,
        &["type"],
        "Stale values served (stale-while-revalidate, fail-safe).",
    ),
    MetricDef::new(
        "windlass_cache_loads_total",
        Counter,
        &["type"],
        "Loader calls.",
    ),
    MetricDef::new(
        "windlass_cache_load_errors_total",
        Counter,
        &["type"],
        "Loader calls that failed.",
    ),
    MetricDef::new(
        "windlass_cache_decode_failures_total",
        Counter,
        &["type"],
        "Stored values that no longer decode (read as misses).",
    ),
    MetricDef::new(
        "windlass_cache_fail_open_total",
        Counter,
        &["type"],
        "Calls served without the store because it failed.",
    ),
    MetricDef::new(
        "windlass_cache_writes_discarded_total",
        Counter,
        &["type"],
        "Writes refused because an invalidation raced them.",
    ),
    MetricDef::new(
        "windlass_cache_load_seconds",
        Histogram,
        &["type"],
        "Time a loader call took.",
    ),
    MetricDef::new(
        "windlass_cache_invalidations_total",
        Counter,
        &[],
        "Tag and key invalidations.",
    ),
];
