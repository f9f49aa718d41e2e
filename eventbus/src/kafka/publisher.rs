//! Publishing: an idempotent producer (`enable.idempotence=true`, `acks=all`).
//!
//! An idempotent producer can fail *fatally* (librdkafka raises a fatal error when it can no
//! longer keep its ordering and no-duplicate promises: a gap it cannot explain under
//! `enable.gapless.guarantee`, a producer fenced by a newer one with the same id...). A fatal
//! producer refuses every later send. The bus then replaces it with a new producer (new
//! producer id; the next sends go through) and fails the sends caught in it with
//! [`FatalProducerError`], never a silent loss.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use windlass_core::Topic;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::kafka::KafkaBus;
use crate::kafka::codec::{self, Encoded};
use crate::traits::Publisher;

/// The error of a send caught in a fatal failure of the idempotent producer (the `source` of
/// the [`Error::Backend`] a publish returns; find it with `std::error::Error::source` and
/// `downcast_ref`).
///
/// The record was not acknowledged: it may or may not be on the topic. The producer has been
/// replaced by a new one, so retrying the publish works, at the cost of a possible duplicate
/// (the consumer's inbox drops it).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FatalProducerError {
    /// librdkafka's error code for the fatal error.
    pub code: String,
    /// librdkafka's description of it.
    pub reason: String,
}

impl fmt::Display for FatalProducerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the idempotent Kafka producer failed fatally ({}: {}); it was replaced by a new \
             producer. This record was not acknowledged: it may or may not be on the topic; \
             retry the publish (a duplicate is possible, the inbox drops it)",
            self.code, self.reason
        )
    }
}

impl std::error::Error for FatalProducerError {}

/// The bus's producer, replaced by a new one when librdkafka reports a fatal error.
pub(crate) struct ProducerSlot {
    config: rdkafka::ClientConfig,
    /// (generation, producer): a generation is replaced at most once.
    current: RwLock<(u64, Arc<FutureProducer>)>,
    /// Producers replaced so far.
    replaced: AtomicU64,
    /// The bus's configuration, to scrub secrets from errors.
    settings: crate::kafka::KafkaConfig,
}

/// A send that failed: librdkafka's error, or a fatal failure of the producer (now replaced).
pub(crate) enum SendError {
    Kafka(KafkaError),
    Fatal(FatalProducerError),
}

impl ProducerSlot {
    pub(crate) fn new(config: &crate::kafka::KafkaConfig) -> Result<Self> {
        let client_config = config.producer_config();
        let producer: FutureProducer = client_config
            .create()
            .map_err(|e| config.scrubbed(Error::backend("kafka", "connect", e)))?;
        Ok(Self {
            config: client_config,
            current: RwLock::new((0, Arc::new(producer))),
            replaced: AtomicU64::new(0),
            settings: config.clone(),
        })
    }

    /// The producer in use now.
    pub(crate) fn current(&self) -> Arc<FutureProducer> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    fn current_with_generation(&self) -> (u64, Arc<FutureProducer>) {
        let g = self.current.read().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1.clone())
    }

    /// How many times the producer was replaced after a fatal error.
    pub(crate) fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    /// Replaces generation `generation` (once, however many sends saw it fail).
    fn replace(&self, generation: u64, fatal: &FatalProducerError) {
        let mut slot = self.current.write().unwrap_or_else(|p| p.into_inner());
        if slot.0 != generation {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(p) => {
                *slot = (generation + 1, Arc::new(p));
                self.replaced.fetch_add(1, Ordering::Relaxed);
                tracing::error!(code = %fatal.code, reason = %fatal.reason,
                    "the idempotent Kafka producer failed fatally; replaced it with a new one");
            }
            Err(e) => tracing::error!(
                code = %fatal.code,
                error = %self.settings.scrub(&e.to_string()),
                "the idempotent Kafka producer failed fatally and a new one could not be created; \
                 the next send tries again"
            ),
        }
    }

    /// Sends `record`; a fatal producer error replaces the producer and comes back as
    /// [`SendError::Fatal`].
    pub(crate) async fn send_checked<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        timeout: Timeout,
    ) -> std::result::Result<(), SendError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (generation, producer) = self.current_with_generation();
        // A producer that failed fatally earlier (and could not be replaced then).
        if let Some((code, reason)) = producer.client().fatal_error() {
            let fatal = FatalProducerError {
                code: format!("{code:?}"),
                reason: self.settings.scrub(&reason),
            };
            self.replace(generation, &fatal);
            return Err(SendError::Fatal(fatal));
        }
        match producer.send(record, timeout).await {
            Ok(_) => Ok(()),
            Err((e, _)) => match producer.client().fatal_error() {
                Some((code, reason)) => {
                    let fatal = FatalProducerError {
                        code: format!("{code:?}"),
                        reason: self.settings.scrub(&reason),
                    };
                    self.replace(generation, &fatal);
                    Err(SendError::Fatal(fatal))
                }
                // A fenced producer epoch without a fatal error raised (seen with tansu after
                // the broker was stopped past the message timeout: librdkafka bumps the epoch,
                // the broker keeps answering PRODUCER_FENCED to every later send): this
                // producer will never send again, so replace it as if it were fatal.
                None if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
                ) =>
                {
                    let fatal = FatalProducerError {
                        code: format!("{:?}", e.rdkafka_error_code()),
                        reason: self.settings.scrub(&e.to_string()),
                    };
                    self.replace(generation, &fatal);
                    Err(SendError::Fatal(fatal))
                }
                None => Err(SendError::Kafka(e)),
            },
        }
    }

    /// Like `FutureProducer::send` (used by the subscriber's DLQ writes); a fatal producer
    /// error replaces the producer too.
    pub(crate) async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        timeout: Timeout,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (generation, producer) = self.current_with_generation();
        let result = producer.send(record, timeout).await;
        if result.is_err()
            && let Some((code, reason)) = producer.client().fatal_error()
        {
            let fatal = FatalProducerError {
                code: format!("{code:?}"),
                reason: self.settings.scrub(&reason),
            };
            self.replace(generation, &fatal);
        }
        result
    }
}

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
    /// How many times this bus replaced its producer after a fatal error (see
    /// [`FatalProducerError`]).
    pub fn producers_replaced(&self) -> u64 {
        self.inner.producer.replaced()
    }

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
        #[cfg(feature = "otel")]
        let event = &crate::otel::inject(event);
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
            .send_checked(record, Timeout::After(self.inner.config.publish_timeout))
            .await
        {
            Ok(()) => Ok(()),
            Err(SendError::Fatal(fatal)) => Err(Error::backend("kafka", "publish", fatal)),
            Err(SendError::Kafka(e)) => Err(self.inner.config.scrubbed(map_produce_error(
                e,
                topic.as_str(),
                event.id(),
                size,
                self.inner.config.max_message_bytes,
            ))),
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
        #[cfg(feature = "otel")]
        let traced: Vec<Event> = events
            .iter()
            .map(|e| crate::otel::inject(e).into_owned())
            .collect();
        #[cfg(feature = "otel")]
        let events = &traced[..];
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
