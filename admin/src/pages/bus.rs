//! The bus: consumer groups, and the dead-letter browser with redrive.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use maud::{Markup, html};
use windlass_core::Topic;

use super::{Ctx, Params, age, back, cut, layout, notice, ok, pretty, ts};
use crate::Shared;
use crate::error::ConsoleError;
use crate::source::{BusSource, GroupStatus};

fn source(shared: &Shared) -> Result<&Arc<dyn BusSource>, ConsoleError> {
    shared
        .inner
        .bus
        .as_ref()
        .ok_or_else(|| ConsoleError::NotFound("no bus source configured".into()))
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

pub(crate) fn groups_table(groups: &[GroupStatus]) -> Markup {
    html! {
        table.groups {
            thead { tr {
                th { "topic" } th { "group" } th { "partition" } th { "owner" }
                th.num { "lag" } th.num { "pending" } th { "oldest pending" }
            } }
            tbody {
                @if groups.is_empty() { tr { td colspan="7" { "No groups declared." } } }
                @for g in groups {
                    tr {
                        td { (g.topic) } td { (g.group) } td { (opt(g.partition)) }
                        td { (g.owner.as_deref().unwrap_or("n/a")) }
                        td.num { (opt(g.lag)) } td.num { (opt(g.pending)) }
                        td { (g.oldest_pending_age.map(age).unwrap_or_else(|| "n/a".into())) }
                    }
                }
            }
        }
        @if groups.iter().all(|g| g.lag.is_none()) && !groups.is_empty() {
            p.muted { "Lag and owners are not reported by this bus backend." }
        }
    }
}

pub(crate) async fn page(
    State(shared): State<Shared>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    Params::query(raw.as_deref()).only(&[])?;
    let src = source(&shared)?;
    let groups = src.groups(&ctx.scope).await?;
    let body = html! {
        h2 { "Groups" }
        (groups_table(&groups))
        h2 { "Dead letters" }
        ul {
            @for t in src.topics() {
                li { a href=(ctx.url(&format!("/bus/dlq?topic={t}"))) { (t.as_str()) } }
            }
        }
    };
    Ok(ok(layout(&ctx, "bus", "Bus", body)))
}

fn topic(params: &Params) -> Result<Topic, ConsoleError> {
    let raw = params
        .get("topic")
        .ok_or_else(|| ConsoleError::BadRequest("topic is required".into()))?;
    Topic::new(raw).map_err(|e| ConsoleError::BadRequest(e.to_string()))
}

pub(crate) async fn dlq(
    State(shared): State<Shared>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    let params = Params::query(raw.as_deref());
    params.only(&["topic", "after", "limit", "act", "done", "skipped"])?;
    let topic = topic(&params)?;
    let after = params.get("after");
    if let Some(a) = after
        && (a.len() > 200 || a.chars().any(char::is_control))
    {
        return Err(ConsoleError::BadRequest("malformed cursor".into()));
    }
    let limit = params.limit(shared.inner.config.page_size)?;
    let page = source(&shared)?
        .dead_letters(&ctx.scope, &topic, after, limit)
        .await?;
    let here = format!("/bus/dlq?{}", raw.as_deref().unwrap_or_default());
    let next_url = |cursor: &str| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.append_pair("topic", topic.as_str());
        s.append_pair("after", cursor);
        s.append_pair("limit", &limit.to_string());
        ctx.url(&format!("/bus/dlq?{}", s.finish()))
    };
    let body = html! {
        (notice(&params))
        @if let Some(note) = &page.note { p.muted { (note) } }
        table.dlq {
            thead { tr {
                th { "entry" } th { "group" } th { "tenant" } th { "type" } th { "error" } th { "failed at (UTC)" } th { "" }
            } }
            tbody {
                @if page.entries.is_empty() { tr { td colspan="7" { "No dead letters." } } }
                @for e in &page.entries {
                    tr {
                        td { code { (e.id) } }
                        td { (e.group) }
                        td { (e.org_id.as_deref().unwrap_or("-")) }
                        td { (e.event_type.as_deref().unwrap_or("(does not decode)")) }
                        td.error { (cut(&e.error, 160)) }
                        td { (ts(&e.failed_at)) }
                        td {
                            @if !ctx.read_only && e.decodes {
                                form.inline method="post" action=(ctx.url("/bus/redrive")) {
                                    (ctx.csrf_field())
                                    input type="hidden" name="topic" value=(topic.as_str());
                                    input type="hidden" name="id" value=(e.id);
                                    input type="hidden" name="return_to" value=(here);
                                    button name="action" value="redrive" data-confirm="Publish this event to its topic again?" { "Redrive" }
                                }
                            }
                        }
                    }
                    tr.payload { td colspan="7" { details { summary { "payload" } pre.json { (pretty(&e.payload)) } } } }
                }
            }
        }
        nav.pager {
            @if let Some(n) = &page.next { a rel="next" href=(next_url(n)) { "next page »" } }
        }
    };
    Ok(ok(layout(
        &ctx,
        "bus",
        &format!("Dead letters of {topic}"),
        body,
    )))
}

pub(crate) async fn redrive(
    State(shared): State<Shared>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let form = Params::parse(&body);
    let topic = topic(&form)?;
    let id = form
        .get("id")
        .ok_or_else(|| ConsoleError::BadRequest("id is required".into()))?;
    source(&shared)?.redrive(&ctx.scope, &topic, id).await?;
    let fallback = format!("/bus/dlq?topic={topic}");
    Ok(back(&ctx, &form.return_to(&fallback), "redrive", 1, 0))
}
