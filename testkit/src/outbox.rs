//! Outbox test harness: a publisher whose faults the test controls ([`Recorder`]), the two
//! backend fixtures of the outbox conformance suite ([`PgFixture`], [`SqliteFixture`]), and a
//! PgBouncer in transaction mode started for the test ([`PgBouncer`]).

use std::collections::{HashMap, HashSet};
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
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One publish the [`Recorder`] accepted.
#[derive(Debug, Clone)]
pub struct Published {
    /// The topic.
    pub topic: String,
    /// The event as the bus got it.
    pub event: Event,
    /// The event's JSON as the bus would carry it.
    pub json: String,
}

#[derive(Default)]
struct State {
    published: Vec<Published>,
    failing_keys: HashSet<String>,
    rejected: HashSet<String>,
    down: bool,
    /// A batch fails after publishing this many of its events (partial batch failure).
    fail_batch_after: Option<usize>,
    calls: usize,
    delay: Option<Duration>,
}

/// A publisher that records what it accepted and fails on demand: bus down, one key's
/// partition failing, events rejected for good, batches that fail after a prefix went out.
/// It stands in for a bus whose faults we control precisely; the store under test is always
/// the real database.
#[derive(Clone, Default)]
pub struct Recorder {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("count", &self.count())
            .finish()
    }
}

impl Recorder {
    /// An empty recorder, bus up.
    pub fn new() -> Self {
        Self::default()
    }
    /// Everything accepted so far, in acceptance order.
    pub fn published(&self) -> Vec<Published> {
        self.state.lock().unwrap().published.clone()
    }
    /// How many events were accepted (duplicates included).
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().published.len()
    }
    /// Publish calls made (single and batch).
    pub fn calls(&self) -> usize {
        self.state.lock().unwrap().calls
    }
    /// Ids of the accepted events, in order.
    pub fn ids(&self) -> Vec<String> {
        self.published()
            .into_iter()
            .map(|p| p.event.id().to_owned())
            .collect()
    }
    /// Distinct accepted ids.
    pub fn distinct(&self) -> HashSet<String> {
        self.ids().into_iter().collect()
    }
    /// Takes the bus down (every publish fails transiently) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }
    /// Makes events of partition key `key` fail transiently, or stops it.
    pub fn fail_key(&self, key: &str, on: bool) {
        let mut s = self.state.lock().unwrap();
        if on {
            s.failing_keys.insert(key.to_owned());
        } else {
            s.failing_keys.remove(key);
        }
    }
    /// Makes the bus reject event `id` for good (permanent failure), or stops it.
    pub fn reject(&self, id: &str, on: bool) {
        let mut s = self.state.lock().unwrap();
        if on {
            s.rejected.insert(id.to_owned());
        } else {
            s.rejected.remove(id);
        }
    }
    /// Makes every `publish_batch` fail transiently after publishing `n` of its events.
    pub fn fail_batches_after(&self, n: Option<usize>) {
        self.state.lock().unwrap().fail_batch_after = n;
    }
    /// Makes every publish take `d` (a slow bus).
    pub fn set_delay(&self, d: Option<Duration>) {
        self.state.lock().unwrap().delay = d;
    }

    fn check(&self, event: &Event) -> Result<(), BusError> {
        let s = self.state.lock().unwrap();
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
        Ok(())
    }

    fn accept(&self, topic: &Topic, event: &Event) {
        self.state.lock().unwrap().published.push(Published {
            topic: topic.to_string(),
            event: event.clone(),
            json: event.to_json(),
        });
    }

    async fn pause(&self) {
        let delay = self.state.lock().unwrap().delay;
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
    }
}

#[async_trait]
impl Publisher for Recorder {
    async fn publish(&self, topic: &Topic, event: &Event) -> windlass_eventbus::Result<()> {
        self.state.lock().unwrap().calls += 1;
        self.pause().await;
        self.check(event)?;
        self.accept(topic, event);
        Ok(())
    }

    async fn publish_batch(
        &self,
        topic: &Topic,
        events: &[Event],
    ) -> windlass_eventbus::Result<()> {
        let after = {
            let mut s = self.state.lock().unwrap();
            s.calls += 1;
            s.fail_batch_after
        };
        self.pause().await;
        // Like a real bus: the events before the failing one went out.
        for (i, e) in events.iter().enumerate() {
            if after.is_some_and(|n| i >= n) && events.len() > 1 {
                return Err(BusError::backend(
                    "test",
                    "publish",
                    "connection reset mid-batch",
                ));
            }
            self.check(e)?;
            self.accept(topic, e);
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

/// An event of tenant `org` for `key` with `n` as data.
pub fn tenant_event(org: &str, key: &str, n: u64) -> Event {
    Event::builder("/test", "thing.happened")
        .org_id(org)
        .partition_key(key)
        .data_json(&n)
        .build()
        .unwrap()
}

/// The `n` (data) of an event made by [`event`].
pub fn n_of(e: &Event) -> u64 {
    e.data_as().unwrap().unwrap()
}

/// Checks per-key order as a consumer with an inbox sees it: for every key, the first delivery
/// of each event comes in strictly increasing `n` (duplicates, which the inbox drops, are
/// skipped). Returns the deduplicated sequence per key.
pub fn assert_per_key_order(published: &[Published]) -> HashMap<String, Vec<u64>> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for p in published {
        if !seen.insert(p.event.id().to_owned()) {
            continue;
        }
        let key = p.event.partition_key().unwrap_or_default().to_owned();
        let n = n_of(&p.event);
        let list = per_key.entry(key.clone()).or_default();
        if let Some(prev) = list.last() {
            assert!(
                n > *prev,
                "key {key}: {n} delivered after {prev} (sequence so far {list:?})"
            );
        }
        list.push(n);
    }
    per_key
}

mod fixtures;
mod pgbouncer;

pub use fixtures::{OutboxFixture, PgFixture, SqliteFixture, sqlite_pool};
pub use pgbouncer::PgBouncer;
