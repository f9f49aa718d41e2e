//! [`Migration`]: both buses, the live routes, subscriptions that follow them, and the
//! two-phase switch.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use windlass_core::{Group, Topic};

use super::store::{MemoryRouteStore, RouteState, RouteStore, SwitchTicket};
use super::{Backend, Routes};
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::subscription::Subscription;
use crate::traits::{Publisher, StartFrom, SubscribeOptions, Subscriber};

mod bus;

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

/// A domain drained for another process's switch: (its epoch, the subscriptions drained).
type Parked = (u64, Vec<Weak<SubCtl>>);

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
    /// This process's member id in the route store.
    member: String,
    /// How long a member stays registered after its last heartbeat (ms).
    member_ttl_ms: AtomicU64,
    /// How long a switch waits for the other members to drain (ms).
    drain_timeout_ms: AtomicU64,
    /// Domains whose switch (by another process) this process drained for: (epoch, the
    /// subscriptions it drained).
    parked: Mutex<HashMap<String, Parked>>,
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
                member: format!("m-{}", uuid::Uuid::new_v4().simple()),
                member_ttl_ms: AtomicU64::new(10_000),
                drain_timeout_ms: AtomicU64::new(30_000),
                parked: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// How long [`Migration::switch`] waits for the other processes sharing the route store to
    /// drain (default 30 s); past it the switch fails and the route stays.
    pub fn set_drain_timeout(&self, timeout: Duration) {
        self.shared
            .drain_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// This process's member id in the route store.
    pub fn member(&self) -> &str {
        &self.shared.member
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
            self.apply_routes(stored.routes, Vec::new()).await;
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
        if let Some(e) = drained.into_iter().find_map(Result::err) {
            self.restore(&moving, from).await;
            self.shared.store.abort_switch(ticket).await.ok();
            tracing::error!(domain, %from, %to, error = %e, "switch failed while draining; route unchanged");
            return Err(failed("draining", e));
        }

        // The other processes sharing the store drain too (they see the claim on their next
        // sync and acknowledge it); nothing starts on the new bus before every live member has.
        if let Err(e) = self.wait_for_members(ticket).await {
            self.restore(&moving, from).await;
            self.shared.store.abort_switch(ticket).await.ok();
            tracing::error!(domain, %from, %to, error = %e, "switch failed while other processes drained; route unchanged");
            return Err(failed("draining", e));
        }
        let drained_in = t0.elapsed();

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

    async fn wait_for_members(&self, ticket: &SwitchTicket) -> Result<()> {
        let timeout = Duration::from_millis(self.shared.drain_timeout_ms.load(Ordering::Relaxed));
        let deadline = Instant::now() + timeout;
        loop {
            let waiting = self
                .shared
                .store
                .not_drained(&ticket.domain, ticket.epoch, &self.shared.member)
                .await?;
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::backend(
                    "migration",
                    "drain",
                    format!("processes {waiting:?} did not drain within {timeout:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Follows the route store once: registers this process as a member (a heartbeat); for a
    /// switch another process is running, drains this process's subscriptions of the domain
    /// and acknowledges it (phase 1); once that switch is committed or aborted, starts them on
    /// the committed route; and moves any other subscription whose bus changed (drain, then
    /// start). Call it periodically ([`Migration::follow`]) in every process that consumes a
    /// migrating domain: a switch waits for every registered process to drain.
    /// Returns how many subscriptions moved.
    pub async fn sync(&self) -> Result<usize> {
        let _guard = self.shared.switching.lock().await;
        let store = &self.shared.store;
        let member = self.shared.member.as_str();
        let ttl = Duration::from_millis(self.shared.member_ttl_ms.load(Ordering::Relaxed));
        let state = self.state().await?;
        let current = self.routes();
        // Phase 1 of switches run elsewhere: drain, then acknowledge.
        for p in &state.switching {
            let known = self
                .shared
                .parked
                .lock()
                .expect("parked lock")
                .get(&p.domain)
                .is_some_and(|(e, _)| *e == p.epoch);
            if !known {
                let mut next = current.clone();
                next.set(p.domain.clone(), p.to);
                let subs: Vec<Arc<SubCtl>> = self
                    .live_subs()
                    .into_iter()
                    .filter(|s| current.backend_for(&s.topic) != next.backend_for(&s.topic))
                    .collect();
                join_all(subs.iter().map(|s| s.ask(Cmd::Drain))).await;
                tracing::info!(domain = %p.domain, to = %p.to, subscriptions = subs.len(), "sync: drained for a switch run by another process");
                self.shared.parked.lock().expect("parked lock").insert(
                    p.domain.clone(),
                    (p.epoch, subs.iter().map(Arc::downgrade).collect()),
                );
            }
            store
                .heartbeat(member, ttl, Some((p.domain.as_str(), p.epoch)))
                .await?;
        }
        if state.switching.is_empty() {
            store.heartbeat(member, ttl, None).await?;
        }
        // Parked domains whose switch is over (committed or aborted): restart on the route.
        let finished: Vec<Arc<SubCtl>> = {
            let mut parked = self.shared.parked.lock().expect("parked lock");
            let done: Vec<String> = parked
                .keys()
                .filter(|d| !state.switching.iter().any(|p| &p.domain == *d))
                .cloned()
                .collect();
            done.iter()
                .filter_map(|d| parked.remove(d))
                .flat_map(|(_, subs)| subs.into_iter().filter_map(|w| w.upgrade()))
                .collect()
        };
        Ok(self.apply_routes(state.routes, finished).await)
    }

    /// Applies `routes` locally: subscriptions whose bus changed, and `restart`, are drained
    /// (a no-op when they already are) and started on their routed bus.
    async fn apply_routes(&self, routes: Routes, restart: Vec<Arc<SubCtl>>) -> usize {
        let current = self.routes();
        let mut moving: Vec<Arc<SubCtl>> = self
            .live_subs()
            .into_iter()
            .filter(|s| current.backend_for(&s.topic) != routes.backend_for(&s.topic))
            .collect();
        for s in restart {
            if !moving.iter().any(|m| Arc::ptr_eq(m, &s)) {
                moving.push(s);
            }
        }
        if moving.is_empty() {
            self.shared.routes.send_replace(routes);
            return 0;
        }
        join_all(moving.iter().map(|s| s.ask(Cmd::Drain))).await;
        join_all(moving.iter().map(|s| {
            let b = routes.backend_for(&s.topic);
            async move {
                if let Err(e) = s.ask(|r| Cmd::Start(b, r)).await {
                    tracing::error!(topic = %s.topic, backend = %b, error = %e, "sync: could not start on the routed bus");
                }
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
        let ttl = interval * 3 + Duration::from_secs(1);
        self.shared
            .member_ttl_ms
            .store(ttl.as_millis() as u64, Ordering::Relaxed);
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
