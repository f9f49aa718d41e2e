//! The in-process bus's hot path: publish one by one, then every event consumed by a
//! subscription (handler runner included). Baseline in the same run: the same events through
//! a bare `tokio::sync::mpsc` channel (no runner, no ordering, no ack).
//!
//! ```text
//! cargo bench -p windlass-benches --bench bus_memory
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use windlass_eventbus::{Event, Group, MemoryBus, Publisher, SubscriberExt, Topic};

const N: usize = 1_000;

fn event(i: usize) -> Event {
    Event::builder("/bench", "order.placed")
        .partition_key(format!("k{}", i % 64))
        .data_json(&serde_json::json!({ "order": i }))
        .build()
        .expect("valid event")
}

fn bus(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let events: Vec<Event> = (0..N).map(event).collect();
    let mut g = c.benchmark_group("memory_bus");
    g.throughput(Throughput::Elements(N as u64));

    let bus = MemoryBus::new();
    let topic = Topic::new("bench").expect("topic");
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let sub = rt
        .block_on(
            bus.subscribe_fn(&topic, &Group::new("g").expect("group"), move |_e, _ctx| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            }),
        )
        .expect("subscribe");
    g.bench_function("publish_consume_1000", |b| {
        b.to_async(&rt).iter(|| async {
            let start = handled.load(Ordering::Relaxed);
            for e in &events {
                bus.publish(&topic, e).await.expect("publish");
            }
            while handled.load(Ordering::Relaxed) < start + N {
                tokio::task::yield_now().await;
            }
        })
    });
    g.bench_function("publish_batch_1000", |b| {
        b.to_async(&rt).iter(|| async {
            let start = handled.load(Ordering::Relaxed);
            bus.publish_batch(&topic, &events).await.expect("publish");
            while handled.load(Ordering::Relaxed) < start + N {
                tokio::task::yield_now().await;
            }
        })
    });
    g.bench_function("baseline_mpsc_1000", |b| {
        b.to_async(&rt).iter(|| async {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(N);
            let consumer = tokio::spawn(async move {
                let mut n = 0;
                while rx.recv().await.is_some() {
                    n += 1;
                }
                n
            });
            for e in &events {
                tx.send(e.clone()).await.expect("send");
            }
            drop(tx);
            assert_eq!(consumer.await.expect("consumer"), N);
        })
    });
    g.finish();
    rt.block_on(sub.shutdown()).expect("shutdown");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        // Charts come from `src/bin/plot.rs`; criterion's own would need a TrueType font library.
        .without_plots()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(20);
    targets = bus
}
criterion_main!(benches);
