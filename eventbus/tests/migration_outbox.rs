//! The Redis Streams -> Kafka migration built on the outbox, under faults, on the real servers
//! (Postgres, Redis, a PRIVATE tansu broker for the tests that stop it):
//! - dual delivery through the outbox (one delivery state per bus): a stopped Kafka broker
//!   delays the Kafka destination only, the Redis side keeps flowing, Kafka catches up after
//!   the broker resumes, nothing is lost, the inbox drops the duplicates;
//! - switch and rollback under load, route state shared in Postgres, per-key order checked on
//!   the consumer side;
//! - `verify` finds an event deleted on purpose from one side, and one out of order.
#![cfg(all(feature = "kafka", feature = "redis"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgPool;
use windlass_core::RetryPolicy;
use windlass_eventbus::kafka::{GroupTimeouts, KafkaBus, KafkaConfig};
use windlass_eventbus::migrate::verify::{VerifyOptions, verify};
use windlass_eventbus::migrate::{Backend, Migration, RouteStore, Routes};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{
    DeliveryContext, Error, Event, Group, Handler, HandlerError, HandlerResult, Publisher,
    SubscribeOptions, Subscriber, Topic,
};
use windlass_outbox::postgres::{Inbox, Outbox, PgOutboxStore, PgRouteStore};
use windlass_outbox::{Destination, OutboxConfig, Received, Relay, RelayHandle, RelayOptions};

/// Records each event in the inbox and, for new ones, a row in `handled` (with the event's
/// per-topic number `n`, its key and the bus it came from), in one transaction.
struct Projection {
    inbox: Inbox,
    pool: PgPool,
    duplicates: AtomicU32,
}

#[async_trait]
impl Handler for Projection {
    async fn handle(&self, event: &Event, ctx: &DeliveryContext) -> HandlerResult {
        let via = if ctx.delivery_id.contains('@') {
            "kafka"
        } else {
            "redis"
        };
        let mut tx = self.pool.begin().await.map_err(HandlerError::retry)?;
        if self
            .inbox
            .record(&mut tx, event)
            .await
            .map_err(HandlerError::retry)?
            == Received::Duplicate
        {
            self.duplicates.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        let n: i64 = event.data_as::<serde_json::Value>().unwrap().unwrap()["n"]
            .as_i64()
            .unwrap();
        sqlx::query(
            "INSERT INTO handled (consumer, key, n, event_id, via) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(self.inbox.consumer())
        .bind(event.ordering_key().unwrap_or(""))
        .bind(n)
        .bind(event.id())
        .bind(via)
        .execute(&mut *tx)
        .await
        .map_err(HandlerError::retry)?;
        tx.commit().await.map_err(HandlerError::retry)?;
        Ok(())
    }
}

fn projection(pool: &PgPool, consumer: &str) -> Arc<Projection> {
    Arc::new(Projection {
        inbox: Inbox::new(pool.clone(), consumer).unwrap(),
        pool: pool.clone(),
        duplicates: AtomicU32::new(0),
    })
}

async fn setup_db() -> windlass_testkit::postgres::TestDatabase {
    let db = windlass_testkit::postgres::fresh_database().await;
    windlass_outbox::postgres::migrate(&db.pool).await.unwrap();
    sqlx::query(
        "CREATE TABLE handled (ord bigserial, consumer text NOT NULL, key text NOT NULL, \
         n bigint NOT NULL, event_id text NOT NULL, via text NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    db
}

/// (rows, distinct events) handled by `consumer`.
async fn handled(pool: &PgPool, consumer: &str) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM handled WHERE consumer = $1")
        .bind(consumer)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_for(what: &str, secs: u64, mut ok: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !ok().await {
        assert!(Instant::now() < end, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per key, the numbers of the events `consumer` handled (first time) must increase.
async fn assert_per_key_order(pool: &PgPool, consumer: &str) {
    let bad: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT key, n, prev FROM (SELECT key, n, lag(n) OVER (PARTITION BY key ORDER BY ord) AS prev \
         FROM handled WHERE consumer = $1) x WHERE prev >= n",
    )
    .bind(consumer)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        bad.is_empty(),
        "{consumer}: per-key order broken (key, n, previous n): {bad:?}"
    );
}

/// Undelivered delivery rows of `destination`: (pending, dead).
async fn undelivered(pool: &PgPool, destination: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead') \
         FROM windlass_outbox_delivery WHERE destination = $1",
    )
    .bind(destination)
    .fetch_one(pool)
    .await
    .unwrap()
}

fn event(n: i64, keys: i64) -> Event {
    Event::builder("/test", "thing")
        .subject(format!("key-{}", n % keys))
        .data_json(&serde_json::json!({ "n": n }))
        .build()
        .unwrap()
}

async fn enqueue(outbox: &Outbox, pool: &PgPool, topic: &Topic, from: i64, to: i64) {
    let mut tx = pool.begin().await.unwrap();
    let events: Vec<Event> = (from..to).map(|n| event(n, 10)).collect();
    outbox.enqueue_batch(&mut tx, topic, &events).await.unwrap();
    tx.commit().await.unwrap();
}

fn relay_options(destination: &str) -> RelayOptions {
    RelayOptions::default()
        .destination(Destination::new(destination).unwrap())
        .retry(
            RetryPolicy::default()
                .with_delays(Duration::from_millis(50), Duration::from_millis(500)),
        )
        .publish_timeout(Duration::from_secs(2))
        .lease(Duration::from_secs(10))
        .maintenance(false)
}

struct Buses {
    redis: RedisBus,
    kafka: KafkaBus,
}

async fn buses(redis_url: &str, prefix: &str, brokers: &str) -> Buses {
    Buses {
        redis: RedisBus::connect(RedisConfig::new(redis_url).prefix(prefix))
            .await
            .unwrap(),
        kafka: KafkaBus::new(
            KafkaConfig::new(brokers)
                .group_timeouts(GroupTimeouts::tansu())
                .publish_timeout(Duration::from_secs(2)),
        )
        .unwrap(),
    }
}

/// One relay per destination (`redis`, `kafka`), each with its own bus connections.
async fn relays(pool: &PgPool, redis_url: &str, prefix: &str, brokers: &str) -> Vec<RelayHandle> {
    let b = buses(redis_url, prefix, brokers).await;
    let store = PgOutboxStore::new(pool.clone());
    vec![
        Relay::new(store.clone(), b.redis)
            .with_options(relay_options("redis"))
            .spawn(),
        Relay::new(store, b.kafka)
            .with_options(relay_options("kafka"))
            .spawn(),
    ]
}

fn domains(tag: &str) -> (String, Topic, String, Topic) {
    let billing = format!("billing{tag}");
    let shipping = format!("shipping{tag}");
    let b = Topic::new(format!("{billing}.invoices")).unwrap();
    let s = Topic::new(format!("{shipping}.parcels")).unwrap();
    (billing, b, shipping, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_kafka_stopped_mid_migration_delays_only_kafka_and_loses_nothing() {
    let db = setup_db().await;
    let redis = windlass_testkit::redis::fresh_prefix().await;
    let tansu = tokio::task::spawn_blocking(windlass_testkit::tansu::PrivateTansu::start)
        .await
        .unwrap();
    let brokers = tansu.brokers();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (billing_domain, billing, shipping_domain, shipping) = domains(&tag);
    windlass_testkit::kafka::create_topic(&brokers, &billing, 2).await;

    // billing is being migrated: its rows go to both buses; shipping stays on Redis only.
    let [redis_d, kafka_d] = ["redis", "kafka"].map(|d| Destination::new(d).unwrap());
    let outbox = Outbox::with_config(
        OutboxConfig::default()
            .destinations([redis_d.clone()])
            .route(billing_domain.as_str(), [redis_d, kafka_d]),
    )
    .unwrap();
    let relays = relays(&db.pool, &redis.url, &redis.prefix, &brokers).await;

    let b = buses(&redis.url, &redis.prefix, &brokers).await;
    let routes = Routes::new(Backend::Redis)
        .route(billing_domain.as_str(), Backend::Redis)
        .route(shipping_domain.as_str(), Backend::Redis);
    let migration = Migration::new(b.redis, b.kafka, routes);
    let (ledger, tracker) = (
        projection(&db.pool, "ledger"),
        projection(&db.pool, "tracker"),
    );
    let opts = SubscribeOptions::default().concurrency(4);
    let ledger_sub = migration
        .subscribe(
            &billing,
            &Group::new("ledger").unwrap(),
            ledger.clone(),
            opts.clone(),
        )
        .await
        .unwrap();
    let tracker_sub = migration
        .subscribe(
            &shipping,
            &Group::new("tracker").unwrap(),
            tracker.clone(),
            opts,
        )
        .await
        .unwrap();

    // Phase A: both buses up.
    enqueue(&outbox, &db.pool, &billing, 0, 100).await;
    enqueue(&outbox, &db.pool, &shipping, 0, 50).await;
    let pool = db.pool.clone();
    wait_for(
        "phase A delivered to both buses and handled",
        30,
        async || {
            undelivered(&pool, "redis").await.0 == 0
                && undelivered(&pool, "kafka").await.0 == 0
                && handled(&pool, "ledger").await.1 == 100
                && handled(&pool, "tracker").await.1 == 50
        },
    )
    .await;

    // The routing put billing rows on both destinations and shipping rows on Redis only.
    let routed: Vec<(String, Vec<String>, i64)> = sqlx::query_as(
        "SELECT topic, destinations, count(*) FROM windlass_outbox GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let both = vec!["redis".to_owned(), "kafka".to_owned()];
    assert_eq!(
        routed,
        vec![
            (billing.as_str().to_owned(), both, 100),
            (shipping.as_str().to_owned(), vec!["redis".to_owned()], 50)
        ]
    );

    // Phase B: the Kafka broker is stopped. The Redis side keeps flowing.
    tansu.freeze();
    let frozen_at = Instant::now();
    enqueue(&outbox, &db.pool, &billing, 100, 200).await;
    enqueue(&outbox, &db.pool, &shipping, 50, 100).await;
    wait_for(
        "phase B handled on Redis while Kafka is stopped",
        20,
        async || {
            handled(&pool, "ledger").await.1 == 200 && handled(&pool, "tracker").await.1 == 100
        },
    )
    .await;
    let redis_took = frozen_at.elapsed();
    let (kafka_pending, kafka_dead) = undelivered(&db.pool, "kafka").await;
    assert_eq!(
        undelivered(&db.pool, "redis").await,
        (0, 0),
        "Redis delivered everything"
    );
    assert!(
        kafka_pending > 0,
        "the stopped broker cannot have taken phase B (pending {kafka_pending})"
    );
    assert_eq!(kafka_dead, 0, "an outage never makes a row dead");
    // Stay stopped a little longer than several publish timeouts: still nothing dead.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(undelivered(&db.pool, "kafka").await.1, 0);

    // The broker resumes: Kafka catches up by itself.
    tansu.thaw();
    let thawed_at = Instant::now();
    let caught_up = tokio::time::timeout(Duration::from_secs(30), async {
        while undelivered(&pool, "kafka").await != (0, 0) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if caught_up.is_err() {
        let errors: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT coalesce(last_error, ''), count(*), max(attempts)::int8 FROM windlass_outbox_delivery              WHERE destination = 'kafka' GROUP BY 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        panic!(
            "Kafka did not catch up within 30 s after the broker resumed: {:?}; errors {errors:?}",
            undelivered(&db.pool, "kafka").await
        );
    }
    let kafka_took = thawed_at.elapsed();

    // Nothing lost on Kafka: verify compares both buses for the window.
    let window_from = chrono::Utc::now() - chrono::Duration::minutes(10);
    let window_until = chrono::Utc::now() + chrono::Duration::minutes(1);
    let report = verify(
        migration.redis(),
        migration.kafka(),
        &billing_domain,
        std::slice::from_ref(&billing),
        window_from,
        window_until,
        &VerifyOptions::default().timeout(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    let t = &report.topics[0];
    assert!(t.is_consistent(), "{t:?}");
    assert_eq!((t.on_redis, t.on_kafka), (200, 200), "{t:?}");

    // The ledger moves to Kafka; the inbox drops what it already handled from Redis.
    let r = migration
        .switch(&billing_domain, Backend::Kafka)
        .await
        .unwrap();
    assert_eq!(r.subscriptions, 1);
    enqueue(&outbox, &db.pool, &billing, 200, 250).await;
    wait_for("phase C handled from Kafka", 40, async || {
        handled(&pool, "ledger").await.1 == 250
    })
    .await;
    let (all, distinct) = handled(&db.pool, "ledger").await;
    assert_eq!(
        (all, distinct),
        (250, 250),
        "every event handled exactly once"
    );
    let via_kafka: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM handled WHERE consumer = 'ledger' AND via = 'kafka'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(via_kafka, 50, "phase C came from Kafka");
    assert!(
        ledger.duplicates.load(Ordering::SeqCst) >= 200,
        "the new Kafka group read the topic from the start and the inbox dropped what Redis had delivered"
    );
    assert_per_key_order(&db.pool, "ledger").await;
    assert_per_key_order(&db.pool, "tracker").await;
    assert_eq!(handled(&db.pool, "tracker").await, (100, 100));
    eprintln!(
        "redis side handled phase B in {redis_took:?} with the broker stopped; kafka caught up {kafka_took:?} after it resumed"
    );

    ledger_sub.shutdown().await.unwrap();
    tracker_sub.shutdown().await.unwrap();
    for r in relays {
        r.shutdown().await;
    }
    redis.cleanup().await;
}

/// Publishes events into the outbox at a steady pace until stopped; returns how many.
fn producer(
    outbox: Outbox,
    pool: PgPool,
    topic: Topic,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let mut n = 0i64;
        while !stop.load(Ordering::SeqCst) {
            enqueue(&outbox, &pool, &topic, n, n + 5).await;
            n += 5;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_switch_and_rollback_under_load_keep_per_key_order() {
    let db = setup_db().await;
    let redis = windlass_testkit::redis::fresh_prefix().await;
    // A private broker: consumer groups on the shared one are slowed down by every other test's
    // groups (tansu 0.6 rebalances), which would make the timing of this test theirs.
    let tansu = tokio::task::spawn_blocking(windlass_testkit::tansu::PrivateTansu::start)
        .await
        .unwrap();
    let brokers = tansu.brokers();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (billing_domain, billing, shipping_domain, _) = domains(&tag);
    windlass_testkit::kafka::create_topic(&brokers, &billing, 2).await;
    let outbox = Outbox::with_config(
        OutboxConfig::default()
            .destinations(["redis", "kafka"].map(|d| Destination::new(d).unwrap())),
    )
    .unwrap();
    let relays = relays(&db.pool, &redis.url, &redis.prefix, &brokers).await;

    // Two processes share the route table in Postgres.
    let store = Arc::new(PgRouteStore::new(db.pool.clone()));
    store.migrate().await.unwrap();
    let routes = Routes::new(Backend::Redis)
        .route(billing_domain.as_str(), Backend::Redis)
        .route(shipping_domain.as_str(), Backend::Redis);
    let b = buses(&redis.url, &redis.prefix, &brokers).await;
    let one = Migration::with_store(b.redis, b.kafka, routes.clone(), store.clone())
        .await
        .unwrap();
    let b = buses(&redis.url, &redis.prefix, &brokers).await;
    let two = Migration::with_store(b.redis, b.kafka, routes.clone(), store.clone())
        .await
        .unwrap();

    // Bad input: typed errors, state unchanged.
    assert!(matches!(
        one.switch("nosuchdomain", Backend::Kafka).await,
        Err(Error::UnknownDomain(_))
    ));
    assert!(matches!(
        "rabbitmq".parse::<Backend>(),
        Err(Error::UnknownBackend(_))
    ));
    let claim = store
        .begin_switch(&shipping_domain, Backend::Kafka, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(
        one.switch(&billing_domain, Backend::Kafka).await,
        Err(Error::SwitchInProgress { .. })
    ));
    assert!(matches!(
        store
            .begin_switch(&billing_domain, Backend::Kafka, Duration::from_secs(30))
            .await,
        Err(Error::SwitchInProgress { .. })
    ));
    store.abort_switch(&claim).await.unwrap();
    let state = two.state().await.unwrap();
    assert_eq!(state.routes, routes, "refused switches changed nothing");
    assert!(state.switching.is_empty());

    let ledger = projection(&db.pool, "ledger");
    let sub = one
        .subscribe(
            &billing,
            &Group::new("ledger").unwrap(),
            ledger.clone(),
            SubscribeOptions::default().concurrency(4),
        )
        .await
        .unwrap();
    // The second process consumes the domain too (another group: two members of one Kafka
    // group on tansu wait out a long rebalance) and follows the store: it drains when a switch
    // is claimed, before the switching process starts the new bus, then follows the route.
    let follow = tokio_util::sync::CancellationToken::new();
    let follower = two.follow(Duration::from_millis(100), follow.clone());
    let audit = projection(&db.pool, "audit");
    let sub_two = two
        .subscribe(
            &billing,
            &Group::new("audit").unwrap(),
            audit.clone(),
            SubscribeOptions::default().concurrency(4),
        )
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = producer(
        outbox.clone(),
        db.pool.clone(),
        billing.clone(),
        stop.clone(),
    );
    let pool = db.pool.clone();
    wait_for("load flows on Redis", 20, async || {
        handled(&pool, "ledger").await.1 >= 100
    })
    .await;

    // Switch under load; the other process drains first, then follows the stored route.
    let phases = one.phase();
    let r = one.switch(&billing_domain, Backend::Kafka).await.unwrap();
    assert!(phases.has_changed().unwrap(), "the switch was observable");
    assert_eq!(
        (r.from, r.to, r.subscriptions),
        (Backend::Redis, Backend::Kafka, 1)
    );
    assert_eq!(one.backend_for(&billing), Backend::Kafka);
    let two_ = two.clone();
    wait_for("the other process follows", 30, async || {
        two_.backend_for(&billing) == Backend::Kafka
    })
    .await;
    let kafka_count = async || -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM handled WHERE consumer = 'ledger' AND via = 'kafka'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    wait_for("new events handled from Kafka", 30, async || {
        kafka_count().await >= 50
    })
    .await;

    wait_for(
        "the other process handles new events from Kafka",
        30,
        async || {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM handled WHERE consumer = 'audit' AND via = 'kafka'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            n >= 20
        },
    )
    .await;

    // Roll back under load.
    let r = one.switch(&billing_domain, Backend::Redis).await.unwrap();
    assert_eq!((r.from, r.to), (Backend::Kafka, Backend::Redis));
    let redis_count = async || -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM handled WHERE consumer = 'ledger' AND via = 'redis'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = redis_count().await;
    wait_for("events handled from Redis again", 20, async || {
        redis_count().await >= before + 50
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let total = load.await.unwrap();
    wait_for("every event handled", 30, async || {
        handled(&pool, "ledger").await.1 == total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // late duplicates would show as rows
    assert_eq!(
        handled(&db.pool, "ledger").await,
        (total, total),
        "exactly once"
    );
    assert_per_key_order(&db.pool, "ledger").await;
    assert!(
        ledger.duplicates.load(Ordering::SeqCst) > 0,
        "the overlap was dropped by the inbox"
    );
    // The other process moved with it, and back.
    wait_for("the audit consumer handled every event", 30, async || {
        handled(&pool, "audit").await.1 == total
    })
    .await;
    assert_eq!(
        handled(&db.pool, "audit").await,
        (total, total),
        "audit: exactly once"
    );
    assert_per_key_order(&db.pool, "audit").await;
    assert_eq!(two.backend_for(&billing), Backend::Redis);
    let buses: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT via FROM handled WHERE consumer = 'audit' ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(buses, ["kafka", "redis"], "audit read both buses");

    follow.cancel();
    follower.await.unwrap();
    sub_two.shutdown().await.unwrap();
    sub.shutdown().await.unwrap();
    for r in relays {
        r.shutdown().await;
    }
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_verify_finds_an_event_deleted_from_one_side_and_one_out_of_order() {
    let redis = windlass_testkit::redis::fresh_prefix().await;
    let brokers = tokio::task::spawn_blocking(windlass_testkit::kafka::brokers)
        .await
        .unwrap();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (domain, topic, _, _) = domains(&tag);
    windlass_testkit::kafka::create_topic(&brokers, &topic, 2).await;
    let b = buses(&redis.url, &redis.prefix, &brokers).await;
    let events: Vec<Event> = (0..40).map(|n| event(n, 4)).collect();
    for e in &events {
        b.redis.publish(&topic, e).await.unwrap();
    }
    // Kafka gets the same events, except two of key-1 swapped (n = 5 and 9).
    let mut on_kafka = events.clone();
    on_kafka.swap(5, 9);
    b.kafka.publish_batch(&topic, &on_kafka).await.unwrap();

    let from = chrono::Utc::now() - chrono::Duration::minutes(5);
    let until = chrono::Utc::now() + chrono::Duration::minutes(1);
    let opts = VerifyOptions::default().timeout(Duration::from_secs(20));
    let run = async || {
        verify(
            &b.redis,
            &b.kafka,
            &domain,
            std::slice::from_ref(&topic),
            from,
            until,
            &opts,
        )
        .await
        .unwrap()
    };
    let before = run().await;
    let t = &before.topics[0];
    assert!(
        t.complete && t.missing_on_kafka.is_empty() && t.missing_on_redis.is_empty(),
        "{t:?}"
    );
    assert_eq!(t.out_of_order.len(), 1, "{t:?}");
    assert_eq!(
        (
            t.out_of_order[0].id.as_str(),
            t.out_of_order[0].before.as_str()
        ),
        (events[5].id(), events[9].id())
    );

    // Delete one event from the Redis side on purpose.
    let victim = events[17].id().to_owned();
    let mut conn = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut deleted = 0;
    for key in b.redis.stream_keys(&topic).await.unwrap() {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        for e in entries.ids {
            let hit = e.map.values().any(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).contains(&victim),
                _ => false,
            });
            if hit {
                let n: i64 = redis::cmd("XDEL")
                    .arg(&key)
                    .arg(&e.id)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                deleted += n;
            }
        }
    }
    assert_eq!(deleted, 1, "the event was on Redis once");
    let after = run().await;
    let t = &after.topics[0];
    assert_eq!(t.missing_on_redis, vec![victim], "{t:?}");
    assert!(t.missing_on_kafka.is_empty());
    assert_eq!((t.on_redis, t.on_kafka), (39, 40));
    assert!(!after.is_consistent());
    // A topic outside the domain is refused.
    let other = Topic::new(format!("other{tag}")).unwrap();
    assert!(matches!(
        verify(&b.redis, &b.kafka, &domain, &[other], from, until, &opts).await,
        Err(Error::Config(_))
    ));
    redis.cleanup().await;
}
