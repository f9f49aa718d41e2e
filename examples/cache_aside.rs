//! Read-through caching with tags on Redis.
//!
//! ```text
//! cargo run --example cache_aside --features cache-redis
//! ```
//! Uses `WINDLASS_REDIS_URL` (default `redis://127.0.0.1:6379`). A stand-in "database" (a map)
//! is read on misses; an update invalidates the customer's tag, and every invoice of that
//! customer is reloaded on its next read. The loader borrows the database: no clones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use windlass::cache::{
    Cache, CacheOptions, L1Options, RedisCacheStore, RedisCacheStoreConfig, TypePolicy,
};
use windlass::core::OrgId;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Invoice {
    id: u64,
    customer: u64,
    amount_cents: u64,
}

/// The service's database, as far as this example needs one.
struct Db {
    rows: Mutex<HashMap<u64, Invoice>>,
    reads: AtomicUsize,
}

#[derive(Debug)]
struct NotFound(u64);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invoice {} not found", self.0)
    }
}

impl std::error::Error for NotFound {}

impl Db {
    async fn invoice(&self, id: u64) -> Result<Invoice, NotFound> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.get(&id).cloned().ok_or(NotFound(id))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("WINDLASS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("example-{}", std::process::id());
    let store = RedisCacheStore::with_config(
        redis::Client::open(url.as_str())?,
        RedisCacheStoreConfig::default().prefix(&prefix),
    )
    .await?;
    let cache = Cache::with_options(
        store,
        CacheOptions::default().l1(L1Options::capacity(10_000)),
    )?;
    let invoices = cache.entry::<Invoice>(
        "invoice",
        TypePolicy::ttl(Duration::from_secs(300)).fail_safe(Duration::from_secs(3600)),
    )?;
    let acme = OrgId::new("acme")?;

    let db = Db {
        rows: Mutex::new(
            (1..=3)
                .map(|id| {
                    let inv = Invoice {
                        id,
                        customer: 7,
                        amount_cents: 100 * id,
                    };
                    (id, inv)
                })
                .collect(),
        ),
        reads: AtomicUsize::new(0),
    };

    for round in 1..=2 {
        for id in 1..=3u64 {
            let tags = [format!("invoice:{id}"), "customer:7".to_owned()];
            let inv = invoices
                .get_or_load(&acme, &id.to_string(), &tags, || db.invoice(id))
                .await?;
            println!("round {round}: {inv:?}");
        }
    }
    println!(
        "database reads after two rounds: {}",
        db.reads.load(Ordering::Relaxed)
    );

    // A missing row: the loader's error comes back with its own type.
    match invoices
        .get_or_load(&acme, "99", &["invoice:99"], || db.invoice(99))
        .await
    {
        Err(e) => println!("invoice 99: {:?}", e.loader_error()),
        Ok(v) => println!("invoice 99 unexpectedly found: {v:?}"),
    }

    // The customer's invoices change: one tag bump invalidates all of them, on every instance.
    for inv in db
        .rows
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values_mut()
    {
        inv.amount_cents += 1;
    }
    cache.invalidate_tag(&acme, "customer:7").await?;
    let inv = invoices
        .get_or_load(&acme, "1", &["invoice:1", "customer:7"], || db.invoice(1))
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
