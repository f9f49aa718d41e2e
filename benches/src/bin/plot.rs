//! Draws the same-run comparisons of the benchmarks as PNG bar charts (plotters), for
//! `docs/benchmarks.md`: windlass beside its baseline, from
//! - criterion's saved estimates (`target/criterion/**/new/{benchmark,estimates}.json`): one
//!   chart per bench family (event codec, memory bus, outbox enqueue, jobs, cache hit);
//! - the JSON lines the harnesses print (`bus_redis`, `admin_pages`), one file per run.
//!
//! ```text
//! cargo run --release -p windlass-benches --bin plot -- --out docs/benchmarks \
//!     --criterion target/criterion docs/benchmarks/*.jsonl
//! ```
//!
//! Text is drawn with DejaVu Sans (`/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf`, Debian's
//! `fonts-dejavu-core`; `WINDLASS_PLOT_FONT` points elsewhere).

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// One bar: label, value, whether it is a baseline.
struct Bar {
    label: String,
    value: f64,
    baseline: bool,
}

fn font() -> BoxResult<()> {
    let path = std::env::var("WINDLASS_PLOT_FONT")
        .unwrap_or_else(|_| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    let bytes: &'static [u8] = Box::leak(std::fs::read(&path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{path} is not a usable font"))?;
    Ok(())
}

/// A horizontal bar chart, windlass in blue, baselines in grey, values printed at the bars.
fn bars(out: &Path, title: &str, unit: &str, bars: &[Bar], target: Option<f64>) -> BoxResult<()> {
    let height = 90 + 34 * bars.len() as u32;
    let root = BitMapBackend::new(out, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars
        .iter()
        .map(|b| b.value)
        .chain(target)
        .fold(0.0f64, f64::max)
        * 1.25;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(330)
        .build_cartesian_2d(0.0..max.max(1e-9), (0..bars.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len() + 1)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.label.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc(unit)
        .label_style(("sans-serif", 14))
        .draw()?;
    let blue = RGBColor(9, 105, 218);
    let grey = RGBColor(140, 149, 159);
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let color = if b.baseline { grey } else { blue };
        let mut r = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (b.value, SegmentValue::Exact(i + 1)),
            ],
            color.filled(),
        );
        r.set_margin(5, 5, 0, 0);
        r
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        Text::new(
            format!(" {}", human(b.value)),
            (b.value, SegmentValue::CenterOf(i)),
            ("sans-serif", 13).into_font(),
        )
    }))?;
    if let Some(t) = target {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![
                (t, SegmentValue::Exact(0)),
                (t, SegmentValue::Exact(bars.len())),
            ],
            RED.stroke_width(2),
        )))?;
    }
    root.present()?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn human(v: f64) -> String {
    match v {
        v if v >= 100_000.0 => format!("{:.0}k", v / 1000.0),
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 1.0 => format!("{v:.2}"),
        v => format!("{v:.3}"),
    }
}

/// Criterion estimates: (full id, mean in nanoseconds).
fn criterion(dir: &Path) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    let read = |f: &str| -> Option<Value> {
                        serde_json::from_str(&std::fs::read_to_string(p.join(f)).ok()?).ok()
                    };
                    if let (Some(b), Some(est)) = (read("benchmark.json"), read("estimates.json"))
                        && let (Some(id), Some(mean)) = (
                            b["full_id"].as_str(),
                            est["mean"]["point_estimate"].as_f64(),
                        )
                    {
                        out.push((id.to_owned(), mean));
                    }
                } else {
                    stack.push(p);
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn plot_criterion(dir: &Path, out: &Path) -> BoxResult<()> {
    let all = criterion(dir);
    let families: [(&str, &str, &[&str]); 5] = [
        (
            "criterion_event_codec.png",
            "Event encode / decode (criterion mean)",
            &["event_", "baseline_serde_value"],
        ),
        (
            "criterion_memory_bus.png",
            "Memory bus, 1000 events published and consumed",
            &["memory_bus/"],
        ),
        (
            "criterion_outbox_enqueue.png",
            "Outbox: transaction with the event (Postgres)",
            &["outbox/"],
        ),
        (
            "criterion_jobs.png",
            "Jobs: enqueue, enqueue + fetch + complete",
            &["jobs_"],
        ),
        (
            "criterion_cache_hit.png",
            "Cache hit (no L1)",
            &["cache_hit"],
        ),
    ];
    for (file, title, prefixes) in families {
        let bars: Vec<Bar> = all
            .iter()
            .filter(|(id, _)| prefixes.iter().any(|p| id.starts_with(p)))
            .map(|(id, ns)| Bar {
                label: id.clone(),
                value: ns / 1000.0,
                baseline: id.contains("baseline"),
            })
            .collect();
        if !bars.is_empty() {
            bars_file(
                out,
                file,
                title,
                "µs per iteration (lower is better)",
                &bars,
                None,
            )?;
        }
    }
    Ok(())
}

fn bars_file(
    out: &Path,
    file: &str,
    title: &str,
    unit: &str,
    b: &[Bar],
    target: Option<f64>,
) -> BoxResult<()> {
    bars(&out.join(file), title, unit, b, target)
}

fn num(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or(0.0)
}

fn plot_line(line: &Value, stem: &str, out: &Path) -> BoxResult<()> {
    match line["bench"].as_str() {
        Some("bus_redis") => {
            let pairs = [
                (
                    "publish one by one",
                    "/publish_one_by_one/ours_per_s",
                    "/publish_one_by_one/raw_xadd_per_s",
                    "raw XADD",
                ),
                (
                    "publish pipelined by 100",
                    "/publish_pipelined_100/ours_per_s",
                    "/publish_pipelined_100/raw_xadd_per_s",
                    "raw XADD pipeline",
                ),
                (
                    "consume",
                    "/consume/ours_per_s",
                    "/consume/raw_xreadgroup_100_xack_per_s",
                    "raw XREADGROUP+XACK",
                ),
            ];
            let mut b = Vec::new();
            for (what, ours, raw, raw_name) in pairs {
                b.push(Bar {
                    label: format!("{what}: windlass"),
                    value: num(line, ours),
                    baseline: false,
                });
                b.push(Bar {
                    label: format!("{what}: {raw_name}"),
                    value: num(line, raw),
                    baseline: true,
                });
            }
            bars_file(
                out,
                &format!("{stem}.png"),
                "Redis Streams bus vs raw redis, same run",
                "events per second (higher is better)",
                &b,
                None,
            )
        }
        Some("admin_pages") => {
            let mut b = Vec::new();
            for (group, key) in [("all", "/all_tenants"), ("org7", "/tenant_org7")] {
                for p in line
                    .pointer(key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    b.push(Bar {
                        label: format!("{group} {}", p["path"].as_str().unwrap_or("?")),
                        value: p["median_ms"].as_f64().unwrap_or(0.0),
                        baseline: false,
                    });
                }
            }
            let title = format!(
                "Console pages at {} jobs / {} outbox rows (median; red: 200 ms target)",
                line["jobs"], line["outbox"]
            );
            bars_file(
                out,
                &format!("{stem}.png"),
                &title,
                "milliseconds (lower is better)",
                &b,
                Some(200.0),
            )
        }
        other => {
            eprintln!("{stem}: no chart for bench {other:?}");
            Ok(())
        }
    }
}

fn main() -> BoxResult<()> {
    font()?;
    let mut out = PathBuf::from("docs/benchmarks");
    let mut crit: Option<PathBuf> = None;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().ok_or("--out takes a directory")?.into(),
            "--criterion" => {
                crit = Some(args.next().ok_or("--criterion takes a directory")?.into())
            }
            f => files.push(PathBuf::from(f)),
        }
    }
    std::fs::create_dir_all(&out)?;
    if let Some(dir) = crit {
        plot_criterion(&dir, &out)?;
    }
    for f in files {
        let stem = f
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("run")
            .to_owned();
        for line in std::fs::read_to_string(&f)?
            .lines()
            .filter(|l| l.starts_with('{'))
        {
            plot_line(&serde_json::from_str(line)?, &stem, &out)?;
        }
    }
    Ok(())
}
