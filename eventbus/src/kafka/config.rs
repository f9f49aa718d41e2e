//! Options of the Kafka backend.
//!
//! Secrets stay out of `Debug` output and errors: librdkafka properties holding a secret
//! ([`is_secret_property`]: `sasl.password`, `ssl.key.password`, `sasl.oauthbearer.config`...)
//! print as `***`, broker addresses go through [`windlass_core::redact_url`], and errors from
//! librdkafka have any secret value replaced before they reach the caller.

use std::fmt;
use std::time::Duration;

use crate::error::Error;
use crate::kafka::codec::WireMode;

/// True for a librdkafka property whose value is a secret: any `*password*`, `*secret*`,
/// `sasl.oauthbearer.config`, `sasl.jaas.config`, an inline private key (`ssl.key.pem`,
/// `ssl_key`), or a keystore/certificate blob. Such values never appear in `Debug` output or
/// errors.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.contains("jaas")
        || k == "sasl.oauthbearer.config"
        || k == "ssl.key.pem"
        || k == "ssl_key"
        || k.contains("token")
}

/// How the dead-letter topic of a topic is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DlqNaming {
    /// `{topic}.dlq` (the default; `.` is a valid topic character).
    #[default]
    DotDlq,
    /// `{topic}-dlq`, the Kafka Connect / Spring habit.
    DashDlq,
}

impl DlqNaming {
    /// The DLQ topic name for `topic`.
    pub fn topic_for(self, topic: &str) -> String {
        match self {
            DlqNaming::DotDlq => format!("{topic}.dlq"),
            DlqNaming::DashDlq => format!("{topic}-dlq"),
        }
    }
}

/// Consumer-group timeouts. `None` keeps librdkafka's default (what real Kafka clusters want).
///
/// tansu holds a joining member's `JoinGroup` for the whole rebalance timeout
/// (`max.poll.interval.ms`, 300 s by default) before it assigns partitions; with
/// [`GroupTimeouts::tansu`] (6000 / 6000 / 1000 ms) a group gets its partitions in about 3 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GroupTimeouts {
    /// `session.timeout.ms`: a member silent this long is removed from the group.
    pub session_timeout_ms: Option<u32>,
    /// `max.poll.interval.ms`: also the rebalance timeout sent in `JoinGroup`.
    pub max_poll_interval_ms: Option<u32>,
    /// `heartbeat.interval.ms`.
    pub heartbeat_interval_ms: Option<u32>,
}

impl GroupTimeouts {
    /// The timeouts that make tansu assign a group quickly: 6000 / 6000 / 1000 ms.
    pub fn tansu() -> Self {
        Self {
            session_timeout_ms: Some(6000),
            max_poll_interval_ms: Some(6000),
            heartbeat_interval_ms: Some(1000),
        }
    }
}

/// Configuration of a [`KafkaBus`](crate::kafka::KafkaBus).
///
/// Its `Debug` output hides secrets: the values of [secret properties](is_secret_property)
/// print as `***` and broker URLs with credentials are redacted.
#[derive(Clone)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Binary (default) or structured CloudEvents mode for what this bus publishes. Consumers
    /// read both.
    pub wire_mode: WireMode,
    /// Largest record (key + value + headers) the publisher sends; bigger events fail with
    /// [`Error::TooLarge`](crate::Error::TooLarge) before reaching the broker. Also set as
    /// librdkafka's `message.max.bytes`. Default 1 000 000 (Kafka's default).
    pub max_message_bytes: usize,
    /// How long the producer keeps retrying one record (broker down, leader moving) before the
    /// publish fails (`message.timeout.ms`). Default 30 s.
    pub publish_timeout: Duration,
    /// How long a publish to a topic the broker does not know waits for it to appear before
    /// failing with [`Error::UnknownTopic`](crate::Error::UnknownTopic)
    /// (`topic.metadata.propagation.max.ms`). Default 5 s.
    pub unknown_topic_timeout: Duration,
    /// `linger.ms` of the producer. Default 1 ms.
    pub linger: Duration,
    /// Consumer-group timeouts (see [`GroupTimeouts::tansu`]).
    pub group_timeouts: GroupTimeouts,
    /// DLQ topic naming.
    pub dlq_naming: DlqNaming,
    /// Partitions of a DLQ topic the bus creates when it is missing. Default 1.
    pub dlq_partitions: i32,
    /// How long one consumer fetch waits for the first record. Default 100 ms.
    pub poll_wait: Duration,
    /// Records of one partition a subscriber keeps read and not yet committed (buffered,
    /// handled, or acknowledged behind an earlier offset still running) before it `pause`s
    /// the partition at the client; it is resumed below half of it. Bounds the memory a
    /// partition with a slow or hung handler can take, while the consumer keeps polling (and
    /// stays in its group). Default 2048.
    pub max_pending_per_partition: usize,
    /// librdkafka's `partition.assignment.strategy`. Default `cooperative-sticky`: a join or
    /// a leave moves only the partitions that change owner, the others keep flowing. Every
    /// member of a group must list a common strategy; moving an existing group from the eager
    /// `range,roundrobin` needs a rolling restart through `cooperative-sticky,range` (see
    /// docs/kafka.md).
    pub assignment_strategy: String,
    /// How long `subscribe` waits for the group to assign this member its partitions before
    /// returning anyway (consumption then starts whenever the rebalance completes). Default
    /// 30 s.
    pub assignment_wait: Duration,
    /// Prefix of the Kafka consumer group ids (`{prefix}{group}`). Kafka groups are
    /// cluster-wide, unlike Redis groups (per stream): a prefix keeps applications (or test
    /// runs) sharing a cluster apart. Default none.
    pub group_prefix: String,
    /// Extra librdkafka properties for every client (applied last, so they win).
    pub client_properties: Vec<(String, String)>,
    /// Extra librdkafka properties for the producer only (applied after
    /// `client_properties`): `compression.type`, `batch.size`, `enable.gapless.guarantee`...
    pub producer_properties: Vec<(String, String)>,
}

/// `bootstrap.servers` with any `user:password@` of each entry redacted.
fn redacted_brokers(brokers: &str) -> String {
    brokers
        .split(',')
        .map(|b| windlass_core::redact_url(b.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |props: &[(String, String)]| -> Vec<(String, String)> {
            props
                .iter()
                .map(|(k, v)| {
                    let v = if is_secret_property(k) { "***" } else { v };
                    (k.clone(), v.to_owned())
                })
                .collect()
        };
        f.debug_struct("KafkaConfig")
            .field("brokers", &redacted_brokers(&self.brokers))
            .field("wire_mode", &self.wire_mode)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("publish_timeout", &self.publish_timeout)
            .field("unknown_topic_timeout", &self.unknown_topic_timeout)
            .field("linger", &self.linger)
            .field("group_timeouts", &self.group_timeouts)
            .field("dlq_naming", &self.dlq_naming)
            .field("dlq_partitions", &self.dlq_partitions)
            .field("poll_wait", &self.poll_wait)
            .field("max_pending_per_partition", &self.max_pending_per_partition)
            .field("assignment_strategy", &self.assignment_strategy)
            .field("assignment_wait", &self.assignment_wait)
            .field("group_prefix", &self.group_prefix)
            .field("client_properties", &shown(&self.client_properties))
            .field("producer_properties", &shown(&self.producer_properties))
            .finish()
    }
}

/// An error whose text had the configuration's secrets removed.
#[derive(Debug)]
struct Scrubbed(String);

impl fmt::Display for Scrubbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Scrubbed {}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            wire_mode: WireMode::Binary,
            max_message_bytes: 1_000_000,
            publish_timeout: Duration::from_secs(30),
            unknown_topic_timeout: Duration::from_secs(5),
            linger: Duration::from_millis(1),
            group_timeouts: GroupTimeouts::default(),
            dlq_naming: DlqNaming::DotDlq,
            dlq_partitions: 1,
            poll_wait: Duration::from_millis(100),
            max_pending_per_partition: 2048,
            assignment_strategy: "cooperative-sticky".to_owned(),
            assignment_wait: Duration::from_secs(30),
            group_prefix: String::new(),
            client_properties: Vec::new(),
            producer_properties: Vec::new(),
        }
    }
}

impl KafkaConfig {
    /// A configuration for `brokers` with defaults for the rest.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            ..Self::default()
        }
    }
    /// Sets the wire mode.
    pub fn wire_mode(mut self, mode: WireMode) -> Self {
        self.wire_mode = mode;
        self
    }
    /// Sets the largest record size.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }
    /// Sets how long one publish may retry.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }
    /// Sets how long a publish waits for an unknown topic.
    pub fn unknown_topic_timeout(mut self, timeout: Duration) -> Self {
        self.unknown_topic_timeout = timeout;
        self
    }
    /// Sets the producer's `linger.ms`.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }
    /// Sets the consumer-group timeouts.
    pub fn group_timeouts(mut self, timeouts: GroupTimeouts) -> Self {
        self.group_timeouts = timeouts;
        self
    }
    /// Sets the DLQ naming.
    pub fn dlq_naming(mut self, naming: DlqNaming) -> Self {
        self.dlq_naming = naming;
        self
    }
    /// Sets how long a consumer fetch waits.
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait;
        self
    }
    /// Sets how many records of one partition a subscriber keeps read and not yet committed
    /// before pausing it (at least 2).
    pub fn max_pending_per_partition(mut self, n: usize) -> Self {
        self.max_pending_per_partition = n.max(2);
        self
    }
    /// Sets librdkafka's `partition.assignment.strategy` for subscribers
    /// (`cooperative-sticky` by default; `range,roundrobin` is librdkafka's eager default).
    pub fn assignment_strategy(mut self, strategy: impl Into<String>) -> Self {
        self.assignment_strategy = strategy.into();
        self
    }
    /// Sets how long `subscribe` waits for the first partition assignment.
    pub fn assignment_wait(mut self, wait: Duration) -> Self {
        self.assignment_wait = wait;
        self
    }
    /// Sets the consumer group id prefix.
    pub fn group_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.group_prefix = prefix.into();
        self
    }
    /// Adds a librdkafka property for every client this bus makes.
    pub fn client_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client_properties.push((key.into(), value.into()));
        self
    }

    /// The brokers list as it may be shown (credentials redacted).
    pub fn redacted_brokers(&self) -> String {
        redacted_brokers(&self.brokers)
    }

    /// `text` with every secret of this configuration (secret property values, broker
    /// passwords) replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        let mut secrets: Vec<&str> = self
            .client_properties
            .iter()
            .chain(&self.producer_properties)
            .filter(|(k, v)| is_secret_property(k) && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for secret in secrets {
            out = out.replace(secret, "***");
        }
        if out.contains(&self.brokers) && self.brokers.contains('@') {
            out = out.replace(&self.brokers, &redacted_brokers(&self.brokers));
        }
        out
    }

    /// `e` with its backend error's text scrubbed of this configuration's secrets (errors
    /// from librdkafka may quote configuration values).
    pub(crate) fn scrubbed(&self, e: Error) -> Error {
        match e {
            Error::Backend {
                backend,
                op,
                source,
            } => {
                let text = self.scrub(&source.to_string());
                if text == source.to_string() {
                    Error::Backend {
                        backend,
                        op,
                        source,
                    }
                } else {
                    Error::backend(backend, op, Scrubbed(text))
                }
            }
            Error::Config(msg) => Error::Config(self.scrub(&msg)),
            other => other,
        }
    }

    /// Adds a librdkafka property for the producer only.
    pub fn producer_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer_properties.push((key.into(), value.into()));
        self
    }

    pub(crate) fn base(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    pub(crate) fn finish(&self, mut c: rdkafka::ClientConfig) -> rdkafka::ClientConfig {
        for (k, v) in &self.client_properties {
            c.set(k, v);
        }
        c
    }

    pub(crate) fn producer_config(&self) -> rdkafka::ClientConfig {
        let mut c = self.base();
        // Kafka's default partitioner (Java client: murmur2 of the key), so a key lands on the
        // same partition index as with every Java producer and on the Redis bus.
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set(
                "message.timeout.ms",
                self.publish_timeout.as_millis().max(1).to_string(),
            )
            .set(
                "topic.metadata.propagation.max.ms",
                self.unknown_topic_timeout.as_millis().max(1).to_string(),
            )
            .set("linger.ms", self.linger.as_millis().to_string())
            .set(
                "message.max.bytes",
                self.max_message_bytes.max(1000).to_string(),
            );
        let mut c = self.finish(c);
        for (k, v) in &self.producer_properties {
            c.set(k, v);
        }
        c
    }

    pub(crate) fn consumer_config(
        &self,
        group: &str,
        client_id: &str,
        earliest: bool,
    ) -> rdkafka::ClientConfig {
        let mut c = self.base();
        c.set("group.id", format!("{}{group}", self.group_prefix))
            .set("client.id", client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", &self.assignment_strategy)
            .set(
                "auto.offset.reset",
                if earliest { "earliest" } else { "latest" },
            );
        let t = self.group_timeouts;
        if let Some(v) = t.session_timeout_ms {
            c.set("session.timeout.ms", v.to_string());
        }
        if let Some(v) = t.max_poll_interval_ms {
            c.set("max.poll.interval.ms", v.to_string());
        }
        if let Some(v) = t.heartbeat_interval_ms {
            c.set("heartbeat.interval.ms", v.to_string());
        }
        self.finish(c)
    }
}
