//! # windlass-cache
//!
//! A tag-aware cache for services: typed entries on Redis (or in memory), invalidation by tag
//! in O(1), stampede protection, stale-while-revalidate, fail-safe, and an optional in-process
//! L1 kept in sync across processes.
//!
//! ```
//! use std::time::Duration;
//! use windlass_cache::{Cache, TypePolicy};
//! use windlass_core::OrgId;
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct Invoice {
//!     id: u64,
//!     paid: bool,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::memory(); // or Cache::new(RedisStore::connect(url).await?)
//! let invoices = cache.entry::<Invoice>("invoice", TypePolicy::ttl(Duration::from_secs(60)))?;
//! let acme = OrgId::new("acme")?;
//!
//! // Read-through: one loader per key, the value stored with its tags.
//! let inv = invoices
//!     .get_or_load(&acme, "42", &["invoice:42", "customer:7"], || async {
//!         Ok::<_, std::io::Error>(Invoice { id: 42, paid: false }) // e.g. a database query
//!     })
//!     .await?;
//! assert!(!inv.paid);
//! assert!(invoices.get(&acme, "42").await?.is_some());
//!
//! // Invalidate every entry tagged `customer:7` of this tenant: one version bump.
//! cache.invalidate_tag(&acme, "customer:7").await?;
//! assert!(invoices.get(&acme, "42").await?.is_none());
//! # Ok(())
//! # }
//! ```
//!
//! ## Model
//! - A [`Cache`] stands on a [`Store`]: [`RedisStore`] (feature `redis`) or [`MemoryStore`]
//!   (feature `memory`, default; same semantics, one process). [`Cache::entry`] gives a typed
//!   [`CacheEntry<T>`] per data type, with its [`TypePolicy`] (TTL with jitter, stale grace,
//!   L1, size limit).
//! - Keys are `{prefix}:c:{orgid}:{type}:{key}`: tenant ([`OrgId`](windlass_core::OrgId)) and
//!   data type (a [`Name`](windlass_core::Name)) scope every entry and tag, so tenants never see
//!   each other's entries and one tenant's invalidation never touches another's.
//! - The stored value carries a format version, the write id, its creation time, its freshness
//!   deadline and the version of each of its tags, then the JSON payload. A value that does
//!   not decode (garbage, an older program's type) is a miss and a `decode_failures` count,
//!   never an error.
//!
//! ## Guarantees
//! - **A hit is one store round trip**: one Lua script reads the entry and its tags' versions.
//! - **Never stale after invalidation**: [`Cache::invalidate_tag`] bumps the tag's version;
//!   once it returns, every read compares versions and misses. Invalidated values are never
//!   served as stale either. A `get_or_load` takes the tag versions *before* its loader runs and
//!   writes only if none moved (and the entry was not rewritten or deleted), in the same atomic
//!   step, so a load that raced an invalidation never writes back.
//! - **L1 sync**: L1s of other instances stop serving a value once the notice of the change
//!   reaches them (Redis pub/sub: about a millisecond here, see `docs/cache.md`); while notices
//!   cannot flow they do not use their L1 at all, and they drop it when notices flow again.
//! - **Fail-open**: a store that is down or slower than [`CacheOptions::timeout`] makes reads
//!   misses and `get_or_load` a plain loader call (counted); writes and invalidations return
//!   the error for the caller to handle or ignore.
//!
//! ## Event-driven invalidation
//! [`InvalidationRules`] (`on event type "invoice.paid" invalidate tag "invoice:{subject}"`)
//! run by an [`InvalidationHandler`] subscribed to the event bus.
//!
//! ## Metrics
//! Exported through the `metrics` facade (see [`stats`] for names) and readable in process
//! with [`Cache::stats`].
#![doc(test(attr(deny(warnings))))]

mod cache;
mod entry;
mod error;
mod format;
mod l1;
#[cfg(feature = "memory")]
mod memory;
pub mod metrics;
#[cfg(feature = "redis")]
mod redis;
mod rules;
pub mod stats;
mod store;

pub use cache::{Cache, CacheOptions, L1Options, MAX_TAGS};
pub use entry::{CacheEntry, TypePolicy};
pub use error::{Error, LoadError, Result};
#[cfg(feature = "memory")]
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::{RedisStore, RedisStoreOptions};
pub use rules::{InvalidationHandler, InvalidationRules, TagTemplate};
pub use stats::{Stats, TypeStats};
pub use store::{EntryRef, Expect, Notice, RawRead, Store, Write};
