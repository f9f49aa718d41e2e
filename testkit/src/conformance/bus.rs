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
//! Every wait polls its condition with a deadline ([`WAIT`]); nothing sleeps in place of a
//! condition.

mod fixtures;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use windlass_eventbus::{
    DeadLetter, DeadLetters, Event, Group, Handler, HandlerError, Publisher, RetryPolicy,
    SubscribeOptions, Subscriber, Subscription, Topic, handler_fn,
};

pub use fixtures::{MemoryFixture, RedisFixture};

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
            group_members_split_the_work,
            every_group_gets_every_event,
            order_per_key_under_concurrency,
            shutdown_finishes_in_flight_work,
            garbage_goes_to_dead_letters_without_blocking,
            panicking_handler_is_retried,
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
    group_members_split_the_work(fixture).await;
    every_group_gets_every_event(fixture).await;
    order_per_key_under_concurrency(fixture).await;
    shutdown_finishes_in_flight_work(fixture).await;
    garbage_goes_to_dead_letters_without_blocking(fixture).await;
    panicking_handler_is_retried(fixture).await;
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

// ---------------------------------------------------------------------------------------------
// Properties

/// Every published event reaches the handler: events published before the group existed
/// (start from earliest), one by one and in batches.
pub async fn at_least_once<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let before: Vec<Event> = (0..20).map(numbered).collect();
    bus.publish_batch(&topic, &before)
        .await
        .expect("publish batch");
    let seen = Seen::default();
    let sub = subscribe::<F>(
        &bus,
        &topic,
        &group("g"),
        recording(&seen),
        fixture.options(),
    )
    .await;
    let mut all: HashSet<String> = before.iter().map(|e| e.id().to_owned()).collect();
    for n in 20..40 {
        let event = numbered(n);
        bus.publish(&topic, &event).await.expect("publish");
        all.insert(event.id().to_owned());
    }
    wait_until("all 40 events are handled", || {
        seen.distinct().is_superset(&all)
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(
        seen.distinct(),
        all,
        "the handler saw events nobody published"
    );
}

/// An acknowledged event is not delivered again, not even to the same consumer name after a
/// restart (which re-reads what it had not acknowledged).
pub async fn ack_is_final<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let g = group("g");
    let first = Seen::default();
    let options = fixture.options().consumer("c1");
    let sub = subscribe::<F>(&bus, &topic, &g, recording(&first), options.clone()).await;
    let events: Vec<Event> = (0..10).map(numbered).collect();
    bus.publish_batch(&topic, &events).await.expect("publish");
    wait_until("10 events are handled", || first.distinct().len() == 10).await;
    sub.shutdown().await.expect("shutdown");

    let second = Seen::default();
    let sub = subscribe::<F>(&bus, &topic, &g, recording(&second), options).await;
    let sentinel = numbered(999);
    bus.publish(&topic, &sentinel)
        .await
        .expect("publish sentinel");
    wait_until("the sentinel is handled", || {
        second.distinct().contains(sentinel.id())
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(
        second.ids(),
        vec![sentinel.id().to_owned()],
        "acknowledged events were delivered again"
    );
}

/// A handler error is retried (with the attempt number counting up) until it succeeds; nothing
/// is dead-lettered.
pub async fn retry_after_handler_error<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let seen = Seen::default();
    let handler = {
        let seen = seen.clone();
        handler_fn(move |event, ctx| {
            let seen = seen.clone();
            async move {
                seen.push(event.id(), ctx.attempt, &ctx.consumer);
                if ctx.attempt < 3 {
                    return Err(HandlerError::retry(format!(
                        "transient failure {}",
                        ctx.attempt
                    )));
                }
                Ok(())
            }
        })
    };
    let options = fixture.options().retry(fast_retry(5));
    let sub = subscribe::<F>(&bus, &topic, &group("g"), Arc::new(handler), options).await;
    let event = numbered(1);
    bus.publish(&topic, &event).await.expect("publish");
    wait_until("the third attempt", || seen.len() >= 3).await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(seen.attempts_of(event.id()), vec![1, 2, 3]);
    let dlq = bus.dead_letters(&topic, 10).await.expect("dead letters");
    assert!(
        dlq.is_empty(),
        "a retried-then-handled event was dead-lettered: {dlq:?}"
    );
}

/// A handler that keeps failing gets exactly `max_attempts` attempts; then the event is in the
/// dead-letter queue with the last error, and events behind it are handled.
pub async fn dead_letter_after_max_attempts<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let seen = Seen::default();
    let poison = numbered(13);
    let handler = {
        let seen = seen.clone();
        let poison_id = poison.id().to_owned();
        handler_fn(move |event, ctx| {
            let seen = seen.clone();
            let poison = event.id() == poison_id;
            async move {
                seen.push(event.id(), ctx.attempt, &ctx.consumer);
                if poison {
                    return Err(HandlerError::retry(format!(
                        "boom on attempt {}",
                        ctx.attempt
                    )));
                }
                Ok(())
            }
        })
    };
    let g = group("g");
    let sub = subscribe::<F>(
        &bus,
        &topic,
        &g,
        Arc::new(handler),
        fixture.options().retry(fast_retry(3)),
    )
    .await;
    let after = numbered(14);
    bus.publish_batch(&topic, &[poison.clone(), after.clone()])
        .await
        .expect("publish");
    let dlq = wait_dead_letters(&bus, &topic, 1).await;
    wait_until("the event behind the poison one is handled", || {
        seen.distinct().contains(after.id())
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let dead = &dlq[0];
    assert_eq!(seen.attempts_of(poison.id()), vec![1, 2, 3]);
    assert_eq!(
        dead.event.as_ref().map(Event::id),
        Some(poison.id()),
        "{dead:?}"
    );
    assert_eq!(
        Event::from_json(&dead.payload)
            .expect("payload decodes")
            .id(),
        poison.id()
    );
    assert!(
        dead.error.contains("boom on attempt 3"),
        "reason lacks the last error: {}",
        dead.error
    );
    assert_eq!(dead.group, g.as_str());
    assert_eq!(dead.topic, topic.as_str());
}

/// A rejected event goes to the dead-letter queue at once, with the handler's reason.
pub async fn reject_dead_letters_at_once<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let seen = Seen::default();
    let handler = {
        let seen = seen.clone();
        handler_fn(move |event, ctx| {
            let seen = seen.clone();
            async move {
                seen.push(event.id(), ctx.attempt, &ctx.consumer);
                Err(HandlerError::reject("amount is negative"))
            }
        })
    };
    let sub = subscribe::<F>(
        &bus,
        &topic,
        &group("g"),
        Arc::new(handler),
        fixture.options().retry(fast_retry(5)),
    )
    .await;
    let event = numbered(1);
    bus.publish(&topic, &event).await.expect("publish");
    let dlq = wait_dead_letters(&bus, &topic, 1).await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(
        seen.attempts_of(event.id()),
        vec![1],
        "a rejected event was retried"
    );
    assert!(
        dlq[0].error.contains("amount is negative"),
        "reason: {}",
        dlq[0].error
    );
    assert_eq!(dlq[0].event.as_ref().map(Event::id), Some(event.id()));
}

/// Two members of one group split the events: together they handle every event, each event
/// once, and both get a share.
pub async fn group_members_split_the_work<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let other = fixture.bus().await;
    let topic = fixture.topic();
    let g = group("workers");
    let seen = Seen::default();
    let slow = || {
        let seen = seen.clone();
        Arc::new(handler_fn(move |event, ctx| {
            let seen = seen.clone();
            async move {
                seen.push(event.id(), ctx.attempt, &ctx.consumer);
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok(())
            }
        })) as Arc<dyn Handler>
    };
    let options = fixture.options().concurrency(2).prefetch(2);
    let a = subscribe::<F>(&bus, &topic, &g, slow(), options.clone().consumer("a")).await;
    let b = subscribe::<F>(&other, &topic, &g, slow(), options.consumer("b")).await;
    let mut all = HashSet::new();
    for n in 0..80 {
        let event = numbered(n);
        all.insert(event.id().to_owned());
        bus.publish(&topic, &event).await.expect("publish");
    }
    wait_until("all 80 events are handled", || {
        seen.distinct().is_superset(&all)
    })
    .await;
    a.shutdown().await.expect("shutdown a");
    b.shutdown().await.expect("shutdown b");
    let records = seen.0.lock().unwrap().clone();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    let mut per_consumer: HashMap<&str, usize> = HashMap::new();
    for (id, _, consumer) in &records {
        *per_id.entry(id).or_default() += 1;
        *per_consumer.entry(consumer).or_default() += 1;
    }
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "events handled by both members: {twice:?}"
    );
    assert_eq!(records.len(), 80);
    assert!(
        per_consumer.get("a").copied().unwrap_or(0) > 0
            && per_consumer.get("b").copied().unwrap_or(0) > 0,
        "one member got all the work: {per_consumer:?}"
    );
}

/// Every group gets every event.
pub async fn every_group_gets_every_event<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let (s1, s2) = (Seen::default(), Seen::default());
    let a = subscribe::<F>(
        &bus,
        &topic,
        &group("billing"),
        recording(&s1),
        fixture.options(),
    )
    .await;
    let b = subscribe::<F>(
        &bus,
        &topic,
        &group("shipping"),
        recording(&s2),
        fixture.options(),
    )
    .await;
    let events: Vec<Event> = (0..30).map(numbered).collect();
    bus.publish_batch(&topic, &events).await.expect("publish");
    let all: HashSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    wait_until("both groups handled every event", || {
        s1.distinct() == all && s2.distinct() == all
    })
    .await;
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
    assert_eq!(s1.len(), 30, "group billing saw duplicates");
    assert_eq!(s2.len(), 30, "group shipping saw duplicates");
}

/// With many handlers running at once, events of one ordering key are handled one at a time
/// in publish order; different keys do run concurrently.
pub async fn order_per_key_under_concurrency<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    const KEYS: usize = 4;
    const PER_KEY: usize = 25;
    let order: Arc<Mutex<BTreeMap<String, Vec<usize>>>> = Arc::default();
    let active = Arc::new(AtomicUsize::new(0));
    let max_active = Arc::new(AtomicUsize::new(0));
    let busy_keys: Arc<Mutex<HashSet<String>>> = Arc::default();
    let overlap = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (order, active, max_active, busy_keys, overlap) = (
            order.clone(),
            active.clone(),
            max_active.clone(),
            busy_keys.clone(),
            overlap.clone(),
        );
        handler_fn(move |event, _ctx| {
            let (order, active, max_active, busy_keys, overlap) = (
                order.clone(),
                active.clone(),
                max_active.clone(),
                busy_keys.clone(),
                overlap.clone(),
            );
            async move {
                let key = event.partition_key().unwrap_or_default().to_owned();
                let seq: usize = event
                    .data_as()
                    .map_err(HandlerError::reject)?
                    .unwrap_or_default();
                if !busy_keys.lock().unwrap().insert(key.clone()) {
                    overlap.fetch_add(1, Ordering::SeqCst);
                }
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                max_active.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis((seq % 3) as u64 + 1)).await;
                order
                    .lock()
                    .unwrap()
                    .entry(key.clone())
                    .or_default()
                    .push(seq);
                active.fetch_sub(1, Ordering::SeqCst);
                busy_keys.lock().unwrap().remove(&key);
                Ok(())
            }
        })
    };
    let options = fixture.options().concurrency(8).prefetch(64);
    let sub = subscribe::<F>(&bus, &topic, &group("g"), Arc::new(handler), options).await;
    let mut events = Vec::new();
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            events.push(keyed(&format!("key-{k}"), seq));
        }
    }
    bus.publish_batch(&topic, &events).await.expect("publish");
    wait_until("every event is handled", || {
        order.lock().unwrap().values().map(Vec::len).sum::<usize>() >= KEYS * PER_KEY
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    let order = order.lock().unwrap();
    let expected: Vec<usize> = (0..PER_KEY).collect();
    for (key, seqs) in order.iter() {
        assert_eq!(seqs, &expected, "events of {key} handled out of order");
    }
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "two events of one key ran at once"
    );
    assert!(
        max_active.load(Ordering::SeqCst) > 1,
        "different keys never ran concurrently"
    );
}

/// Shutdown waits for the handler in flight, acknowledges its work, and a restarted consumer
/// does not get that event again.
pub async fn shutdown_finishes_in_flight_work<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let g = group("g");
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (started, finished) = (started.clone(), finished.clone());
        handler_fn(move |_event, _ctx| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let options = fixture
        .options()
        .consumer("c1")
        .shutdown_timeout(Duration::from_secs(20));
    let sub = subscribe::<F>(&bus, &topic, &g, Arc::new(handler), options.clone()).await;
    let event = numbered(1);
    bus.publish(&topic, &event).await.expect("publish");
    wait_until("the handler started", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    sub.shutdown().await.expect("graceful shutdown");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "shutdown returned before the in-flight handler finished"
    );

    let again = Seen::default();
    let sub = subscribe::<F>(&bus, &topic, &g, recording(&again), options).await;
    let sentinel = numbered(2);
    bus.publish(&topic, &sentinel)
        .await
        .expect("publish sentinel");
    wait_until("the sentinel is handled", || {
        again.distinct().contains(sentinel.id())
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(
        again.ids(),
        vec![sentinel.id().to_owned()],
        "work finished during shutdown was not acknowledged"
    );
}

/// An entry that is not an event (written by a raw client) goes to the dead-letter queue with
/// the reason and its bytes as written; the events behind it are handled.
pub async fn garbage_goes_to_dead_letters_without_blocking<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let garbage = b"{\"specversion\": \"1.0\", this is not json".to_vec();
    fixture.publish_raw(&topic, &garbage).await;
    let events: Vec<Event> = (0..5).map(numbered).collect();
    bus.publish_batch(&topic, &events).await.expect("publish");
    let seen = Seen::default();
    let sub = subscribe::<F>(
        &bus,
        &topic,
        &group("g"),
        recording(&seen),
        fixture.options(),
    )
    .await;
    let all: HashSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    let dlq = wait_dead_letters(&bus, &topic, 1).await;
    wait_until("the events behind the garbage are handled", || {
        seen.distinct() == all
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(
        dlq[0].payload, garbage,
        "the dead letter does not keep the bytes as written"
    );
    assert!(dlq[0].event.is_none());
    assert!(
        dlq[0].error.contains("undecodable"),
        "reason: {}",
        dlq[0].error
    );
}

/// A handler that panics is retried like one that failed, and the subscription survives.
pub async fn panicking_handler_is_retried<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let seen = Seen::default();
    let handler = {
        let seen = seen.clone();
        handler_fn(move |event, ctx| {
            let seen = seen.clone();
            async move {
                seen.push(event.id(), ctx.attempt, &ctx.consumer);
                if ctx.attempt == 1 {
                    panic!("handler bug on first attempt");
                }
                Ok(())
            }
        })
    };
    let sub = subscribe::<F>(
        &bus,
        &topic,
        &group("g"),
        Arc::new(handler),
        fixture.options().retry(fast_retry(3)),
    )
    .await;
    let (first, second) = (numbered(1), numbered(2));
    bus.publish(&topic, &first).await.expect("publish");
    wait_until("the retry after the panic", || {
        seen.attempts_of(first.id()).len() >= 2
    })
    .await;
    bus.publish(&topic, &second).await.expect("publish");
    wait_until("the next event is handled", || {
        seen.attempts_of(second.id()).len() >= 2
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(seen.attempts_of(first.id()), vec![1, 2]);
    let dlq = bus.dead_letters(&topic, 10).await.expect("dead letters");
    assert!(dlq.is_empty(), "{dlq:?}");
}
