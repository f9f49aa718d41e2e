//! Where the routing table lives: one process ([`MemoryRouteStore`]) or shared by several
//! (`windlass_outbox::postgres::PgRouteStore`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Backend, Routes};
use crate::error::{Error, Result};

/// A switch claimed in a [`RouteStore`] and not finished yet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingSwitch {
    /// The domain.
    pub domain: String,
    /// Its current (committed) backend.
    pub from: Backend,
    /// Where it is being switched to.
    pub to: Backend,
    /// The switch's fencing epoch.
    pub epoch: u64,
}

impl PendingSwitch {
    /// A pending switch (for [`RouteStore`] implementations).
    pub fn new(domain: String, from: Backend, to: Backend, epoch: u64) -> Self {
        Self {
            domain,
            from,
            to,
            epoch,
        }
    }
}

/// The stored routes and the switches in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteState {
    /// The committed routes (a domain being switched still shows its old backend).
    pub routes: Routes,
    /// Switches claimed and not yet finished or aborted (their lease not yet over).
    pub switching: Vec<PendingSwitch>,
}

impl RouteState {
    /// A state (for [`RouteStore`] implementations).
    pub fn new(routes: Routes, switching: Vec<PendingSwitch>) -> Self {
        Self { routes, switching }
    }
}

/// Proof of a claimed switch: finishing or aborting it needs the same epoch, so a switcher
/// whose lease ended (and whose domain someone else claimed since) changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SwitchTicket {
    /// The domain.
    pub domain: String,
    /// Its backend before the switch.
    pub from: Backend,
    /// Its backend after the switch.
    pub to: Backend,
    /// The fencing epoch of this claim.
    pub epoch: u64,
}

impl SwitchTicket {
    /// A ticket (for [`RouteStore`] implementations).
    pub fn new(domain: String, from: Backend, to: Backend, epoch: u64) -> Self {
        Self {
            domain,
            from,
            to,
            epoch,
        }
    }
}

/// The shared routing table of a migration.
///
/// Implementations keep, per domain, the committed backend and at most one switch in
/// progress, claimed under a lease and an epoch: [`RouteStore::begin_switch`] refuses a second
/// claim while the first one's lease runs, and finishing or aborting checks the epoch.
#[async_trait]
pub trait RouteStore: Send + Sync + fmt::Debug + 'static {
    /// Lists the domains of `routes` that the store does not hold yet, with their backend
    /// (domains already stored keep theirs), and returns the stored state with `routes`'
    /// default backend.
    async fn init(&self, routes: &Routes) -> Result<RouteState>;

    /// The stored state (`default` is the default backend of the returned routes).
    async fn load(&self, default: Backend) -> Result<RouteState>;

    /// Claims a switch of `domain` to `to` for `lease`. [`Error::UnknownDomain`] when the
    /// domain is not stored; [`Error::SwitchInProgress`] when another claim of any domain is
    /// live (one switch at a time). Changes nothing on error.
    async fn begin_switch(
        &self,
        domain: &str,
        to: Backend,
        lease: Duration,
    ) -> Result<SwitchTicket>;

    /// Commits a claimed switch: the domain's backend becomes `ticket.to`. Fails (changing
    /// nothing) when the claim is no longer the live one (its lease ended and another claim
    /// was made, or it was aborted).
    async fn finish_switch(&self, ticket: &SwitchTicket) -> Result<()>;

    /// Drops a claimed switch; the domain keeps its backend. A no-op when the claim is no
    /// longer the live one.
    async fn abort_switch(&self, ticket: &SwitchTicket) -> Result<()>;

    /// Records that `member` (one process's [`Migration`](super::Migration)) is alive until
    /// `ttl` from now and, with `drained`, that it has drained its subscriptions of the
    /// switch (domain, epoch). Members are what a switch waits for before it starts the new bus.
    async fn heartbeat(
        &self,
        member: &str,
        ttl: Duration,
        drained: Option<(&str, u64)>,
    ) -> Result<()>;

    /// The members alive now, other than `except`, that have not acknowledged draining the
    /// switch (`domain`, `epoch`).
    async fn not_drained(&self, domain: &str, epoch: u64, except: &str) -> Result<Vec<String>>;
}

#[derive(Debug, Default)]
struct Stored {
    domains: BTreeMap<String, Backend>,
    epoch: u64,
    /// (domain, to, epoch, lease end)
    claim: Option<(String, Backend, u64, Instant)>,
    /// member -> (alive until, last drained (domain, epoch))
    members: BTreeMap<String, (Instant, Option<(String, u64)>)>,
}

/// A [`RouteStore`] in this process's memory (the default of [`super::Migration::new`]).
#[derive(Debug, Default)]
pub struct MemoryRouteStore {
    inner: Mutex<Stored>,
}

impl MemoryRouteStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(s: &Stored, default: Backend) -> RouteState {
        let mut routes = Routes::new(default);
        for (d, b) in &s.domains {
            routes.set(d.clone(), *b);
        }
        let switching = s
            .claim
            .iter()
            .filter(|c| c.3 > Instant::now())
            .map(|(d, to, epoch, _)| PendingSwitch {
                domain: d.clone(),
                from: s.domains.get(d).copied().unwrap_or(default),
                to: *to,
                epoch: *epoch,
            })
            .collect();
        RouteState { routes, switching }
    }
}

#[async_trait]
impl RouteStore for MemoryRouteStore {
    async fn init(&self, routes: &Routes) -> Result<RouteState> {
        routes.validate()?;
        let mut s = self.inner.lock().expect("route store lock");
        for (d, b) in routes.domains() {
            s.domains.entry(d.to_owned()).or_insert(b);
        }
        Ok(Self::state(&s, routes.default_backend()))
    }

    async fn load(&self, default: Backend) -> Result<RouteState> {
        let s = self.inner.lock().expect("route store lock");
        Ok(Self::state(&s, default))
    }

    async fn begin_switch(
        &self,
        domain: &str,
        to: Backend,
        lease: Duration,
    ) -> Result<SwitchTicket> {
        let mut s = self.inner.lock().expect("route store lock");
        let Some(from) = s.domains.get(domain).copied() else {
            return Err(Error::UnknownDomain(domain.to_owned()));
        };
        if let Some((d, t, _, until)) = &s.claim
            && *until > Instant::now()
        {
            return Err(Error::SwitchInProgress {
                domain: d.clone(),
                to: t.to_string(),
            });
        }
        s.epoch += 1;
        let epoch = s.epoch;
        s.claim = Some((domain.to_owned(), to, epoch, Instant::now() + lease));
        Ok(SwitchTicket {
            domain: domain.to_owned(),
            from,
            to,
            epoch,
        })
    }

    async fn finish_switch(&self, ticket: &SwitchTicket) -> Result<()> {
        let mut s = self.inner.lock().expect("route store lock");
        let live = s.claim.as_ref().is_some_and(|(d, _, e, until)| {
            *d == ticket.domain && *e == ticket.epoch && *until > Instant::now()
        });
        if !live {
            return Err(Error::Timeout("the switch's claim (its lease ended)"));
        }
        s.claim = None;
        s.domains.insert(ticket.domain.clone(), ticket.to);
        Ok(())
    }

    async fn abort_switch(&self, ticket: &SwitchTicket) -> Result<()> {
        let mut s = self.inner.lock().expect("route store lock");
        if s.claim
            .as_ref()
            .is_some_and(|(d, _, e, _)| *d == ticket.domain && *e == ticket.epoch)
        {
            s.claim = None;
        }
        Ok(())
    }
    async fn heartbeat(
        &self,
        member: &str,
        ttl: Duration,
        drained: Option<(&str, u64)>,
    ) -> Result<()> {
        let mut s = self.inner.lock().expect("route store lock");
        let entry = s
            .members
            .entry(member.to_owned())
            .or_insert((Instant::now(), None));
        entry.0 = Instant::now() + ttl;
        if let Some((d, e)) = drained {
            entry.1 = Some((d.to_owned(), e));
        }
        Ok(())
    }

    async fn not_drained(&self, domain: &str, epoch: u64, except: &str) -> Result<Vec<String>> {
        let s = self.inner.lock().expect("route store lock");
        let now = Instant::now();
        Ok(s.members
            .iter()
            .filter(|(m, (until, drained))| {
                m.as_str() != except
                    && *until > now
                    && drained.as_ref() != Some(&(domain.to_owned(), epoch))
            })
            .map(|(m, _)| m.clone())
            .collect())
    }
}
