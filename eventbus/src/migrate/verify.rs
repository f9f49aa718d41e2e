//! `verify`: compares, per domain and time window, the events both buses hold, and reports
//! the ids missing on either side and the ones out of order (per ordering key).
//!
//! It reads both buses with [`Replay`] (no consumer group is touched, so live consumers do not
//! notice), from `from - slack` to `until + slack` by append time, and keeps the events whose
//! CloudEvents `time` lies in `[from, until)`: the same event is appended to the two buses at
//! different moments (a relay catching up after an outage appends late), so the window is taken
//! on the event's own time, which both copies share. Events without `time` are kept when their
//! append time is in the widened window. Per ordering key (`partitionkey`, else `subject`), the
//! order on the Kafka side is compared with the order on the Redis side.
//!
//! The comparison is only as complete as the two replays: [`TopicVerification::complete`] is
//! false when either replay stopped early (timeout, backend failure), and then "missing" may
//! only mean "not read".

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use windlass_core::Topic;

use super::covers;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::{DeliveryContext, Handler, HandlerResult};
use crate::replay::{Replay, ReplayFrom, ReplayOptions};

/// How [`verify`] reads the buses.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// How far outside the window the buses are read by append time (default 5 min): the
    /// longest an event may have waited between its `time` and its append to either bus.
    pub slack: Duration,
    /// Deadline of each replay (default 60 s).
    pub timeout: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            slack: Duration::from_secs(300),
            timeout: Duration::from_secs(60),
        }
    }
}

impl VerifyOptions {
    /// Sets [`VerifyOptions::slack`].
    pub fn slack(mut self, slack: Duration) -> Self {
        self.slack = slack;
        self
    }
    /// Sets [`VerifyOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// An event whose relative order differs between the buses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutOfOrder {
    /// The ordering key.
    pub key: String,
    /// The event that comes after `before` on the Redis side but before it on the Kafka side.
    pub id: String,
    /// The event it overtook on the Kafka side.
    pub before: String,
}

/// The comparison of one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicVerification {
    /// The topic.
    pub topic: String,
    /// Distinct events of the window on Redis.
    pub on_redis: usize,
    /// Distinct events of the window on Kafka.
    pub on_kafka: usize,
    /// Ids on Redis and not on Kafka, in Redis order.
    pub missing_on_kafka: Vec<String>,
    /// Ids on Kafka and not on Redis, in Kafka order.
    pub missing_on_redis: Vec<String>,
    /// Events in another order on Kafka than on Redis, per ordering key.
    pub out_of_order: Vec<OutOfOrder>,
    /// Entries read more than once on Redis (same id; harmless for an inbox consumer).
    pub duplicates_on_redis: usize,
    /// Entries read more than once on Kafka.
    pub duplicates_on_kafka: usize,
    /// Both replays read their bus up to the end position they took when they started.
    pub complete: bool,
}

impl TopicVerification {
    /// True when both sides hold the same events in the same order per key, and both replays
    /// completed.
    pub fn is_consistent(&self) -> bool {
        self.complete
            && self.missing_on_kafka.is_empty()
            && self.missing_on_redis.is_empty()
            && self.out_of_order.is_empty()
    }
}

/// What [`verify`] found, per topic of the domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The domain.
    pub domain: String,
    /// Start of the window (event `time`, included).
    pub from: Option<DateTime<Utc>>,
    /// End of the window (event `time`, excluded).
    pub until: Option<DateTime<Utc>>,
    /// One entry per topic.
    pub topics: Vec<TopicVerification>,
}

impl VerifyReport {
    /// True when every topic is consistent.
    pub fn is_consistent(&self) -> bool {
        self.topics.iter().all(TopicVerification::is_consistent)
    }
}

/// (ordering key, id, time) of an event read.
type Seen = (Option<String>, String, Option<DateTime<Utc>>);

#[derive(Default)]
struct Collect {
    seen: Mutex<Vec<Seen>>,
}

#[async_trait]
impl Handler for Collect {
    async fn handle(&self, event: &Event, _ctx: &DeliveryContext) -> HandlerResult {
        self.seen.lock().expect("collect lock").push((
            event.ordering_key().map(str::to_owned),
            event.id().to_owned(),
            event.time(),
        ));
        Ok(())
    }
}

struct Side {
    /// (key, id) in read order, first occurrence of each id, within the window.
    order: Vec<(Option<String>, String)>,
    duplicates: usize,
    complete: bool,
}

async fn read(
    bus: &dyn Replay,
    topic: &Topic,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    options: &VerifyOptions,
) -> Result<Side> {
    let slack = chrono::Duration::from_std(options.slack)
        .map_err(|e| Error::Config(format!("verify slack: {e}")))?;
    let collect = Collect::default();
    let opts = ReplayOptions::default()
        .until(until + slack)
        .timeout(options.timeout);
    let report = bus
        .replay(topic, ReplayFrom::Time(from - slack), &collect, &opts)
        .await?;
    let seen = collect.seen.into_inner().expect("collect lock");
    let mut ids = HashSet::new();
    let mut side = Side {
        order: Vec::new(),
        duplicates: 0,
        complete: report.is_complete() || report.end == crate::replay::ReplayEnd::Limit,
    };
    for (key, id, time) in seen {
        if time.is_some_and(|t| t < from || t >= until) {
            continue;
        }
        if ids.insert(id.clone()) {
            side.order.push((key, id));
        } else {
            side.duplicates += 1;
        }
    }
    Ok(side)
}

/// Compares the topics of `domain` on both buses for the events whose `time` is in
/// `[from, until)`. Every topic must belong to the domain ([`Error::Config`] otherwise).
/// `Err` only when a replay could not start (unknown topic, no connection).
pub async fn verify(
    redis: &dyn Replay,
    kafka: &dyn Replay,
    domain: &str,
    topics: &[Topic],
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    options: &VerifyOptions,
) -> Result<VerifyReport> {
    if let Some(t) = topics.iter().find(|t| !covers(domain, t)) {
        return Err(Error::Config(format!(
            "topic {t} is not in domain {domain:?}"
        )));
    }
    let mut report = VerifyReport {
        domain: domain.to_owned(),
        from: Some(from),
        until: Some(until),
        topics: Vec::new(),
    };
    for topic in topics {
        let (r, k) = tokio::join!(
            read(redis, topic, from, until, options),
            read(kafka, topic, from, until, options)
        );
        report.topics.push(compare(topic, r?, k?));
    }
    Ok(report)
}

fn compare(topic: &Topic, redis: Side, kafka: Side) -> TopicVerification {
    let on_r: HashSet<&str> = redis.order.iter().map(|(_, i)| i.as_str()).collect();
    let on_k: HashSet<&str> = kafka.order.iter().map(|(_, i)| i.as_str()).collect();
    let missing_on_kafka = redis
        .order
        .iter()
        .filter(|(_, i)| !on_k.contains(i.as_str()))
        .map(|(_, i)| i.clone())
        .collect();
    let missing_on_redis = kafka
        .order
        .iter()
        .filter(|(_, i)| !on_r.contains(i.as_str()))
        .map(|(_, i)| i.clone())
        .collect();
    // Position of each id in its key's Redis order; walk Kafka's order per key and report an
    // id that comes before one it follows on Redis.
    let mut pos: HashMap<&str, usize> = HashMap::new();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for (key, id) in &redis.order {
        if let Some(k) = key {
            let n = per_key.entry(k.as_str()).or_insert(0);
            pos.insert(id.as_str(), *n);
            *n += 1;
        }
    }
    let mut highest: HashMap<&str, (usize, &str)> = HashMap::new();
    let mut out_of_order = Vec::new();
    for (key, id) in &kafka.order {
        let (Some(k), Some(p)) = (key, pos.get(id.as_str())) else {
            continue;
        };
        match highest.get(k.as_str()) {
            Some((h, before)) if p < h => out_of_order.push(OutOfOrder {
                key: k.clone(),
                id: id.clone(),
                before: (*before).to_owned(),
            }),
            _ => {
                highest.insert(k.as_str(), (*p, id.as_str()));
            }
        }
    }
    TopicVerification {
        topic: topic.as_str().to_owned(),
        on_redis: redis.order.len(),
        on_kafka: kafka.order.len(),
        missing_on_kafka,
        missing_on_redis,
        out_of_order,
        duplicates_on_redis: redis.duplicates,
        duplicates_on_kafka: kafka.duplicates,
        complete: redis.complete && kafka.complete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(v: &[(&str, &str)]) -> Side {
        Side {
            order: v
                .iter()
                .map(|(k, i)| (Some((*k).to_owned()), (*i).to_owned()))
                .collect(),
            duplicates: 0,
            complete: true,
        }
    }

    #[test]
    fn finds_missing_and_out_of_order_ids() {
        let t = Topic::new("billing.x").unwrap();
        let r = side(&[("a", "1"), ("b", "2"), ("a", "3"), ("a", "4"), ("b", "5")]);
        // Kafka lacks 2, has 9 Redis lacks, and swaps 3 and 4 of key a (b's order is fine).
        let k = side(&[("a", "1"), ("a", "4"), ("b", "5"), ("a", "3"), ("b", "9")]);
        let v = compare(&t, r, k);
        assert_eq!(v.missing_on_kafka, vec!["2".to_owned()]);
        assert_eq!(v.missing_on_redis, vec!["9".to_owned()]);
        assert_eq!(
            v.out_of_order,
            vec![OutOfOrder {
                key: "a".into(),
                id: "3".into(),
                before: "4".into()
            }]
        );
        assert!(!v.is_consistent());
        let same = compare(
            &t,
            side(&[("a", "1"), ("a", "2")]),
            side(&[("a", "1"), ("a", "2")]),
        );
        assert!(same.is_consistent());
    }
}
