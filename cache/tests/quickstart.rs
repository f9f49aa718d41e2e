//! The snippet handed to the facade's quickstart, run as a test (embedded store and bus, no
//! services).
#![cfg(feature = "memory")]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use windlass_cache::{Cache, InvalidationHandler, InvalidationRules, TypePolicy};
use windlass_core::{Group, OrgId, Topic};
use windlass_eventbus::{Event, MemoryBus, Publisher, SubscribeOptions, Subscriber};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Invoice {
    id: u64,
    paid: bool,
}

async fn quickstart_cache_demo() -> Result<(), Box<dyn std::error::Error>> {
    // An embedded cache (swap in `Cache::new(RedisStore::connect(url).await?)` for Redis).
    let cache = Cache::memory();
    let invoices = cache.entry::<Invoice>("invoice", TypePolicy::ttl(Duration::from_secs(60)))?;
    let acme = OrgId::new("acme")?;

    // Read-through: the loader runs once, the value is stored with its tags.
    let load = || async {
        Ok::<_, std::io::Error>(Invoice {
            id: 42,
            paid: false,
        })
    };
    let inv = invoices
        .get_or_load(&acme, "42", &["invoice:inv_42"], load)
        .await?;
    println!("cache: loaded {inv:?}");

    // Domain events invalidate tags: `on event type "invoice.paid" invalidate tag "invoice:{subject}"`.
    let bus = MemoryBus::new();
    let billing = Topic::new("billing")?;
    let rules = InvalidationRules::parse(
        r#"on event type "invoice.paid" invalidate tag "invoice:{subject}""#,
    )?;
    let handler = std::sync::Arc::new(InvalidationHandler::new(cache.clone(), rules));
    let sub = bus
        .subscribe(
            &billing,
            &Group::new("cache")?,
            handler,
            SubscribeOptions::default(),
        )
        .await?;
    let paid = Event::builder("/billing", "invoice.paid")
        .subject("inv_42")
        .org_id("acme")
        .build()?;
    bus.publish(&billing, &paid).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while invoices.get(&acme, "42").await?.is_some() {
        if tokio::time::Instant::now() > deadline {
            return Err("the invalidation did not arrive".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "cache: invoice.paid invalidated invoice 42; {:?}",
        cache.stats().of("invoice")
    );
    sub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_cache_demo_runs() {
    quickstart_cache_demo().await.unwrap();
}
