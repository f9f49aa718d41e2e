//! A Kafka broker stopped mid-migration delays only the Kafka destination.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_kafka_stopped_mid_migration_delays_only_kafka_and_loses_nothing() {
    let World {
        db,
        redis,
        tansu,
        brokers,
        billing_domain,
        billing,
        shipping_domain,
        shipping,
    } = world().await;

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
