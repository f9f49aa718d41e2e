//! The cache conformance suite on the in-process store, and what is particular to it.
#![cfg(feature = "memory")]

use std::time::Duration;

use windlass_cache::{Cache, CacheOptions, MemoryCacheStore, TypePolicy};
use windlass_testkit::conformance::cache::{Invoice, inv, org};

windlass_testkit::cache_conformance!(windlass_testkit::conformance::cache::MemoryFixture);

/// Tag versions live longer than every entry that carries them (each write extends them past
/// its own TTL), and no longer than needed: a tag no entry extends keeps its default lifetime.
#[tokio::test]
async fn tag_versions_outlive_the_entries_that_carry_them() {
    let store = MemoryCacheStore::new();
    let cache = Cache::with_options(store.clone(), CacheOptions::default()).unwrap();
    let day = cache
        .entry::<Invoice>(
            "day",
            TypePolicy::ttl(Duration::from_secs(86_400)).jitter(0.0),
        )
        .unwrap();
    let short = cache
        .entry::<Invoice>("short", TypePolicy::ttl(Duration::from_secs(1)).jitter(0.0))
        .unwrap();
    let acme = org("acme");
    short.set(&acme, "1", &inv(1, 1), &["s"]).await.unwrap();
    let s = store.tag_ttl(&acme, "s").unwrap();
    assert!(s <= Duration::from_secs(3600), "{s:?}");
    day.set(&acme, "1", &inv(1, 1), &["d", "s"]).await.unwrap();
    for tag in ["d", "s", "#all", "#type:day"] {
        let ttl = store.tag_ttl(&acme, tag).unwrap();
        assert!(
            ttl > Duration::from_secs(86_400),
            "tag {tag} expires in {ttl:?}, before its entry"
        );
    }
    cache.invalidate_tag(&acme, "d").await.unwrap();
    assert!(
        store.tag_ttl(&acme, "d").unwrap() > Duration::from_secs(86_400),
        "an invalidation shortened the tag"
    );
}
