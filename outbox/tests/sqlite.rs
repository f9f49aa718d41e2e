//! SQLite-only behaviour: application writers go on while the relay publishes slowly (nothing
//! is held across the publish), the inbox handler, refusals.
#![cfg(feature = "sqlite")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use windlass_eventbus::{Event, Group, MemoryBus, Publisher, SubscribeOptions, Subscriber, Topic};
use windlass_outbox::sqlite::{Inbox, Outbox, SqliteOutboxStore};
use windlass_outbox::{Error, OutboxConfig, Relay};
use windlass_testkit::conformance::outbox::fast_options;
use windlass_testkit::outbox::{
    OutboxFixture, Recorder, SqliteFixture, assert_per_key_order, event, eventually,
};

/// The relay publishes slowly (2 s per publish) while writers with a short busy timeout
/// (200 ms) write: none of them sees "database is locked", and everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_are_not_locked_out_during_a_slow_publish() {
    let f = SqliteFixture::setup().await;
    let t = Topic::new("things").unwrap();
    f.enqueue(&t, &[event("a", 0)]).await;
    let rec = Recorder::new();
    rec.set_delay(Some(Duration::from_secs(2)));
    let relay = Relay::new(f.store(), rec.clone())
        .with_options(fast_options().publish_timeout(Duration::from_secs(5)))
        .spawn();
    eventually(10, "the relay is publishing", || async { rec.calls() >= 1 }).await;
    let opts = SqliteConnectOptions::new()
        .filename(f.pool.connect_options().get_filename())
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_millis(200));
    let writers = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .unwrap();
    let outbox = Outbox::new();
    for n in 1..=20 {
        let mut tx = writers.begin().await.unwrap();
        sqlx::query("CREATE TABLE IF NOT EXISTS orders (n INTEGER)")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO orders VALUES (?1)")
            .bind(n as i64)
            .execute(&mut *tx)
            .await
            .expect("an application write is not locked out by the relay");
        outbox.enqueue(&mut tx, &t, &event("a", n)).await.unwrap();
        tx.commit().await.unwrap();
    }
    rec.set_delay(None);
    eventually(30, "everything published", || async {
        rec.distinct().len() == 21
    })
    .await;
    relay.shutdown().await;
    let per_key = assert_per_key_order(&rec.published());
    assert_eq!(per_key["a"], (0..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn refusals_leave_the_transaction_usable_and_sqlite_rejects_postgres_options() {
    let f = SqliteFixture::setup().await;
    let outbox = Outbox::with_config(OutboxConfig::default().max_event_size(512)).unwrap();
    let t = Topic::new("orders").unwrap();
    let mut tx = f.pool.begin().await.unwrap();
    sqlx::query("CREATE TABLE orders (id TEXT)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let big = Event::builder("/t", "big")
        .data_json(&"x".repeat(600))
        .build()
        .unwrap();
    assert!(matches!(
        outbox.enqueue(&mut tx, &t, &big).await,
        Err(Error::TooLarge { .. })
    ));
    sqlx::query("INSERT INTO orders VALUES ('o-1')")
        .execute(&mut *tx)
        .await
        .unwrap();
    outbox.enqueue(&mut tx, &t, &event("a", 1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(f.event_rows().await, 1);
    assert!(Outbox::with_config(OutboxConfig::default().schema("s")).is_err());
    assert!(Outbox::with_config(OutboxConfig::default().jsonb_column(true)).is_err());
    assert!(
        SqliteOutboxStore::with_config(
            f.pool.clone(),
            OutboxConfig::default().debezium_columns(true)
        )
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_handler_applies_each_event_once() {
    let f = SqliteFixture::setup().await;
    sqlx::query("CREATE TABLE totals (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(&f.pool)
        .await
        .unwrap();
    let bus = MemoryBus::new();
    let t = Topic::new("things").unwrap();
    let dups = Arc::new(AtomicUsize::new(0));
    let d = dups.clone();
    let handler = Inbox::new(f.pool.clone(), "totals")
        .unwrap()
        .handler(|mut tx, event, _ctx| async move {
            sqlx::query(
                "INSERT INTO totals VALUES (?1, 1) ON CONFLICT (k) DO UPDATE SET n = n + 1",
            )
            .bind(event.partition_key().unwrap_or_default().to_owned())
            .execute(&mut *tx)
            .await?;
            Ok(tx)
        })
        .on_duplicate(move |_, _| {
            d.fetch_add(1, Ordering::SeqCst);
        });
    let sub = bus
        .subscribe(
            &t,
            &Group::new("totals").unwrap(),
            Arc::new(handler),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let relay = Relay::new(f.store(), bus.clone())
        .with_options(fast_options())
        .spawn();
    let events: Vec<Event> = (1..=10).map(|n| event(&format!("k{}", n % 3), n)).collect();
    f.enqueue(&t, &events).await;
    eventually(10, "10 applied", || async {
        sqlx::query_scalar::<_, i64>("SELECT coalesce(sum(n), 0) FROM totals")
            .fetch_one(&f.pool)
            .await
            .unwrap()
            == 10
    })
    .await;
    for e in &events {
        bus.publish(&t, e).await.unwrap();
    }
    eventually(10, "10 duplicates dropped", || async {
        dups.load(Ordering::SeqCst) == 10
    })
    .await;
    relay.shutdown().await;
    sub.shutdown().await.unwrap();
    let total: i64 = sqlx::query_scalar("SELECT sum(n) FROM totals")
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(total, 10);
    assert_eq!(f.inbox_rows().await, 10);
}
