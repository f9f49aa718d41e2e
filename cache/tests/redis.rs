//! The store suite and the Redis-specific cases: key layout, one round trip per hit, garbage
//! written by a raw client, Redis killed, paused, and its pub/sub connections killed.
#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use windlass_cache::{Cache, CacheOptions, Error, L1Options, RedisStore, RedisStoreOptions, Store};
use windlass_testkit::redis::{TestRedis, fresh_prefix};

async fn store(t: &TestRedis) -> RedisStore {
    RedisStore::with_connection(
        t.client.clone(),
        t.conn.clone(),
        RedisStoreOptions::default().prefix(&t.prefix),
    )
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let t = fresh_prefix().await;
            common::$case(Arc::new(store(&t).await)).await;
            t.cleanup().await;
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
    let t = fresh_prefix().await;
    // Two stores, two connections: as two processes would have.
    let a = RedisStore::new(
        t.client.clone(),
        RedisStoreOptions::default().prefix(&t.prefix),
    )
    .await
    .unwrap();
    let b = RedisStore::new(
        t.client.clone(),
        RedisStoreOptions::default().prefix(&t.prefix),
    )
    .await
    .unwrap();
    let delays = common::l1_instances_stay_in_sync(Arc::new(a), Arc::new(b)).await;
    let max = delays.iter().max().unwrap();
    println!("L1 sync delays over Redis pub/sub: {delays:?} (max {max:?})");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_the_documented_layout() {
    let t = fresh_prefix().await;
    let cache = Cache::new(store(&t).await);
    let invoices = cache
        .entry::<common::Invoice>("invoice", common::minute())
        .unwrap();
    let acme = common::org("acme");
    invoices
        .set(&acme, "inv/42", &common::inv(42, 1), &["customer:7"])
        .await
        .unwrap();
    let mut conn = t.conn.clone();
    let raw: Vec<u8> = conn
        .get(format!("{}:c:acme:invoice:inv/42", t.prefix))
        .await
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("WLC1 "), "{text}");
    assert!(
        text.contains(" customer:7\n\n{\"id\":42,\"amount\":1}"),
        "{text}"
    );
    let version: String = conn
        .get(format!("{}:c:acme:#tag:customer:7", t.prefix))
        .await
        .unwrap();
    assert!(text.contains(&format!("T {version} customer:7")));
    let ttl: i64 = conn
        .pttl(format!("{}:c:acme:invoice:inv/42", t.prefix))
        .await
        .unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_written_by_a_raw_client_is_a_counted_miss() {
    let t = fresh_prefix().await;
    let cache = Cache::new(store(&t).await);
    let invoices = cache
        .entry::<common::Invoice>("invoice", common::minute())
        .unwrap();
    let acme = common::org("acme");
    let key = format!("{}:c:acme:invoice:1", t.prefix);
    let mut conn = t.conn.clone();
    for garbage in [
        &b"garbage"[..],
        b"WLC1 x 1 2\n\nnot json",
        b"WLC1 x 1 99999999999999\nT 1 tag\n\n{\"id\":1,\"amount\":1}",
        b"\xff\xfe",
    ] {
        let _: () = conn.set(&key, garbage).await.unwrap();
        assert_eq!(invoices.get(&acme, "1").await.unwrap(), None);
    }
    // Three do not decode; the fourth-but-one decodes but its tag version is not current.
    assert_eq!(cache.stats().of("invoice").decode_failures, 3);
    let v = invoices
        .get_or_load(&acme, "1", &[], || async {
            Ok::<_, Error>(common::inv(1, 5))
        })
        .await
        .unwrap();
    assert_eq!(invoices.get(&acme, "1").await.unwrap(), Some(v));
    t.cleanup().await;
}

fn info_field(info: &str, section_key: &str, field: &str) -> u64 {
    info.lines()
        .find(|l| l.starts_with(section_key))
        .and_then(|l| {
            l.split([',', ':'])
                .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_one_round_trip() {
    let server = common::PrivateRedis::start().await;
    let store = RedisStore::connect(&server.url).await.unwrap();
    let cache = Cache::new(store);
    let invoices = cache
        .entry::<common::Invoice>("invoice", common::minute())
        .unwrap();
    let acme = common::org("acme");
    invoices
        .set(&acme, "1", &common::inv(1, 1), &["a", "b", "c"])
        .await
        .unwrap();
    assert!(invoices.get(&acme, "1").await.unwrap().is_some()); // loads the script
    let mut admin = server.conn().await;
    let before: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    for _ in 0..100 {
        assert!(invoices.get(&acme, "1").await.unwrap().is_some());
    }
    let after: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    let calls = |info: &str, cmd: &str| info_field(info, &format!("cmdstat_{cmd}:"), "calls");
    assert_eq!(
        calls(&after, "evalsha") - calls(&before, "evalsha"),
        100,
        "one EVALSHA per hit"
    );
    // Inside the script: one GET and one MGET per hit, nothing else.
    assert_eq!(calls(&after, "get") - calls(&before, "get"), 100);
    assert_eq!(calls(&after, "mget") - calls(&before, "mget"), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_reads_fall_through_and_writes_fail() {
    let mut server = common::PrivateRedis::start().await;
    let store = RedisStore::connect(&server.url).await.unwrap();
    let cache = Cache::with_options(
        store,
        CacheOptions::default().timeout(Duration::from_millis(200)),
    );
    let invoices = cache
        .entry::<common::Invoice>("invoice", common::minute())
        .unwrap();
    let acme = common::org("acme");
    invoices
        .set(&acme, "1", &common::inv(1, 1), &["t"])
        .await
        .unwrap();
    server.kill();
    let calls = Arc::new(AtomicUsize::new(0));
    let loader = {
        let calls = calls.clone();
        move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(common::inv(1, 2))
            }
        }
    };
    assert_eq!(invoices.get(&acme, "1").await.unwrap(), None);
    assert_eq!(
        invoices
            .get_or_load(&acme, "1", &["t"], loader.clone())
            .await
            .unwrap(),
        common::inv(1, 2)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let err = invoices
        .set(&acme, "1", &common::inv(1, 3), &["t"])
        .await
        .unwrap_err();
    assert!(err.is_store_unavailable(), "{err}");
    assert!(
        cache
            .invalidate_tag(&acme, "t")
            .await
            .unwrap_err()
            .is_store_unavailable()
    );
    assert!(
        invoices
            .delete(&acme, "1")
            .await
            .unwrap_err()
            .is_store_unavailable()
    );
    let s = cache.stats().of("invoice");
    assert!(s.fail_open >= 2, "{s:?}");
    // Back up: the cache works again without being rebuilt.
    server.restart().await;
    let inv2 = invoices.clone();
    let acme2 = acme.clone();
    common::eventually(Duration::from_secs(10), move || {
        let (invoices, acme) = (inv2.clone(), acme2.clone());
        async move {
            invoices
                .set(&acme, "1", &common::inv(1, 4), &["t"])
                .await
                .is_ok()
        }
    })
    .await;
    assert_eq!(
        invoices.get(&acme, "1").await.unwrap(),
        Some(common::inv(1, 4))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_degrades_to_the_loader() {
    let server = common::PrivateRedis::start().await;
    let store = RedisStore::connect(&server.url).await.unwrap();
    let cache = Cache::with_options(
        store,
        CacheOptions::default().timeout(Duration::from_millis(100)),
    );
    let invoices = cache
        .entry::<common::Invoice>("invoice", common::minute())
        .unwrap();
    let acme = common::org("acme");
    invoices
        .set(&acme, "1", &common::inv(1, 1), &[])
        .await
        .unwrap();
    let mut admin = server.conn().await;
    // Every client but this one stalls for 2 s.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let started = Instant::now();
    let v = invoices
        .get_or_load(&acme, "1", &[], || async {
            Ok::<_, Error>(common::inv(1, 9))
        })
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(v, common::inv(1, 9), "the loader's value, not a hang");
    assert!(
        took < Duration::from_millis(1500),
        "get_or_load waited {took:?} on a paused Redis"
    );
    assert!(cache.stats().of("invoice").fail_open >= 1);
    // The pause ends by itself; the private server goes away with the test.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_pubsub_connection_turns_the_l1_off_then_resets_it() {
    let server = common::PrivateRedis::start().await;
    let options = CacheOptions::default().l1(L1Options::capacity(100));
    let opts = RedisStoreOptions::default().resubscribe_delay(Duration::from_millis(50));
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let a = Cache::with_options(
        RedisStore::new(client.clone(), opts.clone()).await.unwrap(),
        options.clone(),
    );
    let b = Cache::with_options(RedisStore::new(client, opts).await.unwrap(), options);
    for c in [&a, &b] {
        let c = c.clone();
        common::eventually(Duration::from_secs(5), move || {
            let c = c.clone();
            async move { c.l1_active() }
        })
        .await;
    }
    let resets_before = b.stats().l1_resets;
    let ea = a
        .entry::<common::Invoice>("invoice", common::minute())
        .unwrap();
    let eb = b
        .entry::<common::Invoice>("invoice", common::minute())
        .unwrap();
    let acme = common::org("acme");
    ea.set(&acme, "1", &common::inv(1, 1), &["t"])
        .await
        .unwrap();
    assert!(eb.get(&acme, "1").await.unwrap().is_some());
    let mut admin = server.conn().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 2);
    // B notices, stops trusting its L1, resubscribes and resets.
    let b2 = b.clone();
    common::eventually(Duration::from_secs(5), move || {
        let b = b2.clone();
        async move { b.stats().l1_resets > resets_before && b.l1_active() }
    })
    .await;
    // Sync works again after the reconnect.
    assert!(eb.get(&acme, "1").await.unwrap().is_some());
    a.invalidate_tag(&acme, "t").await.unwrap();
    let (eb2, acme2) = (eb.clone(), acme.clone());
    common::eventually(Duration::from_secs(2), move || {
        let (eb, acme) = (eb2.clone(), acme2.clone());
        async move { eb.get(&acme, "1").await.unwrap().is_none() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_keys_have_no_tenant_overlap() {
    let t = fresh_prefix().await;
    let s = store(&t).await;
    let (a, b) = (common::org("a"), common::org("b"));
    assert_ne!(s.tag_key(&a, "x"), s.tag_key(&b, "x"));
    let va = s.tag_versions(&a, &["x"]).await.unwrap();
    s.invalidate(&b, &["x"], None).await.unwrap();
    assert_eq!(s.tag_versions(&a, &["x"]).await.unwrap(), va);
    t.cleanup().await;
}
