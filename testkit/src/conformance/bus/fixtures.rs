//! [`BusFixture`]s of the backends that live in `windlass-eventbus`.

use std::time::Duration;

use async_trait::async_trait;
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{MemoryBus, MemoryConfig, PartitionCount, SubscribeOptions, Topic};

use super::BusFixture;
use crate::redis::{TestRedis, cleanup_blocking, fresh_prefix};

/// Partitions of the suite's topics on the memory and Redis fixtures.
const PARTITIONS: u32 = 4;
/// Lease TTL of the memory and Redis fixtures: short, so crash takeovers happen in seconds.
const LEASE_TTL: Duration = Duration::from_secs(2);
/// Handler deadline of the fixtures' options (below the lease TTL).
const HANDLER_TIMEOUT: Duration = Duration::from_secs(1);

fn fresh_topic() -> Topic {
    Topic::new(format!("t-{}", uuid::Uuid::new_v4().simple())).expect("valid topic")
}

/// The in-process bus; every handle is a clone of one [`MemoryBus`].
#[derive(Debug, Clone)]
pub struct MemoryFixture {
    /// The bus under test.
    pub bus: MemoryBus,
}

#[async_trait]
impl BusFixture for MemoryFixture {
    type Bus = MemoryBus;

    async fn setup() -> Self {
        Self {
            bus: MemoryBus::with_config(
                MemoryConfig::default()
                    .partitions(PartitionCount::new(PARTITIONS).expect("valid partition count"))
                    .lease_ttl(LEASE_TTL),
            ),
        }
    }

    fn partitions(&self) -> u32 {
        PARTITIONS
    }

    fn options(&self) -> SubscribeOptions {
        SubscribeOptions::default().handler_timeout(HANDLER_TIMEOUT)
    }

    async fn bus(&self) -> MemoryBus {
        self.bus.clone()
    }

    fn topic(&self) -> Topic {
        fresh_topic()
    }

    async fn publish_raw(&self, topic: &Topic, bytes: &[u8]) {
        self.bus
            .publish_raw(topic, bytes.to_vec())
            .await
            .expect("raw publish");
    }
}

/// The Redis Streams bus on the test server, under a fresh key prefix. Every
/// [`BusFixture::bus`] call opens a new [`RedisBus`] (its own connections), like another
/// process would. Keys are deleted on teardown and, should the test panic, on drop.
#[derive(Debug)]
pub struct RedisFixture {
    /// The harness handle (prefix, raw client).
    pub redis: TestRedis,
}

impl RedisFixture {
    /// The bus settings the suite uses: the harness prefix, short blocks, 4 partitions, a
    /// lease TTL of 2 s.
    pub fn config(&self) -> RedisConfig {
        RedisConfig::new(self.redis.url.clone())
            .prefix(self.redis.prefix.clone())
            .block(Duration::from_millis(200))
            .partitions(PartitionCount::new(PARTITIONS).expect("valid partition count"))
            .lease_ttl(LEASE_TTL)
    }
}

#[async_trait]
impl BusFixture for RedisFixture {
    type Bus = RedisBus;

    async fn setup() -> Self {
        Self {
            redis: fresh_prefix().await,
        }
    }

    async fn bus(&self) -> RedisBus {
        RedisBus::connect(self.config())
            .await
            .expect("connect the Redis bus")
    }

    fn topic(&self) -> Topic {
        fresh_topic()
    }

    async fn publish_raw(&self, topic: &Topic, bytes: &[u8]) {
        let mut conn = self.redis.conn.clone();
        let _: String = redis::cmd("XADD")
            .arg(format!("{}:{{{}:0}}", self.redis.prefix, topic))
            .arg("*")
            .arg("event")
            .arg(bytes)
            .query_async(&mut conn)
            .await
            .expect("raw XADD");
    }

    fn options(&self) -> SubscribeOptions {
        SubscribeOptions::default().handler_timeout(HANDLER_TIMEOUT)
    }

    fn partitions(&self) -> u32 {
        PARTITIONS
    }

    async fn teardown(self) {
        self.redis.cleanup().await;
    }
}

impl Drop for RedisFixture {
    fn drop(&mut self) {
        // After a passing test `teardown` already deleted everything; this catches panics.
        let (url, prefix) = (self.redis.url.clone(), self.redis.prefix.clone());
        let _ = std::thread::spawn(move || cleanup_blocking(&url, &prefix)).join();
    }
}
