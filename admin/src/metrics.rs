//! The metrics this crate emits, listed once: `docs/metrics.md`, the Prometheus exporter's
//! descriptions and the Grafana dashboard check are built from [`CATALOG`].

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use windlass_core::MetricDef;
use windlass_core::MetricKind::{Counter, Histogram};

use crate::Shared;

/// Every metric of `windlass-admin`.
pub const CATALOG: &[MetricDef] = &[
    MetricDef::new(
        "windlass_admin_requests_total",
        Counter,
        &["page", "status"],
        "Console requests, by route and status class (2xx, 3xx, 4xx, 5xx).",
    ),
    MetricDef::new(
        "windlass_admin_request_seconds",
        Histogram,
        &["page"],
        "Time the console took to answer, by route.",
    ),
];

/// Records every console request under its route pattern (`/jobs/{id}`, never the id).
pub(crate) async fn observe(State(_): State<Shared>, req: Request, next: Next) -> Response {
    let page = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    let class = match resp.status().as_u16() {
        200..300 => "2xx",
        300..400 => "3xx",
        400..500 => "4xx",
        _ => "5xx",
    };
    metrics::histogram!("windlass_admin_request_seconds", "page" => page.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("windlass_admin_requests_total", "page" => page, "status" => class)
        .increment(1);
    resp
}
