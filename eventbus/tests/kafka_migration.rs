//! Redis Streams -> Kafka migration on the real servers: dual publish, one domain moved while
//! another stays on Redis, then rolled back; no event lost, duplicates dropped by the inbox.
#![cfg(all(feature = "kafka", feature = "redis"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgPool;
use windlass_eventbus::kafka::{GroupTimeouts, KafkaBus, KafkaConfig};
use windlass_eventbus::migrate::{Backend, Migration, Routes};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{
    DeliveryContext, Event, Group, Handler, HandlerError, HandlerResult, Publisher,
    SubscribeOptions, Subscriber, Topic,
};
use windlass_outbox::Received;
use windlass_outbox::postgres::Inbox;

/// Records each event in the inbox and, for new ones, a row in `handled`, in one transaction.
struct Projection {
    inbox: Inbox,
    pool: PgPool,
    duplicates: AtomicU32,
    via_kafka: AtomicU32,
    via_redis: AtomicU32,
}

#[async_trait]
impl Handler for Projection {
    async fn handle(&self, event: &Event, ctx: &DeliveryContext) -> HandlerResult {
        // Kafka delivery ids are `partition@offset`, Redis ones stream ids `ms-seq`.
        if ctx.delivery_id.contains('@') {
            self.via_kafka.fetch_add(1, Ordering::SeqCst);
        } else {
            self.via_redis.fetch_add(1, Ordering::SeqCst);
        }
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
        sqlx::query("INSERT INTO handled (consumer, event_id) VALUES ($1, $2)")
            .bind(self.inbox.consumer())
            .bind(event.id())
            .execute(&mut *tx)
            .await
            .map_err(HandlerError::retry)?;
        tx.commit().await.map_err(HandlerError::retry)?;
        Ok(())
    }
}

async fn handled(pool: &PgPool, consumer: &str) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM handled WHERE consumer = $1")
        .bind(consumer)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_handled(pool: &PgPool, consumer: &str, n: i64) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (all, _) = handled(pool, consumer).await;
        if all >= n {
            return;
        }
        assert!(
            Instant::now() < end,
            "{consumer}: {all} of {n} events handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_domain_moves_to_kafka_and_back_while_another_stays_on_redis() {
    let db = windlass_testkit::postgres::fresh_database().await;
    windlass_outbox::postgres::migrate(&db.pool).await.unwrap();
    sqlx::query("CREATE TABLE handled (consumer text NOT NULL, event_id text NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let redis = windlass_testkit::redis::fresh_prefix().await;
    // A private broker: groups on the shared one wait behind every other test's rebalances.
    let tansu = tokio::task::spawn_blocking(windlass_testkit::tansu::PrivateTansu::start)
        .await
        .unwrap();
    let brokers = tansu.brokers();

    let tag = uuid::Uuid::new_v4().simple().to_string();
    let billing_domain = format!("billing{tag}");
    let billing = Topic::new(format!("{billing_domain}.invoices")).unwrap();
    let shipping = Topic::new(format!("shipping{tag}.parcels")).unwrap();
    for t in [&billing, &shipping] {
        windlass_testkit::kafka::create_topic(&brokers, t, 2).await;
    }

    let redis_bus = RedisBus::connect(RedisConfig::new(&redis.url).prefix(&redis.prefix))
        .await
        .unwrap();
    // Kafka groups are cluster-wide: a prefix per run keeps this run's `ledger` group apart from
    // earlier runs' on a shared broker.
    let kafka_bus = KafkaBus::new(
        KafkaConfig::new(&brokers)
            .group_timeouts(GroupTimeouts::tansu())
            .group_prefix(format!("{tag}.")),
    )
    .unwrap();
    let routes = Routes::new(Backend::Redis)
        .route(billing_domain.as_str(), Backend::Redis)
        .route(format!("shipping{tag}"), Backend::Redis);
    let migration = Migration::new(redis_bus, kafka_bus, routes);

    let projection = |consumer: &str| {
        Arc::new(Projection {
            inbox: Inbox::new(db.pool.clone(), consumer).unwrap(),
            pool: db.pool.clone(),
            duplicates: AtomicU32::new(0),
            via_kafka: AtomicU32::new(0),
            via_redis: AtomicU32::new(0),
        })
    };
    let ledger = projection("ledger");
    let tracker = projection("tracker");
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

    // A publisher dual-publishes both domains in three phases; the routes switch while a
    // phase is being published.
    let (go, mut phases) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let publisher = {
        let m = migration.clone();
        let (b, s) = (billing.clone(), shipping.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while let Some(phase) = phases.recv().await {
                for i in 0..40 {
                    for t in [&b, &s] {
                        let e = Event::builder("/test", "thing")
                            .subject(format!("key-{}", i % 5))
                            .data_json(&serde_json::json!({ "phase": phase, "i": i }))
                            .build()
                            .unwrap();
                        m.publish(t, &e).await.unwrap();
                        n += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            n / 2
        })
    };

    // Phase 0 on Redis.
    go.send(0).unwrap();
    wait_handled(&db.pool, "ledger", 40).await;
    // Phase 1: billing moves to Kafka mid-phase, shipping stays on Redis.
    go.send(1).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    migration
        .switch(billing_domain.as_str(), Backend::Kafka)
        .await
        .unwrap();
    assert_eq!(migration.backend_for(&billing), Backend::Kafka);
    assert_eq!(migration.backend_for(&shipping), Backend::Redis);
    wait_handled(&db.pool, "ledger", 80).await;
    let end = Instant::now() + Duration::from_secs(40);
    while ledger.via_kafka.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < end, "the ledger never read from Kafka");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Phase 2: roll back mid-phase.
    go.send(2).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let redis_before_rollback = ledger.via_redis.load(Ordering::SeqCst);
    migration
        .switch(billing_domain.as_str(), Backend::Redis)
        .await
        .unwrap();
    drop(go);
    let per_topic = i64::from(publisher.await.unwrap());
    assert_eq!(per_topic, 120);

    wait_handled(&db.pool, "ledger", per_topic).await;
    wait_handled(&db.pool, "tracker", per_topic).await;
    // Give late duplicates a moment to show up as (wrong) extra rows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (all, distinct) = handled(&db.pool, "ledger").await;
    assert_eq!(
        (all, distinct),
        (per_topic, per_topic),
        "ledger: every event exactly once"
    );
    let (all, distinct) = handled(&db.pool, "tracker").await;
    assert_eq!(
        (all, distinct),
        (per_topic, per_topic),
        "tracker: every event exactly once"
    );
    assert!(ledger.via_kafka.load(Ordering::SeqCst) > 0);
    assert!(
        ledger.duplicates.load(Ordering::SeqCst) > 0,
        "dual delivery made no duplicate for the inbox to drop"
    );
    assert_eq!(
        tracker.via_kafka.load(Ordering::SeqCst),
        0,
        "shipping stayed on Redis"
    );
    // After the rollback the ledger read Redis again.
    assert!(
        ledger.via_redis.load(Ordering::SeqCst) > redis_before_rollback,
        "the ledger did not read Redis after the rollback"
    );
    ledger_sub.shutdown().await.unwrap();
    tracker_sub.shutdown().await.unwrap();
    redis.cleanup().await;
}
