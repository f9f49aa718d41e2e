//! The Redis Streams backend: [`RedisBus`] implements [`Publisher`](crate::Publisher),
//! [`Subscriber`](crate::Subscriber), [`DeadLetters`](crate::DeadLetters) and
//! [`BusAdmin`](crate::admin::BusAdmin), on one server or a Redis Cluster.
//!
//! # On the wire
//! - A topic has P partitions ([`RedisConfig::partitions`], per topic with
//!   [`RedisConfig::topic_partitions`]); partition `p` of topic `t` is the stream
//!   `{prefix}:{t:p}` (prefix `windlass` by default). Each entry has one field, `event`, holding
//!   the CloudEvents 1.0 structured JSON of the event ([`Event::to_json_vec`]), so any
//!   CloudEvents SDK reads it. The publisher puts an event in partition
//!   `murmur2(key) & 0x7fffffff mod P` ([`crate::partition`], Kafka's default partitioner), the
//!   key being the ordering key (`partitionkey`, else `subject`), else the event id.
//! - The partition count is recorded in `{prefix}:{t}:meta` on first use; a bus configured with
//!   another count for a topic that holds entries or groups is refused
//!   ([`Error::PartitionMismatch`], which says how to migrate).
//! - A consumer group is a Redis consumer group on every partition stream, created with
//!   `XGROUP CREATE ... MKSTREAM` at `0` or `$` ([`StartFrom`](crate::StartFrom)); its name is
//!   listed in `{prefix}:{t}:groups`.
//! - Dead letters of partition `p` go to the stream `{prefix}:{t:p}:dlq` with `event` (the bytes
//!   exactly as read, even when they do not decode), `error`, `failed_at` (RFC 3339), `group`,
//!   `consumer` and `entry` (the original entry id); their ids are `{p}/{stream id}`.
//! - The full key layout, with the Redis Cluster hash tags that keep every script on one slot,
//!   is in the `keys` module docs and `docs/eventbus.md`.
//!
//! # Ownership: one live member per partition
//! Every member of a group registers in `{prefix}:{t}:g:{group}:members` (a heartbeat), and
//! every partition has a lease hash `{prefix}:{t:p}:lease:{group}` with an `owner`, an `epoch`
//! (incremented by every acquisition) and an expiry by the server's clock
//! ([`RedisConfig::lease_ttl`], renewed five times per TTL). Members spread the partitions
//! evenly and move only what must move when members join, leave or die; a graceful leave
//! nudges the others through `{prefix}:{t}:g:{group}:control` so they take over at once.
//!
//! A member reads a partition only while it holds its lease: reads (`XREADGROUP` inside a Lua
//! script), acknowledgements (`XACK`), dead-letter moves (`XADD` to the DLQ + `XACK`) and
//! hand-backs are fenced by the epoch in one script each, so a member that lost its lease
//! (frozen, cut off) can neither read, acknowledge nor dead-letter. A new owner first claims the
//! partition's pending entries (`XPENDING` + `XCLAIM`, whoever held them) in stream order, then
//! reads new ones; consumers left without pending entries are removed (`XGROUP DELCONSUMER`).
//! A graceful handover waits for the old owner's handlers of the partition (bounded by
//! [`SubscribeOptions::handler_timeout`](crate::SubscribeOptions::handler_timeout)); a crashed
//! owner's partitions move when its lease expires. A member that cannot renew cancels its
//! handlers of the partition before its lease can expire by its own clock.
//!
//! The Redis delivery count of an entry becomes [`Delivery::delivery_count`]: an entry whose
//! handler crashed its process every time is dead-lettered once the retry policy is exhausted.
//! Entries handed back without being started get their count restored.
//!
//! # Reading
//! On a single server, a subscription waits for new entries with a blocking `XREAD` on a
//! connection of its own (publishes and acknowledgements share one multiplexed connection per
//! [`RedisBus`]). On a cluster, partitions live on different slots and cannot share one
//! blocking read: a subscription polls, backing off up to [`RedisConfig::cluster_poll`] while
//! idle.
//!
//! # Trimming
//! [`Trim`] (`MAXLEN ~` or `MINID ~` on every `XADD`, per partition stream) bounds the streams.
//! Redis trims by length or age only: **trimming can drop entries that some group has not read
//! or not acknowledged yet**. Size the bound well above the consumers' worst lag. Pending
//! entries whose data was trimmed are acknowledged and logged, never handed to the handler.
//!
//! # Failures
//! Publishing retries connection errors and timeouts with [`RedisConfig::publish_retry`],
//! then returns the error to the caller (never a silent drop); a retried publish may store the
//! event twice (consumers deduplicate by `source` + `id`). Every call has a deadline
//! ([`RedisConfig::timeout`]). A broken connection is re-created on the next call.
//!
//! ```no_run
//! use windlass_eventbus::redis::{RedisBus, RedisConfig};
//! use windlass_eventbus::{Event, Publisher, SubscriberExt};
//! use windlass_core::{Group, Topic};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = RedisBus::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
//! let invoices = Topic::new("invoices")?;
//! let sub = bus
//!     .subscribe_fn(&invoices, &Group::new("ledger")?, |event, _ctx| async move {
//!         println!("{} {}", event.ty(), event.id());
//!         Ok(())
//!     })
//!     .await?;
//! bus.publish(&invoices, &Event::builder("/billing", "invoice.paid").build()?).await?;
//! sub.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod admin;
mod conn;
mod coordinator;
mod keys;
mod publisher;
mod scripts;
mod subscriber;
#[cfg(test)]
mod tests;
mod topic;
mod transport;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use windlass_core::{RetryPolicy, Topic};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::membership::sanitize_name;
use crate::partition::PartitionCount;
#[cfg(doc)]
use crate::runner::Delivery;
use conn::{Conn, Target};
use keys::Keys;

/// How streams are bounded on publish. See the module docs: trimming can drop entries that are
/// not acknowledged yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Trim {
    /// Streams grow until entries are deleted some other way (the default).
    #[default]
    None,
    /// `MAXLEN ~ n` per partition: keep about the newest `n` entries of each.
    MaxLen(u64),
    /// `MINID ~ <now - age>`: drop entries older than `age` (entry ids carry their time).
    MaxAge(Duration),
}

/// Settings of a [`RedisBus`].
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Server URL, e.g. `redis://:password@host:6379/0`. Ignored when [`RedisConfig::cluster`]
    /// is set.
    pub url: String,
    /// Seed node URLs of a Redis Cluster; empty for a single server (the default).
    pub cluster: Vec<String>,
    /// Key prefix: partition `p` of topic `t` lives at `{prefix}:{t:p}`. Default `windlass`.
    pub prefix: String,
    /// Base of the `CLIENT SETNAME` names of this bus's connections; default
    /// `windlass.{prefix}`. Characters Redis does not allow in names become `_`.
    pub client_name: Option<String>,
    /// Partitions of a topic unless set per topic (default 16). The most members of one group
    /// that get work is the partition count.
    pub partitions: PartitionCount,
    /// Partition counts of given topics.
    pub topic_partitions: HashMap<String, PartitionCount>,
    /// How long a partition lease (and a member's registration) lasts without renewal: a
    /// crashed member's partitions move after at most this long. Default 10 s. Handlers must
    /// time out below it ([`SubscribeOptions::handler_timeout`](crate::SubscribeOptions)).
    pub lease_ttl: Duration,
    /// Stream bound applied on every publish.
    pub trim: Trim,
    /// `MAXLEN ~` of dead-letter streams (`None`: unbounded). Default 100 000 per partition.
    pub dlq_max_len: Option<u64>,
    /// Largest encoded event accepted by `publish` ([`Error::TooLarge`] beyond). Default 1 MiB.
    pub max_event_bytes: usize,
    /// Deadline of every call (connect excluded). Default 5 s.
    pub timeout: Duration,
    /// Deadline of establishing a connection. Default 2 s.
    pub connect_timeout: Duration,
    /// Retries of a publish after a connection error or timeout. Default: 4 attempts, 50 ms
    /// to 1 s apart.
    pub publish_retry: RetryPolicy,
    /// How long one blocking read waits for new entries. Default 1 s. Shorter is not faster
    /// (a blocked read returns as soon as an entry arrives).
    pub block: Duration,
    /// Longest pause between two polls of an idle subscription on a Redis Cluster. Default
    /// 50 ms.
    pub cluster_poll: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &windlass_core::redact_url(&self.url))
            .field(
                "cluster",
                &self
                    .cluster
                    .iter()
                    .map(|u| windlass_core::redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("prefix", &self.prefix)
            .field("client_name", &self.client_name)
            .field("partitions", &self.partitions)
            .field("topic_partitions", &self.topic_partitions)
            .field("lease_ttl", &self.lease_ttl)
            .field("trim", &self.trim)
            .field("dlq_max_len", &self.dlq_max_len)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_retry", &self.publish_retry)
            .field("block", &self.block)
            .field("cluster_poll", &self.cluster_poll)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            cluster: Vec::new(),
            prefix: "windlass".to_owned(),
            client_name: None,
            partitions: PartitionCount::new(16).expect("16 is a valid partition count"),
            topic_partitions: HashMap::new(),
            lease_ttl: Duration::from_secs(10),
            trim: Trim::None,
            dlq_max_len: Some(100_000),
            max_event_bytes: 1024 * 1024,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            publish_retry: RetryPolicy::default()
                .with_max_attempts(4)
                .with_delays(Duration::from_millis(50), Duration::from_secs(1)),
            block: Duration::from_secs(1),
            cluster_poll: Duration::from_millis(50),
        }
    }
}

impl RedisConfig {
    /// Default settings on the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
    /// Default settings on the Redis Cluster reached through these seed nodes.
    pub fn cluster<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            cluster: urls.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// Sets the base of the connections' client names.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
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
    /// Sets the lease TTL (checked at construction: at least 100 ms).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }
    /// Sets stream trimming.
    pub fn trim(mut self, trim: Trim) -> Self {
        self.trim = trim;
        self
    }
    /// Sets the bound of dead-letter streams.
    pub fn dlq_max_len(mut self, max: Option<u64>) -> Self {
        self.dlq_max_len = max;
        self
    }
    /// Sets the largest accepted encoded event.
    pub fn max_event_bytes(mut self, n: usize) -> Self {
        self.max_event_bytes = n;
        self
    }
    /// Sets the deadline of every call.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Sets the connect deadline.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Sets the publish retry policy.
    pub fn publish_retry(mut self, policy: RetryPolicy) -> Self {
        self.publish_retry = policy;
        self
    }
    /// Sets how long a read blocks.
    pub fn block(mut self, d: Duration) -> Self {
        self.block = d;
        self
    }
    /// Sets the longest idle poll pause on a cluster.
    pub fn cluster_poll(mut self, d: Duration) -> Self {
        self.cluster_poll = d;
        self
    }

    pub(crate) fn partitions_of(&self, topic: &str) -> PartitionCount {
        self.topic_partitions
            .get(topic)
            .copied()
            .unwrap_or(self.partitions)
    }

    fn validate(&self) -> Result<()> {
        if self.prefix.is_empty()
            || self.prefix.len() > 200
            || self
                .prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
        {
            return Err(Error::Config(format!(
                "redis prefix {:?} must be 1-200 bytes without spaces or braces (braces would \
                 change the keys' Redis Cluster hash slots)",
                self.prefix
            )));
        }
        if self.block.is_zero()
            || self.timeout.is_zero()
            || self.connect_timeout.is_zero()
            || self.cluster_poll.is_zero()
        {
            return Err(Error::Config(
                "redis block, timeout, connect_timeout and cluster_poll must be above zero".into(),
            ));
        }
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(Error::Config(format!(
                "redis lease_ttl {:?} is below the minimum of 100 ms",
                self.lease_ttl
            )));
        }
        if let Trim::MaxLen(0) = self.trim {
            return Err(Error::Config(
                "Trim::MaxLen(0) would drop every event".into(),
            ));
        }
        Ok(())
    }
}

/// Event bus on Redis Streams. Cheap to clone; clones share one connection for publishing and
/// acknowledging (each subscription adds connections of its own for blocking reads).
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: RedisConfig,
    target: Target,
    conn: Arc<Conn>,
    client_name: String,
    keys: Keys,
    /// Partition counts of the topics this bus used, and when they were checked.
    topics: Mutex<HashMap<String, (PartitionCount, std::time::Instant)>>,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// A bus on the configured server or cluster. Does not connect yet: the first call does
    /// (see [`RedisBus::connect`] to fail fast).
    pub fn new(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let target = if config.cluster.is_empty() {
            Target::Single(redis::Client::open(config.url.as_str()).map_err(|e| {
                Error::Config(format!(
                    "invalid redis URL {}: {e}",
                    windlass_core::redact_url(&config.url)
                ))
            })?)
        } else {
            Target::Cluster(config.cluster.clone())
        };
        let client_name = sanitize_name(
            &config
                .client_name
                .clone()
                .unwrap_or_else(|| format!("windlass.{}", config.prefix)),
        );
        let conn = Conn::new(
            &target,
            client_name.clone(),
            config.connect_timeout,
            config.timeout,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                keys: Keys::new(&config.prefix),
                config,
                target,
                conn: Arc::new(conn),
                client_name,
                topics: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A bus on the configured server, connected (and `PING`ed) now.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let bus = Self::new(config)?;
        let _: String = bus.inner.conn.query("ping", &redis::cmd("PING")).await?;
        Ok(bus)
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The stream key of partition `partition` of a topic: `{prefix}:{topic:partition}`.
    pub fn stream_key(&self, topic: &Topic, partition: u32) -> String {
        self.inner.keys.stream(topic.as_str(), partition)
    }

    /// The dead-letter stream key of partition `partition` of a topic:
    /// `{prefix}:{topic:partition}:dlq`.
    pub fn dlq_key(&self, topic: &Topic, partition: u32) -> String {
        self.inner.keys.dlq(topic.as_str(), partition)
    }

    /// The set of a topic's consumer group names.
    pub(crate) fn groups_key(&self, topic: &Topic) -> String {
        self.inner.keys.groups(topic.as_str())
    }

    /// The stream keys of every partition of a topic, in partition order (the topic's
    /// partition count is read from Redis, or recorded there on first use).
    pub async fn stream_keys(&self, topic: &Topic) -> Result<Vec<String>> {
        let n = self.topic_partitions(topic).await?;
        Ok((0..n.get()).map(|p| self.stream_key(topic, p)).collect())
    }

    /// Entries the topic's partition streams hold together (`XLEN` of each).
    pub async fn topic_len(&self, topic: &Topic) -> Result<u64> {
        let keys = self.stream_keys(topic).await?;
        let lens = futures::future::try_join_all(keys.iter().map(|k| {
            let mut cmd = redis::cmd("XLEN");
            cmd.arg(k);
            async move { self.inner.conn.query::<u64>("length", &cmd).await }
        }))
        .await?;
        Ok(lens.into_iter().sum())
    }

    /// The `CLIENT SETNAME` name of the shared connection; the blocking connections of a
    /// subscription are named `{client_name}.read.{consumer}` and
    /// `{client_name}.control.{consumer}`.
    pub fn client_name(&self) -> &str {
        &self.inner.client_name
    }

    /// Encodes an event, enforcing [`RedisConfig::max_event_bytes`].
    fn encode(&self, event: &Event) -> Result<Vec<u8>> {
        let bytes = event.to_json_vec();
        let limit = self.inner.config.max_event_bytes;
        if bytes.len() > limit {
            return Err(Error::TooLarge {
                id: event.id().to_owned(),
                size: bytes.len(),
                limit,
            });
        }
        Ok(bytes)
    }
}
