//! # windlass-eventbus
//!
//! The event envelope and the bus every other windlass crate stands on:
//!
//! - [`Event`]: CloudEvents 1.0 (structured JSON, exactly) plus the tenant (`orgid`),
//!   `correlationid` / `causationid`, W3C `traceparent` and `partitionkey` extensions.
//! - [`Publisher`] and [`Subscriber`]: publish one event or a batch; subscribe a [`Handler`] to
//!   a topic as a member of a consumer group, and get a [`Subscription`] with graceful shutdown.
//! - Partitioned topics ([`partition`]: Kafka's default partitioner) whose partitions are owned
//!   by one live member of a group at a time, through leases with fencing epochs: **for one
//!   ordering key, handler calls never overlap and follow publish order across every member of
//!   the group**, through joins, leaves and crashes (the one exception, a member frozen past its
//!   lease while its handler runs, is bounded by the handler deadline).
//! - The runner behind every backend: concurrency limit, order per ordering key, a deadline and
//!   a [`CancellationToken`] per handler attempt, retry with exponential backoff and jitter
//!   ([`RetryPolicy`]), a dead-letter queue, one `tracing` span per delivery, a shutdown that
//!   hands back whatever did not start.
//! - [`BusAdmin`]: the operator API (groups with per-partition owner, lag, pending count and
//!   oldest pending age; dead letters paged and tenant-scoped; redrive; topic deletion), and
//!   [`metrics::CATALOG`].
//! - Backends: [`MemoryBus`] (feature `memory`, default), `redis::RedisBus` (feature `redis`),
//!   `kafka::KafkaBus` (feature `kafka`). Around them: [`migrate`] (Redis -> Kafka, dual
//!   publish and per-domain routing), [`replay`] (re-read a topic from a time or an event id) and
//!   `schema` (JSON Schema validation, feature `schema`).
//! - `otel` (feature `otel`): publishing injects the current span's W3C trace context into an
//!   event without one, and each delivery's `windlass.deliver` span continues it as its parent
//!   (`docs/tracing.md`).
//!
//! ```
//! use windlass_eventbus::{Event, HandlerError, MemoryBus, Publisher, SubscriberExt};
//! use windlass_core::{Group, Topic};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = MemoryBus::new();
//! let invoices = Topic::new("invoices")?;
//! let sub = bus
//!     .subscribe_fn(&invoices, &Group::new("ledger")?, |event, ctx| async move {
//!         let Some(amount) = event.data_as::<u64>().map_err(HandlerError::reject)? else {
//!             return Err(HandlerError::reject("no amount"));
//!         };
//!         println!("attempt {}: booked {amount}", ctx.attempt);
//!         Ok(())
//!     })
//!     .await?;
//! bus.publish(&invoices, &Event::builder("/billing", "invoice.paid").data_json(&100).build()?).await?;
//! sub.shutdown().await?;
//! # Ok(())
//! # }
//! ```
#![doc(test(attr(deny(warnings))))]

pub mod admin;
mod error;
mod event;
mod handler;
#[cfg(feature = "kafka")]
pub mod kafka;
mod membership;
#[cfg(feature = "memory")]
mod memory;
pub mod metrics;
pub mod migrate;
#[cfg(feature = "otel")]
pub mod otel;
pub mod partition;
#[cfg(feature = "redis")]
pub mod redis;
pub mod replay;
pub mod runner;
#[cfg(feature = "schema")]
pub mod schema;
mod subscription;
mod traits;

pub use admin::BusAdmin;
pub use error::{Error, EventError, Result};
pub use event::{
    ATTRIBUTE_MAX_LEN, Data, Event, EventBuilder, ExtensionValue, SPEC_VERSION, is_json_media_type,
};
pub use handler::{DeliveryContext, FnHandler, Handler, HandlerError, HandlerResult, handler_fn};
#[cfg(feature = "memory")]
pub use memory::{MemoryBus, MemoryConfig};
pub use partition::PartitionCount;
pub use subscription::Subscription;
pub use tokio_util::sync::CancellationToken;
pub use traits::{
    DeadLetter, DeadLetters, Publisher, StartFrom, SubscribeOptions, Subscriber, SubscriberExt,
};
pub use windlass_core::{Group, OrgId, RetryPolicy, TenantScope, Topic};
