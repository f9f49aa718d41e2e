//! Properties of the L1 and of several cache instances on one store.

use std::time::Duration;

use windlass_cache::{Cache, CacheOptions, L1Options};

use super::{CacheFixture, Invoice, WAIT, amount, cache_on, eventually, inv, minute, org};

fn with_l1() -> CacheOptions {
    CacheOptions::default().l1(L1Options::capacity(1000))
}

async fn active(cache: &Cache) {
    let c = cache.clone();
    eventually(WAIT, move || {
        let c = c.clone();
        async move { c.l1_active() }
    })
    .await;
}

/// The local instance's own invalidations and deletes apply to its L1 before they return.
pub async fn local_invalidation_applies_to_the_l1_at_once<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, with_l1());
    active(&cache).await;
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    invoices.set(&acme, "1", &inv(1, 1), &["t"]).await.unwrap();
    assert!(invoices.get(&acme, "1").await.unwrap().is_some());
    let before = cache.stats().of("invoice");
    for _ in 0..10 {
        assert!(invoices.get(&acme, "1").await.unwrap().is_some());
    }
    let after = cache.stats().of("invoice");
    assert_eq!(after.hits_l1 - before.hits_l1, 10, "the L1 did not serve");
    cache.invalidate_tag(&acme, "t").await.unwrap();
    assert_eq!(
        invoices.get(&acme, "1").await.unwrap(),
        None,
        "own invalidation not applied"
    );
    invoices
        .set(&acme, "2", &inv(2, 1), &[] as &[&str])
        .await
        .unwrap();
    assert!(invoices.get(&acme, "2").await.unwrap().is_some());
    invoices.delete(&acme, "2").await.unwrap();
    assert_eq!(
        invoices.get(&acme, "2").await.unwrap(),
        None,
        "own delete not applied"
    );
    invoices
        .set(&acme, "3", &inv(3, 1), &[] as &[&str])
        .await
        .unwrap();
    assert!(invoices.get(&acme, "3").await.unwrap().is_some());
    cache.clear_tenant(&acme).await.unwrap();
    assert_eq!(
        invoices.get(&acme, "3").await.unwrap(),
        None,
        "own clear not applied"
    );
}

/// Two instances with an L1 on one store: an invalidation, a write or a delete on one is seen
/// by the other after a bounded delay. Returns the measured delays.
pub async fn l1_instances_stay_in_sync<F: CacheFixture>(f: &F) -> Vec<Duration> {
    let a = cache_on(f.store().await, with_l1());
    let b = cache_on(f.store().await, with_l1());
    active(&a).await;
    active(&b).await;
    let ea = a.entry::<Invoice>("invoice", minute()).unwrap();
    let eb = b.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    let mut delays = Vec::new();
    for round in 0..5u64 {
        let key = format!("k{round}");
        ea.set(&acme, &key, &inv(round, 1), &["shared"])
            .await
            .unwrap();
        // B fills its L1 (a read that raced the notice of A's write is not kept: retry).
        let before = b.stats().of("invoice").hits_l1;
        let (eb2, b2, acme2, key2) = (eb.clone(), b.clone(), acme.clone(), key.clone());
        eventually(WAIT, move || {
            let (eb, b, acme, key) = (eb2.clone(), b2.clone(), acme2.clone(), key2.clone());
            async move {
                assert_eq!(amount(&eb.get(&acme, &key).await.unwrap()), Some(1));
                b.stats().of("invoice").hits_l1 > before
            }
        })
        .await;
        // Invalidate on A: B stops serving its L1 copy.
        a.invalidate_tag(&acme, "shared").await.unwrap();
        let (eb2, acme2, key2) = (eb.clone(), acme.clone(), key.clone());
        delays.push(
            eventually(WAIT, move || {
                let (eb, acme, key) = (eb2.clone(), acme2.clone(), key2.clone());
                async move { eb.get(&acme, &key).await.unwrap().is_none() }
            })
            .await,
        );
        // A write on A replaces B's copy; so does a delete.
        ea.set(&acme, &key, &inv(round, 2), &["shared"])
            .await
            .unwrap();
        let (eb2, acme2, key2) = (eb.clone(), acme.clone(), key.clone());
        eventually(WAIT, move || {
            let (eb, acme, key) = (eb2.clone(), acme2.clone(), key2.clone());
            async move { amount(&eb.get(&acme, &key).await.unwrap()) == Some(2) }
        })
        .await;
        ea.set(&acme, &key, &inv(round, 3), &["shared"])
            .await
            .unwrap();
        let (eb2, acme2, key2) = (eb.clone(), acme.clone(), key.clone());
        delays.push(
            eventually(WAIT, move || {
                let (eb, acme, key) = (eb2.clone(), acme2.clone(), key2.clone());
                async move { amount(&eb.get(&acme, &key).await.unwrap()) == Some(3) }
            })
            .await,
        );
        ea.delete(&acme, &key).await.unwrap();
        let (eb2, acme2, key2) = (eb.clone(), acme.clone(), key.clone());
        eventually(WAIT, move || {
            let (eb, acme, key) = (eb2.clone(), acme2.clone(), key2.clone());
            async move { eb.get(&acme, &key).await.unwrap().is_none() }
        })
        .await;
    }
    assert!(b.stats().notices >= 15, "{:?}", b.stats());
    delays
}

/// Two instances racing `set` on one key end up serving the store's value, both of them, from
/// their L1s too.
pub async fn concurrent_sets_resolve_to_the_store_value<F: CacheFixture>(f: &F) {
    let a = cache_on(f.store().await, with_l1());
    let b = cache_on(f.store().await, with_l1());
    let plain = cache_on(f.store().await, CacheOptions::default());
    active(&a).await;
    active(&b).await;
    let ea = a.entry::<Invoice>("invoice", minute()).unwrap();
    let eb = b.entry::<Invoice>("invoice", minute()).unwrap();
    let store_view = plain.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    for round in 0..40u64 {
        let key = format!("race{}", round % 4);
        // Both hold the key in their L1 before the race.
        for e in [&ea, &eb] {
            e.set(&acme, &key, &inv(0, 0), &[] as &[&str])
                .await
                .unwrap();
        }
        let (e1, e2) = (eb.clone(), acme.clone());
        let k2 = key.clone();
        eventually(WAIT, move || {
            let (e1, e2, k2) = (e1.clone(), e2.clone(), k2.clone());
            async move { amount(&e1.get(&e2, &k2).await.unwrap()) == Some(0) }
        })
        .await;
        let _ = ea.get(&acme, &key).await.unwrap();
        let (va, vb) = (inv(0, 2 * round + 1), inv(0, 2 * round + 2));
        let (ra, rb) = tokio::join!(
            ea.set(&acme, &key, &va, &[] as &[&str]),
            eb.set(&acme, &key, &vb, &[] as &[&str]),
        );
        ra.unwrap();
        rb.unwrap();
        let stored = amount(&store_view.get(&acme, &key).await.unwrap());
        assert!(stored.is_some());
        for e in [&ea, &eb] {
            let (e, a2, k2) = (e.clone(), acme.clone(), key.clone());
            eventually(WAIT, move || {
                let (e, a2, k2) = (e.clone(), a2.clone(), k2.clone());
                async move { amount(&e.get(&a2, &k2).await.unwrap()) == stored }
            })
            .await;
        }
        // And it stays so: an L1 holding the other value would have served it by now.
        for _ in 0..20 {
            assert_eq!(amount(&ea.get(&acme, &key).await.unwrap()), stored);
            assert_eq!(amount(&eb.get(&acme, &key).await.unwrap()), stored);
        }
    }
}
