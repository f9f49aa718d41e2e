//! # windlass
//!
//! Cross-cutting infrastructure for event-driven Rust services, done right once: a
//! transactional outbox, background jobs, a tag-aware cache and an event bus, each behind
//! pluggable backends (PostgreSQL, Redis Streams, Kafka, and in-memory for tests).
//!
//! This facade re-exports the crates; enable the backends you use as features:
//!
//! | feature | brings |
//! |---|---|
//! | `memory` (default) | in-memory event bus |
//! | `redis` | Redis Streams event bus |
//! | `kafka` | Kafka event bus (`windlass::eventbus::kafka`), replay, Redis -> Kafka migration |
//! | `schema` | JSON Schema validation of events (`windlass::eventbus::schema`) |
//! | `cache` / `cache-redis` | tag-aware cache, in-process or on Redis (`windlass::cache`) |
//! | `outbox-postgres` / `outbox-sqlite` | transactional outbox, relay and inbox (`windlass::outbox`) |
//!
//! ```
//! use windlass::eventbus::{Event, MemoryBus, Publisher, Topic};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = MemoryBus::new();
//! let event = Event::builder("/shop", "order.placed").org_id("acme").build()?;
//! bus.publish(&Topic::new("orders")?, &event).await?;
//! # Ok(())
//! # }
//! ```
#![doc(test(attr(deny(warnings))))]

#[cfg(feature = "cache")]
pub use windlass_cache as cache;
pub use windlass_core as core;
pub use windlass_eventbus as eventbus;
#[cfg(feature = "jobs")]
pub use windlass_jobs as jobs;
#[cfg(any(feature = "outbox-postgres", feature = "outbox-sqlite"))]
pub use windlass_outbox as outbox;
