//! Partition ownership inside a consumer group, without a coordinator: each member of a group
//! registers with a heartbeat, every partition has a lease with a fencing epoch, and every
//! member runs the same deterministic [plan](plan::plan) over the same view (live members,
//! live leases) to decide which partitions it should hold.
//!
//! The [`Driver`] is the same for every backend; a backend provides a [`Coordinator`] (the
//! lease table, the member registry and a way to nudge the other members) and a transport
//! that reads only the partitions in its [`Holdings`]. What the driver guarantees:
//! - **At most one live holder per partition.** A partition is read only under a lease
//!   acquired with a new epoch; acknowledgements and dead-letter writes are fenced by that
//!   epoch in the backend (a Lua script on Redis, the store's lock in memory).
//! - **Handover waits for the old holder.** A member gives a partition up gracefully: it stops
//!   reading it, lets the runner finish the partition's handlers in flight (bounded by the
//!   handler timeout, then cancelled), flushes their acknowledgements, hands back what never
//!   started, and only then frees the lease. A crashed member's lease expires after the lease
//!   TTL; a member that cannot renew (server unreachable) stops its handlers of the partition
//!   before its lease can expire (by its own clock, counted from the last renewal it sent).
//! - **Only what must move moves.** Like Kafka's cooperative rebalancing, a join or a leave
//!   moves only the partitions that change owner; the others keep flowing throughout.
//!
//! Prior art: the Kinesis Client Library keeps a lease table with a lease counter per shard and
//! lets workers take expired leases and steal from the most loaded worker; Azure Event Hubs'
//! processor claims ownership records with ETags. Both let a new owner start while the old one
//! may still be processing (a stolen lease takes effect at once). Here a live owner is never
//! preempted: it releases after its in-flight work ended, which is what per-key order across the
//! group needs.

pub(crate) mod plan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::runner::{Assignment, PartitionControl};

/// A lease as the table holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseView {
    /// The member holding it.
    pub(crate) owner: String,
    /// Time left before it expires, by the store's clock.
    pub(crate) remaining: Duration,
}

/// What a backend provides for the partition leases of one (topic, group).
#[async_trait]
pub(crate) trait Coordinator: Send + Sync + 'static {
    /// What the runner hands back on revoke.
    type Token: Send + Sync + 'static;

    /// Registers or refreshes this member; returns the live members (this one included).
    async fn heartbeat(&self) -> Result<Vec<String>>;

    /// Per partition, its live lease (`None`: free or expired).
    async fn leases(&self) -> Result<Vec<Option<LeaseView>>>;

    /// Takes a free or expired lease with a new epoch; `None` when someone holds it.
    async fn acquire(&self, partition: u32) -> Result<Option<u64>>;

    /// Extends held leases; per entry, whether it is still held.
    async fn renew(&self, held: &[Assignment]) -> Result<Vec<bool>>;

    /// Hands back `unstarted` deliveries (never handled: their delivery count is restored)
    /// and frees the lease, both fenced by the epoch.
    async fn release(&self, held: Assignment, unstarted: Vec<Self::Token>) -> Result<()>;

    /// Deregisters this member.
    async fn leave(&self) -> Result<()>;

    /// Tells the other members that the membership or the lease table changed.
    async fn nudge(&self);

    /// Runs until aborted, bumping `changed` whenever a member nudges.
    async fn listen(self: Arc<Self>, changed: watch::Sender<u64>);

    /// Publishes the visibility figures (lag, pending) of the held partitions.
    async fn report(&self, _held: &[u32]) {}
}

/// The partitions a transport may read now, with its own state for each, shared by the
/// [`Driver`] (which adds and removes them) and the transport (which reads them).
pub(crate) struct Holdings<S> {
    parts: Mutex<BTreeMap<u32, (u64, S)>>,
    /// Notified when a partition is added or removed.
    pub(crate) changed: Notify,
    lost: mpsc::UnboundedSender<Assignment>,
}

impl<S> fmt::Debug for Holdings<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holdings").finish_non_exhaustive()
    }
}

impl<S: Default> Holdings<S> {
    /// Empty holdings, and the receiver of the partitions a transport found lost.
    pub(crate) fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Assignment>) {
        let (lost, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                parts: Mutex::new(BTreeMap::new()),
                changed: Notify::new(),
                lost,
            }),
            rx,
        )
    }

    pub(crate) fn add(&self, a: Assignment) {
        self.lock().insert(a.partition, (a.epoch, S::default()));
        self.changed.notify_waiters();
    }

    pub(crate) fn remove(&self, partition: u32) {
        self.lock().remove(&partition);
        self.changed.notify_waiters();
    }

    /// The partitions held now, with their state.
    pub(crate) fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, (u64, S)>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports that a fenced write or read of `a` was refused: the driver gives it up.
    pub(crate) fn lost(&self, a: Assignment) {
        let _ = self.lost.send(a);
    }
}

/// Timing of a driver.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) lease_ttl: Duration,
    pub(crate) renew_every: Duration,
    /// Longest wait for a partition's handlers in flight on a graceful handover.
    pub(crate) handover_wait: Duration,
}

impl Timing {
    /// Renewals five times per TTL; a holder gives a partition up locally a tenth of the TTL
    /// before its lease can expire if it could not renew.
    pub(crate) fn new(lease_ttl: Duration, handover_wait: Duration) -> Self {
        Self {
            lease_ttl,
            renew_every: (lease_ttl / 5).max(Duration::from_millis(10)),
            handover_wait,
        }
    }

    fn margin(&self) -> Duration {
        self.lease_ttl / 10
    }
}

struct Held {
    epoch: u64,
    /// When the last renewal (or the acquisition) that succeeded was sent.
    renewed: Instant,
}

/// Runs one member's side of a group: heartbeats, renewals, rebalancing, handovers.
pub(crate) struct Driver<C: Coordinator, S> {
    coordinator: Arc<C>,
    holdings: Arc<Holdings<S>>,
    control: PartitionControl<C::Token>,
    member: String,
    timing: Timing,
    metrics: OwnedMetrics,
}

/// The `windlass_bus_partition_owned` gauges of one subscription.
#[derive(Debug, Clone)]
pub(crate) struct OwnedMetrics {
    topic: String,
    group: String,
}

impl OwnedMetrics {
    fn new(topic: &str, group: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
        }
    }

    fn set(&self, partition: u32, owned: bool) {
        metrics::gauge!("windlass_bus_partition_owned", "topic" => self.topic.clone(), "group" => self.group.clone(), "partition" => partition.to_string())
            .set(if owned { 1.0 } else { 0.0 });
        if !owned {
            crate::metrics::clear_partition(&self.topic, &self.group, partition);
        }
    }
}

/// A running driver: what a transport needs to leave the group at its `close`, and the task
/// [`Subscription::abort`](crate::Subscription::abort) kills.
#[derive(Debug)]
pub(crate) struct Running {
    close: CancellationToken,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    abort: tokio::task::AbortHandle,
}

impl Running {
    /// The driver task's abort handle.
    pub(crate) fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.abort.clone()
    }

    /// Gives every partition back, leaves the group, and waits until that is done.
    pub(crate) async fn leave(&self) {
        self.close.cancel();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct State {
    held: HashMap<u32, Held>,
    leaving: HashSet<u32>,
    handovers: JoinSet<u32>,
    next_rebalance: Instant,
}

impl<C: Coordinator, S: Default + Send + 'static> Driver<C, S> {
    /// A driver for `member` of `group` on `topic`.
    pub(crate) fn new(
        coordinator: Arc<C>,
        holdings: Arc<Holdings<S>>,
        control: PartitionControl<C::Token>,
        member: String,
        timing: Timing,
        (topic, group): (&str, &str),
    ) -> Self {
        Self {
            coordinator,
            holdings,
            control,
            member,
            timing,
            metrics: OwnedMetrics::new(topic, group),
        }
    }

    /// Spawns the driver; the receiver fires after its first rebalance.
    pub(crate) fn start(
        self,
        lost: mpsc::UnboundedReceiver<Assignment>,
    ) -> (Running, tokio::sync::oneshot::Receiver<()>) {
        let close = CancellationToken::new();
        let (joined_tx, joined) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(self.run(lost, close.clone(), joined_tx));
        let running = Running {
            close,
            abort: task.abort_handle(),
            task: tokio::sync::Mutex::new(Some(task)),
        };
        (running, joined)
    }

    /// Runs until `close` fires, then gives every partition back and leaves the group.
    /// `joined` fires after the first rebalance (this member took its share of the free
    /// partitions, or found none free).
    async fn run(
        self,
        mut lost: mpsc::UnboundedReceiver<Assignment>,
        close: CancellationToken,
        joined: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut joined = Some(joined);
        let (changed, mut nudges) = watch::channel(0u64);
        // Aborted with this task too (a crashed subscription leaves nothing running).
        let _listener = AbortOnDrop(tokio::spawn(self.coordinator.clone().listen(changed)));
        let mut st = State {
            held: HashMap::new(),
            leaving: HashSet::new(),
            handovers: JoinSet::new(),
            next_rebalance: Instant::now(),
        };
        let mut next_renew = Instant::now() + self.timing.renew_every;
        // Announce the join so the others make room at once.
        if let Err(e) = self.coordinator.heartbeat().await {
            tracing::warn!(member = %self.member, error = %e, "joining the group failed; retrying");
        }
        self.coordinator.nudge().await;
        loop {
            let watchdog = st
                .held
                .values()
                .map(|h| h.renewed + self.timing.lease_ttl - self.timing.margin())
                .min();
            tokio::select! {
                biased;
                _ = close.cancelled() => break,
                Some(a) = lost.recv() => self.give_up(&mut st, a, "a fenced write was refused"),
                Some(done) = st.handovers.join_next(), if !st.handovers.is_empty() => {
                    if let Ok(p) = done {
                        st.leaving.remove(&p);
                        if st.held.remove(&p).is_some() {
                            self.metrics.set(p, false);
                        }
                    }
                    self.coordinator.nudge().await;
                    st.next_rebalance = Instant::now();
                }
                _ = sleep_until(watchdog), if watchdog.is_some() => self.watchdog(&mut st),
                _ = tokio::time::sleep_until(next_renew) => {
                    self.renew(&mut st).await;
                    next_renew = Instant::now() + self.timing.renew_every;
                }
                Ok(()) = nudges.changed() => {
                    nudges.borrow_and_update();
                    st.next_rebalance = Instant::now();
                }
                _ = tokio::time::sleep_until(st.next_rebalance) => {
                    if let Err(e) = self.rebalance(&mut st).await {
                        tracing::warn!(member = %self.member, error = %e, "rebalance failed; retrying");
                        st.next_rebalance = Instant::now() + self.timing.renew_every;
                    }
                    if let Some(joined) = joined.take() {
                        let _ = joined.send(());
                    }
                }
            }
        }
        // The runner has stopped (its shutdown ends with `close`): give everything back.
        while st.handovers.join_next().await.is_some() {}
        for (p, held) in st.held.drain() {
            self.holdings.remove(p);
            self.metrics.set(p, false);
            let a = Assignment::new(p, held.epoch);
            if let Err(e) = self.coordinator.release(a, Vec::new()).await {
                tracing::warn!(partition = p, error = %e, "releasing a partition at shutdown failed; it moves once its lease expires");
            }
        }
        if let Err(e) = self.coordinator.leave().await {
            tracing::warn!(member = %self.member, error = %e, "leaving the group failed; the member entry expires by itself");
        }
        self.coordinator.nudge().await;
    }

    fn give_up(&self, st: &mut State, a: Assignment, why: &str) {
        if st.held.get(&a.partition).is_none_or(|h| h.epoch != a.epoch) {
            return;
        }
        tracing::warn!(member = %self.member, partition = a.partition, epoch = a.epoch, why, "partition lost; its handlers are cancelled");
        st.held.remove(&a.partition);
        st.leaving.remove(&a.partition);
        self.metrics.set(a.partition, false);
        self.holdings.remove(a.partition);
        let control = self.control.clone();
        tokio::spawn(async move {
            // Another member may hold it already: nothing of it may run on here any more.
            let _ = control.revoke(a.partition, Duration::ZERO).await;
        });
        st.next_rebalance = Instant::now();
    }

    fn watchdog(&self, st: &mut State) {
        let now = Instant::now();
        let expired: Vec<Assignment> = st
            .held
            .iter()
            .filter(|(_, h)| h.renewed + self.timing.lease_ttl - self.timing.margin() <= now)
            .map(|(p, h)| Assignment::new(*p, h.epoch))
            .collect();
        for a in expired {
            self.give_up(st, a, "its lease could not be renewed in time");
        }
    }

    async fn renew(&self, st: &mut State) {
        if let Err(e) = self.coordinator.heartbeat().await {
            tracing::warn!(member = %self.member, error = %e, "heartbeat failed");
        }
        let held: Vec<Assignment> = st
            .held
            .iter()
            .map(|(p, h)| Assignment::new(*p, h.epoch))
            .collect();
        if held.is_empty() {
            return;
        }
        let sent = Instant::now();
        match self.coordinator.renew(&held).await {
            Ok(still) => {
                for (a, ok) in held.iter().zip(still) {
                    if ok {
                        if let Some(h) = st.held.get_mut(&a.partition) {
                            h.renewed = sent;
                        }
                    } else {
                        self.give_up(st, *a, "its lease was taken over");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(member = %self.member, error = %e, "renewing leases failed; retrying")
            }
        }
        let owned: Vec<u32> = st.held.keys().copied().collect();
        self.coordinator.report(&owned).await;
    }

    async fn rebalance(&self, st: &mut State) -> Result<()> {
        let members = self.coordinator.heartbeat().await?;
        let leases = self.coordinator.leases().await?;
        let now = Instant::now();
        let owners: Vec<Option<String>> = leases
            .iter()
            .map(|l| l.as_ref().map(|l| l.owner.clone()))
            .collect();
        // A partition held here whose lease the table gives to someone else (or to nobody) is
        // lost: the lease expired while this member could not renew.
        let lost: Vec<Assignment> = st
            .held
            .iter()
            .filter(|(p, _)| !st.leaving.contains(*p))
            .filter(|(p, _)| {
                owners.get(**p as usize).and_then(Option::as_deref) != Some(&self.member)
            })
            .map(|(p, h)| Assignment::new(*p, h.epoch))
            .collect();
        for a in lost {
            self.give_up(st, a, "the lease table no longer names this member");
        }
        let target = plan::plan(&members, &owners);
        // Give up what belongs to others now, gracefully.
        for (p, held) in &st.held {
            if target[*p as usize].as_deref() != Some(&self.member) && st.leaving.insert(*p) {
                let a = Assignment::new(*p, held.epoch);
                let (holdings, control, coordinator) = (
                    self.holdings.clone(),
                    self.control.clone(),
                    self.coordinator.clone(),
                );
                let wait = self.timing.handover_wait;
                st.handovers.spawn(async move {
                    holdings.remove(a.partition);
                    let unstarted = match control.revoke(a.partition, wait).await {
                        Ok(revoked) => revoked.unstarted,
                        Err(_) => Vec::new(),
                    };
                    if let Err(e) = coordinator.release(a, unstarted).await {
                        tracing::warn!(partition = a.partition, error = %e, "releasing a partition failed; it moves once its lease expires");
                    }
                    a.partition
                });
            }
        }
        // Take what is free and ours.
        for (p, want) in target.iter().enumerate() {
            let p = p as u32;
            if want.as_deref() != Some(&self.member)
                || owners[p as usize].is_some()
                || st.held.contains_key(&p)
            {
                continue;
            }
            let sent = Instant::now();
            if let Some(epoch) = self.coordinator.acquire(p).await? {
                let a = Assignment::new(p, epoch);
                if self.control.assign(a).await.is_err() {
                    // The runner stopped: give it straight back.
                    let _ = self.coordinator.release(a, Vec::new()).await;
                    return Ok(());
                }
                st.held.insert(
                    p,
                    Held {
                        epoch,
                        renewed: sent,
                    },
                );
                self.holdings.add(a);
                self.metrics.set(p, true);
                tracing::debug!(member = %self.member, partition = p, epoch, "partition acquired");
            }
        }
        // Look again when a lease held by someone else expires (its owner may be dead), and
        // anyway once per renewal period.
        let soonest = leases
            .iter()
            .flatten()
            .filter(|l| l.owner != self.member)
            .map(|l| now + l.remaining + Duration::from_millis(2))
            .min();
        let periodic = now + self.timing.renew_every;
        st.next_rebalance = soonest.map_or(periodic, |s| s.min(periodic));
        Ok(())
    }
}

/// A consumer name unique to this process and subscription: `{host}-{pid}-{random}`.
pub(crate) fn default_consumer() -> String {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", host_name(), std::process::id(), &nonce[..8])
}

/// The lease identity of a member: its consumer name and a nonce, so two live subscriptions
/// with the same consumer name are still two members.
pub(crate) fn member_id(consumer: &str) -> String {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{consumer}~{}", &nonce[..8])
}

/// A name made of printable ASCII only (Redis client names, member ids).
pub(crate) fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

/// This host's name: `HOSTNAME`, else `/etc/hostname`, else `windlass`.
pub(crate) fn host_name() -> String {
    let from_env = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty());
    let name = from_env
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "windlass".to_owned());
    sanitize_name(&name)
}

/// Checks the options a leased subscription depends on.
pub(crate) fn check_options(
    options: &crate::traits::SubscribeOptions,
    lease_ttl: Duration,
) -> Result<()> {
    if options.handler_timeout.is_zero() {
        return Err(crate::Error::Config(
            "handler_timeout must be above zero".to_owned(),
        ));
    }
    if options.handler_timeout >= lease_ttl {
        return Err(crate::Error::Config(format!(
            "handler_timeout ({:?}) must be below the partition lease TTL ({lease_ttl:?}), so a \
             handler never outlives the lease of its partition; raise the lease TTL or lower the \
             timeout",
            options.handler_timeout
        )));
    }
    if let Some(name) = &options.consumer
        && (name.is_empty() || name.chars().any(char::is_control) || name.len() > 200)
    {
        return Err(crate::Error::Config(format!(
            "consumer name {name:?} must be 1-200 bytes of text without control characters"
        )));
    }
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
