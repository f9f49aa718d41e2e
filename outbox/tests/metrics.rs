//! Every metric the outbox emits is in `metrics::CATALOG` with the same labels, and every
//! catalog entry is emitted: a recording `metrics::Recorder` (one global recorder per test
//! binary, so this file holds a single test) watches a scenario that exercises them all.
#![cfg(feature = "sqlite")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tokio::sync::Notify;
use windlass_core::TenantScope;
use windlass_eventbus::{Event, Group, MemoryBus, Publisher, SubscribeOptions, Subscriber, Topic};
use windlass_outbox::sqlite::{Inbox, SqliteOutboxStore};
use windlass_outbox::{DeadFilter, OutboxAdmin, Relay};
use windlass_testkit::conformance::outbox::fast_options;
use windlass_testkit::outbox::{OutboxFixture, Recorder as Bus, SqliteFixture, event};

struct Nop;
impl CounterFn for Nop {
    fn increment(&self, _: u64) {}
    fn absolute(&self, _: u64) {}
}
impl GaugeFn for Nop {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, _: f64) {}
}
impl HistogramFn for Nop {
    fn record(&self, _: f64) {}
}

/// Names and label names of everything registered.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>);

impl Seen {
    fn note(&self, key: &Key) {
        let labels: BTreeSet<String> = key.labels().map(|l| l.key().to_owned()).collect();
        self.0.lock().unwrap().insert(key.name().to_owned(), labels);
    }
}

impl Recorder for Seen {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.note(key);
        Counter::from_arc(Arc::new(Nop))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.note(key);
        Gauge::from_arc(Arc::new(Nop))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.note(key);
        Histogram::from_arc(Arc::new(Nop))
    }
}

/// Publishes, then (once) freezes its thread for 3 s, as a stop-the-world pause or SIGSTOP
/// would: no timeout of the relay can cut it short.
struct Gate {
    inner: Bus,
    first: AtomicBool,
    reached: Notify,
}

#[async_trait]
impl Publisher for Gate {
    async fn publish(&self, topic: &Topic, event: &Event) -> windlass_eventbus::Result<()> {
        self.publish_batch(topic, std::slice::from_ref(event)).await
    }
    async fn publish_batch(
        &self,
        topic: &Topic,
        events: &[Event],
    ) -> windlass_eventbus::Result<()> {
        self.inner.publish_batch(topic, events).await?;
        if self.first.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            std::thread::sleep(Duration::from_secs(3));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_emitted_metric_is_in_the_catalog_and_every_entry_is_emitted() {
    let seen = Seen::default();
    metrics::set_global_recorder(seen.clone()).unwrap();
    let f = SqliteFixture::setup().await;
    let store = f.store();
    let t = Topic::new("things").unwrap();
    let all = TenantScope::All;

    // Published, transient and permanent failures, dead.
    let rejected = event("r", 1);
    f.enqueue(&t, &[event("a", 1), rejected.clone(), event("p", 1)])
        .await;
    let bus = Bus::new();
    bus.reject(rejected.id(), true);
    bus.fail_key("p", true);
    bus.fail_batches_after(Some(0));
    let relay = Relay::new(store.clone(), bus.clone()).with_options(fast_options());
    relay.run_once().await.unwrap();
    bus.fail_key("p", false);
    bus.fail_batches_after(None);

    // A lease lost: a relay frozen between publish and mark past its lease.
    f.enqueue(&t, &[event("l", 1)]).await;
    let gate = Arc::new(Gate {
        inner: Bus::new(),
        first: AtomicBool::new(true),
        reached: Notify::new(),
    });
    let held = Relay::from_arcs(Arc::new(store.clone()), gate.clone()).with_options(
        fast_options()
            .lease(Duration::from_millis(10))
            .publish_timeout(Duration::from_millis(100)),
    );
    let round = tokio::spawn(async move { held.run_once().await });
    gate.reached.notified().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(relay.run_once().await.unwrap().published >= 1, "taken over");
    let r = round.await.unwrap().unwrap();
    assert!(r.lease_lost > 0, "{r:?}");

    // A relay error: a claim on a closed pool.
    let closed = f.new_pool(1).await;
    closed.close().await;
    assert!(
        Relay::new(SqliteOutboxStore::new(closed), Bus::new())
            .run_once()
            .await
            .is_err()
    );

    // Operator actions.
    let dead = store
        .list_dead(&all, &DeadFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(dead.items.len(), 1);
    store
        .requeue(&all, &[dead.items[0].delivery.clone()])
        .await
        .unwrap();
    relay.run_once().await.unwrap();
    store.skip_all(&all, &DeadFilter::default()).await.unwrap();

    // Inbox duplicates.
    let mem = MemoryBus::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let handler = Inbox::new(f.pool.clone(), "c")
        .unwrap()
        .handler(|tx, _event, _ctx| async move { Ok(tx) })
        .on_duplicate(move |_, _| d.store(true, Ordering::SeqCst));
    let sub = mem
        .subscribe(
            &t,
            &Group::new("c").unwrap(),
            Arc::new(handler),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let dup = event("d", 1);
    mem.publish(&t, &dup).await.unwrap();
    mem.publish(&t, &dup).await.unwrap();
    // Before the maintenance below ages and deletes inbox records: a duplicate handled after
    // that deletion is new again (a loaded run once lost the count that way).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !dropped.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the inbox never dropped the duplicate"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Maintenance: gauges and deletions.
    f.enqueue(&t, &[event("q", 1)]).await;
    f.backdate(40 * 86_400).await;
    let down = Bus::new();
    down.set_down(true);
    let maint = Relay::new(store.clone(), down)
        .with_options(
            fast_options()
                .maintenance(true)
                .maintenance_interval(Duration::from_millis(50))
                .stats_interval(Duration::from_millis(50))
                .retention(Some(Duration::from_secs(86_400)))
                .dead_retention(Some(Duration::from_secs(86_400)))
                .inbox_retention(Some(Duration::from_secs(86_400))),
        )
        .spawn();
    let catalog: BTreeMap<&str, BTreeSet<String>> = windlass_outbox::metrics::CATALOG
        .iter()
        .map(|m| (m.name, m.labels.iter().map(|l| (*l).to_owned()).collect()))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<&str> = {
            let s = seen.0.lock().unwrap();
            catalog
                .keys()
                .filter(|n| !s.contains_key(**n))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never emitted: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    maint.shutdown().await;
    sub.shutdown().await.unwrap();
    let s = seen.0.lock().unwrap();
    for (name, labels) in s.iter().filter(|(n, _)| n.starts_with("windlass_outbox")) {
        let Some(want) = catalog.get(name.as_str()) else {
            panic!("{name} is emitted but not in the catalog");
        };
        assert_eq!(labels, want, "labels of {name}");
    }
}
