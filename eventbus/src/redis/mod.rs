//! The Redis Streams backend: [`RedisBus`] implements [`Publisher`](crate::Publisher),
//! [`Subscriber`](crate::Subscriber) and [`DeadLetters`].
//!
//! # On the wire
//! - Topic `t` is the stream `{prefix}:t` (prefix `windlass` by default, see
//!   [`RedisConfig::prefix`]). Each entry has one field, `event`, holding the CloudEvents 1.0
//!   structured JSON of the event ([`Event::to_json_vec`]), so any CloudEvents SDK reads it.
//! - A subscription is a member (consumer) of a Redis consumer group named after its
//!   [`Group`](crate::Group); the group is created with `XGROUP CREATE ... MKSTREAM` at `0` or `$`
//!   ([`StartFrom`](crate::StartFrom)).
//! - The dead-letter queue of topic `t` is the stream `{prefix}:t:dlq`; its entries hold
//!   `event` (the bytes exactly as read, even when they do not decode), `error`, `failed_at`
//!   (RFC 3339), `group`, `consumer` and `entry` (the id of the original entry). Moving an
//!   entry there is one `MULTI` (`XADD` to the DLQ + `XACK`).
//!
//! # Delivery
//! - New entries are read with a blocking `XREADGROUP ... BLOCK` on a connection of its own per
//!   subscription, so a long block never delays publishes or acknowledgements, which share one
//!   multiplexed connection per [`RedisBus`].
//! - On start (and after the read connection failed) a subscription first takes back the
//!   entries its consumer name still holds (`XPENDING` + `XCLAIM`): a consumer restarted under
//!   the same name re-reads what it had not acknowledged.
//! - Every [`RedisConfig::claim_interval`] it runs `XAUTOCLAIM` for entries of other members
//!   idle for at least [`RedisConfig::claim_idle`]: the entries of a dead consumer move to a
//!   live one.
//! - The delivery count Redis keeps per entry becomes [`Delivery::delivery_count`]; the
//!   runner dead-letters an entry delivered more often than the retry policy allows (a handler
//!   that crashes the process every time cannot loop forever).
//! - While a handler runs (retries and their backoff included), the subscription refreshes the
//!   idle time of the entries it holds (`XCLAIM ... JUSTID` every third of `claim_idle`, see
//!   [`RedisConfig::keep_alive`]), so slow handlers are not stolen by `XAUTOCLAIM` and handled
//!   twice. The trade-off: a consumer whose handler hangs forever keeps its entries until the
//!   subscription is shut down or aborted; turn `keep_alive` off to cap the time any entry
//!   can be held at `claim_idle` (at the price of duplicates for handlers slower than that).
//!
//! # Trimming
//! [`Trim`] (`MAXLEN ~` or `MINID ~` on every `XADD`) bounds the stream. Redis trims by
//! length or age only: **trimming can drop entries that some group has not read or not
//! acknowledged yet**. Size the bound well above the consumers' worst lag. Pending entries
//! whose data was trimmed are acknowledged and logged, never handed to the handler.
//!
//! # Failures
//! Publishing retries connection errors and timeouts with [`RedisConfig::publish_retry`],
//! then returns the error to the caller (never a silent drop); a retried publish may store the
//! event twice (consumers deduplicate by `source` + `id`). Every call has a deadline
//! ([`RedisConfig::timeout`]). A broken connection is re-created on the next call; the read
//! loop reconnects with backoff.
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

mod conn;
mod publisher;
mod subscriber;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use windlass_core::{RetryPolicy, Topic};

use crate::error::{Error, Result};
use crate::event::Event;
#[cfg(doc)]
use crate::runner::Delivery;
use crate::traits::{DeadLetter, DeadLetters};
use conn::Conn;

/// How streams are bounded on publish. See the module docs: trimming can drop entries that are
/// not acknowledged yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Trim {
    /// Streams grow until entries are deleted some other way (the default).
    #[default]
    None,
    /// `MAXLEN ~ n`: keep about the newest `n` entries.
    MaxLen(u64),
    /// `MINID ~ <now - age>`: drop entries older than `age` (entry ids carry their time).
    MaxAge(Duration),
}

/// Settings of a [`RedisBus`].
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Server URL, e.g. `redis://:password@host:6379/0`.
    pub url: String,
    /// Key prefix: topic `t` lives at `{prefix}:t`. Default `windlass`.
    pub prefix: String,
    /// Base of the `CLIENT SETNAME` names of this bus's connections; default
    /// `windlass.{prefix}`. Characters Redis does not allow in names become `_`.
    pub client_name: Option<String>,
    /// Stream bound applied on every publish.
    pub trim: Trim,
    /// `MAXLEN ~` of dead-letter streams (`None`: unbounded). Default 100 000.
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
    /// How long one `XREADGROUP` blocks waiting for new entries. Default 1 s. Shorter is not
    /// faster (a blocked read returns as soon as an entry arrives); it only bounds how late
    /// claims of idle entries run on a quiet stream.
    pub block: Duration,
    /// Idle time after which another member of the group may claim an entry. Default 30 s.
    pub claim_idle: Duration,
    /// How often a subscription looks for idle entries to claim. Default 5 s.
    pub claim_interval: Duration,
    /// Refresh the idle time of entries while their handler runs (default `true`); see the
    /// module docs for the trade-off.
    pub keep_alive: bool,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &windlass_core::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("client_name", &self.client_name)
            .field("trim", &self.trim)
            .field("dlq_max_len", &self.dlq_max_len)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_retry", &self.publish_retry)
            .field("block", &self.block)
            .field("claim_idle", &self.claim_idle)
            .field("claim_interval", &self.claim_interval)
            .field("keep_alive", &self.keep_alive)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "windlass".to_owned(),
            client_name: None,
            trim: Trim::None,
            dlq_max_len: Some(100_000),
            max_event_bytes: 1024 * 1024,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            publish_retry: RetryPolicy::default()
                .with_max_attempts(4)
                .with_delays(Duration::from_millis(50), Duration::from_secs(1)),
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            keep_alive: true,
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
    /// Sets the idle time after which entries are claimed from other members.
    pub fn claim_idle(mut self, d: Duration) -> Self {
        self.claim_idle = d;
        self
    }
    /// Sets how often idle entries are looked for.
    pub fn claim_interval(mut self, d: Duration) -> Self {
        self.claim_interval = d;
        self
    }
    /// Turns refreshing in-flight entries on or off.
    pub fn keep_alive(mut self, on: bool) -> Self {
        self.keep_alive = on;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.prefix.is_empty()
            || self
                .prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::Config(format!(
                "redis prefix {:?} must be non-empty, without spaces",
                self.prefix
            )));
        }
        if self.block.is_zero() || self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::Config(
                "redis block, timeout and connect_timeout must be above zero".into(),
            ));
        }
        if self.claim_idle < Duration::from_millis(10) || self.claim_interval.is_zero() {
            return Err(Error::Config(
                "redis claim_idle must be at least 10 ms and claim_interval above zero".into(),
            ));
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
/// acknowledging (each subscription adds a connection of its own for blocking reads).
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: RedisConfig,
    client: redis::Client,
    conn: Arc<Conn>,
    client_name: String,
    /// Subscriptions started per (topic, group), to name default consumers `{host}-{n}`.
    members: Mutex<HashMap<(String, String), u32>>,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A Redis client name made of allowed characters only.
fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

/// This host's name: `HOSTNAME`, else `/etc/hostname`, else `windlass`.
fn host_name() -> String {
    let from_env = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty());
    let name = from_env
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "windlass".to_owned());
    sanitize_name(&name)
}

impl RedisBus {
    /// A bus on the configured server. Does not connect yet: the first call does (see
    /// [`RedisBus::connect`] to fail fast).
    pub fn new(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            Error::Config(format!(
                "invalid redis URL {}: {e}",
                windlass_core::redact_url(&config.url)
            ))
        })?;
        let client_name = sanitize_name(
            &config
                .client_name
                .clone()
                .unwrap_or_else(|| format!("windlass.{}", config.prefix)),
        );
        let conn = Conn::new(
            client.clone(),
            client_name.clone(),
            config.connect_timeout,
            config.timeout,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                conn: Arc::new(conn),
                client_name,
                members: Mutex::new(HashMap::new()),
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

    /// The stream key of a topic: `{prefix}:{topic}`.
    pub fn stream_key(&self, topic: &Topic) -> String {
        format!("{}:{}", self.inner.config.prefix, topic)
    }

    /// The dead-letter stream key of a topic: `{prefix}:{topic}:dlq`.
    pub fn dlq_key(&self, topic: &Topic) -> String {
        format!("{}:{}:dlq", self.inner.config.prefix, topic)
    }

    /// The `CLIENT SETNAME` name of the shared connection; the blocking read connection of a
    /// subscription is named `{client_name}.read.{consumer}`.
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

#[async_trait]
impl DeadLetters for RedisBus {
    async fn dead_letters(&self, topic: &Topic, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.dlq_key(topic))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1));
        let reply: redis::Value = self.inner.conn.query("read dead letters", &cmd).await?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        Ok(wire::entries(&reply)
            .into_iter()
            .filter_map(|(id, fields)| {
                let fields = fields?;
                let text = |name| {
                    wire::field(&fields, name).map(|b| String::from_utf8_lossy(b).into_owned())
                };
                let payload = wire::field(&fields, "event")
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                let failed_at = text("failed_at")
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(|| DateTime::<Utc>::UNIX_EPOCH);
                Some(DeadLetter {
                    id,
                    topic: topic.to_string(),
                    group: text("group").unwrap_or_default(),
                    event: Event::from_json(&payload).ok(),
                    error: text("error").unwrap_or_default(),
                    failed_at,
                    payload,
                })
            })
            .collect())
    }
}
