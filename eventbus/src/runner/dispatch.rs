//! The fetch loop and the dispatcher: which delivery starts when, per key and per partition,
//! and what is handed back on revoke and shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use windlass_core::RetryPolicy;

use super::ack::AckMsg;
use super::control::{Command, Revoked};
use super::{Delivery, FETCH_BATCH_MAX, Shared, Transport, attempt};
use crate::error::Result;

/// A delivery read ahead, with its read-ahead slot.
struct Item<T> {
    delivery: Delivery<T>,
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
    };
    let cancel = shared.cancel.clone();
    loop {
        d.start_ready();
        d.finish_revokes();
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
                        d.accept(Item { delivery, _room: room });
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
                    d.accept(Item { delivery, _room: room });
                    // The rest of the fetched batch in one round.
                    while let Ok((delivery, room)) = items.try_recv() {
                        d.accept(Item { delivery, _room: room });
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

    /// True when a delivery read under its assignment may still start.
    fn may_start(&self, delivery: &Delivery<T::Token>) -> bool {
        match delivery.assignment {
            None => true,
            Some(a) => self
                .parts
                .get(&a.partition)
                .is_some_and(|p| p.active && p.epoch == a.epoch),
        }
    }

    fn hand_back(&mut self, tokens: Vec<T::Token>) {
        if tokens.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        self.releases
            .spawn(async move { shared.transport.release(tokens).await });
    }

    fn accept(&mut self, item: Item<T::Token>) {
        if !self.may_start(&item.delivery) {
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
        // Once shutdown was asked for, nothing new starts (even before the dispatcher got to
        // handing everything back).
        if self.stopping.is_some() || self.shared.cancel.is_cancelled() {
            return;
        }
        while self.running.len() < self.concurrency {
            let Some((item, key)) = self.ready.pop_front() else {
                return;
            };
            if !self.may_start(&item.delivery) {
                // Its partition was revoked while it waited for a slot.
                self.release_key(key.as_ref());
                self.hand_back(vec![item.delivery.token]);
                continue;
            }
            self.start(item, key);
        }
    }

    fn start(&mut self, item: Item<T::Token>, key: Option<Key>) {
        let partition = item.delivery.assignment.map(|a| a.partition);
        let stop = partition
            .and_then(|p| self.parts.get(&p))
            .map(|p| p.stop.clone())
            .unwrap_or_else(|| self.shared.cancel.clone());
        let cancel = CancellationToken::new();
        let shared = self.shared.clone();
        let task_cancel = cancel.clone();
        let abort = self.tasks.spawn(async move {
            let Item { delivery, _room } = item;
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

    fn revoke(
        &mut self,
        partition: u32,
        wait: Duration,
        reply: oneshot::Sender<Revoked<T::Token>>,
    ) {
        let Some(part) = self.parts.get_mut(&partition) else {
            let _ = reply.send(Revoked {
                unstarted: Vec::new(),
                aborted: 0,
            });
            return;
        };
        if part.revoke.is_some() {
            // Already being revoked: the first revoke hands back what there is.
            let _ = reply.send(Revoked {
                unstarted: Vec::new(),
                aborted: 0,
            });
            return;
        }
        part.active = false;
        part.stop.cancel();
        let mut unstarted = Vec::new();
        // Ready deliveries of the partition, and everything queued behind its keys.
        let mut kept = VecDeque::with_capacity(self.ready.len());
        for (item, key) in self.ready.drain(..) {
            if item.delivery.assignment.map(|a| a.partition) == Some(partition) {
                if let Some(key) = &key
                    && let Some(queue) = self.keys.remove(key)
                {
                    unstarted.extend(queue.into_iter().map(|i| i.delivery.token));
                }
                unstarted.push(item.delivery.token);
            } else {
                kept.push_back((item, key));
            }
        }
        self.ready = kept;
        for (key, queue) in self.keys.iter_mut() {
            if key.0 == Some(partition) {
                unstarted.extend(queue.drain(..).map(|i| i.delivery.token));
            }
        }
        let part = self.parts.get_mut(&partition).expect("checked above");
        self.revoking += 1;
        part.revoke = Some(PendingRevoke {
            unstarted,
            deadline: Instant::now() + wait,
            aborted: 0,
            expired: false,
            reply,
        });
    }

    fn in_flight(&self, partition: u32) -> usize {
        self.running
            .values()
            .filter(|r| r.partition == Some(partition))
            .count()
    }

    /// Completes the revokes whose partition has no handler in flight any more: once the
    /// acknowledgements queued so far are flushed, the revoke returns.
    fn finish_revokes(&mut self) {
        if self.revoking == 0 {
            return;
        }
        let done: Vec<u32> = self
            .parts
            .iter()
            .filter(|(_, p)| p.revoke.is_some())
            .map(|(p, _)| *p)
            .filter(|p| self.in_flight(*p) == 0)
            .collect();
        for partition in done {
            let Some(part) = self.parts.remove(&partition) else {
                continue;
            };
            let Some(revoke) = part.revoke else { continue };
            self.revoking -= 1;
            let (flushed, flush) = oneshot::channel();
            let _ = self.shared.acks.send(AckMsg::Flush(flushed));
            tokio::spawn(async move {
                let _ = flush.await;
                let _ = revoke.reply.send(Revoked {
                    unstarted: revoke.unstarted,
                    aborted: revoke.aborted,
                });
            });
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.revoking == 0 && self.stopping.is_none() {
            return None;
        }
        let revokes = self
            .parts
            .values()
            .filter_map(|p| p.revoke.as_ref())
            .filter(|r| !r.expired)
            .map(|r| r.deadline);
        let shutdown = self
            .stopping
            .filter(|_| !self.aborted_all)
            .map(|s| s + self.shutdown_timeout);
        revokes.chain(shutdown).min()
    }

    fn deadlines(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (p, part) in self.parts.iter_mut() {
            if let Some(r) = part.revoke.as_mut()
                && !r.expired
                && r.deadline <= now
            {
                r.expired = true;
                expired.push(*p);
            }
        }
        for p in expired {
            let n = self.abort_where(|r| r.partition == Some(p));
            if n > 0 {
                tracing::warn!(topic = %self.shared.topic, group = %self.shared.group, partition = p, n, "handlers outlived the partition's handover wait; cancelled (their entries stay pending for the next owner)");
            }
            if let Some(r) = self.parts.get_mut(&p).and_then(|p| p.revoke.as_mut()) {
                r.aborted += n;
            }
        }
        if let Some(s) = self.stopping
            && !self.aborted_all
            && s + self.shutdown_timeout <= now
        {
            self.aborted_all = true;
            let n = self.abort_where(|_| true);
            tracing::warn!(topic = %self.shared.topic, group = %self.shared.group, left = n, "shutdown deadline passed; handlers cancelled (their events will be redelivered)");
        }
    }

    fn abort_where(&self, pick: impl Fn(&Running) -> bool) -> usize {
        let mut n = 0;
        for r in self.running.values().filter(|r| pick(r)) {
            r.cancel.cancel();
            r.abort.abort();
            n += 1;
        }
        n
    }

    /// Shutdown: nothing new starts; every delivery not started goes back at once.
    fn begin_stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        let mut tokens: Vec<T::Token> = self
            .ready
            .drain(..)
            .map(|(item, _)| item.delivery.token)
            .collect();
        for (_, queue) in self.keys.iter_mut() {
            tokens.extend(queue.drain(..).map(|i| i.delivery.token));
        }
        self.hand_back(tokens);
    }
}
