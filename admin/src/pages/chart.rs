//! The throughput chart: inline SVG drawn on the server (no script, no external image), one
//! small chart per queue, a bar per minute of the last hour: completed (lower) and failed
//! (upper) stacked.

use chrono::{DurationRound, TimeDelta, Utc};
use maud::{Markup, html};

use crate::source::Throughput;

const W: u32 = 360;
const H: u32 = 64;
const MINUTES: i64 = 60;

pub(crate) fn throughput(queues: &[Throughput]) -> Markup {
    let now = Utc::now()
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap_or_else(|_| Utc::now());
    let first = now - TimeDelta::minutes(MINUTES - 1);
    html! {
        @if queues.is_empty() {
            p.muted { "No samples yet: from the first visit of this page, the console reads the job count snapshot once a minute and charts the change between two recounts." }
        }
        div.charts {
            @for q in queues {
                @let peak = q.minutes.iter().map(|(_, d, f)| d + f).max().unwrap_or(0).max(1);
                @let done: u64 = q.minutes.iter().map(|(_, d, _)| d).sum();
                @let failed: u64 = q.minutes.iter().map(|(_, _, f)| f).sum();
                figure.chart {
                    svg width=(W) height=(H) viewBox={ "0 0 " (W) " " (H) } role="img"
                        aria-label={ "throughput of " (q.queue) } {
                        rect x="0" y="0" width=(W) height=(H) fill="#f6f8fa" {}
                        @for (t, d, f) in &q.minutes {
                            @let slot = (*t - first).num_minutes();
                            @if (0..MINUTES).contains(&slot) {
                                @let bw = W as f64 / MINUTES as f64;
                                @let x = slot as f64 * bw;
                                @let hd = (*d as f64 / peak as f64) * (H as f64 - 4.0);
                                @let hf = (*f as f64 / peak as f64) * (H as f64 - 4.0);
                                rect x=(format!("{x:.1}")) y=(format!("{:.1}", H as f64 - hd)) width=(format!("{:.1}", bw - 1.0)) height=(format!("{hd:.1}")) fill="#2da44e" {
                                    title { (t.format("%H:%M")) ": " (d) " completed" }
                                }
                                @if *f > 0 {
                                    rect x=(format!("{x:.1}")) y=(format!("{:.1}", H as f64 - hd - hf)) width=(format!("{:.1}", bw - 1.0)) height=(format!("{hf:.1}")) fill="#cf222e" {
                                        title { (t.format("%H:%M")) ": " (f) " failed" }
                                    }
                                }
                            }
                        }
                    }
                    figcaption {
                        strong { (q.queue) } " " (done) " completed, " (failed) " failed (peak " (peak) "/min)"
                    }
                }
            }
        }
    }
}
