//! [`Cache`]: a store behind a circuit breaker, an optional L1, the single-flight table, the
//! replay queue of failed invalidations, and the counters; hands out typed [`CacheEntry`]
//! views per data type and invalidates tags.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use windlass_core::{Name, OrgId, validate_key_segment};

use crate::breaker::{Breaker, BreakerState};
use crate::entry::CacheEntry;
use crate::error::{Error, Result};
use crate::flight::Flights;
use crate::format;
use crate::l1::L1;
use crate::options::{CacheOptions, TypePolicy};
use crate::pending::{ALL_TAG, Batch, Pending};
use crate::stats::{Registry, Stats};
use crate::store::{EntryRef, Notice, Store, Write};

/// Most tags one entry may carry (and one `invalidate_tags` call may bump), besides the two
/// implicit tags every entry carries (its tenant's and its data type's, which
/// [`Cache::clear_tenant`] and [`CacheEntry::clear`] invalidate).
pub const MAX_TAGS: usize = 64;

/// The implicit tag of a data type.
pub(crate) fn type_tag(data_type: &Name) -> String {
    format!("#type:{data_type}")
}

/// A tag-aware cache on a [`Store`]. Cheap to clone (clones share everything).
///
/// Get a typed view of a data type with [`Cache::entry`]; invalidate with
/// [`Cache::invalidate_tag`]. See the crate docs for the guarantees.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) backend: &'static str,
    pub(crate) options: CacheOptions,
    pub(crate) instance: String,
    pub(crate) l1: Option<Arc<L1>>,
    pub(crate) flights: Arc<Flights>,
    pub(crate) stats: Arc<Registry>,
    pub(crate) breaker: Breaker,
    pub(crate) pending: Pending,
    replaying: AtomicBool,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("store", &self.inner.store)
            .field("options", &self.inner.options)
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

/// The health of a cache, for readiness checks and the console. Cheap (no store call).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Health {
    /// The circuit breaker around the store.
    pub breaker: BreakerState,
    /// True when the cache has an L1 and it is in use right now.
    pub l1_active: bool,
    /// Age of the L1's latest heartbeat (`None` without an L1 or without notices).
    pub l1_lag: Option<Duration>,
    /// Invalidations and deletes waiting for replay.
    pub pending_invalidations: usize,
}

impl Cache {
    /// A cache on `store` with default options (no L1, 250 ms store deadline).
    pub fn new(store: impl Store) -> Self {
        Self::build(Arc::new(store), CacheOptions::default())
    }

    /// A cache on an in-process [`MemoryCacheStore`](crate::MemoryCacheStore): for the
    /// quickstart and tests.
    #[cfg(feature = "memory")]
    pub fn memory() -> Self {
        Self::new(crate::MemoryCacheStore::new())
    }

    /// A cache on `store`. Errors on invalid options, or when an L1 on a store with notices is
    /// asked for outside a Tokio runtime (the L1 needs a task that applies the notices).
    pub fn with_options(store: impl Store, options: CacheOptions) -> Result<Self> {
        Self::with_shared_store(Arc::new(store), options)
    }

    /// Like [`Cache::with_options`], for a store shared with other caches.
    pub fn with_shared_store(store: Arc<dyn Store>, options: CacheOptions) -> Result<Self> {
        options.validate()?;
        if options.l1.is_some() && tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(
                "a cache with an L1 must be built inside a Tokio runtime".into(),
            ));
        }
        Ok(Self::build(store, options))
    }

    fn build(store: Arc<dyn Store>, options: CacheOptions) -> Self {
        let backend = store.backend();
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let stats = Arc::new(Registry::new(backend));
        let mut tasks = Vec::new();
        let l1 = options.l1.as_ref().map(|o| {
            let notices = store.notices();
            let l1 = Arc::new(L1::new(
                o.capacity,
                o.ttl,
                o.max_staleness,
                notices.is_some(),
            ));
            if let Some(notices) = notices {
                let task = tokio::spawn(apply_notices(
                    notices,
                    l1.clone(),
                    stats.clone(),
                    instance.clone(),
                ));
                tasks.push(task.abort_handle());
            }
            l1
        });
        Self {
            inner: Arc::new(Inner {
                breaker: Breaker::new(&options.breaker, stats.clone()),
                pending: Pending::new(options.max_pending_invalidations),
                store,
                backend,
                options,
                instance,
                l1,
                flights: Arc::new(Flights::default()),
                stats,
                replaying: AtomicBool::new(false),
                tasks: Mutex::new(tasks),
            }),
        }
    }

    /// A typed view of one data type. `data_type` is a [`Name`] (`[A-Za-z0-9._-]`); it becomes
    /// a key segment and a metric label. Entries of one data type must always hold the same
    /// Rust type (a value that does not decode is a miss). Errors on an invalid name or policy.
    pub fn entry<T>(&self, data_type: &str, policy: TypePolicy) -> Result<CacheEntry<T>>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let data_type = Name::parse("cache data type", data_type)?;
        policy.validate()?;
        let counters = self.inner.stats.of(&data_type);
        Ok(CacheEntry {
            cache: self.clone(),
            type_tag: type_tag(&data_type).into(),
            data_type,
            policy: Arc::new(policy),
            counters,
            _t: PhantomData,
        })
    }

    /// Invalidates one tag of a tenant: once this returns `Ok`, no reader of any instance gets
    /// a value written before the call (an L1 elsewhere within its staleness bound, see the
    /// crate docs), and no load that started before it writes its result.
    pub async fn invalidate_tag(&self, org: &OrgId, tag: &str) -> Result<()> {
        self.invalidate_tags(org, &[tag]).await
    }

    /// Invalidates several tags of a tenant in one store call (O(1) per tag).
    ///
    /// On a store failure the error is returned, the tags are queued and replayed once the
    /// store answers, and until then this process treats entries carrying them as misses.
    pub async fn invalidate_tags<S: AsRef<str>>(&self, org: &OrgId, tags: &[S]) -> Result<()> {
        let tags: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
        check_tags(&tags)?;
        self.invalidate_raw(org, &tags).await
    }

    /// Invalidates every entry of a tenant, of every data type, in O(1) (its implicit tag).
    pub async fn clear_tenant(&self, org: &OrgId) -> Result<()> {
        self.invalidate_raw(org, &[ALL_TAG]).await
    }

    pub(crate) async fn invalidate_raw(&self, org: &OrgId, tags: &[&str]) -> Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let notice = self.tag_notice(org, tags);
        let store = &self.inner.store;
        let res = self
            .call("invalidate", || store.invalidate(org, tags, Some(&notice)))
            .await;
        if let Err(e) = &res
            && e.is_store_unavailable()
        {
            self.inner.pending.add_tags(org, tags);
            self.inner.stats.queued(tags.len());
            self.inner.stats.pending(self.inner.pending.len());
            self.ensure_replay();
        }
        // Bump locally after the call whatever its outcome (a timed-out call may still have
        // been applied): a local reader that read the old value before cannot keep it.
        if let Some(l1) = &self.inner.l1 {
            l1.bump(tags.iter().map(|t| l1.tag_slot(org.as_str(), t)));
        }
        res?;
        self.inner.stats.invalidated(tags.len());
        Ok(())
    }

    pub(crate) fn tag_notice(&self, org: &OrgId, tags: &[&str]) -> String {
        notice(
            &self.inner.instance,
            't',
            tags.iter().map(|t| format!("{org}:{t}")),
        )
    }

    /// A snapshot of the counters (also exported through the `metrics` facade). Cheap: atomic
    /// loads, no store call.
    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        if let Some(l1) = &i.l1
            && l1.take_deaf()
        {
            i.stats.l1_deaf();
        }
        Stats {
            types: i.stats.types(),
            invalidations: i.stats.invalidations.load(SeqCst),
            invalidations_queued: i.stats.invalidations_queued.load(SeqCst),
            invalidations_replayed: i.pending.replayed.load(SeqCst),
            pending_invalidations: i.pending.len(),
            notices: i.stats.notices.load(SeqCst),
            l1_resets: i.stats.l1_resets.load(SeqCst),
            l1_deaf: i.stats.l1_deaf.load(SeqCst),
            breaker: i.breaker.state(),
            breaker_opened: i.breaker.opened.load(SeqCst),
        }
    }

    /// Breaker, L1 and replay state now. Cheap (no store call).
    pub fn health(&self) -> Health {
        let now = Instant::now();
        Health {
            breaker: self.inner.breaker.state(),
            l1_active: self.l1_active(),
            l1_lag: self.inner.l1.as_ref().and_then(|l1| l1.lag(now)),
            pending_invalidations: self.inner.pending.len(),
        }
    }

    /// Invalidations and deletes that failed on the store and wait for replay.
    pub fn pending_invalidations(&self) -> usize {
        self.inner.pending.len()
    }

    /// True when the L1 is on and in use now (notices flow and its heartbeat is within its
    /// staleness bound).
    pub fn l1_active(&self) -> bool {
        self.inner
            .l1
            .as_ref()
            .is_some_and(|l1| l1.usable(Instant::now()))
    }

    /// Loads in progress in this process (each key has at most one; none outlives its callers
    /// and tasks).
    pub fn loads_in_flight(&self) -> usize {
        self.inner.flights.len()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Runs one store call behind the breaker and under the store deadline.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, make: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let Some(permit) = self.inner.breaker.permit() else {
            return Err(Error::Unavailable {
                backend: self.inner.backend,
                op,
            });
        };
        let timeout = self.inner.options.timeout;
        match tokio::time::timeout(timeout, make()).await {
            Ok(Ok(v)) => {
                permit.success();
                Ok(v)
            }
            Ok(Err(e)) => {
                if e.is_store_unavailable() {
                    permit.failure();
                } else {
                    permit.success();
                }
                Err(e)
            }
            Err(_) => {
                permit.failure();
                Err(Error::Timeout {
                    op,
                    millis: timeout.as_millis() as u64,
                })
            }
        }
    }

    pub(crate) fn ensure_replay(&self) {
        if !self.inner.replaying.swap(true, SeqCst)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let task = rt.spawn(replay_loop(Arc::downgrade(&self.inner)));
            let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.retain(|t| !t.is_finished());
            tasks.push(task.abort_handle());
        }
    }

    /// Replays one tenant's pending work; false when the store failed.
    async fn replay(&self, batch: Batch) -> bool {
        let store = &self.inner.store;
        for chunk in batch.tags.chunks(MAX_TAGS) {
            let tags: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
            let notice = self.tag_notice(&batch.org, &tags);
            let res = self
                .call("invalidate", || {
                    store.invalidate(&batch.org, &tags, Some(&notice))
                })
                .await;
            if res.is_err() {
                return false;
            }
            self.inner.pending.done_tags(&batch.org, chunk);
            self.inner.stats.invalidated(tags.len());
            self.inner.stats.replayed(tags.len());
        }
        for ((data_type, key), epoch) in &batch.keys {
            let Ok(ty) = Name::parse("cache data type", data_type) else {
                continue;
            };
            let entry = EntryRef::new(&batch.org, &ty, key);
            let notice = notice(&self.inner.instance, 'k', std::iter::once(entry.logical()));
            let id = uuid::Uuid::new_v4().simple().to_string();
            let write = Write::new(format::tombstone(&id), self.inner.options.tombstone_ttl)
                .notice(&notice);
            if self
                .call("delete", || store.write(entry, write))
                .await
                .is_err()
            {
                return false;
            }
            self.inner
                .pending
                .done_key(&batch.org, &(data_type.clone(), key.clone()), *epoch);
            self.inner.stats.replayed(1);
        }
        true
    }

    /// The delay a load may take between reading an entry and writing it (on the store's
    /// clock): less than the tombstone TTL, so a delete in between is always still visible.
    pub(crate) fn write_window_ms(&self) -> u64 {
        let ttl = self.inner.options.tombstone_ttl.as_millis() as u64;
        ttl.saturating_sub(1000).max(ttl / 2)
    }
}

async fn replay_loop(weak: Weak<Inner>) {
    loop {
        let Some(interval) = weak.upgrade().map(|i| i.options.replay_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let cache = Cache { inner };
        while let Some(batch) = cache.inner.pending.next_batch() {
            if !cache.replay(batch).await {
                break;
            }
        }
        let left = cache.inner.pending.len();
        cache.inner.stats.pending(left);
        if left == 0 {
            cache.inner.replaying.store(false, SeqCst);
            // Work queued between the check and the flag: keep going if nobody else will.
            if cache.inner.pending.len() == 0 || cache.inner.replaying.swap(true, SeqCst) {
                return;
            }
        }
    }
}

pub(crate) fn check_tags(tags: &[&str]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::TooManyTags {
            count: tags.len(),
            limit: MAX_TAGS,
        });
    }
    for tag in tags {
        validate_key_segment("cache tag", tag)?;
    }
    Ok(())
}

/// `{instance}\n{kind}\n{item}\n...`: kind `t` (items `{orgid}:{tag}`) or `k` (items
/// `{orgid}:{type}:{key}`).
pub(crate) fn notice(instance: &str, kind: char, items: impl Iterator<Item = String>) -> String {
    let mut out = format!("{instance}\n{kind}");
    for item in items {
        out.push('\n');
        out.push_str(&item);
    }
    out
}

async fn apply_notices(
    mut notices: BoxStream<'static, Notice>,
    l1: Arc<L1>,
    stats: Arc<Registry>,
    instance: String,
) {
    while let Some(notice) = notices.next().await {
        match notice {
            Notice::Reset => {
                stats.l1_reset();
                l1.reset();
            }
            Notice::Down => l1.down(),
            Notice::Synced(t) => {
                l1.synced(t);
                if l1.take_deaf() {
                    stats.l1_deaf();
                }
            }
            Notice::Message(text) => {
                let mut lines = text.split('\n');
                let (Some(origin), Some(kind)) = (lines.next(), lines.next()) else {
                    continue;
                };
                if origin == instance {
                    continue;
                }
                stats.notice();
                match kind {
                    "t" => l1.bump(lines.filter_map(|item| {
                        let (org, tag) = item.split_once(':')?;
                        Some(l1.tag_slot(org, tag))
                    })),
                    "k" => l1.bump(lines.filter_map(|item| {
                        let mut parts = item.splitn(3, ':');
                        let (org, ty, key) = (parts.next()?, parts.next()?, parts.next()?);
                        Some(l1.key_slot(org, ty, key))
                    })),
                    _ => tracing::debug!(kind, "cache notice of an unknown kind ignored"),
                }
            }
        }
    }
    // The stream ended (store dropped): nothing will keep the L1 in sync any more.
    l1.down();
}
