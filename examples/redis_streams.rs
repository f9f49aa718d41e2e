//! The event bus on Redis Streams: publish, two members of one consumer group sharing the
//! topic's partitions (order per key holds across both), a second group getting every event, a
//! failing handler retried then dead-lettered, and the operator's view of the groups.
//!
//! ```text
//! cargo run --example redis_streams --features redis
//! # WINDLASS_REDIS_URL=redis://host:6379 to use another server
//! ```
//!
//! Everything is written under a fresh key prefix (`windlass-example-<pid>`); the topic is
//! deleted at the end (`BusAdmin::delete_topic`: its partitions, groups and dead letters).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use windlass::eventbus::partition::PartitionCount;
use windlass::eventbus::redis::{RedisBus, RedisConfig, Trim};
use windlass::eventbus::{
    BusAdmin, DeadLetters, Event, Group, HandlerError, Publisher, RetryPolicy, SubscribeOptions,
    Subscriber, TenantScope, Topic, handler_fn,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("WINDLASS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("windlass-example-{}", std::process::id());
    let config = RedisConfig::new(url.clone())
        .prefix(prefix.clone())
        // 4 partitions: up to 4 members of a group share the work, each key in one of them.
        .partitions(PartitionCount::new(4)?)
        // Keep about the newest 100k entries per topic (this can drop unread entries; size it
        // well above your consumers' worst lag).
        .trim(Trim::MaxLen(100_000));
    let bus = RedisBus::connect(config).await?;
    let invoices = Topic::new("invoices")?;
    println!("partition streams {:?}", bus.stream_keys(&invoices).await?);

    // Two members of the group "ledger" split the partitions between them.
    let handled = Arc::new(AtomicUsize::new(0));
    let ledger = Group::new("ledger")?;
    let mut subs = Vec::new();
    for member in ["ledger-1", "ledger-2"] {
        let handled = handled.clone();
        let handler = handler_fn(move |event, ctx| {
            let handled = handled.clone();
            async move {
                let amount: u64 = event
                    .data_as()
                    .map_err(HandlerError::reject)?
                    .unwrap_or_default();
                if amount == 13 {
                    // A bug this handler cannot get past: retried, then dead-lettered.
                    return Err(HandlerError::retry(format!("cannot book amount {amount}")));
                }
                handled.fetch_add(1, Ordering::SeqCst);
                println!(
                    "{}: booked {amount} (event {}, attempt {})",
                    ctx.consumer,
                    event.id(),
                    ctx.attempt
                );
                Ok(())
            }
        });
        let options = SubscribeOptions::default()
            .consumer(member)
            .concurrency(4)
            .retry(
                RetryPolicy::default()
                    .with_max_attempts(3)
                    .with_delays(Duration::from_millis(20), Duration::from_millis(100)),
            );
        subs.push(
            bus.subscribe(&invoices, &ledger, Arc::new(handler), options)
                .await?,
        );
    }

    // Another group gets every event too.
    let audited = Arc::new(AtomicUsize::new(0));
    let audit = {
        let audited = audited.clone();
        handler_fn(move |_event, _ctx| {
            let audited = audited.clone();
            async move {
                audited.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    subs.push(
        bus.subscribe(
            &invoices,
            &Group::new("audit")?,
            Arc::new(audit),
            SubscribeOptions::default(),
        )
        .await?,
    );

    let events: Vec<Event> = (10..20u64)
        .map(|amount| {
            Event::builder("/billing", "invoice.paid")
                .org_id("acme")
                .partition_key(format!("inv_{amount}"))
                .data_json(&amount)
                .build()
        })
        .collect::<Result<_, _>>()?;
    bus.publish_batch(&invoices, &events).await?; // one round trip

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while (handled.load(Ordering::SeqCst) < 9 || audited.load(Ordering::SeqCst) < 10)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut dead = Vec::new();
    while dead.is_empty() && tokio::time::Instant::now() < deadline {
        dead = bus.dead_letters(&invoices, 10).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for group in bus.topic_groups(&invoices, &TenantScope::All).await? {
        let owners: Vec<String> = group
            .partitions
            .iter()
            .map(|p| format!("{}:{}", p.partition, p.owner.as_deref().unwrap_or("-")))
            .collect();
        println!(
            "group {}: members {:?}, owners {owners:?}",
            group.group, group.members
        );
    }
    for sub in subs {
        sub.shutdown().await?;
    }
    println!(
        "ledger handled {}, audit saw {}",
        handled.load(Ordering::SeqCst),
        audited.load(Ordering::SeqCst)
    );
    for letter in &dead {
        println!(
            "dead letter {} (group {}, entry {:?}, consumer {}): {}",
            letter.id, letter.group, letter.entry_id, letter.consumer, letter.error
        );
    }

    // Clean up: the topic's partitions, groups, leases and dead letters, without `KEYS`.
    bus.delete_topic(&invoices, &TenantScope::All).await?;
    Ok(())
}
