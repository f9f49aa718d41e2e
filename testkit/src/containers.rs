//! Services in Docker through testcontainers, for machines with a Docker engine and no service
//! URL set (feature `containers`).
//!
//! Containers are *reusable* and named (`windlass-test-postgres`, `windlass-test-redis`): the first
//! test process starts one, every later test process (nextest runs one per test) and every later
//! run reuses it, so a suite pays the start-up once. Remove them with `docker rm -f` when done.
//! This machine kind has no Docker engine; here the harness uses the local services, and this
//! module is only compiled.

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt, ReuseDirective};

/// True when a Docker engine looks reachable (`DOCKER_HOST` set, or the default socket exists).
pub fn docker_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

/// Starts (or reuses) a Postgres container; returns its admin URL.
pub async fn postgres() -> Result<String, String> {
    let container = GenericImage::new("postgres", "16-alpine")
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_container_name("windlass-test-postgres")
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .map_err(|e| e.to_string())?;
    let host = container.get_host().await.map_err(|e| e.to_string())?;
    // Reusable containers outlive this handle by design.
    std::mem::forget(container);
    Ok(format!("postgres://postgres@{host}:{port}/postgres"))
}

/// Starts (or reuses) a Redis container; returns its URL.
pub async fn redis() -> Result<String, String> {
    let container = GenericImage::new("redis", "7-alpine")
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_container_name("windlass-test-redis")
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let port = container
        .get_host_port_ipv4(6379)
        .await
        .map_err(|e| e.to_string())?;
    let host = container.get_host().await.map_err(|e| e.to_string())?;
    std::mem::forget(container);
    Ok(format!("redis://{host}:{port}"))
}
