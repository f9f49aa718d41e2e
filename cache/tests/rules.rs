//! Event-driven invalidation and warming end to end: rules run by a subscriber on the bus.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use windlass_cache::{
    Cache, CacheOptions, InvalidationHandler, InvalidationRules, MemoryCacheStore,
};
use windlass_core::{Group, Topic};
use windlass_eventbus::{Event, Publisher, SubscribeOptions, Subscriber};
use windlass_testkit::conformance::cache::{Invoice, WAIT, amount, eventually, inv, minute, org};

#[cfg(feature = "memory")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_invalidate_and_warm_and_one_failing_rule_does_not_stop_the_others() {
    use windlass_core::RetryPolicy;
    use windlass_eventbus::{DeadLetters, MemoryBus};

    let cache = Cache::with_options(MemoryCacheStore::new(), CacheOptions::default()).unwrap();
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let summaries = cache.entry::<Invoice>("summary", minute()).unwrap();
    let (acme, other) = (org("acme"), org("other"));
    for (o, k, a) in [(&acme, "42", 1), (&acme, "43", 1), (&other, "42", 9)] {
        invoices
            .set(o, k, &inv(42, a), &[format!("invoice:inv_{k}")])
            .await
            .unwrap();
    }
    summaries
        .set(&acme, "inv_42", &inv(42, 1), &["s"])
        .await
        .unwrap();

    // The "database" the warming rule reloads from.
    let db = Arc::new(AtomicU64::new(1));
    let rules = InvalidationRules::parse(
        r#"on event type "invoice.paid" invalidate tag "by-key:{partitionkey}"
           on event type "invoice.paid" invalidate tag "invoice:{subject}"
           on event type "invoice.paid" reload "summary" key "{subject}" tags "s"
           on event type "invoice.paid" reload "unregistered" key "{subject}""#,
    )
    .unwrap();
    let d = db.clone();
    let handler = InvalidationHandler::new(cache.clone(), rules).reloader(
        summaries.clone(),
        move |_org, _key| {
            let d = d.clone();
            async move { Ok::<_, std::io::Error>(inv(42, d.load(SeqCst))) }
        },
    );
    let bus = MemoryBus::new();
    let topic = Topic::new("billing").unwrap();
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("cache-rules").unwrap(),
            Arc::new(handler.clone()),
            SubscribeOptions::default().retry(RetryPolicy::no_retry()),
        )
        .await
        .unwrap();
    db.store(2, SeqCst);
    // No partition key: the first rule cannot render; the others must still apply.
    let paid = Event::builder("/billing", "invoice.paid")
        .subject("inv_42")
        .org_id("acme")
        .build()
        .unwrap();
    bus.publish(&topic, &paid).await.unwrap();

    let (i, a) = (invoices.clone(), acme.clone());
    eventually(WAIT, move || {
        let (i, a) = (i.clone(), a.clone());
        async move { i.get(&a, "42").await.unwrap().is_none() }
    })
    .await;
    let (s, a) = (summaries.clone(), acme.clone());
    eventually(WAIT, move || {
        let (s, a) = (s.clone(), a.clone());
        async move { amount(&s.get(&a, "inv_42").await.unwrap()) == Some(2) }
    })
    .await;
    assert_eq!(amount(&invoices.get(&acme, "43").await.unwrap()), Some(1));
    assert_eq!(
        amount(&invoices.get(&other, "42").await.unwrap()),
        Some(9),
        "another tenant was invalidated"
    );
    // The failures are reported: the event is dead-lettered with each failed rule's reason.
    let (b, t) = (bus.clone(), topic.clone());
    eventually(WAIT, move || {
        let (b, t) = (b.clone(), t.clone());
        async move { !b.dead_letters(&t, 10).await.unwrap().is_empty() }
    })
    .await;
    let dlq = bus.dead_letters(&topic, 10).await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert!(dlq[0].error.contains("partitionkey"), "{}", dlq[0].error);
    assert!(dlq[0].error.contains("unregistered"), "{}", dlq[0].error);
    let stats = handler.stats();
    assert_eq!(stats.events, 1);
    assert_eq!(stats.invalidated, 1);
    assert_eq!(stats.reloaded, 1);
    assert_eq!(stats.render_failures, 1);
    assert_eq!(stats.reload_failures, 1);
    sub.shutdown_within(Duration::from_secs(10)).await.unwrap();
}

/// Redis Streams bus -> rules handler (in "process" B) -> tag bump and notice -> the L1 of
/// "process" A stops serving the old value.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_the_redis_streams_bus_invalidate_every_instance() {
    use windlass_cache::{L1Options, RedisCacheStore, RedisCacheStoreConfig};
    use windlass_eventbus::redis::{RedisBus, RedisConfig};

    let t = windlass_testkit::redis::fresh_prefix().await;
    let options = CacheOptions::default().l1(L1Options::capacity(100));
    let store = || async {
        RedisCacheStore::with_config(
            t.client.clone(),
            RedisCacheStoreConfig::default().prefix(&t.prefix),
        )
        .await
        .unwrap()
    };
    let reader = Cache::with_options(store().await, options.clone()).unwrap();
    let invalidator = Cache::with_options(store().await, options).unwrap();
    let r = reader.clone();
    eventually(WAIT, move || {
        let r = r.clone();
        async move { r.l1_active() }
    })
    .await;
    let invoices = reader.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    let loaded = invoices
        .get_or_load(&acme, "42", &["invoice:inv_42", "customer:7"], || async {
            Ok::<_, std::io::Error>(inv(42, 1))
        })
        .await
        .unwrap();
    assert_eq!(invoices.get(&acme, "42").await.unwrap(), Some(loaded));
    assert!(reader.stats().of("invoice").hits_l1 >= 1);

    let bus = RedisBus::connect(RedisConfig::new(&t.url).prefix(&t.prefix))
        .await
        .unwrap();
    let topic = Topic::new("billing").unwrap();
    let rules = InvalidationRules::new()
        .on("invoice.paid", "invoice:{subject}")
        .unwrap()
        .on("customer.updated", "customer:{data.customer_id}")
        .unwrap();
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("cache-invalidation").unwrap(),
            Arc::new(InvalidationHandler::new(invalidator.clone(), rules)),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let paid = Event::builder("/billing", "invoice.paid")
        .subject("inv_42")
        .org_id("acme")
        .build()
        .unwrap();
    bus.publish(&topic, &paid).await.unwrap();
    let (i, a) = (invoices.clone(), acme.clone());
    let took = eventually(WAIT, move || {
        let (i, a) = (i.clone(), a.clone());
        async move { i.get(&a, "42").await.unwrap().is_none() }
    })
    .await;
    println!("event published -> reader stops serving the value: {took:?}");

    invoices
        .set(&acme, "43", &inv(43, 1), &["customer:7"])
        .await
        .unwrap();
    let updated = Event::builder("/crm", "customer.updated")
        .org_id("acme")
        .data_json(&serde_json::json!({"customer_id": 7}))
        .build()
        .unwrap();
    bus.publish(&topic, &updated).await.unwrap();
    let (i, a) = (invoices.clone(), acme.clone());
    eventually(WAIT, move || {
        let (i, a) = (i.clone(), a.clone());
        async move { i.get(&a, "43").await.unwrap().is_none() }
    })
    .await;
    assert!(invalidator.stats().invalidations >= 2);
    sub.shutdown_within(Duration::from_secs(10)).await.unwrap();
    t.cleanup().await;
}
