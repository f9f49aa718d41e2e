//! One Prometheus exporter for every windlass crate: a `metrics` recorder
//! ([`metrics_exporter_prometheus`]) that knows every metric of every crate's catalog (help
//! text and type), exports histograms with buckets, and renders the text format on
//! `GET /metrics`.
//!
//! ```
//! let handle = windlass_admin::prometheus::install().expect("no other recorder installed");
//! let app: axum::Router = windlass_admin::prometheus::router(handle);
//! # let _ = app;
//! ```

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusRecorder};
use windlass_core::{MetricDef, MetricKind};

pub use metrics_exporter_prometheus::PrometheusHandle;

/// Buckets of every `_seconds` histogram: 0.5 ms to 60 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Every crate's catalog, by crate name.
pub fn catalogs() -> [(&'static str, &'static [MetricDef]); 5] {
    [
        ("windlass-eventbus", windlass_eventbus::metrics::CATALOG),
        ("windlass-outbox", windlass_outbox::metrics::CATALOG),
        ("windlass-jobs", windlass_jobs::metrics::CATALOG),
        ("windlass-cache", windlass_cache::metrics::CATALOG),
        ("windlass-admin", crate::metrics::CATALOG),
    ]
}

/// Every metric of every crate.
pub fn all_metrics() -> impl Iterator<Item = &'static MetricDef> {
    catalogs().into_iter().flat_map(|(_, c)| c.iter())
}

fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
}

/// Describes every catalog metric to the current recorder (help text shows in the output).
pub fn describe_all() {
    for m in all_metrics() {
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.help),
            MetricKind::Histogram => {
                metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help)
            }
            _ => {}
        }
    }
}

/// A recorder and its handle, not installed (for tests, or to compose with other recorders);
/// every catalog metric is already described on it.
pub fn recorder() -> Result<(PrometheusRecorder, PrometheusHandle), BuildError> {
    let recorder = builder()?.build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, describe_all);
    Ok((recorder, handle))
}

/// Installs the exporter as the process's global `metrics` recorder and describes every
/// catalog metric. Fails when another recorder is already installed.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = builder()?.install_recorder()?;
    describe_all();
    Ok(handle)
}

/// `GET /metrics` in the Prometheus text format. Mount it where your scraper looks (it is not
/// behind the console's authentication; put your own in front if it must be).
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}

/// The table of `docs/metrics.md`: one row per metric of every crate.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| metric | type | labels | crate | what |\n|---|---|---|---|---|\n");
    for (krate, catalog) in catalogs() {
        for m in catalog {
            let kind = match m.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                MetricKind::Histogram => "histogram",
                _ => "other",
            };
            let labels = if m.labels.is_empty() {
                "-".to_owned()
            } else {
                m.labels
                    .iter()
                    .map(|l| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!(
                "| `{}` | {kind} | {labels} | {krate} | {} |\n",
                m.name, m.help
            ));
        }
    }
    out
}
