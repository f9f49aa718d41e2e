//! The console's pages: server-rendered HTML (maud escapes every interpolated value), one
//! module per primitive, and what they share: the request context, the layout, parameter
//! parsing, the throughput chart.

mod bus;
mod chart;
mod jobs;
mod outbox;
mod overview;

use std::borrow::Cow;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use windlass_core::{Name, TenantScope};

use crate::Shared;
use crate::config::MAX_PAGE_SIZE;
use crate::error::ConsoleError;

/// What a page needs to know about the request: where the console is mounted, the CSRF token
/// of this session, the scope and the mode.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) base: String,
    pub(crate) csrf: String,
    pub(crate) read_only: bool,
    pub(crate) scope: TenantScope,
    pub(crate) title: String,
    pub(crate) can_logout: bool,
}

impl Ctx {
    /// An absolute URL of a console path (`path` starts with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        url(&self.base, path)
    }

    /// The hidden CSRF field every action form carries.
    pub(crate) fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }
}

/// `path` (starting with `/`) under the mount path `base`. The console's root is `base` itself:
/// a router nested at `/admin` answers `/admin`, not `/admin/`.
pub(crate) fn url(base: &str, path: &str) -> String {
    match (base.is_empty(), path) {
        (false, "/") => base.to_owned(),
        (false, p) if p.starts_with("/?") => format!("{base}{}", &p[1..]),
        _ => format!("{base}{path}"),
    }
}

/// The console's routes (inside the auth middleware).
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(overview::page))
        .route("/queues/action", post(overview::queue_action))
        .route("/jobs", get(jobs::list))
        .route("/jobs/action", post(jobs::action))
        .route("/jobs/{id}", get(jobs::detail))
        .route("/cron", get(jobs::cron))
        .route("/outbox", get(outbox::page))
        .route("/outbox/action", post(outbox::action))
        .route("/bus", get(bus::page))
        .route("/bus/dlq", get(bus::dlq))
        .route("/bus/redrive", post(bus::redrive))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .fallback(|| async { ConsoleError::NotFound("no such console page".into()) })
}

const CSS: &str = include_str!("../../assets/console.css");
const JS: &str = include_str!("../../assets/console.js");

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        JS,
    )
        .into_response()
}

fn head(title: &str, base: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) }
            link rel="stylesheet" href={ (base) "/assets/console.css" };
            script src={ (base) "/assets/console.js" } defer {}
        }
    }
}

/// The page frame: header, navigation, scope and mode, then `body`.
pub(crate) fn layout(ctx: &Ctx, active: &str, title: &str, body: Markup) -> Markup {
    let nav = [
        ("overview", "/", "Overview"),
        ("jobs", "/jobs", "Jobs"),
        ("cron", "/cron", "Cron"),
        ("outbox", "/outbox", "Outbox"),
        ("bus", "/bus", "Bus"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&format!("{title} · {}", ctx.title), &ctx.base))
            body {
                header {
                    span.brand { (ctx.title) }
                    nav {
                        @for (key, path, label) in nav {
                            a.active[key == active] href=(ctx.url(path)) { (label) }
                        }
                    }
                    span.badges {
                        @match ctx.scope.org_id() {
                            Some(org) => span.badge.scope { "tenant " (org.as_str()) },
                            None => span.badge { "all tenants" },
                        }
                        @if ctx.read_only { span.badge.ro { "read-only" } }
                        @if ctx.can_logout {
                            form.inline method="post" action=(ctx.url("/logout")) {
                                (ctx.csrf_field())
                                button.link type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The login form of token authentication.
pub(crate) fn login_page(title: &str, base: &str, message: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&format!("Log in · {title}"), base))
            body.login {
                main {
                    h1 { (title) " console" }
                    @if let Some(m) = message { p.error { (m) } }
                    form method="post" action={ (base) "/login" } {
                        label for="token" { "Access token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// A short notice of what the last action did, from the redirect's query (numbers and a
/// known action name only, so a crafted link cannot put words on the page).
pub(crate) fn notice(params: &Params) -> Markup {
    let act = params.get("act").filter(|a| {
        [
            "retry", "cancel", "discard", "pause", "resume", "requeue", "skip", "redrive",
        ]
        .contains(a)
    });
    let done: Option<u64> = params.get("done").and_then(|d| d.parse().ok());
    let skipped: Option<u64> = params.get("skipped").and_then(|d| d.parse().ok());
    html! {
        @if let (Some(act), Some(done)) = (act, done) {
            p.notice role="status" {
                (act) ": " (done) " done"
                @if let Some(s) = skipped.filter(|s| *s > 0) {
                    ", " (s) " skipped (unknown, or not in a state this action applies to)"
                }
            }
        }
    }
}

/// Query or form parameters, parsed once, with typed getters that turn bad input into a 400
/// saying what is wrong.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(raw: &[u8]) -> Self {
        Self(
            form_urlencoded::parse(raw)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(crate) fn query(raw: Option<&str>) -> Self {
        Self::parse(raw.unwrap_or_default().as_bytes())
    }

    /// Refuses parameters other than `known` (a typo'd filter must not silently show all).
    pub(crate) fn only(&self, known: &[&str]) -> Result<(), ConsoleError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(ConsoleError::BadRequest(format!(
                "unknown parameter {k:?}; this page takes {}",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// The last non-empty value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every non-empty value of `name`.
    pub(crate) fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// A validated name (queue, kind, tenant, topic).
    pub(crate) fn name(&self, name: &'static str) -> Result<Option<String>, ConsoleError> {
        self.get(name)
            .map(|v| {
                Name::parse(name, v)
                    .map(|n| n.as_str().to_owned())
                    .map_err(|e| ConsoleError::BadRequest(e.to_string()))
            })
            .transpose()
    }

    /// A positive integer.
    pub(crate) fn id(&self, name: &str) -> Result<Option<i64>, ConsoleError> {
        self.get(name)
            .map(|v| match v.parse::<i64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(ConsoleError::BadRequest(format!(
                    "{name} must be a positive integer, not {v:?}"
                ))),
            })
            .transpose()
    }

    /// The page size: `limit`, or the default; at most [`MAX_PAGE_SIZE`].
    pub(crate) fn limit(&self, default: u32) -> Result<u32, ConsoleError> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (1..=u64::from(MAX_PAGE_SIZE)).contains(&n) => Ok(n as u32),
                Ok(n) => Err(ConsoleError::BadRequest(format!(
                    "limit {n} is outside 1..={MAX_PAGE_SIZE}"
                ))),
                Err(_) => Err(ConsoleError::BadRequest(format!(
                    "limit must be a number, not {v:?}"
                ))),
            },
        }
    }

    /// A console-relative path to go back to after an action (defaults to `fallback`).
    pub(crate) fn return_to<'a>(&'a self, fallback: &'a str) -> Cow<'a, str> {
        match self.get("return_to") {
            // Only paths of this console: no scheme, no `//host`, no backslash tricks.
            Some(p)
                if p.starts_with('/')
                    && !p.starts_with("//")
                    && !p.contains('\\')
                    && !p.chars().any(char::is_control) =>
            {
                Cow::Borrowed(p)
            }
            _ => Cow::Borrowed(fallback),
        }
    }
}

/// A 303 back to `return_to` (a console path), with the outcome of an action in its query.
pub(crate) fn back(ctx: &Ctx, return_to: &str, act: &str, done: usize, skipped: usize) -> Response {
    let (path, query) = return_to.split_once('?').unwrap_or((return_to, ""));
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !["act", "done", "skipped"].contains(&k.as_ref()) {
            q.append_pair(&k, &v);
        }
    }
    q.append_pair("act", act);
    q.append_pair("done", &done.to_string());
    q.append_pair("skipped", &skipped.to_string());
    Redirect::to(&format!("{}?{}", ctx.url(path), q.finish())).into_response()
}

/// A timestamp, to the second, UTC.
pub(crate) fn ts(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A duration for people.
pub(crate) fn age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1} s", d.as_secs_f64()),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The first `n` characters of `s`, with an ellipsis when cut.
pub(crate) fn cut(s: &str, n: usize) -> Cow<'_, str> {
    match s.char_indices().nth(n) {
        Some((i, _)) => Cow::Owned(format!("{}…", &s[..i])),
        None => Cow::Borrowed(s),
    }
}

/// Pretty-printed JSON (escaped by maud where it is interpolated).
pub(crate) fn pretty(raw: &str) -> String {
    serde_json::from_str::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| raw.to_owned())
}

/// A section whose source is not configured or cannot answer in this scope.
pub(crate) fn unavailable(what: &str, why: &str) -> Markup {
    html! { p.muted { (what) ": " (why) } }
}

/// A full page response.
pub(crate) fn ok(markup: Markup) -> Response {
    (StatusCode::OK, markup).into_response()
}
