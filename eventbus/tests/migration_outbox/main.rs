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

/// What the outage and switch tests start from: a fresh database and Redis prefix, a private
/// broker (consumer groups on the shared one are slowed down by every other test's groups, as
/// tansu 0.6 rebalances them, which would make these tests' timing theirs), and the two domains
/// with the billing topic created on Kafka.
struct World {
    db: windlass_testkit::postgres::TestDatabase,
    redis: windlass_testkit::redis::TestRedis,
    tansu: windlass_testkit::tansu::PrivateTansu,
    brokers: String,
    billing_domain: String,
    billing: Topic,
    shipping_domain: String,
    shipping: Topic,
}

async fn world() -> World {
    let db = setup_db().await;
    let redis = windlass_testkit::redis::fresh_prefix().await;
    let tansu = tokio::task::spawn_blocking(windlass_testkit::tansu::PrivateTansu::start)
        .await
        .unwrap();
    let brokers = tansu.brokers();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (billing_domain, billing, shipping_domain, shipping) = domains(&tag);
    windlass_testkit::kafka::create_topic(&brokers, &billing, 2).await;
    World {
        db,
        redis,
        tansu,
        brokers,
        billing_domain,
        billing,
        shipping_domain,
        shipping,
    }
}

fn domains(tag: &str) -> (String, Topic, String, Topic) {
    let billing = format!("billing{tag}");
    let shipping = format!("shipping{tag}");
    let b = Topic::new(format!("{billing}.invoices")).unwrap();
    let s = Topic::new(format!("{shipping}.parcels")).unwrap();
    (billing, b, shipping, s)
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

mod outage;
mod switch;
mod verify;
