//! The Kafka backend (feature `kafka`), on `rdkafka` (librdkafka).
//!
//! - **Wire format**: the CloudEvents Kafka binding, binary mode by default (`ce_*` headers,
//!   `content-type`, value = payload bytes, key = `partitionkey` else `subject`), structured
//!   mode as an option ([`WireMode`]). Consumers read both.
//! - **Publisher**: idempotent (`enable.idempotence=true`, `acks=all`); bounded retries inside
//!   librdkafka (`publish_timeout`), then typed errors: [`Error::TooLarge`]
//!   (checked before sending, and mapped from the broker's refusal),
//!   [`Error::UnknownTopic`], [`Error::Timeout`]
//!   when no broker acknowledged in time.
//! - **Subscriber**: a consumer group member driven by the shared [runner](crate::runner) as a
//!   partitioned transport. A thread of its own polls all the time (the member never misses
//!   `max.poll.interval.ms`); backpressure is per partition with `pause`/`resume`
//!   ([`KafkaConfig::max_pending_per_partition()`]). Offsets are committed only after the
//!   handler succeeded (one past the highest contiguous acknowledged offset per partition),
//!   serialised and never backwards; on revoke (cooperative-sticky by default,
//!   [`KafkaConfig::assignment_strategy()`]) the partition's in-flight handlers finish (up to the
//!   handler timeout) and its offsets are committed before the rebalance completes. Order is
//!   kept per key (hence per partition) across the group; retries come from the runner; events
//!   that fail for good, or records that are not CloudEvents, go to the DLQ topic (`{topic}.dlq`
//!   by default, see [`DlqNaming`]) with the reason in the `windlass_dlq_reason` header.
//!   [`DeadLetters`](crate::DeadLetters) reads it back. See `docs/kafka.md`.
//! - **Group timeouts** are configurable ([`GroupTimeouts`]); keep librdkafka's defaults on
//!   real Kafka, use [`GroupTimeouts::tansu`] on the tansu broker, which holds `JoinGroup`
//!   for the whole rebalance timeout.
//!
//! Delivery counts are not tracked by Kafka: a record redelivered after a crash starts again
//! at attempt 1.
//!
//! ```no_run
//! use windlass_eventbus::kafka::{GroupTimeouts, KafkaBus, KafkaConfig};
//! use windlass_eventbus::{Event, Group, Publisher, SubscriberExt, Topic};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = KafkaBus::new(KafkaConfig::new("127.0.0.1:9092").group_timeouts(GroupTimeouts::tansu()))?;
//! let topic = Topic::new("billing.invoices")?;
//! bus.create_topic(topic.as_str(), 3).await?;
//! bus.publish(&topic, &Event::builder("/billing", "invoice.paid").subject("inv_1").build()?).await?;
//! let sub = bus
//!     .subscribe_fn(&topic, &Group::new("ledger")?, |event, _ctx| async move {
//!         println!("{}", event.id());
//!         Ok(())
//!     })
//!     .await?;
//! sub.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod codec;
mod config;
mod consumer;
mod dlq;
mod offsets;
mod publisher;
mod replay;
mod subscriber;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::Producer;

pub use codec::WireMode;
pub use config::{DlqNaming, GroupTimeouts, KafkaConfig, is_secret_property};
pub use dlq::{DLQ_FAILED_AT_HEADER, DLQ_GROUP_HEADER, DLQ_ORIGIN_HEADER, DLQ_REASON_HEADER};
pub use publisher::FatalProducerError;

pub(crate) use codec::decode as decode_record;

use crate::error::{Error, Result};

/// A Kafka bus: [`Publisher`](crate::Publisher), [`Subscriber`](crate::Subscriber) and
/// [`DeadLetters`](crate::DeadLetters). Cheap to clone (one producer shared by every clone and
/// by the subscriptions' DLQ writes; replaced by a new one after a fatal error, see
/// [`FatalProducerError`]). Its `Debug` output shows the brokers with credentials redacted.
#[derive(Clone)]
pub struct KafkaBus {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    pub(crate) producer: publisher::ProducerSlot,
    pub(crate) admin: AdminClient<DefaultClientContext>,
}

impl fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.inner.config.redacted_brokers())
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// Creates the producer and admin clients. Connects lazily: an unreachable broker shows
    /// as publish errors (or use [`KafkaBus::ping`]).
    pub fn new(config: KafkaConfig) -> Result<Self> {
        if config.brokers.trim().is_empty() {
            return Err(Error::Config("kafka brokers list is empty".to_owned()));
        }
        let producer = publisher::ProducerSlot::new(&config)?;
        let admin: AdminClient<DefaultClientContext> = config
            .finish(config.base())
            .create()
            .map_err(|e| config.scrubbed(Error::backend("kafka", "connect", e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Asks the cluster for its metadata, waiting up to `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<()> {
        let bus = self.clone();
        tokio::task::spawn_blocking(move || {
            bus.inner
                .producer
                .current()
                .client()
                .fetch_metadata(None, timeout)
                .map(|_| ())
        })
        .await
        .map_err(|e| Error::backend("kafka", "ping", e))?
        .map_err(|e| {
            self.inner
                .config
                .scrubbed(Error::backend("kafka", "ping", e))
        })
    }

    /// Waits until every record handed to the producer is acknowledged (or `timeout` passes).
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let bus = self.clone();
        tokio::task::spawn_blocking(move || bus.inner.producer.current().flush(timeout))
            .await
            .map_err(|e| Error::backend("kafka", "flush", e))?
            .map_err(|e| Error::backend("kafka", "flush", e))
    }
}
