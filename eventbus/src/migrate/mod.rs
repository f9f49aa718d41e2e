//! Moving consumers from one bus to another (Redis Streams -> Kafka), one domain at a time,
//! with rollback. `docs/migration.md` has the whole procedure and its failure model.
//!
//! - **Publishing to both buses.** With a database, through the transactional outbox
//!   (`windlass-outbox`): route each domain's rows to the destinations `redis` and `kafka`
//!   (`OutboxConfig::route`) and run one relay per destination; each destination has its own
//!   delivery state, backoff, dead rows and lag, so a Kafka outage delays Kafka only and loses
//!   nothing. Without a database, [`DualPublisher`] (and [`Migration`]'s `Publisher`) publish to
//!   both buses at once, **best effort** on the secondary bus: the publish succeeds when the
//!   primary bus has the event; a secondary failure is logged and counted
//!   (`windlass_bus_dual_publish_failures_total`) and that bus misses the event.
//! - [`Routes`] says, per domain (a topic prefix: `billing` covers `billing` and
//!   `billing.*`), which bus its consumers read; the longest matching domain wins, and
//!   topics of no listed domain use the default.
//! - [`Migration`] holds both buses and the live routes, kept in a [`RouteStore`]
//!   ([`MemoryRouteStore`] in one process; `windlass_outbox::postgres::PgRouteStore` shared by
//!   several). It is a [`Subscriber`](crate::Subscriber) whose subscriptions follow the routes.
//!   [`Migration::switch`] is a two-phase, observable operation: it claims the switch in the
//!   store (one at a time, fenced by an epoch), **drains** every subscription of the domain
//!   (stops reading, waits for in-flight handlers, acknowledges them), then **starts** them
//!   on the new bus from their group's own committed position (or the earliest one when the
//!   group is new), which covers everything the old subscriptions had not acknowledged; the
//!   consumer's inbox (`windlass-outbox`'s `Inbox`) drops the overlap. A failure in either
//!   phase restarts the old subscriptions, leaves the route unchanged and returns
//!   [`SwitchFailed`](crate::Error::SwitchFailed). Rollback is switching back.
//! - [`verify`](verify::verify) compares, per domain and time window, the ids on both buses
//!   and reports the missing and out-of-order ones.
//!
//! The types are generic: the buses are any [`Publisher`] + [`Subscriber`](crate::Subscriber) (the tests and the
//! example use `RedisBus` and `KafkaBus`; the doc example below uses two memory buses).
//!
//! What it must not do: decide *when* to move (that is the operator's call), or deduplicate
//! (that is the inbox's job, in the consumer's own transaction).
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use windlass_eventbus::migrate::{Backend, Migration, Routes};
//! use windlass_eventbus::{Event, Group, MemoryBus, Publisher, SubscriberExt, Topic};
//!
//! let routes = Routes::new(Backend::Redis).route("billing", Backend::Redis);
//! let migration = Migration::new(MemoryBus::new(), MemoryBus::new(), routes);
//! let invoices = Topic::new("billing.invoices")?;
//! assert_eq!(migration.backend_for(&invoices), Backend::Redis);
//! let sub = migration.subscribe_fn(&invoices, &Group::new("ledger")?, |_e, _ctx| async { Ok(()) }).await?;
//! migration.publish(&invoices, &Event::builder("/billing", "invoice.paid").build()?).await?; // both buses
//! let report = migration.switch("billing", Backend::Kafka).await?; // drain, then start on Kafka
//! assert_eq!((report.subscriptions, migration.backend_for(&invoices)), (1, Backend::Kafka));
//! migration.switch("billing", Backend::Redis).await?; // rollback
//! // Bad input is refused and changes nothing.
//! assert!(migration.switch("shipping", Backend::Kafka).await.is_err()); // unknown domain
//! assert!("rabbit".parse::<Backend>().is_err()); // unknown backend
//! sub.shutdown().await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "memory"))]
//! # fn main() {}
//! ```

mod dual;
mod migration;
mod store;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use windlass_core::Topic;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::traits::Publisher;

pub use dual::{DEFAULT_SECONDARY_TIMEOUT, DualPublisher};
pub use migration::{Migration, SwitchPhase, SwitchReport};
pub use store::{MemoryRouteStore, PendingSwitch, RouteState, RouteStore, SwitchTicket};

/// Which bus a domain's consumers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Backend {
    /// The bus being migrated from (Redis Streams).
    Redis,
    /// The bus being migrated to (Kafka).
    Kafka,
}

impl Backend {
    /// `"redis"` or `"kafka"` (the form stored by route stores).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Kafka => "kafka",
        }
    }

    /// The other bus.
    pub fn other(self) -> Self {
        match self {
            Backend::Redis => Backend::Kafka,
            Backend::Kafka => Backend::Redis,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = Error;

    /// `"redis"` or `"kafka"`; anything else is [`Error::UnknownBackend`].
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "redis" => Ok(Backend::Redis),
            "kafka" => Ok(Backend::Kafka),
            other => Err(Error::UnknownBackend(other.to_owned())),
        }
    }
}

/// True when `domain` covers `topic`: the topic is the domain, or starts with the domain
/// followed by `.` (`billing` covers `billing` and `billing.invoices`, not `billings`).
pub fn covers(domain: &str, topic: &Topic) -> bool {
    let t = topic.as_str();
    t == domain || (t.starts_with(domain) && t.as_bytes().get(domain.len()) == Some(&b'.'))
}

/// The routing table: per domain (topic prefix), the bus its consumers read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    default: Backend,
    domains: BTreeMap<String, Backend>,
}

impl Routes {
    /// Every topic on `default` until a domain is routed elsewhere.
    pub fn new(default: Backend) -> Self {
        Self {
            default,
            domains: BTreeMap::new(),
        }
    }

    /// Lists `domain` (`billing` covers `billing` and `billing.*`) with `backend`. Only listed
    /// domains can be switched.
    pub fn route(mut self, domain: impl Into<String>, backend: Backend) -> Self {
        self.set(domain, backend);
        self
    }

    /// Sets the route of `domain`.
    pub fn set(&mut self, domain: impl Into<String>, backend: Backend) {
        self.domains.insert(domain.into(), backend);
    }

    /// The bus for `topic`: the longest listed domain covering it, else the default.
    pub fn backend_for(&self, topic: &Topic) -> Backend {
        self.domains
            .iter()
            .filter(|(d, _)| covers(d, topic))
            .max_by_key(|(d, _)| d.len())
            .map_or(self.default, |(_, b)| *b)
    }

    /// The bus of a listed domain (`None` when it is not listed).
    pub fn domain(&self, domain: &str) -> Option<Backend> {
        self.domains.get(domain).copied()
    }

    /// The default bus.
    pub fn default_backend(&self) -> Backend {
        self.default
    }

    /// The listed domains and their bus.
    pub fn domains(&self) -> impl Iterator<Item = (&str, Backend)> {
        self.domains.iter().map(|(d, b)| (d.as_str(), *b))
    }

    /// Checks every domain is a valid topic name ([`Error::Name`] otherwise).
    pub fn validate(&self) -> Result<()> {
        for d in self.domains.keys() {
            Topic::new(d.as_str())?;
        }
        Ok(())
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for &P {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        (**self).publish(topic, event).await
    }
    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        (**self).publish_batch(topic, events).await
    }
}

#[cfg(test)]
mod tests;
