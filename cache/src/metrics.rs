//! The metrics this crate emits, listed once: `docs/metrics.md`, the Prometheus exporter's
//! descriptions and the Grafana dashboard check are built from [`CATALOG`]. Emit metrics
//! through these names only, and keep the catalog in step with every emission site (the test
//! `every_catalog_metric_is_emitted` checks both directions). Labels are bounded: data type,
//! tier, kind, outcome, reason, store backend; never a tenant or a key.

use windlass_core::MetricDef;
use windlass_core::MetricKind::{Counter, Gauge, Histogram};

/// Every metric of `windlass-cache`.
pub const CATALOG: &[MetricDef] = &[
    MetricDef::new(
        "windlass_cache_hits_total",
        Counter,
        &["type", "tier"],
        "Fresh values served, by data type and tier (l1, l2).",
    ),
    MetricDef::new(
        "windlass_cache_misses_total",
        Counter,
        &["type"],
        "Lookups that found no fresh value (each get or get_or_load call counts one hit or one miss).",
    ),
    MetricDef::new(
        "windlass_cache_stale_served_total",
        Counter,
        &["type"],
        "Stale values served (stale-while-revalidate, fail-safe, soft timeout).",
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
        "Loader calls that failed, panicked or passed the hard timeout.",
    ),
    MetricDef::new(
        "windlass_cache_load_timeouts_total",
        Counter,
        &["type", "kind"],
        "Loads past their soft or hard timeout (kind soft, hard).",
    ),
    MetricDef::new(
        "windlass_cache_load_seconds",
        Histogram,
        &["type"],
        "Time a loader call took.",
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
        "Store calls that failed, timed out or met an open breaker, and fell through.",
    ),
    MetricDef::new(
        "windlass_cache_writes_discarded_total",
        Counter,
        &["type"],
        "Writes refused because a write, delete or invalidation raced them.",
    ),
    MetricDef::new(
        "windlass_cache_refreshes_total",
        Counter,
        &["type"],
        "Background loads started by stale-while-revalidate or refresh-ahead.",
    ),
    MetricDef::new(
        "windlass_cache_invalidations_total",
        Counter,
        &["outcome"],
        "Tags invalidated (outcome applied, or queued for replay after a store failure).",
    ),
    MetricDef::new(
        "windlass_cache_invalidations_replayed_total",
        Counter,
        &[],
        "Queued invalidations and deletes replayed on the store.",
    ),
    MetricDef::new(
        "windlass_cache_invalidations_pending",
        Gauge,
        &["store"],
        "Invalidations and deletes waiting for replay.",
    ),
    MetricDef::new(
        "windlass_cache_breaker_state",
        Gauge,
        &["store"],
        "Circuit breaker around the store: 0 closed, 1 open, 2 half-open.",
    ),
    MetricDef::new(
        "windlass_cache_breaker_opened_total",
        Counter,
        &["store"],
        "Times the circuit breaker opened.",
    ),
    MetricDef::new(
        "windlass_cache_notices_total",
        Counter,
        &[],
        "Change notices received from other instances (L1 sync).",
    ),
    MetricDef::new(
        "windlass_cache_l1_resets_total",
        Counter,
        &[],
        "L1 resets (subscription, reconnect, lost notices).",
    ),
    MetricDef::new(
        "windlass_cache_l1_deaf_total",
        Counter,
        &[],
        "Times the L1 went out of use because its heartbeat passed the staleness bound.",
    ),
    MetricDef::new(
        "windlass_cache_rule_failures_total",
        Counter,
        &["reason"],
        "Event rules that failed (reason render, store, reload, no_reloader).",
    ),
];
