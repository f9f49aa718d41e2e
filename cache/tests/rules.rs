//! Event-driven invalidation end to end: rules run by a subscriber on the bus.

mod common;

use std::sync::Arc;
use std::time::Duration;

use windlass_cache::{Cache, CacheOptions, InvalidationHandler, InvalidationRules, MemoryStore};
use windlass_eventbus::{DeadLetters, Event, MemoryBus, Publisher, SubscribeOptions, Subscriber};
use windlass_core::{Group, RetryPolicy, Topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_invoice_events_invalidate_their_tags_on_the_memory_bus() {
    let cache = Cache::with_options(MemoryStore::new(), CacheOptions::default());
    let invoices = cache.entry::<common::Invoice>("invoice", common::minute()).unwrap();
    let (acme, other) = (common::org("acme"), common::org("other"));
    invoices.set(&acme, "42", &common::inv(42, 1), &["invoice:inv_42"]).await.unwrap();
    invoices.set(&acme, "43", &common::inv(43, 1), &["invoice:inv_43"]).await.unwrap();
    invoices.set(&other, "42", &common::inv(42, 9), &["invoice:inv_42"]).await.unwrap();

    let rules = InvalidationRules::parse(r#"on event type "invoice.paid" invalidate tag "invoice:{subject}""#).unwrap();
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
    let paid = Event::builder("/billing", "invoice.paid").subject("inv_42").org_id("acme").build().unwrap();
    bus.publish(&topic, &paid).await.unwrap();
    // An event no rule can render (no subject) goes to the DLQ with the reason.
    let broken = Event::builder("/billing", "invoice.paid").org_id("acme").build().unwrap();
    bus.publish(&topic, &broken).await.unwrap();

    let (inv, a) = (invoices.clone(), acme.clone());
    common::eventually(Duration::from_secs(5), move || {
        let (inv, a) = (inv.clone(), a.clone());
        async move { inv.get(&a, "42").await.unwrap().is_none() }
    })
    .await;
    assert_eq!(invoices.get(&acme, "43").await.unwrap(), Some(common::inv(43, 1)));
    assert_eq!(invoices.get(&other, "42").await.unwrap(), Some(common::inv(42, 9)), "another tenant was invalidated");
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
    sub.shutdown().await.unwrap();
}
