//! # windlass-eventbus
//!
//! The event envelope and the bus every other windlass crate stands on:
//!
//! - [`Event`]: CloudEvents 1.0 (structured JSON, exactly) plus the tenant (`orgid`),
//!   `correlationid` / `causationid`, W3C `traceparent` and `partitionkey` extensions.
//! - [`Publisher`] and [`Subscriber`]: publish one event or a batch; subscribe a [`Handler`] to
//!   a topic as a member of a consumer group, and get a [`Subscription`] with graceful shutdown.
//! - The runner behind every backend: concurrency limit, order per ordering key, retry with
//!   exponential backoff and jitter ([`RetryPolicy`]), a dead-letter queue, one `tracing` span
//!   per delivery.
//! - Backends: [`MemoryBus`] (feature `memory`, default), `redis::RedisBus` (feature `redis`),
//!   `kafka::KafkaBus` (feature `kafka`). Around them: [`migrate`] (Redis -> Kafka, dual
//!   publish and per-domain routing), [`replay`] (re-read a topic from a time or an event id) and
//!   `schema` (JSON Schema validation, feature `schema`).
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
