//! Leases and members of one Redis consumer group, for the shared membership driver.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::try_join_all;
use redis::Value;
use tokio::sync::watch;

use super::RedisBus;
use super::conn::Conn;
use super::keys::Keys;
use super::scripts;
use super::transport::EntryToken;
use super::wire;
use crate::error::{Error, Result};
use crate::membership::{Coordinator, LeaseView};
use crate::runner::Assignment;

pub(crate) struct RedisCoordinator {
    pub(crate) bus: RedisBus,
    /// A connection of its own for the blocking read of the control stream.
    pub(crate) control: Conn,
    pub(crate) keys: Keys,
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) member: String,
    pub(crate) consumer: String,
    pub(crate) partitions: u32,
    pub(crate) ttl: Duration,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

impl RedisCoordinator {
    fn conn(&self) -> &Conn {
        &self.bus.inner.conn
    }

    fn lease_key(&self, p: u32) -> String {
        self.keys.lease(&self.topic, p, &self.group)
    }

    /// Hands `unstarted` back (count restored) and, with `free`, frees the lease. Fenced.
    pub(crate) async fn hand_back(
        &self,
        held: Assignment,
        unstarted: &[EntryToken],
        free: bool,
    ) -> Result<bool> {
        let mut inv = scripts::RELEASE.prepare_invoke();
        inv.key(self.lease_key(held.partition))
            .key(self.keys.stream(&self.topic, held.partition))
            .arg(&self.member)
            .arg(held.epoch)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(if free { "1" } else { "0" });
        for t in unstarted.iter().filter(|t| t.epoch == held.epoch) {
            inv.arg(&t.id).arg(t.count.saturating_sub(1));
        }
        let r: i64 = self.conn().script("hand back entries", &inv).await?;
        Ok(r == 1)
    }
}

#[async_trait]
impl Coordinator for RedisCoordinator {
    type Token = EntryToken;

    async fn heartbeat(&self) -> Result<Vec<String>> {
        let mut inv = scripts::HEARTBEAT.prepare_invoke();
        inv.key(self.keys.members(&self.topic, &self.group))
            .arg(&self.member)
            .arg(ms(self.ttl));
        self.conn().script("heartbeat", &inv).await
    }

    async fn leases(&self) -> Result<Vec<Option<LeaseView>>> {
        let rows = view(
            self.conn(),
            (0..self.partitions).map(|p| self.lease_key(p)).collect(),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|(owner, _epoch, left)| {
                (!owner.is_empty() && left > 0).then(|| LeaseView {
                    owner,
                    remaining: Duration::from_millis(left as u64),
                })
            })
            .collect())
    }

    async fn acquire(&self, partition: u32) -> Result<Option<u64>> {
        let mut inv = scripts::ACQUIRE.prepare_invoke();
        inv.key(self.lease_key(partition))
            .arg(&self.member)
            .arg(ms(self.ttl));
        let epoch: u64 = self.conn().script("acquire a partition", &inv).await?;
        Ok((epoch > 0).then_some(epoch))
    }

    async fn renew(&self, held: &[Assignment]) -> Result<Vec<bool>> {
        let conn = self.conn();
        let chunks: Vec<&[Assignment]> = if conn.is_cluster() {
            held.chunks(1).collect()
        } else {
            vec![held]
        };
        let replies = try_join_all(chunks.into_iter().map(|chunk| {
            let mut inv = scripts::RENEW.prepare_invoke();
            for a in chunk {
                inv.key(self.lease_key(a.partition));
            }
            inv.arg(&self.member).arg(ms(self.ttl));
            for a in chunk {
                inv.arg(a.epoch);
            }
            async move { conn.script::<Vec<i64>>("renew leases", &inv).await }
        }))
        .await?;
        Ok(replies.into_iter().flatten().map(|r| r == 1).collect())
    }

    async fn release(&self, held: Assignment, unstarted: Vec<EntryToken>) -> Result<()> {
        self.hand_back(held, &unstarted, true).await.map(drop)
    }

    async fn leave(&self) -> Result<()> {
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(self.keys.members(&self.topic, &self.group))
            .arg(&self.member);
        self.conn()
            .query::<Value>("leave the group", &cmd)
            .await
            .map(drop)
    }

    async fn nudge(&self) {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.keys.control(&self.topic, &self.group))
            .arg("MAXLEN")
            .arg("~")
            .arg(64)
            .arg("*")
            .arg("member")
            .arg(&self.member);
        if let Err(e) = self.conn().query::<Value>("nudge the group", &cmd).await {
            tracing::debug!(error = %e, "nudging the group failed; the others notice at their next renewal");
        }
    }

    async fn listen(self: Arc<Self>, changed: watch::Sender<u64>) {
        let key = self.keys.control(&self.topic, &self.group);
        let block = ms(self.bus.inner.config.block);
        let mut last: Option<String> = None;
        loop {
            let result = match &last {
                None => {
                    let mut cmd = redis::cmd("XREVRANGE");
                    cmd.arg(&key).arg("+").arg("-").arg("COUNT").arg(1);
                    self.control
                        .query::<Value>("read the control stream", &cmd)
                        .await
                        .map(|v| {
                            let id = wire::entries(&v)
                                .first()
                                .map(|(id, _)| id.clone())
                                .unwrap_or_else(|| "0-0".to_owned());
                            last = Some(id);
                        })
                }
                Some(from) => {
                    let mut cmd = redis::cmd("XREAD");
                    cmd.arg("COUNT")
                        .arg(64)
                        .arg("BLOCK")
                        .arg(block)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(from);
                    self.control
                        .query::<Value>("wait on the control stream", &cmd)
                        .await
                        .map(|v| {
                            if let Some((id, _)) = wire::read_reply(&v).last() {
                                last = Some(id.clone());
                                changed.send_modify(|n| *n = n.wrapping_add(1));
                            }
                        })
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "control stream read failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    async fn report(&self, held: &[u32]) {
        for &p in held {
            match partition_figures(&self.bus, &self.topic, p, &self.group).await {
                Ok(f) => crate::metrics::report_partition(
                    &self.topic,
                    &self.group,
                    p,
                    f.lag,
                    f.pending,
                    f.oldest_pending_age,
                ),
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "reading partition figures failed")
                }
            }
        }
    }
}

/// `(owner, epoch, ms left)` of leases (a single server reads them in one script, a cluster one
/// per lease).
pub(crate) async fn view(conn: &Conn, keys: Vec<String>) -> Result<Vec<(String, u64, i64)>> {
    let chunks: Vec<Vec<String>> = if conn.is_cluster() {
        keys.into_iter().map(|k| vec![k]).collect()
    } else {
        vec![keys]
    };
    let replies = try_join_all(chunks.into_iter().map(|chunk| {
        let mut inv = scripts::VIEW.prepare_invoke();
        for k in &chunk {
            inv.key(k);
        }
        async move { conn.script::<Value>("read leases", &inv).await }
    }))
    .await?;
    let mut out = Vec::new();
    for reply in &replies {
        for row in wire::array(reply) {
            let row = wire::array(row);
            let owner = row
                .first()
                .and_then(|v| wire::string(v))
                .unwrap_or_default();
            let epoch = row.get(1).and_then(|v| wire::int(v)).unwrap_or(0).max(0) as u64;
            let left = row.get(2).and_then(|v| wire::int(v)).unwrap_or(0);
            out.push((owner, epoch, left));
        }
    }
    Ok(out)
}

/// Lag, pending count and oldest pending age of one partition for one group.
pub(crate) struct Figures {
    pub(crate) lag: Option<u64>,
    pub(crate) pending: u64,
    pub(crate) oldest_pending_age: Option<Duration>,
}

pub(crate) async fn partition_figures(
    bus: &RedisBus,
    topic: &str,
    partition: u32,
    group: &str,
) -> Result<Figures> {
    let key = bus.inner.keys.stream(topic, partition);
    let mut pipe = redis::pipe();
    pipe.cmd("XINFO")
        .arg("GROUPS")
        .arg(&key)
        .cmd("XPENDING")
        .arg(&key)
        .arg(group)
        .cmd("TIME");
    let (groups, pending, time): (Value, Value, Vec<String>) = match bus
        .inner
        .conn
        .query_pipe("read partition figures", &pipe)
        .await
    {
        Ok(v) => v,
        Err(Error::Backend { source, .. }) if source.to_string().contains("no such key") => {
            return Ok(Figures {
                lag: Some(0),
                pending: 0,
                oldest_pending_age: None,
            });
        }
        Err(e) => return Err(e),
    };
    let mut lag = None;
    for row in wire::array(&groups) {
        let fields = wire::info_row(row);
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        if get("name").and_then(wire::string).as_deref() == Some(group) {
            lag = get("lag").and_then(wire::int).map(|l| l.max(0) as u64);
        }
    }
    let summary = wire::array(&pending);
    let count = summary
        .first()
        .and_then(|v| wire::int(v))
        .unwrap_or(0)
        .max(0) as u64;
    let now_ms = time
        .first()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        * 1000
        + time.get(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) / 1000;
    let oldest = summary
        .get(1)
        .and_then(|v| wire::string(v))
        .map(|id| Duration::from_millis(now_ms.saturating_sub(wire::stream_id(&id).0)));
    Ok(Figures {
        lag,
        pending: count,
        oldest_pending_age: oldest.filter(|_| count > 0),
    })
}
