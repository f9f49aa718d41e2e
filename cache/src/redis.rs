//! [`RedisStore`]: the Redis [`Store`]. Every operation is one Lua script run with `EVALSHA`
//! (loaded on first use), so a hit is one round trip: the script GETs the entry, finds its tags
//! in the header and MGETs their versions. Writes compare the entry's write id and the tag
//! versions in the same script (the generation guard); invalidations `INCR` the tag versions and
//! `PUBLISH` a notice atomically.
//!
//! Keys: entries `{prefix}:c:{orgid}:{type}:{key}`; tag versions `{prefix}:c:{orgid}:#tag:{tag}`
//! (`#` cannot appear in a type name, so the two never collide); notices go to the pub/sub
//! channel `{prefix}:c:#notices`. The scripts touch tag keys they do not declare, so the store
//! needs a standalone (or replicated) Redis, not Redis Cluster. Tag keys have no TTL: keep
//! `maxmemory-policy` to a `volatile-*` policy (entries always have a TTL) or `noeviction`; a tag
//! key evicted anyway only turns its entries into misses (versions are random, never reused).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use windlass_core::{OrgId, redact_url, validate_key_segment};

use crate::error::{Error, Result};
use crate::store::{EntryRef, Expect, Notice, RawRead, Store, Write, fresh_version};

const READ: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
if string.sub(v, 1, 5) ~= 'WLC1 ' then return {v, {}} end
local hend = string.find(v, '\n\n', 1, true)
if not hend then return {v, {}} end
local keys = {}
for tag in string.gmatch(string.sub(v, 1, hend), '\nT %S+ ([^\n]+)') do
  keys[#keys + 1] = ARGV[1] .. tag
end
if #keys == 0 then return {v, {}} end
local vers = redis.call('MGET', unpack(keys))
for i = 1, #keys do
  if not vers[i] then vers[i] = '' end
end
return {v, vers}
"#;

// ARGV: tag key prefix, then (tag, fresh random version) pairs.
const TAG_VERSIONS: &str = r#"
local out = {}
local n = (#ARGV - 1) / 2
for i = 1, n do
  local k = ARGV[1] .. ARGV[2 * i]
  local v = redis.call('GET', k)
  if not v then
    v = ARGV[2 * i + 1]
    redis.call('SET', k, v)
  end
  out[i] = v
end
return out
"#;

// KEYS[1] entry. ARGV: tag key prefix, expected write id ('*' any, '' absent), ttl ms, value,
// channel, notice ('' none), then (tag, version) pairs.
const WRITE: &str = r#"
if ARGV[2] ~= '*' then
  local cur = redis.call('GET', KEYS[1])
  local id = ''
  if cur then
    id = string.match(cur, '^WLC1 (%S+)') or '?'
  end
  if id ~= ARGV[2] then return 0 end
end
local n = (#ARGV - 6) / 2
for i = 1, n do
  local v = redis.call('GET', ARGV[1] .. ARGV[5 + 2 * i])
  if v ~= ARGV[6 + 2 * i] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return 1
"#;

// ARGV: tag key prefix, channel, notice ('' none), tags...
const INVALIDATE: &str = r#"
for i = 4, #ARGV do
  redis.call('INCR', ARGV[1] .. ARGV[i])
end
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return #ARGV - 3
"#;

/// Settings of a [`RedisStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisStoreOptions {
    /// Key prefix (default `windlass`): keys are `{prefix}:c:...`.
    pub prefix: String,
    /// Delay between attempts to re-subscribe to notices after the connection dropped.
    pub resubscribe_delay: Duration,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        Self {
            prefix: "windlass".to_owned(),
            resubscribe_delay: Duration::from_millis(200),
        }
    }
}

impl RedisStoreOptions {
    /// Sets the key prefix (a key segment: letters, digits, `._-:/`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// Sets the delay between re-subscription attempts.
    pub fn resubscribe_delay(mut self, delay: Duration) -> Self {
        self.resubscribe_delay = delay;
        self
    }
}

/// A cache store on Redis (standalone or replicated). Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<RedisInner>,
}

struct RedisInner {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    channel: String,
    options: RedisStoreOptions,
    read: Script,
    tag_versions: Script,
    write: Script,
    invalidate: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

fn redis_err(op: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |e| Error::backend("redis", op, e)
}

impl RedisStore {
    /// Connects to `url` with default options.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Config(format!("invalid Redis URL {}: {e}", redact_url(url))))?;
        Self::new(client, RedisStoreOptions::default()).await
    }

    /// A store on `client` (one multiplexed, self-reconnecting connection, plus one pub/sub
    /// connection per [`Store::notices`] stream).
    pub async fn new(client: redis::Client, options: RedisStoreOptions) -> Result<Self> {
        validate_key_segment("key prefix", &options.prefix)?;
        let conn = ConnectionManager::new(client.clone())
            .await
            .map_err(redis_err("connect"))?;
        Ok(Self::with_connection(client, conn, options))
    }

    /// A store on an existing connection manager (shared with other users of the client).
    pub fn with_connection(
        client: redis::Client,
        conn: ConnectionManager,
        options: RedisStoreOptions,
    ) -> Self {
        let prefix = format!("{}:c", options.prefix);
        Self {
            inner: Arc::new(RedisInner {
                client,
                conn,
                channel: format!("{prefix}:#notices"),
                prefix,
                options,
                read: Script::new(READ),
                tag_versions: Script::new(TAG_VERSIONS),
                write: Script::new(WRITE),
                invalidate: Script::new(INVALIDATE),
            }),
        }
    }

    /// The Redis key of an entry: `{prefix}:c:{orgid}:{type}:{key}`.
    pub fn entry_key(&self, entry: EntryRef<'_>) -> String {
        format!(
            "{}:{}:{}:{}",
            self.inner.prefix, entry.org, entry.data_type, entry.key
        )
    }

    /// The Redis key holding a tag's version: `{prefix}:c:{orgid}:#tag:{tag}`.
    pub fn tag_key(&self, org: &OrgId, tag: &str) -> String {
        format!("{}{tag}", self.tag_prefix(org))
    }

    fn tag_prefix(&self, org: &OrgId) -> String {
        format!("{}:{org}:#tag:", self.inner.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
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

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn read(&self, entry: EntryRef<'_>) -> Result<Option<RawRead>> {
        let value: Value = self
            .inner
            .read
            .key(self.entry_key(entry))
            .arg(self.tag_prefix(entry.org))
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err("read"))?;
        let Value::Array(mut parts) = value else {
            return Ok(None);
        };
        if parts.len() != 2 {
            return Err(Error::backend(
                "redis",
                "read",
                "unexpected reply from the read script",
            ));
        }
        let versions = parts.pop().unwrap_or(Value::Nil);
        let Some(value) = parts.pop().and_then(bytes) else {
            return Ok(None);
        };
        let tag_versions = match versions {
            Value::Array(v) => v.into_iter().map(string).collect(),
            _ => Vec::new(),
        };
        Ok(Some(RawRead {
            value,
            tag_versions,
        }))
    }

    async fn tag_versions(&self, org: &OrgId, tags: &[&str]) -> Result<Vec<String>> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.inner.tag_versions.prepare_invoke();
        inv.arg(self.tag_prefix(org));
        for tag in tags {
            inv.arg(*tag).arg(fresh_version());
        }
        let value: Value = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err("tag_versions"))?;
        match value {
            Value::Array(v) if v.len() == tags.len() => Ok(v.into_iter().map(string).collect()),
            _ => Err(Error::backend(
                "redis",
                "tag_versions",
                "unexpected reply from the tag script",
            )),
        }
    }

    async fn write(&self, entry: EntryRef<'_>, write: Write<'_>) -> Result<bool> {
        let expect = match &write.expect {
            Expect::Any => "*",
            Expect::WriteId(id) => id.as_str(),
        };
        let ttl_ms = write.ttl.as_millis().clamp(1, i64::MAX as u128) as u64;
        let mut inv = self.inner.write.key(self.entry_key(entry));
        inv.arg(self.tag_prefix(entry.org))
            .arg(expect)
            .arg(ttl_ms)
            .arg(write.value)
            .arg(&self.inner.channel)
            .arg(write.notice.unwrap_or(""));
        for (tag, version) in write.tags {
            inv.arg(tag).arg(version);
        }
        let done: i64 = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err("write"))?;
        Ok(done == 1)
    }

    async fn invalidate(&self, org: &OrgId, tags: &[&str], notice: Option<&str>) -> Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let mut inv = self.inner.invalidate.prepare_invoke();
        inv.arg(self.tag_prefix(org))
            .arg(&self.inner.channel)
            .arg(notice.unwrap_or(""));
        for tag in tags {
            inv.arg(*tag);
        }
        let _: i64 = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err("invalidate"))?;
        Ok(())
    }

    fn notices(&self) -> Option<BoxStream<'static, Notice>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Notice>(1024);
        let client = self.inner.client.clone();
        let channel = self.inner.channel.clone();
        let delay = self.inner.options.resubscribe_delay;
        tokio::spawn(async move {
            loop {
                if tx.is_closed() {
                    return;
                }
                let mut pubsub = match client.get_async_pubsub().await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "cache notices: cannot connect to Redis; retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                };
                if let Err(e) = pubsub.subscribe(&channel).await {
                    tracing::warn!(error = %e, "cache notices: SUBSCRIBE failed; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                // Anything published while we were not subscribed is lost: tell the L1.
                if tx.send(Notice::Reset).await.is_err() {
                    return;
                }
                let mut stream = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                let text = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                                if tx.send(Notice::Message(text)).await.is_err() {
                                    return;
                                }
                            }
                            None => break,
                        },
                        () = tx.closed() => return,
                    }
                }
                // The connection dropped: until we are subscribed again, nothing is trusted.
                if tx.send(Notice::Down).await.is_err() {
                    return;
                }
                tracing::warn!("cache notices: Redis pub/sub connection lost; resubscribing");
                tokio::time::sleep(delay).await;
            }
        });
        Some(tokio_stream(rx))
    }
}

fn tokio_stream(rx: tokio::sync::mpsc::Receiver<Notice>) -> BoxStream<'static, Notice> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|n| (n, rx)) }).boxed()
}
