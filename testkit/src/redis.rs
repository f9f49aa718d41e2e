//! A fresh Redis key prefix per test.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

/// `WINDLASS_REDIS_URL`, or the local server (`redis://127.0.0.1:6379`).
pub fn url() -> String {
    std::env::var("WINDLASS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

const HOW: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" \
                   --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log\n  \
                   or export WINDLASS_REDIS_URL=redis://host:6379";

/// [`url`], unless it is the unset default, the local server does not answer, and feature
/// `containers` finds a Docker engine: then a reusable Redis container's URL.
pub async fn resolve_url() -> String {
    let url = url();
    #[cfg(feature = "containers")]
    if std::env::var_os("WINDLASS_REDIS_URL").is_none()
        && crate::containers::docker_available()
        && tokio::net::TcpStream::connect("127.0.0.1:6379")
            .await
            .is_err()
    {
        match crate::containers::redis().await {
            Ok(container_url) => return container_url,
            Err(e) => eprintln!("testcontainers could not start Redis: {e}"),
        }
    }
    url
}

/// A unique key prefix on the test Redis; every key under it is deleted when this drops.
#[derive(Clone)]
pub struct TestRedis {
    /// The server URL.
    pub url: String,
    /// The prefix, e.g. `wt-3f2a...` (no trailing separator). Pass it as the key prefix of the
    /// component under test.
    pub prefix: String,
    /// A client on the server.
    pub client: redis::Client,
    /// A shared connection.
    pub conn: ConnectionManager,
    /// Deletes the prefix's keys when the last clone of this value drops.
    _cleanup: std::sync::Arc<CleanupOnDrop>,
}

/// Runs [`cleanup_blocking`] once, when the last [`TestRedis`] clone of a prefix drops, so
/// every test leaves no keys behind, whether it passed or panicked.
struct CleanupOnDrop {
    url: String,
    prefix: String,
}

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), std::mem::take(&mut self.prefix));
        // A plain thread: this may run inside the test's async runtime.
        let _ = std::thread::spawn(move || cleanup_blocking(&url, &prefix)).join();
    }
}

impl std::fmt::Debug for TestRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRedis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Connects to the test Redis and picks a unique key prefix.
/// Panics with a how-to message when Redis is unreachable.
pub async fn fresh_prefix() -> TestRedis {
    let url = resolve_url().await;
    let client = redis::Client::open(url.as_str())
        .unwrap_or_else(|e| panic!("WINDLASS_REDIS_URL is not a valid Redis URL: {e}"));
    let conn = match tokio::time::timeout(Duration::from_secs(10), client.get_connection_manager())
        .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => crate::service_missing("Redis", &url, &e, HOW),
        Err(e) => crate::service_missing("Redis", &url, &e, HOW),
    };
    let prefix = format!("wt-{}", uuid::Uuid::new_v4().simple());
    let _cleanup = std::sync::Arc::new(CleanupOnDrop {
        url: url.clone(),
        prefix: prefix.clone(),
    });
    TestRedis {
        url,
        prefix,
        client,
        conn,
        _cleanup,
    }
}

impl TestRedis {
    /// Deletes every key under the prefix.
    pub async fn cleanup(&self) {
        let mut conn = self.conn.clone();
        let pattern = format!("{}*", self.prefix);
        let keys: Vec<String> = match conn.keys(&pattern).await {
            Ok(k) => k,
            Err(_) => return,
        };
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = conn.del(chunk).await;
        }
    }
}

/// Deletes every key under a prefix from a plain thread (usable from `Drop`).
pub fn cleanup_blocking(url: &str, prefix: &str) {
    if prefix.is_empty() {
        return;
    }
    if let Ok(client) = redis::Client::open(url)
        && let Ok(mut conn) = client.get_connection()
    {
        let keys: Vec<String> = match redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter::<String>(&mut conn)
        {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("UNLINK").arg(chunk).query(&mut conn);
        }
    }
}
