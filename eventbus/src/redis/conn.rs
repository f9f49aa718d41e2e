//! A named connection that reconnects after connection errors, to one server or to a Redis
//! Cluster.
//!
//! On a single server each connection is named (`CLIENT SETNAME`) so operators can find
//! windlass in `CLIENT LIST`, and the name is set again on every reconnect. On a cluster the
//! client library keeps one connection per node and follows the slot map itself. A failed call
//! never retries here: callers decide (publish retries with backoff, the runner re-fetches).
//!
//! Every command or pipeline sent through a [`Conn`] must touch keys of one hash slot only (the
//! key layout guarantees it, see [`super::keys`]); work spanning partitions is one request per
//! partition, sent concurrently (a multiplexed connection pipelines them on the wire).

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::error::{Error, Result};

/// Where connections go.
#[derive(Clone)]
pub(crate) enum Target {
    Single(Client),
    /// Seed node URLs of a cluster.
    Cluster(Vec<String>),
}

enum Connector {
    Single(Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// One live connection of either kind.
#[derive(Clone)]
pub(crate) enum Link {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

pub(crate) struct Conn {
    target: Connector,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    name: String,
    current: Mutex<Option<(u64, Link)>>,
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
    /// A connection with replies bounded by `response_timeout` (a blocking command needs more
    /// than its block time).
    pub(crate) fn new(
        target: &Target,
        name: String,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout));
        let target = match target {
            Target::Single(client) => Connector::Single(client.clone()),
            Target::Cluster(urls) => Connector::Cluster(Box::new(
                redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(connect_timeout)
                    .response_timeout(response_timeout)
                    .build()
                    .map_err(|e| {
                        Error::Config(format!("invalid redis cluster configuration: {e}"))
                    })?,
            )),
        };
        Ok(Self {
            target,
            config,
            connect_timeout,
            name,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(0),
        })
    }

    /// True on a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Connector::Cluster(_))
    }

    /// The live connection (and its generation), connecting first when there is none.
    pub(crate) async fn get(&self) -> Result<(u64, Link)> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut generation = self.connecting.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let connect = async {
            match &self.target {
                Connector::Single(client) => {
                    let mut conn = client
                        .get_multiplexed_async_connection_with_config(&self.config)
                        .await?;
                    redis::cmd("CLIENT")
                        .arg("SETNAME")
                        .arg(&self.name)
                        .exec_async(&mut conn)
                        .await?;
                    Ok::<_, RedisError>(Link::Single(conn))
                }
                Connector::Cluster(client) => {
                    Ok(Link::Cluster(client.get_async_connection().await?))
                }
            }
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

    fn cached(&self) -> Option<(u64, Link)> {
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

    /// Runs a pipeline (one hash slot); a connection error drops the connection.
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

    /// Runs a Lua script (all its keys in one hash slot); a connection error drops the
    /// connection.
    pub(crate) async fn script<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let (generation, mut conn) = self.get().await?;
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail(generation, op, e))
    }

    pub(crate) fn fail(&self, generation: u64, op: &'static str, e: RedisError) -> Error {
        if is_connection_error(&e) && !self.is_cluster() {
            self.invalidate(generation);
        }
        if e.is_timeout() {
            return Error::Timeout(op);
        }
        Error::backend("redis", op, e)
    }
}
