//! Read-through caching with tags on Redis.
//!
//! ```text
//! cargo run --example cache_aside --features cache-redis
//! ```
//! Uses `WINDLASS_REDIS_URL` (default `redis://127.0.0.1:6379`). A stand-in "database" (a map)
//! is read on misses; an update invalidates the customer's tag, and every invoice of that
//! customer is reloaded on its next read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use windlass::cache::{Cache, CacheOptions, L1Options, RedisStore, RedisStoreOptions, TypePolicy};
use windlass::core::OrgId;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Invoice {
    id: u64,
    customer: u64,
    amount_cents: u64,
}

type Db = Arc<Mutex<HashMap<u64, Invoice>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("WINDLASS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("example-{}", std::process::id());
    let store = RedisStore::new(
        redis::Client::open(url.as_str())?,
        RedisStoreOptions::default().prefix(&prefix),
    )
    .await?;
    let cache = Cache::with_options(
        store,
        CacheOptions::default().l1(L1Options::capacity(10_000)),
    );
    let invoices = cache.entry::<Invoice>(
        "invoice",
        TypePolicy::ttl(Duration::from_secs(300)).fail_safe(Duration::from_secs(3600)),
    )?;
    let acme = OrgId::new("acme")?;

    let db: Db = Arc::new(Mutex::new(HashMap::new()));
    for id in 1..=3 {
        db.lock().unwrap().insert(
            id,
            Invoice {
                id,
                customer: 7,
                amount_cents: 100 * id,
            },
        );
    }
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // The loader: what the service would do on a miss (a SQL query).
    let load = |id: u64| {
        let db = db.clone();
        let reads = reads.clone();
        move || {
            let db = db.clone();
            let reads = reads.clone();
            async move {
                reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                db.lock()
                    .unwrap()
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| format!("invoice {id} not found"))
            }
        }
    };

    for round in 1..=2 {
        for id in 1..=3u64 {
            let tags = [format!("invoice:{id}"), "customer:7".to_owned()];
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            let inv = invoices
                .get_or_load(&acme, &id.to_string(), &tags, load(id))
                .await?;
            println!("round {round}: {inv:?}");
        }
    }
    println!(
        "database reads after two rounds: {}",
        reads.load(std::sync::atomic::Ordering::Relaxed)
    );

    // The customer's invoices change: one tag bump invalidates all of them, on every instance.
    for inv in db.lock().unwrap().values_mut() {
        inv.amount_cents += 1;
    }
    cache.invalidate_tag(&acme, "customer:7").await?;
    let inv = invoices
        .get_or_load(&acme, "1", &["invoice:1", "customer:7"], load(1))
        .await?;
    println!("after the update: {inv:?}");
    assert_eq!(inv.amount_cents, 101);

    let stats = cache.stats().of("invoice");
    println!(
        "invoice: {} hits ({} from L1), {} misses, hit ratio {:.2}, {} loads",
        stats.hits(),
        stats.hits_l1,
        stats.misses,
        stats.hit_ratio(),
        stats.loads
    );

    // Tidy up the example's keys.
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await?;
    }
    Ok(())
}
