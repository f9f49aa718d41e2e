//! The Redis Cluster connection: redis-rs's cluster client (RESP3), with notices on sharded
//! pub/sub. The notice channel and our heartbeat channel share one hash tag, so they live on one
//! node, whose connection delivers both in publish order: when our heartbeat comes back, every
//! notice published before it has been delivered. Notices are published with `SPUBLISH` after
//! the write or invalidation script (a script may only publish to its own slot, and the notice
//! channel is not a tenant's), before the call returns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{Error, Result};
use crate::store::Notice;

pub(crate) struct ClusterShared {
    subscribers: Mutex<Vec<UnboundedSender<Notice>>>,
    pub(crate) channel: String,
    hb_channel: String,
    anchor: Instant,
    subscribed: AtomicBool,
    /// A node connection dropped: re-subscribe (idempotent) to learn whether ours survived.
    resubscribe: AtomicBool,
}

impl ClusterShared {
    fn broadcast(&self, n: Notice) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|tx| tx.send(n.clone()).is_ok());
    }

    fn on_push(&self, info: PushInfo) {
        match info.kind {
            PushKind::SMessage | PushKind::Message => {
                if let Some(n) =
                    super::notice_of(&info.data, &self.channel, &self.hb_channel, self.anchor)
                {
                    self.broadcast(n);
                }
            }
            PushKind::SSubscribe => {
                if matches!(info.data.first(), Some(Value::BulkString(ch)) if ch.as_slice() == self.channel.as_bytes())
                {
                    // (Re)subscribed: messages from now on reach us, earlier ones may be lost.
                    self.subscribed.store(true, SeqCst);
                    self.broadcast(Notice::Reset);
                }
            }
            PushKind::Disconnection => {
                // The node may have been ours: stop trusting until a fresh confirmation.
                self.broadcast(Notice::Down);
                self.resubscribe.store(true, SeqCst);
            }
            _ => {}
        }
    }
}

pub(crate) struct ClusterLink {
    pub(crate) conn: ClusterConnection,
    pub(crate) shared: Arc<ClusterShared>,
    heartbeat: Duration,
    listening: AtomicBool,
    misses: AtomicU64,
}

impl ClusterLink {
    pub(crate) async fn open(
        nodes: &[String],
        channel: String,
        heartbeat: Duration,
        connect_timeout: Duration,
    ) -> Result<Arc<Self>> {
        let hb_channel = format!("{channel}:hb:{}", uuid::Uuid::new_v4().simple());
        let shared = Arc::new(ClusterShared {
            subscribers: Mutex::new(Vec::new()),
            channel,
            hb_channel,
            anchor: Instant::now(),
            subscribed: AtomicBool::new(false),
            resubscribe: AtomicBool::new(false),
        });
        let push = shared.clone();
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(connect_timeout)
            .push_sender(move |info: PushInfo| {
                push.on_push(info);
                Ok::<(), std::convert::Infallible>(())
            })
            .build()
            .map_err(|e| Error::Config(format!("Redis Cluster nodes: {e}")))?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|e| Error::backend("redis", "connect", e))?;
        Ok(Arc::new(Self {
            conn,
            shared,
            heartbeat,
            listening: AtomicBool::new(false),
            misses: AtomicU64::new(0),
        }))
    }

    /// Starts listening (idempotent).
    pub(crate) fn listen(self: &Arc<Self>, tx: UnboundedSender<Notice>) {
        {
            let mut subs = self
                .shared
                .subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if self.shared.subscribed.load(SeqCst) {
                let _ = tx.send(Notice::Reset);
            }
            subs.push(tx);
        }
        if self.listening.swap(true, SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(link) = weak.upgrade() {
                link.subscribe().await;
            }
            heartbeat(weak).await;
        });
    }

    async fn subscribe(&self) {
        let mut conn = self.conn.clone();
        if let Err(e) = conn
            .ssubscribe(&[
                self.shared.channel.as_str(),
                self.shared.hb_channel.as_str(),
            ])
            .await
        {
            tracing::warn!(error = %e, "cache notices: SSUBSCRIBE failed; retrying");
            self.shared.resubscribe.store(true, SeqCst);
        }
    }

    /// Publishes a notice to every instance.
    pub(crate) async fn publish(&self, notice: &str) -> Result<()> {
        redis::cmd("SPUBLISH")
            .arg(&self.shared.channel)
            .arg(notice)
            .query_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
            .map_err(|e| Error::backend("redis", "publish", e))
    }
}

async fn heartbeat(weak: Weak<ClusterLink>) {
    loop {
        let Some(period) = weak.upgrade().map(|l| l.heartbeat) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(link) = weak.upgrade() else { return };
        if link.shared.resubscribe.swap(false, SeqCst) {
            link.subscribe().await;
            continue;
        }
        let nanos = Instant::now()
            .saturating_duration_since(link.shared.anchor)
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64;
        let cmd = redis::cmd("SPUBLISH")
            .arg(&link.shared.hb_channel)
            .arg(nanos)
            .take();
        let mut conn = link.conn.clone();
        let publish = cmd.query_async::<i64>(&mut conn);
        match tokio::time::timeout(period.max(Duration::from_millis(200)) * 2, publish).await {
            Ok(Ok(_)) => link.misses.store(0, SeqCst),
            _ => {
                if link.misses.fetch_add(1, SeqCst) + 1 >= 3 {
                    link.misses.store(0, SeqCst);
                    link.shared.broadcast(Notice::Down);
                    link.subscribe().await;
                }
            }
        }
    }
}
