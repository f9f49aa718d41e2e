//! Event-driven invalidation end to end: rules run by a subscriber on the bus.

mod common;

use std::sync::Arc;
use std::time::Duration;

use windlass_cache::{Cache, CacheOptions, InvalidationHandler, InvalidationRules};
use windlass_core::{Group, Topic};
use windlass_eventbus::{Event, Publisher, SubscribeOptions, Subscriber};

#[cfg(feature = "memory")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_invoice_events_invalidate_their_tags_on_the_memory_bus() {
    use windlass_core::RetryPolicy;
    use windlass_eventbus::{DeadLetters, MemoryBus};

    let cache = Cache::with_options(windlass_cache::MemoryStore::new(), CacheOptions::default());
    let invoices = cache
        .entry::<common::Invoice>("invoice", common::minute())
        .unwrap();
    let (acme, other) = (common::org("acme"), common::org("other"));
    invoices
        .set(&acme, "42", &common::inv(42, 1), &["invoice:inv_42"])
        .await
        .unwrap();
    invoices
        .set(&acme, "43", &common::inv(43, 1), &["invoice:inv_43"])
        .await
        .unwrap();
    invoices
        .set(&other, "42", &common::inv(42, 9), &["invoice:inv_42"])
        .await
        .unwrap();

    let rules = InvalidationRules::parse(
        r#"on event type "invoice.paid" invalidate tag "invoice:{subject}""#,
    )
    .unwrap();
    let bus = MemoryBus::new();
    let topic = Topic::new("billing").unwrap();
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("cache-invalidation").unwrap(),
            Arc::new(InvalidationHandler::new(cache.clone(), rules)),
            SubscribeOptions::default().retry(RetryPolicy::no_retry()),
        )
        .await
        .unwrap();
    let paid = Event::builder("/billing", "invoice.paid")
        .subject("inv_42")
        .org_id("acme")
        .build()
        .unwrap();
    bus.publish(&topic, &paid).await.unwrap();
    // An event no rule can render (no subject) goes to the DLQ with the reason.
    let broken = Event::builder("/billing", "invoice.paid")
        .org_id("acme")
        .build()
        .unwrap();
    bus.publish(&topic, &broken).await.unwrap();

    let (inv, a) = (invoices.clone(), acme.clone());
    common::eventually(Duration::from_secs(5), move || {
        let (inv, a) = (inv.clone(), a.clone());
        async move { inv.get(&a, "42").await.unwrap().is_none() }
    })
    .await;
    assert_eq!(
        invoices.get(&acme, "43").await.unwrap(),
        Some(common::inv(43, 1))
    );
    assert_eq!(
        invoices.get(&other, "42").await.unwrap(),
        Some(common::inv(42, 9)),
        "another tenant was invalidated"
    );
    let bus2 = bus.clone();
    let topic2 = topic.clone();
    common::eventually(Duration::from_secs(5), move || {
        let (bus, topic) = (bus2.clone(), topic2.clone());
        async move { !bus.dead_letters(&topic, 10).await.unwrap().is_empty() }
    })
    .await;
    let dlq = bus.dead_letters(&topic, 10).await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert!(dlq[0].error.contains("subject"), "{}", dlq[0].error);
    sub.shutdown_within(Duration::from_secs(10)).await.unwrap();
}

/// Redis Streams bus -> invalidation handler (in "process" B) -> tag bump and notice ->
/// the L1 of "process" A stops serving the old value.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_the_redis_streams_bus_invalidate_every_instance() {
    use windlass_cache::{L1Options, RedisStore, RedisStoreOptions};
    use windlass_eventbus::redis::{RedisBus, RedisConfig};

    let t = windlass_testkit::redis::fresh_prefix().await;
    let options = CacheOptions::default().l1(L1Options::capacity(100));
    let store = || async {
        RedisStore::new(
            t.client.clone(),
            RedisStoreOptions::default().prefix(&t.prefix),
        )
        .await
        .unwrap()
    };
    let reader = Cache::with_options(store().await, options.clone());
    let invalidator = Cache::with_options(store().await, options);
    let r = reader.clone();
    common::eventually(Duration::from_secs(5), move || {
        let r = r.clone();
        async move { r.l1_active() }
    })
    .await;
    let invoices = reader
        .entry::<common::Invoice>("invoice", common::minute())
        .unwrap();
    let acme = common::org("acme");
    let loaded = invoices
        .get_or_load(&acme, "42", &["invoice:inv_42", "customer:7"], || async {
            Ok::<_, std::io::Error>(common::inv(42, 1))
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
    let (inv, a) = (invoices.clone(), acme.clone());
    let took = common::eventually(Duration::from_secs(10), move || {
        let (inv, a) = (inv.clone(), a.clone());
        async move { inv.get(&a, "42").await.unwrap().is_none() }
    })
    .await;
    println!("event published -> reader stops serving the value: {took:?}");

    // A data-field template, on an entry that only the customer tag covers.
    invoices
        .set(&acme, "43", &common::inv(43, 1), &["customer:7"])
        .await
        .unwrap();
    let updated = Event::builder("/crm", "customer.updated")
        .org_id("acme")
        .data_json(&serde_json::json!({"customer_id": 7}))
        .build()
        .unwrap();
    bus.publish(&topic, &updated).await.unwrap();
    let (inv, a) = (invoices.clone(), acme.clone());
    common::eventually(Duration::from_secs(10), move || {
        let (inv, a) = (inv.clone(), a.clone());
        async move { inv.get(&a, "43").await.unwrap().is_none() }
    })
    .await;
    assert!(invalidator.stats().invalidations >= 2);
    sub.shutdown_within(Duration::from_secs(10)).await.unwrap();
    t.cleanup().await;
}
