//! The metrics this crate emits, listed once: `docs/metrics.md`, the Prometheus exporter's
//! descriptions and the Grafana dashboard check are built from [`CATALOG`]. Emit metrics
//! through these names only, and keep the catalog in step with every emission site.

use windlass_core::MetricDef;
use windlass_core::MetricKind::{Counter, Gauge, Histogram};

/// Every metric of `windlass-jobs`.
pub const CATALOG: &[MetricDef] = &[
    MetricDef::new(
        "windlass_jobs_completed_total",
        Counter,
        &["queue"],
        "Job attempts that completed.",
    ),
    MetricDef::new(
        "windlass_jobs_failed_total",
        Counter,
        &["queue", "reason"],
        "Job attempts that failed, by reason.",
    ),
    MetricDef::new(
        "windlass_jobs_unknown_kind_total",
        Counter,
        &["queue"],
        "Jobs fetched whose kind the worker did not register (workers fetch only their kinds; a store that ignores the filter).",
    ),
    MetricDef::new(
        "windlass_jobs_rescued_total",
        Counter,
        &["queue"],
        "Attempts of dead workers rescued.",
    ),
    MetricDef::new(
        "windlass_jobs_self_fenced_total",
        Counter,
        &[],
        "Attempts a worker stopped itself because it could not renew their lease in time.",
    ),
    MetricDef::new(
        "windlass_jobs_cron_enqueued_total",
        Counter,
        &["cron"],
        "Cron ticks enqueued.",
    ),
    MetricDef::new(
        "windlass_jobs_wait_seconds",
        Histogram,
        &["queue"],
        "Time from a job being due to its attempt starting.",
    ),
    MetricDef::new(
        "windlass_jobs_run_seconds",
        Histogram,
        &["queue", "kind"],
        "Time a job attempt ran.",
    ),
    MetricDef::new(
        "windlass_jobs_depth",
        Gauge,
        &["queue", "state"],
        "Jobs per queue and state.",
    ),
];
