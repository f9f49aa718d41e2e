//! The dead-letter topic: writing a record there as it was read, with the reason, and reading
//! the topic back ([`DeadLetters`]).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use windlass_core::Topic;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::kafka::KafkaBus;
use crate::kafka::codec;
use crate::kafka::offsets::KafkaToken;
use crate::kafka::publisher::map_produce_error;
use crate::runner::Delivery;
use crate::traits::{DeadLetter, DeadLetters};

/// Header of a DLQ record: why it was dead-lettered.
pub const DLQ_REASON_HEADER: &str = "windlass_dlq_reason";
/// Header of a DLQ record: the group whose handler gave up.
pub const DLQ_GROUP_HEADER: &str = "windlass_dlq_group";
/// Header of a DLQ record: the original `topic/partition@offset`.
pub const DLQ_ORIGIN_HEADER: &str = "windlass_dlq_origin";
/// Header of a DLQ record: when it was dead-lettered (RFC 3339).
pub const DLQ_FAILED_AT_HEADER: &str = "windlass_dlq_failed_at";

/// How long a reader waits for more records once it reached the high watermarks.
pub(crate) const READ_IDLE: Duration = Duration::from_millis(300);

/// Longest reason kept in the DLQ header.
const REASON_MAX: usize = 4096;

/// Writes `delivery`'s record to the DLQ topic as it was read, with the reason, the group,
/// the origin and the time in headers. Does not acknowledge it.
pub(crate) async fn write(
    bus: &KafkaBus,
    topic: &str,
    dlq_topic: &str,
    group: &str,
    delivery: &Delivery<KafkaToken>,
    reason: &str,
) -> Result<()> {
    let record = &delivery.token.record;
    let mut headers = OwnedHeaders::new();
    if let Some(hs) = record.headers() {
        for h in hs.iter() {
            if !h.key.starts_with("windlass_dlq_") {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
    }
    let mut reason = reason.to_owned();
    if reason.len() > REASON_MAX {
        let mut cut = REASON_MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let origin = format!("{}/{}@{}", topic, record.partition(), record.offset());
    let failed_at = Utc::now().to_rfc3339();
    headers = headers
        .insert(Header {
            key: DLQ_REASON_HEADER,
            value: Some(reason.as_bytes()),
        })
        .insert(Header {
            key: DLQ_GROUP_HEADER,
            value: Some(group.as_bytes()),
        })
        .insert(Header {
            key: DLQ_ORIGIN_HEADER,
            value: Some(origin.as_bytes()),
        })
        .insert(Header {
            key: DLQ_FAILED_AT_HEADER,
            value: Some(failed_at.as_bytes()),
        });
    let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(headers);
    if let Some(k) = record.key() {
        out = out.key(k);
    }
    if let Some(v) = record.payload() {
        out = out.payload(v);
    }
    let size = record.payload().map_or(0, <[u8]>::len);
    let cfg = &bus.inner.config;
    bus.inner
        .producer
        .send(out, Timeout::After(cfg.publish_timeout))
        .await
        .map_err(|(e, _)| {
            map_produce_error(
                e,
                dlq_topic,
                &delivery.delivery_id,
                size,
                cfg.max_message_bytes,
            )
        })?;
    Ok(())
}

fn header_str(record: &OwnedMessage, name: &str) -> Option<String> {
    record
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Reads a whole (small) topic from the beginning with manual assignment: no group, no commit,
/// invisible to live consumers. Stops at the high watermarks seen when it starts.
pub(crate) fn read_topic(
    bus: &KafkaBus,
    topic: &str,
    limit: usize,
    deadline: Duration,
) -> Result<Vec<OwnedMessage>> {
    let cfg = &bus.inner.config;
    let mut c = cfg.base();
    c.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("group.id", "windlass-reader");
    let consumer: BaseConsumer = cfg
        .finish(c)
        .create()
        .map_err(|e| Error::backend("kafka", "read", e))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| Error::backend("kafka", "read", e))?;
    let Some(t) = md.topics().first() else {
        return Ok(Vec::new());
    };
    if t.error().is_some() {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .map_err(|e| Error::backend("kafka", "read", e))?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                .map_err(|e| Error::backend("kafka", "read", e))?;
            ends.insert(p.id(), high);
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::backend("kafka", "read", e))?;
    let until = std::time::Instant::now() + deadline;
    let mut out = Vec::new();
    // tansu reports a high watermark one past the *first* offset of the last batch, so the
    // watermarks are only a lower bound: read on until the partitions stay idle.
    let mut idle_since = std::time::Instant::now();
    while out.len() < limit {
        if std::time::Instant::now() > until {
            return Err(Error::Timeout("kafka read of the dead-letter topic"));
        }
        if ends.is_empty() && idle_since.elapsed() >= READ_IDLE {
            break;
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Err(e)) => tracing::debug!(topic, error = %e, "kafka read error"),
            Some(Ok(m)) => {
                let m = m.detach();
                idle_since = std::time::Instant::now();
                if ends
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    ends.remove(&m.partition());
                }
                out.push(m);
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl DeadLetters for KafkaBus {
    /// Reads the DLQ topic from its start (a reader outside any group: nothing is consumed).
    async fn dead_letters(&self, topic: &Topic, limit: usize) -> Result<Vec<DeadLetter>> {
        let dlq = self.dlq_topic(topic);
        let bus = self.clone();
        let dlq2 = dlq.clone();
        let records = tokio::task::spawn_blocking(move || {
            read_topic(&bus, &dlq2, limit, Duration::from_secs(30))
        })
        .await
        .map_err(|e| Error::backend("kafka", "read", e))??;
        let mut out: Vec<(i64, DeadLetter)> = records
            .into_iter()
            .map(|r| {
                let failed_at = header_str(&r, DLQ_FAILED_AT_HEADER)
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(Utc::now);
                let ts = r.timestamp().to_millis().unwrap_or(0);
                let event = codec::decode(&r).ok();
                let origin = header_str(&r, DLQ_ORIGIN_HEADER);
                let (partition, entry_id) = origin
                    .as_deref()
                    .and_then(|o| o.rsplit_once('/'))
                    .and_then(|(_, pos)| pos.split_once('@'))
                    .map(|(p, o)| (p.parse().ok(), Some(o.to_owned())))
                    .unwrap_or((None, None));
                let letter = DeadLetter {
                    id: format!("{}@{}", r.partition(), r.offset()),
                    topic: topic.as_str().to_owned(),
                    partition,
                    entry_id,
                    consumer: String::new(),
                    group: header_str(&r, DLQ_GROUP_HEADER).unwrap_or_default(),
                    event: event.clone(),
                    // The event in canonical structured JSON when it decodes, else the bytes read.
                    payload: event.as_ref().map_or_else(
                        || r.payload().unwrap_or_default().to_vec(),
                        Event::to_json_vec,
                    ),
                    error: header_str(&r, DLQ_REASON_HEADER).unwrap_or_default(),
                    failed_at,
                };
                (ts, letter)
            })
            .collect();
        out.sort_by_key(|(ts, _)| *ts);
        Ok(out.into_iter().map(|(_, l)| l).take(limit).collect())
    }
}
