//! The metric catalogs of every crate against what documents and uses them: the exporter's
//! output, `docs/metrics.md`, the Grafana dashboard. Each test parses both sides, so neither
//! can drift from the catalogs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use windlass_admin::prometheus::{all_metrics, markdown_table, recorder};
use windlass_core::{MetricDef, MetricKind};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn catalog() -> BTreeMap<&'static str, &'static MetricDef> {
    let mut map = BTreeMap::new();
    for m in all_metrics() {
        assert!(
            map.insert(m.name, m).is_none(),
            "{} is in two catalogs",
            m.name
        );
    }
    map
}

/// Label names whose values come from a small set the application chooses (never ids).
const BOUNDED_LABELS: &[&str] = &[
    "topic",
    "group",
    "partition",
    "queue",
    "kind",
    "state",
    "type",
    "tier",
    "destination",
    "outcome",
    "reason",
    "table",
    "consumer",
    "cron",
    "page",
    "status",
    "store",
    "op",
    "what",
];

#[test]
fn names_follow_the_convention_and_labels_are_bounded() {
    for m in catalog().values() {
        assert!(m.name.starts_with("windlass_"), "{}", m.name);
        assert!(
            m.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{}",
            m.name
        );
        match m.kind {
            MetricKind::Counter => assert!(m.name.ends_with("_total"), "counter {}", m.name),
            MetricKind::Histogram => assert!(m.name.ends_with("_seconds"), "histogram {}", m.name),
            _ => assert!(!m.name.ends_with("_total"), "gauge {}", m.name),
        }
        for l in m.labels {
            assert!(
                BOUNDED_LABELS.contains(l),
                "{} has label {l:?}, not one of the bounded labels {BOUNDED_LABELS:?}",
                m.name
            );
        }
        assert!(!m.help.is_empty(), "{} has no help", m.name);
    }
}

#[test]
fn the_exporter_describes_every_catalog_metric() {
    let (recorder, handle) = recorder().unwrap();
    metrics::with_local_recorder(&recorder, || {
        for m in all_metrics() {
            let labels: Vec<(&'static str, &'static str)> =
                m.labels.iter().map(|l| (*l, "x")).collect();
            match m.kind {
                MetricKind::Counter => metrics::counter!(m.name, &labels).increment(1),
                MetricKind::Gauge => metrics::gauge!(m.name, &labels).set(1.0),
                _ => metrics::histogram!(m.name, &labels).record(0.003),
            }
        }
    });
    let text = handle.render();
    for m in all_metrics() {
        let kind = match m.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            _ => "histogram",
        };
        assert!(
            text.contains(&format!("# TYPE {} {kind}", m.name)),
            "{} typed {kind}:\n{text}",
            m.name
        );
        assert!(
            text.contains(&format!("# HELP {} ", m.name)),
            "{} described",
            m.name
        );
        if m.kind == MetricKind::Histogram {
            assert!(
                text.contains(&format!("{}_bucket{{", m.name)),
                "{} exported with buckets",
                m.name
            );
        }
    }
}

const START: &str =
    "<!-- catalog:start (generated from every crate's metrics::CATALOG; a test checks it) -->";
const END: &str = "<!-- catalog:end -->";

#[test]
fn docs_metrics_md_is_the_catalogs_table() {
    let path = repo("docs/metrics.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (head, rest) = doc
        .split_once(START)
        .expect("docs/metrics.md has the start marker");
    let (table, tail) = rest
        .split_once(END)
        .expect("docs/metrics.md has the end marker");
    let expected = format!("\n{}", markdown_table());
    if table != expected {
        if std::env::var_os("WINDLASS_BLESS").is_some() {
            std::fs::write(&path, format!("{head}{START}{expected}{END}{tail}")).unwrap();
            return;
        }
        panic!(
            "docs/metrics.md is out of date with the catalogs; run\n  WINDLASS_BLESS=1 cargo test -p windlass-admin --test metrics\nexpected table:\n{expected}"
        );
    }
}

/// Every metric name a PromQL expression mentions, with histogram series suffixes removed.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("windlass_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(base.to_owned());
        i = end;
    }
    out
}

/// Label names of `by (...)` clauses.
fn by_labels(expr: &str) -> Vec<String> {
    expr.split("by (")
        .skip(1)
        .filter_map(|s| s.split_once(')'))
        .flat_map(|(inside, _)| inside.split(',').map(|l| l.trim().to_owned()))
        .filter(|l| !l.is_empty() && l != "le")
        .collect()
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| exprs(i, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_catalog_metrics() {
    let catalog = catalog();
    let raw = std::fs::read_to_string(repo("admin/grafana/windlass.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let mut used = BTreeSet::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let mut e = Vec::new();
        exprs(p, &mut e);
        assert!(!e.is_empty(), "panel {} has no query", p["title"]);
        for expr in e {
            let names = metric_names(&expr);
            assert!(!names.is_empty(), "query {expr:?} names no windlass metric");
            for name in &names {
                let def = catalog.get(name.as_str()).unwrap_or_else(|| {
                    panic!("the dashboard queries {name}, which no catalog has ({expr})")
                });
                if expr.contains(&format!("{name}_bucket")) {
                    assert_eq!(def.kind, MetricKind::Histogram, "{name} is not a histogram");
                }
                used.insert(name.clone());
            }
            for label in by_labels(&expr) {
                assert!(
                    names
                        .iter()
                        .any(|n| catalog[n.as_str()].labels.contains(&label.as_str())),
                    "query {expr:?} groups by {label:?}, which none of its metrics has"
                );
            }
        }
    }
    let unused: Vec<_> = catalog.keys().filter(|n| !used.contains(**n)).collect();
    assert!(unused.is_empty(), "metrics without a panel: {unused:?}");
}

#[test]
fn the_metric_name_parser_finds_histogram_bases() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.9, rate(windlass_jobs_run_seconds_bucket[5m])) / windlass_x_total"
        ),
        vec!["windlass_jobs_run_seconds", "windlass_x_total"]
    );
    assert_eq!(
        by_labels("sum by (le, queue) (x) / sum by (type)(y)"),
        vec!["queue", "type"]
    );
}
