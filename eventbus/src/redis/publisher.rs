//! Publishing: `XADD {prefix}:{topic:p} [MAXLEN ~ n | MINID ~ id] * event <json>` to the
//! partition of the event's key, pipelined for batches (one pipeline per hash slot on a
//! cluster, sent together), retried on connection errors, never dropped silently.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures::future::try_join_all;
use windlass_core::Topic;

use super::conn::is_connection_error;
use super::{RedisBus, Trim};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::partition::{PartitionCount, partition_for_event};
use crate::traits::Publisher;

impl RedisBus {
    /// The trimming arguments of an `XADD` (before the `*`).
    pub(crate) fn trim_args(&self) -> Vec<String> {
        match self.inner.config.trim {
            Trim::None => Vec::new(),
            Trim::MaxLen(n) => vec!["MAXLEN".into(), "~".into(), n.to_string()],
            Trim::MaxAge(age) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let min = now.saturating_sub(age).as_millis();
                vec!["MINID".into(), "~".into(), format!("{min}-0")]
            }
        }
    }

    /// One `XADD` of already encoded bytes, with the configured trimming.
    pub(crate) fn xadd(&self, key: &str, bytes: &[u8]) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key)
            .arg(self.trim_args())
            .arg("*")
            .arg("event")
            .arg(bytes);
        cmd
    }

    /// The topic's partition count for a publish, retrying connection errors and timeouts with
    /// the publish policy (the first publish to a topic reads it from Redis).
    async fn partitions_for_publish(&self, topic: &Topic) -> Result<PartitionCount> {
        let policy = self.inner.config.publish_retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.topic_partitions(topic).await {
                Ok(n) => return Ok(n),
                Err(e) if is_transient(&e) && !policy.is_exhausted(attempt) => {
                    tokio::time::sleep(policy.delay(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a request, retrying connection errors and timeouts with the publish policy.
    async fn send_with_retry(&self, req: Request<'_>) -> Result<()> {
        let policy = self.inner.config.publish_retry;
        let conn = &self.inner.conn;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let error = match conn.get().await {
                Ok((generation, mut c)) => match req.exec(&mut c).await {
                    Ok(()) => return Ok(()),
                    Err(e) if is_connection_error(&e) => conn.fail(generation, "publish", e),
                    Err(e) => return Err(Error::backend("redis", "publish", e)),
                },
                Err(e) => e,
            };
            if policy.is_exhausted(attempt) {
                tracing::warn!(error = %error, attempts = attempt, "publish to redis failed; giving up");
                return Err(error);
            }
            let delay = policy.delay(attempt);
            tracing::debug!(error = %error, attempt, retry_in = ?delay, "publish to redis failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

#[async_trait]
impl Publisher for RedisBus {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        #[cfg(feature = "otel")]
        let event = &crate::otel::inject(event);
        let bytes = self.encode(event)?;
        let partitions = self.partitions_for_publish(topic).await?;
        let key = self.stream_key(topic, partition_for_event(event, partitions));
        self.send_with_retry(Request::One(&self.xadd(&key, &bytes)))
            .await
    }

    /// One round trip for the whole batch: one pipeline of `XADD`s in the batch's order on a
    /// single server; on a cluster one pipeline per partition touched, sent together. Every event is
    /// encoded and size-checked before anything is sent. On error, some partitions' part of the
    /// batch may be stored, and a retried batch may store it twice.
    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let partitions = self.partitions_for_publish(topic).await?;
        // A single server takes every partition's XADDs in one pipeline; a cluster needs one
        // per hash slot (partition).
        let per_partition = self.inner.conn.is_cluster();
        let mut pipes: BTreeMap<u32, redis::Pipeline> = BTreeMap::new();
        for event in events {
            #[cfg(feature = "otel")]
            let event = &crate::otel::inject(event);
            let bytes = self.encode(event)?;
            let p = partition_for_event(event, partitions);
            pipes
                .entry(if per_partition { p } else { 0 })
                .or_insert_with(redis::pipe)
                .add_command(self.xadd(&self.stream_key(topic, p), &bytes))
                .ignore();
        }
        try_join_all(
            pipes
                .values()
                .map(|pipe| self.send_with_retry(Request::Batch(pipe))),
        )
        .await?;
        Ok(())
    }
}

/// True for errors a retry on a new connection may pass.
fn is_transient(e: &Error) -> bool {
    match e {
        Error::Timeout(_) => true,
        Error::Backend { source, .. } => source
            .downcast_ref::<redis::RedisError>()
            .is_some_and(is_connection_error),
        _ => false,
    }
}

/// What one publish sends.
#[derive(Clone, Copy)]
enum Request<'a> {
    One(&'a redis::Cmd),
    Batch(&'a redis::Pipeline),
}

impl Request<'_> {
    async fn exec(self, conn: &mut super::conn::Link) -> redis::RedisResult<()> {
        match self {
            Request::One(cmd) => cmd.exec_async(conn).await,
            Request::Batch(pipe) => pipe.exec_async(conn).await,
        }
    }
}
