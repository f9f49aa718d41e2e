//! Descriptions of the metrics each crate emits, so one catalog documents and checks them.

/// The kind of a metric, as the `metrics` facade names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricKind {
    /// A monotonically increasing count (`_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution (exported as a Prometheus histogram or summary).
    Histogram,
}

/// One metric a crate emits: every crate lists its metrics in a `pub const CATALOG:
/// &[MetricDef]` (module `metrics` of the crate), which `docs/metrics.md`, the Prometheus
/// exporter's descriptions and the Grafana dashboard's check are built from.
///
/// Names follow `windlass_{crate}_{what}[_{unit}][_total]`; labels are bounded sets (topic,
/// group, partition, queue, kind, data type, destination, outcome), never tenant, job, event
/// or cache-key ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct MetricDef {
    /// The metric's name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Its label names.
    pub labels: &'static [&'static str],
    /// What it measures, one sentence.
    pub help: &'static str,
}

impl MetricDef {
    /// Describes a metric (for `const` catalogs).
    pub const fn new(
        name: &'static str,
        kind: MetricKind,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        Self {
            name,
            kind,
            labels,
            help,
        }
    }
}
