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
//! | `otel` | W3C trace context carried by events, outbox rows and jobs through OpenTelemetry: one trace from a request to the jobs it causes (`docs/tracing.md`) |
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
//!
//! Types that appear in the crates' public signatures are re-exported here, so an application
//! needs no version of its own that must match ours: [`CancellationToken`], [`async_trait`](macro@async_trait),
//! [`sqlx`] (with a Postgres or SQLite feature). With `jobs-postgres` and / or `outbox-postgres`,
//! [`migrate`] creates every windlass table in one call.
#![doc(test(attr(deny(warnings))))]

pub use async_trait::async_trait;
#[cfg(any(
    feature = "jobs-postgres",
    feature = "outbox-postgres",
    feature = "outbox-sqlite"
))]
pub use sqlx;
pub use tokio_util::sync::CancellationToken;

#[cfg(feature = "cache")]
pub use windlass_cache as cache;
pub use windlass_core as core;
pub use windlass_eventbus as eventbus;
#[cfg(feature = "jobs")]
pub use windlass_jobs as jobs;
#[cfg(any(feature = "outbox-postgres", feature = "outbox-sqlite"))]
pub use windlass_outbox as outbox;

/// Why [`migrate`] failed: the crate whose migration failed, and its error.
#[cfg(any(feature = "jobs-postgres", feature = "outbox-postgres"))]
#[derive(Debug)]
#[non_exhaustive]
pub enum MigrateError {
    /// The jobs tables.
    #[cfg(feature = "jobs-postgres")]
    Jobs(windlass_jobs::Error),
    /// The outbox and inbox tables.
    #[cfg(feature = "outbox-postgres")]
    Outbox(windlass_outbox::Error),
}

#[cfg(any(feature = "jobs-postgres", feature = "outbox-postgres"))]
impl std::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            #[cfg(feature = "jobs-postgres")]
            Self::Jobs(e) => write!(f, "jobs migration failed: {e}"),
            #[cfg(feature = "outbox-postgres")]
            Self::Outbox(e) => write!(f, "outbox migration failed: {e}"),
        }
    }
}

#[cfg(any(feature = "jobs-postgres", feature = "outbox-postgres"))]
impl std::error::Error for MigrateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            #[cfg(feature = "jobs-postgres")]
            Self::Jobs(e) => Some(e),
            #[cfg(feature = "outbox-postgres")]
            Self::Outbox(e) => Some(e),
        }
    }
}

/// Creates (or brings up to date) every windlass table on Postgres that the enabled features
/// use: the jobs tables (`jobs-postgres`) and the outbox, delivery and inbox tables with their
/// default names (`outbox-postgres`; for configured names call
/// `windlass::outbox::postgres::migrate_with`). Idempotent, safe to run from several processes
/// at once (each crate's migration holds an advisory lock).
#[cfg(any(feature = "jobs-postgres", feature = "outbox-postgres"))]
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), MigrateError> {
    #[cfg(feature = "jobs-postgres")]
    windlass_jobs::postgres::migrate(pool)
        .await
        .map_err(MigrateError::Jobs)?;
    #[cfg(feature = "outbox-postgres")]
    windlass_outbox::postgres::migrate(pool)
        .await
        .map_err(MigrateError::Outbox)?;
    Ok(())
}
