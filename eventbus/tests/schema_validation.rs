//! Schema validation end to end on the in-memory bus: the publisher refuses invalid events, the
//! subscriber-side wrapper dead-letters invalid ones written by a non-validating publisher, and
//! the migration helpers route a domain between two buses.
#![cfg(all(feature = "schema", feature = "memory"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use windlass_eventbus::migrate::{Backend, Migration, Routes};
use windlass_eventbus::schema::{
    SchemaError, SchemaRegistry, ValidatingHandler, ValidatingPublisher,
};
use windlass_eventbus::{
    DeadLetters, Error, Event, Group, MemoryBus, Publisher, SubscribeOptions, Subscriber,
    SubscriberExt, Topic, handler_fn,
};

fn registry() -> Arc<SchemaRegistry> {
    let r = SchemaRegistry::new();
    r.register(
        "invoice.paid",
        "urn:invoice.paid:1",
        json!({ "type": "object", "required": ["amount"], "properties": { "amount": { "type": "integer" } } }),
    )
    .unwrap();
    Arc::new(r)
}

fn paid(amount: serde_json::Value) -> Event {
    Event::builder("/billing", "invoice.paid")
        .data_json(&json!({ "amount": amount }))
        .build()
        .unwrap()
}

#[tokio::test]
async fn invalid_events_are_refused_at_publish_and_dead_lettered_at_consume() {
    let bus = MemoryBus::new();
    let topic = Topic::new("invoices").unwrap();
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    let inner = handler_fn(move |_, _| {
        h.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("ledger").unwrap(),
            Arc::new(ValidatingHandler::new(inner, registry())),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();

    let validating = ValidatingPublisher::new(bus.clone(), registry());
    validating.publish(&topic, &paid(json!(100))).await.unwrap();
    match validating.publish(&topic, &paid(json!("100"))).await {
        Err(Error::Schema(SchemaError::Invalid { errors, .. })) => {
            assert!(errors[0].contains("/amount"), "{errors:?}")
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
    // A batch with one invalid event sends nothing.
    assert!(
        validating
            .publish_batch(&topic, &[paid(json!(1)), paid(json!(null))])
            .await
            .is_err()
    );

    // A producer that does not validate: the consumer side dead-letters the invalid event.
    bus.publish(&topic, &paid(json!("lots"))).await.unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let dlq = loop {
        let dlq = bus.dead_letters(&topic, 10).await.unwrap();
        if !dlq.is_empty() {
            break dlq;
        }
        assert!(Instant::now() < end, "nothing dead-lettered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        dlq[0]
            .error
            .contains("does not match schema urn:invoice.paid:1"),
        "{}",
        dlq[0].error
    );
    sub.shutdown().await.unwrap();
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "only the valid event reached the handler"
    );
}

#[tokio::test]
async fn a_validating_dual_publisher_and_routed_subscriptions_on_memory_buses() {
    let migration = Migration::new(
        MemoryBus::new(),
        MemoryBus::new(),
        Routes::new(Backend::Redis),
    );
    let publisher = ValidatingPublisher::new(migration.clone(), registry());
    let invoices = Topic::new("billing.invoices").unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let s = seen.clone();
    let sub = migration
        .subscribe_fn(&invoices, &Group::new("ledger").unwrap(), move |_, _| {
            s.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .await
        .unwrap();
    publisher.publish(&invoices, &paid(json!(1))).await.unwrap();
    assert!(
        publisher
            .publish(&invoices, &paid(json!("x")))
            .await
            .is_err()
    );
    migration.switch("billing", Backend::Kafka);
    assert_eq!(migration.backend_for(&invoices), Backend::Kafka);
    assert_eq!(
        migration.backend_for(&Topic::new("billingx.invoices").unwrap()),
        Backend::Redis
    );
    migration.switch("billing", Backend::Redis);
    let end = Instant::now() + Duration::from_secs(10);
    // The event is on both buses: the subscription sees it once per bus it read (no inbox here).
    while seen.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await.unwrap();
}
