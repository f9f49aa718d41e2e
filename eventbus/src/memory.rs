//! The in-process bus: bounded per-topic logs with consumer groups, pending entries, claiming
//! and a dead-letter queue, with the same semantics as the Redis Streams backend. For users'
//! own tests and the quickstart; it keeps nothing across restarts of the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use tokio::sync::Notify;
use windlass_core::{Group, Topic};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::Handler;
use crate::runner::{self, Delivery, Transport, Undecodable};
use crate::subscription::Subscription;
use crate::traits::{DeadLetter, DeadLetters, Publisher, StartFrom, SubscribeOptions, Subscriber};

/// Settings of a [`MemoryBus`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Entries a topic holds. Entries every group has acknowledged are trimmed first; when the
    /// topic is full of unacknowledged entries, `publish` waits for room.
    pub capacity: usize,
    /// How long `publish` waits for room before failing with [`Error::Full`].
    pub publish_timeout: Duration,
    /// How long an entry may stay unacknowledged by a consumer before another member of its
    /// group may claim it (a dead consumer's entries).
    pub claim_idle: Duration,
    /// How long one fetch waits for new entries.
    pub block: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            publish_timeout: Duration::from_secs(5),
            claim_idle: Duration::from_secs(30),
            block: Duration::from_millis(200),
        }
    }
}

impl MemoryConfig {
    /// Sets the per-topic capacity (at least 1).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }
    /// Sets how long `publish` waits for room.
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.publish_timeout = d;
        self
    }
    /// Sets the idle time after which another member may claim an entry.
    pub fn claim_idle(mut self, d: Duration) -> Self {
        self.claim_idle = d;
        self
    }
}

/// An in-process event bus: [`Publisher`], [`Subscriber`] and [`DeadLetters`].
///
/// ```
/// use windlass_eventbus::{Event, MemoryBus, Publisher, SubscriberExt};
/// use windlass_core::{Group, Topic};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = MemoryBus::new();
/// let topic = Topic::new("orders")?;
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let sub = bus
///     .subscribe_fn(&topic, &Group::new("mailer")?, move |event, _ctx| {
///         let tx = tx.clone();
///         async move {
///             tx.send(event.id().to_owned())?;
///             Ok(())
///         }
///     })
///     .await?;
/// let event = Event::builder("/shop", "order.placed").build()?;
/// bus.publish(&topic, &event).await?;
/// assert_eq!(rx.recv().await.as_deref(), Some(event.id()));
/// sub.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryBus {
    inner: Arc<BusInner>,
}

#[derive(Default)]
struct BusInner {
    config: MemoryConfig,
    topics: Mutex<HashMap<String, Arc<TopicLog>>>,
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct TopicLog {
    state: Mutex<TopicState>,
    data: Notify,
    space: Notify,
}

#[derive(Default)]
struct TopicState {
    base: u64,
    entries: VecDeque<Payload>,
    groups: HashMap<String, GroupState>,
    dlq: Vec<DeadLetter>,
    dlq_seq: u64,
}

#[derive(Clone)]
enum Payload {
    Event(Event),
    Raw(Bytes),
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Event(e) => e.to_json_vec(),
            Payload::Raw(b) => b.to_vec(),
        }
    }
}

struct GroupState {
    cursor: u64,
    pending: BTreeMap<u64, Pending>,
}

struct Pending {
    consumer: Arc<str>,
    count: u32,
    delivered_at: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TopicState {
    fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// Drops entries every group has acknowledged.
    fn trim(&mut self) {
        let Some(keep_from) = self
            .groups
            .values()
            .map(|g| {
                g.pending
                    .keys()
                    .next()
                    .copied()
                    .unwrap_or(g.cursor)
                    .min(g.cursor)
            })
            .min()
        else {
            // No group yet: keep everything (a first subscriber starting at the earliest entry
            // must find it).
            return;
        };
        while self.base < keep_from && !self.entries.is_empty() {
            self.entries.pop_front();
            self.base += 1;
        }
    }
}

impl MemoryBus {
    /// A bus with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus with these settings.
    pub fn with_config(config: MemoryConfig) -> Self {
        Self {
            inner: Arc::new(BusInner {
                config,
                topics: Mutex::default(),
            }),
        }
    }

    fn log(&self, topic: &str) -> Arc<TopicLog> {
        lock(&self.inner.topics)
            .entry(topic.to_owned())
            .or_default()
            .clone()
    }

    /// Appends bytes that are not necessarily an event, as a foreign producer could. For tests
    /// of bad input: subscribers dead-letter what does not decode.
    pub async fn publish_raw(&self, topic: &Topic, bytes: impl Into<Bytes>) -> Result<()> {
        self.append(topic, vec![Payload::Raw(bytes.into())]).await
    }

    /// Entries the topic holds (acknowledged or not, until trimmed).
    pub fn len(&self, topic: &Topic) -> usize {
        lock(&self.log(topic).state).entries.len()
    }

    /// True when the topic holds no entry.
    pub fn is_empty(&self, topic: &Topic) -> bool {
        self.len(topic) == 0
    }

    async fn append(&self, topic: &Topic, payloads: Vec<Payload>) -> Result<()> {
        let log = self.log(topic);
        let capacity = self.inner.config.capacity;
        let deadline = tokio::time::Instant::now() + self.inner.config.publish_timeout;
        let mut payloads = payloads.into_iter().peekable();
        while payloads.peek().is_some() {
            let space = log.space.notified();
            let mut space = pin!(space);
            space.as_mut().enable();
            {
                let mut st = lock(&log.state);
                if st.entries.len() >= capacity {
                    st.trim();
                }
                let mut added = false;
                while st.entries.len() < capacity {
                    match payloads.next() {
                        Some(p) => {
                            st.entries.push_back(p);
                            added = true;
                        }
                        None => break,
                    }
                }
                if added {
                    log.data.notify_waiters();
                }
            }
            if payloads.peek().is_none() {
                break;
            }
            if tokio::time::timeout_at(deadline, space).await.is_err() {
                return Err(Error::Full(format!("memory topic {topic}")));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Publisher for MemoryBus {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        self.append(topic, vec![Payload::Event(event.clone())])
            .await
    }

    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        self.append(topic, events.iter().cloned().map(Payload::Event).collect())
            .await
    }
}

#[async_trait]
impl Subscriber for MemoryBus {
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let log = self.log(topic);
        {
            let mut st = lock(&log.state);
            let start = match options.start_from {
                StartFrom::Earliest => st.base,
                StartFrom::Latest => st.end(),
            };
            st.groups
                .entry(group.to_string())
                .or_insert_with(|| GroupState {
                    cursor: start,
                    pending: BTreeMap::new(),
                });
        }
        let consumer: Arc<str> = options
            .consumer
            .clone()
            .unwrap_or_else(|| format!("memory-{}", uuid::Uuid::new_v4().simple()))
            .into();
        let transport = MemoryTransport {
            log,
            topic: topic.to_string(),
            group: group.to_string(),
            consumer,
            claim_idle: self.inner.config.claim_idle,
            block: self.inner.config.block,
            reread_own: AtomicBool::new(true),
        };
        Ok(runner::spawn(
            transport,
            topic.clone(),
            group.clone(),
            handler,
            options,
        ))
    }
}

#[async_trait]
impl DeadLetters for MemoryBus {
    async fn dead_letters(&self, topic: &Topic, limit: usize) -> Result<Vec<DeadLetter>> {
        let log = self.log(topic);
        let st = lock(&log.state);
        Ok(st.dlq.iter().take(limit).cloned().collect())
    }
}

struct MemoryTransport {
    log: Arc<TopicLog>,
    topic: String,
    group: String,
    consumer: Arc<str>,
    claim_idle: Duration,
    block: Duration,
    reread_own: AtomicBool,
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
    fn take(&self, max: usize) -> Vec<Delivery<u64>> {
        let mut st = lock(&self.log.state);
        let st = &mut *st;
        let now = Instant::now();
        let mut out = Vec::new();
        let base = st.base;
        let Some(group) = st.groups.get_mut(&self.group) else {
            return out;
        };
        let entry = |seq: u64| st.entries.get((seq - base) as usize);
        let reread = self.reread_own.swap(false, Ordering::Relaxed);
        // Entries this consumer name held before a restart, then idle entries of dead members.
        for (&seq, p) in group.pending.iter_mut() {
            if out.len() >= max {
                break;
            }
            let mine = *p.consumer == *self.consumer;
            let claim = (reread && mine)
                || (!mine && now.duration_since(p.delivered_at) >= self.claim_idle);
            if claim && let Some(payload) = entry(seq) {
                p.consumer = self.consumer.clone();
                p.count += 1;
                p.delivered_at = now;
                out.push(Delivery::new(
                    decode(payload),
                    seq,
                    seq.to_string(),
                    p.count,
                ));
            }
        }
        while out.len() < max && group.cursor < base + st.entries.len() as u64 {
            let seq = group.cursor;
            group.cursor += 1;
            if let Some(payload) = entry(seq) {
                group.pending.insert(
                    seq,
                    Pending {
                        consumer: self.consumer.clone(),
                        count: 1,
                        delivered_at: now,
                    },
                );
                out.push(Delivery::new(decode(payload), seq, seq.to_string(), 1));
            }
        }
        out
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    type Token = u64;

    fn consumer(&self) -> &str {
        &self.consumer
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery<u64>>> {
        let deadline = tokio::time::Instant::now() + self.block;
        loop {
            let notified = self.log.data.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            let batch = self.take(max);
            if !batch.is_empty() {
                return Ok(batch);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, tokens: &[u64]) -> Result<()> {
        let mut st = lock(&self.log.state);
        if let Some(group) = st.groups.get_mut(&self.group) {
            for seq in tokens {
                group.pending.remove(seq);
            }
        }
        drop(st);
        self.log.space.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery<u64>, reason: &str) -> Result<()> {
        let mut st = lock(&self.log.state);
        let base = st.base;
        let payload = st
            .entries
            .get((delivery.token - base) as usize)
            .map(Payload::bytes)
            .unwrap_or_default();
        st.dlq_seq += 1;
        let id = st.dlq_seq.to_string();
        st.dlq.push(DeadLetter {
            id,
            topic: self.topic.clone(),
            group: self.group.clone(),
            event: delivery.payload.as_ref().ok().cloned(),
            payload,
            error: reason.to_owned(),
            failed_at: Utc::now(),
        });
        if let Some(group) = st.groups.get_mut(&self.group) {
            group.pending.remove(&delivery.token);
        }
        drop(st);
        self.log.space.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::handler::handler_fn;

    fn event(n: usize) -> Event {
        Event::builder("/test", "t")
            .subject(format!("s{n}"))
            .build()
            .unwrap()
    }

    async fn eventually(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met in 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_full_topic_makes_publish_wait_then_fail_loudly() {
        let bus = MemoryBus::with_config(
            MemoryConfig::default()
                .capacity(3)
                .publish_timeout(Duration::from_millis(50)),
        );
        let topic = Topic::new("full").unwrap();
        for n in 0..3 {
            bus.publish(&topic, &event(n)).await.unwrap();
        }
        let err = bus.publish(&topic, &event(3)).await.unwrap_err();
        assert!(matches!(err, Error::Full(_)), "{err:?}");
        assert_eq!(bus.len(&topic), 3, "nothing was dropped to make room");
    }

    #[tokio::test]
    async fn acknowledged_entries_make_room() {
        let bus = MemoryBus::with_config(
            MemoryConfig::default()
                .capacity(2)
                .publish_timeout(Duration::from_secs(5)),
        );
        let topic = Topic::new("room").unwrap();
        let handled = Arc::new(AtomicUsize::new(0));
        let h = handled.clone();
        let sub = bus
            .subscribe(
                &topic,
                &Group::new("g").unwrap(),
                Arc::new(handler_fn(move |_e, _c| {
                    let h = h.clone();
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                })),
                SubscribeOptions::default(),
            )
            .await
            .unwrap();
        for n in 0..20 {
            bus.publish(&topic, &event(n)).await.unwrap();
        }
        eventually(|| handled.load(Ordering::SeqCst) == 20).await;
        sub.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn latest_skips_history_and_earliest_replays_it() {
        let bus = MemoryBus::new();
        let topic = Topic::new("history").unwrap();
        bus.publish(&topic, &event(0)).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut subs = Vec::new();
        for (group, start) in [("late", StartFrom::Latest), ("early", StartFrom::Earliest)] {
            let seen = seen.clone();
            subs.push(
                bus.subscribe(
                    &topic,
                    &Group::new(group).unwrap(),
                    Arc::new(handler_fn(move |e: Event, c: crate::DeliveryContext| {
                        let seen = seen.clone();
                        async move {
                            lock(&seen)
                                .push((c.group.to_string(), e.subject().unwrap().to_owned()));
                            Ok(())
                        }
                    })),
                    SubscribeOptions::default().start_from(start),
                )
                .await
                .unwrap(),
            );
        }
        bus.publish(&topic, &event(1)).await.unwrap();
        eventually(|| lock(&seen).len() == 3).await;
        let mut got = lock(&seen).clone();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("early".into(), "s0".into()),
                ("early".into(), "s1".into()),
                ("late".into(), "s1".into())
            ]
        );
        for s in subs {
            s.shutdown().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_dead_members_entries_are_claimed_after_the_idle_timeout() {
        let bus =
            MemoryBus::with_config(MemoryConfig::default().claim_idle(Duration::from_millis(100)));
        let topic = Topic::new("claims").unwrap();
        let group = Group::new("g").unwrap();
        // The first member takes the event and hangs forever, then dies.
        let stuck = bus
            .subscribe(
                &topic,
                &group,
                Arc::new(handler_fn(|_e, _c| async {
                    std::future::pending::<()>().await;
                    Ok(())
                })),
                SubscribeOptions::default().consumer("a"),
            )
            .await
            .unwrap();
        bus.publish(&topic, &event(7)).await.unwrap();
        eventually(|| {
            let log = bus.log(&topic);
            let st = lock(&log.state);
            st.groups.get("g").is_some_and(|g| !g.pending.is_empty())
        })
        .await;
        stuck.abort();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let a = attempts.clone();
        let rescuer = bus
            .subscribe(
                &topic,
                &group,
                Arc::new(handler_fn(move |_e, c: crate::DeliveryContext| {
                    let a = a.clone();
                    async move {
                        lock(&a).push((c.consumer.clone(), c.attempt));
                        Ok(())
                    }
                })),
                SubscribeOptions::default().consumer("b"),
            )
            .await
            .unwrap();
        eventually(|| !lock(&attempts).is_empty()).await;
        assert_eq!(
            lock(&attempts)[0],
            ("b".to_owned(), 2),
            "second delivery, by the rescuer"
        );
        rescuer.shutdown().await.unwrap();
    }
}
