//! Shared test helpers: publishers with injectable failures, polling with a deadline.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use windlass_eventbus::{Error as BusError, Event, Publisher, Topic};

/// Polls `cond` every 20 ms until it holds; panics after `secs` seconds with `what`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One publish the [`Recorder`] accepted.
#[derive(Debug, Clone)]
pub struct Published {
    pub topic: String,
    pub event: Event,
}

#[derive(Default)]
struct State {
    published: Vec<Published>,
    /// Keys whose events fail transiently.
    failing_keys: HashSet<String>,
    /// Event ids the bus rejects permanently.
    rejected: HashSet<String>,
    /// Everything fails transiently (bus down).
    down: bool,
    calls: usize,
}

/// A publisher that records what it accepted and fails on demand. Stands in for a bus whose
/// faults we control precisely; the store under test is always the real database.
#[derive(Clone, Default)]
pub struct Recorder {
    state: Arc<Mutex<State>>,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn published(&self) -> Vec<Published> {
        self.state.lock().unwrap().published.clone()
    }
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().published.len()
    }
    pub fn calls(&self) -> usize {
        self.state.lock().unwrap().calls
    }
    pub fn ids(&self) -> Vec<String> {
        self.published()
            .into_iter()
            .map(|p| p.event.id().to_owned())
            .collect()
    }
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }
    pub fn fail_key(&self, key: &str, on: bool) {
        let mut s = self.state.lock().unwrap();
        if on {
            s.failing_keys.insert(key.to_owned());
        } else {
            s.failing_keys.remove(key);
        }
    }
    pub fn reject(&self, id: &str, on: bool) {
        let mut s = self.state.lock().unwrap();
        if on {
            s.rejected.insert(id.to_owned());
        } else {
            s.rejected.remove(id);
        }
    }
}

#[async_trait]
impl Publisher for Recorder {
    async fn publish(&self, topic: &Topic, event: &Event) -> windlass_eventbus::Result<()> {
        let mut s = self.state.lock().unwrap();
        s.calls += 1;
        if s.down {
            return Err(BusError::backend(
                "test",
                "publish",
                "connection refused (bus is down)",
            ));
        }
        if event
            .partition_key()
            .is_some_and(|k| s.failing_keys.contains(k))
        {
            return Err(BusError::backend(
                "test",
                "publish",
                "partition unavailable",
            ));
        }
        if s.rejected.contains(event.id()) {
            return Err(BusError::TooLarge {
                id: event.id().to_owned(),
                size: 1 << 30,
                limit: 1 << 20,
            });
        }
        s.published.push(Published {
            topic: topic.to_string(),
            event: event.clone(),
        });
        Ok(())
    }

    async fn publish_batch(
        &self,
        topic: &Topic,
        events: &[Event],
    ) -> windlass_eventbus::Result<()> {
        // All or nothing, so a failed batch leaves no prefix (the relay's one-by-one pass then
        // sorts the events out).
        {
            let s = self.state.lock().unwrap();
            let bad = s.down
                || events.iter().any(|e| {
                    e.partition_key()
                        .is_some_and(|k| s.failing_keys.contains(k))
                        || s.rejected.contains(e.id())
                });
            if bad {
                drop(s);
                let e = events
                    .iter()
                    .find(|e| self.state.lock().unwrap().rejected.contains(e.id()))
                    .map(|e| BusError::TooLarge {
                        id: e.id().to_owned(),
                        size: 1 << 30,
                        limit: 1 << 20,
                    })
                    .unwrap_or_else(|| BusError::backend("test", "publish", "batch failed"));
                self.state.lock().unwrap().calls += 1;
                return Err(e);
            }
        }
        for e in events {
            self.publish(topic, e).await?;
        }
        Ok(())
    }
}

/// An event for `key` with `n` as data.
pub fn event(key: &str, n: u64) -> Event {
    Event::builder("/test", "thing.happened")
        .partition_key(key)
        .data_json(&n)
        .build()
        .unwrap()
}

/// Checks that, for every key, the published `n`s come in strictly increasing order (no
/// duplicates: for runs without a crash).
pub fn assert_per_key_order(published: &[Published]) {
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    for p in published {
        let key = p.event.partition_key().unwrap_or_default().to_owned();
        let n: u64 = p.event.data_as().unwrap().unwrap();
        if let Some(prev) = last.get(&key) {
            assert!(n > *prev, "key {key}: {n} published after {prev}");
        }
        last.insert(key, n);
    }
}

/// Wraps a handler and counts the deliveries it acknowledged.
pub struct Counting<H> {
    inner: H,
    acked: Arc<std::sync::atomic::AtomicUsize>,
}

impl<H> Counting<H> {
    pub fn new(inner: H, acked: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        Self { inner, acked }
    }
}

#[async_trait]
impl<H: windlass_eventbus::Handler> windlass_eventbus::Handler for Counting<H> {
    async fn handle(
        &self,
        event: &Event,
        ctx: &windlass_eventbus::DeliveryContext,
    ) -> windlass_eventbus::HandlerResult {
        self.inner.handle(event, ctx).await?;
        self.acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}
