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

// Every shared property the current Kafka consumer passes. Two multi-member properties of the
// suite are not enabled yet (they fail on the consumer of this release; the Kafka consumer
// rework of issue 10 is what makes them pass):
// - `group_members_split_the_partitions`: fails every run (4 of 4 here). A member joining makes
//   the group rebalance eagerly (every partition revoked, then reassigned), and on tansu with
//   `GroupTimeouts::tansu()` the group consumes nothing for longer than the suite's 30 s wait
//   for a probe round; the rework (cooperative rebalancing, polling kept alive) removes the
//   stall.
// - `order_per_key_through_joins_and_leaves`: fails 1 run of 4 (an event runs twice, or a key's
//   calls overlap across members). On revoke the current consumer neither stops dispatching the
//   revoked partitions nor waits for their in-flight handlers, and drops their acknowledgements
//   (`Pending::revoked`) before committing them, so the next owner restarts from an older
//   offset while the old owner may still run. The rework uses the runner's
//   `PartitionControl::revoke` (stop, bounded wait for in-flight handlers, hand back what never
//   started, flush acknowledgements) and commits before the partition leaves.
// `order_per_key_across_members_under_load` and
// `a_crashed_members_partitions_are_taken_over_in_order` pass here (4 of 4 runs) because their
// members join before events flow; they hold no guarantee through a rebalance mid-stream yet.
windlass_testkit::bus_conformance!(@each KafkaFixture;
    at_least_once,
    ack_is_final,
    retry_after_handler_error,
    dead_letter_after_max_attempts,
    reject_dead_letters_at_once,
    every_group_gets_every_event,
    order_per_key_under_concurrency,
    shutdown_finishes_in_flight_work,
    garbage_goes_to_dead_letters_without_blocking,
    panicking_handler_is_retried,
    handler_deadline_cancels_and_retries,
    shutdown_with_a_full_read_ahead_runs_only_what_started,
    order_per_key_across_members_under_load,
    a_crashed_members_partitions_are_taken_over_in_order,
);
