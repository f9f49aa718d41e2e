//! The standalone Redis connection: one RESP3 multiplexed connection carrying commands, the
//! notice subscription and client-side tracking of tag versions, reconnected here (not by a
//! connection manager, whose push forwarding is asynchronous).
//!
//! Why one connection: redis-rs hands every push (tracking invalidation, pub/sub message) to
//! our sender synchronously in the connection's read loop, before it resolves any reply that
//! follows it on the wire. Redis writes the invalidation of a key into a tracking client's
//! stream the moment the key changes. So when the reply to our `GET` of an entry arrives, the
//! invalidations of every tag version changed before that `GET` ran have been applied to the
//! local tag map: comparing the entry's header with the map then is as good as the atomic Lua
//! read, and a hit is one plain `GET`. Tag versions are never reused, which makes a version
//! fetched on a newer connection just as good for the comparison.
//!
//! A connection that is dead without a FIN (half-open) delivers neither replies nor pushes, so
//! tracking cannot go wrong through it; the notice heartbeat (a `PUBLISH` to a channel of our
//! own, which comes back on the same connection after every earlier message) detects it, drops
//! the connection and reconnects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{Error, Result};
use crate::store::Notice;

/// After this, a fetch still marked in progress is presumed abandoned.
const FETCH_STALE: Duration = Duration::from_secs(2);

/// Most tag versions kept locally; past it the map is cleared (always safe: a miss fetches).
const MAX_TRACKED: usize = 200_000;

fn redis_err(op: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |e| Error::backend("redis", op, e)
}

enum Slot {
    Known(String),
    /// Being fetched by the holder of this token, since then. A fetch abandoned midway (its
    /// caller timed out) is taken over after `FETCH_STALE`, so the tag is cached again.
    Fetching(u64, Instant),
}

#[derive(Default)]
struct TagMap {
    map: HashMap<Vec<u8>, Slot>,
    next: u64,
}

/// State shared with the push handler of every connection.
pub(crate) struct Shared {
    epoch: AtomicU64,
    tags: Mutex<TagMap>,
    subscribers: Mutex<Vec<UnboundedSender<Notice>>>,
    /// Generation of the connection that holds our subscription (0: none).
    subscribed_gen: AtomicU64,
    wants_notices: AtomicBool,
    pub(crate) channel: String,
    hb_channel: String,
    anchor: Instant,
}

impl Shared {
    fn tags(&self) -> std::sync::MutexGuard<'_, TagMap> {
        self.tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn broadcast(&self, n: Notice) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|tx| tx.send(n.clone()).is_ok());
    }

    fn on_push(&self, epoch: u64, info: PushInfo, link: &Weak<Link>) {
        if epoch != self.epoch.load(SeqCst) {
            return; // a replaced connection
        }
        match info.kind {
            PushKind::Invalidate => {
                let mut tags = self.tags();
                match info.data.first() {
                    Some(Value::Array(keys)) => {
                        for k in keys {
                            if let Value::BulkString(k) = k {
                                tags.map.remove(k.as_slice());
                            }
                        }
                    }
                    // A flush, or the server's tracking table overflowing: forget everything.
                    _ => tags.map.clear(),
                }
            }
            PushKind::Message => {
                if let Some(n) =
                    super::notice_of(&info.data, &self.channel, &self.hb_channel, self.anchor)
                {
                    self.broadcast(n);
                }
            }
            PushKind::Disconnection => {
                if let Some(link) = link.upgrade() {
                    link.lose(epoch);
                }
            }
            _ => {}
        }
    }
}

#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) epoch: u64,
    pub(crate) conn: MultiplexedConnection,
}

/// Settings of the link.
#[derive(Debug, Clone)]
pub(crate) struct LinkConfig {
    pub(crate) tracking: bool,
    pub(crate) heartbeat: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_delay: Duration,
}

pub(crate) struct Link {
    client: redis::Client,
    config: LinkConfig,
    tracking: AtomicBool,
    state: RwLock<Option<Live>>,
    reconnecting: AtomicBool,
    pub(crate) shared: Arc<Shared>,
    heartbeat_misses: AtomicU32,
}

impl Link {
    /// Connects (once; later losses reconnect in the background).
    pub(crate) async fn open(
        client: redis::Client,
        config: LinkConfig,
        channel: String,
    ) -> Result<Arc<Self>> {
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))
            .map_err(|e| Error::Config(format!("Redis client: {e}")))?;
        let hb_channel = format!("{channel}:hb:{}", uuid::Uuid::new_v4().simple());
        let link = Arc::new(Self {
            client,
            tracking: AtomicBool::new(config.tracking),
            config,
            state: RwLock::new(None),
            reconnecting: AtomicBool::new(false),
            shared: Arc::new(Shared {
                epoch: AtomicU64::new(0),
                tags: Mutex::new(TagMap::default()),
                subscribers: Mutex::new(Vec::new()),
                subscribed_gen: AtomicU64::new(0),
                wants_notices: AtomicBool::new(false),
                channel,
                hb_channel,
                anchor: Instant::now(),
            }),
            heartbeat_misses: AtomicU32::new(0),
        });
        let live = link.connect().await?;
        *link.state.write().unwrap_or_else(|p| p.into_inner()) = Some(live);
        Ok(link)
    }

    /// True when hits use tracked tag versions (a plain `GET`).
    pub(crate) fn tracking(&self) -> bool {
        self.tracking.load(SeqCst)
    }

    async fn connect(self: &Arc<Self>) -> Result<Live> {
        let epoch = {
            // A new generation: pushes of older connections are ignored from now on, and
            // tag versions fetched through them (no longer tracked) are forgotten.
            let mut tags = self.shared.tags();
            tags.map.clear();
            self.shared.epoch.fetch_add(1, SeqCst) + 1
        };
        let shared = self.shared.clone();
        let weak = Arc::downgrade(self);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_push_sender(move |info: PushInfo| {
                shared.on_push(epoch, info, &weak);
                Ok::<(), std::convert::Infallible>(())
            });
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(redis_err("connect"))?;
        if self.tracking() {
            let on: redis::RedisResult<()> = redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("OPTIN")
                .query_async(&mut conn)
                .await;
            if let Err(e) = on {
                self.tracking.store(false, SeqCst);
                tracing::warn!(error = %e, "Redis refused CLIENT TRACKING; cache hits use the Lua read instead");
            }
        }
        if self.shared.wants_notices.load(SeqCst) {
            self.subscribe(&mut conn, epoch).await?;
        }
        self.heartbeat_misses.store(0, SeqCst);
        Ok(Live { epoch, conn })
    }

    async fn subscribe(&self, conn: &mut MultiplexedConnection, epoch: u64) -> Result<()> {
        conn.subscribe(&[
            self.shared.channel.as_str(),
            self.shared.hb_channel.as_str(),
        ])
        .await
        .map_err(redis_err("subscribe"))?;
        // Messages published from now on reach us; earlier ones may be lost: tell the L1s.
        self.shared.subscribed_gen.store(epoch, SeqCst);
        self.shared.broadcast(Notice::Reset);
        Ok(())
    }

    /// The live connection, or an error (and a reconnect in the background).
    pub(crate) fn live(self: &Arc<Self>) -> Result<Live> {
        if let Some(live) = self.state.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(live);
        }
        self.ensure_reconnect();
        Err(Error::backend(
            "redis",
            "connect",
            "not connected to Redis; reconnecting",
        ))
    }

    /// Drops connection `epoch` (lost or declared dead) and reconnects.
    pub(crate) fn lose(self: &Arc<Self>, epoch: u64) {
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            if state.as_ref().is_none_or(|l| l.epoch != epoch) {
                return;
            }
            *state = None;
        }
        {
            let mut tags = self.shared.tags();
            tags.map.clear();
            // Pushes still coming from it are ignored.
            if self.shared.epoch.load(SeqCst) == epoch {
                self.shared.epoch.fetch_add(1, SeqCst);
            }
        }
        if self.shared.subscribed_gen.swap(0, SeqCst) != 0 {
            self.shared.broadcast(Notice::Down);
        }
        tracing::warn!("cache Redis connection lost; reconnecting");
        self.ensure_reconnect();
    }

    fn ensure_reconnect(self: &Arc<Self>) {
        if self.reconnecting.swap(true, SeqCst) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.reconnecting.store(false, SeqCst);
            return;
        };
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            let mut delay = weak
                .upgrade()
                .map_or(Duration::from_millis(100), |l| l.config.reconnect_delay);
            loop {
                let Some(link) = weak.upgrade() else { return };
                match link.connect().await {
                    Ok(live) => {
                        *link.state.write().unwrap_or_else(|p| p.into_inner()) = Some(live);
                        link.reconnecting.store(false, SeqCst);
                        tracing::info!("cache Redis connection re-established");
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "cache Redis reconnect failed; retrying"),
                }
                drop(link);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        });
    }

    /// Starts listening for notices (idempotent); the stream starts with `Reset` once the
    /// subscription is in place.
    pub(crate) fn listen(self: &Arc<Self>, tx: UnboundedSender<Notice>) {
        let live_gen = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|l| l.epoch);
        {
            let mut subs = self
                .shared
                .subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if live_gen.is_some()
                && self.shared.subscribed_gen.load(SeqCst) == live_gen.unwrap_or(0)
            {
                let _ = tx.send(Notice::Reset);
            }
            subs.push(tx);
        }
        if self.shared.wants_notices.swap(true, SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(link) = weak.upgrade()
                && let Ok(mut live) = link.live()
                && let Err(e) = link.subscribe(&mut live.conn, live.epoch).await
            {
                tracing::warn!(error = %e, "cache notices: SUBSCRIBE failed; reconnecting");
                link.lose(live.epoch);
            }
            heartbeat(weak).await;
        });
    }

    /// Tag versions for `tags` (key `{prefix}{tag}`), from the tracked map, fetching (and
    /// tracking) the missing ones in one round trip on `live`. `""` for a tag without a
    /// version. A hit on the map allocates nothing but the returned versions.
    pub(crate) async fn tag_versions(
        &self,
        live: &Live,
        prefix: &str,
        tags: &[&str],
    ) -> Result<Vec<String>> {
        let mut out: Vec<Option<String>> = vec![None; tags.len()];
        let mut missing: Vec<(usize, Option<u64>)> = Vec::new();
        let mut key = String::with_capacity(prefix.len() + 32);
        key.push_str(prefix);
        {
            let mut map = self.shared.tags();
            for (i, tag) in tags.iter().enumerate() {
                key.truncate(prefix.len());
                key.push_str(tag);
                match map.map.get(key.as_bytes()) {
                    Some(Slot::Known(v)) => out[i] = Some(v.clone()),
                    Some(Slot::Fetching(_, since)) if since.elapsed() < FETCH_STALE => {
                        missing.push((i, None));
                    }
                    _ => {
                        map.next += 1;
                        let token = map.next;
                        if map.map.len() >= MAX_TRACKED {
                            map.map.clear();
                        }
                        map.map.insert(
                            key.as_bytes().to_vec(),
                            Slot::Fetching(token, Instant::now()),
                        );
                        missing.push((i, Some(token)));
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(out.into_iter().map(Option::unwrap_or_default).collect());
        }
        let keys: Vec<String> = missing
            .iter()
            .map(|(i, _)| format!("{prefix}{}", tags[*i]))
            .collect();
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT").arg("CACHING").arg("YES").ignore();
        pipe.cmd("MGET").arg(&keys);
        let res: redis::RedisResult<(Vec<Option<String>>,)> =
            pipe.query_async(&mut live.conn.clone()).await;
        let mut map = self.shared.tags();
        // Only a fetch on the current connection is tracked from now on.
        let current = self.shared.epoch.load(SeqCst) == live.epoch;
        let (fetched, failed) = match res {
            Ok((v,)) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        for (n, (i, token)) in missing.iter().enumerate() {
            let v = fetched.as_ref().and_then(|f| f.get(n).cloned().flatten());
            if let Some(token) = token
                && matches!(map.map.get(keys[n].as_bytes()), Some(Slot::Fetching(t, _)) if t == token)
            {
                match (&v, current) {
                    (Some(v), true) => {
                        map.map
                            .insert(keys[n].as_bytes().to_vec(), Slot::Known(v.clone()));
                    }
                    _ => {
                        map.map.remove(keys[n].as_bytes());
                    }
                }
            }
            out[*i] = v;
        }
        drop(map);
        if let Some(e) = failed {
            return Err(Error::backend("redis", "read", e));
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Tag versions tracked locally now (for tests).
    pub(crate) fn tracked(&self) -> usize {
        self.shared
            .tags()
            .map
            .values()
            .filter(|s| matches!(s, Slot::Known(_)))
            .count()
    }
}

/// Publishes a heartbeat on our own channel every `heartbeat`; it comes back on the same
/// connection after every message published before it (`Notice::Synced`). Three heartbeats
/// without an answer declare the connection dead (a half-open connection never says so).
async fn heartbeat(weak: Weak<Link>) {
    loop {
        let Some(period) = weak.upgrade().map(|l| l.config.heartbeat) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(link) = weak.upgrade() else { return };
        let Ok(live) = link.live() else { continue };
        if link.shared.subscribed_gen.load(SeqCst) != live.epoch {
            // Not subscribed on this connection (a failed SUBSCRIBE): try again.
            let mut conn = live.conn.clone();
            if link.subscribe(&mut conn, live.epoch).await.is_err() {
                link.lose(live.epoch);
            }
            continue;
        }
        let nanos = Instant::now()
            .saturating_duration_since(link.shared.anchor)
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64;
        let cmd = redis::cmd("PUBLISH")
            .arg(&link.shared.hb_channel)
            .arg(nanos)
            .take();
        let mut conn = live.conn.clone();
        let publish = cmd.query_async::<i64>(&mut conn);
        let ok = matches!(
            tokio::time::timeout(period.max(Duration::from_millis(200)) * 2, publish).await,
            Ok(Ok(_))
        );
        if ok {
            link.heartbeat_misses.store(0, SeqCst);
        } else if link.heartbeat_misses.fetch_add(1, SeqCst) + 1 >= 3 {
            tracing::warn!("cache Redis connection silent (heartbeat unanswered); dropping it");
            link.lose(live.epoch);
        }
    }
}
