//! A local Redis Cluster (3 masters, no replicas) for tests, and a fresh key prefix per test.
//!
//! `WINDLASS_REDIS_CLUSTER_URLS` (comma-separated `redis://host:port` seeds) points the harness
//! at any cluster. When it is unset, the harness uses a local cluster of three `redis-server`
//! processes on `127.0.0.1:${WINDLASS_REDIS_CLUSTER_PORT:-17101}` and the two ports after it
//! (cluster bus ports +10000), starting it under a file lock (`$TMPDIR/windlass-redis-cluster.lock`)
//! when nothing answers there yet, so parallel test processes share one cluster. It is left
//! running for the next run (nothing on disk; its files live in
//! `$TMPDIR/windlass-redis-cluster/`). It never touches the shared server on 6379.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

const DEFAULT_PORT: u16 = 17101;
const MASTERS: u16 = 3;

/// The cluster's seed URLs: `WINDLASS_REDIS_CLUSTER_URLS`, else the local cluster (started if
/// needed). Panics with a how-to message when it cannot be reached or started.
pub fn urls() -> Vec<String> {
    if let Ok(v) = std::env::var("WINDLASS_REDIS_CLUSTER_URLS")
        && !v.trim().is_empty()
    {
        return v.split(',').map(|s| s.trim().to_owned()).collect();
    }
    let base = std::env::var("WINDLASS_REDIS_CLUSTER_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(DEFAULT_PORT);
    ensure_cluster(base);
    (0..MASTERS)
        .map(|i| format!("redis://127.0.0.1:{}", base + i))
        .collect()
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "cluster", "info"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        .unwrap_or(false)
}

fn all_ok(base: u16) -> bool {
    (0..MASTERS).all(|i| listening(base + i) && cluster_ok(base + i))
}

fn ensure_cluster(base: u16) {
    if all_ok(base) {
        return;
    }
    let dir = std::env::temp_dir();
    let lock_path = dir.join("windlass-redis-cluster.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    if all_ok(base) {
        return;
    }
    // A half-started cluster from an earlier run: stop it and start over.
    for i in 0..MASTERS {
        let _ = Command::new("redis-cli")
            .args(["-p", &(base + i).to_string(), "shutdown", "nosave"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let root = dir.join("windlass-redis-cluster");
    let _ = std::fs::remove_dir_all(&root);
    for i in 0..MASTERS {
        let port = base + i;
        let node_dir = root.join(port.to_string());
        std::fs::create_dir_all(&node_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", node_dir.display()));
        let status = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
            .arg("--dir")
            .arg(&node_dir)
            .arg("--logfile")
            .arg(node_dir.join("redis.log"))
            .status()
            .unwrap_or_else(|e| {
                crate::service_missing(
                    "Redis Cluster",
                    &format!("redis://127.0.0.1:{port}"),
                    &e,
                    "apt-get install redis-server   (the harness starts the cluster itself)\n  \
                     or export WINDLASS_REDIS_CLUSTER_URLS=redis://host:port,...",
                )
            });
        assert!(status.success(), "redis-server on {port} did not start");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(0..MASTERS).all(|i| listening(base + i)) {
        assert!(Instant::now() < deadline, "cluster nodes did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let nodes: Vec<String> = (0..MASTERS)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect();
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&nodes)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("run redis-cli --cluster create");
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_ok(base) {
        assert!(
            Instant::now() < deadline,
            "the local Redis Cluster on {base}.. never reached cluster_state:ok"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A unique key prefix on the test cluster; every key under it is deleted when the last clone
/// drops.
#[derive(Clone)]
pub struct TestRedisCluster {
    /// Seed URLs of the cluster.
    pub urls: Vec<String>,
    /// The prefix, e.g. `wtc-3f2a...` (no trailing separator).
    pub prefix: String,
    /// A cluster client.
    pub client: ClusterClient,
    /// A shared cluster connection.
    pub conn: ClusterConnection,
    _cleanup: std::sync::Arc<Cleanup>,
}

impl std::fmt::Debug for TestRedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRedisCluster")
            .field("urls", &self.urls)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

struct Cleanup {
    urls: Vec<String>,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (urls, prefix) = (self.urls.clone(), std::mem::take(&mut self.prefix));
        let _ = std::thread::spawn(move || {
            // Every master holds some of the keys: scan each one.
            for url in &urls {
                crate::redis::cleanup_blocking(url, &prefix);
            }
        })
        .join();
    }
}

/// Connects to the test cluster (starting the local one if needed) and picks a unique prefix.
pub async fn fresh_prefix() -> TestRedisCluster {
    let urls = tokio::task::spawn_blocking(urls)
        .await
        .expect("start the local Redis Cluster");
    let client = ClusterClient::new(urls.clone())
        .unwrap_or_else(|e| panic!("WINDLASS_REDIS_CLUSTER_URLS is not valid: {e}"));
    let conn =
        match tokio::time::timeout(Duration::from_secs(10), client.get_async_connection()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                crate::service_missing("Redis Cluster", &urls[0], &e, "see testkit::redis_cluster")
            }
            Err(e) => {
                crate::service_missing("Redis Cluster", &urls[0], &e, "see testkit::redis_cluster")
            }
        };
    let prefix = format!("wtc-{}", uuid::Uuid::new_v4().simple());
    TestRedisCluster {
        _cleanup: std::sync::Arc::new(Cleanup {
            urls: urls.clone(),
            prefix: prefix.clone(),
        }),
        urls,
        prefix,
        client,
        conn,
    }
}
