//! Member processes of a Redis Streams consumer group (the `windlass-bus-member` binary of this
//! crate), for fault tests that need a real process: kill -9, SIGSTOP past a lease, two
//! processes with default consumer names. Each member records its handler calls in a Redis
//! list the [history checker](crate::conformance::bus::history) reads.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::conformance::bus::Step;

/// The `windlass-bus-member` binary, built on demand when the test runner did not build it
/// (narrow `cargo test -p` runs build only the tested package's targets).
pub fn binary() -> PathBuf {
    let candidates = || {
        let mut dirs = Vec::new();
        // Cargo puts binaries in the target directory (the build directory may be elsewhere).
        if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
            dirs.push(PathBuf::from(dir).join("debug"));
        }
        // target/<profile>/deps/<test> -> target/<profile>
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent()?.parent().map(PathBuf::from))
        {
            dirs.push(dir);
        }
        if let Ok(manifest) = std::env::var("CARGO_MANIFEST_DIR") {
            dirs.push(PathBuf::from(manifest).join("../target/debug"));
        }
        dirs.into_iter()
            .map(|d| d.join("windlass-bus-member"))
            .find(|b| b.exists())
    };
    if let Some(bin) = candidates() {
        return bin;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "-p",
            "windlass-testkit",
            "--bin",
            "windlass-bus-member",
        ])
        .status()
        .expect("run cargo build for windlass-bus-member");
    assert!(status.success(), "building windlass-bus-member failed");
    candidates().expect("windlass-bus-member built but not found (set CARGO_TARGET_DIR)")
}

/// How to start a member.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// Redis URL.
    pub redis: String,
    /// Key prefix of the bus.
    pub prefix: String,
    /// Topic name.
    pub topic: String,
    /// Group name.
    pub group: String,
    /// The member's name in the history.
    pub name: String,
    /// The Redis list the history goes to.
    pub history: String,
    /// Explicit consumer name (`None`: the bus's default, unique per process).
    pub consumer: Option<String>,
    /// Partitions of the topic.
    pub partitions: u32,
    /// Lease TTL.
    pub lease: Duration,
    /// Handler timeout.
    pub handler_timeout: Duration,
    /// Upper bound of the jitter of each call.
    pub latency: Duration,
    /// `(key, seq, pause)`: the call of that event takes `pause`.
    pub slow: Option<(String, usize, Duration)>,
    /// The slow pause blocks its thread (no await its deadline could stop it at).
    pub slow_blocking: bool,
    /// Reject the slow event after its pause (a dead-letter write).
    pub reject_slow: bool,
}

impl MemberSpec {
    /// A member with 4 partitions, a 2 s lease, a 1 s handler timeout and 3 ms of jitter.
    pub fn new(redis: &crate::redis::TestRedis, topic: &str, group: &str, name: &str) -> Self {
        Self {
            redis: redis.url.clone(),
            prefix: redis.prefix.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            name: name.to_owned(),
            history: format!("{}:test-history", redis.prefix),
            consumer: None,
            partitions: 4,
            lease: Duration::from_secs(2),
            handler_timeout: Duration::from_secs(1),
            latency: Duration::from_millis(3),
            slow: None,
            slow_blocking: false,
            reject_slow: false,
        }
    }
}

/// A running member process (killed when dropped).
#[derive(Debug)]
pub struct MemberProcess {
    /// Its name in the history.
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl MemberProcess {
    /// Starts a member and waits until it subscribed (`READY`).
    pub async fn spawn(spec: &MemberSpec) -> Self {
        let mut cmd = Command::new(binary());
        cmd.arg("--redis")
            .arg(&spec.redis)
            .arg("--prefix")
            .arg(&spec.prefix)
            .arg("--topic")
            .arg(&spec.topic)
            .arg("--group")
            .arg(&spec.group)
            .arg("--name")
            .arg(&spec.name)
            .arg("--history")
            .arg(&spec.history)
            .arg("--partitions")
            .arg(spec.partitions.to_string())
            .arg("--lease-ms")
            .arg(spec.lease.as_millis().to_string())
            .arg("--timeout-ms")
            .arg(spec.handler_timeout.as_millis().to_string())
            .arg("--latency-ms")
            .arg(spec.latency.as_millis().to_string());
        if let Some(c) = &spec.consumer {
            cmd.arg("--consumer").arg(c);
        }
        if let Some((k, s, d)) = &spec.slow {
            cmd.arg("--slow").arg(format!("{k}:{s}:{}", d.as_millis()));
        }
        if spec.slow_blocking {
            cmd.arg("--slow-blocking");
        }
        if spec.reject_slow {
            cmd.arg("--reject-slow");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start windlass-bus-member");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read member output") {
                if line.trim() == "READY" {
                    return;
                }
            }
            panic!("member {} exited before it was ready", spec.name);
        })
        .await
        .unwrap_or_else(|_| panic!("member {} not ready in 60 s", spec.name));
        let stdin = child.stdin.take();
        Self {
            name: spec.name.clone(),
            child,
            stdin,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("a running member")
    }

    /// Kills it with SIGKILL and waits until it is gone.
    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }

    /// Freezes it (SIGSTOP).
    pub fn freeze(&self) {
        signal(self.pid(), "-STOP");
    }

    /// Resumes it (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid(), "-CONT");
    }

    /// Leaves gracefully (stdin closed) and waits for the exit.
    pub async fn leave(mut self) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the member exits within 60 s")
            .expect("wait for the member");
        assert!(
            status.success(),
            "member {} exited with {status}",
            self.name
        );
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}

/// The history the members recorded in `key`.
pub async fn history(conn: &mut redis::aio::ConnectionManager, key: &str) -> Vec<Step> {
    let lines: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("LRANGE history");
    lines.iter().filter_map(|l| Step::parse(l)).collect()
}

/// Appends a step to the history (e.g. `Gone` after a kill).
pub async fn record(conn: &mut redis::aio::ConnectionManager, key: &str, step: &Step) {
    let _: i64 = redis::cmd("RPUSH")
        .arg(key)
        .arg(step.line())
        .query_async(conn)
        .await
        .expect("RPUSH history");
}
