//! Handovers: a partition revoked, the whole runner shutting down. What still starts (gap
//! fillers, for transports that commit a prefix), what goes back, what a revoke waits for,
//! and the deadlines that end the wait.
//!
//! A transport that records only a handled prefix of each partition
//! ([`Transport::commits_prefix`]) cannot record a delivery handled above one that never ran.
//! So at a handover the dispatcher keeps the partition's deliveries that arrived before the
//! latest one it started (`Part::high`) and lets them start (one attempt, within the wait);
//! only those that arrived after it go back. Other transports get everything not started back
//! at once.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Dispatcher, Item, PendingRevoke, Running};
use crate::runner::Transport;
use crate::runner::ack::AckMsg;
use crate::runner::control::Revoked;

impl<T> Item<T> {
    /// Read under an assignment of `partition`.
    fn in_partition(&self, partition: u32) -> bool {
        self.delivery.assignment.map(|a| a.partition) == Some(partition)
    }
}

impl<T: Transport> Dispatcher<T> {
    /// Gives a delivery that will not start back: into its partition's pending revoke if there
    /// is one (the transport returns it), else to [`Transport::release`].
    pub(super) fn give_back(&mut self, item: Item<T::Token>) {
        let revoke = item
            .delivery
            .assignment
            .and_then(|a| {
                self.parts
                    .get_mut(&a.partition)
                    .filter(|p| p.epoch == a.epoch)
            })
            .and_then(|p| p.revoke.as_mut());
        match revoke {
            Some(r) => r.unstarted.push(item.delivery.token),
            None => self.hand_back(vec![item.delivery.token]),
        }
    }

    /// Takes out every queued delivery (ready, or waiting behind its key) for which `take` holds.
    /// Within a key, deliveries are in arrival order and `take` must hold for every delivery
    /// after the first it holds for (true of every caller: "of partition p", "at or after p's
    /// latest start").
    fn take_queued(&mut self, take: impl Fn(&Item<T::Token>) -> bool) -> Vec<T::Token> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.ready.len());
        for (item, key) in std::mem::take(&mut self.ready) {
            if !take(&item) {
                kept.push_back((item, key));
                continue;
            }
            out.push(item.delivery.token);
            if let Some(key) = key
                && let Some(queue) = self.keys.remove(&key)
            {
                out.extend(queue.into_iter().map(|i| i.delivery.token));
            }
        }
        self.ready = kept;
        for queue in self.keys.values_mut() {
            if let Some(cut) = queue.iter().position(&take) {
                out.extend(queue.drain(cut..).map(|i| i.delivery.token));
            }
        }
        out
    }

    /// Deliveries of `partition` still queued.
    fn queued(&self, partition: u32) -> usize {
        let of = |i: &Item<T::Token>| i.in_partition(partition);
        self.ready.iter().filter(|(i, _)| of(i)).count()
            + self
                .keys
                .iter()
                .filter(|(k, _)| k.0 == Some(partition))
                .map(|(_, q)| q.iter().filter(|i| of(i)).count())
                .sum::<usize>()
    }

    pub(super) fn revoke(
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
        // Gap fillers stay (prefix transports); the rest of the partition goes back.
        let high = if self.prefix { part.high } else { None };
        let unstarted =
            self.take_queued(|i| i.in_partition(partition) && high.is_none_or(|h| i.seq >= h));
        if high.is_some() {
            tracing::debug!(topic = %self.shared.topic, group = %self.shared.group, partition, gap_fillers = self.queued(partition), handed_back = unstarted.len(), "revoke: deliveries below the latest start still run");
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

    /// Completes the revokes whose partition has no handler in flight and nothing queued any
    /// more: once the acknowledgements queued so far are flushed, the revoke returns.
    pub(super) fn finish_revokes(&mut self) {
        if self.revoking == 0 {
            return;
        }
        let done: Vec<u32> = self
            .parts
            .iter()
            .filter(|(_, p)| p.revoke.is_some())
            .map(|(p, _)| *p)
            .filter(|p| self.in_flight(*p) == 0 && self.queued(*p) == 0)
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

    pub(super) fn next_deadline(&self) -> Option<Instant> {
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

    pub(super) fn deadlines(&mut self) {
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
            // Gap fillers that did not get to start go back too.
            let left = self.take_queued(|i| i.in_partition(p));
            if let Some(r) = self.parts.get_mut(&p).and_then(|p| p.revoke.as_mut()) {
                r.aborted += n;
                r.unstarted.extend(left);
            }
        }
        if let Some(s) = self.stopping
            && !self.aborted_all
            && s + self.shutdown_timeout <= now
        {
            self.aborted_all = true;
            let n = self.abort_where(|_| true);
            let left = self.take_queued(|_| true);
            tracing::warn!(topic = %self.shared.topic, group = %self.shared.group, left = n, not_started = left.len(), "shutdown deadline passed; handlers cancelled (their events will be redelivered)");
            self.hand_back(left);
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

    /// Shutdown: nothing new starts but gap fillers; every other delivery not started goes
    /// back at once.
    pub(super) fn begin_stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        // Under `stopping`, `may_start` keeps exactly the gap fillers. Computed before taking
        // (the predicate cannot borrow the dispatcher while its queues are rebuilt).
        let keep: std::collections::HashSet<u64> = self
            .ready
            .iter()
            .map(|(i, _)| i)
            .chain(self.keys.values().flatten())
            .filter(|i| self.may_start(i))
            .map(|i| i.seq)
            .collect();
        let tokens = self.take_queued(|i| !keep.contains(&i.seq));
        if !keep.is_empty() {
            tracing::debug!(topic = %self.shared.topic, group = %self.shared.group, gap_fillers = keep.len(), handed_back = tokens.len(), "shutdown: deliveries below their partition's latest start still run");
        }
        self.hand_back(tokens);
    }
}
