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
//! Resolution order for each service: the `WINDLASS_*` variable if set; else the local default
//! if it answers; else, with feature `containers` and a Docker engine, a reusable testcontainers
//! container (module `containers`); else the test fails with a how-to message.

pub mod bus_member;
pub mod conformance;
#[cfg(feature = "containers")]
pub mod containers;
pub mod jobs;
pub mod kafka;
pub mod outbox;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod redis_cluster;
pub mod servers;
pub mod tansu;

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
