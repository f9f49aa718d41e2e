//! [`MemoryCacheStore`]: an in-process [`Store`] with the Redis store's semantics (stored format,
//! tag versions that never repeat and expire after the entries that carry them, conditional
//! writes with a clock deadline, notices with heartbeats), for the quickstart and users'
//! tests. Nothing survives the process.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use moka::Expiry;
use tokio::sync::broadcast;
use windlass_core::OrgId;

use crate::error::Result;
use crate::format;
use crate::store::{
    EntryRef, Expect, Notice, Prepared, RawRead, Store, TAG_MARGIN, TAG_TTL, Write, fresh_version,
};

/// Heartbeat period of the notice stream.
const HEARTBEAT: Duration = Duration::from_millis(100);

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

struct Tag {
    version: String,
    expires: Instant,
}

#[derive(Default)]
struct Tags {
    map: HashMap<String, Tag>,
    ops: u64,
}

impl Tags {
    fn get(&self, key: &str, now: Instant) -> Option<&str> {
        self.map
            .get(key)
            .filter(|t| t.expires > now)
            .map(|t| t.version.as_str())
    }

    /// Drops expired tags now and then (amortized), so the map stays bounded by the live ones.
    fn sweep(&mut self, now: Instant) {
        self.ops += 1;
        if self.ops.is_multiple_of(1024) {
            self.map.retain(|_, t| t.expires > now);
        }
    }
}

/// An in-process cache store. Cheap to clone; clones share the data, so several
/// [`Cache`](crate::Cache)s on one `MemoryCacheStore` behave like processes sharing one Redis
/// (notices included).
///
/// Entries are bounded by [`MemoryCacheStore::with_capacity`] (least recently used go first,
/// as a Redis with `maxmemory-policy allkeys-lru` would); tag versions expire like the Redis
/// store's (after the longest entry that carries them).
#[derive(Clone)]
pub struct MemoryCacheStore {
    inner: Arc<MemoryInner>,
}

struct MemoryInner {
    entries: moka::sync::Cache<String, Stored>,
    // Guards every read-compare-write so each operation is atomic, like a Lua script.
    tags: Mutex<Tags>,
    notices: broadcast::Sender<String>,
}

impl fmt::Debug for MemoryCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCacheStore")
            .field("entries", &self.inner.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryCacheStore {
    fn default() -> Self {
        Self::with_capacity(100_000)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl MemoryCacheStore {
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
                tags: Mutex::new(Tags::default()),
                notices,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tags> {
        self.inner.tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tag_key(org: &OrgId, tag: &str) -> String {
        format!("{org}:{tag}")
    }

    /// Stores raw bytes under an entry, bypassing the format: for tests of bad input (a value
    /// from another version of the program, garbage).
    pub fn put_raw(&self, entry: EntryRef<'_>, bytes: &[u8], ttl: Duration) {
        self.inner.entries.insert(
            entry.logical(),
            Stored {
                bytes: bytes.into(),
                ttl,
            },
        );
    }

    /// Forgets a tag's version, as an evicted or expired Redis key would: for tests.
    pub fn drop_tag(&self, org: &OrgId, tag: &str) {
        self.lock().map.remove(&Self::tag_key(org, tag));
    }

    /// Tag versions currently held (live and not yet swept).
    pub fn tag_count(&self) -> usize {
        let now = Instant::now();
        self.lock().map.values().filter(|t| t.expires > now).count()
    }

    /// How long the version of `tag` of `org` still lives (`None` when it has none).
    pub fn tag_ttl(&self, org: &OrgId, tag: &str) -> Option<Duration> {
        let now = Instant::now();
        self.lock()
            .map
            .get(&Self::tag_key(org, tag))
            .and_then(|t| t.expires.checked_duration_since(now))
    }

    /// Entries currently held (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.run_pending_tasks();
        self.inner.entries.entry_count()
    }

    fn read_locked(&self, tags: &Tags, entry: EntryRef<'_>, now: Instant) -> Option<RawRead> {
        let stored = self.inner.entries.get(&entry.logical())?;
        let tag_versions = format::tag_names(&stored.bytes)
            .into_iter()
            .map(|t| {
                tags.get(&Self::tag_key(entry.org, t), now)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        Some(RawRead::new(stored.bytes.to_vec(), tag_versions))
    }
}

#[async_trait]
impl Store for MemoryCacheStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn read(&self, entry: EntryRef<'_>) -> Result<Option<RawRead>> {
        let tags = self.lock();
        Ok(self.read_locked(&tags, entry, Instant::now()))
    }

    async fn read_many(
        &self,
        org: &OrgId,
        data_type: &windlass_core::Name,
        keys: &[&str],
    ) -> Result<Vec<Option<RawRead>>> {
        let tags = self.lock();
        let now = Instant::now();
        Ok(keys
            .iter()
            .map(|k| self.read_locked(&tags, EntryRef::new(org, data_type, k), now))
            .collect())
    }

    async fn prepare(&self, entry: EntryRef<'_>, tag_names: &[&str]) -> Result<Prepared> {
        let mut tags = self.lock();
        let now = Instant::now();
        tags.sweep(now);
        let write_id = self
            .inner
            .entries
            .get(&entry.logical())
            .map(|s| format::write_id(&s.bytes))
            .unwrap_or_default();
        let versions = tag_names
            .iter()
            .map(|t| {
                let key = Self::tag_key(entry.org, t);
                match tags.get(&key, now) {
                    Some(v) => v.to_owned(),
                    None => {
                        let version = fresh_version();
                        tags.map.insert(
                            key,
                            Tag {
                                version: version.clone(),
                                expires: now + TAG_TTL,
                            },
                        );
                        version
                    }
                }
            })
            .collect();
        Ok(Prepared::new(write_id, versions, now_ms()))
    }

    async fn write(&self, entry: EntryRef<'_>, write: Write<'_>) -> Result<bool> {
        let mut tags = self.lock();
        let now = Instant::now();
        if write.not_after_ms.is_some_and(|d| now_ms() > d) {
            return Ok(false);
        }
        let key = entry.logical();
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
            if tags.get(&Self::tag_key(entry.org, tag), now) != Some(version.as_str()) {
                return Ok(false);
            }
        }
        let keep = now + write.ttl.saturating_add(TAG_MARGIN);
        for (tag, _) in write.tags {
            if let Some(t) = tags.map.get_mut(&Self::tag_key(entry.org, tag))
                && t.expires < keep
            {
                t.expires = keep;
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

    async fn invalidate(
        &self,
        org: &OrgId,
        tag_names: &[&str],
        notice: Option<&str>,
    ) -> Result<()> {
        let mut tags = self.lock();
        let now = Instant::now();
        tags.sweep(now);
        for tag in tag_names {
            let key = Self::tag_key(org, tag);
            let expires = tags
                .map
                .get(&key)
                .filter(|t| t.expires > now)
                .map(|t| t.expires)
                .unwrap_or(now + TAG_TTL);
            tags.map.insert(
                key,
                Tag {
                    version: fresh_version(),
                    expires,
                },
            );
        }
        if let Some(notice) = notice {
            let _ = self.inner.notices.send(notice.to_owned());
        }
        Ok(())
    }

    fn notices(&self) -> Option<BoxStream<'static, Notice>> {
        struct St {
            rx: broadcast::Receiver<String>,
            ready: VecDeque<Notice>,
            next_beat: tokio::time::Instant,
        }
        let st = St {
            rx: self.inner.notices.subscribe(),
            ready: VecDeque::from([Notice::Reset, Notice::Synced(Instant::now())]),
            next_beat: tokio::time::Instant::now() + HEARTBEAT,
        };
        let stream = futures::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(n) = st.ready.pop_front() {
                    return Some((n, st));
                }
                tokio::select! {
                    msg = st.rx.recv() => match msg {
                        Ok(m) => st.ready.push_back(Notice::Message(m)),
                        Err(broadcast::error::RecvError::Lagged(_)) => st.ready.push_back(Notice::Reset),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    () = tokio::time::sleep_until(st.next_beat) => {
                        // Everything sent before `t` is in the channel: drain it, then vouch.
                        let t = Instant::now();
                        loop {
                            match st.rx.try_recv() {
                                Ok(m) => st.ready.push_back(Notice::Message(m)),
                                Err(broadcast::error::TryRecvError::Lagged(_)) => st.ready.push_back(Notice::Reset),
                                Err(_) => break,
                            }
                        }
                        st.ready.push_back(Notice::Synced(t));
                        st.next_beat = tokio::time::Instant::now() + HEARTBEAT;
                    }
                }
            }
        });
        Some(stream.boxed())
    }
}
