//! Leases and members of one memory group, for the shared membership driver.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use super::log::{GroupState, TopicLog, TopicState, lock};
use super::transport::MemToken;
use crate::error::{Error, Result};
use crate::membership::{Coordinator, LeaseView};
use crate::runner::Assignment;

pub(super) struct MemoryCoordinator {
    pub(super) log: Arc<TopicLog>,
    pub(super) topic: String,
    pub(super) group: String,
    pub(super) member: String,
    pub(super) ttl: Duration,
}

impl MemoryCoordinator {
    fn with_group<R>(&self, f: impl FnOnce(&mut GroupState, Instant) -> R) -> Result<R> {
        let mut st = lock(&self.log.state);
        let group = st.groups.get_mut(&self.group).ok_or_else(|| {
            Error::backend("memory", "membership", "the consumer group was deleted")
        })?;
        Ok(f(group, Instant::now()))
    }
}

/// Gives back deliveries that never started: their delivery count goes back down, fenced by
/// the epoch they were read under.
pub(super) fn restore_counts(st: &mut TopicState, group: &str, member: &str, tokens: &[MemToken]) {
    let Some(g) = st.groups.get_mut(group) else {
        return;
    };
    for t in tokens {
        if let Some(gp) = g.parts.get_mut(t.partition as usize)
            && gp.lease.fences(member, t.epoch)
            && let Some(p) = gp.pending.get_mut(&t.seq)
        {
            p.count = p.count.saturating_sub(1);
        }
    }
}

/// Lag, pending count and oldest pending age of one partition of a group.
pub(super) fn figures(
    st: &TopicState,
    group: &GroupState,
    partition: usize,
) -> (u64, u64, Option<Duration>) {
    let gp = &group.parts[partition];
    let log = &st.parts[partition];
    let lag = log.end().saturating_sub(gp.cursor);
    let oldest = gp
        .pending
        .keys()
        .next()
        .and_then(|seq| log.get(*seq))
        .map(|s| SystemTime::now().duration_since(s.at).unwrap_or_default());
    (lag, gp.pending.len() as u64, oldest)
}

#[async_trait]
impl Coordinator for MemoryCoordinator {
    type Token = MemToken;

    async fn heartbeat(&self) -> Result<Vec<String>> {
        self.with_group(|g, now| {
            g.members.insert(self.member.clone(), now + self.ttl);
            g.members.retain(|_, until| *until > now);
            g.members.keys().cloned().collect()
        })
    }

    async fn leases(&self) -> Result<Vec<Option<LeaseView>>> {
        self.with_group(|g, now| {
            g.parts
                .iter()
                .map(|gp| {
                    gp.lease.holder(now).map(|owner| LeaseView {
                        owner: owner.to_owned(),
                        remaining: gp.lease.until - now,
                    })
                })
                .collect()
        })
    }

    async fn acquire(&self, partition: u32) -> Result<Option<u64>> {
        self.with_group(|g, now| {
            let lease = &mut g.parts.get_mut(partition as usize)?.lease;
            if lease.holder(now).is_some_and(|o| o != self.member) {
                return None;
            }
            lease.epoch += 1;
            lease.owner = Some(self.member.clone());
            lease.until = now + self.ttl;
            Some(lease.epoch)
        })
    }

    async fn renew(&self, held: &[Assignment]) -> Result<Vec<bool>> {
        self.with_group(|g, now| {
            held.iter()
                .map(|a| match g.parts.get_mut(a.partition as usize) {
                    Some(gp) if gp.lease.fences(&self.member, a.epoch) => {
                        gp.lease.until = now + self.ttl;
                        true
                    }
                    _ => false,
                })
                .collect()
        })
    }

    async fn release(&self, held: Assignment, unstarted: Vec<MemToken>) -> Result<()> {
        let mut st = lock(&self.log.state);
        restore_counts(&mut st, &self.group, &self.member, &unstarted);
        let now = Instant::now();
        if let Some(gp) = st
            .groups
            .get_mut(&self.group)
            .and_then(|g| g.parts.get_mut(held.partition as usize))
            && gp.lease.fences(&self.member, held.epoch)
        {
            gp.lease.owner = None;
            gp.lease.until = now;
        }
        Ok(())
    }

    async fn leave(&self) -> Result<()> {
        self.with_group(|g, _| {
            g.members.remove(&self.member);
        })
    }

    async fn nudge(&self) {
        let _ = self.with_group(|g, _| g.changed.send_modify(|n| *n = n.wrapping_add(1)));
    }

    async fn listen(self: Arc<Self>, changed: watch::Sender<u64>) {
        let Ok(mut rx) = self.with_group(|g, _| g.changed.subscribe()) else {
            return;
        };
        while rx.changed().await.is_ok() {
            rx.borrow_and_update();
            changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    async fn report(&self, held: &[u32]) {
        let st = lock(&self.log.state);
        let Some(group) = st.groups.get(&self.group) else {
            return;
        };
        for &p in held {
            if (p as usize) < group.parts.len() {
                let (lag, pending, oldest) = figures(&st, group, p as usize);
                crate::metrics::report_partition(
                    &self.topic,
                    &self.group,
                    p,
                    Some(lag),
                    pending,
                    oldest,
                );
            }
        }
    }
}
