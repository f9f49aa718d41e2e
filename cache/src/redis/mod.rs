//! [`RedisCacheStore`]: the Redis [`Store`], on a standalone (or replicated) Redis or a Redis
//! Cluster.
//!
//! Keys carry the tenant as a Cluster hash tag, so every script touches one slot:
//! entries `{prefix}:c:{{orgid}}:{type}:{key}`, tag versions `{prefix}:c:{{orgid}}:#tag:{tag}`
//! (`#` cannot appear in a type name, so the two never collide); notices go to
//! `{prefix}:c:{#}:notices`. The trade-off of one slot per tenant: a tenant's whole cache lives
//! on one shard (a very large tenant makes that shard hot, and a single-tenant application gets
//! no spreading at all), in exchange for atomic reads and guarded writes in one round trip and
//! O(1) tag invalidation. See `docs/cache.md`.
//!
//! Standalone: a hit is one plain `GET` (tag versions are tracked client-side, see `link.rs`),
//! or one `EVALSHA` of the read script when tracking is off. Cluster: one `EVALSHA`.

mod cluster;
mod link;
mod scripts;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use windlass_core::{Name, OrgId, redact_url, validate_key_segment};

use crate::error::{Error, Result};
use crate::format;
use crate::store::{
    EntryRef, Expect, Notice, Prepared, RawRead, Store, TAG_MARGIN, TAG_TTL, Write, fresh_version,
};

use cluster::ClusterLink;
use link::{Link, LinkConfig};

fn redis_err(op: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |e| Error::backend("redis", op, e)
}

/// Settings of a [`RedisCacheStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisCacheStoreConfig {
    /// Key prefix (default `windlass`): keys are `{prefix}:c:...`. A key segment.
    pub prefix: String,
    /// Standalone only: track tag versions client-side (RESP3 `CLIENT TRACKING`), so a hit is
    /// one plain `GET`. Default on; off, or refused by the server, hits run the read script.
    pub client_tracking: bool,
    /// Heartbeat period of the notice subscription (bounds how fast a deaf L1 is noticed).
    pub heartbeat: Duration,
    /// Deadline to establish a connection.
    pub connect_timeout: Duration,
    /// First delay between reconnection attempts (doubling up to 2 s).
    pub reconnect_delay: Duration,
}

impl Default for RedisCacheStoreConfig {
    fn default() -> Self {
        Self {
            prefix: "windlass".to_owned(),
            client_tracking: true,
            heartbeat: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(2),
            reconnect_delay: Duration::from_millis(100),
        }
    }
}

impl RedisCacheStoreConfig {
    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// Turns client-side tracking of tag versions on or off.
    pub fn client_tracking(mut self, on: bool) -> Self {
        self.client_tracking = on;
        self
    }
    /// Sets the heartbeat period.
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = period;
        self
    }
    /// Sets the connection deadline.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Sets the first reconnection delay.
    pub fn reconnect_delay(mut self, d: Duration) -> Self {
        self.reconnect_delay = d;
        self
    }

    fn validate(&self) -> Result<()> {
        validate_key_segment("key prefix", &self.prefix)?;
        for (what, d) in [
            ("heartbeat", self.heartbeat),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_delay", self.reconnect_delay),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(Error::Config(format!(
                    "{what} must be within (0, 1 h], got {d:?}"
                )));
            }
        }
        Ok(())
    }
}

enum Backend {
    Single(Arc<Link>),
    Cluster(Arc<ClusterLink>),
}

/// A connection of either kind, for scripts.
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A cache store on Redis: standalone, replicated, or a Redis Cluster. Cheap to clone.
#[derive(Clone)]
pub struct RedisCacheStore {
    inner: Arc<RedisInner>,
}

struct RedisInner {
    backend: Backend,
    prefix: String,
    channel: String,
    read: Script,
    read_many: Script,
    prepare: Script,
    write: Script,
    invalidate: Script,
}

impl fmt::Debug for RedisCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheStore")
            .field("prefix", &self.inner.prefix)
            .field(
                "cluster",
                &matches!(self.inner.backend, Backend::Cluster(_)),
            )
            .finish_non_exhaustive()
    }
}

impl RedisCacheStore {
    /// Connects to `url` (standalone) with the default configuration.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Config(format!("invalid Redis URL {}: {e}", redact_url(url))))?;
        Self::new(client).await
    }

    /// A store on a standalone (or replicated) Redis, default configuration. It opens its own
    /// RESP3 connection from `client`'s settings (Redis 6 or later).
    pub async fn new(client: redis::Client) -> Result<Self> {
        Self::with_config(client, RedisCacheStoreConfig::default()).await
    }

    /// A store on a standalone (or replicated) Redis.
    pub async fn with_config(client: redis::Client, config: RedisCacheStoreConfig) -> Result<Self> {
        config.validate()?;
        let prefix = format!("{}:c", config.prefix);
        let channel = format!("{prefix}:{{#}}:notices");
        let link = Link::open(
            client,
            LinkConfig {
                tracking: config.client_tracking,
                heartbeat: config.heartbeat,
                connect_timeout: config.connect_timeout,
                reconnect_delay: config.reconnect_delay,
            },
            channel.clone(),
        )
        .await?;
        Ok(Self::build(Backend::Single(link), prefix, channel))
    }

    /// A store on a Redis Cluster reached through any of `nodes` (`redis://host:port`).
    pub async fn cluster<S: AsRef<str>>(
        nodes: &[S],
        config: RedisCacheStoreConfig,
    ) -> Result<Self> {
        config.validate()?;
        let prefix = format!("{}:c", config.prefix);
        let channel = format!("{prefix}:{{#}}:notices");
        let nodes: Vec<String> = nodes.iter().map(|n| n.as_ref().to_owned()).collect();
        let link = ClusterLink::open(
            &nodes,
            channel.clone(),
            config.heartbeat,
            config.connect_timeout,
        )
        .await?;
        Ok(Self::build(Backend::Cluster(link), prefix, channel))
    }

    fn build(backend: Backend, prefix: String, channel: String) -> Self {
        Self {
            inner: Arc::new(RedisInner {
                backend,
                prefix,
                channel,
                read: Script::new(scripts::READ),
                read_many: Script::new(scripts::READ_MANY),
                prepare: Script::new(scripts::PREPARE),
                write: Script::new(scripts::WRITE),
                invalidate: Script::new(scripts::INVALIDATE),
            }),
        }
    }

    /// The Redis key of an entry: `{prefix}:c:{{orgid}}:{type}:{key}`.
    pub fn entry_key(&self, entry: EntryRef<'_>) -> String {
        format!(
            "{}:{{{}}}:{}:{}",
            self.inner.prefix, entry.org, entry.data_type, entry.key
        )
    }

    /// The Redis key holding a tag's version: `{prefix}:c:{{orgid}}:#tag:{tag}`.
    pub fn tag_key(&self, org: &OrgId, tag: &str) -> String {
        format!("{}{tag}", self.tag_prefix(org))
    }

    /// The notice channel (a shard channel on Cluster).
    pub fn notice_channel(&self) -> &str {
        &self.inner.channel
    }

    /// True when hits use client-side tracked tag versions (one plain `GET`).
    pub fn tracks_tag_versions(&self) -> bool {
        matches!(&self.inner.backend, Backend::Single(l) if l.tracking())
    }

    /// Tag versions tracked locally right now (0 without tracking). For tests.
    pub fn tracked_tag_versions(&self) -> usize {
        match &self.inner.backend {
            Backend::Single(l) => l.tracked(),
            Backend::Cluster(_) => 0,
        }
    }

    fn tag_prefix(&self, org: &OrgId) -> String {
        format!("{}:{{{org}}}:#tag:", self.inner.prefix)
    }

    fn conn(&self) -> Result<Conn> {
        match &self.inner.backend {
            Backend::Single(l) => Ok(Conn::Single(l.live()?.conn)),
            Backend::Cluster(c) => Ok(Conn::Cluster(c.conn.clone())),
        }
    }

    /// Cluster notices go out after the script (see `cluster.rs`).
    async fn publish_after(&self, notice: Option<&str>) -> Result<()> {
        match (&self.inner.backend, notice) {
            (Backend::Cluster(c), Some(n)) => c.publish(n).await,
            _ => Ok(()),
        }
    }

    fn script_notice<'a>(&self, notice: Option<&'a str>) -> &'a str {
        match &self.inner.backend {
            Backend::Single(_) => notice.unwrap_or(""),
            Backend::Cluster(_) => "",
        }
    }

    async fn tracked_read(&self, link: &Arc<Link>, entry: EntryRef<'_>) -> Result<Option<RawRead>> {
        let live = link.live()?;
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.entry_key(entry))
            .query_async(&mut live.conn.clone())
            .await
            .map_err(redis_err("read"))?;
        let Some(value) = value else {
            return Ok(None);
        };
        let prefix = self.tag_prefix(entry.org);
        let tags = format::tag_names(&value);
        let versions = link.tag_versions(&live, &prefix, &tags).await?;
        Ok(Some(RawRead::new(value, versions)))
    }
}

/// The notice a pub/sub push (`[channel, payload]`) carries: a message on the notice channel,
/// or our own heartbeat (nanoseconds since `anchor`) on `hb_channel`.
pub(crate) fn notice_of(
    data: &[Value],
    channel: &str,
    hb_channel: &str,
    anchor: std::time::Instant,
) -> Option<Notice> {
    let (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) =
        (data.first(), data.get(1))
    else {
        return None;
    };
    if ch.as_slice() == channel.as_bytes() {
        Some(Notice::Message(
            String::from_utf8_lossy(payload).into_owned(),
        ))
    } else if ch.as_slice() == hb_channel.as_bytes() {
        let nanos = std::str::from_utf8(payload).ok()?.parse::<u64>().ok()?;
        Some(Notice::Synced(anchor + Duration::from_nanos(nanos)))
    } else {
        None
    }
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

fn string(v: Value) -> String {
    bytes(v)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn unexpected(op: &'static str) -> Error {
    Error::backend("redis", op, "unexpected reply from a cache script")
}

/// `{value, {versions}}` or `{false}` / nil from the read scripts.
fn parse_read(v: Value) -> Result<Option<RawRead>> {
    let Value::Array(mut parts) = v else {
        return Ok(None);
    };
    if parts.len() == 1 {
        return Ok(None);
    }
    if parts.len() != 2 {
        return Err(unexpected("read"));
    }
    let versions = parts.pop().unwrap_or(Value::Nil);
    let Some(value) = parts.pop().and_then(bytes) else {
        return Ok(None);
    };
    let tag_versions = match versions {
        Value::Array(v) => v.into_iter().map(string).collect(),
        _ => Vec::new(),
    };
    Ok(Some(RawRead::new(value, tag_versions)))
}

#[async_trait]
impl Store for RedisCacheStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn read(&self, entry: EntryRef<'_>) -> Result<Option<RawRead>> {
        if let Backend::Single(link) = &self.inner.backend
            && link.tracking()
        {
            return self.tracked_read(link, entry).await;
        }
        let value: Value = self
            .inner
            .read
            .key(self.entry_key(entry))
            .arg(self.tag_prefix(entry.org))
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(redis_err("read"))?;
        parse_read(value)
    }

    async fn read_many(
        &self,
        org: &OrgId,
        data_type: &Name,
        keys: &[&str],
    ) -> Result<Vec<Option<RawRead>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let entry_keys: Vec<String> = keys
            .iter()
            .map(|k| self.entry_key(EntryRef::new(org, data_type, k)))
            .collect();
        if let Backend::Single(link) = &self.inner.backend
            && link.tracking()
        {
            let live = link.live()?;
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&entry_keys)
                .query_async(&mut live.conn.clone())
                .await
                .map_err(redis_err("read"))?;
            let prefix = self.tag_prefix(org);
            let mut tags: Vec<&str> = Vec::new();
            let mut spans = Vec::with_capacity(values.len());
            for v in &values {
                let start = tags.len();
                if let Some(v) = v {
                    tags.extend(format::tag_names(v));
                }
                spans.push(start..tags.len());
            }
            let versions = link.tag_versions(&live, &prefix, &tags).await?;
            return Ok(values
                .into_iter()
                .zip(spans)
                .map(|(v, span)| v.map(|v| RawRead::new(v, versions[span].to_vec())))
                .collect());
        }
        let mut inv = self.inner.read_many.prepare_invoke();
        for k in &entry_keys {
            inv.key(k);
        }
        inv.arg(self.tag_prefix(org));
        let value: Value = inv
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(redis_err("read"))?;
        let Value::Array(items) = value else {
            return Err(unexpected("read"));
        };
        if items.len() != keys.len() {
            return Err(unexpected("read"));
        }
        items.into_iter().map(parse_read).collect()
    }

    async fn prepare(&self, entry: EntryRef<'_>, tags: &[&str]) -> Result<Prepared> {
        let mut inv = self.inner.prepare.prepare_invoke();
        inv.key(self.entry_key(entry));
        inv.arg(TAG_TTL.as_millis() as u64);
        for tag in tags {
            inv.key(self.tag_key(entry.org, tag));
            inv.arg(fresh_version());
        }
        let value: Value = inv
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(redis_err("prepare"))?;
        let Value::Array(mut parts) = value else {
            return Err(unexpected("prepare"));
        };
        if parts.len() != 3 {
            return Err(unexpected("prepare"));
        }
        let now_ms = match parts.pop() {
            Some(Value::Int(ms)) => u64::try_from(ms).unwrap_or(0),
            _ => return Err(unexpected("prepare")),
        };
        let versions = match parts.pop() {
            Some(Value::Array(v)) if v.len() == tags.len() => v.into_iter().map(string).collect(),
            _ => return Err(unexpected("prepare")),
        };
        let write_id = parts.pop().map(string).unwrap_or_default();
        Ok(Prepared::new(write_id, versions, now_ms))
    }

    async fn write(&self, entry: EntryRef<'_>, write: Write<'_>) -> Result<bool> {
        let expect = match &write.expect {
            Expect::Any => "*",
            Expect::WriteId(id) => id.as_str(),
        };
        let ttl_ms = write.ttl.as_millis().clamp(1, i64::MAX as u128 / 4) as u64;
        let keep_ms = (write.ttl.saturating_add(TAG_MARGIN))
            .as_millis()
            .min(i64::MAX as u128 / 4) as u64;
        let mut inv = self.inner.write.key(self.entry_key(entry));
        inv.arg(expect)
            .arg(ttl_ms)
            .arg(write.value)
            .arg(write.not_after_ms.unwrap_or(0))
            .arg(&self.inner.channel)
            .arg(self.script_notice(write.notice))
            .arg(keep_ms);
        for (tag, version) in write.tags {
            inv.key(self.tag_key(entry.org, tag));
            inv.arg(version);
        }
        let done: i64 = inv
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(redis_err("write"))?;
        if done == 1 {
            self.publish_after(write.notice).await?;
        }
        Ok(done == 1)
    }

    async fn invalidate(&self, org: &OrgId, tags: &[&str], notice: Option<&str>) -> Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let mut inv = self.inner.invalidate.prepare_invoke();
        inv.arg(&self.inner.channel)
            .arg(self.script_notice(notice))
            .arg(TAG_TTL.as_millis() as u64);
        for tag in tags {
            inv.key(self.tag_key(org, tag));
            inv.arg(fresh_version());
        }
        let _: i64 = inv
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(redis_err("invalidate"))?;
        self.publish_after(notice).await
    }

    fn notices(&self) -> Option<BoxStream<'static, Notice>> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        match &self.inner.backend {
            Backend::Single(l) => l.listen(tx),
            Backend::Cluster(c) => c.listen(tx),
        }
        Some(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
    }
}
