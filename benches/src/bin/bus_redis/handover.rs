//! Handover time: 16 partitions, `members` members (each its own `RedisBus`), events flowing
//! to every partition every 5 ms; one member crashes (its subscription aborted: no leave, its
//! leases expire) or leaves gracefully (`shutdown`); for each partition it held, the time until
//! another member's handler runs an event of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use windlass_eventbus::partition::{PartitionCount, partition_for_key};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{
    BusAdmin, Event, Group, Publisher, SubscribeOptions, Subscriber, Subscription, TenantScope,
    Topic, handler_fn,
};

use super::BoxResult;

/// (partition, member index, when) of every handler call.
type Calls = Arc<Mutex<Vec<(u32, usize, Instant)>>>;

const LEASE: Duration = Duration::from_secs(2);
const PARTITIONS: u32 = 16;

async fn member(
    config: &RedisConfig,
    topic: &Topic,
    m: usize,
    calls: &Calls,
) -> BoxResult<Subscription> {
    let calls = calls.clone();
    let handler = handler_fn(move |_event: Event, ctx| {
        calls
            .lock()
            .unwrap()
            .push((ctx.partition.unwrap_or(u32::MAX), m, Instant::now()));
        async { Ok(()) }
    });
    let bus = RedisBus::connect(config.clone()).await?;
    Ok(bus
        .subscribe(
            topic,
            &Group::new("handover")?,
            Arc::new(handler),
            SubscribeOptions::default()
                .consumer(format!("c{m}"))
                .handler_timeout(Duration::from_secs(1)),
        )
        .await?)
}

/// Partitions held by member `m` once every partition has an owner and all members hold some.
async fn settled(bus: &RedisBus, topic: &Topic, members: usize, m: usize) -> BoxResult<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let groups = bus.topic_groups(topic, &TenantScope::All).await?;
        if let Some(g) = groups.first() {
            let owners: Vec<Option<String>> =
                g.partitions.iter().map(|p| p.owner.clone()).collect();
            let distinct: std::collections::HashSet<&String> = owners.iter().flatten().collect();
            if owners.iter().all(Option::is_some) && distinct.len() == members {
                let prefix = format!("c{m}~");
                return Ok(g
                    .partitions
                    .iter()
                    .filter(|p| p.owner.as_deref().is_some_and(|o| o.starts_with(&prefix)))
                    .map(|p| p.partition)
                    .collect());
            }
        }
        if Instant::now() > deadline {
            return Err("the group never settled".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One round: handover delays (µs) of the victim's partitions.
async fn round(config: &RedisConfig, members: usize, crash: bool, n: usize) -> BoxResult<Vec<u64>> {
    let topic = Topic::new(format!(
        "handover-{}-{n}",
        if crash { "crash" } else { "leave" }
    ))?;
    let bus = RedisBus::connect(config.clone()).await?;
    let calls: Calls = Arc::default();
    let mut subs = Vec::new();
    for m in 0..members {
        subs.push(member(config, &topic, m, &calls).await?);
    }
    let victim_parts = settled(&bus, &topic, members, 0).await?;
    let count = PartitionCount::new(PARTITIONS)?;
    let keys: Vec<String> = (0..PARTITIONS)
        .map(|p| {
            (0..)
                .map(|i| format!("key-{i}"))
                .find(|k| partition_for_key(k.as_bytes(), count) == p)
                .expect("a key per partition")
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (bus, topic, stop) = (bus.clone(), topic.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let events: Vec<Event> = keys
                    .iter()
                    .map(|k| {
                        Event::builder("/bench", "bench.tick")
                            .partition_key(k)
                            .data_json(&seq)
                            .build()
                            .expect("valid event")
                    })
                    .collect();
                seq += 1;
                if bus.publish_batch(&topic, &events).await.is_err() {
                    break;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let victim = subs.remove(0);
    let t0 = Instant::now();
    if crash {
        victim.abort();
    } else {
        victim.shutdown().await?;
    }
    let deadline = t0 + LEASE * 5;
    let delays = loop {
        let firsts: Vec<Option<Instant>> = {
            let calls = calls.lock().unwrap();
            victim_parts
                .iter()
                .map(|p| {
                    calls
                        .iter()
                        .filter(|(cp, m, at)| cp == p && *m != 0 && *at >= t0)
                        .map(|(_, _, at)| *at)
                        .min()
                })
                .collect()
        };
        if firsts.iter().all(Option::is_some) {
            break firsts
                .into_iter()
                .flatten()
                .map(|at| (at - t0).as_micros() as u64)
                .collect::<Vec<_>>();
        }
        if Instant::now() > deadline {
            return Err(format!("partitions not taken over within {:?}", LEASE * 5).into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let _ = publisher.await;
    for sub in subs {
        sub.shutdown().await?;
    }
    bus.delete_topic(&topic, &TenantScope::All).await?;
    Ok(delays)
}

fn summary(delays: &[u64]) -> BoxResult<serde_json::Value> {
    let mut h = Histogram::<u64>::new(3)?;
    for d in delays {
        h.record(*d)?;
    }
    Ok(serde_json::json!({
        "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": h.max() as f64 / 1000.0,
        "partitions_measured": h.len(),
    }))
}

/// Handover after a crash and after a graceful leave, `rounds` of each.
pub(crate) async fn measure(
    config: &RedisConfig,
    members: usize,
    rounds: usize,
) -> BoxResult<serde_json::Value> {
    let config = config.clone().lease_ttl(LEASE);
    let (mut crash, mut leave) = (Vec::new(), Vec::new());
    for n in 0..rounds {
        crash.extend(round(&config, members, true, n).await?);
        leave.extend(round(&config, members, false, n).await?);
    }
    Ok(serde_json::json!({
        "partitions": PARTITIONS,
        "members": members,
        "lease_ttl_ms": LEASE.as_millis(),
        "rounds": rounds,
        "after_crash": summary(&crash)?,
        "after_graceful_leave": summary(&leave)?,
    }))
}
