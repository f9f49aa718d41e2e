//! The store suite on the in-process store.
#![cfg(feature = "memory")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use windlass_cache::{Cache, CacheOptions, EntryRef, L1Options, MemoryStore, Store};

macro_rules! suite {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            common::$case(Arc::new(MemoryStore::new())).await;
        }
    )*};
}

suite!(
    set_get_delete,
    tag_invalidation,
    tenants_are_isolated,
    one_loader_for_concurrent_callers,
    loader_racing_an_invalidation_never_writes_back,
    loader_racing_a_delete_never_writes_back,
    bad_input_is_refused,
    undecodable_values_are_misses,
    fail_safe_serves_stale_when_the_loader_fails,
    stale_while_revalidate_refreshes_in_the_background,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_instances_stay_in_sync() {
    let store = Arc::new(MemoryStore::new());
    let delays = common::l1_instances_stay_in_sync(store.clone(), store).await;
    assert_eq!(delays.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_a_counted_miss() {
    let store = MemoryStore::new();
    let cache = Cache::new(store.clone());
    let invoices = cache
        .entry::<common::Invoice>("invoice", common::minute())
        .unwrap();
    let acme = common::org("acme");
    let ty = invoices.data_type().clone();
    for garbage in [
        &b"garbage"[..],
        b"WLC1 x 1 2\n\nnot json",
        b"WLC9 from the future",
    ] {
        store.put_raw(
            EntryRef::new(&acme, &ty, "1"),
            garbage,
            Duration::from_secs(60),
        );
        assert_eq!(invoices.get(&acme, "1").await.unwrap(), None);
    }
    assert_eq!(cache.stats().of("invoice").decode_failures, 3);
    // The loader replaces garbage.
    let v = invoices
        .get_or_load(&acme, "1", &[], || async {
            Ok::<_, std::io::Error>(common::inv(1, 1))
        })
        .await
        .unwrap();
    assert_eq!(invoices.get(&acme, "1").await.unwrap(), Some(v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_serves_without_the_store_and_respects_local_invalidation() {
    let store = MemoryStore::new();
    let cache = Cache::with_options(
        store.clone(),
        CacheOptions::default().l1(L1Options::capacity(100)),
    );
    let invoices = cache
        .entry::<common::Invoice>("invoice", common::minute())
        .unwrap();
    let acme = common::org("acme");
    let c = cache.clone();
    common::eventually(Duration::from_secs(2), move || {
        let c = c.clone();
        async move { c.l1_active() }
    })
    .await;
    invoices
        .set(&acme, "1", &common::inv(1, 1), &["t"])
        .await
        .unwrap();
    for _ in 0..10 {
        assert!(invoices.get(&acme, "1").await.unwrap().is_some());
    }
    let s = cache.stats().of("invoice");
    assert_eq!((s.hits_l1, s.hits_l2), (10, 0));
    cache.invalidate_tag(&acme, "t").await.unwrap();
    assert_eq!(
        invoices.get(&acme, "1").await.unwrap(),
        None,
        "own invalidation must apply at once"
    );
    assert!(store.notices().is_some());
}
