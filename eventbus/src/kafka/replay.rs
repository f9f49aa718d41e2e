//! Replay on Kafka: a reader with manual partition assignment (no group, nothing committed),
//! positioned with `offsets_for_times` or by finding an event id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use windlass_core::{Group, Topic};

use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::kafka::subscriber::READ_IDLE;
use crate::kafka::{KafkaBus, decode_record};
use crate::replay::{Replay, ReplayFrom, ReplayOptions, ReplayReport, deliver};

fn kerr(op: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> Error {
    move |e| Error::backend("kafka", op, e)
}

const META_TIMEOUT: Duration = Duration::from_secs(10);

/// Per partition: where to start and the high watermark when the replay started.
#[derive(Debug, Default)]
struct Plan {
    ranges: HashMap<i32, (i64, i64)>,
}

fn reader(bus: &KafkaBus, group: Option<&str>) -> Result<BaseConsumer> {
    let cfg = &bus.inner.config;
    let mut c = cfg.base();
    c.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("group.id", group.unwrap_or("windlass-replay"));
    cfg.finish(c).create().map_err(kerr("replay"))
}

fn watermarks(consumer: &BaseConsumer, topic: &str) -> Result<HashMap<i32, (i64, i64)>> {
    let md = consumer
        .fetch_metadata(Some(topic), META_TIMEOUT)
        .map_err(kerr("replay"))?;
    let Some(t) = md.topics().first() else {
        return Err(Error::UnknownTopic {
            topic: topic.to_owned(),
        });
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(Error::UnknownTopic {
            topic: topic.to_owned(),
        });
    }
    let mut out = HashMap::new();
    for p in t.partitions() {
        let wm = consumer
            .fetch_watermarks(topic, p.id(), META_TIMEOUT)
            .map_err(kerr("replay"))?;
        out.insert(p.id(), wm);
    }
    Ok(out)
}

fn offsets_for_time(
    consumer: &BaseConsumer,
    topic: &str,
    parts: &HashMap<i32, (i64, i64)>,
    ms: i64,
) -> Result<HashMap<i32, i64>> {
    let mut tpl = TopicPartitionList::new();
    for p in parts.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Offset(ms))
            .map_err(kerr("replay"))?;
    }
    let found = consumer
        .offsets_for_times(tpl, META_TIMEOUT)
        .map_err(kerr("replay"))?;
    let mut out = HashMap::new();
    for e in found.elements() {
        let high = parts.get(&e.partition()).map_or(0, |w| w.1);
        let start = match e.offset() {
            Offset::Offset(o) => o,
            // No record at or after the time: nothing to replay there.
            _ => high,
        };
        out.insert(e.partition(), start);
    }
    Ok(out)
}

/// Reads `ranges` (start inclusive, end exclusive) with manual assignment, handing each record
/// to `f` until it returns `false`.
fn scan(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &HashMap<i32, (i64, i64)>,
    deadline: Instant,
    mut f: impl FnMut(OwnedMessage) -> bool,
) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    let mut left: HashMap<i32, i64> = HashMap::new();
    for (p, (start, end)) in ranges {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*start))
            .map_err(kerr("replay"))?;
        if end > start {
            left.insert(*p, *end);
        }
    }
    consumer.assign(&tpl).map_err(kerr("replay"))?;
    // The high watermarks are a lower bound only (tansu reports one past the first offset of
    // the last batch): read on until the partitions stay idle.
    let mut idle_since = Instant::now();
    loop {
        if Instant::now() > deadline {
            return Err(Error::Timeout("kafka replay"));
        }
        if left.is_empty() && idle_since.elapsed() >= READ_IDLE {
            break;
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Err(e)) => tracing::debug!(topic, error = %e, "replay read error"),
            Some(Ok(m)) => {
                let m = m.detach();
                idle_since = Instant::now();
                if left
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    left.remove(&m.partition());
                }
                if !f(m) {
                    break;
                }
            }
        }
    }
    let _ = consumer.unassign();
    Ok(())
}

fn header_is(m: &OwnedMessage, name: &str, value: &str) -> bool {
    m.headers().is_some_and(|hs| {
        hs.iter()
            .any(|h| h.key == name && h.value == Some(value.as_bytes()))
    })
}

/// Finds the record of event `id` (binary or structured mode).
fn find_event(
    consumer: &BaseConsumer,
    topic: &str,
    parts: &HashMap<i32, (i64, i64)>,
    id: &str,
    deadline: Instant,
) -> Result<Option<(i32, i64, i64)>> {
    let mut found = None;
    scan(consumer, topic, parts, deadline, |m| {
        let hit = header_is(&m, "ce_id", id)
            || (m
                .headers()
                .is_none_or(|hs| !hs.iter().any(|h| h.key == "ce_id"))
                && decode_record(&m).is_ok_and(|e| e.id() == id));
        if hit {
            found = Some((
                m.partition(),
                m.offset(),
                m.timestamp().to_millis().unwrap_or(0),
            ));
        }
        !hit
    })?;
    Ok(found)
}

fn plan(
    bus: &KafkaBus,
    consumer: &BaseConsumer,
    topic: &Topic,
    from: &ReplayFrom,
    deadline: Instant,
) -> Result<Plan> {
    let _ = bus;
    let parts = watermarks(consumer, topic.as_str())?;
    let starts: HashMap<i32, i64> = match from {
        ReplayFrom::Beginning => parts.iter().map(|(p, (low, _))| (*p, *low)).collect(),
        ReplayFrom::Time(t) => {
            offsets_for_time(consumer, topic.as_str(), &parts, t.timestamp_millis())?
        }
        ReplayFrom::EventId(id) => {
            let Some((partition, offset, ts)) =
                find_event(consumer, topic.as_str(), &parts, id, deadline)?
            else {
                return Err(Error::EventNotFound {
                    topic: topic.to_string(),
                    id: id.clone(),
                });
            };
            // The event's own partition starts at it; the others at its timestamp.
            let mut starts = offsets_for_time(consumer, topic.as_str(), &parts, ts)?;
            starts.insert(partition, offset);
            starts
        }
    };
    let ranges = parts
        .iter()
        .map(|(p, (low, high))| {
            (
                *p,
                (starts.get(p).copied().unwrap_or(*high).max(*low), *high),
            )
        })
        .collect();
    Ok(Plan { ranges })
}

impl KafkaBus {
    /// Creates consumer group `group` on `topic` positioned at `from`, for a replay through a
    /// normal subscription (which then reads from there on, live events included). Refuses a
    /// group that already committed offsets on the topic, so live consumers are never moved.
    pub async fn start_group_at(
        &self,
        topic: &Topic,
        group: &Group,
        from: ReplayFrom,
    ) -> Result<()> {
        let bus = self.clone();
        let (topic, group) = (topic.clone(), group.clone());
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let group_id = format!("{}{}", bus.inner.config.group_prefix, group);
            let consumer = reader(&bus, Some(&group_id))?;
            let plan = plan(&bus, &consumer, &topic, &from, deadline)?;
            let mut all = TopicPartitionList::new();
            for p in plan.ranges.keys() {
                all.add_partition(topic.as_str(), *p);
            }
            let committed = consumer.committed_offsets(all, META_TIMEOUT).map_err(kerr("replay"))?;
            if committed.elements().iter().any(|e| matches!(e.offset(), Offset::Offset(_))) {
                return Err(Error::Config(format!(
                    "consumer group {group} already has committed offsets on {topic}; replay into a new group"
                )));
            }
            let mut tpl = TopicPartitionList::new();
            for (p, (start, _)) in &plan.ranges {
                tpl.add_partition_offset(topic.as_str(), *p, Offset::Offset(*start)).map_err(kerr("replay"))?;
            }
            consumer.commit(&tpl, CommitMode::Sync).map_err(kerr("replay"))
        })
        .await
        .map_err(|e| Error::backend("kafka", "replay", e))?
    }
}

#[async_trait]
impl Replay for KafkaBus {
    async fn replay(
        &self,
        topic: &Topic,
        from: ReplayFrom,
        handler: &dyn Handler,
        options: &ReplayOptions,
    ) -> Result<ReplayReport> {
        let deadline = Instant::now() + options.timeout;
        let (tx, mut rx) = mpsc::channel::<OwnedMessage>(256);
        let bus = self.clone();
        let t = topic.clone();
        let until = options.until.map(|u| u.timestamp_millis());
        // Watermarks can be low (tansu), so a time-based start may begin early: filter too.
        let since = match &from {
            ReplayFrom::Time(t) => Some(t.timestamp_millis()),
            _ => None,
        };
        let reader_task = tokio::task::spawn_blocking(move || -> Result<()> {
            let consumer = reader(&bus, None)?;
            let plan = plan(&bus, &consumer, &t, &from, deadline)?;
            scan(&consumer, t.as_str(), &plan.ranges, deadline, |m| {
                let ts = m.timestamp().to_millis();
                if until.is_some_and(|u| ts.is_some_and(|ts| ts > u))
                    || since.is_some_and(|s| ts.is_some_and(|ts| ts < s))
                {
                    return true;
                }
                tx.blocking_send(m).is_ok()
            })
        });
        let mut report = ReplayReport::default();
        while let Some(m) = rx.recv().await {
            let position = format!("{}@{}", m.partition(), m.offset());
            let entry = decode_record(&m).map_err(|u| format!("undecodable record: {}", u.reason));
            if !deliver(&mut report, handler, options, topic, position, entry).await {
                break;
            }
        }
        drop(rx);
        reader_task
            .await
            .map_err(|e| Error::backend("kafka", "replay", e))??;
        Ok(report)
    }
}
