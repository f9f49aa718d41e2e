//! Jobs: the filtered list with keyset paging, a job's detail (arguments, every attempt's
//! error, timeline), retry / cancel / discard of one or many, and the cron schedules.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use maud::{Markup, html};
use windlass_jobs::{JobRecord, JobState};

use super::{Ctx, Params, back, cut, layout, notice, ok, ts};
use crate::Shared;
use crate::error::ConsoleError;
use crate::source::{JobAction, JobQuery, JobsSource};

/// Most ids one action may carry.
pub(crate) const MAX_IDS: usize = 500;
/// Longest text filter accepted.
const MAX_TEXT: usize = 200;

fn source(shared: &Shared) -> Result<&Arc<dyn JobsSource>, ConsoleError> {
    shared
        .inner
        .jobs
        .as_ref()
        .ok_or_else(|| ConsoleError::NotFound("no jobs source configured".into()))
}

fn query(ctx: &Ctx, params: &Params, default_limit: u32) -> Result<JobQuery, ConsoleError> {
    params.only(&[
        "state", "queue", "kind", "org", "q", "after", "limit", "act", "done", "skipped",
    ])?;
    let mut states = Vec::new();
    for s in params.all("state") {
        let state = JobState::parse(s).ok_or_else(|| {
            let valid: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            ConsoleError::BadRequest(format!(
                "unknown state {s:?}; states are {}",
                valid.join(", ")
            ))
        })?;
        if !states.contains(&state) {
            states.push(state);
        }
    }
    let text = params.get("q").map(str::to_owned);
    if let Some(t) = &text
        && t.chars().count() > MAX_TEXT
    {
        return Err(ConsoleError::BadRequest(format!(
            "the text filter is limited to {MAX_TEXT} characters"
        )));
    }
    let org_id = params.name("org")?;
    if let (Some(own), Some(asked)) = (ctx.scope.org_id(), &org_id)
        && own.as_str() != asked
    {
        return Err(ConsoleError::Forbidden(
            "this console is scoped to another tenant".into(),
        ));
    }
    Ok(JobQuery {
        states,
        queue: params.name("queue")?,
        kind: params.name("kind")?,
        org_id,
        text,
        after: params.id("after")?,
        limit: params.limit(default_limit)?,
    })
}

/// The list URL for `q` with another cursor.
fn list_url(ctx: &Ctx, q: &JobQuery, after: Option<i64>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for st in &q.states {
        s.append_pair("state", st.as_str());
    }
    for (k, v) in [
        ("queue", &q.queue),
        ("kind", &q.kind),
        ("org", &q.org_id),
        ("q", &q.text),
    ] {
        if let Some(v) = v {
            s.append_pair(k, v);
        }
    }
    if let Some(a) = after {
        s.append_pair("after", &a.to_string());
    }
    s.append_pair("limit", &q.limit.to_string());
    ctx.url(&format!("/jobs?{}", s.finish()))
}

fn state_badge(state: JobState) -> Markup {
    html! { span class={ "state " (state.as_str()) } { (state.as_str()) } }
}

pub(crate) async fn list(
    State(shared): State<Shared>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    let params = Params::query(raw.as_deref());
    let q = query(&ctx, &params, shared.inner.config.page_size)?;
    let page = source(&shared)?.list(&ctx.scope, &q).await?;
    let here = format!("/jobs?{}", raw.as_deref().unwrap_or_default());
    let body = html! {
        (notice(&params))
        form.filters method="get" action=(ctx.url("/jobs")) {
            fieldset {
                legend { "state" }
                @for s in JobState::ALL {
                    label.check {
                        input type="checkbox" name="state" value=(s.as_str()) checked[q.states.contains(&s)];
                        (s.as_str())
                    }
                }
            }
            label { "queue " input type="text" name="queue" value=[q.queue.as_deref()] size="10"; }
            label { "kind " input type="text" name="kind" value=[q.kind.as_deref()] size="12"; }
            @if ctx.scope.org_id().is_none() {
                label { "tenant " input type="text" name="org" value=[q.org_id.as_deref()] size="10"; }
            }
            label { "args contain " input type="text" name="q" value=[q.text.as_deref()] size="14"; }
            label { "per page " input type="number" name="limit" value=(q.limit) min="1" max=(crate::MAX_PAGE_SIZE); }
            button type="submit" { "Filter" }
        }
        @if let Some(note) = &page.note { p.muted { (note) } }
        form #bulk method="post" action=(ctx.url("/jobs/action")) {
            (ctx.csrf_field())
            input type="hidden" name="return_to" value=(here);
            @if !ctx.read_only {
                div.actions {
                    "Selected: "
                    button name="action" value="retry" { "Retry" }
                    button name="action" value="cancel" data-confirm="Cancel the selected jobs?" { "Cancel" }
                    button name="action" value="discard" data-confirm="Discard the selected jobs?" { "Discard" }
                }
            }
            table.jobs {
                thead { tr {
                    th { input type="checkbox" data-select-all="id" aria-label="select all"; }
                    th { "id" } th { "queue" } th { "kind" } th { "state" } th { "attempt" }
                    th { "tenant" } th { "run at (UTC)" } th { "last error" }
                } }
                tbody {
                    @if page.jobs.is_empty() { tr { td colspan="9" { "No jobs match." } } }
                    @for j in &page.jobs {
                        tr {
                            td { input type="checkbox" name="id" value=(j.id) aria-label={ "select job " (j.id) }; }
                            td { a href=(ctx.url(&format!("/jobs/{}", j.id))) { (j.id) } }
                            td { (j.queue) }
                            td { (j.kind) }
                            td { (state_badge(j.state)) }
                            td.num { (j.attempt) "/" (j.max_attempts) }
                            td { (j.org_id.as_deref().unwrap_or("-")) }
                            td { (ts(&j.run_at)) }
                            td.error { @if let Some(e) = j.errors.last() { (cut(&e.error, 120)) } }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if q.after.is_some() { a href=(list_url(&ctx, &q, None)) { "« first page" } " " }
            @if let Some(next) = page.next { a rel="next" href=(list_url(&ctx, &q, Some(next))) { "next page »" } }
        }
    };
    Ok(ok(layout(&ctx, "jobs", "Jobs", body)))
}

fn timeline(j: &JobRecord) -> Vec<(chrono::DateTime<chrono::Utc>, String)> {
    let mut t = vec![(j.created_at, "enqueued".to_owned())];
    for e in &j.errors {
        t.push((e.at, format!("attempt {} failed", e.attempt)));
    }
    if let Some(a) = j.attempted_at {
        t.push((a, format!("attempt {} started", j.attempt)));
    }
    if let Some(f) = j.finalized_at {
        t.push((f, j.state.as_str().to_owned()));
    } else if !j.state.is_final() && j.state != JobState::Running {
        t.push((j.run_at, format!("{} until", j.state.as_str())));
    }
    t.sort_by_key(|(at, _)| *at);
    t
}

pub(crate) async fn detail(
    State(shared): State<Shared>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    let params = Params::query(raw.as_deref());
    params.only(&["act", "done", "skipped"])?;
    let id: i64 = id.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        ConsoleError::BadRequest(format!("job id must be a positive integer, not {id:?}"))
    })?;
    let job = source(&shared)?
        .get(&ctx.scope, id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("no job {id}")))?;
    let args = serde_json::to_string_pretty(&job.args).unwrap_or_default();
    let here = format!("/jobs/{id}");
    let body = html! {
        (notice(&params))
        @if !ctx.read_only {
            form.actions method="post" action=(ctx.url("/jobs/action")) {
                (ctx.csrf_field())
                input type="hidden" name="id" value=(job.id);
                input type="hidden" name="return_to" value=(here);
                button name="action" value="retry" disabled[job.state == JobState::Running] { "Retry now" }
                button name="action" value="cancel" disabled[job.state.is_final()] data-confirm="Cancel this job?" { "Cancel" }
                button name="action" value="discard" disabled[job.state.is_final()] data-confirm="Discard this job?" { "Discard" }
            }
        }
        dl.fields {
            dt { "state" } dd { (state_badge(job.state)) }
            dt { "queue" } dd { (job.queue) }
            dt { "kind" } dd { (job.kind) }
            dt { "tenant" } dd { (job.org_id.as_deref().unwrap_or("-")) }
            dt { "priority" } dd { (job.priority) }
            dt { "attempt" } dd { (job.attempt) " of " (job.max_attempts) }
            dt { "run at" } dd { (ts(&job.run_at)) }
            dt { "worker" } dd { (job.locked_by.as_deref().unwrap_or("-")) }
            dt { "unique key" } dd { (job.unique_key.as_deref().unwrap_or("-")) }
        }
        h2 { "Arguments" }
        pre.json { (args) }
        h2 { "Errors" }
        @if job.errors.is_empty() { p.muted { "No failed attempt." } }
        @else {
            table.errors {
                thead { tr { th { "attempt" } th { "at (UTC)" } th { "worker" } th { "error" } } }
                tbody {
                    @for e in &job.errors {
                        tr {
                            td.num { (e.attempt) }
                            td { (ts(&e.at)) }
                            td { (e.worker.as_deref().unwrap_or("-")) }
                            td { pre.error { (e.error) } }
                        }
                    }
                }
            }
        }
        h2 { "Timeline" }
        ol.timeline {
            @for (at, what) in timeline(&job) { li { time { (ts(&at)) } " " (what) } }
        }
    };
    Ok(ok(layout(&ctx, "jobs", &format!("Job {id}"), body)))
}

pub(crate) async fn action(
    State(shared): State<Shared>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let form = Params::parse(&body);
    let act = form.get("action").unwrap_or_default();
    let action = JobAction::parse(act).ok_or_else(|| {
        ConsoleError::BadRequest(format!(
            "action must be retry, cancel or discard, not {act:?}"
        ))
    })?;
    let mut ids = Vec::new();
    for v in form.all("id") {
        match v.parse::<i64>() {
            Ok(n) if n > 0 => ids.push(n),
            _ => {
                return Err(ConsoleError::BadRequest(format!(
                    "job ids must be positive integers, not {v:?}"
                )));
            }
        }
    }
    if ids.is_empty() {
        return Err(ConsoleError::BadRequest("select at least one job".into()));
    }
    if ids.len() > MAX_IDS {
        return Err(ConsoleError::TooLarge(format!(
            "at most {MAX_IDS} jobs per action, got {}",
            ids.len()
        )));
    }
    ids.sort_unstable();
    ids.dedup();
    let report = source(&shared)?.act(&ctx.scope, action, &ids).await?;
    Ok(back(
        &ctx,
        &form.return_to("/jobs"),
        action.as_str(),
        report.done.len(),
        report.skipped.len(),
    ))
}

pub(crate) async fn cron(
    State(shared): State<Shared>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    Params::query(raw.as_deref()).only(&[])?;
    let schedules = source(&shared)?.cron(&ctx.scope, 5).await?;
    let body = html! {
        @if schedules.is_empty() {
            p.muted { "No cron schedules registered with this console (JobsApi::cron_job)." }
        }
        table.cron {
            thead { tr { th { "name" } th { "schedule" } th { "queue" } th { "kind" } th { "next runs (UTC)" } } }
            tbody {
                @for s in &schedules {
                    tr {
                        td { (s.name) }
                        td { code { (s.pattern.as_deref().unwrap_or("-")) } }
                        td { a href=(ctx.url(&format!("/jobs?queue={}", s.queue))) { (s.queue) } }
                        td { (s.kind) }
                        td { @for t in &s.next_runs { time { (ts(t)) } br; } }
                    }
                }
            }
        }
    };
    Ok(ok(layout(&ctx, "cron", "Cron schedules", body)))
}
