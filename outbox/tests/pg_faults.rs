//! Faults injected for real against Postgres (and Redis): a relay process killed with SIGKILL
//! between publish and mark, a relay process frozen (SIGSTOP) past its lease, a relay cut off
//! by a network partition, the Postgres server restarted mid-batch.
#![cfg(feature = "postgres")]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::sync::Notify;
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{Event, Publisher, Topic};
use windlass_outbox::postgres::{Outbox, PgOutboxStore, migrate};
use windlass_outbox::{Relay, RelayOptions};
use windlass_testkit::conformance::outbox::fast_options;
use windlass_testkit::outbox::{Published, Recorder, assert_per_key_order, event, eventually};
use windlass_testkit::postgres::fresh_database;
use windlass_testkit::proxy::TcpProxy;
use windlass_testkit::servers::PrivatePostgres;

async fn enqueue_all(pool: &sqlx::PgPool, n: u64) -> Vec<String> {
    let outbox = Outbox::new();
    let t = Topic::new("orders").unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let mut tx = pool.begin().await.unwrap();
        let ev = event(&format!("k{}", i % 5), i);
        outbox.enqueue(&mut tx, &t, &ev).await.unwrap();
        tx.commit().await.unwrap();
        ids.push(ev.id().to_owned());
    }
    ids
}

/// The relay process example, built with cargo (a no-op when it is up to date).
fn relay_binary() -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "-p",
            "windlass-outbox",
            "--features",
            "postgres",
            "--example",
            "windlass-outbox-relay-proc",
            "--message-format",
            "json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run cargo");
    assert!(out.status.success(), "building the relay process failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            v.get("executable")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
        })
        .find(|p| p.contains("windlass-outbox-relay-proc"))
        .map(std::path::PathBuf::from)
        .expect("cargo reported the example's executable")
}

struct Proc {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Proc {
    fn spawn(bin: &std::path::Path, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(bin)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// Reads lines until one starts with `prefix`; returns the rest of it.
    async fn wait_for(&mut self, prefix: &str) -> String {
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.to_owned();
                }
            }
            panic!("relay process exited before printing {prefix:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("relay process never printed {prefix:?}"))
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

/// Reads the topic back, partition by partition, each in stream order.
async fn stream(redis: &windlass_testkit::redis::TestRedis, bus: &RedisBus) -> Vec<Published> {
    let mut conn = redis.conn.clone();
    // One stream per partition; a key lives on one partition, so per-key order is kept by
    // reading the partitions one after another.
    let mut ids = Vec::new();
    for key in bus
        .stream_keys(&Topic::new("orders").unwrap())
        .await
        .unwrap()
    {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        ids.extend(entries.ids);
    }
    ids.iter()
        .map(|e| {
            let Some(redis::Value::BulkString(b)) = e.map.get("event") else {
                panic!("entry without an event field")
            };
            let event = Event::from_json(b).unwrap();
            Published {
                topic: "orders".into(),
                json: String::from_utf8_lossy(b).into_owned(),
                event,
            }
        })
        .collect()
}

async fn redis_bus(redis: &windlass_testkit::redis::TestRedis) -> RedisBus {
    RedisBus::connect(RedisConfig::new(redis.url.as_str()).prefix(redis.prefix.as_str()))
        .await
        .unwrap()
}

/// `kill -9` between publish and mark: the batch goes out again after the lease, nothing is
/// lost, per-key order holds after deduplication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_process_killed_between_publish_and_mark_loses_nothing() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let redis = windlass_testkit::redis::fresh_prefix().await;
    let bus = redis_bus(&redis).await;
    let ids = enqueue_all(&db.pool, 30).await;
    let bin = relay_binary();
    let args = [
        db.url.as_str(),
        redis.url.as_str(),
        redis.prefix.as_str(),
        "--lease-ms",
        "1500",
    ];
    let mut stalling: Vec<&str> = args.to_vec();
    stalling.extend(["--stall-after-publish", "forever"]);
    let mut p = Proc::spawn(&bin, &stalling);
    let n: usize = p.wait_for("PUBLISHED ").await.parse().unwrap();
    p.child.start_kill().unwrap(); // SIGKILL
    assert!(!p.child.wait().await.unwrap().success());
    let mut p = Proc::spawn(&bin, &args);
    let want: HashSet<String> = ids.into_iter().collect();
    eventually(60, "every event in the stream", || async {
        stream(&redis, &bus)
            .await
            .iter()
            .map(|p| p.event.id().to_owned())
            .collect::<HashSet<_>>()
            == want
    })
    .await;
    p.child.start_kill().unwrap();
    let got = stream(&redis, &bus).await;
    assert_eq!(got.len(), 30 + n, "only the killed relay's batch twice");
    assert_per_key_order(&got);
    redis.cleanup().await;
}

/// A relay process frozen (SIGSTOP) after publishing, past its lease: another relay takes
/// its keys over; when it resumes its mark is refused; the stream holds its batch twice and
/// nothing else twice; order per key holds after deduplication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_frozen_past_its_lease_cannot_mark_and_duplicates_only_its_batch() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let redis = windlass_testkit::redis::fresh_prefix().await;
    let bus = redis_bus(&redis).await;
    let ids = enqueue_all(&db.pool, 40).await;
    let bin = relay_binary();
    let mut p = Proc::spawn(
        &bin,
        &[
            db.url.as_str(),
            redis.url.as_str(),
            redis.prefix.as_str(),
            "--lease-ms",
            "1500",
            "--stall-after-publish",
            "500",
        ],
    );
    let n: usize = p.wait_for("PUBLISHED ").await.parse().unwrap();
    p.signal("-STOP");
    // Past the lease: another relay takes every key over and publishes everything.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let store = PgOutboxStore::new(db.new_pool(3).await);
    let takeover = Relay::new(store, redis_bus(&redis).await).with_options(fast_options());
    takeover.drain(Duration::from_secs(30)).await.unwrap();
    let want: HashSet<String> = ids.into_iter().collect();
    p.signal("-CONT");
    let round = p.wait_for("ROUND ").await;
    assert!(
        round.ends_with(&format!("published=0 lease_lost={n}")),
        "the frozen relay's mark is refused: {round}"
    );
    p.child.start_kill().unwrap();
    let got = stream(&redis, &bus).await;
    assert_eq!(
        got.iter()
            .map(|p| p.event.id().to_owned())
            .collect::<HashSet<_>>(),
        want
    );
    assert_eq!(
        got.len(),
        40 + n,
        "duplicates only from the frozen relay's batch"
    );
    assert_per_key_order(&got);
    redis.cleanup().await;
}

/// Holds the first batch after publishing it until released.
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

fn gate(rec: &Recorder) -> Arc<Gate> {
    Arc::new(Gate {
        inner: rec.clone(),
        first: AtomicBool::new(true),
        reached: Notify::new(),
        release: Notify::new(),
    })
}

/// A relay cut off from Postgres by a silent partition after publishing: another relay takes
/// its keys over after the lease; when the partition heals the cut-off relay's mark is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_cut_off_by_a_partition_loses_its_keys_and_cannot_mark() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let ids = enqueue_all(&db.pool, 30).await;
    let upstream: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let addr = format!("{}:{}", upstream.get_host(), upstream.get_port())
        .parse()
        .unwrap_or_else(|_| "127.0.0.1:5432".parse().unwrap());
    let proxy = TcpProxy::start(addr);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(upstream.clone().host("127.0.0.1").port(proxy.port()))
        .await
        .unwrap();
    let rec = Recorder::new();
    let g = gate(&rec);
    let opts = fast_options()
        .lease(Duration::from_millis(1500))
        .publish_timeout(Duration::from_millis(300))
        .batch_size(10);
    let cut_off =
        Relay::from_arcs(Arc::new(PgOutboxStore::new(pool)), g.clone()).with_options(opts.clone());
    let round = tokio::spawn(async move { cut_off.run_once().await });
    tokio::time::timeout(Duration::from_secs(10), g.reached.notified())
        .await
        .unwrap();
    proxy.blackhole();
    g.release.notify_one();
    // Its mark hangs in the partition. Past the lease, another relay takes over.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(!round.is_finished());
    let other = Relay::new(PgOutboxStore::new(db.pool.clone()), rec.clone()).with_options(opts);
    other.drain(Duration::from_secs(30)).await.unwrap();
    proxy.pass();
    let r = tokio::time::timeout(Duration::from_secs(30), round)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.published, 0, "{r:?}");
    assert_eq!(r.lease_lost, r.claimed, "every mark refused: {r:?}");
    let want: HashSet<String> = ids.into_iter().collect();
    assert_eq!(rec.distinct(), want);
    assert_eq!(rec.count(), 30 + r.claimed);
    assert_per_key_order(&rec.published());
}

/// The Postgres server restarts while a batch is between publish and mark: the relay recovers
/// by itself, the batch goes out again after its lease, nothing is lost, order holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_batch_loses_nothing() {
    let pg = PrivatePostgres::start();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&pg.url())
        .await
        .unwrap();
    migrate(&pool).await.unwrap();
    let ids = enqueue_all(&pool, 30).await;
    let rec = Recorder::new();
    let g = gate(&rec);
    let relay = Relay::from_arcs(Arc::new(PgOutboxStore::new(pool.clone())), g.clone())
        .with_options(
            fast_options()
                .lease(Duration::from_millis(1500))
                .publish_timeout(Duration::from_millis(300))
                .batch_size(10)
                .error_backoff(Duration::from_millis(100)),
        )
        .spawn();
    tokio::time::timeout(Duration::from_secs(10), g.reached.notified())
        .await
        .unwrap();
    pg.restart();
    g.release.notify_one();
    let want: HashSet<String> = ids.into_iter().collect();
    eventually(60, "everything published after the restart", || async {
        rec.distinct() == want
    })
    .await;
    eventually(30, "nothing pending", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM windlass_outbox_delivery")
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n == 0)
    })
    .await;
    relay.shutdown().await;
    assert!(
        rec.count() <= 30 + 10,
        "duplicates bounded by the interrupted batch"
    );
    assert_per_key_order(&rec.published());
}

/// The default relay options through a bus outage of two minutes (longer than the default
/// retry policy's 10 attempts would last): nothing dead, order kept, everything delivered.
/// This test really takes about two and a half minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_minute_outage_with_the_default_policy_loses_nothing_and_kills_nothing() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let store = PgOutboxStore::new(db.pool.clone());
    let rec = Recorder::new();
    rec.set_down(true);
    let relay = Relay::new(store.clone(), rec.clone())
        .with_options(RelayOptions::default().maintenance(false))
        .spawn();
    let ids = enqueue_all(&db.pool, 50).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(rec.count(), 0);
    store.refresh_stats().await.unwrap();
    let s = store.stats(&windlass_core::TenantScope::All).await.unwrap();
    assert_eq!(
        (s.pending(), s.dead(), s.blocked_keys()),
        (50, 0, 0),
        "{s:?}"
    );
    rec.set_down(false);
    let want: HashSet<String> = ids.into_iter().collect();
    eventually(60, "everything published after the outage", || async {
        rec.distinct() == want
    })
    .await;
    relay.shutdown().await;
    let per_key = assert_per_key_order(&rec.published());
    assert_eq!(per_key["k0"], vec![0, 5, 10, 15, 20, 25, 30, 35, 40, 45]);
}
