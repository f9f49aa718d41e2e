//! The SQLite (embedded) outbox: same contract as Postgres, polling relay.
#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Counting, Recorder, assert_per_key_order, event, eventually};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use windlass_core::RetryPolicy;
use windlass_eventbus::{Event, Group, MemoryBus, Publisher, SubscribeOptions, Subscriber, Topic};
use windlass_outbox::sqlite::{Inbox, Outbox, SqliteStore, migrate};
use windlass_outbox::{Error, OutboxConfig, OutboxStore, Received, Relay, RelayOptions};

/// A fresh database file per test (an in-memory database is per connection).
struct TempDb {
    pool: SqlitePool,
    path: std::path::PathBuf,
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

async fn fresh() -> TempDb {
    let path = std::env::temp_dir().join(format!(
        "windlass-outbox-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let opts = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .unwrap();
    migrate(&pool).await.unwrap();
    migrate(&pool).await.unwrap(); // idempotent
    TempDb { pool, path }
}

fn store(db: &TempDb) -> SqliteStore {
    SqliteStore::new(db.pool.clone(), OutboxConfig::default()).unwrap()
}

async fn drain<P: Publisher + 'static>(relay: &Relay<SqliteStore, P>) {
    for _ in 0..1000 {
        if relay.run_once().await.unwrap().claimed == 0 {
            return;
        }
    }
    panic!("relay never drained");
}

#[tokio::test]
async fn committed_events_are_published_rolled_back_ones_never() {
    let db = fresh().await;
    let outbox = Outbox::new(OutboxConfig::default()).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue(&mut tx, "orders", &event("a", 1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let kept: Vec<Event> = (2..=4).map(|n| event("a", n)).collect();
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue_batch(&mut tx, "orders", &kept)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let bus = MemoryBus::new();
    let relay = Relay::new(store(&db), bus.clone());
    drain(&relay).await;
    assert_eq!(bus.len(&Topic::new("orders").unwrap()), 3);
    let s = relay.store().stats().await.unwrap();
    assert_eq!((s.pending, s.published, s.dead), (0, 3, 0));
}

#[tokio::test]
async fn invalid_topic_and_oversized_event_leave_the_tx_usable() {
    let db = fresh().await;
    let outbox = Outbox::new(OutboxConfig::default().max_event_size(512)).unwrap();
    sqlx::query("CREATE TABLE orders (id TEXT)")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES ('o-1')")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(matches!(
        outbox.enqueue(&mut tx, "bad topic", &event("a", 1)).await,
        Err(Error::Name(_))
    ));
    let big = Event::builder("/t", "big")
        .data_json(&"x".repeat(600))
        .build()
        .unwrap();
    assert!(matches!(
        outbox.enqueue(&mut tx, "orders", &big).await,
        Err(Error::TooLarge { .. })
    ));
    outbox
        .enqueue(&mut tx, "orders", &event("a", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(store(&db).stats().await.unwrap().pending, 1);
    assert!(Outbox::new(OutboxConfig::default().schema("s")).is_err());
}

#[tokio::test]
async fn failing_key_waits_others_go_on_dead_rows_requeue_and_retention() {
    let db = fresh().await;
    let outbox = Outbox::new(OutboxConfig::default()).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    for n in 1..=4 {
        for key in ["a", "b"] {
            outbox
                .enqueue(&mut tx, "things", &event(key, n))
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
    let rec = Recorder::new();
    rec.fail_key("a", true);
    let retry = RetryPolicy::default()
        .with_delays(Duration::from_millis(10), Duration::from_millis(20))
        .with_jitter(0.0);
    let relay = Relay::new(store(&db), rec.clone())
        .with_options(RelayOptions::default().retry(retry.with_max_attempts(3)));
    let r = relay.run_once().await.unwrap();
    assert_eq!((r.published, r.failed), (4, 1), "{r:?}");
    eventually(10, "head of a exhausts its attempts", || async {
        relay.run_once().await.unwrap();
        relay.store().stats().await.unwrap().dead == 1
    })
    .await;
    // A dead head no longer blocks its key.
    rec.fail_key("a", false);
    drain(&relay).await;
    assert_eq!(rec.count(), 7);
    let dead = relay.store().list_dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("gave up after 3 attempts")
    );
    relay.store().requeue(dead[0].id).await.unwrap();
    drain(&relay).await;
    assert_eq!(rec.count(), 8);
    let s = relay.store().stats().await.unwrap();
    assert_eq!((s.pending, s.dead, s.published), (0, 0, 8));
    sqlx::query("UPDATE windlass_outbox SET published_at = published_at - 7200000 WHERE partition_key = 'b'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        relay
            .store()
            .delete_published_before(Duration::from_secs(3600))
            .await
            .unwrap(),
        4
    );
}

#[tokio::test]
async fn polling_relay_and_inbox_handler_apply_each_event_once() {
    let db = fresh().await;
    sqlx::query("CREATE TABLE totals (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let outbox = Outbox::new(OutboxConfig::default()).unwrap();
    let bus = MemoryBus::new();
    let topic = Topic::new("things").unwrap();
    let acked = Arc::new(AtomicUsize::new(0));
    let inbox = Inbox::new(db.pool.clone(), "totals").unwrap();
    let handler = inbox.handler(|tx, event| {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO totals VALUES (?1, 1) ON CONFLICT (k) DO UPDATE SET n = n + 1",
            )
            .bind(event.partition_key().unwrap_or_default())
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    });
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("totals").unwrap(),
            Arc::new(Counting::new(handler, acked.clone())),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let relay = Relay::new(store(&db), bus.clone())
        .with_options(RelayOptions::default().poll_interval(Duration::from_millis(20)))
        .spawn();
    let mut events = Vec::new();
    for n in 1..=10 {
        let ev = event(&format!("k{}", n % 3), n);
        let mut tx = db.pool.begin().await.unwrap();
        outbox.enqueue(&mut tx, &topic, &ev).await.unwrap();
        tx.commit().await.unwrap();
        events.push(ev);
    }
    eventually(10, "10 acked", || async {
        acked.load(Ordering::SeqCst) == 10
    })
    .await;
    // Redeliver everything: the inbox drops it.
    for e in &events {
        bus.publish(&topic, e).await.unwrap();
    }
    eventually(10, "20 acked", || async {
        acked.load(Ordering::SeqCst) == 20
    })
    .await;
    relay.shutdown().await;
    sub.shutdown().await.unwrap();
    let total: i64 = sqlx::query_scalar("SELECT sum(n) FROM totals")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 10);
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox.record(&mut tx, &events[0]).await.unwrap(),
        Received::Duplicate
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        inbox
            .delete_older_than(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(inbox.delete_older_than(Duration::ZERO).await.unwrap(), 10);
}

#[tokio::test]
async fn bus_down_then_recovery_keeps_per_key_order() {
    let db = fresh().await;
    let outbox = Outbox::new(OutboxConfig::default()).unwrap();
    let rec = Recorder::new();
    rec.set_down(true);
    let retry = RetryPolicy::default()
        .with_delays(Duration::from_millis(10), Duration::from_millis(50))
        .with_max_attempts(1000);
    let relay = Relay::new(store(&db), rec.clone())
        .with_options(
            RelayOptions::default()
                .retry(retry)
                .poll_interval(Duration::from_millis(20)),
        )
        .spawn();
    let mut tx = db.pool.begin().await.unwrap();
    for n in 1..=12 {
        outbox
            .enqueue(&mut tx, "things", &event(&format!("k{}", n % 3), n))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    eventually(10, "publish attempted while down", || async {
        rec.calls() >= 3
    })
    .await;
    assert_eq!(rec.count(), 0);
    rec.set_down(false);
    eventually(10, "all published", || async { rec.count() == 12 }).await;
    relay.shutdown().await;
    assert_per_key_order(&rec.published());
}
