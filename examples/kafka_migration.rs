//! Moving one domain's consumers from Redis Streams to Kafka and back, with dual delivery
//! through the transactional outbox (one delivery state per bus), a route table in Postgres,
//! a two-phase switch, `verify`, and rollback.
//!
//! ```text
//! cargo run --example kafka_migration --features kafka,redis,outbox-postgres
//! ```
//! Needs Postgres (`WINDLASS_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`;
//! the windlass tables are created there), Redis (`WINDLASS_REDIS_URL`, default
//! `redis://127.0.0.1:6379`) and a Kafka-compatible broker (`WINDLASS_KAFKA_BROKERS`, default
//! `127.0.0.1:19092`: the tansu broker the test suite starts; to start one yourself,
//! `scripts/ensure-tansu` prints its binary, then `tansu broker --storage-engine memory://tansu/
//! --listener-url tcp://127.0.0.1:19092 --advertised-listener-url tcp://127.0.0.1:19092`).
//!
//! 1. Dual delivery: `billing` rows go to the `redis` and `kafka` destinations, one relay each;
//!    the consumers read Redis.
//! 2. Verify: both buses hold the same ids, in the same order per key.
//! 3. Switch: `billing` consumers drain on Redis, then start on Kafka (the inbox drops the
//!    events the new Kafka group reads again).
//! 4. Rollback: `billing` moves back to Redis.

use std::sync::Arc;
use std::time::Duration;

use windlass::eventbus::kafka::{GroupTimeouts, KafkaBus, KafkaConfig};
use windlass::eventbus::migrate::verify::{VerifyOptions, verify};
use windlass::eventbus::migrate::{Backend, Migration, RouteStore, Routes};
use windlass::eventbus::redis::{RedisBus, RedisConfig};
use windlass::eventbus::{Event, Group, HandlerError, SubscriberExt, Topic};
use windlass::outbox::postgres::{Inbox, Outbox, PgOutboxStore, PgRouteStore, migrate};
use windlass::outbox::{Destination, OutboxConfig, Received, Relay, RelayOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url =
        std::env::var("WINDLASS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let brokers =
        std::env::var("WINDLASS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned());
    let pg_url = std::env::var("WINDLASS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&pg_url)
        .await?;
    migrate(&pool).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let domain = format!("billing{run}");
    let invoices = Topic::new(format!("{domain}.invoices"))?;
    let prefix = format!("example-{run}");
    let redis_bus = || RedisBus::connect(RedisConfig::new(&redis_url).prefix(&prefix));
    // Real Kafka: keep the default group timeouts. tansu needs shorter ones (see docs/kafka.md).
    let kafka_bus =
        || KafkaBus::new(KafkaConfig::new(&brokers).group_timeouts(GroupTimeouts::tansu()));
    kafka_bus()?.create_topic(invoices.as_str(), 3).await?;

    // 1. The outbox routes billing rows to both buses; one relay per destination.
    let (to_redis, to_kafka) = (Destination::new("redis")?, Destination::new("kafka")?);
    let outbox = Outbox::with_config(
        OutboxConfig::default()
            .destinations([to_redis.clone()])
            .route(domain.as_str(), [to_redis.clone(), to_kafka.clone()]),
    )?;
    let store = PgOutboxStore::new(pool.clone());
    let relays = [
        Relay::new(store.clone(), redis_bus().await?)
            .with_options(RelayOptions::default().destination(to_redis))
            .spawn(),
        Relay::new(store, kafka_bus()?)
            .with_options(RelayOptions::default().destination(to_kafka))
            .spawn(),
    ];

    // The route table lives in Postgres: every process of the service shares it.
    let routes_store = Arc::new(PgRouteStore::new(pool.clone()));
    routes_store.migrate().await?;
    let routes_store: Arc<dyn RouteStore> = routes_store;
    let migration = Migration::with_store(
        redis_bus().await?,
        kafka_bus()?,
        Routes::new(Backend::Redis).route(domain.as_str(), Backend::Redis),
        routes_store,
    )
    .await?;

    // The consumer records each event in its inbox, in its own transaction.
    let inbox = Inbox::new(pool.clone(), "ledger")?;
    let (p, i) = (pool.clone(), inbox.clone());
    let sub = migration
        .subscribe_fn(&invoices, &Group::new("ledger")?, move |event, ctx| {
            let (pool, inbox) = (p.clone(), i.clone());
            async move {
                let mut tx = pool.begin().await.map_err(HandlerError::retry)?;
                let fresh = inbox
                    .record(&mut tx, &event)
                    .await
                    .map_err(HandlerError::retry)?;
                tx.commit().await.map_err(HandlerError::retry)?;
                let via = if ctx.delivery_id.contains('@') {
                    "kafka"
                } else {
                    "redis"
                };
                let what = if fresh == Received::New {
                    "handled"
                } else {
                    "duplicate dropped"
                };
                println!("{via:5} {} {what}", event.subject().unwrap_or(""));
                Ok(())
            }
        })
        .await?;

    let publish = |from: usize| {
        let (outbox, pool, topic) = (outbox.clone(), pool.clone(), invoices.clone());
        async move {
            let mut tx = pool.begin().await?;
            for i in from..from + 3 {
                let e = Event::builder("/billing", "invoice.paid")
                    .subject(format!("inv_{i}"))
                    .data_json(&i)
                    .build()?;
                outbox.enqueue(&mut tx, &topic, &e).await?; // Redis and Kafka destinations
            }
            tx.commit().await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        }
    };

    println!(
        "-- 1. dual delivery, {domain} consumers on {}",
        migration.backend_for(&invoices)
    );
    let start = chrono::Utc::now();
    publish(0).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let report = verify(
        migration.redis(),
        migration.kafka(),
        &domain,
        std::slice::from_ref(&invoices),
        start - chrono::Duration::seconds(1),
        chrono::Utc::now(),
        &VerifyOptions::default().timeout(Duration::from_secs(20)),
    )
    .await?;
    let t = &report.topics[0];
    println!(
        "-- 2. verify: {} on redis, {} on kafka, missing {:?} / {:?}, out of order {:?}",
        t.on_redis, t.on_kafka, t.missing_on_kafka, t.missing_on_redis, t.out_of_order
    );

    let r = migration.switch(&domain, Backend::Kafka).await?;
    println!(
        "-- 3. switched {domain} to {} (drained in {:?}, started in {:?})",
        r.to, r.drained_in, r.started_in
    );
    publish(3).await?;
    tokio::time::sleep(Duration::from_secs(6)).await; // the Kafka group joins (tansu: ~3 s)

    migration.switch(&domain, Backend::Redis).await?;
    println!(
        "-- 4. rolled {domain} back to {}",
        migration.backend_for(&invoices)
    );
    publish(6).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    sub.shutdown().await?;
    for r in relays {
        r.shutdown().await;
    }
    let handled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM windlass_inbox WHERE consumer = 'ledger'")
            .fetch_one(&pool)
            .await?;
    println!("-- {handled} distinct events handled (9 enqueued)");
    Ok(())
}
