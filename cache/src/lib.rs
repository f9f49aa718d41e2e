//! # windlass-cache
//!
//! A tag-aware cache for services: typed entries on Redis (standalone or Cluster) or in
//! memory, invalidation by tag in O(1), one load per key, stale-while-revalidate, fail-safe,
//! loader timeouts, refresh-ahead, a circuit breaker with replay of failed invalidations, and an
//! optional in-process L1 kept in sync across processes within a measured staleness bound.
//!
//! ```
//! use std::time::Duration;
//! use windlass_cache::{Cache, TypePolicy};
//! use windlass_core::OrgId;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Invoice {
//!     id: u64,
//!     paid: bool,
//! }
//!
//! struct Db;
//! impl Db {
//!     async fn invoice(&self, id: u64) -> Result<Invoice, std::io::Error> {
//!         Ok(Invoice { id, paid: false }) // e.g. a SQL query
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Db;
//! let cache = Cache::memory(); // or Cache::new(RedisCacheStore::connect(url).await?)
//! let invoices = cache.entry::<Invoice>("invoice", TypePolicy::ttl(Duration::from_secs(60)))?;
//! let acme = OrgId::new("acme")?;
//!
//! // Read-through: one load per key; the loader may borrow (`&db`); values come as `Arc<T>`.
//! let inv = invoices
//!     .get_or_load(&acme, "42", &["invoice:42", "customer:7"], || db.invoice(42))
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
//! - A [`Cache`] stands on a [`Store`]: [`RedisCacheStore`] (feature `redis`) or
//!   [`MemoryCacheStore`] (feature `memory`, default; same semantics, one process).
//!   [`Cache::entry`] gives a typed [`CacheEntry<T>`] per data type, with its [`TypePolicy`]
//!   (TTL with jitter, stale grace, timeouts, refresh-ahead, L1, size limit);
//!   [`CacheEntry::with_options`] applies [`CallOptions`] for one call.
//! - Keys are scoped by tenant ([`OrgId`](windlass_core::OrgId)) and data type: tenants never
//!   see each other's entries, and one tenant's invalidation never touches another's. Every
//!   entry also carries two implicit tags, so [`Cache::clear_tenant`] and
//!   [`CacheEntry::clear`] are O(1) too.
//! - The stored value carries a format version, a write id, its freshness deadline and the
//!   version of each of its tags, then the JSON payload. A value that does not decode is a
//!   miss and a `decode_failures` count, never an error.
//!
//! ## The central property: never stale after invalidation
//! Whatever a call returns (a hit, the result of another caller's load, a stale value served
//! by stale-while-revalidate or fail-safe, the L2 or a load) was valid at a moment after the
//! call started, with respect to every invalidation that returned before it started. The L1
//! adds one documented allowance: a value it serves is valid with respect to every
//! invalidation that returned more than [`L1Options::max_staleness`] before the call started
//! (and every invalidation made by the same process). How each path keeps it:
//! - tag versions are never reused (a lost tag key only causes misses); a read compares the
//!   versions stored with the value to the current ones, atomically;
//! - a load takes the tag versions and the entry's write id *before* its loader runs and
//!   writes only if none moved (a guarded write, refused past a store-clock deadline shorter
//!   than the tombstone TTL, so a slow load never overwrites a delete);
//! - callers sharing a load only take its result if it became valid after they arrived
//!   (`flight.rs`); a stale value is only served by the caller that read it;
//! - the L1 is only used while the notice stream's heartbeat proves it in sync.
//!
//! The randomized test `never_stale_under_random_interleavings` checks this against real Redis
//! with two instances and a recorded history of invalidation completion times.
//!
//! ## Outages
//! Every store call runs behind a circuit breaker and a deadline: while the store is down a
//! miss costs one fast failure (reads are misses, `get_or_load` calls the loader). Failed
//! invalidations and deletes are queued and replayed when the store answers again; until then
//! this process treats the entries they cover as misses.
//!
//! ## Event-driven invalidation and warming
//! [`InvalidationRules`] (`on event type "invoice.paid" invalidate tag "invoice:{subject}"`,
//! `... reload "invoice" key "{subject}"`) run by an [`InvalidationHandler`] subscribed to the
//! event bus. One failing rule never stops the others; failures are counted and reported.
//!
//! ## Metrics
//! Exported through the `metrics` facade (names and labels in [`metrics::CATALOG`]) and
//! readable in process, cheaply, with [`Cache::stats`] and [`Cache::health`].
#![doc(test(attr(deny(warnings))))]

mod breaker;
mod cache;
mod entry;
mod error;
mod flight;
mod format;
mod handler;
mod l1;
mod load;
#[cfg(feature = "memory")]
mod memory;
pub mod metrics;
mod options;
mod pending;
#[cfg(feature = "redis")]
mod redis;
mod rules;
pub mod stats;
mod store;
mod template;

pub use breaker::BreakerState;
pub use cache::{Cache, Health, MAX_TAGS};
pub use entry::CacheEntry;
pub use error::{Error, LoadError, Result};
pub use handler::{InvalidationHandler, RuleStats};
#[cfg(feature = "memory")]
pub use memory::MemoryCacheStore;
pub use options::{BreakerOptions, CacheOptions, CallOptions, L1Options, MAX_DURATION, TypePolicy};
#[cfg(feature = "redis")]
pub use redis::{RedisCacheStore, RedisCacheStoreConfig};
pub use rules::{InvalidationRules, Plan, PlannedReload, RuleFailure};
pub use stats::{Stats, TypeStats};
pub use store::{EntryRef, Expect, Notice, Prepared, RawRead, Store, Write};
pub use template::TagTemplate;
