//! A named multiplexed connection that reconnects after connection errors.
//!
//! Each connection is named (`CLIENT SETNAME`) so operators can find windlass in `CLIENT LIST`,
//! and the name is set again on every reconnect. A failed call never retries here: callers
//! decide (publish retries with backoff, the runner re-fetches).

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

use crate::error::{Error, Result};

pub(crate) struct Conn {
    client: Client,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    name: String,
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    connecting: tokio::sync::Mutex<u64>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// True for errors after which the connection is unusable and a retry on a new one may pass.
pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

impl Conn {
    pub(crate) fn new(
        client: Client,
        name: String,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout));
        Self {
            client,
            config,
            connect_timeout,
            name,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(0),
        }
    }

    /// The live connection (and its generation), connecting first when there is none.
    pub(crate) async fn get(&self) -> Result<(u64, MultiplexedConnection)> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut generation = self.connecting.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let connect = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&self.name)
                .exec_async(&mut conn)
                .await?;
            Ok::<_, RedisError>(conn)
        };
        let conn = match tokio::time::timeout(self.connect_timeout * 2, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(Error::backend("redis", "connect", e)),
            Err(_) => return Err(Error::Timeout("redis connect")),
        };
        *generation += 1;
        let entry = (*generation, conn);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry.clone());
        Ok(entry)
    }

    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Drops connection `generation` after a connection error, so the next call reconnects.
    pub(crate) fn invalidate(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    /// Runs one command; a connection error drops the connection for the next call.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        let (generation, mut conn) = self.get().await?;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| self.fail(generation, op, e))
    }

    /// Runs a pipeline; a connection error drops the connection for the next call.
    pub(crate) async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T> {
        let (generation, mut conn) = self.get().await?;
        pipe.query_async(&mut conn)
            .await
            .map_err(|e| self.fail(generation, op, e))
    }

    pub(crate) fn fail(&self, generation: u64, op: &'static str, e: RedisError) -> Error {
        if is_connection_error(&e) {
            self.invalidate(generation);
        }
        if e.is_timeout() {
            return Error::Timeout(op);
        }
        Error::backend("redis", op, e)
    }
}
