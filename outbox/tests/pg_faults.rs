//! Fault injection against real Postgres (and Redis): relays killed between publish and mark,
//! connections terminated mid-batch, several relays with a crash among them.
#![cfg(feature = "postgres")]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{Counting, Recorder, event, eventually};
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, mpsc};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{
    Event, Group, HandlerResult, MemoryBus, Publisher, SubscribeOptions, Subscriber, Topic,
};
use windlass_outbox::postgres::{Inbox, Outbox, PgStore, migrate};
use windlass_outbox::{OutboxConfig, OutboxStore, Relay, RelayOptions};
use windlass_testkit::postgres::fresh_database;

/// Publishes its first batch through `inner`, reports it, then hangs (never returns): the
/// relay is "between publish and mark".
struct StallAfterPublish<P> {
    inner: P,
    stalled: AtomicBool,
    published: mpsc::UnboundedSender<usize>,
}

#[async_trait]
impl<P: Publisher> Publisher for StallAfterPublish<P> {
    async fn publish(&self, topic: &Topic, event: &Event) -> windlass_eventbus::Result<()> {
        self.publish_batch(topic, std::slice::from_ref(event)).await
    }
    async fn publish_batch(
        &self,
        topic: &Topic,
        events: &[Event],
    ) -> windlass_eventbus::Result<()> {
        self.inner.publish_batch(topic, events).await?;
        if !self.stalled.swap(true, Ordering::SeqCst) {
            let _ = self.published.send(events.len());
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

async fn projection(pool: &PgPool) {
    sqlx::query("CREATE TABLE projection (id text PRIMARY KEY, applied int NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

/// The consumer's work: one projection row per event; `applied` counts applications.
fn apply<'c>(tx: &'c mut PgConnection, event: &'c Event) -> BoxFuture<'c, HandlerResult> {
    Box::pin(async move {
        sqlx::query(
            "INSERT INTO projection VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET applied = projection.applied + 1",
        )
        .bind(event.id())
        .execute(tx)
        .await?;
        Ok(())
    })
}

async fn applied(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), coalesce(max(applied), 0)::bigint FROM projection")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn enqueue_all(pool: &PgPool, n: u64) -> Vec<String> {
    let outbox = Outbox::default();
    let mut ids = Vec::new();
    for i in 0..n {
        let mut tx = pool.begin().await.unwrap();
        let ev = event(&format!("k{}", i % 5), i);
        outbox.enqueue(&mut tx, "orders", &ev).await.unwrap();
        tx.commit().await.unwrap();
        ids.push(ev.id().to_owned());
    }
    ids
}

/// Subscribes the inbox-wrapped projection to `topic` on `bus`; returns the ack counter.
async fn consume<S: Subscriber>(
    bus: &S,
    pool: &PgPool,
    topic: &Topic,
) -> (windlass_eventbus::Subscription, Arc<AtomicUsize>) {
    let acked = Arc::new(AtomicUsize::new(0));
    let handler = Inbox::new(pool.clone(), "projection")
        .unwrap()
        .handler(apply);
    let sub = bus
        .subscribe(
            topic,
            &Group::new("projection").unwrap(),
            Arc::new(Counting::new(handler, acked.clone())),
            SubscribeOptions::default().retry(
                windlass_eventbus::RetryPolicy::default()
                    .with_delays(Duration::from_millis(10), Duration::from_millis(100)),
            ),
        )
        .await
        .unwrap();
    (sub, acked)
}

#[tokio::test]
async fn relay_aborted_between_publish_and_mark_republishes_and_the_inbox_drops_duplicates() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    projection(&db.pool).await;
    let bus = MemoryBus::new();
    let topic = Topic::new("orders").unwrap();
    let (sub, acked) = consume(&bus, &db.pool, &topic).await;
    let ids = enqueue_all(&db.pool, 40).await;

    // Relay 1 (its own pool, like its own process) publishes a batch and is aborted before
    // it marks the rows.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stalling = StallAfterPublish {
        inner: bus.clone(),
        stalled: AtomicBool::new(false),
        published: tx,
    };
    let store1 = PgStore::new(db.new_pool(2).await, OutboxConfig::default()).unwrap();
    let relay1 = Relay::new(store1, stalling).spawn();
    let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0);
    relay1.abort().await;

    // Nothing was marked: every row is still pending.
    let store = PgStore::new(db.pool.clone(), OutboxConfig::default()).unwrap();
    assert_eq!(store.stats().await.unwrap().pending, 40);

    // Relay 2 publishes everything again.
    let relay2 = Relay::new(store.clone(), bus.clone())
        .with_options(RelayOptions::default().poll_interval(Duration::from_millis(50)))
        .spawn();
    eventually(20, "every event applied", || async {
        applied(&db.pool).await.0 == 40
    })
    .await;
    eventually(20, "every delivery acknowledged", || async {
        acked.load(Ordering::SeqCst) == 40 + n
    })
    .await;
    relay2.shutdown().await;
    sub.shutdown().await.unwrap();
    assert_eq!(bus.len(&topic), 40 + n, "the stalled batch went out twice");
    assert_eq!(
        applied(&db.pool).await,
        (40, 1),
        "each committed event handled exactly once"
    );
    let projected: HashSet<String> = sqlx::query_scalar("SELECT id FROM projection")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(projected, ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(store.stats().await.unwrap().pending, 0);
}

#[tokio::test]
async fn relay_process_killed_with_sigkill_after_publish_is_republished_exactly_once_through_redis()
{
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    projection(&db.pool).await;
    let redis = windlass_testkit::redis::fresh_prefix().await;
    let bus = RedisBus::connect(RedisConfig::new(redis.url.as_str()).prefix(redis.prefix.as_str()))
        .await
        .unwrap();
    let topic = Topic::new("orders").unwrap();
    let (sub, acked) = consume(&bus, &db.pool, &topic).await;
    let ids = enqueue_all(&db.pool, 30).await;

    // The example binary, built next to this test by `cargo test`.
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("relay_process");
    if !bin.exists() {
        // Runners that build test targets only: build the example now.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "windlass-outbox",
                "--features",
                "postgres",
                "--example",
                "relay_process",
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "building the relay_process example failed"
        );
    }
    assert!(bin.exists(), "{} missing", bin.display());
    let spawn = |stall: bool| {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg(&db.url).arg(&redis.url).arg(&redis.prefix);
        if stall {
            cmd.arg("--stall-after-publish");
        }
        cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true);
        cmd.spawn().unwrap()
    };
    let mut child = spawn(true);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let n: usize = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(n) = line.strip_prefix("PUBLISHED ") {
                return n.parse().unwrap();
            }
        }
        panic!("relay_process exited before publishing");
    })
    .await
    .expect("relay_process published in time");
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success());
    let store = PgStore::new(db.pool.clone(), OutboxConfig::default()).unwrap();
    eventually(
        10,
        "the killed relay's claim is released, rows pending",
        || async { store.stats().await.unwrap().pending == 30 },
    )
    .await;

    // Restart the process without the stall: it publishes everything again.
    let mut child = spawn(false);
    eventually(30, "every event applied", || async {
        applied(&db.pool).await.0 == 30
    })
    .await;
    eventually(30, "every delivery acknowledged", || async {
        acked.load(Ordering::SeqCst) == 30 + n
    })
    .await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    sub.shutdown().await.unwrap();
    assert_eq!(
        applied(&db.pool).await,
        (30, 1),
        "each committed event handled exactly once"
    );
    let projected: HashSet<String> = sqlx::query_scalar("SELECT id FROM projection")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(projected, ids.into_iter().collect::<HashSet<_>>());
    let len = bus.topic_len(&topic).await.unwrap() as usize;
    assert_eq!(
        len,
        30 + n,
        "the killed relay's batch is in the stream twice"
    );
    redis.cleanup().await;
}

/// Holds the first batch until the test has terminated the relay's connections.
struct Gate {
    inner: Recorder,
    first: AtomicBool,
    reached: Notify,
    release: Notify,
}

#[async_trait]
impl Publisher for Gate {
    async fn publish(&self, topic: &Topic, event: &Event) -> windlass_eventbus::Result<()> {
        self.publish_batch(topic, std::slice::from_ref(event)).await
    }
    async fn publish_batch(
        &self,
        topic: &Topic,
        events: &[Event],
    ) -> windlass_eventbus::Result<()> {
        self.inner.publish_batch(topic, events).await?;
        if self.first.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn relay_recovers_by_itself_after_pg_terminate_backend_mid_batch() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let ids = enqueue_all(&db.pool, 20).await;
    let rec = Recorder::new();
    let gate = Arc::new(Gate {
        inner: rec.clone(),
        first: AtomicBool::new(true),
        reached: Notify::new(),
        release: Notify::new(),
    });
    let relay_pool = db.new_pool(3).await;
    let relay = Relay::from_arcs(
        Arc::new(PgStore::new(relay_pool, OutboxConfig::default()).unwrap()),
        gate.clone(),
    )
    .with_options(
        RelayOptions::default()
            .poll_interval(Duration::from_millis(100))
            .error_backoff(Duration::from_millis(50)),
    )
    .spawn();
    tokio::time::timeout(Duration::from_secs(10), gate.reached.notified())
        .await
        .unwrap();
    // Kill every connection of the database but ours: the claim transaction and the LISTEN.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        killed.len() >= 2,
        "claim + listener connections terminated: {killed:?}"
    );
    gate.release.notify_one();

    // The mark failed with the connection; the relay retries on new connections.
    eventually(20, "first batch published again and marked", || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM windlass_outbox WHERE status = 'pending'")
                .fetch_one(&db.pool)
                .await
                .unwrap_or(-1);
        pending == 0
    })
    .await;
    // New events still flow (the listener reconnected, or polling covers it).
    let more = enqueue_all(&db.pool, 5).await;
    let expected: HashSet<String> = ids.into_iter().chain(more).collect();
    eventually(20, "later events published", || async {
        expected.iter().all(|id| rec.ids().contains(id))
    })
    .await;
    assert!(!relay.is_finished());
    relay.shutdown().await;
    assert!(
        rec.count() > expected.len(),
        "the interrupted batch was published twice (at least once)"
    );
}

#[tokio::test]
async fn three_relays_one_crashing_lose_nothing_and_duplicate_only_the_crashed_batch() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let ids = enqueue_all(&db.pool, 200).await;
    let rec = Recorder::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let options = RelayOptions::default()
        .batch_size(20)
        .poll_interval(Duration::from_millis(50));
    let crashing = Relay::new(
        PgStore::new(db.new_pool(2).await, OutboxConfig::default()).unwrap(),
        StallAfterPublish {
            inner: rec.clone(),
            stalled: AtomicBool::new(false),
            published: tx,
        },
    )
    .with_options(options.clone())
    .spawn();
    let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let mut relays = Vec::new();
    for _ in 0..2 {
        let store = PgStore::new(db.new_pool(2).await, OutboxConfig::default()).unwrap();
        relays.push(
            Relay::new(store, rec.clone())
                .with_options(options.clone())
                .spawn(),
        );
    }
    crashing.abort().await;
    let want: HashSet<String> = ids.into_iter().collect();
    eventually(30, "all 200 published", || async {
        rec.ids().into_iter().collect::<HashSet<_>>() == want
    })
    .await;
    for r in relays {
        r.shutdown().await;
    }
    assert_eq!(
        rec.count(),
        200 + n,
        "duplicates only from the crashed relay's batch"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_round_in_progress() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    enqueue_all(&db.pool, 10).await;
    let rec = Recorder::new();
    let gate = Arc::new(Gate {
        inner: rec.clone(),
        first: AtomicBool::new(true),
        reached: Notify::new(),
        release: Notify::new(),
    });
    let store = PgStore::new(db.pool.clone(), OutboxConfig::default()).unwrap();
    let relay = Relay::from_arcs(Arc::new(store.clone()), gate.clone()).spawn();
    tokio::time::timeout(Duration::from_secs(10), gate.reached.notified())
        .await
        .unwrap();
    // Ask to stop while the batch is between publish and mark, then let the publish return.
    let stopping = tokio::spawn(relay.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the round in progress"
    );
    gate.release.notify_one();
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    let s = store.stats().await.unwrap();
    assert_eq!(
        (s.pending, s.published),
        (0, 10),
        "the round was marked before the relay stopped"
    );
    assert_eq!(rec.count(), 10, "published once");
}
