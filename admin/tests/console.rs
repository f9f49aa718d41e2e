//! The console over HTTP (in process, through the router), against real Postgres and Redis:
//! authentication, CSRF, tenant scope, escaping, bad input, and every action end to end.

mod common;

use axum::http::{StatusCode, header};
use common::{Client, Env, TOKEN};
use windlass_admin::{Console, ConsoleConfig, TenantScope};
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
async fn retry_of_a_failed_job_runs_it_to_completion() {
    let env = Env::start().await;
    let id = env.failing_job("acme", "payment gateway said no", "").await;
    let app = axum::Router::new().nest("/ops/console", env.console(Env::config()).router());
    let mut c = Client::new(app);
    c.login("/ops/console").await;
    let home = c.get("/ops/console").await;
    assert_eq!(
        home.status,
        StatusCode::OK,
        "the mount path itself is the overview"
    );
    assert!(
        home.body.contains("href=\"/ops/console/jobs\""),
        "links follow the mount path"
    );

    let list = c.get("/ops/console/jobs?state=discarded").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert!(list.body.contains("payment gateway said no"));
    assert!(
        list.body
            .contains(&format!("href=\"/ops/console/jobs/{id}\"")),
        "links follow the mount path"
    );
    let detail = c.get(&format!("/ops/console/jobs/{id}")).await;
    assert_eq!(detail.status, StatusCode::OK);
    assert!(detail.body.contains("payment gateway said no"));
    assert!(
        detail.body.contains("attempt 1 failed"),
        "timeline lists the failure"
    );

    let csrf = detail.csrf();
    let idv = id.to_string();
    let done = c
        .post(
            "/ops/console/jobs/action",
            &[
                ("csrf", &csrf),
                ("action", "retry"),
                ("id", &idv),
                ("return_to", &format!("/jobs/{id}")),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert!(
        done.location()
            .starts_with(&format!("/ops/console/jobs/{id}?")),
        "{}",
        done.location()
    );
    env.wait_state(id, JobState::Completed).await;
    let after = c.get(done.location()).await;
    assert!(after.body.contains("retry: 1 done"), "{}", after.body);
    assert!(after.body.contains("completed"));
    env.stop().await;
}

#[tokio::test]
async fn bulk_cancel_and_discard_apply_to_each_selected_job() {
    let env = Env::start().await;
    let a = env.scheduled_job("acme", "a").await;
    let b = env.scheduled_job("acme", "b").await;
    let d = env.scheduled_job("acme", "d").await;
    let mut c = Client::new(env.console(Env::config()).router());
    c.login("").await;
    let csrf = c.get("/jobs").await.csrf();
    let (a_s, b_s, d_s) = (a.to_string(), b.to_string(), d.to_string());
    let r = c
        .post(
            "/jobs/action",
            &[
                ("csrf", &csrf),
                ("action", "cancel"),
                ("id", &a_s),
                ("id", &b_s),
                ("id", "999999"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(
        r.location().contains("done=2") && r.location().contains("skipped=1"),
        "{}",
        r.location()
    );
    env.wait_state(a, JobState::Cancelled).await;
    env.wait_state(b, JobState::Cancelled).await;
    let r = c
        .post(
            "/jobs/action",
            &[("csrf", &csrf), ("action", "discard"), ("id", &d_s)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    env.wait_state(d, JobState::Discarded).await;
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
    // Overview counts only this tenant's jobs.
    let overview = c.get("/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(!overview.body.contains("globex"));
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
                ("id", &their_dead.to_string()),
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
            "positive integer",
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
            vec![("action", "requeue".into()), ("id", "not-a-uuid".into())],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/outbox/action",
            vec![
                ("action", "requeue".into()),
                ("id", uuid::Uuid::new_v4().to_string()),
            ],
            StatusCode::NOT_FOUND,
        ),
        (
            "/outbox/action",
            vec![
                ("action", "skip".into()),
                ("id", uuid::Uuid::new_v4().to_string()),
            ],
            StatusCode::NOT_IMPLEMENTED,
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

#[tokio::test]
async fn outbox_dead_event_requeued_from_the_console_is_published() {
    let env = Env::start().await;
    let id = env.dead_outbox_event("acme").await;
    let mut c = Client::new(env.console(Env::config()).router());
    c.login("").await;
    let page = c.get("/outbox").await;
    assert!(page.body.contains(&id.to_string()));
    assert!(
        page.body.contains("destination refuses"),
        "the error is shown"
    );
    let before = env.stream_len().await;
    let r = c
        .post(
            "/outbox/action",
            &[
                ("csrf", &page.csrf()),
                ("action", "requeue"),
                ("id", &id.to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(env.outbox_dead().await, 0);
    assert_eq!(env.relay().await, 1);
    assert_eq!(env.stream_len().await, before + 1, "published to the bus");
    let page = c.get(r.location()).await;
    assert!(page.body.contains("requeue: 1 done"));
    assert!(!page.body.contains(&id.to_string()));
    // Requeueing it again: no longer dead.
    let r = c
        .post(
            "/outbox/action",
            &[
                ("csrf", &page.csrf()),
                ("action", "requeue"),
                ("id", &id.to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    env.stop().await;
}

#[tokio::test]
async fn a_dead_letter_redriven_from_the_console_is_handled() {
    let env = Env::start().await;
    let entry = env.dead_letter("acme", "redrive me").await;
    let mut c = Client::new(env.console(Env::config()).router());
    c.login("").await;
    let page = c.get("/bus/dlq?topic=orders").await;
    assert!(
        page.body.contains(&entry) && page.body.contains("billing refused"),
        "{}",
        page.body
    );
    env.reject.store(false, std::sync::atomic::Ordering::SeqCst);
    let r = c
        .post(
            "/bus/redrive",
            &[("csrf", &page.csrf()), ("topic", "orders"), ("id", &entry)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while env.handled.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the redriven event was never handled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Twice is refused (the entry stays in the DLQ: the bus cannot delete it yet).
    let r = c
        .post(
            "/bus/redrive",
            &[("csrf", &page.csrf()), ("topic", "orders"), ("id", &entry)],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    env.stop().await;
}

#[tokio::test]
async fn queues_pause_and_resume_and_read_only_refuses_actions() {
    let env = Env::start().await;
    let mut c = Client::new(env.console(Env::config()).router());
    c.login("").await;
    let csrf = c.get("/").await.csrf();
    let r = c
        .post(
            "/queues/action",
            &[("csrf", &csrf), ("queue", "critical"), ("action", "pause")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        env.jobs.store().paused_queues().await.unwrap(),
        vec!["critical".to_owned()]
    );
    let overview = c.get("/").await;
    assert!(overview.body.contains("paused"));
    let r = c
        .post(
            "/queues/action",
            &[("csrf", &csrf), ("queue", "critical"), ("action", "resume")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(env.jobs.store().paused_queues().await.unwrap().is_empty());

    let id = env.scheduled_job("acme", "").await;
    let mut ro = Client::new(env.console(Env::config().read_only(true)).router());
    ro.login("").await;
    let page = ro.get("/jobs").await;
    assert!(page.body.contains("read-only"));
    assert!(
        !page.body.contains("value=\"retry\""),
        "no action buttons in read-only mode"
    );
    let csrf = page.csrf();
    let r = ro
        .post(
            "/jobs/action",
            &[
                ("csrf", &csrf),
                ("action", "cancel"),
                ("id", &id.to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("read-only"));
    assert_eq!(
        env.jobs.get(id).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    // Logging out still works in read-only mode.
    let r = ro.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(ro.cookie.is_none());
    assert_eq!(ro.get("/").await.status, StatusCode::UNAUTHORIZED);
    env.stop().await;
}

#[tokio::test]
async fn job_list_filters_and_keyset_pages() {
    let env = Env::start().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            env.scheduled_job(
                if i % 2 == 0 { "acme" } else { "globex" },
                &format!("needle-{i}"),
            )
            .await,
        );
    }
    let mut c = Client::new(env.console(Env::config()).router());
    c.login("").await;
    // Page through acme's scheduled jobs two at a time: 4 jobs, pages of 2, 2.
    let mut seen = Vec::new();
    let mut path = "/jobs?state=scheduled&org=acme&limit=2".to_owned();
    loop {
        let page = c.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for (i, id) in ids.iter().enumerate() {
            if page.body.contains(&format!("href=\"/jobs/{id}\"")) {
                assert_eq!(i % 2, 0, "only acme's jobs");
                seen.push(*id);
            }
        }
        match page.body.find("rel=\"next\" href=\"") {
            Some(at) => {
                let rest = &page.body[at + "rel=\"next\" href=\"".len()..];
                path = rest[..rest.find('"').unwrap()].replace("&amp;", "&");
            }
            None => break,
        }
    }
    assert_eq!(seen, vec![ids[0], ids[2], ids[4], ids[6]]);
    // Text in args.
    let page = c.get("/jobs?q=needle-3").await;
    assert!(page.body.contains(&format!("href=\"/jobs/{}\"", ids[3])));
    assert!(!page.body.contains(&format!("href=\"/jobs/{}\"", ids[2])));
    assert!(page.body.contains("Text search scanned"));
    // Cron page renders (no schedules registered).
    assert_eq!(c.get("/cron").await.status, StatusCode::OK);
    env.stop().await;
}

#[tokio::test]
async fn overview_shows_depths_outbox_bus_and_cache() {
    let env = Env::start().await;
    env.failing_job("acme", "boom", "").await;
    env.scheduled_job("acme", "").await;
    env.dead_outbox_event("acme").await;
    let cache = windlass_cache::Cache::memory();
    let entry = cache
        .entry::<u32>(
            "invoice",
            windlass_cache::TypePolicy::ttl(std::time::Duration::from_secs(60)),
        )
        .unwrap();
    let org = OrgId::new("acme").unwrap();
    entry.set(&org, "1", &7, &[]).await.unwrap();
    entry.get(&org, "1").await.unwrap();
    entry.get(&org, "2").await.unwrap();
    let console: Console = env
        .console(Env::config())
        .cache(windlass_admin::CacheApi::new(cache));
    let mut c = Client::new(console.router());
    c.login("").await;
    let page = c.get("/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let b = &page.body;
    assert!(
        b.contains("id=\"queues\"") && b.contains(">default<"),
        "{b}"
    );
    assert!(b.contains("(all topics)"), "outbox section");
    assert!(b.contains("billing"), "bus groups");
    assert!(
        b.contains("invoice") && b.contains("50.0%"),
        "cache hit ratio: {b}"
    );
    env.stop().await;
}
