//! Moving consumers from one bus to another (Redis Streams -> Kafka), one domain at a time,
//! with rollback.
//!
//! - [`DualPublisher`] writes every event to both buses (concurrently; an error from either
//!   fails the publish, and the caller's retry may duplicate it on the other bus, which the
//!   consumer's inbox drops).
//! - [`Routes`] says, per domain (a topic prefix: `billing` covers `billing` and
//!   `billing.*`), which bus its consumers read; the longest matching domain wins, and
//!   topics of no listed domain use the default.
//! - [`Migration`] holds both buses and the live routes. It is a [`Publisher`] (dual publish)
//!   and a [`Subscriber`] whose subscriptions follow the routes: when
//!   [`Migration::switch`] moves a domain, each of its subscriptions starts on the new bus
//!   *first* and then shuts the old one down gracefully, so no event is missed; the overlap,
//!   and the old group's backlog when rolling back, arrive as duplicates for the inbox
//!   (`windlass-outbox`'s `Inbox`) to drop. Rollback is switching the domain back.
//!
//! The types are generic: the buses are any [`Publisher`] + [`Subscriber`] (the tests and the
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
//! let migration = Migration::new(MemoryBus::new(), MemoryBus::new(), Routes::new(Backend::Redis));
//! let invoices = Topic::new("billing.invoices")?;
//! assert_eq!(migration.backend_for(&invoices), Backend::Redis);
//! let sub = migration.subscribe_fn(&invoices, &Group::new("ledger")?, |_e, _ctx| async { Ok(()) }).await?;
//! migration.publish(&invoices, &Event::builder("/billing", "invoice.paid").build()?).await?; // both buses
//! migration.switch("billing", Backend::Kafka); // the subscription moves
//! assert_eq!(migration.backend_for(&invoices), Backend::Kafka);
//! migration.switch("billing", Backend::Redis); // rollback
//! sub.shutdown().await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "memory"))]
//! # fn main() {}
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use windlass_core::{Group, Topic};

use crate::error::Result;
use crate::event::Event;
use crate::handler::Handler;
use crate::subscription::Subscription;
use crate::traits::{Publisher, SubscribeOptions, Subscriber};

/// Which bus a domain's consumers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// The bus being migrated from (Redis Streams).
    Redis,
    /// The bus being migrated to (Kafka).
    Kafka,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Redis => "redis",
            Backend::Kafka => "kafka",
        })
    }
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

    /// Routes `domain` (`billing` covers `billing` and `billing.*`) to `backend`.
    pub fn route(mut self, domain: impl Into<String>, backend: Backend) -> Self {
        self.set(domain, backend);
        self
    }

    /// Sets the route of `domain`.
    pub fn set(&mut self, domain: impl Into<String>, backend: Backend) {
        self.domains.insert(domain.into(), backend);
    }

    /// The bus for `topic`: the longest listed domain that is the topic or a `.`-separated
    /// prefix of it, else the default.
    pub fn backend_for(&self, topic: &Topic) -> Backend {
        let t = topic.as_str();
        self.domains
            .iter()
            .filter(|(d, _)| {
                t == d.as_str()
                    || (t.starts_with(d.as_str()) && t.as_bytes().get(d.len()) == Some(&b'.'))
            })
            .max_by_key(|(d, _)| d.len())
            .map_or(self.default, |(_, b)| *b)
    }

    /// The default bus.
    pub fn default_backend(&self) -> Backend {
        self.default
    }

    /// The listed domains and their bus.
    pub fn domains(&self) -> impl Iterator<Item = (&str, Backend)> {
        self.domains.iter().map(|(d, b)| (d.as_str(), *b))
    }
}

/// Publishes every event to two buses.
#[derive(Debug, Clone)]
pub struct DualPublisher<A, B> {
    first: A,
    second: B,
}

impl<A: Publisher, B: Publisher> DualPublisher<A, B> {
    /// Writes to `first` and `second`.
    pub fn new(first: A, second: B) -> Self {
        Self { first, second }
    }
}

#[async_trait]
impl<A: Publisher, B: Publisher> Publisher for DualPublisher<A, B> {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        let (a, b) = tokio::join!(
            self.first.publish(topic, event),
            self.second.publish(topic, event)
        );
        a.and(b)
    }

    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        let (a, b) = tokio::join!(
            self.first.publish_batch(topic, events),
            self.second.publish_batch(topic, events)
        );
        a.and(b)
    }
}

/// Both buses, the dual publisher and the live routes. Cheap to clone.
pub struct Migration<R, K> {
    redis: Arc<R>,
    kafka: Arc<K>,
    routes: Arc<watch::Sender<Routes>>,
}

impl<R, K> Clone for Migration<R, K> {
    fn clone(&self) -> Self {
        Self {
            redis: self.redis.clone(),
            kafka: self.kafka.clone(),
            routes: self.routes.clone(),
        }
    }
}

impl<R, K> fmt::Debug for Migration<R, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("routes", &*self.routes.borrow())
            .finish_non_exhaustive()
    }
}

impl<R, K> Migration<R, K>
where
    R: Publisher + Subscriber + 'static,
    K: Publisher + Subscriber + 'static,
{
    /// A migration between `redis` (from) and `kafka` (to) with the initial `routes`.
    pub fn new(redis: R, kafka: K, routes: Routes) -> Self {
        Self {
            redis: Arc::new(redis),
            kafka: Arc::new(kafka),
            routes: Arc::new(watch::Sender::new(routes)),
        }
    }

    /// The current routes.
    pub fn routes(&self) -> Routes {
        self.routes.borrow().clone()
    }

    /// The bus `topic`'s consumers read now.
    pub fn backend_for(&self, topic: &Topic) -> Backend {
        self.routes.borrow().backend_for(topic)
    }

    /// Routes `domain` to `backend`; running subscriptions of its topics move (new bus first,
    /// then the old one shuts down gracefully). Rolling back is switching back.
    pub fn switch(&self, domain: impl Into<String>, backend: Backend) {
        let domain = domain.into();
        tracing::info!(domain = %domain, backend = %backend, "routing domain");
        self.routes.send_modify(|r| r.set(domain, backend));
    }

    /// Replaces the whole routing table.
    pub fn set_routes(&self, routes: Routes) {
        self.routes.send_replace(routes);
    }

    /// The "from" bus.
    pub fn redis(&self) -> &R {
        &self.redis
    }

    /// The "to" bus.
    pub fn kafka(&self) -> &K {
        &self.kafka
    }

    async fn start(
        &self,
        backend: Backend,
        topic: &Topic,
        group: &Group,
        handler: &Arc<dyn Handler>,
        options: &SubscribeOptions,
    ) -> Result<Subscription> {
        match backend {
            Backend::Redis => {
                self.redis
                    .subscribe(topic, group, handler.clone(), options.clone())
                    .await
            }
            Backend::Kafka => {
                self.kafka
                    .subscribe(topic, group, handler.clone(), options.clone())
                    .await
            }
        }
    }
}

#[async_trait]
impl<R, K> Publisher for Migration<R, K>
where
    R: Publisher + Subscriber + 'static,
    K: Publisher + Subscriber + 'static,
{
    /// Dual publish: both buses, whatever the routes say (consumers of either can be moved at
    /// any time without missing an event).
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        DualPublisher::new(&*self.redis, &*self.kafka)
            .publish(topic, event)
            .await
    }

    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        DualPublisher::new(&*self.redis, &*self.kafka)
            .publish_batch(topic, events)
            .await
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

#[async_trait]
impl<R, K> Subscriber for Migration<R, K>
where
    R: Publisher + Subscriber + 'static,
    K: Publisher + Subscriber + 'static,
{
    /// Subscribes on the bus the routes give for `topic`, and follows route changes.
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let mut routes = self.routes.subscribe();
        let mut current = routes.borrow_and_update().backend_for(topic);
        let mut sub = self
            .start(current, topic, group, &handler, &options)
            .await?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let this = self.clone();
        let (topic, group) = (topic.clone(), group.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return sub.shutdown().await,
                    changed = routes.changed() => {
                        if changed.is_err() {
                            // The migration is gone: keep consuming where we are until shut down.
                            stop.cancelled().await;
                            return sub.shutdown().await;
                        }
                        let next = routes.borrow_and_update().backend_for(&topic);
                        if next == current {
                            continue;
                        }
                        match this.start(next, &topic, &group, &handler, &options).await {
                            Ok(new) => {
                                let old = std::mem::replace(&mut sub, new);
                                if let Err(e) = old.shutdown().await {
                                    tracing::warn!(topic = %topic, group = %group, error = %e, "old subscription did not stop cleanly");
                                }
                                tracing::info!(topic = %topic, group = %group, from = %current, to = %next, "subscription moved");
                                current = next;
                            }
                            Err(e) => {
                                tracing::error!(topic = %topic, group = %group, to = %next, error = %e, "could not subscribe on the new bus; staying on the old one");
                            }
                        }
                    }
                }
            }
        });
        Ok(Subscription::new(cancel, task, Vec::new()))
    }
}
