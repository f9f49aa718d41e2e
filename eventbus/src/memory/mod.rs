//! The in-process bus: partitioned, bounded per-topic logs with consumer groups, partition
//! leases with fencing epochs, members that spread the partitions and hand them over, pending
//! entries drained by a partition's next owner, and a dead-letter queue. Same semantics as the
//! Redis Streams backend (it is what users test with); it keeps nothing across restarts of the
//! process.

mod admin;
mod coordinator;
mod log;
mod transport;

use std::collections::HashMap;
use std::fmt;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use windlass_core::{Group, Topic};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::Handler;
use crate::membership::{self, Driver, Holdings, Timing};
use crate::partition::{PartitionCount, partition_for_event};
use crate::runner::{Runner, partition_control};
use crate::subscription::Subscription;
use crate::traits::{DeadLetter, DeadLetters, Publisher, StartFrom, SubscribeOptions, Subscriber};
use coordinator::MemoryCoordinator;
use log::{GroupState, Payload, Stored, TopicLog, lock};
use transport::MemoryTransport;

/// Settings of a [`MemoryBus`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Entries a topic holds (all partitions together). Entries every group has acknowledged
    /// are trimmed first; when the topic is full of unacknowledged entries, `publish` waits for
    /// room.
    pub capacity: usize,
    /// How long `publish` waits for room before failing with [`Error::Full`].
    pub publish_timeout: Duration,
    /// Partitions of a topic unless set per topic (default 16).
    pub partitions: PartitionCount,
    /// Partition counts of given topics.
    pub topic_partitions: HashMap<String, PartitionCount>,
    /// How long a member's partition lease (and its registration) lasts without renewal: a
    /// member that dies (an aborted subscription) gives its partitions up after this long.
    /// Default 10 s.
    pub lease_ttl: Duration,
    /// How long one fetch waits for new entries.
    pub block: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            publish_timeout: Duration::from_secs(5),
            partitions: PartitionCount::new(16).expect("16 is a valid partition count"),
            topic_partitions: HashMap::new(),
            lease_ttl: Duration::from_secs(10),
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
    /// Sets the default partition count of topics.
    pub fn partitions(mut self, n: PartitionCount) -> Self {
        self.partitions = n;
        self
    }
    /// Sets the partition count of one topic.
    pub fn topic_partitions(mut self, topic: &Topic, n: PartitionCount) -> Self {
        self.topic_partitions.insert(topic.to_string(), n);
        self
    }
    /// Sets the lease TTL (at least 10 ms).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(10));
        self
    }

    fn partitions_of(&self, topic: &str) -> PartitionCount {
        self.topic_partitions
            .get(topic)
            .copied()
            .unwrap_or(self.partitions)
    }
}

/// An in-process event bus: [`Publisher`], [`Subscriber`], [`DeadLetters`] and
/// [`BusAdmin`](crate::admin::BusAdmin).
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

    /// The settings.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    fn log(&self, topic: &str) -> Arc<TopicLog> {
        lock(&self.inner.topics)
            .entry(topic.to_owned())
            .or_insert_with(|| {
                Arc::new(TopicLog::new(self.inner.config.partitions_of(topic).get()))
            })
            .clone()
    }

    fn existing_log(&self, topic: &str) -> Option<Arc<TopicLog>> {
        lock(&self.inner.topics).get(topic).cloned()
    }

    /// Appends bytes that are not necessarily an event to partition 0, as a foreign producer
    /// could. For tests of bad input: subscribers dead-letter what does not decode.
    pub async fn publish_raw(&self, topic: &Topic, bytes: impl Into<Bytes>) -> Result<()> {
        self.publish_raw_to(topic, 0, bytes).await
    }

    /// Appends bytes that are not necessarily an event to one partition.
    pub async fn publish_raw_to(
        &self,
        topic: &Topic,
        partition: u32,
        bytes: impl Into<Bytes>,
    ) -> Result<()> {
        let log = self.log(topic.as_str());
        let partitions = lock(&log.state).partitions();
        if partition >= partitions {
            return Err(Error::Config(format!(
                "partition {partition} does not exist: topic {topic} has {partitions}"
            )));
        }
        self.append(topic, vec![(partition, Payload::Raw(bytes.into()))])
            .await
    }

    /// Entries the topic holds in all its partitions (acknowledged or not, until trimmed).
    pub fn len(&self, topic: &Topic) -> usize {
        self.existing_log(topic.as_str())
            .map_or(0, |log| lock(&log.state).len())
    }

    /// True when the topic holds no entry.
    pub fn is_empty(&self, topic: &Topic) -> bool {
        self.len(topic) == 0
    }

    /// The partition count of a topic (the configured one until it is first used).
    pub fn partitions(&self, topic: &Topic) -> PartitionCount {
        self.existing_log(topic.as_str())
            .and_then(|log| PartitionCount::new(lock(&log.state).partitions()).ok())
            .unwrap_or_else(|| self.inner.config.partitions_of(topic.as_str()))
    }

    async fn append(&self, topic: &Topic, payloads: Vec<(u32, Payload)>) -> Result<()> {
        let log = self.log(topic.as_str());
        let capacity = self.inner.config.capacity;
        let deadline = tokio::time::Instant::now() + self.inner.config.publish_timeout;
        let mut payloads = payloads.into_iter().peekable();
        while payloads.peek().is_some() {
            let space = log.space.notified();
            let mut space = pin!(space);
            space.as_mut().enable();
            {
                let mut st = lock(&log.state);
                if st.len() >= capacity {
                    st.trim();
                }
                let mut len = st.len();
                let mut added = false;
                while len < capacity {
                    match payloads.next() {
                        Some((p, payload)) => {
                            st.parts[p as usize].entries.push_back(Stored {
                                payload,
                                at: SystemTime::now(),
                            });
                            len += 1;
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

    fn placed(&self, topic: &Topic, events: &[Event]) -> Vec<(u32, Payload)> {
        let partitions = self.partitions(topic);
        events
            .iter()
            .map(|e| {
                #[cfg(feature = "otel")]
                let e = &crate::otel::inject(e).into_owned();
                (
                    partition_for_event(e, partitions),
                    Payload::Event(e.clone()),
                )
            })
            .collect()
    }
}

#[async_trait]
impl Publisher for MemoryBus {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        let placed = self.placed(topic, std::slice::from_ref(event));
        self.append(topic, placed).await
    }

    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        let placed = self.placed(topic, events);
        self.append(topic, placed).await
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
        let config = &self.inner.config;
        membership::check_options(&options, config.lease_ttl)?;
        let log = self.log(topic.as_str());
        {
            let mut st = lock(&log.state);
            let ends: Vec<u64> = st
                .parts
                .iter()
                .map(|p| match options.start_from {
                    StartFrom::Earliest => p.base,
                    StartFrom::Latest => p.end(),
                })
                .collect();
            st.groups
                .entry(group.to_string())
                .or_insert_with(|| GroupState::new(ends.into_iter()));
        }
        let consumer: Arc<str> = options
            .consumer
            .clone()
            .unwrap_or_else(membership::default_consumer)
            .into();
        let member = membership::member_id(&consumer);
        let (holdings, lost) = Holdings::new();
        let (control, events) = partition_control();
        let coordinator = Arc::new(MemoryCoordinator {
            log: log.clone(),
            topic: topic.to_string(),
            group: group.to_string(),
            member: member.clone(),
            ttl: config.lease_ttl,
        });
        let (membership, joined) = Driver::new(
            coordinator,
            holdings.clone(),
            control,
            member.clone(),
            Timing::new(config.lease_ttl, options.handler_timeout),
            (topic.as_str(), group.as_str()),
        )
        .start(lost);
        let abort = membership.abort_handle();
        let transport = MemoryTransport {
            log,
            topic: topic.to_string(),
            group: group.to_string(),
            consumer,
            member,
            holdings,
            block: config.block,
            membership,
        };
        let subscription = Runner::new(transport, topic.clone(), group.clone(), handler, options)
            .partitioned(events)
            .abort_with(abort)
            .spawn();
        let _ = joined.await;
        Ok(subscription)
    }
}

#[async_trait]
impl DeadLetters for MemoryBus {
    async fn dead_letters(&self, topic: &Topic, limit: usize) -> Result<Vec<DeadLetter>> {
        let Some(log) = self.existing_log(topic.as_str()) else {
            return Ok(Vec::new());
        };
        let st = lock(&log.state);
        Ok(st.dlq.values().take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests;
