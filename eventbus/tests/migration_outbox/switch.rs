//! Switch and rollback under load keep per-key order.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_switch_and_rollback_under_load_keep_per_key_order() {
    let World {
        db,
        redis,
        // Held to the end: the broker stops when it drops.
        tansu: _tansu,
        brokers,
        billing_domain,
        billing,
        shipping_domain,
        ..
    } = world().await;
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
