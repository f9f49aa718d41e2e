//! [`Cache`]: a store, an optional L1, the single-flight table and the counters; hands out typed
//! [`CacheEntry`] views per data type and invalidates tags.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use windlass_core::{Name, OrgId, validate_key_segment};

use crate::entry::{CacheEntry, TypePolicy};
use crate::error::{Error, LoadError, Result};
use crate::l1::{L1, key_guard, scoped_tag_guard, tag_guard};
use crate::stats::{Registry, Stats};
use crate::store::{Notice, Store};

/// Most tags one entry may carry (and one `invalidate_tags` call may bump).
pub const MAX_TAGS: usize = 64;

/// Settings of the optional in-process tier.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct L1Options {
    /// Values held (least recently and least frequently used go first).
    pub capacity: u64,
    /// Longest time a value stays in the L1, whatever its own TTL. Bounds how long another
    /// instance's change can go unseen when the store cannot deliver notices.
    pub ttl: Duration,
}

impl Default for L1Options {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            ttl: Duration::from_secs(60),
        }
    }
}

impl L1Options {
    /// An L1 holding up to `capacity` values.
    pub fn capacity(capacity: u64) -> Self {
        Self {
            capacity: capacity.max(1),
            ..Self::default()
        }
    }
    /// Sets the longest time a value stays in the L1.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// Settings of a [`Cache`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheOptions {
    /// Deadline of every store call. A read that misses it is a miss (and `get_or_load` runs
    /// the loader); a write or an invalidation returns [`Error::Timeout`].
    pub timeout: Duration,
    /// The in-process tier, off by default.
    pub l1: Option<L1Options>,
    /// How long `delete` keeps a tombstone, so that a loader that started before the delete
    /// cannot write its older value back. Make it longer than your slowest loader.
    pub tombstone_ttl: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(250),
            l1: None,
            tombstone_ttl: Duration::from_secs(60),
        }
    }
}

impl CacheOptions {
    /// Sets the store call deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Turns the L1 on.
    pub fn l1(mut self, l1: L1Options) -> Self {
        self.l1 = Some(l1);
        self
    }
    /// Sets the tombstone TTL.
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }
}

pub(crate) type FlightValue = std::result::Result<Arc<dyn Any + Send + Sync>, LoadError>;
pub(crate) type FlightKey = (TypeId, String);

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
    pub(crate) options: CacheOptions,
    pub(crate) instance: String,
    pub(crate) l1: Option<Arc<L1>>,
    pub(crate) flights: Mutex<HashMap<FlightKey, watch::Receiver<Option<FlightValue>>>>,
    pub(crate) stats: Arc<Registry>,
    notice_task: Option<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = &self.notice_task {
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

impl Cache {
    /// A cache on `store` with default options (no L1, 250 ms store deadline).
    pub fn new(store: impl Store) -> Self {
        Self::with_options(store, CacheOptions::default())
    }

    /// A cache on an in-process [`MemoryStore`](crate::MemoryStore): for the quickstart and
    /// tests.
    #[cfg(feature = "memory")]
    pub fn memory() -> Self {
        Self::new(crate::MemoryStore::new())
    }

    /// A cache on `store`. With an L1 on a store that publishes notices, this spawns the task
    /// that applies them, so it must run inside a Tokio runtime.
    pub fn with_options(store: impl Store, options: CacheOptions) -> Self {
        Self::with_shared_store(Arc::new(store), options)
    }

    /// Like [`Cache::with_options`], for a store shared with other caches.
    pub fn with_shared_store(store: Arc<dyn Store>, options: CacheOptions) -> Self {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let stats = Arc::new(Registry::default());
        let mut notice_task = None;
        let l1 = options.l1.as_ref().map(|o| {
            let notices = store.notices();
            let l1 = Arc::new(L1::new(o.capacity, o.ttl, notices.is_some()));
            if let Some(notices) = notices {
                let task = tokio::spawn(apply_notices(
                    notices,
                    l1.clone(),
                    stats.clone(),
                    instance.clone(),
                ));
                notice_task = Some(task.abort_handle());
            }
            l1
        });
        Self {
            inner: Arc::new(Inner {
                store,
                options,
                instance,
                l1,
                flights: Mutex::new(HashMap::new()),
                stats,
                notice_task,
            }),
        }
    }

    /// A typed view of one data type. `data_type` is a [`Name`] (`[A-Za-z0-9._-]`); it becomes
    /// a key segment and a metric label. Entries of one data type must always hold the same
    /// Rust type.
    pub fn entry<T>(&self, data_type: &str, policy: TypePolicy) -> Result<CacheEntry<T>>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let data_type = Name::parse("cache data type", data_type)?;
        if !policy.ttl.is_zero() {
            let counters = self.inner.stats.of(&data_type);
            Ok(CacheEntry {
                cache: self.clone(),
                data_type,
                policy,
                counters,
                _t: PhantomData,
            })
        } else {
            Err(Error::Config(format!(
                "data type {data_type}: the TTL must be above zero"
            )))
        }
    }

    /// Invalidates one tag of a tenant: once this returns `Ok`, no reader of any instance gets
    /// a value written before the call (an L1 elsewhere stops serving it once the notice
    /// lands, see the crate docs), and no loader that started before it writes its result.
    pub async fn invalidate_tag(&self, org: &OrgId, tag: &str) -> Result<()> {
        self.invalidate_tags(org, &[tag]).await
    }

    /// Invalidates several tags of a tenant in one store call (O(1) per tag).
    pub async fn invalidate_tags(&self, org: &OrgId, tags: &[&str]) -> Result<()> {
        check_tags(tags)?;
        if tags.is_empty() {
            return Ok(());
        }
        let notice = notice(
            &self.inner.instance,
            't',
            tags.iter().map(|t| format!("{org}:{t}")),
        );
        let res = self
            .timed(
                "invalidate",
                self.inner.store.invalidate(org, tags, Some(&notice)),
            )
            .await;
        // Bump locally whatever the outcome: a timed-out call may still have been applied.
        if let Some(l1) = &self.inner.l1 {
            l1.bump(tags.iter().map(|t| tag_guard(org, t)));
        }
        res?;
        self.inner.stats.invalidated(tags.len());
        Ok(())
    }

    /// A snapshot of the counters (also exported through the `metrics` facade).
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// True when the L1 is on and trusted (notices flow). For tests and health checks.
    pub fn l1_active(&self) -> bool {
        self.inner.l1.as_ref().is_some_and(|l1| l1.is_enabled())
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub(crate) async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let timeout = self.inner.options.timeout;
        match tokio::time::timeout(timeout, fut).await {
            Ok(res) => res,
            Err(_) => Err(Error::Timeout {
                op,
                millis: timeout.as_millis() as u64,
            }),
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
    mut notices: futures::stream::BoxStream<'static, Notice>,
    l1: Arc<L1>,
    stats: Arc<Registry>,
    instance: String,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Some(notice) = notices.next().await {
        match notice {
            Notice::Reset => {
                stats.l1_resets.fetch_add(1, Relaxed);
                l1.reset();
            }
            Notice::Down => l1.down(),
            Notice::Message(text) => {
                let mut lines = text.split('\n');
                let (Some(origin), Some(kind)) = (lines.next(), lines.next()) else {
                    continue;
                };
                if origin == instance {
                    continue;
                }
                stats.notices.fetch_add(1, Relaxed);
                match kind {
                    "t" => l1.bump(lines.map(scoped_tag_guard)),
                    "k" => l1.bump(lines.map(key_guard)),
                    _ => tracing::debug!(kind, "cache notice of an unknown kind ignored"),
                }
            }
        }
    }
    // The stream ended (store dropped): nothing will keep the L1 in sync any more.
    l1.down();
}
