//! The metrics this crate emits, listed once: `docs/metrics.md`, the Prometheus exporter's
//! descriptions and the Grafana dashboard check are built from [`CATALOG`]. Emit metrics
//! through these names only, and keep the catalog in step with every emission site.
//!
//! The per-partition gauges are reported by the member holding the partition (every lease
//! renewal) and set to zero by a member that gives the partition up, so
//! `max by (topic, group, partition)` over all instances gives the current figure.

use std::time::Duration;

use windlass_core::MetricDef;
use windlass_core::MetricKind::{Counter, Gauge, Histogram};

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
    MetricDef::new(
        "windlass_bus_handler_timeouts_total",
        Counter,
        &["topic", "group"],
        "Handler attempts cancelled because they passed their deadline (handler_timeout).",
    ),
    MetricDef::new(
        "windlass_bus_partition_owned",
        Gauge,
        &["topic", "group", "partition"],
        "1 while this process holds the partition's lease in the group, else 0.",
    ),
    MetricDef::new(
        "windlass_bus_partition_lag",
        Gauge,
        &["topic", "group", "partition"],
        "Entries of the partition not yet delivered to the group (reported by its owner).",
    ),
    MetricDef::new(
        "windlass_bus_partition_pending",
        Gauge,
        &["topic", "group", "partition"],
        "Entries of the partition delivered to the group and not yet acknowledged (reported by its owner).",
    ),
    MetricDef::new(
        "windlass_bus_partition_oldest_pending_seconds",
        Gauge,
        &["topic", "group", "partition"],
        "Age of the partition's oldest pending entry, 0 when none (reported by its owner).",
    ),
    MetricDef::new(
        "windlass_bus_dual_publish_failures_total",
        Counter,
        &["topic"],
        "Events the secondary bus of a publish-time dual publish (migrate::DualPublisher) did not take; that bus misses them (best effort).",
    ),
    MetricDef::new(
        "windlass_bus_migration_switches_total",
        Counter,
        &["outcome"],
        "Migration switches run by this process, by outcome (done, failed).",
    ),
];

/// Sets the visibility gauges of one partition.
pub(crate) fn report_partition(
    topic: &str,
    group: &str,
    partition: u32,
    lag: Option<u64>,
    pending: u64,
    oldest_pending_age: Option<Duration>,
) {
    let labels = [
        ("topic", topic.to_owned()),
        ("group", group.to_owned()),
        ("partition", partition.to_string()),
    ];
    if let Some(lag) = lag {
        metrics::gauge!("windlass_bus_partition_lag", &labels).set(lag as f64);
    }
    metrics::gauge!("windlass_bus_partition_pending", &labels).set(pending as f64);
    metrics::gauge!("windlass_bus_partition_oldest_pending_seconds", &labels)
        .set(oldest_pending_age.map_or(0.0, |a| a.as_secs_f64()));
}

/// Zeroes the visibility gauges of a partition this process gave up.
pub(crate) fn clear_partition(topic: &str, group: &str, partition: u32) {
    report_partition(topic, group, partition, Some(0), 0, None);
}
