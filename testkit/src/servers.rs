//! Private server instances for fault tests: a `redis-server` or a PostgreSQL cluster of the
//! test's own on a spare port, that the test may stop, kill, restart or freeze (SIGSTOP)
//! without touching the shared services other tests run against in parallel.
//!
//! - [`PrivateRedis`]: `redis-server` on a free port, with append-only persistence when the data
//!   must survive a restart ([`PrivateRedis::start_persistent`]).
//! - [`PrivatePostgres`]: `initdb` + `pg_ctl` in a temporary directory (as the `postgres` user
//!   when the test runs as root, since PostgreSQL refuses to run as root), trust auth, `fsync`
//!   off.
//!
//! Both are torn down (process killed, directory removed) when the value drops, also when the
//! test panicked. The binaries come from `PATH` (`redis-server`) and `pg_config --bindir` or
//! `/usr/lib/postgresql/*/bin`; a missing binary fails the test with a message saying what to
//! install.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now (the OS picks it; another process could take it before
/// the server binds, which the start-up check then reports).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

fn tempdir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("windlass-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what}: not ready after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn answers_pong(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    conn.write_all(b"PING\r\n").is_ok()
        && matches!(conn.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A `redis-server` of one test's own, on a spare port.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts a server that keeps nothing on disk.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// Starts a server with `appendonly yes` and `appendfsync always`, so every acknowledged
    /// write survives [`PrivateRedis::kill`] + [`PrivateRedis::restart`].
    pub fn start_persistent() -> Self {
        Self::launch(true)
    }

    fn launch(persistent: bool) -> Self {
        let mut me = Self {
            port: free_port(),
            dir: tempdir("redis"),
            persistent,
            child: None,
        };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it: apt-get install redis-server")
            });
        self.child = Some(child);
        let port = self.port;
        // Listening is not enough: a server loading its AOF answers LOADING until it is done.
        wait_until("private redis-server", Duration::from_secs(30), || {
            answers_pong(port)
        });
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (no shutdown, nothing flushed beyond what AOF already has)
    /// and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "-TERM");
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (after [`Self::kill`] or
    /// [`Self::stop`]; a persistent server reloads its AOF).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn freeze(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-STOP");
        }
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-CONT");
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where PostgreSQL's server binaries are (`initdb`, `pg_ctl`).
pub fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("WINDLASS_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl) found; install them \
             (apt-get install postgresql) or set WINDLASS_PG_BINDIR"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL cluster of one test's own, on a spare port, with trust auth.
#[derive(Debug)]
pub struct PrivatePostgres {
    port: u16,
    dir: PathBuf,
    bindir: PathBuf,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Runs `initdb` and starts the server. Takes a second or two.
    pub fn start() -> Self {
        let bindir = pg_bindir();
        let as_postgres = is_root();
        let dir = tempdir("pg");
        if as_postgres {
            // PostgreSQL refuses to run as root: the data directory belongs to `postgres`.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok,
                "chown {} to postgres failed (is there a postgres user?)",
                dir.display()
            );
        }
        let me = Self {
            port: free_port(),
            dir,
            bindir,
            as_postgres,
        };
        let data = me.data_dir();
        let out = me
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        me.pg_ctl_start();
        me
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd.current_dir(&self.dir);
            cmd
        } else {
            let mut cmd = Command::new(path);
            cmd.current_dir(&self.dir);
            cmd
        }
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off \
             -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let out = self
            .command("pg_ctl")
            .args(["-w", "-t", "30", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &opts, "start"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log"))
            .map(|s| {
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            })
            .unwrap_or_default()
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-t", "30", "-m", mode, "-D"])
            .arg(self.data_dir())
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `db` on this server.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no checkpoint, clients cut off;
    /// committed transactions survive, as after a crash).
    pub fn crash(&self) {
        self.pg_ctl_stop("immediate");
    }

    /// Stops the server cleanly (`-m fast`: open transactions are rolled back).
    pub fn stop(&self) {
        self.pg_ctl_stop("fast");
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&self) {
        self.pg_ctl_stop("immediate");
        wait_until("old postmaster gone", Duration::from_secs(30), || {
            !listening(self.port)
        });
        self.pg_ctl_start();
    }

    /// Starts a stopped server again.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// Freezes the postmaster and every backend (SIGSTOP on the process group's members):
    /// connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    /// Resumes a frozen server.
    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            // The postmaster and its children (backends, background workers).
            let _ = Command::new("pkill")
                .args([sig, "-P", &pid.to_string()])
                .status();
            signal(pid, sig);
        }
    }

    /// Where the server writes its log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.thaw();
        self.pg_ctl_stop("immediate");
        if let Some(pid) = self.pid() {
            signal(pid, "-KILL");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `path` exists and is executable by someone (a quick check for optional tools).
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
