//! The overview: queues (depth by state, throughput chart, pause / resume), outbox counts,
//! bus groups and dead-letter topics, cache hit ratio per data type.

use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use maud::{Markup, html};
use windlass_jobs::JobState;

use super::{Ctx, Params, back, chart, layout, notice, ok, unavailable};
use crate::Shared;
use crate::error::ConsoleError;
use crate::source::{Exactness, SourceError};

/// Shown for each section whose source failed or cannot answer in this scope.
fn section_error(what: &str, e: SourceError) -> Markup {
    match e {
        SourceError::Unsupported(why) | SourceError::Forbidden(why) => unavailable(what, &why),
        other => {
            let e = ConsoleError::from(other);
            unavailable(what, &e.to_string())
        }
    }
}

/// A short "how long ago" (seconds, minutes, hours).
fn age(at: chrono::DateTime<chrono::Utc>) -> String {
    let s = (chrono::Utc::now() - at).num_seconds().max(0);
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

pub(crate) async fn page(
    State(shared): State<Shared>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(q): RawQuery,
) -> Result<Response, ConsoleError> {
    let params = Params::query(q.as_deref());
    params.only(&["act", "done", "skipped"])?;
    let inner = &shared.inner;
    let scope = &ctx.scope;

    let (jobs, outbox, bus, cache) = tokio::join!(
        async {
            match &inner.jobs {
                None => Ok(None),
                Some(j) => {
                    let (d, t) = tokio::join!(
                        j.depths(scope),
                        j.throughput(scope, Duration::from_secs(3600))
                    );
                    Ok(Some((d?, t?)))
                }
            }
        },
        async {
            match &inner.outbox {
                None => Ok(None),
                Some(o) => o.stats(scope).await.map(Some),
            }
        },
        async {
            match &inner.bus {
                None => Ok(None),
                Some(b) => b.groups(scope).await.map(|g| Some((g, b.topics()))),
            }
        },
        async {
            match &inner.cache {
                None => Ok(None),
                Some(c) => c.stats(scope).await.map(Some),
            }
        },
    );

    let states = JobState::ALL;
    let body = html! {
        (notice(&params))
        section #queues {
            h2 { "Queues" }
            @match jobs {
                Ok(None) => (unavailable("Jobs", "no jobs source configured")),
                Err(e) => (section_error("Jobs", e)),
                Ok(Some((depths, throughput))) => {
                    @match &depths.exactness {
                        Exactness::AtLeast(n) => p.muted { "Lower bounds: counting stopped after " (n) " of this tenant's jobs." },
                        Exactness::Snapshot { at, took } => p.muted.freshness {
                            "Counts as of " (at.format("%Y-%m-%d %H:%M:%S UTC"))
                            " (" (age(*at)) " ago), recounted periodically by the jobs maintenance leader"
                            @if let Some(t) = took { "; the last recount took " (format!("{:.0}", t.as_secs_f64() * 1000.0)) " ms" }
                            "."
                        },
                        Exactness::NotCounted(why) => p.muted.freshness { (why) "." },
                        _ => {}
                    }
                    table.depths {
                        thead { tr {
                            th { "queue" }
                            @for s in states { th.num { (s.as_str()) } }
                            th { "" }
                        } }
                        tbody {
                            @if depths.queues.is_empty() { tr { td colspan="9" { "No jobs yet." } } }
                            @for q in &depths.queues {
                                tr {
                                    td {
                                        a href=(ctx.url(&format!("/jobs?queue={}", q.queue))) { (q.queue) }
                                        @if q.paused { " " span.badge.ro { "paused" } }
                                        @if let Some(n) = q.global_limit {
                                            " " span.badge title="global concurrency limit: at most this many of its jobs run at once across every worker" { "limit " (n) }
                                        }
                                    }
                                    @for s in states {
                                        td.num { (q.counts.get(&s).copied().unwrap_or(0)) }
                                    }
                                    td {
                                        @if !ctx.read_only && ctx.scope.org_id().is_none() {
                                            form.inline method="post" action=(ctx.url("/queues/action")) {
                                                (ctx.csrf_field())
                                                input type="hidden" name="queue" value=(q.queue);
                                                @if q.paused {
                                                    button name="action" value="resume" { "Resume" }
                                                } @else {
                                                    button name="action" value="pause" data-confirm={ "Pause queue " (q.queue) "?" } { "Pause" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    h3 { "Throughput, last hour" }
                    @match throughput {
                        None => (unavailable("Throughput", "not available from this jobs source")),
                        Some(t) => (chart::throughput(&t)),
                    }
                }
            }
        }
        section #outbox {
            h2 { "Outbox" }
            @match outbox {
                Ok(None) => (unavailable("Outbox", "no outbox source configured")),
                Err(e) => (section_error("Outbox", e)),
                Ok(Some(rows)) => (super::outbox::stats_table(&ctx, &rows)),
            }
        }
        section #bus {
            h2 { "Bus" }
            @match bus {
                Ok(None) => (unavailable("Bus", "no bus source configured")),
                Err(e) => (section_error("Bus", e)),
                Ok(Some((groups, topics))) => {
                    (super::bus::groups_table(&groups))
                    p { "Dead letters: "
                        @for t in &topics {
                            a href=(ctx.url(&format!("/bus/dlq?topic={t}"))) { (t.as_str()) } " "
                        }
                    }
                }
            }
        }
        section #cache {
            h2 { "Cache" }
            @match cache {
                Ok(None) => (unavailable("Cache", "no cache source configured")),
                Err(e) => (section_error("Cache", e)),
                Ok(Some(types)) => {
                    table {
                        thead { tr { th { "data type" } th.num { "hit ratio" } th.num { "hits" } th.num { "misses" } th.num { "stale served" } th.num { "load errors" } } }
                        tbody {
                            @if types.is_empty() { tr { td colspan="6" { "No lookups yet in this process." } } }
                            @for t in &types {
                                tr {
                                    td { (t.data_type) }
                                    td.num { (t.hit_ratio().map(|r| format!("{:.1}%", r * 100.0)).unwrap_or_else(|| "-".into())) }
                                    td.num { (t.hits) }
                                    td.num { (t.misses) }
                                    td.num { (t.stale_served) }
                                    td.num { (t.load_errors) }
                                }
                            }
                        }
                    }
                    p.muted { "Counters of this process since it started." }
                }
            }
        }
    };
    Ok(ok(layout(&ctx, "overview", "Overview", body)))
}

pub(crate) async fn queue_action(
    State(shared): State<Shared>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let form = Params::parse(&body);
    let jobs = shared
        .inner
        .jobs
        .as_ref()
        .ok_or_else(|| ConsoleError::NotFound("no jobs source configured".into()))?;
    let queue = form
        .name("queue")?
        .ok_or_else(|| ConsoleError::BadRequest("queue is required".into()))?;
    let (paused, act) = match form.get("action") {
        Some("pause") => (true, "pause"),
        Some("resume") => (false, "resume"),
        other => {
            return Err(ConsoleError::BadRequest(format!(
                "action must be pause or resume, not {other:?}"
            )));
        }
    };
    jobs.set_paused(&ctx.scope, &queue, paused).await?;
    Ok(back(&ctx, &form.return_to("/"), act, 1, 0))
}
