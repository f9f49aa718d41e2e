//! The worker's metrics, read back through a small recording `metrics::Recorder` (one global
//! recorder per test binary, so this file holds a single test).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use windlass_jobs::memory::MemoryJobStore;
use windlass_jobs::{EnqueueOptions, JobState, JobStore};
use windlass_testkit::jobs::{Action, Probe, fast_config, token, wait_for, wait_state};

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
        self.0.store(value as u64, Ordering::SeqCst);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

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

    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.0.load(Ordering::SeqCst))
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
async fn worker_exports_per_queue_metrics() {
    let rec = Recording::default();
    metrics::set_global_recorder(rec.clone()).expect("first recorder");
    let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
    let t = token();
    let q = EnqueueOptions::new().queue("q");
    let ok = store
        .insert(vec![
            q.build(&Probe {
                token: t.clone(),
                n: 1,
                action: Action::Succeed,
            })
            .unwrap(),
        ])
        .await
        .unwrap();
    let failing = q.clone().max_attempts(1);
    let bad = store
        .insert(vec![
            failing
                .build(&Probe {
                    token: t.clone(),
                    n: 2,
                    action: Action::FailTimes(5),
                })
                .unwrap(),
        ])
        .await
        .unwrap();
    let unknown = store
        .insert(vec![
            q.build_raw("nobody.knows", serde_json::json!({})).unwrap(),
        ])
        .await
        .unwrap();
    let w = windlass_jobs::Worker::new(store.clone())
        .register::<Probe>()
        .config(
            fast_config()
                .metrics_interval(Some(Duration::from_millis(50)))
                // The gauges read the count snapshot: recount it often here.
                .counts_interval(Some(Duration::from_millis(50))),
        )
        .start()
        .unwrap();
    wait_state(
        &store,
        ok[0].id().unwrap(),
        JobState::Completed,
        Duration::from_secs(10),
    )
    .await;
    wait_state(
        &store,
        bad[0].id().unwrap(),
        JobState::Discarded,
        Duration::from_secs(10),
    )
    .await;
    // A kind the worker does not know is never fetched: it waits, counted as available.
    wait_for("depth gauges", Duration::from_secs(10), || async {
        rec.get("windlass_jobs_depth{queue=q,state=completed}") == 1
            && rec.get("windlass_jobs_depth{queue=q,state=discarded}") == 1
            && rec.get("windlass_jobs_depth{queue=q,state=available}") == 1
    })
    .await;
    assert_eq!(
        store
            .get(&windlass_core::TenantScope::All, unknown[0].id().unwrap())
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Available
    );
    w.shutdown().await.unwrap();
    assert_eq!(rec.get("windlass_jobs_completed_total{queue=q}"), 1);
    assert_eq!(
        rec.get("windlass_jobs_failed_total{queue=q,reason=error}"),
        1
    );
    assert_eq!(
        rec.get("windlass_jobs_failed_total{queue=q,reason=unknown_kind}"),
        0
    );
    assert_eq!(rec.get("windlass_jobs_unknown_kind_total{queue=q}"), 0);
    assert!(
        rec.get("windlass_jobs_wait_seconds{queue=q}") >= 2,
        "wait time recorded per started job"
    );
    assert!(
        rec.get(&format!(
            "windlass_jobs_run_seconds{{kind={},queue=q}}",
            "windlass.probe"
        )) >= 2
    );
}
