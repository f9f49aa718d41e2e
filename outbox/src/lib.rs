//! # windlass-outbox
//!
//! Effectively-once events from a SQL database: the **transactional outbox** on the producer
//! side, a **relay** that publishes it to any [`windlass_eventbus::Publisher`], and an
//! **inbox** on the consumer side.
//!
//! - Write side: `Outbox::enqueue(&mut tx, topic, &event)` inserts the event in the caller's
//!   own transaction, so it is published if and only if the business change commits.
//! - [`Relay`]: claims rows, publishes them (grouped per topic, `publish_batch`), marks them.
//!   At least once; order kept per partition key; exponential backoff, then `dead`; retention;
//!   metrics. Postgres relays wake on `LISTEN/NOTIFY` and claim with `FOR UPDATE SKIP LOCKED`,
//!   so several run side by side (see [`postgres`] for how per-key order survives that).
//! - Inbox: records (`consumer`, `source`, `id`) in the consumer's transaction and drops
//!   duplicates, as a wrapper around a bus [`Handler`](windlass_eventbus::Handler).
//! - Backends: `postgres` and `sqlite` (embedded) features. `docs/outbox.md` has the design.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use windlass_eventbus::{Event, MemoryBus, Topic};
//! use windlass_outbox::sqlite::{Outbox, SqliteStore, migrate};
//! use windlass_outbox::{OutboxConfig, Relay};
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! migrate(&pool).await?;
//! let outbox = Outbox::new(OutboxConfig::default())?;
//!
//! // The business change and its event commit together.
//! let mut tx = pool.begin().await?;
//! sqlx::query("CREATE TABLE orders (id TEXT)").execute(&mut *tx).await?;
//! sqlx::query("INSERT INTO orders VALUES ('o-1')").execute(&mut *tx).await?;
//! let placed = Event::builder("/shop", "order.placed").subject("o-1").data_json(&42).build()?;
//! outbox.enqueue(&mut tx, "orders", &placed).await?;
//! tx.commit().await?;
//!
//! // The relay publishes it.
//! let bus = MemoryBus::new();
//! let relay = Relay::new(SqliteStore::new(pool, OutboxConfig::default())?, bus.clone());
//! assert_eq!(relay.run_once().await?.published, 1);
//! assert_eq!(bus.len(&Topic::new("orders")?), 1);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
pub mod metrics;
mod relay;
mod store;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod write;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use config::{
    DEFAULT_INBOX_TABLE, DEFAULT_MAX_EVENT_SIZE, DEFAULT_TABLE, IDENT_MAX_LEN, OutboxConfig,
};
pub use error::{Error, Result};
pub use relay::{Relay, RelayHandle, RelayOptions, Round};
pub use store::{Claim, ClaimedRow, DeadEvent, FailedRow, OutboxStore, Stats, Status, Waiter};

/// What the inbox says about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// First time this consumer sees this (`source`, `id`): do the work.
    New,
    /// Handled before (committed): skip it.
    Duplicate,
}
