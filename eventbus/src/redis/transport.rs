//! The Redis consumer's transport: reads only the partitions this member holds a lease for
//! (draining a previous owner's pending entries first), claims, acknowledges, dead-letters and
//! hands back entries, each fenced by the partition's lease.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use redis::Value;

use super::RedisBus;
use super::conn::Conn;
use super::coordinator::RedisCoordinator;
use super::keys::Keys;
use super::scripts;
use super::wire::{self, Entry};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::membership::{Holdings, Running};
use crate::runner::{Assignment, Delivery, Transport, Undecodable};

/// What acknowledging, dead-lettering or handing back one entry needs.
#[derive(Debug)]
pub(crate) struct EntryToken {
    pub(crate) partition: u32,
    pub(crate) epoch: u64,
    pub(crate) id: String,
    pub(crate) raw: Vec<u8>,
    /// The delivery count of this delivery.
    pub(crate) count: u32,
}

/// How far this member got in a partition it holds.
#[derive(Debug)]
pub(crate) struct ReadState {
    /// Still claiming the pending entries of earlier holders, from this `XPENDING` start.
    pub(super) draining: Option<String>,
    /// The group's last delivered id: what a blocking wait waits past.
    pub(super) last_delivered: Option<String>,
    /// The last read found nothing more after `last_delivered`: the next fetch may wait at
    /// once instead of reading first.
    pub(super) drained: bool,
    /// Ids (ms, seq) handed to the runner and not yet acknowledged, dead-lettered or handed
    /// back.
    pub(super) in_flight: HashSet<(u64, u64)>,
}

impl Default for ReadState {
    fn default() -> Self {
        Self {
            draining: Some("-".to_owned()),
            last_delivered: None,
            drained: false,
            in_flight: HashSet::new(),
        }
    }
}

pub(crate) struct RedisTransport {
    pub(super) bus: RedisBus,
    /// Blocking reads (single server only).
    pub(super) reader: Option<Conn>,
    pub(super) keys: Keys,
    pub(super) topic: String,
    pub(super) group: String,
    pub(super) consumer: String,
    pub(super) member: String,
    pub(crate) holdings: Arc<Holdings<ReadState>>,
    pub(super) coordinator: Arc<RedisCoordinator>,
    pub(super) block: Duration,
    pub(super) cluster_poll: Duration,
    pub(super) rotate: AtomicUsize,
    /// The membership driver (none in the fence tests' bare members).
    pub(super) membership: Option<Running>,
}

/// The partitions held, as one fetch sees them.
struct Held {
    a: Assignment,
    draining: Option<String>,
    last_delivered: Option<String>,
    drained: bool,
    in_flight: Vec<String>,
}

impl RedisTransport {
    fn conn(&self) -> &Conn {
        &self.bus.inner.conn
    }

    fn held(&self) -> Vec<Held> {
        let parts = self.holdings.lock();
        let mut held: Vec<Held> = parts
            .iter()
            .map(|(p, (epoch, st))| Held {
                a: Assignment::new(*p, *epoch),
                draining: st.draining.clone(),
                last_delivered: st.last_delivered.clone(),
                drained: st.drained,
                in_flight: if st.draining.is_some() {
                    st.in_flight
                        .iter()
                        .map(|(ms, seq)| format!("{ms}-{seq}"))
                        .collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        // Start each fetch at another partition, so a busy one cannot starve the others.
        if !held.is_empty() {
            let start = self.rotate.fetch_add(1, Ordering::Relaxed) % held.len();
            held.rotate_left(start);
        }
        held
    }

    /// Updates the state of a partition still held under the same epoch.
    fn update(&self, a: Assignment, f: impl FnOnce(&mut ReadState)) {
        if let Some((epoch, st)) = self.holdings.lock().get_mut(&a.partition)
            && *epoch == a.epoch
        {
            f(st);
        }
    }

    /// After a failed call whose reply may have been lost (the script may have run): the
    /// partitions' entries read by it are pending under this consumer; claim them again.
    fn reread(&self, parts: &[Assignment]) {
        for a in parts {
            self.update(*a, |st| {
                st.draining = Some("-".to_owned());
                st.last_delivered = None;
                st.drained = false;
            });
        }
    }

    fn to_delivery(
        &self,
        a: Assignment,
        id: String,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        count: u32,
    ) -> Delivery<EntryToken> {
        let mut fields = fields;
        let position = fields.iter().position(|(k, _)| k == b"event");
        let (payload, raw) = match position {
            Some(i) => {
                let raw = fields.swap_remove(i).1;
                match Event::from_json(&raw) {
                    Ok(event) => (Ok(event), raw),
                    Err(e) => (Err(Undecodable::new(raw.clone(), e.to_string())), raw),
                }
            }
            None => {
                let names: Vec<String> = fields
                    .iter()
                    .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                    .collect();
                let raw = fields.first().map(|(_, v)| v.clone()).unwrap_or_default();
                let reason = format!("entry has no `event` field (fields: {})", names.join(", "));
                (Err(Undecodable::new(raw.clone(), reason)), raw)
            }
        };
        let delivery_id = format!("{}/{id}", a.partition);
        Delivery::new(
            payload,
            EntryToken {
                partition: a.partition,
                epoch: a.epoch,
                id,
                raw,
                count,
            },
            delivery_id,
            count,
        )
        .with_assignment(a)
    }

    /// Turns entries into deliveries, tracking them as in flight; entries whose data is gone
    /// (trimmed or deleted while pending) are acknowledged and dropped.
    async fn deliveries(
        &self,
        a: Assignment,
        entries: Vec<Entry>,
        counts: &HashMap<String, u32>,
    ) -> Vec<Delivery<EntryToken>> {
        let mut out = Vec::with_capacity(entries.len());
        let mut gone = Vec::new();
        let mut ids = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            match fields {
                Some(fields) => {
                    ids.push(wire::stream_id(&id));
                    let count = counts.get(&id).copied().unwrap_or(1);
                    out.push(self.to_delivery(a, id, fields, count));
                }
                None => gone.push(id),
            }
        }
        self.update(a, |st| st.in_flight.extend(ids));
        if !gone.is_empty() {
            tracing::warn!(topic = %self.topic, partition = a.partition, group = %self.group, n = gone.len(), "pending entries were trimmed before being handled; acknowledging them");
            let mut inv = scripts::ACK.prepare_invoke();
            inv.key(self.keys.lease(&self.topic, a.partition, &self.group))
                .key(self.keys.stream(&self.topic, a.partition))
                .arg(&self.group)
                .arg(&self.member)
                .arg(a.epoch)
                .arg(&gone);
            let _ = self.conn().script::<i64>("ack trimmed entries", &inv).await;
        }
        out
    }

    /// Claims the next page of a partition's pending entries (left by earlier holders, or by
    /// this member's reads whose reply was lost).
    async fn drain(&self, h: &Held, max: usize) -> Result<Vec<Delivery<EntryToken>>> {
        let Some(from) = &h.draining else {
            return Ok(Vec::new());
        };
        let page = max.max(1) + h.in_flight.len();
        let mut inv = scripts::DRAIN.prepare_invoke();
        inv.key(self.keys.lease(&self.topic, h.a.partition, &self.group))
            .key(self.keys.stream(&self.topic, h.a.partition))
            .arg(&self.group)
            .arg(&self.member)
            .arg(h.a.epoch)
            .arg(&self.consumer)
            .arg(from)
            .arg(page)
            .arg(&h.in_flight);
        let reply: Value = match self.conn().script("claim pending entries", &inv).await {
            Ok(v) => v,
            Err(e) => return Err(self.on_read_error(e, &[h.a]).await),
        };
        let parts = wire::array(&reply);
        if parts.first().and_then(|v| wire::int(v)) != Some(1) {
            self.holdings.lost(h.a);
            return Ok(Vec::new());
        }
        let mut entries = parts.get(1).map(|v| wire::entries(v)).unwrap_or_default();
        let counts: HashMap<String, u32> = parts
            .get(2)
            .map(|rows| {
                wire::array(rows)
                    .into_iter()
                    .filter_map(|row| {
                        let row = wire::array(row);
                        let id = wire::string(row.first()?)?;
                        let count = wire::int(row.get(1)?)?;
                        Some((id, (count.max(0) as u32).saturating_add(1)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let last = parts
            .get(3)
            .and_then(|v| wire::string(v))
            .unwrap_or_default();
        let done = parts.get(4).and_then(|v| wire::int(v)) == Some(1);
        let delivered = parts
            .get(5)
            .and_then(|v| wire::string(v))
            .filter(|s| !s.is_empty());
        entries.sort_by_key(|(id, _)| wire::stream_id(id));
        self.update(h.a, |st| {
            if done {
                st.draining = None;
                st.last_delivered = delivered;
            } else {
                st.draining = Some(format!("({last}"));
            }
        });
        if done {
            self.forget_idle_consumers(h.a.partition);
        }
        Ok(self.deliveries(h.a, entries, &counts).await)
    }

    /// Removes the group's consumers on a partition that hold no pending entry any more (dead
    /// members, members that held it before), once its pending entries moved here.
    fn forget_idle_consumers(&self, partition: u32) {
        let (bus, key, group, me) = (
            self.bus.clone(),
            self.keys.stream(&self.topic, partition),
            self.group.clone(),
            self.consumer.clone(),
        );
        tokio::spawn(async move {
            let mut cmd = redis::cmd("XINFO");
            cmd.arg("CONSUMERS").arg(&key).arg(&group);
            let Ok(reply) = bus.inner.conn.query::<Value>("list consumers", &cmd).await else {
                return;
            };
            for row in wire::array(&reply) {
                let fields = wire::info_row(row);
                let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
                let name = get("name").and_then(wire::string);
                let pending = get("pending").and_then(wire::int).unwrap_or(1);
                if let Some(name) = name
                    && name != me
                    && pending == 0
                {
                    let mut cmd = redis::cmd("XGROUP");
                    cmd.arg("DELCONSUMER").arg(&key).arg(&group).arg(&name);
                    let _ = bus
                        .inner
                        .conn
                        .query::<Value>("remove a consumer", &cmd)
                        .await;
                }
            }
        });
    }

    /// Reads new entries of the partitions done draining, up to `max` together.
    async fn read_new(&self, held: &[&Held], max: usize) -> Result<Vec<Delivery<EntryToken>>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let chunks: Vec<Vec<&Held>> = if self.conn().is_cluster() {
            held.iter().map(|h| vec![*h]).collect()
        } else {
            vec![held.to_vec()]
        };
        let budget = if chunks.len() > 1 {
            max.div_ceil(chunks.len()).max(1)
        } else {
            max.max(1)
        };
        let replies = join_all(chunks.iter().map(|chunk| {
            let mut inv = scripts::READ.prepare_invoke();
            for h in chunk {
                inv.key(self.keys.lease(&self.topic, h.a.partition, &self.group))
                    .key(self.keys.stream(&self.topic, h.a.partition));
            }
            inv.arg(&self.group)
                .arg(&self.member)
                .arg(&self.consumer)
                .arg(budget);
            for h in chunk {
                inv.arg(h.a.epoch);
            }
            async move { self.conn().script::<Value>("read", &inv).await }
        }))
        .await;
        let mut out = Vec::new();
        let mut error = None;
        let chunked = chunks.len() > 1;
        for (chunk, reply) in chunks.iter().zip(replies) {
            let mut left = budget;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    let parts: Vec<Assignment> = chunk.iter().map(|h| h.a).collect();
                    error = Some(self.on_read_error(e, &parts).await);
                    continue;
                }
            };
            for (h, row) in chunk.iter().zip(wire::into_array(reply)) {
                let mut row = wire::into_array(row).into_iter();
                let status = row.next().as_ref().and_then(wire::int);
                match status {
                    Some(0) => self.holdings.lost(h.a),
                    Some(1) => {
                        let entries = row.next().map(wire::into_entries).unwrap_or_default();
                        // Fewer than it was allowed to read: nothing more was there.
                        let drained = entries.len() < left;
                        left = if chunked {
                            budget
                        } else {
                            left - entries.len().min(left)
                        };
                        let last = entries.last().map(|(id, _)| id.clone());
                        self.update(h.a, |st| {
                            if let Some(last) = last {
                                st.last_delivered = Some(last);
                            }
                            st.drained = drained;
                        });
                        out.extend(self.deliveries(h.a, entries, &HashMap::new()).await);
                    }
                    Some(2) => self.update(h.a, |st| st.drained = true),
                    _ => {}
                }
            }
        }
        match error {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    async fn on_read_error(&self, e: Error, parts: &[Assignment]) -> Error {
        self.reread(parts);
        if e.to_string().contains("NOGROUP") {
            // The stream (and its groups) was deleted under us: recreate them from the start.
            for a in parts {
                let key = self.keys.stream(&self.topic, a.partition);
                let _ = self.bus.create_group(&key, &self.group, "0").await;
            }
        }
        e
    }

    /// Waits for new entries in the held partitions (a blocking `XREAD` on a single server, a
    /// pause on a cluster), or for the held partitions to change.
    async fn wait(
        &self,
        held: &[Held],
        idle_rounds: u32,
        changed: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) {
        if held.is_empty() {
            let _ = tokio::time::timeout(self.block, changed).await;
            return;
        }
        let ready: Vec<(String, &str)> = held
            .iter()
            .filter(|h| h.draining.is_none())
            .filter_map(|h| {
                h.last_delivered
                    .as_deref()
                    .map(|id| (self.keys.stream(&self.topic, h.a.partition), id))
            })
            .collect();
        match &self.reader {
            Some(reader) if ready.len() == held.len() => {
                let mut cmd = redis::cmd("XREAD");
                cmd.arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(self.block.as_millis().max(1) as u64)
                    .arg("STREAMS");
                for (key, _) in &ready {
                    cmd.arg(key);
                }
                for (_, id) in &ready {
                    cmd.arg(*id);
                }
                let (generation, mut conn) = match reader.get().await {
                    Ok(c) => c,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return;
                    }
                };
                tokio::select! {
                    r = cmd.query_async::<Value>(&mut conn) => {
                        if let Err(e) = r {
                            reader.fail(generation, "wait for entries", e);
                        }
                    }
                    _ = changed => {
                        // The blocked command is still on that connection: use a new one.
                        reader.invalidate(generation);
                    }
                }
            }
            _ => {
                // A cluster (partitions on several slots), or a partition whose position is
                // not known yet: poll, backing off while idle.
                let pause =
                    Duration::from_millis(1u64 << idle_rounds.min(10)).min(self.cluster_poll);
                let _ = tokio::time::timeout(pause, changed).await;
            }
        }
    }

    fn forget(&self, tokens: &[EntryToken]) {
        let mut parts = self.holdings.lock();
        for t in tokens {
            if let Some((epoch, st)) = parts.get_mut(&t.partition)
                && *epoch == t.epoch
            {
                st.in_flight.remove(&wire::stream_id(&t.id));
            }
        }
    }
}

#[async_trait]
impl Transport for RedisTransport {
    type Token = EntryToken;

    fn consumer(&self) -> &str {
        &self.consumer
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery<EntryToken>>> {
        let mut idle_rounds = 0u32;
        loop {
            let changed = self.holdings.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let held = self.held();
            let mut out = Vec::new();
            for h in held.iter().filter(|h| h.draining.is_some()) {
                if out.len() >= max {
                    break;
                }
                out.extend(self.drain(h, max - out.len()).await?);
            }
            if !out.is_empty() {
                return Ok(out);
            }
            let live: Vec<&Held> = held.iter().filter(|h| h.draining.is_none()).collect();
            // Every partition was found drained by the last read: wait for news at once rather
            // than reading nothing first (a blocking wait returns at once if entries came).
            let drained = idle_rounds == 0
                && self.reader.is_some()
                && !live.is_empty()
                && live.len() == held.len()
                && live.iter().all(|h| h.drained);
            if !drained {
                let out = self.read_new(&live, max).await?;
                if !out.is_empty() || idle_rounds >= 1 && self.reader.is_some() {
                    return Ok(out);
                }
            }
            if held.iter().any(|h| h.draining.is_some()) {
                // A drain page ended without entries: go on with the next page at once.
                continue;
            }
            self.wait(&held, idle_rounds, changed).await;
            idle_rounds += 1;
            if idle_rounds > 64 {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, tokens: &[EntryToken]) -> Result<()> {
        // Forgotten first: should the ack fail for good, the entries are redelivered by a
        // drain rather than skipped by it.
        self.forget(tokens);
        let mut by_partition: BTreeMap<(u32, u64), Vec<&str>> = BTreeMap::new();
        for t in tokens {
            by_partition
                .entry((t.partition, t.epoch))
                .or_default()
                .push(&t.id);
        }
        let results = join_all(by_partition.iter().map(|((p, epoch), ids)| {
            let mut inv = scripts::ACK.prepare_invoke();
            inv.key(self.keys.lease(&self.topic, *p, &self.group))
                .key(self.keys.stream(&self.topic, *p))
                .arg(&self.group)
                .arg(&self.member)
                .arg(*epoch)
                .arg(ids);
            async move { self.conn().script::<i64>("ack", &inv).await }
        }))
        .await;
        let mut lost = None;
        let mut failed = None;
        for (((p, epoch), _), r) in by_partition.iter().zip(results) {
            match r {
                Ok(-1) => {
                    self.holdings.lost(Assignment::new(*p, *epoch));
                    lost.get_or_insert(Error::LeaseLost { partition: *p });
                }
                Ok(_) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match (failed, lost) {
            (Some(e), _) => Err(e),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(()),
        }
    }

    async fn dead_letter(&self, delivery: &Delivery<EntryToken>, reason: &str) -> Result<()> {
        let token = &delivery.token;
        let mut inv = scripts::DEAD_LETTER.prepare_invoke();
        inv.key(self.keys.lease(&self.topic, token.partition, &self.group))
            .key(self.keys.stream(&self.topic, token.partition))
            .key(self.keys.dlq(&self.topic, token.partition))
            .arg(&self.group)
            .arg(&self.member)
            .arg(token.epoch)
            .arg(&token.id)
            .arg(self.bus.inner.config.dlq_max_len.unwrap_or(0))
            .arg(&token.raw)
            .arg(reason)
            .arg(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .arg(&self.consumer);
        let r: i64 = self.conn().script("dead-letter", &inv).await?;
        self.forget(std::slice::from_ref(token));
        if r == -1 {
            self.holdings
                .lost(Assignment::new(token.partition, token.epoch));
            return Err(Error::LeaseLost {
                partition: token.partition,
            });
        }
        Ok(())
    }

    async fn release(&self, tokens: Vec<EntryToken>) {
        self.forget(&tokens);
        let mut by_partition: BTreeMap<(u32, u64), Vec<EntryToken>> = BTreeMap::new();
        for t in tokens {
            by_partition
                .entry((t.partition, t.epoch))
                .or_default()
                .push(t);
        }
        for ((p, epoch), tokens) in by_partition {
            let a = Assignment::new(p, epoch);
            if let Err(e) = self.coordinator.hand_back(a, &tokens, false).await {
                tracing::debug!(partition = p, error = %e, "handing entries back failed; they are redelivered with one more delivery counted");
            }
        }
    }

    async fn close(&self) {
        if let Some(membership) = &self.membership {
            membership.leave().await;
        }
    }
}
