//! The cache's hot path: a hit of a typed entry with two tags, on the in-process store and on
//! Redis (no L1), against a raw Redis `GET` of the same bytes in the same run.
//!
//! ```text
//! cargo bench -p windlass-benches --bench cache_hit
//! ```

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use windlass_cache::{Cache, MemoryCacheStore, RedisCacheStore, TypePolicy};
use windlass_core::OrgId;

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Invoice {
    id: u64,
    customer: String,
    cents: u64,
    paid: bool,
}

fn invoice() -> Invoice {
    Invoice {
        id: 42,
        customer: "cust-7".into(),
        cents: 12_345,
        paid: false,
    }
}

fn hit(c: &mut Criterion, name: &str, cache: Cache, rt: &tokio::runtime::Runtime) {
    let entry = cache
        .entry::<Invoice>(
            "invoice",
            TypePolicy::ttl(Duration::from_secs(600)).without_l1(),
        )
        .expect("entry");
    let org = OrgId::new("acme").expect("org");
    rt.block_on(entry.set(&org, "42", &invoice(), &["invoice:42", "customer:7"]))
        .expect("set");
    c.bench_function(&format!("cache_hit_{name}"), |b| {
        b.to_async(rt)
            .iter(|| async { entry.get(&org, "42").await.expect("get").expect("hit") })
    });
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    hit(c, "memory", Cache::new(MemoryCacheStore::new()), &rt);
    let redis = rt.block_on(windlass_testkit::redis::fresh_prefix());
    let store = rt
        .block_on(RedisCacheStore::with_config(
            redis.client.clone(),
            windlass_cache::RedisCacheStoreConfig::default().prefix(redis.prefix.clone()),
        ))
        .expect("redis store");
    hit(c, "redis", Cache::new(store), &rt);
    let key = format!("{}:raw", redis.prefix);
    let value = serde_json::to_vec(&invoice()).expect("json");
    let mut conn = redis.conn.clone();
    rt.block_on(async {
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .query_async(&mut conn)
            .await
            .expect("set");
    });
    c.bench_function("cache_hit_redis/baseline_raw_get", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            let key = key.clone();
            async move {
                let v: Vec<u8> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("get");
                serde_json::from_slice::<Invoice>(&v).expect("decode")
            }
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        // Charts come from `src/bin/plot.rs`; criterion's own would need a TrueType font library.
        .without_plots()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(20);
    targets = cache
}
criterion_main!(benches);
