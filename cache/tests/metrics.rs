//! Every metric in `metrics::CATALOG` is emitted, nothing outside it is, and every emission
//! uses the catalog's labels. One test in its own binary: it installs the global recorder.
#![cfg(feature = "memory")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use windlass_cache::{
    BreakerOptions, Cache, CacheOptions, EntryRef, Error, InvalidationHandler, InvalidationRules,
    L1Options, MemoryCacheStore, Notice, Prepared, RawRead, Store, TypePolicy, Write,
};
use windlass_core::{Group, OrgId, RetryPolicy, Topic};
use windlass_eventbus::{Event, MemoryBus, Publisher, SubscribeOptions, Subscriber};
use windlass_testkit::conformance::cache::{Invoice, WAIT, eventually, inv, minute, org};

type Seen = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

#[derive(Clone)]
struct Rec(Seen);

struct Handle {
    name: String,
    labels: String,
    seen: Seen,
}

impl Handle {
    fn hit(&self) {
        self.seen
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default()
            .insert(self.labels.clone());
    }
}

impl CounterFn for Handle {
    fn increment(&self, _: u64) {
        self.hit()
    }
    fn absolute(&self, _: u64) {
        self.hit()
    }
}
impl GaugeFn for Handle {
    fn increment(&self, _: f64) {
        self.hit()
    }
    fn decrement(&self, _: f64) {
        self.hit()
    }
    fn set(&self, _: f64) {
        self.hit()
    }
}
impl HistogramFn for Handle {
    fn record(&self, _: f64) {
        self.hit()
    }
}

impl Rec {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let mut labels: Vec<&str> = key.labels().map(|l| l.key()).collect();
        labels.sort();
        Arc::new(Handle {
            name: key.name().to_owned(),
            labels: labels.join(","),
            seen: self.0.clone(),
        })
    }
}

impl Recorder for Rec {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

/// A memory store that can fail every call, or stop its heartbeats (a deaf subscription).
#[derive(Debug, Clone)]
struct Flaky {
    inner: MemoryCacheStore,
    down: Arc<AtomicBool>,
    deaf: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self, op: &'static str) -> windlass_cache::Result<()> {
        if self.down.load(SeqCst) {
            Err(Error::backend("flaky", op, "down"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn read(&self, entry: EntryRef<'_>) -> windlass_cache::Result<Option<RawRead>> {
        self.check("read")?;
        self.inner.read(entry).await
    }
    async fn prepare(
        &self,
        entry: EntryRef<'_>,
        tags: &[&str],
    ) -> windlass_cache::Result<Prepared> {
        self.check("prepare")?;
        self.inner.prepare(entry, tags).await
    }
    async fn write(&self, entry: EntryRef<'_>, write: Write<'_>) -> windlass_cache::Result<bool> {
        self.check("write")?;
        self.inner.write(entry, write).await
    }
    async fn invalidate(
        &self,
        org: &OrgId,
        tags: &[&str],
        notice: Option<&str>,
    ) -> windlass_cache::Result<()> {
        self.check("invalidate")?;
        self.inner.invalidate(org, tags, notice).await
    }
    fn notices(&self) -> Option<BoxStream<'static, Notice>> {
        let deaf = self.deaf.clone();
        Some(
            self.inner
                .notices()?
                .filter(move |n| {
                    std::future::ready(!(deaf.load(SeqCst) && matches!(n, Notice::Synced(_))))
                })
                .boxed(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalog_metric_is_emitted() {
    let seen: Seen = Arc::default();
    metrics::set_global_recorder(Rec(seen.clone())).unwrap();

    let store = Flaky {
        inner: MemoryCacheStore::new(),
        down: Arc::default(),
        deaf: Arc::default(),
    };
    let options = CacheOptions::default()
        .timeout(Duration::from_millis(200))
        .breaker(
            BreakerOptions::default()
                .failures(1)
                .open_for(Duration::from_millis(50)),
        )
        .replay_interval(Duration::from_millis(20))
        .l1(L1Options::capacity(100).max_staleness(Duration::from_millis(300)));
    let a = Cache::with_options(store.clone(), options.clone()).unwrap();
    let b = Cache::with_options(store.clone(), options).unwrap();
    for c in [&a, &b] {
        let c = c.clone();
        eventually(WAIT, move || std::future::ready(c.l1_active())).await;
    }
    let acme = org("acme");
    let plain = a.entry::<Invoice>("plain", minute()).unwrap();
    let short = TypePolicy::ttl(Duration::from_millis(50)).jitter(0.0);
    let swr = a
        .entry::<Invoice>(
            "swr",
            short
                .clone()
                .stale_while_revalidate(Duration::from_secs(60)),
        )
        .unwrap();
    let soft = a
        .entry::<Invoice>(
            "soft",
            short
                .fail_safe(Duration::from_secs(60))
                .soft_timeout(Duration::from_millis(20))
                .hard_timeout(Duration::from_millis(100)),
        )
        .unwrap();
    // Hits on both tiers, misses, loads, load errors.
    plain.set(&acme, "1", &inv(1, 1), &["t"]).await.unwrap();
    plain.get(&acme, "1").await.unwrap();
    plain.get(&acme, "1").await.unwrap();
    plain.get(&acme, "none").await.unwrap();
    let _ = plain
        .get_or_load(&acme, "2", &["t"], || async {
            Err::<Invoice, _>(std::io::Error::other("x"))
        })
        .await;
    // A decode failure.
    let ty = plain.data_type().clone();
    store.inner.put_raw(
        EntryRef::new(&acme, &ty, "g"),
        b"garbage",
        Duration::from_secs(60),
    );
    plain.get(&acme, "g").await.unwrap();
    // A discarded write: the tag moves while the load runs.
    let a2 = a.clone();
    let o2 = acme.clone();
    plain
        .get_or_load(&acme, "3", &["race"], || async move {
            a2.invalidate_tag(&o2, "race").await.unwrap();
            Ok::<_, Error>(inv(3, 1))
        })
        .await
        .unwrap();
    // Stale served, a background refresh, soft and hard timeouts.
    swr.set(&acme, "1", &inv(1, 1), &[] as &[&str])
        .await
        .unwrap();
    soft.set(&acme, "1", &inv(1, 1), &[] as &[&str])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    swr.get_or_load_owned(&acme, "1", &[] as &[&str], || async {
        Ok::<_, Error>(inv(1, 2))
    })
    .await
    .unwrap();
    soft.get_or_load_owned(
        &acme,
        "1",
        &[] as &[&str],
        std::future::pending::<Result<Invoice, Error>>,
    )
    .await
    .unwrap();
    let _ = soft
        .get_or_load(
            &acme,
            "cold",
            &[] as &[&str],
            std::future::pending::<Result<Invoice, Error>>,
        )
        .await;
    // Notices reach the other instance.
    a.invalidate_tag(&acme, "t").await.unwrap();
    let bb = b.clone();
    eventually(WAIT, move || std::future::ready(bb.stats().notices > 0)).await;
    // The store goes down: fail-open, breaker, queued invalidation; then replay.
    store.down.store(true, SeqCst);
    plain.get(&acme, "1").await.unwrap();
    assert!(a.invalidate_tag(&acme, "t").await.is_err());
    store.down.store(false, SeqCst);
    let aa = a.clone();
    eventually(WAIT, move || {
        std::future::ready(aa.pending_invalidations() == 0)
    })
    .await;
    // A deaf subscription.
    store.deaf.store(true, SeqCst);
    let aa = a.clone();
    eventually(WAIT, move || {
        std::future::ready(!aa.l1_active() && aa.stats().l1_deaf > 0)
    })
    .await;
    store.deaf.store(false, SeqCst);
    // A rule that cannot be rendered.
    let bus = MemoryBus::new();
    let topic = Topic::new("t").unwrap();
    let rules = InvalidationRules::new().on("x", "tag:{subject}").unwrap();
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("g").unwrap(),
            Arc::new(InvalidationHandler::new(a.clone(), rules)),
            SubscribeOptions::default().retry(RetryPolicy::no_retry()),
        )
        .await
        .unwrap();
    bus.publish(
        &topic,
        &Event::builder("/s", "x").org_id("acme").build().unwrap(),
    )
    .await
    .unwrap();
    let s2 = seen.clone();
    eventually(WAIT, move || {
        std::future::ready(
            s2.lock()
                .unwrap()
                .contains_key("windlass_cache_rule_failures_total"),
        )
    })
    .await;
    sub.shutdown_within(Duration::from_secs(10)).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let catalog: BTreeMap<&str, BTreeSet<String>> = windlass_cache::metrics::CATALOG
        .iter()
        .map(|m| {
            let mut labels: Vec<&str> = m.labels.to_vec();
            labels.sort();
            (m.name, BTreeSet::from([labels.join(",")]))
        })
        .collect();
    let ours: BTreeMap<&str, &BTreeSet<String>> = seen
        .iter()
        .filter(|(k, _)| k.starts_with("windlass_cache_"))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let missing: Vec<_> = catalog.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "catalog metrics never emitted: {missing:?}"
    );
    for (name, labels) in &ours {
        let expected = catalog
            .get(name)
            .unwrap_or_else(|| panic!("{name} is emitted but not in the catalog"));
        assert_eq!(*labels, expected, "labels of {name}");
    }
}
