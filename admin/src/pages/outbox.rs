//! The outbox: counts per topic, dead rows with keyset paging, requeue and skip.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use maud::{Markup, html};

use super::{Ctx, Params, age, back, cut, layout, notice, ok, pretty, ts, unavailable};
use crate::Shared;
use crate::error::ConsoleError;
use crate::source::{
    BlockedOutboxPage, OutboxDelivery, OutboxSource, OutboxTopicStats, SourceError,
};

fn source(shared: &Shared) -> Result<&Arc<dyn OutboxSource>, ConsoleError> {
    shared
        .inner
        .outbox
        .as_ref()
        .ok_or_else(|| ConsoleError::NotFound("no outbox source configured".into()))
}

/// Pending, dead and lag per topic (and destination); shared with the overview.
pub(crate) fn stats_table(ctx: &Ctx, rows: &[OutboxTopicStats]) -> Markup {
    html! {
        table.outbox {
            thead { tr { th { "topic" } th { "destination" } th.num { "pending" } th.num { "dead" } th.num { "blocked keys" } th { "lag (oldest pending)" } } }
            tbody {
                @for r in rows {
                    tr {
                        td { (r.topic.as_deref().unwrap_or("(all topics)")) }
                        td { (r.destination.as_deref().unwrap_or("-")) }
                        td.num { (r.pending) }
                        td.num { a href=(ctx.url("/outbox")) { (r.dead) } }
                        td.num { (r.blocked_keys) }
                        td { (r.lag.map(age).unwrap_or_else(|| "-".into())) }
                    }
                }
            }
        }
    }
}

pub(crate) async fn page(
    State(shared): State<Shared>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    let params = Params::query(raw.as_deref());
    params.only(&["after", "blocked_after", "limit", "act", "done", "skipped"])?;
    let after = cursor(&params, "after")?;
    let blocked_after = cursor(&params, "blocked_after")?;
    let limit = params.limit(shared.inner.config.page_size)?;
    let src = source(&shared)?;
    let (stats, dead, blocked) = tokio::join!(
        src.stats(&ctx.scope),
        src.dead(&ctx.scope, after.as_ref(), limit),
        src.blocked(&ctx.scope, blocked_after.as_ref(), limit)
    );
    let dead = dead?;
    let here = format!("/outbox?{}", raw.as_deref().unwrap_or_default());
    let body = html! {
        (notice(&params))
        @match stats {
            Ok(rows) => (stats_table(&ctx, &rows)),
            Err(SourceError::Unsupported(why)) => (unavailable("Counts", &why)),
            Err(e) => (unavailable("Counts", &ConsoleError::from(e).to_string())),
        }
        h2 { "Blocked keys" }
        @match blocked {
            Ok(page) => (blocked_table(&ctx, &page, src.can_skip(), &here, limit, blocked_after.is_some())),
            Err(SourceError::Unsupported(why)) => (unavailable("Blocked keys", &why)),
            Err(e) => (unavailable("Blocked keys", &ConsoleError::from(e).to_string())),
        }
        h2 { "Dead events" }
        @if let Some(note) = &dead.note { p.muted { (note) } }
        table.dead {
            thead { tr {
                th { "seq" } th { "destination" } th { "topic" } th { "key" } th { "tenant" } th { "type" }
                th.num { "attempts" } th { "last error" } th { "created (UTC)" } th { "" }
            } }
            tbody {
                @if dead.events.is_empty() { tr { td colspan="10" { "No dead events." } } }
                @for e in &dead.events {
                    tr id={ "dead-" (e.delivery.seq) "-" (e.delivery.destination) } {
                        td.num { (e.delivery.seq) }
                        td { (e.delivery.destination) }
                        td { (e.topic) }
                        td { (e.partition_key.as_deref().unwrap_or("-")) }
                        td { (e.org_id.as_deref().unwrap_or("-")) }
                        td { (e.event_type.as_deref().unwrap_or("?")) }
                        td.num { (e.attempts) }
                        td.error { (cut(e.last_error.as_deref().unwrap_or(""), 160)) }
                        td { (ts(&e.created_at)) }
                        td {
                            @if !ctx.read_only {
                                form.inline method="post" action=(ctx.url("/outbox/action")) {
                                    (ctx.csrf_field())
                                    input type="hidden" name="delivery" value=(e.delivery);
                                    input type="hidden" name="return_to" value=(here);
                                    button name="action" value="requeue" { "Requeue" }
                                    @if src.can_skip() {
                                        button name="action" value="skip" data-confirm="Skip this event for good?" { "Skip" }
                                    }
                                }
                            }
                        }
                    }
                    tr.payload { td colspan="10" { details { summary { "event " (e.event_id.as_deref().unwrap_or("?")) } pre.json { (pretty(&e.event)) } } } }
                }
            }
        }
        nav.pager {
            @if after.is_some() { a href=(ctx.url(&format!("/outbox?limit={limit}"))) { "« first page" } " " }
            @if let Some(n) = &dead.next { a rel="next" href=(ctx.url(&format!("/outbox?after={n}&limit={limit}"))) { "next page »" } }
        }
        @if !src.can_skip() { p.muted { "Skip is not available with this outbox version." } }
    };
    Ok(ok(layout(&ctx, "outbox", "Outbox", body)))
}

fn cursor(params: &Params, name: &str) -> Result<Option<OutboxDelivery>, ConsoleError> {
    match params.get(name) {
        None => Ok(None),
        Some(raw) => OutboxDelivery::parse(raw).map(Some).ok_or_else(|| {
            ConsoleError::BadRequest(format!("{name} must be seq@destination, not {raw:?}"))
        }),
    }
}

/// Keys whose head is dead, with the rows waiting behind each, and the head's actions.
fn blocked_table(
    ctx: &Ctx,
    page: &BlockedOutboxPage,
    can_skip: bool,
    here: &str,
    limit: u32,
    paged: bool,
) -> Markup {
    html! {
        p.muted { "An ordering key stops at a dead delivery: the rows behind it wait until the head is requeued or skipped." }
        table.blocked {
            thead { tr {
                th { "topic" } th { "key" } th { "tenant" } th { "dead head" } th.num { "waiting" }
                th { "last error" } th { "failed (UTC)" } th { "" }
            } }
            tbody {
                @if page.keys.is_empty() { tr { td colspan="8" { "No blocked keys." } } }
                @for k in &page.keys {
                    tr id={ "blocked-" (k.head.seq) "-" (k.head.destination) } {
                        td { (k.topic) }
                        td { (k.partition_key) }
                        td { (k.org_id.as_deref().unwrap_or("-")) }
                        td { (k.head) }
                        td.num { @if k.waiting > 10_000 { "10 000+" } @else { (k.waiting) } }
                        td.error { (cut(k.last_error.as_deref().unwrap_or(""), 160)) }
                        td { (k.failed_at.as_ref().map(ts).unwrap_or_else(|| "-".into())) }
                        td {
                            @if !ctx.read_only {
                                form.inline method="post" action=(ctx.url("/outbox/action")) {
                                    (ctx.csrf_field())
                                    input type="hidden" name="delivery" value=(k.head);
                                    input type="hidden" name="return_to" value=(here);
                                    button name="action" value="requeue" { "Requeue head" }
                                    @if can_skip {
                                        button name="action" value="skip" data-confirm="Skip the dead head for good?" { "Skip head" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if paged { a href=(ctx.url(&format!("/outbox?limit={limit}"))) { "« first blocked keys" } " " }
            @if let Some(n) = &page.next { a rel="next" href=(ctx.url(&format!("/outbox?blocked_after={n}&limit={limit}"))) { "more blocked keys »" } }
        }
    }
}

pub(crate) async fn action(
    State(shared): State<Shared>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let form = Params::parse(&body);
    let raw = form.get("delivery").unwrap_or_default();
    let delivery = OutboxDelivery::parse(raw).ok_or_else(|| {
        ConsoleError::BadRequest(format!("delivery must be seq@destination, not {raw:?}"))
    })?;
    let src = source(&shared)?;
    let act = match form.get("action") {
        Some("requeue") => {
            src.requeue(&ctx.scope, &delivery).await?;
            "requeue"
        }
        Some("skip") => {
            src.skip(&ctx.scope, &delivery).await?;
            "skip"
        }
        other => {
            return Err(ConsoleError::BadRequest(format!(
                "action must be requeue or skip, not {other:?}"
            )));
        }
    };
    Ok(back(&ctx, &form.return_to("/outbox"), act, 1, 0))
}
