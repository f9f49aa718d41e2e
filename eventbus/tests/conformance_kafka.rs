//! The bus conformance suite on Kafka (tansu started by the harness, or
//! `WINDLASS_KAFKA_BROKERS`). Topics get 3 partitions so two members of a group can split them.
#![cfg(feature = "kafka")]

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use windlass_eventbus::kafka::{GroupTimeouts, KafkaBus, KafkaConfig};
use windlass_eventbus::{SubscribeOptions, Topic};
use windlass_testkit::conformance::bus::BusFixture;

/// Topics created in `setup` (the suite asks for them synchronously).
const TOPICS: usize = 3;
const PARTITIONS: i32 = 3;

struct KafkaFixture {
    brokers: String,
    bus: KafkaBus,
    topics: Mutex<Vec<Topic>>,
    raw: FutureProducer,
}

#[async_trait]
impl BusFixture for KafkaFixture {
    type Bus = KafkaBus;

    async fn setup() -> Self {
        let brokers = tokio::task::spawn_blocking(windlass_testkit::kafka::brokers)
            .await
            .unwrap();
        let mut topics = Vec::new();
        for _ in 0..TOPICS {
            let t = windlass_testkit::kafka::unique_topic();
            windlass_testkit::kafka::create_topic(&brokers, &t, PARTITIONS).await;
            topics.push(t);
        }
        // Kafka groups are cluster-wide and the suite's group names are fixed: a prefix per test.
        let prefix = format!("{}.", uuid::Uuid::new_v4().simple());
        let bus = KafkaBus::new(
            KafkaConfig::new(&brokers)
                .group_timeouts(GroupTimeouts::tansu())
                .group_prefix(prefix),
        )
        .unwrap();
        let raw = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        Self {
            brokers,
            bus,
            topics: Mutex::new(topics),
            raw,
        }
    }

    async fn bus(&self) -> KafkaBus {
        self.bus.clone()
    }

    fn topic(&self) -> Topic {
        self.topics.lock().unwrap().pop().unwrap_or_else(|| {
            panic!(
                "the Kafka fixture pre-creates {TOPICS} topics on {}; raise TOPICS",
                self.brokers
            )
        })
    }

    async fn publish_raw(&self, topic: &Topic, bytes: &[u8]) {
        // As a foreign producer would: no CloudEvents headers at all.
        self.raw
            .send(
                FutureRecord::<str, [u8]>::to(topic.as_str()).payload(bytes),
                Duration::from_secs(10),
            )
            .await
            .expect("raw produce");
    }

    fn options(&self) -> SubscribeOptions {
        SubscribeOptions::default().shutdown_timeout(Duration::from_secs(10))
    }

    fn partitions(&self) -> u32 {
        PARTITIONS as u32
    }
}

// The whole suite, the multi-member order properties included (members joining, leaving and
// crashing while events flow).
windlass_testkit::bus_conformance!(KafkaFixture);
