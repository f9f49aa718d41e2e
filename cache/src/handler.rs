//! [`InvalidationHandler`]: an event-bus [`Handler`] that runs [`InvalidationRules`] on a
//! [`Cache`]: invalidations first, then reloads (warming). It only uses the bus's public
//! `Event` / `Handler` API.
//!
//! Every rule is applied on its own: one that fails never stops the others. Each failure is
//! counted (`windlass_cache_rule_failures_total{reason}`, [`InvalidationHandler::stats`]) and
//! reported: when a failure may pass (the store or a reloader failed) the event is retried
//! by the bus after the other rules were applied (applying a rule twice is harmless); when it
//! cannot (a rule that does not render for this event) the event goes to the dead-letter queue
//! with every failed rule and its reason.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use windlass_core::OrgId;
use windlass_eventbus::{DeliveryContext, Event, Handler, HandlerError, HandlerResult};

use crate::cache::{Cache, MAX_TAGS};
use crate::entry::CacheEntry;
use crate::rules::InvalidationRules;

#[async_trait]
trait Reload: Send + Sync {
    async fn reload(&self, org: &OrgId, key: &str, tags: &[String]) -> Result<(), String>;
}

struct TypedReload<T, F> {
    entry: CacheEntry<T>,
    load: F,
}

#[async_trait]
impl<T, F, Fut, E> Reload for TypedReload<T, F>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: Fn(OrgId, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    E: fmt::Display + Send + Sync + 'static,
{
    async fn reload(&self, org: &OrgId, key: &str, tags: &[String]) -> Result<(), String> {
        let load = (self.load)(org.clone(), key.to_owned());
        self.entry
            .reload(org, key, tags, || load)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Counters of an [`InvalidationHandler`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleStats {
    /// Events that matched at least one rule.
    pub events: u64,
    /// Tags invalidated.
    pub invalidated: u64,
    /// Entries reloaded.
    pub reloaded: u64,
    /// Rules that could not be rendered for their event.
    pub render_failures: u64,
    /// Invalidations the store refused (retried by the bus, and queued by the cache).
    pub store_failures: u64,
    /// Reloads whose loader failed, or without a reloader for their data type.
    pub reload_failures: u64,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    invalidated: AtomicU64,
    reloaded: AtomicU64,
    render: AtomicU64,
    store: AtomicU64,
    reload: AtomicU64,
}

fn failed(counter: &AtomicU64, reason: &'static str, n: u64) {
    counter.fetch_add(n, Relaxed);
    metrics::counter!("windlass_cache_rule_failures_total", "reason" => reason).increment(n);
}

/// A bus [`Handler`] that applies [`InvalidationRules`] to a [`Cache`]. Subscribe it with a
/// group of its own (the group shares the work; the L1s of every instance learn through the
/// cache's notices).
#[derive(Clone)]
pub struct InvalidationHandler {
    cache: Cache,
    rules: Arc<InvalidationRules>,
    reloaders: Arc<HashMap<String, Arc<dyn Reload>>>,
    counters: Arc<Counters>,
}

impl fmt::Debug for InvalidationHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidationHandler")
            .field("rules", &self.rules)
            .field("reloaders", &self.reloaders.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl InvalidationHandler {
    /// A handler applying `rules` to `cache`.
    pub fn new(cache: Cache, rules: InvalidationRules) -> Self {
        Self {
            cache,
            rules: Arc::new(rules),
            reloaders: Arc::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
        }
    }

    /// Registers how reload rules of `entry`'s data type load a value: `load(tenant, key)`.
    pub fn reloader<T, F, Fut, E>(mut self, entry: CacheEntry<T>, load: F) -> Self
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(OrgId, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: fmt::Display + Send + Sync + 'static,
    {
        let mut map: HashMap<String, Arc<dyn Reload>> = (*self.reloaders).clone();
        map.insert(
            entry.data_type().to_string(),
            Arc::new(TypedReload { entry, load }),
        );
        self.reloaders = Arc::new(map);
        self
    }

    /// Counters since the handler was built (clones share them).
    pub fn stats(&self) -> RuleStats {
        let c = &self.counters;
        RuleStats {
            events: c.events.load(Relaxed),
            invalidated: c.invalidated.load(Relaxed),
            reloaded: c.reloaded.load(Relaxed),
            render_failures: c.render.load(Relaxed),
            store_failures: c.store.load(Relaxed),
            reload_failures: c.reload.load(Relaxed),
        }
    }
}

#[async_trait]
impl Handler for InvalidationHandler {
    async fn handle(&self, event: &Event, _ctx: &DeliveryContext) -> HandlerResult {
        let plan = self.rules.plan(event);
        if plan.is_empty() {
            return Ok(());
        }
        let c = &self.counters;
        c.events.fetch_add(1, Relaxed);
        let mut permanent: Vec<String> = plan
            .failures
            .iter()
            .map(|f| format!("rule `{}`: {}", f.rule, f.reason))
            .collect();
        if !permanent.is_empty() {
            failed(&c.render, "render", permanent.len() as u64);
        }
        let mut transient: Vec<String> = Vec::new();
        if let Some(org) = &plan.org {
            for chunk in plan.invalidate.chunks(MAX_TAGS) {
                match self.cache.invalidate_tags(org, chunk).await {
                    Ok(()) => {
                        c.invalidated.fetch_add(chunk.len() as u64, Relaxed);
                    }
                    Err(e) => {
                        failed(&c.store, "store", chunk.len() as u64);
                        transient.push(format!("invalidating {chunk:?}: {e}"));
                    }
                }
            }
            for reload in &plan.reload {
                match self.reloaders.get(reload.data_type.as_str()) {
                    None => {
                        failed(&c.reload, "no_reloader", 1);
                        permanent.push(format!(
                            "no reloader registered for data type {}",
                            reload.data_type
                        ));
                    }
                    Some(r) => match r.reload(org, &reload.key, &reload.tags).await {
                        Ok(()) => {
                            c.reloaded.fetch_add(1, Relaxed);
                        }
                        Err(e) => {
                            failed(&c.reload, "reload", 1);
                            transient.push(format!(
                                "reloading {} {}: {e}",
                                reload.data_type, reload.key
                            ));
                        }
                    },
                }
            }
        }
        tracing::debug!(
            event = event.id(),
            ty = event.ty(),
            tags = plan.invalidate.len(),
            reloads = plan.reload.len(),
            failures = permanent.len() + transient.len(),
            "cache rules applied"
        );
        if !transient.is_empty() {
            transient.extend(permanent);
            return Err(HandlerError::retry(transient.join("; ")));
        }
        if !permanent.is_empty() {
            return Err(HandlerError::reject(permanent.join("; ")));
        }
        Ok(())
    }
}
