//! The cache conformance suite: one `pub async fn` per property of `windlass-cache` on a
//! [`Store`] (docs/cache.md), generic over a [`CacheFixture`].
//!
//! A store's test file runs the whole suite, one `#[tokio::test]` per property, with one line:
//!
//! ```text
//! windlass_testkit::cache_conformance!(windlass_testkit::conformance::cache::RedisFixture);
//! ```
//!
//! # Adding a store
//! Implement [`CacheFixture`]: `setup` connects with a fresh namespace, `store` returns a handle
//! (handles of one fixture share the data, as processes sharing one server do; for a networked
//! store each handle has its own connections), `drop_tag` deletes a tag's version behind the
//! cache's back (eviction, failover) and `put_raw` writes bytes the way a foreign program would.
//!
//! Every wait polls its condition with a deadline; nothing sleeps in place of a condition.

mod fixtures;
mod loads;
mod sync;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use windlass_cache::{Cache, CacheOptions, EntryRef, Error, Store, TypePolicy};
use windlass_core::OrgId;

pub use fixtures::{ClusterFixture, MemoryFixture, RedisFixture};
pub use loads::*;
pub use sync::*;

/// What the suite needs from a store. See the [module docs](self).
#[async_trait]
pub trait CacheFixture: Send + Sync + Sized + 'static {
    /// Connects with a fresh namespace.
    async fn setup() -> Self;
    /// A store handle; handles of one fixture share the data.
    async fn store(&self) -> Arc<dyn Store>;
    /// Deletes the version of `tag` of `org`, bypassing the cache.
    async fn drop_tag(&self, org: &OrgId, tag: &str);
    /// Writes `bytes` as the entry's stored value, bypassing the cache.
    async fn put_raw(&self, entry: EntryRef<'_>, bytes: &[u8]);
    /// Releases what `setup` created.
    async fn teardown(self) {}
}

/// Generates one `#[tokio::test]` per property of the cache suite for a [`CacheFixture`].
#[macro_export]
macro_rules! cache_conformance {
    ($fixture:ty) => {
        $crate::cache_conformance!(@each $fixture;
            set_get_delete,
            tag_invalidation,
            tenants_are_isolated,
            clear_a_data_type_or_a_tenant,
            get_many_reads_in_order,
            bad_input_is_refused,
            undecodable_values_are_misses,
            a_lost_tag_version_only_causes_misses,
            one_load_for_concurrent_callers,
            loader_errors_keep_their_type,
            a_load_racing_an_invalidation_is_never_stored,
            a_load_racing_a_delete_is_never_stored,
            a_slow_load_never_overwrites_a_later_delete,
            callers_arriving_after_an_invalidation_never_take_an_older_load,
            fail_safe_serves_stale_when_the_loader_fails,
            stale_while_revalidate_serves_stale_and_refreshes,
            a_stale_value_invalidated_meanwhile_is_never_served,
            soft_timeout_serves_stale_and_the_load_completes_in_the_background,
            hung_loaders_release_every_caller_at_the_hard_timeout,
            a_panicking_or_cancelled_loader_hands_over,
            refresh_ahead_reloads_hot_entries,
            per_call_options_apply_to_one_view,
            local_invalidation_applies_to_the_l1_at_once,
            l1_instances_stay_in_sync,
            concurrent_sets_resolve_to_the_store_value,
        );
    };
    (@each $fixture:ty; $($property:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $property() {
                let fixture = <$fixture as $crate::conformance::cache::CacheFixture>::setup().await;
                $crate::conformance::cache::$property(&fixture).await;
                $crate::conformance::cache::CacheFixture::teardown(fixture).await;
            }
        )*
    };
}

/// How long any condition of the suite may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The value type of the suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// Id.
    pub id: u64,
    /// Amount (the "version" in race tests).
    pub amount: u64,
}

/// An invoice.
pub fn inv(id: u64, amount: u64) -> Invoice {
    Invoice { id, amount }
}

/// A tenant.
pub fn org(name: &str) -> OrgId {
    OrgId::new(name).expect("valid tenant")
}

/// A one-minute policy.
pub fn minute() -> TypePolicy {
    TypePolicy::ttl(Duration::from_secs(60))
}

/// A cache on `store` with `options`.
pub fn cache_on(store: Arc<dyn Store>, options: CacheOptions) -> Cache {
    Cache::with_shared_store(store, options).expect("valid cache options")
}

/// Polls `cond` every 2 ms until it holds or `deadline` passes; returns how long it took.
pub async fn eventually<F, Fut>(deadline: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `Some(amount)` of an optional invoice, for short assertions.
pub fn amount(v: &Option<Arc<Invoice>>) -> Option<u64> {
    v.as_ref().map(|i| i.amount)
}

/// Set, get, overwrite, delete; hit and miss counters.
pub async fn set_get_delete<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    assert_eq!(invoices.get(&acme, "1").await.unwrap(), None);
    invoices
        .set(&acme, "1", &inv(1, 10), &["invoice:1"])
        .await
        .unwrap();
    assert_eq!(amount(&invoices.get(&acme, "1").await.unwrap()), Some(10));
    invoices
        .set(&acme, "1", &inv(1, 11), &[] as &[&str])
        .await
        .unwrap();
    assert_eq!(amount(&invoices.get(&acme, "1").await.unwrap()), Some(11));
    invoices.delete(&acme, "1").await.unwrap();
    assert_eq!(invoices.get(&acme, "1").await.unwrap(), None);
    let stats = cache.stats().of("invoice");
    assert_eq!((stats.hits(), stats.misses), (2, 2));
    assert!((stats.hit_ratio() - 0.5).abs() < 1e-9);
}

/// One tag bump invalidates every entry carrying the tag, and only those.
pub async fn tag_invalidation<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    for i in 0..20 {
        let tags = ["customer:7".to_owned(), format!("invoice:{i}")];
        invoices
            .set(&acme, &i.to_string(), &inv(i, i), &tags)
            .await
            .unwrap();
    }
    invoices
        .set(&acme, "other", &inv(99, 0), &["customer:8"])
        .await
        .unwrap();
    cache.invalidate_tag(&acme, "invoice:3").await.unwrap();
    assert_eq!(invoices.get(&acme, "3").await.unwrap(), None);
    assert_eq!(amount(&invoices.get(&acme, "4").await.unwrap()), Some(4));
    cache.invalidate_tag(&acme, "customer:7").await.unwrap();
    for i in 0..20 {
        assert_eq!(
            invoices.get(&acme, &i.to_string()).await.unwrap(),
            None,
            "entry {i}"
        );
    }
    assert_eq!(
        amount(&invoices.get(&acme, "other").await.unwrap()),
        Some(0)
    );
    // A fresh write after an invalidation is served again; several tags at once.
    invoices
        .set(&acme, "5", &inv(5, 50), &["customer:7"])
        .await
        .unwrap();
    assert_eq!(amount(&invoices.get(&acme, "5").await.unwrap()), Some(50));
    cache
        .invalidate_tags(&acme, &["customer:8", "customer:7"])
        .await
        .unwrap();
    assert_eq!(invoices.get(&acme, "5").await.unwrap(), None);
    assert_eq!(invoices.get(&acme, "other").await.unwrap(), None);
    assert_eq!(cache.stats().invalidations, 4);
}

/// Tenants never see each other's entries; a tag or a clear of one never touches another.
pub async fn tenants_are_isolated<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let (a, b) = (org("tenant-a"), org("tenant-b"));
    invoices
        .set(&a, "1", &inv(1, 100), &["invoice:1"])
        .await
        .unwrap();
    assert_eq!(
        invoices.get(&b, "1").await.unwrap(),
        None,
        "tenant b sees a's entry"
    );
    invoices
        .set(&b, "1", &inv(1, 200), &["invoice:1"])
        .await
        .unwrap();
    assert_eq!(amount(&invoices.get(&a, "1").await.unwrap()), Some(100));
    cache.invalidate_tag(&a, "invoice:1").await.unwrap();
    assert_eq!(invoices.get(&a, "1").await.unwrap(), None);
    assert_eq!(amount(&invoices.get(&b, "1").await.unwrap()), Some(200));
    invoices
        .set(&a, "2", &inv(2, 1), &[] as &[&str])
        .await
        .unwrap();
    cache.clear_tenant(&b).await.unwrap();
    assert_eq!(invoices.get(&b, "1").await.unwrap(), None);
    assert_eq!(amount(&invoices.get(&a, "2").await.unwrap()), Some(1));
    let loaded = invoices
        .get_or_load(&a, "1", &[] as &[&str], || async {
            Ok::<_, Error>(inv(1, 101))
        })
        .await
        .unwrap();
    assert_eq!(loaded.amount, 101);
    assert_eq!(invoices.get(&b, "1").await.unwrap(), None);
}

/// `CacheEntry::clear` drops one data type of one tenant, `Cache::clear_tenant` every type.
pub async fn clear_a_data_type_or_a_tenant<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let orders = cache.entry::<Invoice>("order", minute()).unwrap();
    let (a, b) = (org("a"), org("b"));
    for (t, o) in [(&invoices, &a), (&invoices, &b), (&orders, &a)] {
        for k in 0..10 {
            t.set(o, &k.to_string(), &inv(k, 1), &["x"]).await.unwrap();
        }
    }
    invoices.clear(&a).await.unwrap();
    for k in 0..10 {
        let k = k.to_string();
        assert_eq!(invoices.get(&a, &k).await.unwrap(), None);
        assert!(
            invoices.get(&b, &k).await.unwrap().is_some(),
            "another tenant's type cleared"
        );
        assert!(
            orders.get(&a, &k).await.unwrap().is_some(),
            "another type cleared"
        );
    }
    cache.clear_tenant(&a).await.unwrap();
    for k in 0..10 {
        let k = k.to_string();
        assert_eq!(orders.get(&a, &k).await.unwrap(), None);
        assert!(invoices.get(&b, &k).await.unwrap().is_some());
    }
    // New writes after a clear are served.
    orders.set(&a, "1", &inv(1, 2), &["x"]).await.unwrap();
    assert_eq!(amount(&orders.get(&a, "1").await.unwrap()), Some(2));
}

/// `get_many` returns values in key order, hits and misses mixed.
pub async fn get_many_reads_in_order<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    for k in [1u64, 3, 4] {
        invoices
            .set(&acme, &k.to_string(), &inv(k, k * 10), &["t"])
            .await
            .unwrap();
    }
    cache.invalidate_tag(&acme, "nothing-here").await.unwrap();
    invoices.set(&acme, "4", &inv(4, 41), &["u"]).await.unwrap();
    cache.invalidate_tag(&acme, "u").await.unwrap();
    let got = invoices
        .get_many(&acme, &["1", "2", "3", "4"])
        .await
        .unwrap();
    let got: Vec<Option<u64>> = got.into_iter().map(|v| v.map(|i| i.amount)).collect();
    assert_eq!(got, vec![Some(10), None, Some(30), None]);
    assert!(invoices.get_many(&acme, &["ok", "bad key"]).await.is_err());
    assert!(
        invoices
            .get_many(&acme, &[] as &[&str])
            .await
            .unwrap()
            .is_empty()
    );
}

/// Invalid names, too many tags, oversized values and invalid policies are typed errors.
pub async fn bad_input_is_refused<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    assert!(matches!(
        cache.entry::<Invoice>("bad:type", minute()),
        Err(Error::Name(_))
    ));
    assert!(matches!(
        cache.entry::<Invoice>("", minute()),
        Err(Error::Name(_))
    ));
    assert!(matches!(
        cache.entry::<Invoice>("ok", TypePolicy::ttl(Duration::ZERO)),
        Err(Error::Config(_))
    ));
    let mut bad = minute();
    bad.jitter = 2.0;
    assert!(matches!(
        cache.entry::<Invoice>("ok", bad),
        Err(Error::Config(_))
    ));
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let small = cache
        .entry::<String>("blob", minute().max_value_bytes(1024))
        .unwrap();
    let acme = org("acme");
    assert!(matches!(
        invoices.set(&acme, "1", &inv(1, 1), &["bad tag"]).await,
        Err(Error::Name(_))
    ));
    assert!(
        matches!(
            invoices.set(&acme, "1", &inv(1, 1), &["#all"]).await,
            Err(Error::Name(_))
        ),
        "the implicit tags are reserved"
    );
    assert!(matches!(
        invoices
            .set(&acme, "bad key", &inv(1, 1), &[] as &[&str])
            .await,
        Err(Error::Name(_))
    ));
    assert!(matches!(invoices.get(&acme, "").await, Err(Error::Name(_))));
    assert!(matches!(
        cache.invalidate_tag(&acme, "a\nb").await,
        Err(Error::Name(_))
    ));
    let many: Vec<String> = (0..=windlass_cache::MAX_TAGS)
        .map(|i| format!("t{i}"))
        .collect();
    assert!(matches!(
        invoices.set(&acme, "1", &inv(1, 1), &many).await,
        Err(Error::TooManyTags { .. })
    ));
    let err = small
        .set(&acme, "big", &"x".repeat(2000), &[] as &[&str])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 1024, .. }), "{err}");
    assert_eq!(small.get(&acme, "big").await.unwrap(), None);
    // get_or_load returns an oversized value but does not store it.
    let v = small
        .get_or_load(&acme, "big", &[] as &[&str], || async {
            Ok::<_, Error>("y".repeat(2000))
        })
        .await
        .unwrap();
    assert_eq!(v.len(), 2000);
    assert_eq!(small.get(&acme, "big").await.unwrap(), None);
    let bad_key = invoices
        .get_or_load(&acme, "bad key", &[] as &[&str], || async {
            Ok::<_, Error>(inv(1, 1))
        })
        .await;
    assert!(matches!(
        bad_key,
        Err(windlass_cache::LoadError::Cache(Error::Name(_)))
    ));
}

/// After a deploy that changed the type, or with garbage written by another program, stored
/// values are misses, counted, and `get_or_load` overwrites them.
pub async fn undecodable_values_are_misses<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let old = cache.entry::<String>("invoice", minute()).unwrap();
    let new = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    old.set(&acme, "1", &"v1 shape".to_owned(), &[] as &[&str])
        .await
        .unwrap();
    assert_eq!(new.get(&acme, "1").await.unwrap(), None);
    assert_eq!(cache.stats().of("invoice").decode_failures, 1);
    let ty = new.data_type().clone();
    for garbage in [
        &b"garbage"[..],
        b"WLC1 x 1 2\n\nnot json",
        b"WLC9 from the future",
        b"\xff\xfe",
    ] {
        f.put_raw(EntryRef::new(&acme, &ty, "2"), garbage).await;
        assert_eq!(new.get(&acme, "2").await.unwrap(), None);
    }
    assert_eq!(cache.stats().of("invoice").decode_failures, 5);
    for key in ["1", "2"] {
        let v = new
            .get_or_load(&acme, key, &[] as &[&str], || async {
                Ok::<_, Error>(inv(1, 2))
            })
            .await
            .unwrap();
        assert_eq!(v.amount, 2);
        assert_eq!(amount(&new.get(&acme, key).await.unwrap()), Some(2));
    }
}

/// A tag whose version is lost (evicted, flushed, failed over) makes its entries misses for
/// good: versions never repeat, so neither a re-created tag nor later invalidations can make an
/// old entry valid again.
pub async fn a_lost_tag_version_only_causes_misses<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    invoices
        .set(&acme, "old", &inv(1, 1), &["t"])
        .await
        .unwrap();
    assert!(invoices.get(&acme, "old").await.unwrap().is_some());
    f.drop_tag(&acme, "t").await;
    assert_eq!(
        invoices.get(&acme, "old").await.unwrap(),
        None,
        "served without its tag"
    );
    for round in 0..5 {
        // The tag comes back (a new entry carries it, or an invalidation bumps it).
        invoices
            .set(&acme, "new", &inv(2, round), &["t"])
            .await
            .unwrap();
        assert_eq!(
            amount(&invoices.get(&acme, "new").await.unwrap()),
            Some(round)
        );
        assert_eq!(
            invoices.get(&acme, "old").await.unwrap(),
            None,
            "round {round}: resurrected"
        );
        f.drop_tag(&acme, "t").await;
        cache.invalidate_tag(&acme, "t").await.unwrap();
        assert_eq!(
            invoices.get(&acme, "old").await.unwrap(),
            None,
            "round {round}: resurrected"
        );
    }
}
