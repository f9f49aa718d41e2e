//! The [`Store`] trait: the shared tier (L2) a [`Cache`](crate::Cache) stands on. A store moves
//! bytes and tag versions; the cache owns the semantics (TTLs, decoding, stale values, L1,
//! single flight). Implemented by `RedisStore` (feature `redis`) and `MemoryStore` (feature
//! `memory`); both run the same test suite.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use windlass_core::{Name, OrgId};

use crate::error::Result;

/// Where an entry lives: tenant, data type and key. Keys are
/// `{prefix}:c:{orgid}:{type}:{key}` in Redis.
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
    /// The current version of each tag named in the value's header, in header order, read in
    /// the same atomic step as the value. Empty string: the tag has no version (never written,
    /// or lost), which never matches a stored version.
    pub tag_versions: Vec<String>,
}

/// The condition of a [`Store::write`].
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
    /// (tag, version): the write happens only if every tag still has this version.
    pub tags: &'a [(String, String)],
    /// Message for other cache instances (L1 sync), published in the same atomic step.
    pub notice: Option<&'a str>,
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
}

/// The shared tier of a cache. Every method is one atomic step on the store (one round trip
/// on Redis).
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The store's name for errors and logs (`"redis"`, `"memory"`).
    fn backend(&self) -> &'static str;

    /// Reads an entry and the current versions of the tags its header names, atomically.
    async fn read(&self, entry: EntryRef<'_>) -> Result<Option<RawRead>>;

    /// The current versions of `tags` (a tag without one gets a fresh random version first, so
    /// a tag that is lost later can never match an old entry).
    async fn tag_versions(&self, org: &OrgId, tags: &[&str]) -> Result<Vec<String>>;

    /// Writes if [`Write::expect`] and every tag version hold; `Ok(false)` when they did not.
    async fn write(&self, entry: EntryRef<'_>, write: Write<'_>) -> Result<bool>;

    /// Bumps the version of each tag (O(1) per tag, whatever number of entries carry it) and
    /// publishes `notice`, atomically.
    async fn invalidate(&self, org: &OrgId, tags: &[&str], notice: Option<&str>) -> Result<()>;

    /// The stream of notices published by every instance, for L1 sync. It starts with
    /// [`Notice::Reset`] once it is listening. `None` when the store cannot publish (the L1 then
    /// only holds values for their L1 TTL, and other instances' changes show after that TTL).
    fn notices(&self) -> Option<BoxStream<'static, Notice>>;
}

/// A random tag version: large, so versions made by `INCR` on a lost and re-created tag never
/// meet an old one.
pub(crate) fn fresh_version() -> String {
    use rand::Rng;
    rand::rng().random_range(1u64 << 40..1u64 << 62).to_string()
}
