//! Test support for windlass: the service harness and the conformance suites. Not published;
//! published crates carry no test code.
//!
//! # Harness
//! Service URLs come from `WINDLASS_POSTGRES_URL`, `WINDLASS_REDIS_URL` and
//! `WINDLASS_KAFKA_BROKERS`, defaulting to the local services. A missing service fails the test
//! loudly with a message saying how to start it; nothing is ever skipped. Every test gets its
//! own Postgres database ([`postgres::fresh_database`]) and Redis key prefix
//! ([`redis::fresh_prefix`]), so tests run in parallel and leave no state behind.
//!
//! Docker: where a Docker engine runs and no URL is set, start the services with
//! testcontainers (or any way you like) and export the URLs; this machine kind has no engine,
//! so the harness talks to the local services directly.

pub mod conformance;
pub mod jobs;
pub mod kafka;
pub mod postgres;
pub mod redis;

/// Panics with a how-to message. Used when a service the test needs is unreachable.
#[track_caller]
pub fn service_missing(service: &str, url: &str, error: &dyn std::fmt::Display, how: &str) -> ! {
    panic!(
        "\n\n{service} is not reachable at {} ({error}).\n\
         This test needs a real {service}; it is never skipped.\n\
         Start it, or point the harness at one:\n  {how}\n\n",
        windlass_core::redact_url(url)
    )
}
