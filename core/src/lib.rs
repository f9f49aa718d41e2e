//! Building blocks every windlass crate shares, kept in exactly one place:
//!
//! - [`Name`] and its typed wrappers ([`Topic`], [`Group`], [`OrgId`]): names that become
//!   Redis keys, Kafka topics, SQL values or metric labels, validated once at construction so
//!   they can never smuggle a key separator or collide with another key space.
//! - [`validate_key_segment`]: the looser rule for tags and cache keys (they may also hold `:`
//!   and `/`, since they are always a key's last segment).
//! - [`RetryPolicy`]: exponential backoff with jitter and an attempt limit, used by the bus
//!   runner, the outbox relay and the job workers alike.
//! - [`redact_url`]: strips passwords from connection URLs before they reach an error or a log.
//! - [`TenantScope`]: which tenants' rows an operator call may see or change.
//! - [`MetricDef`]: how each crate describes the metrics it emits (its `metrics::CATALOG`).
//! - `otel` (feature `otel`): the W3C trace context of a `tracing` span, injected into events
//!   and jobs and extracted from them by the other crates (see `docs/tracing.md`).
//!
//! This crate must not depend on any backend client; it stays small and dependency-light.
//!
//! ```
//! use std::time::Duration;
//! use windlass_core::{OrgId, RetryPolicy, Topic};
//!
//! let topic = Topic::new("billing.invoices").unwrap();
//! assert!(Topic::new("billing:invoices").is_err()); // ':' would forge a Redis key
//! let tenant = OrgId::new("acme").unwrap();
//! assert_eq!(tenant.as_str(), "acme");
//!
//! let policy = RetryPolicy::default().with_max_attempts(5);
//! assert!(policy.delay(1) <= Duration::from_millis(200));
//! assert!(policy.is_exhausted(5));
//! # let _ = topic;
//! ```
#![doc(test(attr(deny(warnings))))]

mod metric;
mod name;
#[cfg(feature = "otel")]
pub mod otel;
mod retry;
mod tenant;
mod url;

pub use metric::{MetricDef, MetricKind};
pub use name::{
    Group, KEY_SEGMENT_MAX_LEN, NAME_MAX_LEN, Name, NameError, OrgId, Topic, validate_key_segment,
};
pub use retry::RetryPolicy;
pub use tenant::TenantScope;
pub use url::redact_url;

/// A boxed error, as backends' sources are carried.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
