//! A topic's partition count (recorded in Redis on first use, checked afterwards) and its
//! consumer groups.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use redis::Value;
use windlass_core::Topic;

use super::RedisBus;
use crate::error::{Error, Result};
use crate::partition::PartitionCount;
use crate::traits::StartFrom;

/// How long a checked partition count is trusted before it is read again (so a topic deleted
/// and re-created elsewhere is noticed).
const RECHECK: Duration = Duration::from_secs(10);

impl RedisBus {
    /// The partition count of `topic`: the configured one, recorded in `{prefix}:{topic}:meta`
    /// on first use. A topic recorded with another count is refused while any of its
    /// partition streams exists ([`Error::PartitionMismatch`]); an empty one is re-recorded.
    pub(crate) async fn topic_partitions(&self, topic: &Topic) -> Result<PartitionCount> {
        if let Some((n, at)) = self
            .inner
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic.as_str())
            && at.elapsed() < RECHECK
        {
            return Ok(*n);
        }
        let configured = self.inner.config.partitions_of(topic.as_str());
        let meta = self.inner.keys.meta(topic.as_str());
        let mut pipe = redis::pipe();
        pipe.cmd("HSETNX")
            .arg(&meta)
            .arg("partitions")
            .arg(configured.get())
            .ignore()
            .cmd("HGET")
            .arg(&meta)
            .arg("partitions");
        let (stored,): (Option<u32>,) = self
            .inner
            .conn
            .query_pipe("read topic partitions", &pipe)
            .await?;
        let stored = stored.unwrap_or(configured.get());
        if stored != configured.get() {
            let streams = try_join_all((0..stored).map(|p| {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(self.inner.keys.stream(topic.as_str(), p));
                async move { self.inner.conn.query::<u64>("check partitions", &cmd).await }
            }))
            .await?;
            if streams.iter().any(|n| *n > 0) {
                return Err(Error::PartitionMismatch {
                    topic: topic.to_string(),
                    stored,
                    configured: configured.get(),
                });
            }
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&meta).arg("partitions").arg(configured.get());
            self.inner
                .conn
                .query::<Value>("record topic partitions", &cmd)
                .await?;
        }
        self.inner
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string(), (configured, Instant::now()));
        Ok(configured)
    }

    /// Forgets the cached partition count of a topic (after deleting it).
    pub(crate) fn forget_topic(&self, topic: &Topic) {
        self.inner
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic.as_str());
    }

    /// Creates `group` on every partition of `topic` (and the streams) unless it exists, and
    /// lists it in the topic's groups.
    pub(crate) async fn ensure_group(
        &self,
        topic: &Topic,
        group: &str,
        partitions: PartitionCount,
        start: StartFrom,
    ) -> Result<()> {
        let start = match start {
            StartFrom::Earliest => "0",
            StartFrom::Latest => "$",
        };
        let mut cmd = redis::cmd("SADD");
        cmd.arg(self.inner.keys.groups(topic.as_str())).arg(group);
        self.inner
            .conn
            .query::<Value>("register group", &cmd)
            .await?;
        try_join_all((0..partitions.get()).map(|p| {
            let key = self.inner.keys.stream(topic.as_str(), p);
            async move { self.create_group(&key, group, start).await }
        }))
        .await?;
        Ok(())
    }

    /// `XGROUP CREATE key group start MKSTREAM`, an existing group being fine.
    pub(crate) async fn create_group(&self, key: &str, group: &str, start: &str) -> Result<()> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(key)
            .arg(group)
            .arg(start)
            .arg("MKSTREAM");
        match self
            .inner
            .conn
            .query::<Value>("create consumer group", &cmd)
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Backend { source, .. }) if source.to_string().contains("BUSYGROUP") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
