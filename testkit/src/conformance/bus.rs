//! The event bus conformance suite: one `pub async fn` per property of the bus semantics
//! (DESIGN.md section 3), generic over a [`BusFixture`].
//!
//! A backend's test file runs the whole suite, one `#[tokio::test]` per property (so they run
//! in parallel), with one line:
//!
//! ```text
//! windlass_testkit::bus_conformance!(windlass_testkit::conformance::bus::RedisFixture);
//! ```
//!
//! # Adding a backend
//! Implement [`BusFixture`] for it: `setup` connects to the real service (through the
//! harness, with a fresh key prefix / topic namespace), `bus` returns a handle (handles of one
//! fixture share the backend, as processes sharing a server do), `topic` returns a topic no
//! other test uses, and `publish_raw` writes bytes the way a foreign or broken producer would,
//! with the service's own client, never through the publisher under test. The suite needs
//! nothing else from the backend: it observes only what a user can observe (handler calls and
//! the dead-letter queue).
//!
//! The multi-member properties check the bus's central promise from a recorded [`History`]:
//! for each ordering key, handler calls never overlap and follow publish order across every
//! member of a group, through joins, graceful leaves and crashes.
//!
//! Every wait polls its condition with a deadline ([`WAIT`]); nothing sleeps in place of a
//! condition (a few properties pace their publishing with short sleeps so that membership
//! changes happen while events flow; the assertions never depend on them).
//!
//! Files: `delivery` (at least once, retries, dead letters, bad input), `groups` (groups,
//! partitions, order across members), `lifecycle` (shutdown, deadlines), `history` (the order
//! checker), `fixtures` (memory and Redis).

mod delivery;
mod fixtures;
mod groups;
pub mod history;
mod lifecycle;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use windlass_eventbus::partition::{PartitionCount, partition_for_key};
use windlass_eventbus::{
    DeadLetter, DeadLetters, Event, Group, Handler, Publisher, RetryPolicy, SubscribeOptions,
    Subscriber, Subscription, Topic, handler_fn,
};

pub use delivery::*;
pub use fixtures::{MemoryFixture, RedisFixture};
pub use groups::*;
pub use history::{History, Step, Verdict, check};
pub use lifecycle::*;

/// How long any condition of the suite may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// What the suite needs from a backend. See the [module docs](self).
#[async_trait]
pub trait BusFixture: Send + Sync + Sized + 'static {
    /// The bus under test.
    type Bus: Publisher + Subscriber + DeadLetters + Clone + Send + Sync + 'static;

    /// Connects to the backend with a fresh namespace (key prefix, topic names).
    async fn setup() -> Self;

    /// A handle on the bus. Handles of one fixture share the backend's state.
    async fn bus(&self) -> Self::Bus;

    /// A topic no other test uses.
    fn topic(&self) -> Topic;

    /// Appends `bytes` to `topic` as the event payload, bypassing the publisher under test
    /// (raw `XADD ... event <bytes>` for Redis, a raw produce for Kafka).
    async fn publish_raw(&self, topic: &Topic, bytes: &[u8]);

    /// Baseline subscription options for the backend; each property then sets what it tests
    /// (concurrency, retry policy, consumer names).
    fn options(&self) -> SubscribeOptions {
        SubscribeOptions::default()
    }

    /// The partition count of the topics [`BusFixture::topic`] returns.
    fn partitions(&self) -> u32;

    /// Releases what `setup` created (keys, topics). Runs after a passing property.
    async fn teardown(self) {}
}

/// Generates one `#[tokio::test]` per property of the bus suite for a [`BusFixture`] type.
#[macro_export]
macro_rules! bus_conformance {
    ($fixture:ty) => {
        $crate::bus_conformance!(@each $fixture;
            at_least_once,
            ack_is_final,
            retry_after_handler_error,
            dead_letter_after_max_attempts,
            reject_dead_letters_at_once,
            every_group_gets_every_event,
            order_per_key_under_concurrency,
            shutdown_finishes_in_flight_work,
            garbage_goes_to_dead_letters_without_blocking,
            panicking_handler_is_retried,
            handler_deadline_cancels_and_retries,
            shutdown_with_a_full_read_ahead_runs_only_what_started,
            a_graceful_leave_hands_over_no_event_it_ran,
            group_members_split_the_partitions,
            order_per_key_across_members_under_load,
            order_per_key_through_joins_and_leaves,
            a_crashed_members_partitions_are_taken_over_in_order,
        );
    };
    (@each $fixture:ty; $($property:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $property() {
                let fixture = <$fixture as $crate::conformance::bus::BusFixture>::setup().await;
                $crate::conformance::bus::$property(&fixture).await;
                $crate::conformance::bus::BusFixture::teardown(fixture).await;
            }
        )*
    };
}

/// Runs every property one after the other on one fixture.
pub async fn run_all<F: BusFixture>(fixture: &F) {
    at_least_once(fixture).await;
    ack_is_final(fixture).await;
    retry_after_handler_error(fixture).await;
    dead_letter_after_max_attempts(fixture).await;
    reject_dead_letters_at_once(fixture).await;
    every_group_gets_every_event(fixture).await;
    order_per_key_under_concurrency(fixture).await;
    shutdown_finishes_in_flight_work(fixture).await;
    garbage_goes_to_dead_letters_without_blocking(fixture).await;
    panicking_handler_is_retried(fixture).await;
    handler_deadline_cancels_and_retries(fixture).await;
    shutdown_with_a_full_read_ahead_runs_only_what_started(fixture).await;
    a_graceful_leave_hands_over_no_event_it_ran(fixture).await;
    group_members_split_the_partitions(fixture).await;
    order_per_key_across_members_under_load(fixture).await;
    order_per_key_through_joins_and_leaves(fixture).await;
    a_crashed_members_partitions_are_taken_over_in_order(fixture).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Polls `cond` until it holds; panics naming `what` after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls the dead-letter queue until it holds at least `n` entries; returns them.
pub async fn wait_dead_letters<B: DeadLetters>(
    bus: &B,
    topic: &Topic,
    n: usize,
) -> Vec<DeadLetter> {
    let deadline = Instant::now() + WAIT;
    loop {
        let dlq = bus
            .dead_letters(topic, n + 100)
            .await
            .expect("read the dead-letter queue");
        if dlq.len() >= n {
            return dlq;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {n} dead letters on {topic} (have {})",
            dlq.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An event carrying `n` as its data.
pub fn numbered(n: usize) -> Event {
    Event::builder("/conformance", "conformance.numbered")
        .data_json(&n)
        .build()
        .expect("valid event")
}

/// An event of ordering key `key` carrying its sequence number `seq`.
pub fn keyed(key: &str, seq: usize) -> Event {
    Event::builder("/conformance", "conformance.keyed")
        .partition_key(key)
        .data_json(&seq)
        .build()
        .expect("valid event")
}

/// A key whose events land on `partition` of `partitions` (Kafka's default partitioner).
pub fn key_for_partition(partition: u32, partitions: u32) -> String {
    keys_for_partition(partition, partitions, 1).remove(0)
}

/// `n` distinct keys whose events land on `partition` of `partitions`.
pub fn keys_for_partition(partition: u32, partitions: u32, n: usize) -> Vec<String> {
    let count = PartitionCount::new(partitions).expect("valid partition count");
    (0..)
        .map(|i| format!("key-{i}"))
        .filter(|k| partition_for_key(k.as_bytes(), count) == partition)
        .take(n)
        .collect()
}

/// A small pseudo-random latency for `(key, seq)`, up to `max_ms` milliseconds (deterministic,
/// so a failing run can be replayed).
pub fn jitter(key: &str, seq: usize, max_ms: u64) -> Duration {
    let h = windlass_eventbus::partition::murmur2(format!("{key}/{seq}").as_bytes()) as u32;
    Duration::from_micros(u64::from(h) % (max_ms * 1000 + 1))
}

fn group(name: &str) -> Group {
    Group::new(name).expect("valid group")
}

/// A retry policy with short delays, so retries happen within the test.
pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(max_attempts)
        .with_delays(Duration::from_millis(5), Duration::from_millis(20))
}

/// Records what a handler saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, u32, String)>>>);

impl Seen {
    fn push(&self, id: &str, attempt: u32, consumer: &str) {
        self.0
            .lock()
            .unwrap()
            .push((id.to_owned(), attempt, consumer.to_owned()));
    }
    fn ids(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(id, ..)| id.clone())
            .collect()
    }
    fn distinct(&self) -> HashSet<String> {
        self.ids().into_iter().collect()
    }
    fn attempts_of(&self, id: &str) -> Vec<u32> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, ..)| i == id)
            .map(|(_, a, _)| *a)
            .collect()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A handler that records every event and succeeds.
fn recording(seen: &Seen) -> Arc<dyn Handler> {
    let seen = seen.clone();
    Arc::new(handler_fn(move |event, ctx| {
        let seen = seen.clone();
        async move {
            seen.push(event.id(), ctx.attempt, &ctx.consumer);
            Ok(())
        }
    }))
}

async fn subscribe<F: BusFixture>(
    bus: &F::Bus,
    topic: &Topic,
    group: &Group,
    handler: Arc<dyn Handler>,
    options: SubscribeOptions,
) -> Subscription {
    bus.subscribe(topic, group, handler, options)
        .await
        .expect("subscribe")
}
