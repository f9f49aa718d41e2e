//! Publishing: an idempotent producer (`enable.idempotence=true`, `acks=all`).

use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use windlass_core::Topic;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::kafka::KafkaBus;
use crate::kafka::codec::{self, Encoded};
use crate::traits::Publisher;

pub(crate) fn map_produce_error(
    e: KafkaError,
    topic: &str,
    id: &str,
    size: usize,
    limit: usize,
) -> Error {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge,
        ) => Error::TooLarge {
            id: id.to_owned(),
            size,
            limit,
        },
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition,
        ) => Error::UnknownTopic {
            topic: topic.to_owned(),
        },
        Some(RDKafkaErrorCode::MessageTimedOut) => {
            Error::Timeout("kafka publish (no broker acknowledged the record)")
        }
        Some(RDKafkaErrorCode::QueueFull) => Error::Full("the kafka producer queue".to_owned()),
        _ => Error::backend("kafka", "publish", e),
    }
}

impl KafkaBus {
    fn check_size(&self, event: &Event, enc: &Encoded<'_>) -> Result<()> {
        let limit = self.inner.config.max_message_bytes;
        if enc.size > limit {
            return Err(Error::TooLarge {
                id: event.id().to_owned(),
                size: enc.size,
                limit,
            });
        }
        Ok(())
    }

    async fn send_one(&self, topic: &Topic, event: &Event) -> Result<()> {
        let enc = codec::encode(event, self.inner.config.wire_mode);
        self.check_size(event, &enc)?;
        self.send_encoded(topic, event, enc).await
    }

    async fn send_encoded(&self, topic: &Topic, event: &Event, enc: Encoded<'_>) -> Result<()> {
        let size = enc.size;
        let mut record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(topic.as_str()).headers(enc.headers);
        if let Some(k) = enc.key {
            record = record.key(k);
        }
        if let Some(v) = enc.value.as_deref() {
            record = record.payload(v);
        }
        match self
            .inner
            .producer
            .send(record, Timeout::After(self.inner.config.publish_timeout))
            .await
        {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(map_produce_error(
                e,
                topic.as_str(),
                event.id(),
                size,
                self.inner.config.max_message_bytes,
            )),
        }
    }
}

#[async_trait]
impl Publisher for KafkaBus {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        self.send_one(topic, event).await
    }

    /// Sends the whole batch at once (librdkafka batches it on the wire) and waits for every
    /// acknowledgement. Order within a partition is kept by the idempotent producer.
    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        // Check every size first, so an oversized event fails the batch before anything is sent.
        let mut encoded = Vec::with_capacity(events.len());
        for e in events {
            let enc = codec::encode(e, self.inner.config.wire_mode);
            self.check_size(e, &enc)?;
            encoded.push(enc);
        }
        let sends = events
            .iter()
            .zip(encoded)
            .map(|(e, enc)| self.send_encoded(topic, e, enc));
        let results = futures::future::join_all(sends).await;
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }
}
