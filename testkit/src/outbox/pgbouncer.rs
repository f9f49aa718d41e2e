//! A PgBouncer of the test's own, in transaction pooling mode, on a spare port, in front of
//! the harness's Postgres. `scripts/ensure-pgbouncer` installs the binary (Debian package).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::servers::free_port;

/// A running `pgbouncer` (transaction mode); killed when dropped.
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("WINDLASS_PGBOUNCER_BIN") {
        return PathBuf::from(p);
    }
    for p in [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ] {
        if crate::servers::is_executable(std::path::Path::new(p)) {
            return PathBuf::from(p);
        }
    }
    panic!(
        "pgbouncer is not installed; run scripts/ensure-pgbouncer (apt-get install pgbouncer) \
         or set WINDLASS_PGBOUNCER_BIN"
    )
}

impl PgBouncer {
    /// Starts pgbouncer in transaction mode in front of the harness's Postgres
    /// ([`crate::postgres::url`]), any database name passed through.
    pub fn start() -> Self {
        let upstream: PgConnectOptions = crate::postgres::url()
            .parse()
            .expect("WINDLASS_POSTGRES_URL is a valid URL");
        let host = upstream.get_host().to_owned();
        let host = if host.starts_with('/') {
            "127.0.0.1".to_owned()
        } else {
            host
        };
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "windlass-pgbouncer-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let user = upstream.get_username().to_owned();
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        let ini = format!(
            "[databases]\n* = host={host} port={up}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {dir}/users.txt\n\
             pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits,options,search_path\n\
             logfile = {dir}/pgbouncer.log\nadmin_users = {user}\n",
            up = upstream.get_port(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut cmd = Command::new(binary());
        if root {
            // pgbouncer refuses to run as root.
            let _ = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status();
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pgbouncer: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            dir,
            child: Some(child),
        }
    }

    /// The URL of database `db` through the bouncer.
    pub fn url_for(&self, db: &str) -> String {
        let upstream: PgConnectOptions = crate::postgres::url().parse().unwrap();
        upstream
            .host("127.0.0.1")
            .port(self.port)
            .database(db)
            .to_url_lossy()
            .to_string()
    }

    /// The bouncer's port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
