//! [`MemoryStore`]: an in-process [`Store`] with the Redis store's semantics (stored format, tag
//! versions, conditional writes, notices), for the quickstart and users' tests. Nothing survives
//! the process.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use moka::Expiry;
use tokio::sync::broadcast;
use windlass_core::OrgId;

use crate::error::Result;
use crate::format;
use crate::store::{EntryRef, Expect, Notice, RawRead, Store, Write, fresh_version};

#[derive(Clone)]
struct Stored {
    bytes: Arc<[u8]>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Stored> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Stored,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
    fn expire_after_update(
        &self,
        _key: &String,
        value: &Stored,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// An in-process cache store. Cheap to clone; clones share the data, so several
/// [`Cache`](crate::Cache)s on one `MemoryStore` behave like processes sharing one Redis
/// (notices included).
///
/// Entries are bounded by [`MemoryStore::with_capacity`] (least recently used go first, as a
/// Redis with `maxmemory-policy allkeys-lru` would); tag versions are kept until the store is
/// dropped.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<MemoryInner>,
}

struct MemoryInner {
    entries: moka::sync::Cache<String, Stored>,
    // Guards every read-compare-write so each operation is atomic, like a Lua script.
    tags: Mutex<HashMap<String, u64>>,
    notices: broadcast::Sender<String>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.inner.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_capacity(100_000)
    }
}

impl MemoryStore {
    /// A store holding up to 100 000 entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding up to `entries` entries.
    pub fn with_capacity(entries: u64) -> Self {
        let (notices, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(MemoryInner {
                entries: moka::sync::Cache::builder()
                    .max_capacity(entries)
                    .expire_after(PerEntryTtl)
                    .build(),
                tags: Mutex::new(HashMap::new()),
                notices,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.inner.tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(entry: EntryRef<'_>) -> String {
        entry.logical()
    }

    fn tag_key(org: &OrgId, tag: &str) -> String {
        format!("{org}:{tag}")
    }

    /// Stores raw bytes under an entry, bypassing the format: for tests of bad input (a value
    /// from another version of the program, garbage).
    pub fn put_raw(&self, entry: EntryRef<'_>, bytes: &[u8], ttl: Duration) {
        self.inner.entries.insert(
            Self::key(entry),
            Stored {
                bytes: bytes.into(),
                ttl,
            },
        );
    }

    /// Entries currently held (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.run_pending_tasks();
        self.inner.entries.entry_count()
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn read(&self, entry: EntryRef<'_>) -> Result<Option<RawRead>> {
        let tags = self.lock();
        let Some(stored) = self.inner.entries.get(&Self::key(entry)) else {
            return Ok(None);
        };
        let tag_versions = format::tag_names(&stored.bytes)
            .into_iter()
            .map(|t| {
                tags.get(&Self::tag_key(entry.org, t))
                    .map(u64::to_string)
                    .unwrap_or_default()
            })
            .collect();
        Ok(Some(RawRead {
            value: stored.bytes.to_vec(),
            tag_versions,
        }))
    }

    async fn tag_versions(&self, org: &OrgId, tags: &[&str]) -> Result<Vec<String>> {
        let mut map = self.lock();
        Ok(tags
            .iter()
            .map(|t| {
                map.entry(Self::tag_key(org, t))
                    .or_insert_with(|| fresh_version().parse().unwrap_or(1 << 40))
                    .to_string()
            })
            .collect())
    }

    async fn write(&self, entry: EntryRef<'_>, write: Write<'_>) -> Result<bool> {
        let tags = self.lock();
        let key = Self::key(entry);
        if let Expect::WriteId(expected) = &write.expect {
            let current = self
                .inner
                .entries
                .get(&key)
                .map(|s| format::write_id(&s.bytes))
                .unwrap_or_default();
            if &current != expected {
                return Ok(false);
            }
        }
        for (tag, version) in write.tags {
            let current = tags
                .get(&Self::tag_key(entry.org, tag))
                .map(u64::to_string)
                .unwrap_or_default();
            if &current != version {
                return Ok(false);
            }
        }
        self.inner.entries.insert(
            key,
            Stored {
                bytes: write.value.into(),
                ttl: write.ttl,
            },
        );
        if let Some(notice) = write.notice {
            let _ = self.inner.notices.send(notice.to_owned());
        }
        Ok(true)
    }

    async fn invalidate(&self, org: &OrgId, tags: &[&str], notice: Option<&str>) -> Result<()> {
        let mut map = self.lock();
        for tag in tags {
            let v = map.entry(Self::tag_key(org, tag)).or_insert(0);
            *v = v.wrapping_add(1);
        }
        if let Some(notice) = notice {
            let _ = self.inner.notices.send(notice.to_owned());
        }
        Ok(())
    }

    fn notices(&self) -> Option<BoxStream<'static, Notice>> {
        let rx = self.inner.notices.subscribe();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(m) => Some((Notice::Message(m), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((Notice::Reset, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Some(
            futures::stream::once(async { Notice::Reset })
                .chain(stream)
                .boxed(),
        )
    }
}
