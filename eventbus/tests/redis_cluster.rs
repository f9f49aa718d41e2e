//! The Redis Streams bus on a Redis Cluster (a local 3-master cluster the harness starts from
//! `redis-server` on spare ports, never the shared server): the whole conformance suite, the
//! partitions of a topic spread over slots and nodes, the operator API.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use windlass_eventbus::partition::PartitionCount;
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{BusAdmin, DeadLetters, Publisher, SubscribeOptions, TenantScope, Topic};
use windlass_testkit::conformance::bus::{BusFixture, keyed};
use windlass_testkit::redis_cluster::{TestRedisCluster, fresh_prefix};

const PARTITIONS: u32 = 4;

struct ClusterFixture {
    cluster: TestRedisCluster,
}

impl ClusterFixture {
    fn config(&self) -> RedisConfig {
        RedisConfig::cluster(self.cluster.urls.clone())
            .prefix(self.cluster.prefix.clone())
            .partitions(PartitionCount::new(PARTITIONS).unwrap())
            .lease_ttl(Duration::from_secs(2))
            .cluster_poll(Duration::from_millis(20))
    }
}

#[async_trait]
impl BusFixture for ClusterFixture {
    type Bus = RedisBus;

    async fn setup() -> Self {
        Self {
            cluster: fresh_prefix().await,
        }
    }

    async fn bus(&self) -> RedisBus {
        RedisBus::connect(self.config())
            .await
            .expect("connect the bus to the cluster")
    }

    fn topic(&self) -> Topic {
        Topic::new(format!("t-{}", uuid::Uuid::new_v4().simple())).unwrap()
    }

    async fn publish_raw(&self, topic: &Topic, bytes: &[u8]) {
        let mut conn = self.cluster.conn.clone();
        let _: String = redis::cmd("XADD")
            .arg(format!("{}:{{{}:0}}", self.cluster.prefix, topic))
            .arg("*")
            .arg("event")
            .arg(bytes)
            .query_async(&mut conn)
            .await
            .expect("raw XADD");
    }

    fn options(&self) -> SubscribeOptions {
        SubscribeOptions::default().handler_timeout(Duration::from_secs(1))
    }

    fn partitions(&self) -> u32 {
        PARTITIONS
    }
}

windlass_testkit::bus_conformance!(ClusterFixture);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_partitions_spread_over_the_nodes_and_the_operator_api_works() {
    let fixture = ClusterFixture::setup().await;
    let bus = RedisBus::connect(
        fixture
            .config()
            .partitions(PartitionCount::new(16).unwrap()),
    )
    .await
    .unwrap();
    let topic = Topic::new("spread").unwrap();
    let events: Vec<_> = (0..64).map(|n| keyed(&format!("k{n}"), n)).collect();
    bus.publish_batch(&topic, &events).await.unwrap();
    assert_eq!(bus.topic_len(&topic).await.unwrap(), 64);
    let mut conn = fixture.cluster.conn.clone();
    let mut slots = HashSet::new();
    for key in bus.stream_keys(&topic).await.unwrap() {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        slots.insert(slot);
    }
    // 16 partitions on 16 hash tags: far more than one slot, so over the three masters.
    assert!(slots.len() >= 8, "{slots:?}");
    let nodes: HashSet<u16> = slots
        .iter()
        .map(|s| match *s {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        })
        .collect();
    assert_eq!(nodes.len(), 3, "partitions on every master: {slots:?}");
    assert!(bus.dead_letters(&topic, 10).await.unwrap().is_empty());
    assert!(
        bus.topic_groups(&topic, &TenantScope::All)
            .await
            .unwrap()
            .is_empty()
    );
    bus.delete_topic(&topic, &TenantScope::All).await.unwrap();
    assert_eq!(bus.topic_len(&topic).await.unwrap(), 0);
}
