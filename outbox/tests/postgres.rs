//! Postgres-only behaviour: the writers' key lock, refusals that leave the caller's
//! transaction usable, optional columns, migrations, the inbox handler, PgBouncer.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::Row;
use windlass_eventbus::{Event, Group, MemoryBus, Publisher, SubscribeOptions, Subscriber, Topic};
use windlass_outbox::postgres::{
    Inbox, MIGRATION_0001, Outbox, PgOutboxStore, migrate, migrate_with,
};
use windlass_outbox::{Error, OutboxConfig, Received, Relay};
use windlass_testkit::conformance::outbox::fast_options;
use windlass_testkit::outbox::{PgBouncer, Recorder, assert_per_key_order, event, eventually};
use windlass_testkit::postgres::fresh_database;

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

/// A transaction that enqueued K:1 and commits late: a second writer of K waits for it, so
/// the relay publishes K:1 before K:2 (without the lock, K:2 would go out first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_committing_writer_keeps_its_place_in_the_key() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let outbox = Outbox::new();
    let t = topic("orders");
    let mut first = db.pool.begin().await.unwrap();
    outbox
        .enqueue(&mut first, &t, &event("k", 1))
        .await
        .unwrap();
    let second = {
        let (pool, outbox, t) = (db.pool.clone(), outbox.clone(), t.clone());
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            outbox.enqueue(&mut tx, &t, &event("k", 2)).await.unwrap();
            tx.commit().await.unwrap();
        })
    };
    // Another key is not held up.
    let mut other = db.pool.begin().await.unwrap();
    outbox
        .enqueue(&mut other, &t, &event("j", 1))
        .await
        .unwrap();
    other.commit().await.unwrap();
    let rec = Recorder::new();
    let relay =
        Relay::new(PgOutboxStore::new(db.pool.clone()), rec.clone()).with_options(fast_options());
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.drain(Duration::from_secs(10)).await.unwrap();
    assert!(
        !second.is_finished(),
        "the second writer of k waits for the first"
    );
    first.commit().await.unwrap();
    second.await.unwrap();
    relay.drain(Duration::from_secs(10)).await.unwrap();
    let per_key = assert_per_key_order(&rec.published());
    assert_eq!(per_key["k"], vec![1, 2]);
    assert_eq!(per_key["j"], vec![1]);
}

/// Oversized and unstorable events are refused before any statement: the caller's
/// transaction stays usable and commits its own work.
#[tokio::test]
async fn refused_events_leave_the_transaction_usable() {
    let db = fresh_database().await;
    let config = OutboxConfig::default()
        .max_event_size(1024)
        .jsonb_column(true);
    migrate_with(&db.pool, &config).await.unwrap();
    let outbox = Outbox::with_config(config.clone()).unwrap();
    sqlx::query("CREATE TABLE orders (id text PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();
    let t = topic("orders");
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES ('o-1')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let big = Event::builder("/test", "big")
        .data_json(&"x".repeat(2000))
        .build()
        .unwrap();
    let err = outbox.enqueue(&mut tx, &t, &big).await.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit: 1024, .. }),
        "{err:?}"
    );
    let nul = Event::builder("/test", "nul")
        .data_json(&"a\u{0}b")
        .build()
        .unwrap();
    let err = outbox.enqueue(&mut tx, &t, &nul).await.unwrap_err();
    assert!(matches!(err, Error::Unstorable { .. }), "{err:?}");
    let err = outbox
        .enqueue_batch(&mut tx, &t, &[event("a", 1), nul.clone()])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unstorable { .. }), "{err:?}");
    sqlx::query("INSERT INTO orders VALUES ('o-2')")
        .execute(&mut *tx)
        .await
        .unwrap();
    outbox.enqueue(&mut tx, &t, &event("a", 2)).await.unwrap();
    tx.commit().await.unwrap();
    let (orders, rows): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM windlass_outbox)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((orders, rows), (2, 1));
    // The jsonb column is there for queries.
    let ty: String = sqlx::query_scalar("SELECT event_json->>'type' FROM windlass_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(ty, "thing.happened");

    // Without the jsonb column the NUL is stored and published byte for byte.
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    Outbox::new().enqueue(&mut tx, &t, &nul).await.unwrap();
    tx.commit().await.unwrap();
    let rec = Recorder::new();
    Relay::new(PgOutboxStore::new(db.pool.clone()), rec.clone())
        .with_options(fast_options())
        .drain(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(rec.published()[0].json, nul.to_json());
    assert_eq!(
        rec.published()[0]
            .event
            .data_as::<String>()
            .unwrap()
            .unwrap(),
        "a\u{0}b"
    );
}

/// Batch enqueue keeps input order, locks its keys, and the Debezium columns follow the
/// routing columns.
#[tokio::test]
async fn batch_enqueue_keeps_order_and_debezium_columns_follow() {
    let db = fresh_database().await;
    let config = OutboxConfig::default().debezium_columns(true);
    migrate_with(&db.pool, &config).await.unwrap();
    let outbox = Outbox::with_config(config).unwrap();
    let events: Vec<Event> = (1..=50).map(|n| event(&format!("k{}", n % 3), n)).collect();
    let mut tx = db.pool.begin().await.unwrap();
    let seqs = outbox
        .enqueue_batch(&mut tx, &topic("things"), &events)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seqs.len(), 50);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let row = sqlx::query(
        "SELECT aggregatetype, aggregateid, type, event FROM windlass_outbox ORDER BY seq LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("aggregatetype"), "things");
    assert_eq!(row.get::<String, _>("aggregateid"), "k1");
    assert_eq!(row.get::<String, _>("type"), "thing.happened");
    assert_eq!(row.get::<String, _>("event"), events[0].to_json());
    let rec = Recorder::new();
    Relay::new(PgOutboxStore::new(db.pool.clone()), rec.clone())
        .with_options(fast_options())
        .drain(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        rec.ids(),
        events.iter().map(|e| e.id().to_owned()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn migrations_are_idempotent_concurrent_and_follow_the_config() {
    let db = fresh_database().await;
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
    let outbox = Outbox::with_config(config.clone()).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue(&mut tx, &topic("things"), &event("a", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rec = Recorder::new();
    let store = PgOutboxStore::with_config(db.pool.clone(), config.clone()).unwrap();
    Relay::new(store, rec.clone())
        .with_options(fast_options())
        .drain(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(rec.count(), 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM app.events_out")
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
    assert!(matches!(
        PgOutboxStore::with_config(
            db.pool.clone(),
            OutboxConfig::default().table("x; DROP TABLE y")
        ),
        Err(Error::Config(_))
    ));
}

/// The inbox handler: new events applied once with their delivery context, duplicates
/// dropped (hook called), a failing work rolls back its writes and the inbox record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_handler_applies_each_event_once() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    sqlx::query("CREATE TABLE totals (k text PRIMARY KEY, n bigint NOT NULL, attempt int)")
        .execute(&db.pool)
        .await
        .unwrap();
    let bus = MemoryBus::new();
    let t = topic("things");
    let fail_once = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let dups = Arc::new(AtomicUsize::new(0));
    let (flag, d) = (fail_once.clone(), dups.clone());
    let handler = Inbox::new(db.pool.clone(), "totals")
        .unwrap()
        .handler(move |mut tx, event, ctx| {
            let flag = flag.clone();
            async move {
                sqlx::query(
                    "INSERT INTO totals VALUES ($1, 1, $2) \
                     ON CONFLICT (k) DO UPDATE SET n = totals.n + 1, attempt = greatest(totals.attempt, $2)",
                )
                .bind(event.partition_key().unwrap_or_default())
                .bind(ctx.attempt as i32)
                .execute(&mut *tx)
                .await?;
                if flag.swap(false, Ordering::SeqCst) {
                    return Err(windlass_eventbus::HandlerError::retry("injected failure"));
                }
                Ok(tx)
            }
        })
        .on_duplicate(move |_, _| {
            d.fetch_add(1, Ordering::SeqCst);
        });
    let sub = bus
        .subscribe(
            &t,
            &Group::new("totals").unwrap(),
            Arc::new(handler),
            SubscribeOptions::default().retry(
                windlass_eventbus::RetryPolicy::default()
                    .with_delays(Duration::from_millis(10), Duration::from_millis(50)),
            ),
        )
        .await
        .unwrap();
    let events: Vec<Event> = (1..=10).map(|n| event(&format!("k{}", n % 2), n)).collect();
    for e in events.iter().chain(events.iter()) {
        bus.publish(&t, e).await.unwrap();
    }
    eventually(20, "10 duplicates dropped", || async {
        dups.load(Ordering::SeqCst) == 10
    })
    .await;
    sub.shutdown().await.unwrap();
    let total: i64 = sqlx::query_scalar("SELECT sum(n)::bigint FROM totals")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 10, "each event applied exactly once");
    let max_attempt: i32 = sqlx::query_scalar("SELECT max(attempt) FROM totals")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        max_attempt >= 2,
        "the retried delivery saw its attempt number"
    );
}

/// Through PgBouncer in transaction mode: enqueue and a poll-only relay, without named
/// prepared statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_and_a_poll_only_relay_work_through_pgbouncer() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let bouncer = PgBouncer::start();
    let opts: sqlx::postgres::PgConnectOptions = bouncer.url_for(db.name()).parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.statement_cache_capacity(0))
        .await
        .unwrap();
    let config = OutboxConfig::default().prepared_statements(false);
    let outbox = Outbox::with_config(config.clone()).unwrap();
    let store = PgOutboxStore::with_config(pool.clone(), config).unwrap();
    let rec = Recorder::new();
    let relay = Relay::new(store.clone(), rec.clone())
        .with_options(
            fast_options()
                .listen(false)
                .maintenance(true)
                .maintenance_interval(Duration::from_millis(100)),
        )
        .spawn();
    for n in 1..=20 {
        let mut tx = pool.begin().await.unwrap();
        outbox
            .enqueue(&mut tx, &topic("things"), &event(&format!("k{}", n % 3), n))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    eventually(20, "20 published through the bouncer", || async {
        rec.distinct().len() == 20
    })
    .await;
    relay.shutdown().await;
    assert_per_key_order(&rec.published());
    let inbox = Inbox::with_config(
        pool.clone(),
        "c",
        &OutboxConfig::default().prepared_statements(false),
    )
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        inbox.record(&mut tx, &event("z", 1)).await.unwrap(),
        Received::New
    );
    tx.commit().await.unwrap();
}

/// An idle relay (polling once a minute) wakes at once when a writer of its process enqueues,
/// and, with LISTEN on, when another process's writer commits with NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_relays_wake_on_enqueues_of_their_process_and_on_notify() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let rec = Recorder::new();
    let minute = Duration::from_secs(60);
    let relay = Relay::new(PgOutboxStore::new(db.pool.clone()), rec.clone())
        .with_options(
            fast_options()
                .poll_interval(minute)
                .min_poll(minute)
                .listen(true),
        )
        .spawn();
    eventually(10, "the relay listens", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut tx = db.pool.begin().await.unwrap();
    Outbox::new()
        .enqueue(&mut tx, &topic("things"), &event("a", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    eventually(10, "woken by the in-process enqueue", || async {
        rec.count() == 1
    })
    .await;
    // A writer elsewhere (raw SQL, no in-process doorbell) with NOTIFY in its transaction.
    let ev = event("b", 1);
    sqlx::query(
        "WITH e AS (INSERT INTO windlass_outbox (topic, partition_key, event_type, destinations, event) \
           VALUES ('things', 'b', 'thing.happened', ARRAY['default'], $1) RETURNING seq), \
         d AS (INSERT INTO windlass_outbox_delivery (seq, destination, topic, partition_key) \
           SELECT seq, 'default', 'things', 'b' FROM e) \
         SELECT pg_notify('windlass_outbox', '')",
    )
    .bind(ev.to_json())
    .execute(&db.pool)
    .await
    .unwrap();
    eventually(10, "woken by NOTIFY", || async { rec.count() == 2 }).await;
    relay.shutdown().await;
}
