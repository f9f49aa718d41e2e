//! Publishing: `XADD {prefix}:{topic} [MAXLEN ~ n | MINID ~ id] * event <json>`, pipelined for
//! batches, retried on connection errors, never dropped silently.

use async_trait::async_trait;
use windlass_core::Topic;

use super::conn::is_connection_error;
use super::{RedisBus, Trim};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::traits::Publisher;

impl RedisBus {
    /// One `XADD` of already encoded bytes, with the configured trimming.
    pub(crate) fn xadd(&self, key: &str, bytes: &[u8]) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key);
        match self.inner.config.trim {
            Trim::None => {}
            Trim::MaxLen(n) => {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            Trim::MaxAge(age) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let min = now.saturating_sub(age).as_millis();
                cmd.arg("MINID").arg("~").arg(format!("{min}-0"));
            }
        }
        cmd.arg("*").arg("event").arg(bytes);
        cmd
    }

    /// Sends a pipeline, retrying connection errors and timeouts with the publish policy.
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
        let bytes = self.encode(event)?;
        self.send_with_retry(Request::One(&self.xadd(&self.stream_key(topic), &bytes)))
            .await
    }

    /// One round trip for the whole batch (a pipeline of `XADD`s, in order). Every event is
    /// encoded and size-checked before anything is sent. On error, a prefix of the batch may
    /// be stored, and a retried batch may store that prefix twice.
    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let key = self.stream_key(topic);
        let mut pipe = redis::pipe();
        for event in events {
            let bytes = self.encode(event)?;
            pipe.add_command(self.xadd(&key, &bytes)).ignore();
        }
        self.send_with_retry(Request::Batch(&pipe)).await
    }
}

/// What one publish sends.
#[derive(Clone, Copy)]
enum Request<'a> {
    One(&'a redis::Cmd),
    Batch(&'a redis::Pipeline),
}

impl Request<'_> {
    async fn exec(self, conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<()> {
        match self {
            Request::One(cmd) => cmd.exec_async(conn).await,
            Request::Batch(pipe) => pipe.exec_async(conn).await,
        }
    }
}
