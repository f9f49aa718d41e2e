//! Replay on Kafka: a reader with manual partition assignment (no group, nothing committed),
//! positioned with `offsets_for_times` or by finding an event id, bounded per partition by the
//! high watermark taken when the replay starts.
//!
//! The end of each partition is the larger of two readings taken at the start: the high
//! watermark from `ListOffsets` (exact on Apache Kafka) and the one the broker returns in the
//! first fetch response (librdkafka's statistics, `ls_offset`, else `hi_offset`). The second
//! exists for tansu 0.6, whose `ListOffsets` answers one past the *first* offset of the last
//! record batch; its fetch responses carry the right value. Whatever live traffic appends after
//! that is not read: the replay ends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tokio::sync::mpsc;
use windlass_core::{Group, Topic};

use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::kafka::{KafkaBus, decode_record};
use crate::replay::{Replay, ReplayEnd, ReplayFrom, ReplayOptions, ReplayReport, Run, Step};

fn kerr(op: &'static str) -> impl Fn(KafkaError) -> Error {
    move |e| Error::backend("kafka", op, e)
}

const META_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the reader's librdkafka reports statistics (the fetch-response watermarks).
const STATS_INTERVAL_MS: &str = "50";
/// How long the start waits for a fetch-response watermark before keeping `ListOffsets`'s.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// The reader's client context: the last stable offset (else high watermark) of each
/// partition as seen in fetch responses, with the time librdkafka reported it.
struct ReaderContext {
    topic: String,
    fetched: Mutex<HashMap<i32, (i64, Instant)>>,
}

impl ClientContext for ReaderContext {
    fn stats(&self, stats: Statistics) {
        let Some(t) = stats.topics.get(&self.topic) else {
            return;
        };
        let now = Instant::now();
        let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        for (id, p) in &t.partitions {
            let end = if p.ls_offset >= 0 {
                p.ls_offset
            } else {
                p.hi_offset
            };
            if *id >= 0 && end >= 0 {
                fetched.insert(*id, (end, now));
            }
        }
    }
}

impl ConsumerContext for ReaderContext {}

type Reader = BaseConsumer<ReaderContext>;

/// Per partition: where to start (inclusive) and the end taken at the start (exclusive).
#[derive(Debug, Default)]
struct Plan {
    ranges: HashMap<i32, (i64, i64)>,
}

fn reader(bus: &KafkaBus, topic: &str, group: Option<&str>) -> Result<Reader> {
    let cfg = &bus.inner.config;
    let mut c = cfg.base();
    c.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("statistics.interval.ms", STATS_INTERVAL_MS)
        .set("group.id", group.unwrap_or("windlass-replay"));
    cfg.finish(c)
        .create_with_context(ReaderContext {
            topic: topic.to_owned(),
            fetched: Mutex::new(HashMap::new()),
        })
        .map_err(|e| cfg.scrubbed(Error::backend("kafka", "replay", e)))
}

/// `(low, high)` per partition from `ListOffsets`.
fn listed_watermarks(consumer: &Reader, topic: &str) -> Result<HashMap<i32, (i64, i64)>> {
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

/// `(low, end)` per partition: `end` is the high watermark taken now, the larger of
/// `ListOffsets`'s and the first fetch response's (see the module docs).
fn watermarks(consumer: &Reader, topic: &str) -> Result<HashMap<i32, (i64, i64)>> {
    let mut parts = listed_watermarks(consumer, topic)?;
    let probe: Vec<i32> = parts
        .iter()
        .filter(|(_, (low, high))| high > low)
        .map(|(p, _)| *p)
        .collect();
    if probe.is_empty() {
        return Ok(parts);
    }
    let mut tpl = TopicPartitionList::new();
    for p in &probe {
        let high = parts[p].1;
        tpl.add_partition_offset(topic, *p, Offset::Offset(high - 1))
            .map_err(kerr("replay"))?;
    }
    consumer.assign(&tpl).map_err(kerr("replay"))?;
    // A partition's fetch response has arrived once a record or EOF of it came back; the
    // statistics reported after that carry the broker's watermark from that response.
    let mut answered: HashMap<i32, Instant> = HashMap::new();
    let mut found: HashMap<i32, i64> = HashMap::new();
    let until = Instant::now() + PROBE_WAIT;
    while found.len() < probe.len() && Instant::now() < until {
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) => {
                answered.entry(m.partition()).or_insert_with(Instant::now);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                answered.entry(p).or_insert_with(Instant::now);
            }
            Some(Err(e)) => tracing::debug!(topic, error = %e, "replay probe read error"),
            None => {}
        }
        let fetched = consumer
            .context()
            .fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (p, at) in &answered {
            if let Some((end, reported)) = fetched.get(p)
                && reported > at
            {
                found.insert(*p, *end);
            }
        }
    }
    let _ = consumer.unassign();
    if found.len() < probe.len() {
        tracing::warn!(
            topic,
            "kafka replay: no fetch-response watermark within {PROBE_WAIT:?}; using ListOffsets"
        );
    }
    for (p, end) in found {
        if let Some(w) = parts.get_mut(&p) {
            w.1 = w.1.max(end);
        }
    }
    Ok(parts)
}

fn offsets_for_time(
    consumer: &Reader,
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

/// What a scan saw.
enum Seen {
    Record(OwnedMessage),
    /// The partition was read up to its end.
    Done(i32),
}

/// Reads `ranges` (start inclusive, end exclusive) with manual assignment, in order per
/// partition, handing each record and each finished partition to `f` until it returns
/// `false`, every partition is done, `stop` is set, or `deadline` passes (then
/// `Err(Timeout)`).
fn scan(
    consumer: &Reader,
    topic: &str,
    ranges: &HashMap<i32, (i64, i64)>,
    deadline: Instant,
    stop: &AtomicBool,
    mut f: impl FnMut(Seen) -> bool,
) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    let mut left: HashMap<i32, i64> = HashMap::new();
    for (p, (start, end)) in ranges {
        if end > start {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*start))
                .map_err(kerr("replay"))?;
            left.insert(*p, *end);
        } else if !f(Seen::Done(*p)) {
            return Ok(());
        }
    }
    if left.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl).map_err(kerr("replay"))?;
    let mut finished: HashSet<i32> = HashSet::new();
    let done = |p: i32, finished: &mut HashSet<i32>, f: &mut dyn FnMut(Seen) -> bool| {
        if !finished.insert(p) {
            return true;
        }
        // Stop fetching what live traffic appends there.
        let mut one = TopicPartitionList::new();
        one.add_partition(topic, p);
        let _ = consumer.pause(&one);
        f(Seen::Done(p))
    };
    let result = loop {
        if finished.len() == left.len() {
            break Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(Error::Timeout("kafka replay"));
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            // The fetch position reached the broker's current high watermark, which is at or
            // past the end taken at the start.
            Some(Err(KafkaError::PartitionEOF(p))) => {
                let go_on = !left.contains_key(&p) || done(p, &mut finished, &mut f);
                if !go_on {
                    break Ok(());
                }
            }
            Some(Err(e)) => tracing::debug!(topic, error = %e, "replay read error"),
            Some(Ok(m)) => {
                let m = m.detach();
                let p = m.partition();
                let Some(end) = left.get(&p).copied() else {
                    continue;
                };
                if finished.contains(&p) {
                    continue;
                }
                if m.offset() >= end {
                    if !done(p, &mut finished, &mut f) {
                        break Ok(());
                    }
                    continue;
                }
                let last = m.offset() + 1 >= end;
                if !f(Seen::Record(m)) {
                    break Ok(());
                }
                if last && !done(p, &mut finished, &mut f) {
                    break Ok(());
                }
            }
        }
    };
    let _ = consumer.unassign();
    result
}

fn header_is(m: &OwnedMessage, name: &str, value: &str) -> bool {
    m.headers().is_some_and(|hs| {
        hs.iter()
            .any(|h| h.key == name && h.value == Some(value.as_bytes()))
    })
}

/// Finds the record of event `id` (binary or structured mode) below the ends.
fn find_event(
    consumer: &Reader,
    topic: &str,
    parts: &HashMap<i32, (i64, i64)>,
    id: &str,
    deadline: Instant,
) -> Result<Option<(i32, i64, i64)>> {
    let mut found = None;
    let stop = AtomicBool::new(false);
    scan(consumer, topic, parts, deadline, &stop, |seen| {
        let Seen::Record(m) = seen else { return true };
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

/// The replay's ranges, plus the partition of the `EventId` start (exact offset there; the
/// other partitions start near its timestamp and are filtered by it).
fn plan(
    consumer: &Reader,
    topic: &Topic,
    from: &ReplayFrom,
    deadline: Instant,
) -> Result<(Plan, Option<(i32, i64)>)> {
    let parts = watermarks(consumer, topic.as_str())?;
    let mut anchor = None;
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
            anchor = Some((partition, ts));
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
    Ok((Plan { ranges }, anchor))
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
            let consumer = reader(&bus, topic.as_str(), Some(&group_id))?;
            let (plan, _) = plan(&consumer, &topic, &from, deadline)?;
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

/// What the reader thread tells the replay.
enum Msg {
    /// The ranges: partition, start, end (exclusive).
    Plan(Vec<(i32, i64, i64)>),
    Record(OwnedMessage),
    /// Filtered out by time (`until`, or before a time / event-id start).
    Skipped(i32, i64),
    Done(i32),
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
        let mut run = Run::new(handler, options, topic);
        let deadline = Instant::now() + options.timeout;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::channel::<Msg>(256);
        let bus = self.clone();
        let t = topic.clone();
        let until = options.until.map(|u| u.timestamp_millis());
        let since = match &from {
            ReplayFrom::Time(t) => Some(t.timestamp_millis()),
            _ => None,
        };
        let stop2 = stop.clone();
        let reader_task = tokio::task::spawn_blocking(move || -> Result<()> {
            let consumer = reader(&bus, t.as_str(), None)?;
            let (plan, anchor) = plan(&consumer, &t, &from, deadline)?;
            let ranges = plan.ranges.iter().map(|(p, (s, e))| (*p, *s, *e)).collect();
            if tx.blocking_send(Msg::Plan(ranges)).is_err() {
                return Ok(());
            }
            scan(
                &consumer,
                t.as_str(),
                &plan.ranges,
                deadline,
                &stop2,
                |seen| {
                    let msg = match seen {
                        Seen::Done(p) => Msg::Done(p),
                        Seen::Record(m) => {
                            let ts = m.timestamp().to_millis();
                            // Offsets from timestamps are a start near the time: filter by it too.
                            let floor = match anchor {
                                Some((p, at)) if p != m.partition() => Some(at),
                                _ => since,
                            };
                            if until.is_some_and(|u| ts.is_some_and(|ts| ts > u))
                                || floor.is_some_and(|s| ts.is_some_and(|ts| ts < s))
                            {
                                Msg::Skipped(m.partition(), m.offset())
                            } else {
                                Msg::Record(m)
                            }
                        }
                    };
                    tx.blocking_send(msg).is_ok()
                },
            )
        });
        let mut index: HashMap<i32, usize> = HashMap::new();
        let end = loop {
            let msg = match run.before_deadline(rx.recv()).await {
                None => break ReplayEnd::TimedOut,
                Some(Some(m)) => m,
                Some(None) => {
                    // The reader stopped: done, or failed.
                    match reader_task.await {
                        Ok(Ok(())) => break ReplayEnd::Complete,
                        Ok(Err(Error::Timeout(_))) => break ReplayEnd::TimedOut,
                        Ok(Err(e)) if index.is_empty() => return Err(e),
                        Ok(Err(e)) => break ReplayEnd::Failed(e.to_string()),
                        Err(e) => break ReplayEnd::Failed(format!("kafka replay reader: {e}")),
                    }
                }
            };
            match msg {
                Msg::Plan(mut ranges) => {
                    ranges.sort();
                    for (p, start, end) in ranges {
                        let idx = run.partition(p.to_string(), Some(end.to_string()));
                        if start >= end {
                            run.complete(idx);
                        }
                        index.insert(p, idx);
                    }
                }
                Msg::Record(m) => {
                    let idx = index[&m.partition()];
                    let position = format!("{}@{}", m.partition(), m.offset());
                    let entry =
                        decode_record(&m).map_err(|u| format!("undecodable record: {}", u.reason));
                    if run.deliver(idx, position, entry).await == Step::Stop {
                        break run.report.end.clone();
                    }
                }
                Msg::Skipped(p, offset) => run.skip(index[&p], format!("{p}@{offset}")),
                Msg::Done(p) => run.complete(index[&p]),
            }
        };
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        Ok(run.finish(end))
    }
}
