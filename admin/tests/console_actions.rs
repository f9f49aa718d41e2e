//! The console's actions over HTTP (in process, through the router), against real Postgres and
//! Redis: retry to completion, bulk cancel / discard, requeue then publish, redrive then handle,
//! pause / resume, read-only mode, filters and keyset paging, the overview's sections.

mod common;

use axum::http::StatusCode;
use common::{Client, Env};
use windlass_admin::Console;
use windlass_core::OrgId;
use windlass_jobs::JobState;

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
                ("delivery", &id.to_string()),
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
                ("delivery", &id.to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    env.stop().await;
}

/// A key whose head died blocks the rows behind it: the outbox page lists it with what waits
/// (to its own tenant only), and requeueing the head from there lets the whole key go out.
#[tokio::test]
async fn a_blocked_outbox_key_is_listed_and_unblocked_by_requeueing_its_head() {
    let env = Env::start().await;
    let key = format!("ord-{}", uuid::Uuid::new_v4());
    let head = env.dead_outbox_event_on("acme", &key).await;
    env.outbox_event("acme", &key).await;
    env.outbox_event("acme", &key).await;
    assert_eq!(env.relay().await, 0, "the rows behind the dead head wait");
    let mut c = Client::new(env.console(Env::config()).router());
    c.login("").await;
    let page = c.get("/outbox").await;
    let row = format!("id=\"blocked-{}-{}\"", head.seq, head.destination);
    let at = page
        .body
        .find(&row)
        .unwrap_or_else(|| panic!("no blocked key row:\n{}", page.body));
    let tr = &page.body[at..at + page.body[at..].find("</tr>").unwrap()];
    assert!(
        tr.contains(&key) && tr.contains(">2<"),
        "key and the 2 waiting rows: {tr}"
    );
    assert!(tr.contains("destination refuses"), "the head's error: {tr}");
    // Another tenant's console does not see it.
    let other = windlass_core::TenantScope::org(OrgId::new("globex").unwrap());
    let mut o = Client::new(env.console(Env::config().scope(other)).router());
    o.login("").await;
    let theirs = o.get("/outbox").await;
    assert!(!theirs.body.contains(&key), "{}", theirs.body);
    assert!(theirs.body.contains("No blocked keys."));
    // Requeue the head from the blocked-keys row: the key flows again, in order.
    let before = env.stream_len().await;
    let r = c
        .post(
            "/outbox/action",
            &[
                ("csrf", &page.csrf()),
                ("action", "requeue"),
                ("delivery", &head.to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(env.relay().await, 3);
    assert_eq!(env.stream_len().await, before + 3);
    let page = c.get("/outbox").await;
    assert!(!page.body.contains(&key), "still listed as blocked");
    assert!(page.body.contains("No blocked keys."));
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
    // Twice is refused: the redrive moved the entry out of the DLQ (atomically), so it is
    // no longer a dead letter.
    let r = c
        .post(
            "/bus/redrive",
            &[("csrf", &page.csrf()), ("topic", "orders"), ("id", &entry)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
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
    // A queue's global concurrency limit shows on its row, even with no job in it.
    env.jobs.set_global_limit("bulk", Some(4)).await.unwrap();
    let overview = c.get("/").await;
    let at = overview
        .body
        .find("href=\"/jobs?queue=bulk\"")
        .unwrap_or_else(|| panic!("no row for the limited queue:\n{}", overview.body));
    let row = &overview.body[at..at + overview.body[at..].find("</tr>").unwrap()];
    assert!(row.contains("limit 4"), "{row}");

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
                ("delivery", &id.to_string()),
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
    assert!(page.body.contains("Text search without an index scanned"));
    // With the opt-in args index the store answers it, and the page says so.
    windlass_jobs::postgres::create_args_search_index(&env.db.pool)
        .await
        .unwrap();
    let page = c.get("/jobs?q=needle-3").await;
    assert!(page.body.contains(&format!("href=\"/jobs/{}\"", ids[3])));
    assert!(!page.body.contains(&format!("href=\"/jobs/{}\"", ids[2])));
    assert!(page.body.contains("through the args trigram index"));
    assert!(!page.body.contains("without an index"));
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
    entry.set::<&str>(&org, "1", &7, &[]).await.unwrap();
    entry.get(&org, "1").await.unwrap();
    entry.get(&org, "2").await.unwrap();
    let console: Console = env
        .console(Env::config())
        .cache(windlass_admin::CacheApi::new(cache));
    let mut c = Client::new(console.router());
    c.login("").await;
    // The counts are the snapshot the jobs maintenance leader recounts; recount now.
    env.jobs.refresh_counts().await.unwrap();
    let page = c.get("/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let b = &page.body;
    assert!(
        b.contains("id=\"queues\"") && b.contains(">default<"),
        "{b}"
    );
    assert!(
        b.contains("Counts as of ") && b.contains("the last recount took"),
        "the page says how fresh the counts are: {b}"
    );
    // The scheduled job is counted (the failing one may be retryable or discarded by now).
    let snapshot = env.jobs.count_snapshot().await.unwrap();
    assert_eq!(snapshot.count("default", JobState::Scheduled), 1);
    assert!(
        b.contains("<td>orders</td><td>default</td>"),
        "outbox section, per topic and destination: {b}"
    );
    assert!(b.contains("billing"), "bus groups");
    assert!(
        b.contains("invoice") && b.contains("50.0%"),
        "cache hit ratio: {b}"
    );
    env.stop().await;
}
