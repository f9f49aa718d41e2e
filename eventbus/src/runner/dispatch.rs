//! The fetch loop and the dispatcher: which delivery starts when, per key and per partition.
//! What is handed back on revoke and shutdown is in [`handover`].

mod handover;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use windlass_core::RetryPolicy;

use super::control::{Command, Revoked};
use super::{Delivery, FETCH_BATCH_MAX, Shared, Transport, attempt};
use crate::error::Result;

/// A delivery read ahead, with its read-ahead slot.
struct Item<T> {
    delivery: Delivery<T>,
    /// Arrival number in this runner: within a partition, the backend's order.
    seq: u64,
    _room: OwnedSemaphorePermit,
}

/// An ordering key within a partition (`None`: unpartitioned), by a 64-bit hash of the key:
/// two keys with one hash are merely serialized together (never reordered), and no key is
/// copied per event.
type Key = (Option<u32>, u64);

/// FNV-1a, 64 bits.
fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Running {
    key: Option<Key>,
    partition: Option<u32>,
    cancel: CancellationToken,
    abort: AbortHandle,
}

struct Part<T> {
    epoch: u64,
    active: bool,
    /// Fired on revoke: the partition's retries stop waiting.
    stop: CancellationToken,
    revoke: Option<PendingRevoke<T>>,
    /// Arrival number of the latest delivery started in this epoch (tracked for transports
    /// that commit a prefix: what arrived before it may still start at a handover).
    high: Option<u64>,
}

struct PendingRevoke<T> {
    unstarted: Vec<T>,
    deadline: Instant,
    aborted: usize,
    expired: bool,
    reply: oneshot::Sender<Revoked<T>>,
}

pub(crate) struct Plumbing<T> {
    pub(crate) items: mpsc::UnboundedReceiver<(Delivery<T>, OwnedSemaphorePermit)>,
    pub(crate) control: Option<mpsc::UnboundedReceiver<Command<T>>>,
    pub(crate) concurrency: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) fetcher: JoinHandle<()>,
    pub(crate) acker: JoinHandle<()>,
    pub(crate) acks_done: CancellationToken,
}

pub(crate) async fn fetch_loop<T: Transport>(
    shared: Arc<Shared<T>>,
    room: Arc<Semaphore>,
    refill: usize,
    items: mpsc::UnboundedSender<(Delivery<T::Token>, OwnedSemaphorePermit)>,
) {
    let mut failures = 0u32;
    let reconnect = RetryPolicy::default()
        .with_delays(Duration::from_millis(50), Duration::from_secs(5))
        .with_max_attempts(u32::MAX);
    loop {
        let mut permit = tokio::select! {
            p = room.clone().acquire_many_owned(refill as u32) => match p { Ok(p) => p, Err(_) => return },
            _ = shared.cancel.cancelled() => return,
        };
        let extra = room
            .available_permits()
            .min(FETCH_BATCH_MAX.saturating_sub(permit.num_permits()));
        if extra > 0
            && let Ok(p) = room.clone().try_acquire_many_owned(extra as u32)
        {
            permit.merge(p);
        }
        let max = permit.num_permits();
        let fetched = tokio::select! {
            r = shared.transport.fetch(max) => r,
            _ = shared.cancel.cancelled() => return,
        };
        match fetched {
            Ok(batch) => {
                failures = 0;
                for delivery in batch {
                    let one = match permit.split(1) {
                        Some(p) => p,
                        // A transport returned more than asked: wait for room like anyone else.
                        None => match room.clone().acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                    };
                    if items.send((delivery, one)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = reconnect.delay(failures.min(16));
                tracing::warn!(topic = %shared.topic, group = %shared.group, error = %e, retry_in = ?delay, "fetch failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.cancel.cancelled() => return,
                }
            }
        }
    }
}

struct Dispatcher<T: Transport> {
    shared: Arc<Shared<T>>,
    concurrency: usize,
    /// Deliveries whose key is free, waiting for a concurrency slot, in arrival order.
    ready: VecDeque<(Item<T::Token>, Option<Key>)>,
    /// Keys with a delivery ready or running, and the deliveries queued behind it.
    keys: HashMap<Key, VecDeque<Item<T::Token>>>,
    running: HashMap<tokio::task::Id, Running>,
    tasks: JoinSet<()>,
    parts: HashMap<u32, Part<T::Token>>,
    /// Hand-backs in progress (awaited before the transport closes).
    releases: JoinSet<()>,
    stopping: Option<Instant>,
    shutdown_timeout: Duration,
    aborted_all: bool,
    /// Revokes waiting for their partition's handlers.
    revoking: usize,
    /// The transport commits a prefix per partition ([`Transport::commits_prefix`]).
    prefix: bool,
    next_seq: u64,
}

pub(crate) async fn run<T: Transport>(
    shared: Arc<Shared<T>>,
    plumbing: Plumbing<T::Token>,
) -> Result<()> {
    let Plumbing {
        mut items,
        mut control,
        concurrency,
        shutdown_timeout,
        fetcher,
        acker,
        acks_done,
    } = plumbing;
    let mut d = Dispatcher {
        shared: shared.clone(),
        concurrency,
        ready: VecDeque::new(),
        keys: HashMap::new(),
        running: HashMap::new(),
        tasks: JoinSet::new(),
        parts: HashMap::new(),
        releases: JoinSet::new(),
        stopping: None,
        shutdown_timeout,
        aborted_all: false,
        revoking: 0,
        prefix: shared.transport.commits_prefix(),
        next_seq: 0,
    };
    let cancel = shared.cancel.clone();
    loop {
        d.start_ready();
        d.finish_revokes();
        // Once stopping, `start_ready` started or handed back every ready delivery: nothing is
        // left when nothing runs.
        if d.stopping.is_some() && d.running.is_empty() {
            break;
        }
        let next_deadline = d.next_deadline();
        tokio::select! {
            biased;
            Some(done) = d.tasks.join_next_with_id(), if !d.tasks.is_empty() => {
                d.finished(task_id(&done));
                // Every other handler that ended meanwhile, before the next round's bookkeeping.
                while let Some(done) = d.tasks.try_join_next_with_id() {
                    d.finished(task_id(&done));
                }
            }
            Some(cmd) = recv_control(&mut control) => {
                // What was fetched before the command is the runner's: a revoke hands it back.
                if d.stopping.is_none() {
                    while let Ok((delivery, room)) = items.try_recv() {
                        d.accept(delivery, room);
                    }
                }
                d.command(cmd);
            }
            _ = cancel.cancelled(), if d.stopping.is_none() => {
                items.close();
                d.begin_stop();
            }
            item = items.recv(), if d.stopping.is_none() => match item {
                Some((delivery, room)) => {
                    d.accept(delivery, room);
                    // The rest of the fetched batch in one round.
                    while let Ok((delivery, room)) = items.try_recv() {
                        d.accept(delivery, room);
                    }
                }
                None => d.begin_stop(),
            },
            _ = sleep_until(next_deadline), if next_deadline.is_some() => d.deadlines(),
        }
    }
    // Every handler task has ended. Give back what was read but never started.
    let mut late = Vec::new();
    while let Ok((delivery, _)) = items.try_recv() {
        late.push(delivery.token);
    }
    fetcher.abort();
    let _ = fetcher.await;
    while let Ok((delivery, _)) = items.try_recv() {
        late.push(delivery.token);
    }
    d.hand_back(late);
    // Revokes that arrived during shutdown: nothing of theirs runs any more.
    if let Some(control) = control.as_mut() {
        control.close();
        while let Ok(cmd) = control.try_recv() {
            d.command(cmd);
        }
    }
    for (_, part) in d.parts.drain() {
        if let Some(revoke) = part.revoke {
            let _ = revoke.reply.send(Revoked {
                unstarted: revoke.unstarted,
                aborted: revoke.aborted,
            });
        }
    }
    while d.releases.join_next().await.is_some() {}
    // No acknowledgement is still coming: flush and stop, then leave the group.
    acks_done.cancel();
    let _ = acker.await;
    shared.transport.close().await;
    Ok(())
}

fn task_id(
    done: &std::result::Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) -> tokio::task::Id {
    match done {
        Ok((id, ())) => *id,
        Err(e) => e.id(),
    }
}

async fn recv_control<T>(
    control: &mut Option<mpsc::UnboundedReceiver<Command<T>>>,
) -> Option<Command<T>> {
    match control {
        Some(rx) => match rx.recv().await {
            Some(cmd) => Some(cmd),
            None => {
                *control = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl<T: Transport> Dispatcher<T> {
    fn key_of(delivery: &Delivery<T::Token>) -> Option<Key> {
        let key = delivery.payload.as_ref().ok()?.ordering_key()?;
        Some((delivery.partition, key_hash(key)))
    }

    /// True when a delivery may still start: its partition is held under the epoch it was read
    /// with and nothing stops, or it fills a gap of a handover in progress (see
    /// [`handover`]).
    fn may_start(&self, item: &Item<T::Token>) -> bool {
        let stopping = self.stopping.is_some() || self.shared.cancel.is_cancelled();
        let Some(a) = item.delivery.assignment else {
            return !stopping;
        };
        let Some(part) = self.parts.get(&a.partition).filter(|p| p.epoch == a.epoch) else {
            return false;
        };
        if part.active && !stopping {
            return true;
        }
        self.prefix
            && !self.aborted_all
            && part.revoke.as_ref().is_none_or(|r| !r.expired)
            && part.high.is_some_and(|h| item.seq < h)
    }

    fn hand_back(&mut self, tokens: Vec<T::Token>) {
        if tokens.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        self.releases
            .spawn(async move { shared.transport.release(tokens).await });
    }

    fn accept(&mut self, delivery: Delivery<T::Token>, room: OwnedSemaphorePermit) {
        let item = Item {
            delivery,
            seq: self.next_seq,
            _room: room,
        };
        self.next_seq += 1;
        if !self.may_start(&item) {
            self.hand_back(vec![item.delivery.token]);
            return;
        }
        match Self::key_of(&item.delivery) {
            Some(key) => match self.keys.get_mut(&key) {
                Some(queue) => queue.push_back(item),
                None => {
                    self.keys.insert(key, VecDeque::new());
                    self.ready.push_back((item, Some(key)));
                }
            },
            None => self.ready.push_back((item, None)),
        }
    }

    fn start_ready(&mut self) {
        // Once shutdown was asked for (even before the dispatcher got to handing everything
        // back) or the partition revoked, only gap fillers start; the rest goes back.
        while self.running.len() < self.concurrency {
            let Some((item, key)) = self.ready.pop_front() else {
                return;
            };
            if !self.may_start(&item) {
                self.release_key(key.as_ref());
                self.give_back(item);
                continue;
            }
            self.start(item, key);
        }
    }

    fn start(&mut self, item: Item<T::Token>, key: Option<Key>) {
        let partition = item.delivery.assignment.map(|a| a.partition);
        if self.prefix
            && let Some(a) = item.delivery.assignment
            && let Some(part) = self.parts.get_mut(&a.partition)
            && part.epoch == a.epoch
        {
            part.high = Some(part.high.map_or(item.seq, |h| h.max(item.seq)));
        }
        let stop = partition
            .and_then(|p| self.parts.get(&p))
            .map(|p| p.stop.clone())
            .unwrap_or_else(|| self.shared.cancel.clone());
        let cancel = CancellationToken::new();
        let shared = self.shared.clone();
        let task_cancel = cancel.clone();
        let abort = self.tasks.spawn(async move {
            let Item {
                delivery, _room, ..
            } = item;
            attempt::run(&shared, delivery, stop, task_cancel).await;
        });
        self.running.insert(
            abort.id(),
            Running {
                key,
                partition,
                cancel,
                abort,
            },
        );
    }

    /// A key's delivery ended (or was dropped): its next delivery becomes ready.
    fn release_key(&mut self, key: Option<&Key>) {
        let Some(key) = key else { return };
        let next = self.keys.get_mut(key).and_then(VecDeque::pop_front);
        match next {
            Some(item) => self.ready.push_back((item, Some(*key))),
            None => {
                self.keys.remove(key);
            }
        }
    }

    fn finished(&mut self, id: tokio::task::Id) {
        // Whether the task returned, panicked or was aborted, its key is free again.
        if let Some(done) = self.running.remove(&id) {
            self.release_key(done.key.as_ref());
        }
    }

    fn command(&mut self, cmd: Command<T::Token>) {
        match cmd {
            Command::Assign(a, reply) => {
                if self.stopping.is_none() {
                    let stop = self.shared.cancel.child_token();
                    self.parts.insert(
                        a.partition,
                        Part {
                            epoch: a.epoch,
                            active: true,
                            stop,
                            revoke: None,
                            high: None,
                        },
                    );
                }
                let _ = reply.send(());
            }
            Command::Revoke {
                partition,
                wait,
                reply,
            } => self.revoke(partition, wait, reply),
        }
    }
}
