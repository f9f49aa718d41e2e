//! Consuming: a consumer group member driven by the shared runner. This module only moves
//! entries (read, claim, acknowledge, dead-letter); retry, order and concurrency are the
//! runner's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Value;
use windlass_core::{Group, Topic};

use super::conn::Conn;
use super::wire::{self, Entry};
use super::{RedisBus, host_name, sanitize_name};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::Handler;
use crate::runner::{self, Delivery, Transport, Undecodable};
use crate::subscription::Subscription;
use crate::traits::{StartFrom, SubscribeOptions, Subscriber};

/// What acknowledging or dead-lettering one entry needs: its id and the bytes as read.
#[derive(Debug)]
pub(crate) struct EntryToken {
    id: String,
    raw: Vec<u8>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates the group (and the stream) unless it exists.
async fn create_group(conn: &Conn, key: &str, group: &str, start: &str) -> Result<()> {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE")
        .arg(key)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM");
    match conn.query::<Value>("create consumer group", &cmd).await {
        Ok(_) => Ok(()),
        Err(Error::Backend { source, .. }) if source.to_string().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl Subscriber for RedisBus {
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let config = &self.inner.config;
        let key = self.stream_key(topic);
        let start = match options.start_from {
            StartFrom::Earliest => "0",
            StartFrom::Latest => "$",
        };
        create_group(&self.inner.conn, &key, group.as_str(), start).await?;
        let consumer = match &options.consumer {
            Some(name) if name.is_empty() || name.chars().any(char::is_control) => {
                return Err(Error::Config(format!(
                    "consumer name {name:?} must be non-empty text"
                )));
            }
            Some(name) => name.clone(),
            None => {
                let mut members = lock(&self.inner.members);
                let n = members
                    .entry((topic.to_string(), group.to_string()))
                    .or_insert(0);
                *n += 1;
                format!("{}-{n}", host_name())
            }
        };
        let reader = Conn::new(
            self.inner.client.clone(),
            sanitize_name(&format!("{}.read.{consumer}", self.inner.client_name)),
            config.connect_timeout,
            config.block + config.timeout,
        );
        let state = Arc::new(State {
            in_flight: Mutex::new(HashSet::new()),
            reread_own: AtomicBool::new(true),
            own_cursor: Mutex::new("-".to_owned()),
            claim: Mutex::new(ClaimState {
                next: Instant::now(),
                cursor: "0-0".to_owned(),
            }),
        });
        let transport = RedisTransport {
            conn: self.inner.conn.clone(),
            reader,
            key,
            dlq_key: self.dlq_key(topic),
            group: group.to_string(),
            consumer,
            block: config.block,
            claim_idle: config.claim_idle,
            claim_interval: config.claim_interval,
            dlq_max_len: config.dlq_max_len,
            state: state.clone(),
        };
        if config.keep_alive {
            tokio::spawn(keep_alive(
                Arc::downgrade(&state),
                self.inner.conn.clone(),
                transport.key.clone(),
                transport.group.clone(),
                transport.consumer.clone(),
                config.claim_idle,
            ));
        }
        Ok(runner::spawn(
            transport,
            topic.clone(),
            group.clone(),
            handler,
            options,
        ))
    }
}

struct State {
    /// Entries handed to the runner and not yet acknowledged, dead-lettered or released.
    in_flight: Mutex<HashSet<String>>,
    /// Take back this consumer's pending entries before reading new ones (start, reconnect).
    reread_own: AtomicBool,
    /// Where the pass over this consumer's pending entries continues.
    own_cursor: Mutex<String>,
    claim: Mutex<ClaimState>,
}

struct ClaimState {
    next: Instant,
    cursor: String,
}

struct RedisTransport {
    conn: Arc<Conn>,
    reader: Conn,
    key: String,
    dlq_key: String,
    group: String,
    consumer: String,
    block: Duration,
    claim_idle: Duration,
    claim_interval: Duration,
    dlq_max_len: Option<u64>,
    state: Arc<State>,
}

/// Refreshes the idle time of in-flight entries (`XCLAIM ... JUSTID`, which does not count as
/// a delivery) until the subscription's transport is gone.
async fn keep_alive(
    state: Weak<State>,
    conn: Arc<Conn>,
    key: String,
    group: String,
    consumer: String,
    idle: Duration,
) {
    let every = (idle / 3).max(Duration::from_millis(5));
    let min_idle = (idle / 4).as_millis() as u64;
    loop {
        tokio::time::sleep(every).await;
        let Some(state) = state.upgrade() else { return };
        let ids: Vec<String> = lock(&state.in_flight).iter().cloned().collect();
        drop(state);
        for chunk in ids.chunks(1000) {
            let mut cmd = redis::cmd("XCLAIM");
            cmd.arg(&key)
                .arg(&group)
                .arg(&consumer)
                .arg(min_idle)
                .arg(chunk)
                .arg("JUSTID");
            if let Err(e) = conn.query::<Value>("refresh in-flight entries", &cmd).await {
                tracing::debug!(error = %e, "keep-alive of in-flight entries failed; will retry");
                break;
            }
        }
    }
}

impl RedisTransport {
    fn to_delivery(
        &self,
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
        Delivery::new(
            payload,
            EntryToken {
                id: id.clone(),
                raw,
            },
            id,
            count,
        )
    }

    /// Turns entries into deliveries (tracking them as in flight); entries whose data is gone
    /// (trimmed or deleted while pending) are acknowledged and dropped.
    async fn deliveries(
        &self,
        entries: Vec<Entry>,
        counts: &HashMap<String, u32>,
    ) -> Vec<Delivery<EntryToken>> {
        let mut out = Vec::with_capacity(entries.len());
        let mut gone = Vec::new();
        {
            let mut in_flight = lock(&self.state.in_flight);
            for (id, fields) in entries {
                match fields {
                    Some(fields) => {
                        in_flight.insert(id.clone());
                        let count = counts.get(&id).copied().unwrap_or(1);
                        out.push(self.to_delivery(id, fields, count));
                    }
                    None => gone.push(id),
                }
            }
        }
        if !gone.is_empty() {
            tracing::warn!(stream = %self.key, group = %self.group, n = gone.len(), "pending entries were trimmed before being handled; acknowledging them");
            let mut cmd = redis::cmd("XACK");
            cmd.arg(&self.key).arg(&self.group).arg(&gone);
            let _ = self.conn.query::<Value>("ack trimmed entries", &cmd).await;
        }
        out
    }

    /// This consumer's pending entries not in flight here (left by an earlier run of this
    /// consumer name, or read when the connection broke), claimed back with their counts.
    async fn take_own(&self, max: usize) -> Result<Vec<Delivery<EntryToken>>> {
        let cursor = lock(&self.state.own_cursor).clone();
        let page = max + lock(&self.state.in_flight).len();
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.key)
            .arg(&self.group)
            .arg(&cursor)
            .arg("+")
            .arg(page)
            .arg(&self.consumer);
        let reply: Value = self.conn.query("read pending entries", &cmd).await?;
        let rows = wire::pending_reply(&reply);
        match rows.last() {
            Some((last, ..)) if rows.len() >= page => {
                *lock(&self.state.own_cursor) = format!("({last}");
                self.state.reread_own.store(true, Ordering::Relaxed);
            }
            _ => *lock(&self.state.own_cursor) = "-".to_owned(),
        }
        let mut counts = HashMap::new();
        {
            let in_flight = lock(&self.state.in_flight);
            for (id, _, _, count) in rows {
                if !in_flight.contains(&id) {
                    counts.insert(id, (count.max(0) as u32).saturating_add(1));
                }
            }
        }
        if counts.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&String> = counts.keys().collect();
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&ids);
        let reply: Value = self.conn.query("claim own pending entries", &cmd).await?;
        let mut entries = wire::entries(&reply);
        entries.sort_by_key(|(id, _)| stream_id(id));
        Ok(self.deliveries(entries, &counts).await)
    }

    /// Entries of any member idle past `claim_idle` (`XAUTOCLAIM`), when a pass is due.
    async fn claim_idle_entries(&self, max: usize) -> Result<Vec<Delivery<EntryToken>>> {
        let cursor = {
            let claim = lock(&self.state.claim);
            if Instant::now() < claim.next {
                return Ok(Vec::new());
            }
            claim.cursor.clone()
        };
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.claim_idle.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(max.max(1));
        let reply: Value = self.conn.query("claim idle entries", &cmd).await?;
        let (next, entries, _deleted) = wire::autoclaim_reply(&reply);
        {
            let mut claim = lock(&self.state.claim);
            // A finished pass waits for the next interval; an unfinished one goes on next fetch.
            claim.next = if next == "0-0" {
                Instant::now() + self.claim_interval
            } else {
                Instant::now()
            };
            claim.cursor = next;
        }
        // An entry of ours still in flight is only being slow: the claim refreshed it, and it
        // must not run twice here.
        let entries: Vec<Entry> = {
            let in_flight = lock(&self.state.in_flight);
            entries
                .into_iter()
                .filter(|(id, _)| !in_flight.contains(id))
                .collect()
        };
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let counts = self.counts_of(&entries).await;
        tracing::info!(stream = %self.key, group = %self.group, consumer = %self.consumer, n = entries.len(), "claimed idle entries of another consumer");
        Ok(self.deliveries(entries, &counts).await)
    }

    /// Delivery counts of entries this consumer holds (best effort: 1 when unknown).
    async fn counts_of(&self, entries: &[Entry]) -> HashMap<String, u32> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return HashMap::new();
        };
        let page = entries.len() + lock(&self.state.in_flight).len() + 1;
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.key)
            .arg(&self.group)
            .arg(&first.0)
            .arg(&last.0)
            .arg(page)
            .arg(&self.consumer);
        match self.conn.query::<Value>("read delivery counts", &cmd).await {
            Ok(reply) => wire::pending_reply(&reply)
                .into_iter()
                .map(|(id, _, _, count)| (id, count.max(1) as u32))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not read delivery counts; counting this delivery as the first");
                HashMap::new()
            }
        }
    }

    /// New entries, blocking up to `block` on the subscription's own connection.
    async fn read_new(&self, max: usize) -> Result<Vec<Delivery<EntryToken>>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max.max(1))
            .arg("BLOCK")
            .arg(self.block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">");
        let (generation, mut conn) = self
            .reader
            .get()
            .await
            .inspect_err(|_| self.after_read_error())?;
        let reply: Value = match cmd.query_async(&mut conn).await {
            Ok(v) => v,
            Err(e) => {
                self.after_read_error();
                if e.code() == Some("NOGROUP") {
                    // The stream (and its groups) was deleted: start the group again.
                    create_group(&self.conn, &self.key, &self.group, "0").await?;
                }
                return Err(self.reader.fail(generation, "read", e));
            }
        };
        Ok(self
            .deliveries(wire::read_reply(&reply), &HashMap::new())
            .await)
    }

    fn after_read_error(&self) {
        // Entries Redis assigned to us in a reply we never got are pending under our name.
        self.state.reread_own.store(true, Ordering::Relaxed);
    }

    fn forget(&self, ids: impl IntoIterator<Item = impl AsRef<str>>) {
        let mut in_flight = lock(&self.state.in_flight);
        for id in ids {
            in_flight.remove(id.as_ref());
        }
    }
}

/// Sort key of a stream id `ms-seq`.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[async_trait]
impl Transport for RedisTransport {
    type Token = EntryToken;

    fn consumer(&self) -> &str {
        &self.consumer
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery<EntryToken>>> {
        let mut out = Vec::new();
        if self.state.reread_own.swap(false, Ordering::Relaxed) {
            out = self
                .take_own(max)
                .await
                .inspect_err(|_| self.after_read_error())?;
        }
        if out.len() < max {
            match self.claim_idle_entries(max - out.len()).await {
                Ok(claimed) => out.extend(claimed),
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "claiming idle entries failed; will retry"),
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        self.read_new(max).await
    }

    async fn ack(&self, tokens: &[EntryToken]) -> Result<()> {
        // Forgotten first: should the ack fail for good, the entries are no longer kept alive
        // and get delivered again (at least once) instead of being held forever.
        self.forget(tokens.iter().map(|t| &t.id));
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.key).arg(&self.group);
        for t in tokens {
            cmd.arg(&t.id);
        }
        self.conn.query::<Value>("ack", &cmd).await.map(drop)
    }

    async fn dead_letter(&self, delivery: &Delivery<EntryToken>, reason: &str) -> Result<()> {
        let token = &delivery.token;
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.dlq_key);
        if let Some(n) = self.dlq_max_len {
            xadd.arg("MAXLEN").arg("~").arg(n);
        }
        xadd.arg("*")
            .arg("event")
            .arg(&token.raw)
            .arg("error")
            .arg(reason)
            .arg("failed_at")
            .arg(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .arg("group")
            .arg(&self.group)
            .arg("consumer")
            .arg(&self.consumer)
            .arg("entry")
            .arg(&token.id);
        let mut xack = redis::cmd("XACK");
        xack.arg(&self.key).arg(&self.group).arg(&token.id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(xadd)
            .ignore()
            .add_command(xack)
            .ignore();
        self.conn.query_pipe::<()>("dead-letter", &pipe).await?;
        self.forget([&token.id]);
        Ok(())
    }

    async fn release(&self, tokens: Vec<EntryToken>) {
        self.forget(tokens.iter().map(|t| &t.id));
    }
}
