//! Consuming: a consumer group driven by the shared runner, offsets committed only after the
//! handler succeeded, and the dead-letter topic.
//!
//! The runner completes events out of order (different keys run concurrently), so offsets are
//! tracked per partition: a fetched offset is pending until acknowledged, and the committed
//! offset is one past the highest *contiguous* acknowledged offset. A crash therefore
//! redelivers at most what was fetched and not yet contiguous, never skips anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use windlass_core::{Group, Topic};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::Handler;
use crate::kafka::KafkaBus;
use crate::kafka::codec;
use crate::kafka::publisher::map_produce_error;
use crate::runner::{self, Delivery, Transport};
use crate::subscription::Subscription;
use crate::traits::{DeadLetter, DeadLetters, StartFrom, SubscribeOptions, Subscriber};

/// Header of a DLQ record: why it was dead-lettered.
pub const DLQ_REASON_HEADER: &str = "windlass_dlq_reason";
/// Header of a DLQ record: the group whose handler gave up.
pub const DLQ_GROUP_HEADER: &str = "windlass_dlq_group";
/// Header of a DLQ record: the original `topic/partition@offset`.
pub const DLQ_ORIGIN_HEADER: &str = "windlass_dlq_origin";
/// Header of a DLQ record: when it was dead-lettered (RFC 3339).
pub const DLQ_FAILED_AT_HEADER: &str = "windlass_dlq_failed_at";

/// How long a reader waits for more records once it reached the high watermarks.
pub(crate) const READ_IDLE: Duration = Duration::from_millis(300);

/// Longest reason kept in the DLQ header.
const REASON_MAX: usize = 4096;

/// Fetched offsets per partition: `true` once acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    parts: HashMap<i32, BTreeMap<i64, bool>>,
}

impl Pending {
    fn fetched(&mut self, partition: i32, offset: i64) {
        self.parts
            .entry(partition)
            .or_default()
            .insert(offset, false);
    }

    /// Marks offsets acknowledged; returns the offsets to commit (one past the highest
    /// contiguous acknowledged offset) for the partitions that moved.
    fn acked(&mut self, tokens: impl Iterator<Item = (i32, i64)>) -> Vec<(i32, i64)> {
        let mut touched = Vec::new();
        for (p, o) in tokens {
            if let Some(done) = self
                .parts
                .get_mut(&p)
                .and_then(|offsets| offsets.get_mut(&o))
            {
                *done = true;
                if !touched.contains(&p) {
                    touched.push(p);
                }
            }
        }
        let mut commits = Vec::new();
        for p in touched {
            let Some(offsets) = self.parts.get_mut(&p) else {
                continue;
            };
            let mut next = None;
            while let Some(entry) = offsets.first_entry() {
                if !*entry.get() {
                    break;
                }
                next = Some(*entry.key() + 1);
                entry.remove();
            }
            if let Some(n) = next {
                commits.push((p, n));
            }
        }
        commits
    }

    fn revoked(&mut self, partitions: impl Iterator<Item = i32>) {
        for p in partitions {
            self.parts.remove(&p);
        }
    }
}

/// Forgets the pending offsets of revoked partitions (their new owner starts from the
/// committed offset; late acknowledgements of ours are then ignored).
pub(crate) struct GroupContext {
    pending: Arc<Mutex<Pending>>,
    topic: String,
    /// Flipped on the first assignment (empty ones included: more members than partitions).
    assigned: tokio::sync::watch::Sender<bool>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl
                    .elements()
                    .iter()
                    .filter(|e| e.topic() == self.topic)
                    .map(|e| e.partition())
                    .collect();
                tracing::debug!(topic = %self.topic, ?parts, "partitions revoked");
                lock(&self.pending).revoked(parts.into_iter());
            }
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::debug!(topic = %self.topic, ?parts, "partitions assigned");
                self.assigned.send_replace(true);
            }
            Rebalance::Error(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "rebalance failed")
            }
        }
    }
}

fn lock(m: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the runner holds per delivery: the record's position, and the record itself (the DLQ
/// copies it as it was read).
#[derive(Debug)]
pub(crate) struct KafkaToken {
    partition: i32,
    offset: i64,
    record: Box<OwnedMessage>,
}

pub(crate) struct KafkaTransport {
    bus: KafkaBus,
    consumer: Option<Arc<StreamConsumer<GroupContext>>>,
    pending: Arc<Mutex<Pending>>,
    topic: String,
    dlq_topic: String,
    group: String,
    name: String,
}

impl KafkaTransport {
    fn consumer(&self) -> &StreamConsumer<GroupContext> {
        self.consumer
            .as_deref()
            .expect("the consumer lives as long as the transport")
    }

    fn delivery(&self, record: OwnedMessage) -> Delivery<KafkaToken> {
        let (partition, offset) = (record.partition(), record.offset());
        lock(&self.pending).fetched(partition, offset);
        let payload = codec::decode(&record);
        let token = KafkaToken {
            partition,
            offset,
            record: Box::new(record),
        };
        Delivery::new(payload, token, format!("{partition}@{offset}"), 1)
            .with_partition(partition.max(0) as u32)
    }

    async fn commit(&self, commits: Vec<(i32, i64)>) -> Result<()> {
        if commits.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::with_capacity(commits.len());
        for (p, o) in commits {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))
                .map_err(|e| Error::backend("kafka", "ack", e))?;
        }
        let consumer = self
            .consumer
            .clone()
            .expect("the consumer lives as long as the transport");
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| Error::backend("kafka", "ack", e))?
            .map_err(|e| Error::backend("kafka", "ack", e))
    }
}

impl Drop for KafkaTransport {
    fn drop(&mut self) {
        // Closing a consumer leaves the group, which blocks: do it off the async threads.
        if let Some(consumer) = self.consumer.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || drop(consumer));
                }
                Err(_) => drop(consumer),
            }
        }
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    type Token = KafkaToken;

    fn consumer(&self) -> &str {
        &self.name
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery<KafkaToken>>> {
        let consumer = self.consumer();
        let first =
            match tokio::time::timeout(self.bus.inner.config.poll_wait, consumer.recv()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(Err(e)) => return Err(Error::backend("kafka", "read", e)),
                Ok(Ok(m)) => m.detach(),
            };
        let mut out = Vec::with_capacity(max.min(64));
        out.push(self.delivery(first));
        while out.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => {
                    let record = m.detach();
                    out.push(self.delivery(record));
                }
                Some(Err(e)) => {
                    // Hand over what was read; the next fetch reports the error if it stays.
                    tracing::debug!(topic = %self.topic, error = %e, "kafka read error after a partial batch");
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    async fn ack(&self, tokens: &[KafkaToken]) -> Result<()> {
        let commits = lock(&self.pending).acked(tokens.iter().map(|t| (t.partition, t.offset)));
        self.commit(commits).await
    }

    async fn dead_letter(&self, delivery: &Delivery<KafkaToken>, reason: &str) -> Result<()> {
        let record = &delivery.token.record;
        let mut headers = OwnedHeaders::new();
        if let Some(hs) = record.headers() {
            for h in hs.iter() {
                if !h.key.starts_with("windlass_dlq_") {
                    headers = headers.insert(Header {
                        key: h.key,
                        value: h.value,
                    });
                }
            }
        }
        let mut reason = reason.to_owned();
        if reason.len() > REASON_MAX {
            let mut cut = REASON_MAX;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let origin = format!("{}/{}@{}", self.topic, record.partition(), record.offset());
        let failed_at = Utc::now().to_rfc3339();
        headers = headers
            .insert(Header {
                key: DLQ_REASON_HEADER,
                value: Some(reason.as_bytes()),
            })
            .insert(Header {
                key: DLQ_GROUP_HEADER,
                value: Some(self.group.as_bytes()),
            })
            .insert(Header {
                key: DLQ_ORIGIN_HEADER,
                value: Some(origin.as_bytes()),
            })
            .insert(Header {
                key: DLQ_FAILED_AT_HEADER,
                value: Some(failed_at.as_bytes()),
            });
        let mut out: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.dlq_topic).headers(headers);
        if let Some(k) = record.key() {
            out = out.key(k);
        }
        if let Some(v) = record.payload() {
            out = out.payload(v);
        }
        let size = record.payload().map_or(0, <[u8]>::len);
        let cfg = &self.bus.inner.config;
        self.bus
            .inner
            .producer
            .send(out, Timeout::After(cfg.publish_timeout))
            .await
            .map_err(|(e, _)| {
                map_produce_error(
                    e,
                    &self.dlq_topic,
                    &delivery.delivery_id,
                    size,
                    cfg.max_message_bytes,
                )
            })?;
        self.ack(std::slice::from_ref(&delivery.token)).await
    }
}

impl KafkaBus {
    /// The dead-letter topic of `topic` under this bus's [`DlqNaming`](crate::kafka::DlqNaming).
    pub fn dlq_topic(&self, topic: &Topic) -> String {
        self.inner.config.dlq_naming.topic_for(topic.as_str())
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1 unless the broker
    /// says otherwise) if it does not exist yet.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
        let new = NewTopic::new(topic, partitions.max(1), TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self
            .inner
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| Error::backend("kafka", "create topic", e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::backend(
                        "kafka",
                        "create topic",
                        format!("{name}: {code}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Subscriber for KafkaBus {
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let dlq_topic = self.dlq_topic(topic);
        if let Err(e) = self
            .create_topic(&dlq_topic, self.inner.config.dlq_partitions)
            .await
        {
            tracing::warn!(topic = %topic, dlq = %dlq_topic, error = %e, "could not create the DLQ topic; dead-lettering fails until it exists");
        }
        let name = options.consumer.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "windlass".to_owned());
            format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        });
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (assigned, mut is_assigned) = tokio::sync::watch::channel(false);
        let context = GroupContext {
            pending: pending.clone(),
            topic: topic.as_str().to_owned(),
            assigned,
        };
        let earliest = matches!(options.start_from, StartFrom::Earliest);
        let consumer: StreamConsumer<GroupContext> = self
            .inner
            .config
            .consumer_config(group.as_str(), &name, earliest)
            .create_with_context(context)
            .map_err(|e| Error::backend("kafka", "subscribe", e))?;
        consumer
            .subscribe(&[topic.as_str()])
            .map_err(|e| Error::backend("kafka", "subscribe", e))?;
        let transport = KafkaTransport {
            bus: self.clone(),
            consumer: Some(Arc::new(consumer)),
            pending,
            topic: topic.as_str().to_owned(),
            dlq_topic,
            group: group.as_str().to_owned(),
            name,
        };
        let subscription = runner::spawn(transport, topic.clone(), group.clone(), handler, options);
        // Return once the group gave this member its partitions, so what is published next is
        // read (and `StartFrom::Latest` means "after subscribe returned").
        let wait = self.inner.config.assignment_wait;
        if tokio::time::timeout(wait, is_assigned.wait_for(|a| *a))
            .await
            .is_err()
        {
            tracing::warn!(topic = %topic, group = %group, ?wait, "no partition assignment yet; consuming will start when the group rebalances");
        }
        Ok(subscription)
    }
}

fn header_str(record: &OwnedMessage, name: &str) -> Option<String> {
    record
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Reads a whole (small) topic from the beginning with manual assignment: no group, no commit,
/// invisible to live consumers. Stops at the high watermarks seen when it starts.
pub(crate) fn read_topic(
    bus: &KafkaBus,
    topic: &str,
    limit: usize,
    deadline: Duration,
) -> Result<Vec<OwnedMessage>> {
    let cfg = &bus.inner.config;
    let mut c = cfg.base();
    c.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("group.id", "windlass-reader");
    let consumer: BaseConsumer = cfg
        .finish(c)
        .create()
        .map_err(|e| Error::backend("kafka", "read", e))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| Error::backend("kafka", "read", e))?;
    let Some(t) = md.topics().first() else {
        return Ok(Vec::new());
    };
    if t.error().is_some() {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .map_err(|e| Error::backend("kafka", "read", e))?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                .map_err(|e| Error::backend("kafka", "read", e))?;
            ends.insert(p.id(), high);
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::backend("kafka", "read", e))?;
    let until = std::time::Instant::now() + deadline;
    let mut out = Vec::new();
    // tansu reports a high watermark one past the *first* offset of the last batch, so the
    // watermarks are only a lower bound: read on until the partitions stay idle.
    let mut idle_since = std::time::Instant::now();
    while out.len() < limit {
        if std::time::Instant::now() > until {
            return Err(Error::Timeout("kafka read of the dead-letter topic"));
        }
        if ends.is_empty() && idle_since.elapsed() >= READ_IDLE {
            break;
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Err(e)) => tracing::debug!(topic, error = %e, "kafka read error"),
            Some(Ok(m)) => {
                let m = m.detach();
                idle_since = std::time::Instant::now();
                if ends
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    ends.remove(&m.partition());
                }
                out.push(m);
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl DeadLetters for KafkaBus {
    /// Reads the DLQ topic from its start (a reader outside any group: nothing is consumed).
    async fn dead_letters(&self, topic: &Topic, limit: usize) -> Result<Vec<DeadLetter>> {
        let dlq = self.dlq_topic(topic);
        let bus = self.clone();
        let dlq2 = dlq.clone();
        let records = tokio::task::spawn_blocking(move || {
            read_topic(&bus, &dlq2, limit, Duration::from_secs(30))
        })
        .await
        .map_err(|e| Error::backend("kafka", "read", e))??;
        let mut out: Vec<(i64, DeadLetter)> = records
            .into_iter()
            .map(|r| {
                let failed_at = header_str(&r, DLQ_FAILED_AT_HEADER)
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(Utc::now);
                let ts = r.timestamp().to_millis().unwrap_or(0);
                let event = codec::decode(&r).ok();
                let origin = header_str(&r, DLQ_ORIGIN_HEADER);
                let (partition, entry_id) = origin
                    .as_deref()
                    .and_then(|o| o.rsplit_once('/'))
                    .and_then(|(_, pos)| pos.split_once('@'))
                    .map(|(p, o)| (p.parse().ok(), Some(o.to_owned())))
                    .unwrap_or((None, None));
                let letter = DeadLetter {
                    id: format!("{}@{}", r.partition(), r.offset()),
                    topic: topic.as_str().to_owned(),
                    partition,
                    entry_id,
                    consumer: String::new(),
                    group: header_str(&r, DLQ_GROUP_HEADER).unwrap_or_default(),
                    event: event.clone(),
                    // The event in canonical structured JSON when it decodes, else the bytes read.
                    payload: event.as_ref().map_or_else(
                        || r.payload().unwrap_or_default().to_vec(),
                        Event::to_json_vec,
                    ),
                    error: header_str(&r, DLQ_REASON_HEADER).unwrap_or_default(),
                    failed_at,
                };
                (ts, letter)
            })
            .collect();
        out.sort_by_key(|(ts, _)| *ts);
        Ok(out.into_iter().map(|(_, l)| l).take(limit).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::Pending;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut p = Pending::default();
        for o in 10..15 {
            p.fetched(0, o);
        }
        p.fetched(1, 3);
        assert_eq!(p.acked([(0, 12), (0, 11)].into_iter()), vec![]);
        assert_eq!(p.acked([(0, 10)].into_iter()), vec![(0, 13)]);
        assert_eq!(p.acked([(0, 14), (1, 3)].into_iter()), vec![(1, 4)]);
        assert_eq!(p.acked([(0, 13)].into_iter()), vec![(0, 15)]);
        // Acks of a revoked partition are ignored.
        p.fetched(2, 0);
        p.revoked([2].into_iter());
        assert_eq!(p.acked([(2, 0)].into_iter()), vec![]);
    }
}
