//! # windlass-outbox
//!
//! Effectively-once events from a SQL database: the **transactional outbox** on the producer
//! side, **relays** that publish it to any [`windlass_eventbus::Publisher`], and an **inbox**
//! on the consumer side.
//!
//! - Write side: `Outbox::enqueue(&mut tx, &topic, &event)` inserts the event, exactly as
//!   encoded, in the caller's own transaction, so it is published if and only if the business
//!   change commits. Writers of one ordering key are serialised at enqueue: per key, publish
//!   order is enqueue order, whatever the commit order.
//! - Rows are routed to one or more named [`Destination`]s (e.g. `"redis"` and `"kafka"` during
//!   a migration); each has its own delivery state per row, relay, leases, backoff, dead rows
//!   and lag, so one bus's outage never delays or loses another's events.
//! - [`Relay`]: claims keys of one destination under a lease (short statement), publishes
//!   their rows, marks them under the claim's fencing token (short statement). At least once;
//!   per-key order; a transient bus failure backs the key off and never makes anything dead; a
//!   key whose head the bus rejects is blocked (or skipped: [`DeadPolicy`]); tenants served
//!   round-robin; one elected relay runs retention, purges and the operator counters.
//! - [`OutboxAdmin`]: the operator API (counters, dead rows, blocked keys, requeue, skip),
//!   tenant-scoped.
//! - Inbox: records (`consumer`, `source`, `id`) in the consumer's transaction and drops
//!   duplicates, as a bus [`Handler`](windlass_eventbus::Handler).
//! - Backends: `postgres` and `sqlite` (embedded) features. `docs/outbox.md` has the design.
//! - Tracing (feature `otel`): enqueue stores the current span's W3C trace context with an
//!   event that has none; the relay's `windlass.outbox.publish` span continues it as its
//!   parent and hands its own context on to the consumers (`docs/tracing.md`).
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use windlass_eventbus::{Event, MemoryBus, Topic};
//! use windlass_outbox::sqlite::{Outbox, SqliteOutboxStore, migrate};
//! use windlass_outbox::Relay;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! migrate(&pool).await?;
//! let outbox = Outbox::new();
//! let orders = Topic::new("orders")?;
//!
//! // The business change and its event commit together.
//! let mut tx = pool.begin().await?;
//! sqlx::query("CREATE TABLE orders (id TEXT)").execute(&mut *tx).await?;
//! sqlx::query("INSERT INTO orders VALUES ('o-1')").execute(&mut *tx).await?;
//! let placed = Event::builder("/shop", "order.placed").subject("o-1").data_json(&42).build()?;
//! outbox.enqueue(&mut tx, &orders, &placed).await?;
//! tx.commit().await?;
//!
//! // The relay publishes it.
//! let bus = MemoryBus::new();
//! let relay = Relay::new(SqliteOutboxStore::new(pool), bus.clone());
//! assert_eq!(relay.drain(Duration::from_secs(5)).await?.published, 1);
//! assert_eq!(bus.len(&orders), 1);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
mod config;
mod error;
mod inbox;
pub mod metrics;
mod otel;
mod relay;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql;
mod store;
mod wake;
mod write;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use admin::{
    BlockedKey, Cursor, DeadEvent, DeadFilter, DeliveryRef, LeaderInfo, MAX_PAGE, OutboxAdmin,
    OutboxStats, Page, TopicStats,
};
pub use config::{
    DEFAULT_DESTINATION, DEFAULT_INBOX_TABLE, DEFAULT_MAX_EVENT_SIZE, DEFAULT_TABLE, DeadPolicy,
    Destination, IDENT_MAX_LEN, OutboxConfig,
};
pub use error::{Error, Result};
pub use inbox::{DuplicateHook, InboxBackend, InboxHandler, Received};
pub use relay::{Relay, RelayHandle, RelayOptions, Round};
pub use store::{
    Claim, ClaimRequest, ClaimedRow, Failure, OutboxMaintenance, OutboxStore, Settled, Settlement,
    Waiter,
};
