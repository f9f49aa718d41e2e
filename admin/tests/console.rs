//! The console over HTTP (in process, through the router), against real Postgres and Redis:
//! authentication, CSRF and cross-site refusal, tenant scope, escaping, bad input.
//! (`console_actions.rs`: every action end to end.)

mod common;

use axum::http::{StatusCode, header};
use common::{Client, Env, TOKEN};
use windlass_admin::{ConsoleConfig, TenantScope};
use windlass_core::OrgId;
use windlass_jobs::JobState;

fn acme() -> TenantScope {
    TenantScope::org(OrgId::new("acme").unwrap())
}

#[tokio::test]
async fn every_page_needs_authentication() {
    let env = Env::start().await;
    let mut c = Client::new(env.console(Env::config()).router());
    for path in [
        "/",
        "/jobs",
        "/jobs/1",
        "/cron",
        "/outbox",
        "/bus",
        "/bus/dlq?topic=orders",
        "/nope",
    ] {
        let page = c.get(path).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "GET {path}");
        assert!(
            page.body.contains("Access token"),
            "GET {path} shows the login form"
        );
    }
    let page = c
        .post("/jobs/action", &[("action", "retry"), ("id", "1")])
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);

    // A wrong token, as header or form, is refused too.
    c.headers
        .push(("authorization".into(), "Bearer not-the-token-at-all".into()));
    assert_eq!(c.get("/").await.status, StatusCode::UNAUTHORIZED);
    c.headers.pop();
    let page = c.post("/login", &[("token", "not-the-token-at-all")]).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(c.cookie.is_none());
    // A forged cookie is refused.
    c.cookie = Some("windlass_console=00ff".into());
    assert_eq!(c.get("/").await.status, StatusCode::UNAUTHORIZED);

    // A console without any authentication configured refuses everything.
    let mut open = Client::new(env.console(ConsoleConfig::default()).router());
    let page = open.get("/").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.body.contains("no authentication configured"));

    // Basic auth: the browser is asked for a user and password.
    let basic = ConsoleConfig::default()
        .basic("ops", "correct horse")
        .unwrap();
    let mut b = Client::new(env.console(basic).router());
    let page = b.get("/").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(
        page.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    b.headers
        .push(("authorization".into(), "Basic b3BzOndyb25nIHBhc3M=".into())); // ops:wrong pass
    assert_eq!(b.get("/").await.status, StatusCode::UNAUTHORIZED);
    b.headers.pop();
    b.headers.push((
        "authorization".into(),
        "Basic b3BzOmNvcnJlY3QgaG9yc2U=".into(),
    )); // ops:correct horse
    assert_eq!(b.get("/").await.status, StatusCode::OK);
    env.stop().await;
}

#[tokio::test]
async fn a_user_layer_can_authenticate_instead() {
    let env = Env::start().await;
    // The user's layer: only requests with `x-sso: ok` pass.
    let layer = axum::middleware::from_fn(
        |req: axum::extract::Request, next: axum::middleware::Next| async move {
            if req.headers().get("x-sso").is_some_and(|v| v == "ok") {
                next.run(req).await
            } else {
                axum::response::IntoResponse::into_response(StatusCode::UNAUTHORIZED)
            }
        },
    );
    let router = env
        .console(ConsoleConfig::default())
        .router_with_auth_layer(layer);
    let mut c = Client::new(router);
    assert_eq!(c.get("/").await.status, StatusCode::UNAUTHORIZED);
    c.headers.push(("x-sso".into(), "ok".into()));
    let page = c.get("/jobs").await;
    assert_eq!(page.status, StatusCode::OK);
    // Actions still need the CSRF token.
    let page = c
        .post("/jobs/action", &[("action", "retry"), ("id", "1")])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    env.stop().await;
}

#[tokio::test]
async fn actions_need_the_session_csrf_token_and_the_same_origin() {
    let env = Env::start().await;
    let id = env.scheduled_job("acme", "").await;
    let idv = id.to_string();
    let mut c = Client::new(env.console(Env::config()).router());
    c.login("").await;
    let csrf = c.get("/jobs").await.csrf();

    // No token, a wrong token, another session's token.
    for token in ["", "deadbeef", &"0".repeat(64)] {
        let r = c
            .post(
                "/jobs/action",
                &[("csrf", token), ("action", "cancel"), ("id", &idv)],
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "token {token:?}");
    }
    // A cross-site form post carrying the right cookie and even the right token.
    c.headers
        .push(("sec-fetch-site".into(), "cross-site".into()));
    let r = c
        .post(
            "/jobs/action",
            &[("csrf", &csrf), ("action", "cancel"), ("id", &idv)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("cross-site"));
    c.headers.pop();
    c.headers
        .push(("origin".into(), "https://evil.example".into()));
    let r = c
        .post(
            "/jobs/action",
            &[("csrf", &csrf), ("action", "cancel"), ("id", &idv)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    c.headers.pop();
    assert_eq!(
        env.jobs.get(id).await.unwrap().unwrap().state,
        JobState::Scheduled,
        "nothing happened"
    );

    // GET cannot act.
    assert_ne!(
        c.get(&format!("/jobs/action?action=cancel&id={id}"))
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    // Same origin with the token works.
    c.headers
        .push(("origin".into(), "http://console.test".into()));
    let r = c
        .post(
            "/jobs/action",
            &[("csrf", &csrf), ("action", "cancel"), ("id", &idv)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    env.wait_state(id, JobState::Cancelled).await;

    // A bearer header is not ambient: scripts need no CSRF token.
    let id2 = env.scheduled_job("acme", "").await;
    let mut s = Client::new(env.console(Env::config()).router());
    s.headers
        .push(("authorization".into(), format!("Bearer {TOKEN}")));
    let r = s
        .post(
            "/jobs/action",
            &[("action", "cancel"), ("id", &id2.to_string())],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    env.wait_state(id2, JobState::Cancelled).await;
    env.stop().await;
}

#[tokio::test]
async fn a_tenant_console_never_shows_or_touches_another_tenants_rows() {
    let env = Env::start().await;
    let mine = env.failing_job("acme", "acme failure", "acme-args").await;
    let theirs = env
        .failing_job("globex", "globex secret failure", "globex-args")
        .await;
    let their_sched = env.scheduled_job("globex", "globex-sched").await;
    let their_dead = env.dead_outbox_event("globex").await;
    let my_dead = env.dead_outbox_event("acme").await;
    env.dead_letter("globex", "globex-letter").await;
    let their_letter = env.dead_letter("globex", "globex-letter-2").await;

    let mut c = Client::new(env.console(Env::config().scope(acme())).router());
    c.login("").await;
    let all = c.get("/jobs?limit=500").await;
    assert!(all.body.contains("acme failure"));
    assert!(
        !all.body.contains("globex"),
        "another tenant's job leaked:\n{}",
        all.body
    );
    assert!(all.body.contains(&format!("/jobs/{mine}")));
    assert!(!all.body.contains(&format!("/jobs/{theirs}\"")));
    // Asking for the other tenant explicitly is refused.
    assert_eq!(
        c.get("/jobs?org=globex").await.status,
        StatusCode::FORBIDDEN
    );
    // By id: unknown.
    assert_eq!(
        c.get(&format!("/jobs/{theirs}")).await.status,
        StatusCode::NOT_FOUND
    );
    // Text search does not reach it either.
    assert!(!c.get("/jobs?q=globex").await.body.contains("globex secret"));
    // Overview counts only this tenant's jobs: globex's scheduled job is not in acme's
    // scheduled column (the snapshot, recounted now, is tenant-scoped).
    env.jobs.refresh_counts().await.unwrap();
    let overview = c.get("/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(!overview.body.contains("globex"));
    assert!(overview.body.contains("Counts as of "), "{}", overview.body);
    let row = overview
        .body
        .split(">default</a>")
        .nth(1)
        .expect("a row for queue default");
    let cells: Vec<&str> = row
        .split("<td class=\"num\">")
        .skip(1)
        .take(7)
        .map(|c| c.split('<').next().unwrap_or(""))
        .collect();
    assert_eq!(cells[1], "0", "acme's scheduled count: {cells:?}");
    let total: u64 = cells.iter().map(|c| c.parse::<u64>().unwrap()).sum();
    assert_eq!(total, 1, "acme has one job: {cells:?}");
    // Actions on its ids are skipped.
    let csrf = all.csrf();
    let (t, s) = (theirs.to_string(), their_sched.to_string());
    for action in ["retry", "cancel", "discard"] {
        let r = c
            .post(
                "/jobs/action",
                &[("csrf", &csrf), ("action", action), ("id", &t), ("id", &s)],
            )
            .await;
        assert!(
            r.location().contains("done=0&skipped=2"),
            "{action}: {}",
            r.location()
        );
    }
    assert_eq!(
        env.jobs.get(theirs).await.unwrap().unwrap().state,
        JobState::Discarded
    );
    assert_eq!(
        env.jobs.get(their_sched).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    // Queues are shared: a tenant console may not pause them.
    let r = c
        .post(
            "/queues/action",
            &[("csrf", &csrf), ("queue", "default"), ("action", "pause")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Outbox: only its own dead rows, and the other's cannot be requeued.
    let outbox = c.get("/outbox").await;
    assert!(outbox.body.contains(&my_dead.to_string()));
    assert!(
        !outbox.body.contains(&their_dead.to_string()),
        "{}",
        outbox.body
    );
    let r = c
        .post(
            "/outbox/action",
            &[
                ("csrf", &csrf),
                ("action", "requeue"),
                ("delivery", &their_dead.to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        env.outbox_dead().await,
        2,
        "the other tenant's row stayed dead"
    );

    // DLQ: not listed, not redrivable.
    let dlq = c.get("/bus/dlq?topic=orders").await;
    assert_eq!(dlq.status, StatusCode::OK);
    assert!(!dlq.body.contains("globex"), "{}", dlq.body);
    let r = c
        .post(
            "/bus/redrive",
            &[("csrf", &csrf), ("topic", "orders"), ("id", &their_letter)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    env.stop().await;
}

#[tokio::test]
async fn script_injection_in_args_errors_and_events_renders_inert() {
    let env = Env::start().await;
    let evil = "<script>alert('xss')</script><img src=x onerror=alert(1)>";
    let id = env.failing_job("acme", evil, evil).await;
    env.dead_outbox_event("acme").await;
    env.dead_letter("acme", evil).await;
    let mut c = Client::new(env.console(Env::config()).router());
    c.login("").await;
    for path in [
        "/jobs".to_owned(),
        format!("/jobs/{id}"),
        "/outbox".to_owned(),
        "/bus/dlq?topic=orders".to_owned(),
    ] {
        let page = c.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(
            !page.body.contains("<script>alert"),
            "{path} has a live script tag"
        );
        assert!(
            !page.body.contains("<img src=x"),
            "{path} has a live img tag"
        );
        assert!(
            !page.body.contains("<b>everything</b>") && !page.body.contains("<i>it</i>"),
            "{path}"
        );
        let csp = page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'"));
    }
    let detail = c.get(&format!("/jobs/{id}")).await;
    assert!(
        detail
            .body
            .contains("&lt;script&gt;alert('xss')&lt;/script&gt;"),
        "{}",
        detail.body
    );
    // A crafted notice cannot put words on the page either.
    let page = c.get("/jobs?act=%3Cscript%3E&done=1").await;
    assert!(!page.body.contains("<script>") && !page.body.contains("&lt;script&gt;: 1"));
    env.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_4xx_page_with_the_reason() {
    let env = Env::start().await;
    let mut c = Client::new(env.console(Env::config()).router());
    c.login("").await;
    let cases: &[(&str, StatusCode, &str)] = &[
        (
            "/jobs?state=exploded",
            StatusCode::BAD_REQUEST,
            "unknown state",
        ),
        (
            "/jobs?limit=100000",
            StatusCode::BAD_REQUEST,
            "outside 1..=500",
        ),
        (
            "/jobs?limit=abc",
            StatusCode::BAD_REQUEST,
            "must be a number",
        ),
        ("/jobs?limit=0", StatusCode::BAD_REQUEST, "outside"),
        (
            "/jobs?after=-5",
            StatusCode::BAD_REQUEST,
            "positive integer",
        ),
        (
            "/jobs?after=1e9",
            StatusCode::BAD_REQUEST,
            "positive integer",
        ),
        ("/jobs?queue=a:b", StatusCode::BAD_REQUEST, "queue"),
        ("/jobs?kind=%00", StatusCode::BAD_REQUEST, "kind"),
        (
            "/jobs?stat=running",
            StatusCode::BAD_REQUEST,
            "unknown parameter",
        ),
        ("/jobs/abc", StatusCode::BAD_REQUEST, "positive integer"),
        (
            "/jobs/99999999999999999999",
            StatusCode::BAD_REQUEST,
            "positive integer",
        ),
        ("/jobs/424242", StatusCode::NOT_FOUND, "no job 424242"),
        (
            "/outbox?after=x",
            StatusCode::BAD_REQUEST,
            "seq@destination",
        ),
        ("/outbox?limit=501", StatusCode::BAD_REQUEST, "outside"),
        ("/bus/dlq", StatusCode::BAD_REQUEST, "topic is required"),
        ("/bus/dlq?topic=a%20b", StatusCode::BAD_REQUEST, "topic"),
        (
            "/bus/dlq?topic=unknown",
            StatusCode::NOT_FOUND,
            "not one this console shows",
        ),
        (
            "/bus/dlq?topic=orders&after=0-0",
            StatusCode::BAD_REQUEST,
            "cursor",
        ),
        (
            "/no/such/page",
            StatusCode::NOT_FOUND,
            "no such console page",
        ),
    ];
    for (path, status, reason) in cases {
        let page = c.get(path).await;
        assert_eq!(page.status, *status, "GET {path}: {}", page.body);
        assert!(
            page.body.contains(reason),
            "GET {path} says why ({reason}): {}",
            page.body
        );
    }
    let long = "x".repeat(201);
    assert_eq!(
        c.get(&format!("/jobs?q={long}")).await.status,
        StatusCode::BAD_REQUEST
    );

    let csrf = c.get("/jobs").await.csrf();
    type Post<'a> = (&'a str, Vec<(&'a str, String)>, StatusCode);
    let posts: Vec<Post> = vec![
        (
            "/jobs/action",
            vec![("action", "explode".into()), ("id", "1".into())],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/jobs/action",
            vec![("action", "retry".into())],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/jobs/action",
            vec![("action", "retry".into()), ("id", "one".into())],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/outbox/action",
            vec![
                ("action", "requeue".into()),
                ("delivery", "not-a-delivery".into()),
            ],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/outbox/action",
            vec![
                ("action", "requeue".into()),
                ("delivery", "999999@default".into()),
            ],
            StatusCode::NOT_FOUND,
        ),
        (
            "/outbox/action",
            vec![
                ("action", "skip".into()),
                ("delivery", "999999@default".into()),
            ],
            StatusCode::NOT_FOUND,
        ),
        (
            "/bus/redrive",
            vec![("topic", "orders".into()), ("id", "1-1".into())],
            StatusCode::NOT_FOUND,
        ),
        (
            "/queues/action",
            vec![("queue", "a:b".into()), ("action", "pause".into())],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/queues/action",
            vec![("queue", "default".into()), ("action", "stop".into())],
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (path, fields, status) in posts {
        let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf)];
        form.extend(fields.iter().map(|(k, v)| (*k, v.as_str())));
        let page = c.post(path, &form).await;
        assert_eq!(page.status, status, "POST {path} {fields:?}: {}", page.body);
    }
    // Too many ids, and an oversized body.
    let ids: Vec<String> = (1..=501).map(|i| i.to_string()).collect();
    let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf), ("action", "cancel")];
    form.extend(ids.iter().map(|i| ("id", i.as_str())));
    assert_eq!(
        c.post("/jobs/action", &form).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let big = "y".repeat(70 * 1024);
    let page = c
        .post("/jobs/action", &[("csrf", &csrf), ("pad", &big)])
        .await;
    assert_eq!(page.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Other methods.
    let req = axum::http::Request::builder()
        .method("DELETE")
        .uri("/jobs/1")
        .header("host", "console.test")
        .header(header::COOKIE, c.cookie.clone().unwrap())
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(c.send(req).await.status, StatusCode::METHOD_NOT_ALLOWED);
    env.stop().await;
}
