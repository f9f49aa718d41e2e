//! The [`Store`] trait: the shared tier (L2) a [`Cache`](crate::Cache) stands on. A store moves
//! bytes and tag versions; the cache owns the semantics (TTLs, decoding, stale values, L1,
//! single flight, breaker). Implemented by `RedisCacheStore` (feature `redis`, standalone or
//! Cluster) and `MemoryCacheStore` (feature `memory`); both pass the same conformance suite
//! (`windlass_testkit::conformance::cache`).

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use windlass_core::{Name, OrgId};

use crate::error::Result;

/// Where an entry lives: tenant, data type and key.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct EntryRef<'a> {
    /// Tenant.
    pub org: &'a OrgId,
    /// Data type.
    pub data_type: &'a Name,
    /// Key inside the type (a validated key segment).
    pub key: &'a str,
}

impl<'a> EntryRef<'a> {
    /// Points at one entry. The parts must be validated already (the cache does it).
    pub fn new(org: &'a OrgId, data_type: &'a Name, key: &'a str) -> Self {
        Self {
            org,
            data_type,
            key,
        }
    }

    /// `{orgid}:{type}:{key}`: the entry's name without the store's prefix. Unambiguous, since
    /// neither tenant nor type may hold `:`.
    pub fn logical(&self) -> String {
        format!("{}:{}:{}", self.org, self.data_type, self.key)
    }
}

/// What [`Store::read`] returns for an entry that exists.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RawRead {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The version of each tag named in the value's header, in header order, as they were at
    /// one moment after the read started and after the value was read (atomically on the
    /// store, or through tracked tag versions). Empty string: the tag has no version (never
    /// written, expired or lost), which never matches a stored version.
    pub tag_versions: Vec<String>,
}

impl RawRead {
    /// A read result.
    pub fn new(value: Vec<u8>, tag_versions: Vec<String>) -> Self {
        Self {
            value,
            tag_versions,
        }
    }
}

/// What [`Store::prepare`] returns: the state a guarded write will compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Prepared {
    /// The entry's current write id ("" when absent).
    pub write_id: String,
    /// The current version of each requested tag (a tag without one got a fresh version).
    pub tag_versions: Vec<String>,
    /// The store's clock when this was read, in unix milliseconds.
    pub now_ms: u64,
}

impl Prepared {
    /// A prepare result.
    pub fn new(write_id: String, tag_versions: Vec<String>, now_ms: u64) -> Self {
        Self {
            write_id,
            tag_versions,
            now_ms,
        }
    }
}

/// The condition of a [`Store::write`] on the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expect {
    /// Write whatever the entry holds (tags are still compared).
    Any,
    /// Write only if the entry's write id is this one (empty string: only if the entry is
    /// absent). The generation guard of `get_or_load`: a delete or a newer write in between
    /// makes the write a no-op.
    WriteId(String),
}

/// One conditional write.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Write<'a> {
    /// The bytes to store.
    pub value: Vec<u8>,
    /// How long the store keeps them (the hard TTL: fresh time plus stale grace).
    pub ttl: Duration,
    /// Condition on the entry's current write id.
    pub expect: Expect,
    /// (tag, version): the write happens only if every tag still has this version. Each tag's
    /// own TTL is extended to outlive the entry.
    pub tags: &'a [(String, String)],
    /// Refuse the write when the store's clock (unix ms) is past this. Loads set it from
    /// [`Prepared::now_ms`] so that a write delayed past a tombstone's lifetime never lands.
    pub not_after_ms: Option<u64>,
    /// Message for other cache instances (L1 sync), published with the write.
    pub notice: Option<&'a str>,
}

impl<'a> Write<'a> {
    /// A write of `value` for `ttl`, with no conditions and no notice.
    pub fn new(value: Vec<u8>, ttl: Duration) -> Self {
        Self {
            value,
            ttl,
            expect: Expect::Any,
            tags: &[],
            not_after_ms: None,
            notice: None,
        }
    }
    /// Sets the write-id condition.
    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }
    /// Sets the tag versions compared.
    pub fn tags(mut self, tags: &'a [(String, String)]) -> Self {
        self.tags = tags;
        self
    }
    /// Sets the store-clock deadline.
    pub fn not_after_ms(mut self, ms: u64) -> Self {
        self.not_after_ms = Some(ms);
        self
    }
    /// Sets the notice.
    pub fn notice(mut self, notice: &'a str) -> Self {
        self.notice = Some(notice);
        self
    }
}

/// A message from [`Store::notices`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// Notices flow (again) from now on; earlier ones may have been lost (first subscription,
    /// reconnect, lag): drop every L1 entry and use the L1 again.
    Reset,
    /// Notices stopped flowing (connection lost): stop using the L1 until the next `Reset`.
    Down,
    /// A message some cache instance published with a write or an invalidation.
    Message(String),
    /// Heartbeat: every message published (by anyone) before this instant has been yielded
    /// by the stream before this notice.
    Synced(Instant),
}

/// The shared tier of a cache. Every method is one atomic step on the store (one round trip
/// on Redis, apart from a cold tag-version cache).
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The store's name for errors, logs and metrics (`"redis"`, `"memory"`).
    fn backend(&self) -> &'static str;

    /// Reads an entry and the versions of the tags its header names.
    async fn read(&self, entry: EntryRef<'_>) -> Result<Option<RawRead>>;

    /// Reads several entries of one tenant and data type (one round trip where the store can).
    async fn read_many(
        &self,
        org: &OrgId,
        data_type: &Name,
        keys: &[&str],
    ) -> Result<Vec<Option<RawRead>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.read(EntryRef::new(org, data_type, key)).await?);
        }
        Ok(out)
    }

    /// Reads what a guarded write will compare against, atomically: the entry's write id, the
    /// versions of `tags` (a tag without a version gets a fresh, never used one), the clock.
    async fn prepare(&self, entry: EntryRef<'_>, tags: &[&str]) -> Result<Prepared>;

    /// Writes if [`Write::expect`], every tag version and the deadline hold; `Ok(false)` when
    /// they did not.
    async fn write(&self, entry: EntryRef<'_>, write: Write<'_>) -> Result<bool>;

    /// Gives each tag a new version never used before (O(1) per tag, whatever number of
    /// entries carry it) and publishes `notice`, before returning.
    async fn invalidate(&self, org: &OrgId, tags: &[&str], notice: Option<&str>) -> Result<()>;

    /// The stream of notices published by every instance, for L1 sync, with heartbeats
    /// ([`Notice::Synced`]). It starts with [`Notice::Reset`] once it is listening. `None`
    /// when the store cannot publish (the L1 then holds values for its TTL only).
    fn notices(&self) -> Option<BoxStream<'static, Notice>>;
}

/// How long a tag version lives when no entry extends it.
pub(crate) const TAG_TTL: Duration = Duration::from_secs(3600);
/// How much longer than the longest entry carrying it a tag version lives (at least).
pub(crate) const TAG_MARGIN: Duration = Duration::from_secs(60);

/// A tag version never used before: a UUIDv7 (time-ordered, 74 random bits), so a lost and
/// re-created tag can never meet an old version.
pub(crate) fn fresh_version() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
