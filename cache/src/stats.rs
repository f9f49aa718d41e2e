//! Counters of a cache: exported through the `metrics` facade (labelled by data type) and kept
//! in process for [`Cache::stats`](crate::Cache::stats).
//!
//! Metric names: `windlass_cache_hits_total{type,tier="l1"|"l2"}`, `windlass_cache_misses_total`,
//! `windlass_cache_stale_served_total`, `windlass_cache_loads_total`,
//! `windlass_cache_load_errors_total`, `windlass_cache_load_seconds` (histogram),
//! `windlass_cache_decode_failures_total`, `windlass_cache_fail_open_total`,
//! `windlass_cache_writes_discarded_total` (generation guard), and
//! `windlass_cache_invalidations_total` (tags bumped, no label).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Histogram};

/// Counters of one data type.
pub(crate) struct TypeCounters {
    pub(crate) hits_l1: Metric,
    pub(crate) hits_l2: Metric,
    pub(crate) misses: Metric,
    pub(crate) stale_served: Metric,
    pub(crate) loads: Metric,
    pub(crate) load_errors: Metric,
    pub(crate) decode_failures: Metric,
    pub(crate) fail_open: Metric,
    pub(crate) writes_discarded: Metric,
    load_nanos: AtomicU64,
    load_seconds: Histogram,
}

pub(crate) struct Metric {
    local: AtomicU64,
    exported: Counter,
}

impl Metric {
    fn new(name: &'static str, ty: &str, tier: Option<&'static str>) -> Self {
        let exported = match tier {
            Some(tier) => metrics::counter!(name, "type" => ty.to_owned(), "tier" => tier),
            None => metrics::counter!(name, "type" => ty.to_owned()),
        };
        Self {
            local: AtomicU64::new(0),
            exported,
        }
    }

    pub(crate) fn inc(&self) {
        self.local.fetch_add(1, Relaxed);
        self.exported.increment(1);
    }

    fn get(&self) -> u64 {
        self.local.load(Relaxed)
    }
}

impl TypeCounters {
    fn new(ty: &str) -> Self {
        Self {
            hits_l1: Metric::new("windlass_cache_hits_total", ty, Some("l1")),
            hits_l2: Metric::new("windlass_cache_hits_total", ty, Some("l2")),
            misses: Metric::new("windlass_cache_misses_total", ty, None),
            stale_served: Metric::new("windlass_cache_stale_served_total", ty, None),
            loads: Metric::new("windlass_cache_loads_total", ty, None),
            load_errors: Metric::new("windlass_cache_load_errors_total", ty, None),
            decode_failures: Metric::new("windlass_cache_decode_failures_total", ty, None),
            fail_open: Metric::new("windlass_cache_fail_open_total", ty, None),
            writes_discarded: Metric::new("windlass_cache_writes_discarded_total", ty, None),
            load_nanos: AtomicU64::new(0),
            load_seconds: metrics::histogram!("windlass_cache_load_seconds", "type" => ty.to_owned()),
        }
    }

    pub(crate) fn record_load(&self, took: Duration) {
        self.load_nanos
            .fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        self.load_seconds.record(took.as_secs_f64());
    }

    fn snapshot(&self) -> TypeStats {
        TypeStats {
            hits_l1: self.hits_l1.get(),
            hits_l2: self.hits_l2.get(),
            misses: self.misses.get(),
            stale_served: self.stale_served.get(),
            loads: self.loads.get(),
            load_errors: self.load_errors.get(),
            load_time: Duration::from_nanos(self.load_nanos.load(Relaxed)),
            decode_failures: self.decode_failures.get(),
            fail_open: self.fail_open.get(),
            writes_discarded: self.writes_discarded.get(),
        }
    }
}

/// Counters of one data type since the cache was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TypeStats {
    /// Fresh values served by the in-process L1.
    pub hits_l1: u64,
    /// Fresh values served by the store (L2).
    pub hits_l2: u64,
    /// Lookups that found no usable value (absent, expired, invalidated, undecodable, store
    /// unavailable).
    pub misses: u64,
    /// Stale values served (stale-while-revalidate, or fail-safe after a loader error).
    pub stale_served: u64,
    /// Loader runs.
    pub loads: u64,
    /// Loader runs that failed.
    pub load_errors: u64,
    /// Total time spent in loaders.
    pub load_time: Duration,
    /// Stored values that did not decode (garbage, another format, a changed type).
    pub decode_failures: u64,
    /// Store calls that failed or timed out and fell through (to a miss or the loader).
    pub fail_open: u64,
    /// Loaded values not written because the entry or a tag changed during the load.
    pub writes_discarded: u64,
}

impl TypeStats {
    /// Fresh hits (both tiers).
    pub fn hits(&self) -> u64 {
        self.hits_l1 + self.hits_l2
    }

    /// Hits over lookups (hits plus misses); 0 when nothing was looked up.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits() + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits() as f64 / total as f64
        }
    }
}

/// A snapshot of a cache's counters: [`Cache::stats`](crate::Cache::stats).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Per data type.
    pub types: BTreeMap<String, TypeStats>,
    /// Tags invalidated through this cache (each tag of `invalidate_tags` counts).
    pub invalidations: u64,
    /// Notices received from other instances (L1 sync).
    pub notices: u64,
    /// L1 resets (first subscription, reconnects, lag).
    pub l1_resets: u64,
}

impl Stats {
    /// The counters of one data type (zeros if it was never used).
    pub fn of(&self, data_type: &str) -> TypeStats {
        self.types.get(data_type).cloned().unwrap_or_default()
    }
}

/// The registry of a cache.
#[derive(Default)]
pub(crate) struct Registry {
    types: Mutex<BTreeMap<String, Arc<TypeCounters>>>,
    pub(crate) invalidations: AtomicU64,
    pub(crate) notices: AtomicU64,
    pub(crate) l1_resets: AtomicU64,
}

impl Registry {
    pub(crate) fn of(&self, ty: &str) -> Arc<TypeCounters> {
        let mut types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        types
            .entry(ty.to_owned())
            .or_insert_with(|| Arc::new(TypeCounters::new(ty)))
            .clone()
    }

    pub(crate) fn invalidated(&self, n: usize) {
        self.invalidations.fetch_add(n as u64, Relaxed);
        metrics::counter!("windlass_cache_invalidations_total").increment(n as u64);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        Stats {
            types: types
                .iter()
                .map(|(k, v)| (k.clone(), v.snapshot()))
                .collect(),
            invalidations: self.invalidations.load(Relaxed),
            notices: self.notices.load(Relaxed),
            l1_resets: self.l1_resets.load(Relaxed),
        }
    }
}
