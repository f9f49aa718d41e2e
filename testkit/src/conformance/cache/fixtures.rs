//! [`CacheFixture`]s of the stores of `windlass-cache`: in memory, Redis, Redis Cluster.

use std::sync::Arc;

use async_trait::async_trait;
use redis::AsyncCommands;
use windlass_cache::{EntryRef, MemoryCacheStore, RedisCacheStore, RedisCacheStoreConfig, Store};
use windlass_core::OrgId;

use super::CacheFixture;
use crate::redis::{TestRedis, fresh_prefix};
use crate::redis_cluster::TestRedisCluster;

/// One [`MemoryCacheStore`]; every handle is a clone of it.
#[derive(Debug, Clone)]
pub struct MemoryFixture {
    /// The store under test.
    pub store: MemoryCacheStore,
}

#[async_trait]
impl CacheFixture for MemoryFixture {
    async fn setup() -> Self {
        Self {
            store: MemoryCacheStore::new(),
        }
    }

    async fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }

    async fn drop_tag(&self, org: &OrgId, tag: &str) {
        self.store.drop_tag(org, tag);
    }

    async fn put_raw(&self, entry: EntryRef<'_>, bytes: &[u8]) {
        self.store
            .put_raw(entry, bytes, std::time::Duration::from_secs(60));
    }
}

/// The Redis store on the test server under a fresh prefix; every handle opens its own
/// connections, as another process would. Keys go away with the fixture.
#[derive(Debug)]
pub struct RedisFixture {
    /// The harness handle (prefix, raw client).
    pub redis: TestRedis,
    /// A store handle for key names.
    pub names: RedisCacheStore,
}

impl RedisFixture {
    /// The store configuration the suite uses (the harness prefix).
    pub fn config(&self) -> RedisCacheStoreConfig {
        RedisCacheStoreConfig::default().prefix(&self.redis.prefix)
    }

    /// A new store handle with its own connection.
    pub async fn new_store(&self) -> RedisCacheStore {
        RedisCacheStore::with_config(self.redis.client.clone(), self.config())
            .await
            .expect("connect the Redis cache store")
    }
}

#[async_trait]
impl CacheFixture for RedisFixture {
    async fn setup() -> Self {
        let redis = fresh_prefix().await;
        let names = RedisCacheStore::with_config(
            redis.client.clone(),
            RedisCacheStoreConfig::default().prefix(&redis.prefix),
        )
        .await
        .expect("connect the Redis cache store");
        Self { redis, names }
    }

    async fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.new_store().await)
    }

    async fn drop_tag(&self, org: &OrgId, tag: &str) {
        let key = self.names.tag_key(org, tag);
        let _: () = self.redis.conn.clone().del(key).await.expect("DEL tag");
    }

    async fn put_raw(&self, entry: EntryRef<'_>, bytes: &[u8]) {
        let key = self.names.entry_key(entry);
        let _: () = self
            .redis
            .conn
            .clone()
            .set_ex(key, bytes, 60)
            .await
            .expect("SET raw");
    }

    async fn teardown(self) {
        self.redis.cleanup().await;
    }
}

/// The Redis store on the local 3-master Redis Cluster (started by the harness when needed),
/// under a fresh prefix; every handle opens its own cluster connection.
#[derive(Debug)]
pub struct ClusterFixture {
    /// The harness handle (seed URLs, prefix, raw cluster connection).
    pub cluster: TestRedisCluster,
    /// A store handle for key names.
    pub names: RedisCacheStore,
}

impl ClusterFixture {
    /// The store configuration the suite uses.
    pub fn config(&self) -> RedisCacheStoreConfig {
        RedisCacheStoreConfig::default().prefix(&self.cluster.prefix)
    }

    /// A new store handle with its own cluster connection.
    pub async fn new_store(&self) -> RedisCacheStore {
        RedisCacheStore::cluster(&self.cluster.urls, self.config())
            .await
            .expect("connect the Redis Cluster cache store")
    }
}

#[async_trait]
impl CacheFixture for ClusterFixture {
    async fn setup() -> Self {
        let cluster = crate::redis_cluster::fresh_prefix().await;
        let names = RedisCacheStore::cluster(
            &cluster.urls,
            RedisCacheStoreConfig::default().prefix(&cluster.prefix),
        )
        .await
        .expect("connect the Redis Cluster cache store");
        Self { cluster, names }
    }

    async fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.new_store().await)
    }

    async fn drop_tag(&self, org: &OrgId, tag: &str) {
        let key = self.names.tag_key(org, tag);
        let _: () = self.cluster.conn.clone().del(key).await.expect("DEL tag");
    }

    async fn put_raw(&self, entry: EntryRef<'_>, bytes: &[u8]) {
        let key = self.names.entry_key(entry);
        let _: () = self
            .cluster
            .conn
            .clone()
            .set_ex(key, bytes, 60)
            .await
            .expect("SET raw");
    }
}
