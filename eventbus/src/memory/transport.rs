//! The memory bus's transport: reads the partitions this member holds (pending entries of the
//! previous owner first, in order), with every read, acknowledgement and dead-letter write
//! fenced by the partition's lease epoch.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::log::{Payload, Pending, TopicLog, lock};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::membership::{Holdings, Running};
use crate::runner::{Assignment, Delivery, Transport, Undecodable};
use crate::traits::DeadLetter;

/// One delivery: where it is and under which epoch it was read.
#[derive(Debug)]
pub(super) struct MemToken {
    pub(super) partition: u32,
    pub(super) seq: u64,
    pub(super) epoch: u64,
}

/// How far this member got in a held partition.
#[derive(Debug)]
pub(super) struct ReadState {
    /// Still handing out the pending entries left by earlier owners, from this sequence on.
    draining: Option<u64>,
}

impl Default for ReadState {
    fn default() -> Self {
        Self { draining: Some(0) }
    }
}

pub(super) struct MemoryTransport {
    pub(super) log: Arc<TopicLog>,
    pub(super) topic: String,
    pub(super) group: String,
    pub(super) consumer: Arc<str>,
    pub(super) member: String,
    pub(super) holdings: Arc<Holdings<ReadState>>,
    pub(super) block: Duration,
    pub(super) membership: Running,
}

fn decode(payload: &Payload) -> std::result::Result<Event, Undecodable> {
    match payload {
        Payload::Event(e) => Ok(e.clone()),
        Payload::Raw(bytes) => {
            Event::from_json(bytes).map_err(|e| Undecodable::new(bytes.to_vec(), e.to_string()))
        }
    }
}

impl MemoryTransport {
    fn take(&self, max: usize) -> Vec<Delivery<MemToken>> {
        let mut out = Vec::new();
        let mut lost = Vec::new();
        {
            let mut st = lock(&self.log.state);
            let st = &mut *st;
            let Some(group) = st.groups.get_mut(&self.group) else {
                return out;
            };
            let mut held = self.holdings.lock();
            for (&p, (epoch, read)) in held.iter_mut() {
                if out.len() >= max {
                    break;
                }
                let a = Assignment::new(p, *epoch);
                let (Some(gp), Some(log)) =
                    (group.parts.get_mut(p as usize), st.parts.get(p as usize))
                else {
                    continue;
                };
                if !gp.lease.fences(&self.member, a.epoch) {
                    lost.push(a);
                    continue;
                }
                if let Some(from) = read.draining {
                    let mut next = None;
                    for (&seq, pending) in gp.pending.range_mut(from..) {
                        if out.len() >= max {
                            next = Some(seq);
                            break;
                        }
                        if let Some(stored) = log.get(seq) {
                            pending.consumer = self.consumer.clone();
                            pending.count += 1;
                            out.push(
                                Delivery::new(
                                    decode(&stored.payload),
                                    MemToken {
                                        partition: p,
                                        seq,
                                        epoch: a.epoch,
                                    },
                                    format!("{p}/{seq}"),
                                    pending.count,
                                )
                                .with_assignment(a),
                            );
                        }
                    }
                    read.draining = next;
                    if next.is_some() {
                        continue;
                    }
                }
                while out.len() < max && gp.cursor < log.end() {
                    let seq = gp.cursor;
                    gp.cursor += 1;
                    if let Some(stored) = log.get(seq) {
                        gp.pending.insert(
                            seq,
                            Pending {
                                consumer: self.consumer.clone(),
                                count: 1,
                            },
                        );
                        out.push(
                            Delivery::new(
                                decode(&stored.payload),
                                MemToken {
                                    partition: p,
                                    seq,
                                    epoch: a.epoch,
                                },
                                format!("{p}/{seq}"),
                                1,
                            )
                            .with_assignment(a),
                        );
                    }
                }
            }
        }
        for a in lost {
            self.holdings.lost(a);
        }
        out
    }

    /// Applies `f` to the pending entry of `token` if this member still holds its partition
    /// under the token's epoch.
    fn fenced<R>(
        &self,
        token: &MemToken,
        f: impl FnOnce(&mut super::log::TopicState) -> R,
    ) -> Result<R> {
        let mut st = lock(&self.log.state);
        let held = st
            .groups
            .get(&self.group)
            .and_then(|g| g.parts.get(token.partition as usize))
            .is_some_and(|gp| gp.lease.fences(&self.member, token.epoch));
        if !held {
            drop(st);
            self.holdings
                .lost(Assignment::new(token.partition, token.epoch));
            return Err(Error::LeaseLost {
                partition: token.partition,
            });
        }
        Ok(f(&mut st))
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    type Token = MemToken;

    fn consumer(&self) -> &str {
        &self.consumer
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery<MemToken>>> {
        let deadline = tokio::time::Instant::now() + self.block;
        loop {
            let data = self.log.data.notified();
            let changed = self.holdings.changed.notified();
            let (mut data, mut changed) = (pin!(data), pin!(changed));
            data.as_mut().enable();
            changed.as_mut().enable();
            let batch = self.take(max);
            if !batch.is_empty() {
                return Ok(batch);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                _ = data => {}
                _ = changed => {}
            }
        }
    }

    async fn ack(&self, tokens: &[MemToken]) -> Result<()> {
        let mut lost = None;
        for token in tokens {
            let done = self.fenced(token, |st| {
                if let Some(gp) = st
                    .groups
                    .get_mut(&self.group)
                    .and_then(|g| g.parts.get_mut(token.partition as usize))
                {
                    gp.pending.remove(&token.seq);
                }
            });
            if let Err(e) = done {
                lost.get_or_insert(e);
            }
        }
        self.log.space.notify_waiters();
        lost.map_or(Ok(()), Err)
    }

    async fn dead_letter(&self, delivery: &Delivery<MemToken>, reason: &str) -> Result<()> {
        let token = &delivery.token;
        self.fenced(token, |st| {
            let payload = st.parts[token.partition as usize]
                .get(token.seq)
                .map(|s| s.payload.bytes())
                .unwrap_or_default();
            let Some(gp) = st
                .groups
                .get_mut(&self.group)
                .and_then(|g| g.parts.get_mut(token.partition as usize))
            else {
                return;
            };
            if gp.pending.remove(&token.seq).is_none() {
                // Already acknowledged or dead-lettered: nothing to move.
                return;
            }
            st.dlq_seq += 1;
            let seq = st.dlq_seq;
            st.dlq.insert(
                seq,
                DeadLetter {
                    id: format!("{}/{seq}", token.partition),
                    topic: self.topic.clone(),
                    partition: Some(token.partition),
                    entry_id: Some(token.seq.to_string()),
                    group: self.group.clone(),
                    consumer: self.consumer.to_string(),
                    event: delivery.payload.as_ref().ok().cloned(),
                    payload,
                    error: reason.to_owned(),
                    failed_at: Utc::now(),
                },
            );
        })?;
        self.log.space.notify_waiters();
        Ok(())
    }

    async fn release(&self, tokens: Vec<MemToken>) {
        // Never handled: the next delivery is not one more attempt.
        let mut st = lock(&self.log.state);
        super::coordinator::restore_counts(&mut st, &self.group, &self.member, &tokens);
    }

    async fn close(&self) {
        self.membership.leave().await;
    }
}
