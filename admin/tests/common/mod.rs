//! What the console tests share: a real Postgres database and Redis prefix with jobs, outbox
//! and bus wired up, a worker running a job that fails on demand, and an HTTP client for the
//! router (in process) that keeps the session cookie and reads CSRF tokens from pages.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use uuid::Uuid;
use windlass_admin::{
    BusApi, Console, ConsoleConfig, CookieSecurity, JobsApi, OutboxApi, OutboxDelivery, TenantScope,
};
use windlass_core::{Group, Topic};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{
    Event, HandlerError, Publisher, SubscribeOptions, Subscriber, Subscription, handler_fn,
};
use windlass_jobs::{
    EnqueueOptions, Job, JobContext, JobError, JobId, JobState, Jobs, RunningWorker, Worker,
    WorkerConfig,
};
use windlass_outbox::postgres::{Outbox, PgOutboxStore};
use windlass_outbox::{OutboxAdmin, Relay};
use windlass_testkit::postgres::TestDatabase;
use windlass_testkit::redis::TestRedis;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A job that fails its attempts before `succeed_from` with `message`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Flaky {
    pub succeed_from: u32,
    pub message: String,
    #[serde(default)]
    pub note: String,
}

impl Job for Flaky {
    const KIND: &'static str = "flaky";
    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        if ctx.attempt() < self.succeed_from {
            return Err(JobError::retry(self.message.clone()));
        }
        Ok(())
    }
}

/// A publisher whose every publish fails permanently (so outbox rows go dead at once).
pub struct Refusing;

#[async_trait]
impl Publisher for Refusing {
    async fn publish(&self, _topic: &Topic, _event: &Event) -> windlass_eventbus::Result<()> {
        Err(windlass_eventbus::Error::Config(
            "destination refuses <b>everything</b>".into(),
        ))
    }
}

pub struct Env {
    pub db: TestDatabase,
    pub redis: TestRedis,
    pub jobs: Jobs,
    pub outbox_store: PgOutboxStore,
    pub outbox: Outbox,
    pub bus: Arc<RedisBus>,
    pub topic: Topic,
    pub worker: Option<RunningWorker>,
    /// While true, the DLQ topic's handler rejects every event.
    pub reject: Arc<AtomicBool>,
    /// Events the DLQ topic's handler acknowledged.
    pub handled: Arc<AtomicUsize>,
    pub subscription: Option<Subscription>,
}

impl Env {
    pub async fn start() -> Self {
        let db = windlass_testkit::postgres::fresh_database().await;
        let redis = windlass_testkit::redis::fresh_prefix().await;
        windlass_jobs::postgres::migrate(&db.pool).await.unwrap();
        windlass_outbox::postgres::migrate(&db.pool).await.unwrap();
        let jobs = Jobs::new(windlass_jobs::postgres::PgJobStore::new(db.pool.clone()));
        let outbox_store = PgOutboxStore::new(db.pool.clone());
        let outbox = Outbox::new();
        let bus = Arc::new(
            RedisBus::connect(RedisConfig::new(redis.url.clone()).prefix(redis.prefix.clone()))
                .await
                .unwrap(),
        );
        let worker = Worker::new(jobs.store().clone())
            .register::<Flaky>()
            .config(
                WorkerConfig::default()
                    .queues([("default", 4), ("critical", 2)])
                    .poll_interval(Duration::from_millis(200))
                    // The overview reads the count snapshot: recount it often in tests.
                    .counts_interval(Some(Duration::from_millis(200))),
            )
            .start()
            .unwrap();
        let topic = Topic::new("orders").unwrap();
        let reject = Arc::new(AtomicBool::new(true));
        let handled = Arc::new(AtomicUsize::new(0));
        let (r, h) = (reject.clone(), handled.clone());
        let subscription = bus
            .subscribe(
                &topic,
                &Group::new("billing").unwrap(),
                Arc::new(handler_fn(move |_event, _ctx| {
                    let (r, h) = (r.clone(), h.clone());
                    async move {
                        if r.load(Ordering::SeqCst) {
                            return Err(HandlerError::reject("billing refused <i>it</i>"));
                        }
                        h.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                })),
                SubscribeOptions::default(),
            )
            .await
            .unwrap();
        Self {
            db,
            redis,
            jobs,
            outbox_store,
            outbox,
            bus,
            topic,
            worker: Some(worker),
            reject,
            handled,
            subscription: Some(subscription),
        }
    }

    pub fn config() -> ConsoleConfig {
        ConsoleConfig::default()
            .token(TOKEN)
            .unwrap()
            .cookie_security(CookieSecurity::Never)
    }

    /// A console on this environment's jobs, outbox and bus.
    pub fn console(&self, config: ConsoleConfig) -> Console {
        Console::new(config)
            .jobs(JobsApi::new(self.jobs.clone()).sample_every(Duration::from_millis(500)))
            .outbox(OutboxApi::new(self.outbox_store.clone()))
            .bus(
                BusApi::new(self.bus.clone())
                    .group(self.topic.clone(), Group::new("billing").unwrap()),
            )
    }

    /// Enqueues a job that fails once with `message` and has one attempt: it is discarded.
    pub async fn failing_job(&self, org: &str, message: &str, args_note: &str) -> JobId {
        let id = self
            .jobs
            .enqueue(
                &Flaky {
                    succeed_from: 2,
                    message: message.into(),
                    note: args_note.into(),
                },
                &EnqueueOptions::new().org_id(org).max_attempts(1),
            )
            .await
            .unwrap()
            .id()
            .unwrap();
        self.wait_state(id, JobState::Discarded).await;
        id
    }

    /// A job that waits far in the future (scheduled), of tenant `org`.
    pub async fn scheduled_job(&self, org: &str, note: &str) -> JobId {
        self.jobs
            .enqueue(
                &Flaky {
                    succeed_from: 0,
                    message: String::new(),
                    note: note.into(),
                },
                &EnqueueOptions::new()
                    .org_id(org)
                    .delay(Duration::from_secs(3600)),
            )
            .await
            .unwrap()
            .id()
            .unwrap()
    }

    pub async fn wait_state(&self, id: JobId, state: JobState) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.jobs.get(id).await.unwrap().unwrap();
            if job.state == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} stayed {:?}, expected {state:?}",
                job.state
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Enqueues an event of tenant `org` and lets a refusing destination kill it.
    pub async fn dead_outbox_event(&self, org: &str) -> OutboxDelivery {
        // A key of its own: under the block policy a second dead row on one key would wait
        // behind the first instead of being tried.
        self.dead_outbox_event_on(org, &format!("ord-{}", Uuid::new_v4()))
            .await
    }

    /// Enqueues one outbox event of tenant `org` on ordering key `key`; returns its seq.
    pub async fn outbox_event(&self, org: &str, key: &str) -> i64 {
        let event = Event::builder("/shop", "order.placed")
            .org_id(org)
            .partition_key(key)
            .data_json(&serde_json::json!({"note": "<script>alert('outbox')</script>"}))
            .build()
            .unwrap();
        let mut tx = self.db.pool.begin().await.unwrap();
        let seq = self
            .outbox
            .enqueue(&mut tx, &self.topic, &event)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        seq
    }

    /// Like [`Env::dead_outbox_event`], on ordering key `key`.
    pub async fn dead_outbox_event_on(&self, org: &str, key: &str) -> OutboxDelivery {
        let seq = self.outbox_event(org, key).await;
        let round = Relay::new(self.outbox_store.clone(), Refusing)
            .run_once()
            .await
            .unwrap();
        assert_eq!(round.dead, 1, "the refusing destination kills the row");
        // The counters the console reads (a running relay's maintenance leader keeps them).
        windlass_outbox::OutboxMaintenance::refresh_stats(&self.outbox_store)
            .await
            .unwrap();
        OutboxDelivery {
            seq,
            destination: windlass_outbox::DEFAULT_DESTINATION.to_owned(),
        }
    }

    /// Relays pending outbox rows to the Redis bus; returns how many were published.
    pub async fn relay(&self) -> usize {
        Relay::new(self.outbox_store.clone(), self.bus.clone())
            .run_once()
            .await
            .unwrap()
            .published
    }

    /// Publishes an event of tenant `org` that the handler rejects into the DLQ; returns the
    /// DLQ entry id.
    pub async fn dead_letter(&self, org: &str, note: &str) -> String {
        use windlass_eventbus::DeadLetters;
        let before = self
            .bus
            .dead_letters(&self.topic, 10_000)
            .await
            .unwrap()
            .len();
        let event = Event::builder("/shop", "order.placed")
            .org_id(org)
            .data_json(&serde_json::json!({ "note": note }))
            .build()
            .unwrap();
        self.bus.publish(&self.topic, &event).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let letters = self.bus.dead_letters(&self.topic, 10_000).await.unwrap();
            if letters.len() > before {
                return letters.last().unwrap().id.clone();
            }
            assert!(Instant::now() < deadline, "event never reached the DLQ");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Entries of the topic's streams, every partition (what the outbox relay published there).
    pub async fn stream_len(&self) -> usize {
        let mut conn = self.redis.conn.clone();
        let mut total = 0;
        for key in self.bus.stream_keys(&self.topic).await.unwrap() {
            let n: usize = redis::cmd("XLEN")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            total += n;
        }
        total
    }

    pub async fn outbox_dead(&self) -> usize {
        self.outbox_store
            .list_dead(
                &TenantScope::All,
                &Default::default(),
                None,
                windlass_outbox::MAX_PAGE,
            )
            .await
            .unwrap()
            .items
            .len()
    }

    pub async fn stop(mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown().await.unwrap();
        }
        if let Some(s) = self.subscription.take() {
            s.shutdown().await.unwrap();
        }
    }
}

/// A response, its body read.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// The CSRF token of the first form on the page.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field on the page:\n{}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    pub fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// An in-process HTTP client of a router.
pub struct Client {
    pub router: Router,
    pub cookie: Option<String>,
    /// Extra headers on every request.
    pub headers: Vec<(String, String)>,
}

impl Client {
    pub fn new(router: Router) -> Self {
        Self {
            router,
            cookie: None,
            headers: vec![("host".into(), "console.test".into())],
        }
    }

    pub async fn send(&mut self, req: Request<Body>) -> Page {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        if let Some(c) = headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
        {
            let pair = c.split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    fn builder(&self, method: &str, path: &str) -> axum::http::request::Builder {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        if let Some(c) = &self.cookie {
            b = b.header(header::COOKIE, c.as_str());
        }
        b
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let req = self.builder("GET", path).body(Body::empty()).unwrap();
        self.send(req).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let req = self
            .builder("POST", path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }

    /// Logs in with the token form; panics unless it works.
    pub async fn login(&mut self, prefix: &str) {
        let page = self
            .post(&format!("{prefix}/login"), &[("token", TOKEN)])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert!(self.cookie.is_some(), "login sets the session cookie");
    }
}
