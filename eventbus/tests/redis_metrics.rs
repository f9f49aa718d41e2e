//! The bus's metrics, read back through a small recording `metrics::Recorder` (one global
//! recorder per test binary, so this file holds a single test): every entry of
//! `windlass_eventbus::metrics::CATALOG` is emitted with its labels, and the per-partition
//! figures follow the partitions a member holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use windlass_eventbus::partition::{PartitionCount, partition_for_key};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{
    Event, Group, HandlerError, Publisher, RetryPolicy, SubscribeOptions, Subscriber, Topic,
    handler_fn,
};
use windlass_testkit::conformance::bus::{keyed, wait_until};

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Metric name -> label sets seen, and the cells.
#[derive(Default, Clone)]
struct Recording(Arc<Mutex<HashMap<String, Arc<Cell>>>>);

impl Recording {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0.lock().unwrap().entry(name).or_default().clone()
    }

    fn names(&self) -> Vec<String> {
        self.0.lock().unwrap().keys().cloned().collect()
    }

    fn gauge(&self, series: &str) -> Option<f64> {
        self.0
            .lock()
            .unwrap()
            .get(series)
            .map(|c| f64::from_bits(c.0.load(Ordering::SeqCst)))
    }
}

impl Recorder for Recording {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalog_metric_is_emitted_and_partition_figures_follow_ownership() {
    let rec = Recording::default();
    metrics::set_global_recorder(rec.clone()).expect("first recorder");
    let redis = windlass_testkit::redis::fresh_prefix().await;
    let bus = RedisBus::connect(
        RedisConfig::new(redis.url.clone())
            .prefix(redis.prefix.clone())
            .partitions(PartitionCount::new(2).unwrap())
            .lease_ttl(Duration::from_millis(1000)),
    )
    .await
    .unwrap();
    let topic = Topic::new("metered").unwrap();
    let handler = handler_fn(|event: Event, ctx| async move {
        match event.partition_key() {
            Some("reject") => Err(HandlerError::reject("no")),
            Some("retry") if ctx.attempt == 1 => Err(HandlerError::retry("once")),
            Some("slow") if ctx.attempt == 1 => {
                std::future::pending::<()>().await;
                Ok(())
            }
            Some("stuck") => {
                std::future::pending::<()>().await;
                Ok(())
            }
            _ => Ok(()),
        }
    });
    let options = SubscribeOptions::default()
        .handler_timeout(Duration::from_millis(300))
        .shutdown_timeout(Duration::from_millis(200))
        .retry(
            RetryPolicy::default()
                .with_max_attempts(1000)
                .with_delays(Duration::from_millis(5), Duration::from_millis(10)),
        );
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("g").unwrap(),
            Arc::new(handler),
            options,
        )
        .await
        .unwrap();
    for key in ["ok", "retry", "reject", "slow", "stuck"] {
        bus.publish(&topic, &keyed(key, 0)).await.unwrap();
    }
    let stuck = partition_for_key(b"stuck", PartitionCount::new(2).unwrap());
    let series = |name: &str, p: u32| format!("{name}{{group=g,partition={p},topic=metered}}");
    // The migration's metrics (`windlass_bus_migration_*`, `windlass_bus_dual_publish_*`) come
    // from `migrate`, not from a bus: not expected here.
    let bus_metric = |name: &str| !name.contains("migration") && !name.contains("dual_publish");
    wait_until("every catalog metric was emitted", || {
        let names = rec.names();
        windlass_eventbus::metrics::CATALOG
            .iter()
            .filter(|d| bus_metric(d.name))
            .all(|def| {
                names
                    .iter()
                    .any(|n| n.starts_with(&format!("{}{{", def.name)))
            })
    })
    .await;
    // Label sets match the catalog.
    for def in windlass_eventbus::metrics::CATALOG {
        for name in rec
            .names()
            .iter()
            .filter(|n| n.starts_with(&format!("{}{{", def.name)))
        {
            let labels: Vec<&str> = name[def.name.len() + 1..name.len() - 1]
                .split(',')
                .map(|kv| kv.split('=').next().unwrap())
                .collect();
            let mut expected: Vec<&str> = def.labels.to_vec();
            expected.sort_unstable();
            assert_eq!(labels, expected, "{name}");
        }
    }
    wait_until(
        "the owner reports the stuck partition's pending entry",
        || {
            rec.gauge(&series("windlass_bus_partition_owned", stuck)) == Some(1.0)
                && rec.gauge(&series("windlass_bus_partition_pending", stuck)) >= Some(1.0)
                && rec.gauge(&series(
                    "windlass_bus_partition_oldest_pending_seconds",
                    stuck,
                )) > Some(0.0)
        },
    )
    .await;
    // A member that leaves zeroes what it reported.
    sub.shutdown().await.unwrap();
    for p in 0..2 {
        assert_eq!(
            rec.gauge(&series("windlass_bus_partition_owned", p)),
            Some(0.0)
        );
        assert_eq!(
            rec.gauge(&series("windlass_bus_partition_pending", p)),
            Some(0.0)
        );
    }
    redis.cleanup().await;
}
