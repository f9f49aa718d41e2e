//! A fresh Postgres database per test.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// `WINDLASS_POSTGRES_URL`, or the local server (`postgres://postgres@127.0.0.1:5432/postgres`).
pub fn url() -> String {
    std::env::var("WINDLASS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

const HOW: &str = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n  \
                   or export WINDLASS_POSTGRES_URL=postgres://user:pass@host:5432/db";

/// [`url`], unless it is the unset default, the local server does not answer, and feature
/// `containers` finds a Docker engine: then a reusable Postgres container's URL.
pub async fn resolve_url() -> String {
    let url = url();
    #[cfg(feature = "containers")]
    if std::env::var_os("WINDLASS_POSTGRES_URL").is_none()
        && crate::containers::docker_available()
        && tokio::net::TcpStream::connect("127.0.0.1:5432")
            .await
            .is_err()
    {
        match crate::containers::postgres().await {
            Ok(container_url) => return container_url,
            Err(e) => eprintln!("testcontainers could not start Postgres: {e}"),
        }
    }
    url
}

/// A database created for one test and dropped (with its connections) when this value drops.
#[derive(Debug)]
pub struct TestDatabase {
    /// Its URL.
    pub url: String,
    /// A pool on it (up to 10 connections).
    pub pool: PgPool,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens another pool on the same database (e.g. one per simulated process).
    pub async fn new_pool(&self, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

/// Creates an empty database with a unique name and returns a pool on it.
/// Panics with a how-to message when Postgres is unreachable.
pub async fn fresh_database() -> TestDatabase {
    let admin_url = resolve_url().await;
    let admin: PgConnectOptions = admin_url
        .parse()
        .unwrap_or_else(|e| panic!("WINDLASS_POSTGRES_URL is not a valid Postgres URL: {e}"));
    let mut conn = match tokio::time::timeout(Duration::from_secs(10), admin.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => crate::service_missing("PostgreSQL", &admin_url, &e, HOW),
        Err(e) => crate::service_missing("PostgreSQL", &admin_url, &e, HOW),
    };
    let name = format!("windlass_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
    let _ = conn.close().await;
    let db_url = admin.clone().database(&name).to_url_lossy().to_string();
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(admin.clone().database(&name))
        .await
        .unwrap_or_else(|e| panic!("connect to {name}: {e}"));
    TestDatabase {
        url: db_url,
        pool,
        name,
        admin_url,
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = self.admin_url.clone();
        // Drop runs inside the test's runtime; use a thread with its own runtime so the
        // database goes away even when the test panicked.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}
