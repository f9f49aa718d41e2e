//! Counters of a cache: exported through the `metrics` facade (labelled by data type, never by
//! tenant or key; names in [`crate::metrics::CATALOG`]) and kept in process for
//! [`Cache::stats`](crate::Cache::stats), a cheap snapshot (atomic loads, no store call) for
//! health checks and the operations console.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::breaker::BreakerState;

/// Counters of one data type.
pub(crate) struct TypeCounters {
    pub(crate) hits_l1: Metric,
    pub(crate) hits_l2: Metric,
    pub(crate) misses: Metric,
    pub(crate) stale_served: Metric,
    pub(crate) loads: Metric,
    pub(crate) load_errors: Metric,
    pub(crate) soft_timeouts: Metric,
    pub(crate) hard_timeouts: Metric,
    pub(crate) decode_failures: Metric,
    pub(crate) fail_open: Metric,
    pub(crate) writes_discarded: Metric,
    pub(crate) refreshes: Metric,
    load_nanos: AtomicU64,
    load_seconds: Histogram,
}

pub(crate) struct Metric {
    local: AtomicU64,
    exported: Counter,
}

impl Metric {
    fn new(name: &'static str, ty: &str, extra: Option<(&'static str, &'static str)>) -> Self {
        let exported = match extra {
            Some((k, v)) => metrics::counter!(name, "type" => ty.to_owned(), k => v),
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
        let m = |name, extra| Metric::new(name, ty, extra);
        Self {
            hits_l1: m("windlass_cache_hits_total", Some(("tier", "l1"))),
            hits_l2: m("windlass_cache_hits_total", Some(("tier", "l2"))),
            misses: m("windlass_cache_misses_total", None),
            stale_served: m("windlass_cache_stale_served_total", None),
            loads: m("windlass_cache_loads_total", None),
            load_errors: m("windlass_cache_load_errors_total", None),
            soft_timeouts: m("windlass_cache_load_timeouts_total", Some(("kind", "soft"))),
            hard_timeouts: m("windlass_cache_load_timeouts_total", Some(("kind", "hard"))),
            decode_failures: m("windlass_cache_decode_failures_total", None),
            fail_open: m("windlass_cache_fail_open_total", None),
            writes_discarded: m("windlass_cache_writes_discarded_total", None),
            refreshes: m("windlass_cache_refreshes_total", None),
            load_nanos: AtomicU64::new(0),
            load_seconds: metrics::histogram!("windlass_cache_load_seconds", "type" => ty.to_owned()),
        }
    }

    pub(crate) fn record_load(&self, took: Duration) {
        self.load_nanos
            .fetch_add(took.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
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
            load_timeouts: self.soft_timeouts.get() + self.hard_timeouts.get(),
            load_time: Duration::from_nanos(self.load_nanos.load(Relaxed)),
            decode_failures: self.decode_failures.get(),
            fail_open: self.fail_open.get(),
            writes_discarded: self.writes_discarded.get(),
            refreshes: self.refreshes.get(),
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
    /// Stale values served (stale-while-revalidate, fail-safe, soft timeout).
    pub stale_served: u64,
    /// Loader runs.
    pub loads: u64,
    /// Loader runs that failed (errors, panics, hard timeouts).
    pub load_errors: u64,
    /// Loads past their soft or hard timeout.
    pub load_timeouts: u64,
    /// Total time spent in loaders.
    pub load_time: Duration,
    /// Stored values that did not decode (garbage, another format, a changed type).
    pub decode_failures: u64,
    /// Store calls that failed, timed out or met an open breaker and fell through.
    pub fail_open: u64,
    /// Loaded values not written because the entry or a tag changed during the load.
    pub writes_discarded: u64,
    /// Background refreshes started (stale-while-revalidate, refresh-ahead).
    pub refreshes: u64,
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
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Stats {
    /// Per data type.
    pub types: BTreeMap<String, TypeStats>,
    /// Tags invalidated on the store through this cache (each tag of `invalidate_tags` counts).
    pub invalidations: u64,
    /// Invalidations and deletes that failed on the store and were queued for replay.
    pub invalidations_queued: u64,
    /// Queued invalidations and deletes replayed on the store since.
    pub invalidations_replayed: u64,
    /// Invalidations and deletes still waiting for replay.
    pub pending_invalidations: usize,
    /// Notices received from other instances (L1 sync).
    pub notices: u64,
    /// L1 resets (first subscription, reconnects, lag).
    pub l1_resets: u64,
    /// Times the L1 went out of use because its heartbeat was older than its staleness bound.
    pub l1_deaf: u64,
    /// The circuit breaker now.
    pub breaker: BreakerState,
    /// Times the breaker opened.
    pub breaker_opened: u64,
}

impl Stats {
    /// The counters of one data type (zeros if it was never used).
    pub fn of(&self, data_type: &str) -> TypeStats {
        self.types.get(data_type).cloned().unwrap_or_default()
    }
}

/// The registry of a cache.
pub(crate) struct Registry {
    types: Mutex<BTreeMap<String, Arc<TypeCounters>>>,
    pub(crate) invalidations: AtomicU64,
    pub(crate) invalidations_queued: AtomicU64,
    pub(crate) notices: AtomicU64,
    pub(crate) l1_resets: AtomicU64,
    pub(crate) l1_deaf: AtomicU64,
    backend: &'static str,
}

impl Registry {
    pub(crate) fn new(backend: &'static str) -> Self {
        Self {
            types: Mutex::new(BTreeMap::new()),
            invalidations: AtomicU64::new(0),
            invalidations_queued: AtomicU64::new(0),
            notices: AtomicU64::new(0),
            l1_resets: AtomicU64::new(0),
            l1_deaf: AtomicU64::new(0),
            backend,
        }
    }

    pub(crate) fn of(&self, ty: &str) -> Arc<TypeCounters> {
        let mut types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        types
            .entry(ty.to_owned())
            .or_insert_with(|| Arc::new(TypeCounters::new(ty)))
            .clone()
    }

    pub(crate) fn invalidated(&self, n: usize) {
        self.invalidations.fetch_add(n as u64, Relaxed);
        metrics::counter!("windlass_cache_invalidations_total", "outcome" => "applied")
            .increment(n as u64);
    }

    pub(crate) fn queued(&self, n: usize) {
        self.invalidations_queued.fetch_add(n as u64, Relaxed);
        metrics::counter!("windlass_cache_invalidations_total", "outcome" => "queued")
            .increment(n as u64);
    }

    pub(crate) fn replayed(&self, n: usize) {
        metrics::counter!("windlass_cache_invalidations_replayed_total").increment(n as u64);
    }

    pub(crate) fn pending(&self, n: usize) {
        metrics::gauge!("windlass_cache_invalidations_pending", "store" => self.backend)
            .set(n as f64);
    }

    pub(crate) fn notice(&self) {
        self.notices.fetch_add(1, Relaxed);
        metrics::counter!("windlass_cache_notices_total").increment(1);
    }

    pub(crate) fn l1_reset(&self) {
        self.l1_resets.fetch_add(1, Relaxed);
        metrics::counter!("windlass_cache_l1_resets_total").increment(1);
    }

    pub(crate) fn l1_deaf(&self) {
        self.l1_deaf.fetch_add(1, Relaxed);
        metrics::counter!("windlass_cache_l1_deaf_total").increment(1);
    }

    pub(crate) fn breaker(&self, state: BreakerState, opened: bool) {
        if opened {
            metrics::counter!("windlass_cache_breaker_opened_total", "store" => self.backend)
                .increment(1);
        }
        let v = match state {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        };
        metrics::gauge!("windlass_cache_breaker_state", "store" => self.backend).set(v);
    }

    pub(crate) fn types(&self) -> BTreeMap<String, TypeStats> {
        let types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        types
            .iter()
            .map(|(k, v)| (k.clone(), v.snapshot()))
            .collect()
    }
}
