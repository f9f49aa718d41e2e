//! Moving one domain's consumers from Redis Streams to Kafka and back, with dual publish.
//!
//! ```text
//! cargo run --example kafka_migration --features kafka,redis
//! ```
//! Needs Redis (`WINDLASS_REDIS_URL`, default `redis://127.0.0.1:6379`) and a Kafka-compatible
//! broker (`WINDLASS_KAFKA_BROKERS`, default `127.0.0.1:19092`: the tansu broker the test suite
//! starts; to start one yourself, `scripts/ensure-tansu` prints its binary, then
//! `tansu broker --storage-engine memory://tansu/ --listener-url tcp://127.0.0.1:19092
//! --advertised-listener-url tcp://127.0.0.1:19092`).
//!
//! 1. Dual publish: every event goes to both buses; the `billing` domain reads Redis.
//! 2. Switch: `billing` moves to Kafka (the subscription starts on Kafka, then leaves Redis).
//! 3. Rollback: `billing` moves back to Redis.
//!
//! The handler deduplicates by (`source`, `id`) in memory here, standing in for the outbox
//! crate's `Inbox` (which does it in the consumer's Postgres transaction).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use windlass::eventbus::kafka::{GroupTimeouts, KafkaBus, KafkaConfig};
use windlass::eventbus::migrate::{Backend, Migration, Routes};
use windlass::eventbus::redis::{RedisBus, RedisConfig};
use windlass::eventbus::{Event, Group, Publisher, SubscriberExt, Topic};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url =
        std::env::var("WINDLASS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let brokers =
        std::env::var("WINDLASS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let domain = format!("billing{}", &run[..8]);
    let invoices = Topic::new(format!("{domain}.invoices"))?;

    let redis =
        RedisBus::connect(RedisConfig::new(&redis_url).prefix(format!("example-{}", &run[..8])))
            .await?;
    // Real Kafka: keep the default group timeouts. tansu needs shorter ones (see docs/kafka.md).
    let kafka = KafkaBus::new(KafkaConfig::new(&brokers).group_timeouts(GroupTimeouts::tansu()))?;
    kafka.create_topic(invoices.as_str(), 3).await?;
    let migration = Migration::new(redis, kafka, Routes::new(Backend::Redis));

    let seen = Arc::new(Mutex::new(HashSet::new()));
    let handled = seen.clone();
    let sub = migration
        .subscribe_fn(&invoices, &Group::new("ledger")?, move |event, ctx| {
            let handled = handled.clone();
            async move {
                let new = handled
                    .lock()
                    .unwrap()
                    .insert((event.source().to_owned(), event.id().to_owned()));
                let via = if ctx.delivery_id.contains('@') {
                    "kafka"
                } else {
                    "redis"
                };
                println!(
                    "{via:5} {} {}",
                    event.id(),
                    if new { "handled" } else { "duplicate dropped" }
                );
                Ok(())
            }
        })
        .await?;

    let publish = |n: usize| {
        let m = migration.clone();
        let t = invoices.clone();
        async move {
            for i in 0..n {
                let e = Event::builder("/billing", "invoice.paid")
                    .subject(format!("inv_{i}"))
                    .data_json(&i)
                    .build()?;
                m.publish(&t, &e).await?; // Redis and Kafka
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        }
    };

    println!(
        "-- 1. dual publish, {domain} consumers on {}",
        migration.backend_for(&invoices)
    );
    publish(3).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    migration.switch(domain.as_str(), Backend::Kafka);
    println!(
        "-- 2. switched {domain} to {}",
        migration.backend_for(&invoices)
    );
    tokio::time::sleep(Duration::from_secs(5)).await; // the Kafka group joins
    publish(3).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    migration.switch(domain.as_str(), Backend::Redis);
    println!(
        "-- 3. rolled {domain} back to {}",
        migration.backend_for(&invoices)
    );
    publish(3).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    sub.shutdown().await?;
    println!(
        "-- {} distinct events handled (9 published)",
        seen.lock().unwrap().len()
    );
    Ok(())
}
