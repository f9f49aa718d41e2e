//! Conformance suites: one per trait, generic over a fixture, run against every backend from
//! that backend's test file.
//!
//! - [`bus`]: [`Publisher`](windlass_eventbus::Publisher) /
//!   [`Subscriber`](windlass_eventbus::Subscriber) / [`DeadLetters`](windlass_eventbus::DeadLetters)
//!   ([`bus_conformance!`](crate::bus_conformance) generates one test per property).
//! - [`outbox`]: the outbox stores (Postgres, SQLite) through the relay and the operator API
//!   ([`outbox_conformance!`](crate::outbox_conformance)).
//! - [`cache`]: the cache on a [`Store`](windlass_cache::Store)
//!   ([`cache_conformance!`](crate::cache_conformance) generates one test per property).

pub mod bus;
pub mod cache;
pub mod outbox;
