//! [`CacheSource`] on the public API of `windlass-cache` ([`Cache::stats`]), as it is today.

use async_trait::async_trait;
use windlass_cache::Cache;
use windlass_core::TenantScope;

use super::{CacheSource, CacheTypeStats, SourceError, SourceResult};

/// [`CacheSource`] on the [`Cache`]s of this process.
///
/// GAP: `Cache::stats` counts the lookups of this process only (and not per tenant); the hit
/// ratio of a fleet comes from the Prometheus metric `windlass_cache_hits_total`.
#[derive(Debug, Clone, Default)]
pub struct CacheApi {
    caches: Vec<Cache>,
}

impl CacheApi {
    /// A source on `cache`.
    pub fn new(cache: Cache) -> Self {
        Self {
            caches: vec![cache],
        }
    }

    /// Adds another cache; counters of the same data type are summed.
    pub fn and(mut self, cache: Cache) -> Self {
        self.caches.push(cache);
        self
    }
}

#[async_trait]
impl CacheSource for CacheApi {
    async fn stats(&self, scope: &TenantScope) -> SourceResult<Vec<CacheTypeStats>> {
        if scope.org_id().is_some() {
            // GAP: cache counters are per data type, summed over every tenant.
            return Err(SourceError::Unsupported(
                "cache counters are not kept per tenant yet".into(),
            ));
        }
        let mut out: std::collections::BTreeMap<String, CacheTypeStats> = Default::default();
        for cache in &self.caches {
            for (ty, s) in cache.stats().types {
                let e = out.entry(ty.clone()).or_insert_with(|| CacheTypeStats {
                    data_type: ty,
                    ..Default::default()
                });
                e.hits += s.hits();
                e.misses += s.misses;
                e.stale_served += s.stale_served;
                e.load_errors += s.load_errors;
            }
        }
        Ok(out.into_values().collect())
    }
}
