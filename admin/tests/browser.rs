//! The console in a real browser: headless Chromium driven over WebDriver (chromedriver, started
//! here on a spare port, one fresh profile per test), against real Postgres and Redis.
//! `scripts/ensure-chromium` installs both; `WINDLASS_CHROMIUM` / `WINDLASS_CHROMEDRIVER`
//! point elsewhere. The first test saves screenshots of the main pages to `docs/screenshots/`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Env, Flaky, TOKEN};
use fantoccini::{Client, ClientBuilder, Locator};
use windlass_admin::{BusApi, Console, ConsoleConfig, JobsApi, OutboxApi, TenantScope};
use windlass_core::{Group, OrgId};
use windlass_jobs::{CronJob, EnqueueOptions, JobState};

const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1360,1000",
];

struct Browser {
    client: Client,
    driver: tokio::process::Child,
    profile: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    async fn start() -> Self {
        let chromium =
            std::env::var("WINDLASS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let driver_bin = std::env::var("WINDLASS_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        for bin in [&chromium, &driver_bin] {
            assert!(
                std::path::Path::new(bin).exists(),
                "\n\n{bin} is missing: the browser tests need Chromium and chromedriver.\n  \
                 Run scripts/ensure-chromium (Debian: apt-get install chromium chromium-driver),\n  \
                 or set WINDLASS_CHROMIUM and WINDLASS_CHROMEDRIVER.\n"
            );
        }
        let port = free_port();
        let driver = tokio::process::Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let profile =
            std::env::temp_dir().join(format!("windlass-chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).unwrap();
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": args }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            let mut b =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            match b.capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "chromedriver never answered: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Self {
            client,
            driver,
            profile,
        }
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }

    async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// Reloads `url` until its source contains `text`.
    async fn until(&self, url: &str, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.client.goto(url).await.unwrap();
            let src = self.source().await;
            if src.contains(text) {
                return src;
            }
            assert!(
                Instant::now() < deadline,
                "{url} never showed {text:?}:\n{src}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Accepts the confirmation prompt of a `data-confirm` button.
    async fn accept(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.client.accept_alert().await.is_err() {
            assert!(Instant::now() < deadline, "no confirmation prompt");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn login(&self, base: &str) {
        self.client.goto(&format!("{base}/login")).await.unwrap();
        self.client
            .find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys(TOKEN)
            .await
            .unwrap();
        self.click("button[type=submit]").await;
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css("#queues"))
            .await
            .expect("the overview after logging in");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// The HTTP status the browser got for the page it shows (Navigation Timing).
    async fn status(&self) -> u64 {
        let v = self
            .client
            .execute(
                "return performance.getEntriesByType('navigation')[0].responseStatus;",
                vec![],
            )
            .await
            .unwrap();
        v.as_u64()
            .unwrap_or_else(|| panic!("no response status: {v}"))
    }
}

async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn console(env: &Env, config: ConsoleConfig) -> Console {
    let nightly = CronJob::new(
        "nightly-digest",
        "0 3 * * *",
        &Flaky {
            succeed_from: 0,
            message: String::new(),
            note: String::new(),
        },
        &EnqueueOptions::new().queue("low"),
    )
    .unwrap();
    Console::new(config)
        .jobs(
            JobsApi::new(env.jobs.clone())
                .cron_job(nightly)
                .sample_every(Duration::from_millis(500)),
        )
        .outbox(OutboxApi::new(env.outbox_store.clone()))
        .bus(BusApi::new(env.bus.clone()).group(env.topic.clone(), Group::new("billing").unwrap()))
}

/// A cache with some lookups behind it, so the overview's cache section has figures.
async fn busy_cache() -> windlass_cache::Cache {
    let cache = windlass_cache::Cache::memory();
    let org = OrgId::new("acme").unwrap();
    for (ty, keys, lookups) in [("invoice", 8, 40), ("customer", 3, 12)] {
        let e = cache
            .entry::<u32>(
                ty,
                windlass_cache::TypePolicy::ttl(Duration::from_secs(600)),
            )
            .unwrap();
        for k in 0..keys {
            e.set::<&str>(&org, &k.to_string(), &k, &[]).await.unwrap();
        }
        for i in 0..lookups {
            e.get(&org, &(i % 10).to_string()).await.unwrap();
        }
    }
    cache
}

#[tokio::test]
async fn log_in_retry_a_failed_job_requeue_and_redrive() {
    let env = Env::start().await;
    let failed = env
        .failing_job("acme", "card declined by the bank", "")
        .await;
    let dead = env.dead_outbox_event("acme").await;
    let letter = env.dead_letter("acme", "refused by billing").await;
    let console =
        console(&env, Env::config()).cache(windlass_admin::CacheApi::new(busy_cache().await));
    let addr = serve(axum::Router::new().nest("/admin", console.router())).await;
    let base = format!("http://{addr}/admin");
    let b = Browser::start().await;

    // Log in; the overview starts sampling throughput; some quick jobs give it something to show.
    b.login(&base).await;
    for i in 0..40 {
        env.jobs
            .enqueue(
                &Flaky {
                    succeed_from: if i % 8 == 0 { 9 } else { 0 },
                    message: "timeout talking to the mail server".into(),
                    note: format!("mail-{i}"),
                },
                &EnqueueOptions::new().org_id("acme").max_attempts(1),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    b.until(&base, " completed, ").await;

    // The failed job and its error.
    b.client
        .goto(&format!("{base}/jobs?state=discarded"))
        .await
        .unwrap();
    let src = b.source().await;
    assert!(src.contains("card declined by the bank"), "{src}");
    b.screenshot("jobs").await;
    b.click(&format!("a[href='/admin/jobs/{failed}']")).await;
    b.client
        .wait()
        .for_element(Locator::Css("pre.error"))
        .await
        .unwrap();
    assert!(b.source().await.contains("card declined by the bank"));
    b.screenshot("job-detail").await;
    // Retry: it runs again and completes.
    b.click("button[value=retry]").await;
    b.client
        .wait()
        .for_element(Locator::Css(".notice"))
        .await
        .unwrap();
    env.wait_state(failed, JobState::Completed).await;
    let src = b
        .until(&format!("{base}/jobs/{failed}"), "state completed")
        .await;
    assert!(
        src.contains("card declined by the bank"),
        "the old error stays in the history"
    );

    // Outbox: requeue the dead event, a relay publishes it.
    let relay = windlass_outbox::Relay::new(env.outbox_store.clone(), env.bus.clone()).spawn();
    let before = env.stream_len().await;
    b.client.goto(&format!("{base}/outbox")).await.unwrap();
    assert!(b.source().await.contains(&dead.to_string()));
    b.screenshot("outbox").await;
    b.click(&format!(
        "#dead-{}-{} button[value=requeue]",
        dead.seq, dead.destination
    ))
    .await;
    b.client
        .wait()
        .for_element(Locator::Css(".notice"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.stream_len().await <= before {
        assert!(
            Instant::now() < deadline,
            "the requeued event was never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let src = b.until(&format!("{base}/outbox"), "No dead events.").await;
    assert!(!src.contains(&dead.to_string()));
    relay.shutdown().await;

    // Bus: redrive the dead letter; the (now healthy) handler gets it.
    env.reject.store(false, Ordering::SeqCst);
    b.client
        .goto(&format!("{base}/bus/dlq?topic=orders"))
        .await
        .unwrap();
    assert!(b.source().await.contains(&letter));
    b.screenshot("dead-letters").await;
    b.click("button[value=redrive]").await;
    b.accept().await;
    b.client
        .wait()
        .for_element(Locator::Css(".notice"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.handled.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the redriven event was never handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The remaining pages, for the docs.
    b.client.goto(&format!("{base}/cron")).await.unwrap();
    assert!(b.source().await.contains("nightly-digest"));
    b.screenshot("cron").await;
    b.until(&base, " completed, ").await;
    b.screenshot("overview").await;
    b.stop().await;
    env.stop().await;
}

#[tokio::test]
async fn unauthenticated_and_cross_site_requests_are_refused() {
    let env = Env::start().await;
    let job = env.scheduled_job("acme", "").await;
    let addr = serve(console(&env, Env::config()).router()).await;
    let base = format!("http://127.0.0.1:{}", addr.port());
    // Another site (localhost is not 127.0.0.1's site) with a form that posts to the console.
    let attack = format!(
        "<!doctype html><form id=f method=post action='{base}/jobs/action'>\
         <input name=action value=cancel><input name=id value={job}><input name=csrf value=guess></form>\
         <script>document.getElementById('f').submit()</script>"
    );
    let evil = serve(axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let a = attack.clone();
            async move { axum::response::Html(a) }
        }),
    ))
    .await;
    let b = Browser::start().await;

    for path in ["/jobs", "/", "/outbox", "/bus/dlq?topic=orders"] {
        b.client.goto(&format!("{base}{path}")).await.unwrap();
        assert_eq!(b.status().await, 401, "{path}");
        assert!(
            b.source().await.contains("Access token"),
            "the login form instead of {path}"
        );
    }
    b.screenshot("login").await;

    b.login(&base).await;
    b.client
        .goto(&format!("http://localhost:{}/", evil.port()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = b.client.current_url().await.unwrap();
        if url.as_str().starts_with(&base) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the attacking form never submitted ({url})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = b.status().await;
    assert!(
        status == 401 || status == 403,
        "the cross-site post got {status}"
    );
    assert_eq!(
        env.jobs.get(job).await.unwrap().unwrap().state,
        JobState::Scheduled,
        "the cross-site post changed nothing"
    );
    b.stop().await;
    env.stop().await;
}

#[tokio::test]
async fn a_tenant_console_hides_other_tenants_and_injected_scripts_stay_inert() {
    let env = Env::start().await;
    let payload =
        "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";
    let mine = env.failing_job("acme", payload, payload).await;
    let theirs = env
        .failing_job("globex", "globex private failure", "globex")
        .await;
    env.dead_letter("acme", payload).await;
    let config = Env::config().scope(TenantScope::org(OrgId::new("acme").unwrap()));
    let addr = serve(console(&env, config).router()).await;
    let base = format!("http://{addr}");
    let b = Browser::start().await;
    b.login(&base).await;

    for path in [
        "/jobs",
        &format!("/jobs/{mine}"),
        "/bus/dlq?topic=orders",
        "/outbox",
        "/",
    ] {
        b.client.goto(&format!("{base}{path}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let title = b.client.title().await.unwrap();
        assert_ne!(title, "pwned", "a script from user data ran on {path}");
        assert!(
            b.client.get_alert_text().await.is_err(),
            "an alert opened on {path}"
        );
        let src = b.source().await;
        assert!(
            !src.contains("globex"),
            "{path} shows another tenant's data"
        );
    }
    b.client.goto(&format!("{base}/jobs/{mine}")).await.unwrap();
    let text = b
        .client
        .find(Locator::Css("pre.error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("<script>document.title='pwned'</script>"),
        "shown as text: {text}"
    );
    b.client
        .goto(&format!("{base}/jobs/{theirs}"))
        .await
        .unwrap();
    assert!(
        b.source().await.contains("404"),
        "another tenant's job is unknown"
    );
    b.stop().await;
    env.stop().await;
}
