//! [`Migration`]: both buses, the live routes, subscriptions that follow them, and the
//! two-phase switch.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::join_all;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use windlass_core::{Group, Topic};

use super::dual::DualPublisher;
use super::store::{MemoryRouteStore, RouteState, RouteStore, SwitchTicket};
use super::{Backend, Routes};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::Handler;
use crate::subscription::Subscription;
use crate::traits::{Publisher, StartFrom, SubscribeOptions, Subscriber};

/// Default lease of a switch claim in the route store.
const SWITCH_LEASE: Duration = Duration::from_secs(120);

/// Where a running switch is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwitchPhase {
    /// Phase 1: the domain's subscriptions stop reading and finish their in-flight handlers.
    Draining {
        /// The domain.
        domain: String,
        /// From.
        from: Backend,
        /// To.
        to: Backend,
    },
    /// Phase 2: the domain's subscriptions start on the new bus.
    Starting {
        /// The domain.
        domain: String,
        /// From.
        from: Backend,
        /// To.
        to: Backend,
    },
}

/// What a successful [`Migration::switch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SwitchReport {
    /// The domain.
    pub domain: String,
    /// Its backend before.
    pub from: Backend,
    /// Its backend now.
    pub to: Backend,
    /// Subscriptions of this process that moved.
    pub subscriptions: usize,
    /// How long phase 1 (drain) took.
    pub drained_in: Duration,
    /// How long phase 2 (start on the new bus) took.
    pub started_in: Duration,
    /// True when the domain already was on `to` (nothing was done).
    pub unchanged: bool,
}

enum Cmd {
    Drain(oneshot::Sender<Result<()>>),
    Start(Backend, oneshot::Sender<Result<()>>),
}

struct SubCtl {
    topic: Topic,
    tx: mpsc::Sender<Cmd>,
}

impl SubCtl {
    async fn ask(&self, make: impl FnOnce(oneshot::Sender<Result<()>>) -> Cmd) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))
    }
}

struct Shared<R, K> {
    redis: Arc<R>,
    kafka: Arc<K>,
    store: Arc<dyn RouteStore>,
    routes: watch::Sender<Routes>,
    phase: watch::Sender<Option<SwitchPhase>>,
    subs: Mutex<Vec<Weak<SubCtl>>>,
    /// Held by a switch (and briefly by `subscribe`, so no subscription starts mid-switch).
    switching: tokio::sync::Mutex<()>,
    lease: Duration,
}

/// Both buses, the dual publisher, the live routes and the subscriptions following them.
/// Cheap to clone.
pub struct Migration<R, K> {
    shared: Arc<Shared<R, K>>,
}

impl<R, K> Clone for Migration<R, K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<R, K> fmt::Debug for Migration<R, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("routes", &*self.shared.routes.borrow())
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

impl<R, K> Migration<R, K>
where
    R: Publisher + Subscriber + 'static,
    K: Publisher + Subscriber + 'static,
{
    /// A migration between `redis` (from) and `kafka` (to) with `routes` kept in this process
    /// ([`MemoryRouteStore`]). Panics when a domain of `routes` is not a valid topic name (use
    /// [`Migration::with_store`] to get the error instead).
    pub fn new(redis: R, kafka: K, routes: Routes) -> Self {
        routes
            .validate()
            .expect("route domains are valid topic names");
        let store = MemoryRouteStore::new();
        // The memory store's `init` never waits and cannot fail on valid routes.
        let routes = futures::FutureExt::now_or_never(store.init(&routes))
            .and_then(Result::ok)
            .map_or(routes, |state| state.routes);
        Self::build(redis, kafka, Arc::new(store), routes)
    }

    /// A migration whose routes live in `store` (shared by every process using it): the
    /// domains of `routes` the store does not hold yet are added with their backend, the
    /// others keep the stored one.
    pub async fn with_store(
        redis: R,
        kafka: K,
        routes: Routes,
        store: Arc<dyn RouteStore>,
    ) -> Result<Self> {
        let state = store.init(&routes).await?;
        Ok(Self::build(redis, kafka, store, state.routes))
    }

    fn build(redis: R, kafka: K, store: Arc<dyn RouteStore>, routes: Routes) -> Self {
        Self {
            shared: Arc::new(Shared {
                redis: Arc::new(redis),
                kafka: Arc::new(kafka),
                store,
                routes: watch::Sender::new(routes),
                phase: watch::Sender::new(None),
                subs: Mutex::new(Vec::new()),
                switching: tokio::sync::Mutex::new(()),
                lease: SWITCH_LEASE,
            }),
        }
    }

    /// The routes this process applies now.
    pub fn routes(&self) -> Routes {
        self.shared.routes.borrow().clone()
    }

    /// The bus `topic`'s consumers read now (in this process).
    pub fn backend_for(&self, topic: &Topic) -> Backend {
        self.shared.routes.borrow().backend_for(topic)
    }

    /// The phase of this process's running switch, if any; watch it to follow a switch.
    pub fn phase(&self) -> watch::Receiver<Option<SwitchPhase>> {
        self.shared.phase.subscribe()
    }

    /// The stored state: committed routes and switches in progress in any process.
    pub async fn state(&self) -> Result<RouteState> {
        let default = self.shared.routes.borrow().default_backend();
        self.shared.store.load(default).await
    }

    /// The "from" bus.
    pub fn redis(&self) -> &R {
        &self.shared.redis
    }

    /// The "to" bus.
    pub fn kafka(&self) -> &K {
        &self.shared.kafka
    }

    fn live_subs(&self) -> Vec<Arc<SubCtl>> {
        let mut subs = self.shared.subs.lock().expect("subscription registry lock");
        subs.retain(|w| w.strong_count() > 0);
        subs.iter().filter_map(Weak::upgrade).collect()
    }

    /// Switches `domain`'s consumers to `to`, in two phases, and commits the route.
    ///
    /// 1. Claims the switch in the route store (one switch at a time; fenced by an epoch).
    /// 2. **Drain**: every subscription of this process whose topic changes bus stops
    ///    reading, finishes its in-flight handlers and acknowledges them (its subscribe
    ///    options' `shutdown_timeout` bounds the wait).
    /// 3. **Start**: each starts on `to`, from its group's committed position there, or the
    ///    earliest one when the group is new: everything the old subscription had not
    ///    acknowledged is at or after that position (the inbox drops what was handled twice).
    /// 4. Commits the route in the store.
    ///
    /// Errors, all leaving the route unchanged: [`Error::UnknownDomain`],
    /// [`Error::SwitchInProgress`] (here or in another process sharing the store), and
    /// [`Error::SwitchFailed`] when a phase or the commit failed; then the subscriptions run on
    /// the old bus again. Switching a domain to the bus it is on returns a report with
    /// `unchanged: true`. Rollback is switching back.
    ///
    /// Other processes sharing the store follow the committed route on their next
    /// [`Migration::sync`] (see `docs/migration.md` for what that means for order).
    pub async fn switch(&self, domain: &str, to: Backend) -> Result<SwitchReport> {
        let Ok(_guard) = self.shared.switching.try_lock() else {
            let to_s = match &*self.shared.phase.borrow() {
                Some(SwitchPhase::Draining { to, .. } | SwitchPhase::Starting { to, .. }) => {
                    to.to_string()
                }
                None => "?".into(),
            };
            return Err(Error::SwitchInProgress {
                domain: domain.to_owned(),
                to: to_s,
            });
        };
        let stored = self.state().await?;
        let Some(from) = stored.routes.domain(domain) else {
            return Err(Error::UnknownDomain(domain.to_owned()));
        };
        if from == to {
            self.apply_routes(stored.routes).await;
            return Ok(SwitchReport {
                domain: domain.to_owned(),
                from,
                to,
                subscriptions: 0,
                drained_in: Duration::ZERO,
                started_in: Duration::ZERO,
                unchanged: true,
            });
        }
        let ticket = self
            .shared
            .store
            .begin_switch(domain, to, self.shared.lease)
            .await?;
        let result = self.run_switch(&ticket, stored.routes).await;
        self.shared.phase.send_replace(None);
        let outcome = if result.is_ok() { "done" } else { "failed" };
        metrics::counter!("windlass_bus_migration_switches_total",
            "domain" => domain.to_owned(), "outcome" => outcome)
        .increment(1);
        result
    }

    async fn run_switch(&self, ticket: &SwitchTicket, current: Routes) -> Result<SwitchReport> {
        let (domain, from, to) = (ticket.domain.as_str(), ticket.from, ticket.to);
        let mut next = current.clone();
        next.set(domain, to);
        // Every local subscription whose topic changes bus.
        let moving: Vec<Arc<SubCtl>> = self
            .live_subs()
            .into_iter()
            .filter(|s| current.backend_for(&s.topic) != next.backend_for(&s.topic))
            .collect();
        let failed = |stage: &'static str, e: Error| Error::SwitchFailed {
            domain: domain.to_owned(),
            from: from.to_string(),
            to: to.to_string(),
            stage,
            source: Box::new(e),
        };

        tracing::info!(domain, %from, %to, subscriptions = moving.len(), "switch: draining");
        self.shared.phase.send_replace(Some(SwitchPhase::Draining {
            domain: domain.to_owned(),
            from,
            to,
        }));
        let t0 = Instant::now();
        let drained = join_all(moving.iter().map(|s| s.ask(Cmd::Drain))).await;
        let drained_in = t0.elapsed();
        if let Some(e) = drained.into_iter().find_map(Result::err) {
            self.restore(&moving, from).await;
            self.shared.store.abort_switch(ticket).await.ok();
            tracing::error!(domain, %from, %to, error = %e, "switch failed while draining; route unchanged");
            return Err(failed("draining", e));
        }

        tracing::info!(domain, %from, %to, "switch: starting on the new bus");
        self.shared.phase.send_replace(Some(SwitchPhase::Starting {
            domain: domain.to_owned(),
            from,
            to,
        }));
        let t1 = Instant::now();
        let started = join_all(moving.iter().map(|s| s.ask(|r| Cmd::Start(to, r)))).await;
        let started_in = t1.elapsed();
        if let Some(e) = started.into_iter().find_map(Result::err) {
            self.restore(&moving, from).await;
            self.shared.store.abort_switch(ticket).await.ok();
            tracing::error!(domain, %from, %to, error = %e, "switch failed while starting; route unchanged");
            return Err(failed("starting", e));
        }
        if let Err(e) = self.shared.store.finish_switch(ticket).await {
            self.restore(&moving, from).await;
            tracing::error!(domain, %from, %to, error = %e, "switch failed while committing; route unchanged");
            return Err(failed("committing", e));
        }
        self.shared.routes.send_replace(next);
        tracing::info!(domain, %from, %to, subscriptions = moving.len(), ?drained_in, ?started_in, "switch: done");
        Ok(SwitchReport {
            domain: domain.to_owned(),
            from,
            to,
            subscriptions: moving.len(),
            drained_in,
            started_in,
            unchanged: false,
        })
    }

    /// Puts subscriptions back on `backend` after a failed switch: drain (whatever runs),
    /// then start; a start that fails is logged and the subscription stays stopped until the
    /// next switch or sync moves it.
    async fn restore(&self, subs: &[Arc<SubCtl>], backend: Backend) {
        join_all(subs.iter().map(|s| async move {
            let _ = s.ask(Cmd::Drain).await;
            if let Err(e) = s.ask(|r| Cmd::Start(backend, r)).await {
                tracing::error!(topic = %s.topic, %backend, error = %e,
                    "could not restart the subscription on its old bus after a failed switch");
            }
        }))
        .await;
    }

    /// Reloads the routes from the store and moves this process's subscriptions whose bus
    /// changed (drain, then start on the new bus). Call it periodically (or use
    /// [`Migration::follow`]) in every process that did not run the switch itself.
    pub async fn sync(&self) -> Result<usize> {
        let _guard = self.shared.switching.lock().await;
        let stored = self.state().await?;
        Ok(self.apply_routes(stored.routes).await)
    }

    /// Applies `routes` locally: subscriptions whose bus changed move (drain, then start).
    async fn apply_routes(&self, routes: Routes) -> usize {
        let current = self.routes();
        if current == routes {
            return 0;
        }
        let moving: Vec<(Arc<SubCtl>, Backend)> = self
            .live_subs()
            .into_iter()
            .filter_map(|s| {
                let (a, b) = (current.backend_for(&s.topic), routes.backend_for(&s.topic));
                (a != b).then_some((s, b))
            })
            .collect();
        join_all(moving.iter().map(|(s, _)| s.ask(Cmd::Drain))).await;
        join_all(moving.iter().map(|(s, b)| async move {
            if let Err(e) = s.ask(|r| Cmd::Start(*b, r)).await {
                tracing::error!(topic = %s.topic, backend = %b, error = %e, "sync: could not start on the routed bus");
            }
        }))
        .await;
        self.shared.routes.send_replace(routes);
        moving.len()
    }

    /// Runs [`Migration::sync`] every `interval` until `cancel` fires.
    pub fn follow(
        &self,
        interval: Duration,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {
                        if let Err(e) = this.sync().await {
                            tracing::warn!(error = %e, "migration: could not read the route store");
                        }
                    }
                }
            }
        })
    }

    async fn start(
        &self,
        backend: Backend,
        topic: &Topic,
        group: &Group,
        handler: &Arc<dyn Handler>,
        options: &SubscribeOptions,
    ) -> Result<Subscription> {
        // A group's first start reads from the earliest position: `Latest` would skip what the
        // other bus had not acknowledged. Existing groups resume from their committed position.
        let options = options.clone().start_from(StartFrom::Earliest);
        match backend {
            Backend::Redis => {
                self.shared
                    .redis
                    .subscribe(topic, group, handler.clone(), options)
                    .await
            }
            Backend::Kafka => {
                self.shared
                    .kafka
                    .subscribe(topic, group, handler.clone(), options)
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
    /// Dual publish, best effort on one bus: the bus `topic`'s consumers read now is the
    /// primary (its result is returned), the other one is best effort (see [`DualPublisher`]).
    /// A Kafka outage therefore never fails the publish of a domain still read on Redis.
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        let (redis, kafka) = (&*self.shared.redis, &*self.shared.kafka);
        match self.backend_for(topic) {
            Backend::Redis => DualPublisher::new(redis, kafka).publish(topic, event).await,
            Backend::Kafka => DualPublisher::new(kafka, redis).publish(topic, event).await,
        }
    }

    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        let (redis, kafka) = (&*self.shared.redis, &*self.shared.kafka);
        match self.backend_for(topic) {
            Backend::Redis => {
                DualPublisher::new(redis, kafka)
                    .publish_batch(topic, events)
                    .await
            }
            Backend::Kafka => {
                DualPublisher::new(kafka, redis)
                    .publish_batch(topic, events)
                    .await
            }
        }
    }
}

#[async_trait]
impl<R, K> Subscriber for Migration<R, K>
where
    R: Publisher + Subscriber + 'static,
    K: Publisher + Subscriber + 'static,
{
    /// Subscribes on the bus the routes give for `topic`; the subscription moves when a
    /// switch or a sync changes that bus.
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let _guard = self.shared.switching.lock().await;
        let backend = self.backend_for(topic);
        let first = self
            .start(backend, topic, group, &handler, &options)
            .await?;
        let (tx, mut rx) = mpsc::channel::<Cmd>(4);
        let ctl = Arc::new(SubCtl {
            topic: topic.clone(),
            tx,
        });
        self.shared
            .subs
            .lock()
            .expect("subscription registry lock")
            .push(Arc::downgrade(&ctl));
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let this = self.clone();
        let (topic, group) = (topic.clone(), group.clone());
        let task = tokio::spawn(async move {
            let _ctl = ctl; // registered while this task runs
            let mut sub = Some(first);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        return match sub.take() { Some(s) => s.shutdown().await, None => Ok(()) };
                    }
                    cmd = rx.recv() => match cmd {
                        None => stop.cancelled().await,
                        Some(Cmd::Drain(reply)) => {
                            let r = match sub.take() { Some(s) => s.shutdown().await, None => Ok(()) };
                            let _ = reply.send(r);
                        }
                        Some(Cmd::Start(backend, reply)) => {
                            if let Some(old) = sub.take() {
                                let _ = old.shutdown().await;
                            }
                            let r = match this.start(backend, &topic, &group, &handler, &options).await {
                                Ok(s) => {
                                    tracing::info!(topic = %topic, group = %group, %backend, "subscription started");
                                    sub = Some(s);
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            };
                            let _ = reply.send(r);
                        }
                    }
                }
            }
        });
        Ok(Subscription::new(cancel, task, Vec::new()))
    }
}
