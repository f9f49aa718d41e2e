//! The Postgres outbox against a real server: write side, relay, ordering, dead rows,
//! retention, stats, inbox, migrations.
#![cfg(feature = "postgres")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Recorder, assert_per_key_order, event, eventually};
use sqlx::Row;
use windlass_core::RetryPolicy;
use windlass_eventbus::{Event, MemoryBus, SubscribeOptions, Subscriber, Topic};
use windlass_outbox::postgres::{Inbox, MIGRATION_0001, Outbox, PgStore, migrate, migrate_with};
use windlass_outbox::{Error, OutboxConfig, OutboxStore, Received, Relay, RelayOptions};
use windlass_testkit::postgres::fresh_database;

fn fast_retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_delays(Duration::from_millis(20), Duration::from_millis(100))
        .with_jitter(0.0)
}

async fn setup() -> (windlass_testkit::postgres::TestDatabase, Outbox, PgStore) {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let store = PgStore::new(db.pool.clone(), OutboxConfig::default()).unwrap();
    (db, Outbox::default(), store)
}

async fn drain<P: windlass_eventbus::Publisher + 'static>(relay: &Relay<PgStore, P>) {
    for _ in 0..1000 {
        if relay.run_once().await.unwrap().claimed == 0 {
            return;
        }
    }
    panic!("relay never drained");
}

#[tokio::test]
async fn committed_events_are_published_rolled_back_ones_never() {
    let (db, outbox, store) = setup().await;
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue(&mut tx, "orders", &event("a", 1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    let kept = event("a", 2);
    outbox.enqueue(&mut tx, "orders", &kept).await.unwrap();
    tx.commit().await.unwrap();

    let rec = Recorder::new();
    let relay = Relay::new(store.clone(), rec.clone());
    drain(&relay).await;
    assert_eq!(rec.ids(), vec![kept.id().to_owned()]);
    assert_eq!(rec.published()[0].topic, "orders");
    let s = store.stats().await.unwrap();
    assert_eq!((s.pending, s.published, s.dead), (0, 1, 0));
    assert_eq!(s.oldest_pending_age, None);
    // The row holds the routing columns and the structured JSON.
    let row = sqlx::query(
        "SELECT topic, partition_key, status, event->>'id' AS eid FROM windlass_outbox",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("status"), "published");
    assert_eq!(row.get::<String, _>("eid"), kept.id());
    assert_eq!(
        row.get::<Option<String>, _>("partition_key").as_deref(),
        Some("a")
    );
}

#[tokio::test]
async fn invalid_topic_and_oversized_event_are_refused_and_the_tx_stays_usable() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let outbox = Outbox::new(OutboxConfig::default().max_event_size(1024)).unwrap();
    sqlx::query("CREATE TABLE orders (id text PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES ('o-1')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = outbox
        .enqueue(&mut tx, "orders:eu", &event("a", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Name(ref e) if e.what == "topic"),
        "{err:?}"
    );
    let big = Event::builder("/test", "big")
        .data_json(&"x".repeat(2000))
        .build()
        .unwrap();
    let err = outbox.enqueue(&mut tx, "orders", &big).await.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit: 1024, .. }),
        "{err:?}"
    );
    let err = outbox
        .enqueue_batch(&mut tx, "orders", &[event("a", 1), big.clone()])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    // Still usable: more work, then commit.
    sqlx::query("INSERT INTO orders VALUES ('o-2')")
        .execute(&mut *tx)
        .await
        .unwrap();
    outbox
        .enqueue(&mut tx, "orders", &event("a", 2))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM windlass_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((orders, rows), (2, 1));
}

#[tokio::test]
async fn batch_enqueue_keeps_order_and_notify_wakes_a_listening_relay() {
    let (db, outbox, store) = setup().await;
    let rec = Recorder::new();
    // Polling every minute: only the NOTIFY can wake it in time.
    let relay = Relay::new(store.clone(), rec.clone())
        .with_options(RelayOptions::default().poll_interval(Duration::from_secs(60)))
        .spawn();
    // Wait until the relay LISTENs (it does before its first round).
    eventually(10, "relay listening", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND state = 'idle'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        n == 1
    })
    .await;

    let events: Vec<Event> = (1..=50).map(|n| event("k", n)).collect();
    let mut tx = db.pool.begin().await.unwrap();
    let ids = outbox
        .enqueue_batch(&mut tx, "things", &events)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids.len(), 50);
    eventually(10, "50 published after NOTIFY", || async {
        rec.count() == 50
    })
    .await;
    assert_per_key_order(&rec.published());
    relay.shutdown().await;
}

#[tokio::test]
async fn poll_only_mode_publishes_without_listen() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    // PgBouncer transaction mode: no NOTIFY on write, no LISTEN in the relay.
    let config = OutboxConfig::default().notify(false);
    let outbox = Outbox::new(config.clone()).unwrap();
    let store = PgStore::new(db.pool.clone(), config).unwrap();
    let rec = Recorder::new();
    let relay = Relay::new(store, rec.clone())
        .with_options(
            RelayOptions::default()
                .listen(false)
                .poll_interval(Duration::from_millis(50)),
        )
        .spawn();
    for n in 1..=5 {
        let mut tx = db.pool.begin().await.unwrap();
        outbox
            .enqueue(&mut tx, "things", &event("k", n))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    eventually(10, "5 published by polling", || async { rec.count() == 5 }).await;
    assert_per_key_order(&rec.published());
    let listeners: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(listeners, 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_failing_key_waits_while_other_keys_go_on_then_catches_up_in_order() {
    let (db, outbox, store) = setup().await;
    let mut tx = db.pool.begin().await.unwrap();
    for n in 1..=5 {
        for key in ["a", "b", "c"] {
            outbox
                .enqueue(&mut tx, "things", &event(key, n))
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();

    let rec = Recorder::new();
    rec.fail_key("a", true);
    let relay = Relay::new(store.clone(), rec.clone())
        .with_options(RelayOptions::default().retry(fast_retry().with_max_attempts(1000)));
    let round = relay.run_once().await.unwrap();
    assert_eq!(round.claimed, 15);
    assert_eq!(round.published, 10, "{round:?}");
    assert_eq!(
        round.failed, 1,
        "only the head of key a counts an attempt: {round:?}"
    );
    let (attempts, err): (i32, Option<String>) = sqlx::query_as(
        "SELECT attempts, last_error FROM windlass_outbox WHERE partition_key = 'a' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 1);
    assert!(err.unwrap().contains("partition unavailable"));
    // The rest of key a waits for its head.
    let r = relay.run_once().await.unwrap();
    assert_eq!(r.published, 0);
    assert_eq!(store.stats().await.unwrap().pending, 5);

    rec.fail_key("a", false);
    let relay = relay.spawn();
    eventually(10, "key a published after recovery", || async {
        rec.count() == 15
    })
    .await;
    relay.shutdown().await;
    let published = rec.published();
    assert_per_key_order(&published);
    let a: Vec<u64> = published
        .iter()
        .filter(|p| p.event.partition_key() == Some("a"))
        .map(|p| p.event.data_as::<u64>().unwrap().unwrap())
        .collect();
    assert_eq!(a, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn bus_down_events_stay_pending_back_off_and_all_publish_after_recovery() {
    let (db, outbox, store) = setup().await;
    let rec = Recorder::new();
    rec.set_down(true);
    let relay = Relay::new(store.clone(), rec.clone())
        .with_options(
            RelayOptions::default()
                .retry(fast_retry().with_max_attempts(1000))
                .poll_interval(Duration::from_millis(50)),
        )
        .spawn();
    let mut tx = db.pool.begin().await.unwrap();
    for n in 1..=20 {
        outbox
            .enqueue(&mut tx, "things", &event(&format!("k{}", n % 4), n))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    eventually(10, "attempts recorded with backoff", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM windlass_outbox WHERE attempts >= 2 AND status = 'pending'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        n >= 4
    })
    .await;
    let s = store.stats().await.unwrap();
    assert_eq!((s.pending, s.published, s.dead), (20, 0, 0));
    assert!(s.oldest_pending_age.is_some());
    let future: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM windlass_outbox WHERE next_attempt_at > created_at",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(future >= 4, "heads back off");

    rec.set_down(false);
    eventually(10, "all published after recovery", || async {
        rec.count() == 20
    })
    .await;
    relay.shutdown().await;
    assert_per_key_order(&rec.published());
    assert_eq!(store.stats().await.unwrap().pending, 0);
}

#[tokio::test]
async fn permanent_rejection_and_exhausted_retries_go_dead_with_the_reason_and_can_be_requeued() {
    let (db, outbox, store) = setup().await;
    let bad = event("a", 1);
    let mut tx = db.pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, "things", &bad).await.unwrap();
    outbox
        .enqueue(&mut tx, "things", &event("a", 2))
        .await
        .unwrap();
    outbox
        .enqueue(&mut tx, "things", &event("b", 1))
        .await
        .unwrap();
    outbox
        .enqueue(&mut tx, "other", &event("z", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let rec = Recorder::new();
    rec.reject(bad.id(), true);
    rec.fail_key("z", true);
    let relay = Relay::new(store.clone(), rec.clone())
        .with_options(RelayOptions::default().retry(fast_retry().with_max_attempts(2)));
    let r = relay.run_once().await.unwrap();
    assert_eq!((r.published, r.dead, r.failed), (2, 1, 1), "{r:?}");
    eventually(10, "z exhausts its retries", || async {
        relay.run_once().await.unwrap();
        store.stats().await.unwrap().dead == 2
    })
    .await;

    let dead = store.list_dead(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("over the limit"),
        "{:?}",
        dead[0].last_error
    );
    assert!(
        dead[1]
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("gave up after 2 attempts"),
        "{:?}",
        dead[1]
    );
    assert_eq!(dead[1].topic, "other");
    assert_eq!(Event::from_json_str(&dead[0].event).unwrap().id(), bad.id());

    // Requeue: the bus accepts it now.
    rec.reject(bad.id(), false);
    rec.fail_key("z", false);
    store.requeue(dead[0].id).await.unwrap();
    assert!(matches!(
        store.requeue(dead[0].id).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(store.requeue_all_dead().await.unwrap(), 1);
    drain(&relay).await;
    let s = store.stats().await.unwrap();
    assert_eq!((s.pending, s.dead, s.published), (0, 0, 4));
    assert!(rec.ids().contains(&bad.id().to_owned()));
}

#[tokio::test]
async fn undecodable_rows_go_dead_and_do_not_block() {
    let (db, outbox, store) = setup().await;
    sqlx::query(
        "INSERT INTO windlass_outbox (id, topic, partition_key, event) VALUES (gen_random_uuid(), 'things', 'a', '{\"not\":\"an event\"}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue(&mut tx, "things", &event("a", 2))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rec = Recorder::new();
    let relay = Relay::new(store.clone(), rec.clone());
    drain(&relay).await;
    assert_eq!(rec.count(), 1);
    let dead = store.list_dead(10).await.unwrap();
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("does not decode")
    );
}

#[tokio::test]
async fn three_relays_publish_everything_once_in_per_key_order() {
    let (db, outbox, _) = setup().await;
    let rec = Recorder::new();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let store = PgStore::new(db.new_pool(3).await, OutboxConfig::default()).unwrap();
        relays.push(
            Relay::new(store, rec.clone())
                .with_options(
                    RelayOptions::default()
                        .batch_size(25)
                        .poll_interval(Duration::from_millis(50)),
                )
                .spawn(),
        );
    }
    // Writers commit while the relays run.
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let pool = db.pool.clone();
        let outbox = outbox.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..75u64 {
                let mut tx = pool.begin().await.unwrap();
                // Keys are shared between writers; each writer's n grows, and commits of one
                // writer are sequential, so per key n grows within a writer.
                let key = format!("w{w}-k{}", i % 7);
                outbox
                    .enqueue(&mut tx, "things", &event(&key, i))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    eventually(30, "300 events published", || async { rec.count() >= 300 }).await;
    for r in relays {
        r.shutdown().await;
    }
    let ids = rec.ids();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), 300, "none lost");
    assert!(
        seen.values().all(|&n| n == 1),
        "no duplicates without a crash"
    );
    assert_per_key_order(&rec.published());
}

#[tokio::test]
async fn retention_deletes_old_published_rows_only() {
    let (db, outbox, store) = setup().await;
    let mut tx = db.pool.begin().await.unwrap();
    for n in 1..=3 {
        outbox
            .enqueue(&mut tx, "things", &event("a", n))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let relay = Relay::new(store.clone(), Recorder::new());
    drain(&relay).await;
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue(&mut tx, "things", &event("b", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    sqlx::query("UPDATE windlass_outbox SET published_at = now() - interval '2 hours' WHERE partition_key = 'a' AND (event->>'data')::int <= 2")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_published_before(Duration::from_secs(3600))
            .await
            .unwrap(),
        2
    );
    let s = store.stats().await.unwrap();
    assert_eq!((s.published, s.pending), (1, 1));
}

#[tokio::test]
async fn migrations_are_idempotent_concurrent_and_follow_the_config() {
    let db = fresh_database().await;
    // The shipped file, as a user's migrator runs it, then migrate() on top, concurrently.
    sqlx::raw_sql(MIGRATION_0001)
        .execute(&db.pool)
        .await
        .unwrap();
    let runs = (0..4).map(|_| {
        let pool = db.pool.clone();
        async move { migrate(&pool).await }
    });
    for r in futures::future::join_all(runs).await {
        r.unwrap();
    }
    // A configured schema and table names, migrated concurrently from fresh.
    let config = OutboxConfig::default()
        .schema("app")
        .table("events_out")
        .inbox_table("events_in");
    let runs = (0..4).map(|_| {
        let pool = db.pool.clone();
        let config = config.clone();
        async move { migrate_with(&pool, &config).await }
    });
    for r in futures::future::join_all(runs).await {
        r.unwrap();
    }
    let outbox = Outbox::new(config.clone()).unwrap();
    let store = PgStore::new(db.pool.clone(), config.clone()).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue(&mut tx, "things", &event("a", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rec = Recorder::new();
    drain(&Relay::new(store, rec.clone())).await;
    assert_eq!(rec.count(), 1);
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM app.events_out WHERE status = 'published'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(n, 1);
    let inbox = Inbox::with_config(db.pool.clone(), "c1", &config).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox.record(&mut tx, &event("a", 1)).await.unwrap(),
        Received::New
    );
    tx.commit().await.unwrap();
    // Bad names never reach SQL.
    assert!(matches!(
        PgStore::new(
            db.pool.clone(),
            OutboxConfig::default().table("x; DROP TABLE y")
        ),
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn inbox_tells_new_from_duplicate_and_rolls_back_with_the_work() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let inbox = Inbox::new(db.pool.clone(), "billing").unwrap();
    let ev = event("a", 1);

    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(inbox.record(&mut tx, &ev).await.unwrap(), Received::New);
    tx.rollback().await.unwrap();
    // Rolled back: still new.
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(inbox.record(&mut tx, &ev).await.unwrap(), Received::New);
    tx.commit().await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox.record(&mut tx, &ev).await.unwrap(),
        Received::Duplicate
    );
    tx.commit().await.unwrap();
    // Another consumer has its own record.
    let other = Inbox::new(db.pool.clone(), "shipping").unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(other.record(&mut tx, &ev).await.unwrap(), Received::New);
    tx.commit().await.unwrap();
    assert!(Inbox::new(db.pool.clone(), "bad consumer").is_err());

    sqlx::query("UPDATE windlass_inbox SET received_at = now() - interval '2 days'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        inbox
            .delete_older_than(Duration::from_secs(86400))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn inbox_handler_applies_each_event_once_despite_redelivery_and_failures() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    sqlx::query("CREATE TABLE totals (k text PRIMARY KEY, n bigint NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let bus = MemoryBus::new();
    let topic = Topic::new("things").unwrap();
    let fail_once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = fail_once.clone();
    let handler = Inbox::new(db.pool.clone(), "totals").unwrap().handler(move |tx, event| {
        let flag = flag.clone();
        Box::pin(async move {
            let key = event.partition_key().unwrap_or_default().to_owned();
            sqlx::query("INSERT INTO totals VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = totals.n + 1")
                .bind(&key)
                .execute(&mut *tx)
                .await?;
            // The first delivery fails after its write: both the write and the inbox record
            // must roll back, and the retry must apply it.
            if flag.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Err(windlass_eventbus::HandlerError::retry("injected failure"));
            }
            Ok(())
        })
    });
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sub = bus
        .subscribe(
            &topic,
            &windlass_eventbus::Group::new("totals").unwrap(),
            std::sync::Arc::new(common::Counting::new(handler, acked.clone())),
            SubscribeOptions::default().retry(fast_retry()),
        )
        .await
        .unwrap();
    let events: Vec<Event> = (1..=10).map(|n| event(&format!("k{}", n % 2), n)).collect();
    use windlass_eventbus::Publisher;
    for e in &events {
        bus.publish(&topic, e).await.unwrap();
    }
    // At-least-once redelivery: every event again.
    for e in &events {
        bus.publish(&topic, e).await.unwrap();
    }
    eventually(10, "inbox has 10 records", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM windlass_inbox")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        n == 10
    })
    .await;
    // Let the redeliveries finish too.
    eventually(10, "all 20 deliveries acknowledged", || async {
        acked.load(std::sync::atomic::Ordering::SeqCst) == 20
    })
    .await;
    sub.shutdown().await.unwrap();
    let total: i64 = sqlx::query_scalar("SELECT sum(n)::bigint FROM totals")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 10, "each event applied exactly once");
}
