//! Faults injected for real on a private `redis-server` of the test's own (never the shared
//! one): Redis killed and restarted (breaker, replay, no stale read after recovery), paused,
//! a half-open connection (a TCP proxy holding it silent, no FIN, no RST), a cut connection
//! while invalidations go by.
#![cfg(feature = "redis")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use windlass_cache::{
    BreakerOptions, BreakerState, Cache, CacheOptions, L1Options, RedisCacheStore,
    RedisCacheStoreConfig,
};
use windlass_testkit::conformance::cache::{Invoice, WAIT, amount, eventually, inv, minute, org};
use windlass_testkit::proxy::TcpProxy;
use windlass_testkit::servers::PrivateRedis;

async fn store_at(url: &str) -> RedisCacheStore {
    RedisCacheStore::with_config(
        redis::Client::open(url).unwrap(),
        RedisCacheStoreConfig::default()
            .heartbeat(Duration::from_millis(100))
            .connect_timeout(Duration::from_millis(500))
            .reconnect_delay(Duration::from_millis(50)),
    )
    .await
    .unwrap()
}

fn options() -> CacheOptions {
    CacheOptions::default()
        .timeout(Duration::from_millis(200))
        .breaker(
            BreakerOptions::default()
                .failures(3)
                .open_for(Duration::from_millis(300)),
        )
        .replay_interval(Duration::from_millis(100))
}

async fn until(cond: impl Fn() -> bool) {
    eventually(WAIT, || std::future::ready(cond())).await;
}

/// Redis killed, then restarted with its data: while it is down the breaker opens and a miss
/// costs one fast failure; invalidations and deletes made meanwhile fail, are queued, hide the
/// entries they cover from this process, and are replayed once Redis is back, after which no
/// instance reads the old values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted() {
    let mut server = PrivateRedis::start_persistent();
    let a = Cache::with_options(store_at(&server.url()).await, options()).unwrap();
    let ea = a.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    ea.set(&acme, "1", &inv(1, 1), &["t"]).await.unwrap();
    ea.set(&acme, "2", &inv(2, 1), &[] as &[&str])
        .await
        .unwrap();
    assert!(ea.get(&acme, "1").await.unwrap().is_some());

    server.kill();
    // Misses fall through; the breaker opens after a few failures.
    let a2 = a.clone();
    let e2 = ea.clone();
    let acme2 = acme.clone();
    eventually(WAIT, move || {
        let (a, e, o) = (a2.clone(), e2.clone(), acme2.clone());
        async move {
            assert_eq!(e.get(&o, "1").await.unwrap(), None);
            a.stats().breaker == BreakerState::Open
        }
    })
    .await;
    // Open: a call does no store work at all; 100 misses take less than one store timeout.
    let started = Instant::now();
    for _ in 0..100 {
        if a.stats().breaker != BreakerState::Open {
            break; // a probe time came; the loop below checks the behaviour again
        }
        assert_eq!(ea.get(&acme, "1").await.unwrap(), None);
    }
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "misses with the breaker open waited on the store ({:?})",
        started.elapsed()
    );
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    let v = ea
        .get_or_load(&acme, "1", &["t"], || async move {
            l.fetch_add(1, SeqCst);
            Ok::<_, std::io::Error>(inv(1, 2))
        })
        .await
        .unwrap();
    assert_eq!(
        (v.amount, loads.load(SeqCst)),
        (2, 1),
        "the loader's value while Redis is down"
    );
    // Writes made while down fail, are queued, and hide what they cover.
    let err = a.invalidate_tag(&acme, "t").await.unwrap_err();
    assert!(err.is_store_unavailable(), "{err}");
    let err = ea.delete(&acme, "2").await.unwrap_err();
    assert!(err.is_store_unavailable(), "{err}");
    assert_eq!(a.pending_invalidations(), 2);

    server.restart();
    // Until the replay lands, this process never serves what it invalidated.
    let (a2, e2, o2) = (a.clone(), ea.clone(), acme.clone());
    eventually(WAIT, move || {
        let (a, e, o) = (a2.clone(), e2.clone(), o2.clone());
        async move {
            assert_eq!(
                e.get(&o, "1").await.unwrap(),
                None,
                "served an invalidated value"
            );
            assert_eq!(
                e.get(&o, "2").await.unwrap(),
                None,
                "served a deleted value"
            );
            a.pending_invalidations() == 0
        }
    })
    .await;
    let a2 = a.clone();
    until(move || a2.stats().breaker == BreakerState::Closed).await;
    let stats = a.stats();
    assert!(stats.invalidations_replayed >= 2, "{stats:?}");
    assert!(stats.breaker_opened >= 1, "{stats:?}");
    // Another instance, connected after the recovery, reads no old value.
    let b = Cache::with_options(store_at(&server.url()).await, options()).unwrap();
    let eb = b.entry::<Invoice>("invoice", minute()).unwrap();
    assert_eq!(
        eb.get(&acme, "1").await.unwrap(),
        None,
        "stale read after recovery"
    );
    assert_eq!(
        eb.get(&acme, "2").await.unwrap(),
        None,
        "deleted value read after recovery"
    );
    // Both work again.
    ea.set(&acme, "1", &inv(1, 3), &["t"]).await.unwrap();
    assert_eq!(amount(&eb.get(&acme, "1").await.unwrap()), Some(3));
}

/// `CLIENT PAUSE`: a store that answers too slowly degrades `get_or_load` to the loader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_degrades_to_the_loader() {
    let server = PrivateRedis::start();
    let cache = Cache::with_options(store_at(&server.url()).await, options()).unwrap();
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    invoices
        .set(&acme, "1", &inv(1, 1), &[] as &[&str])
        .await
        .unwrap();
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let v = tokio::time::timeout(
        Duration::from_millis(2500),
        invoices.get_or_load(&acme, "1", &[] as &[&str], || async {
            Ok::<_, std::io::Error>(inv(1, 9))
        }),
    )
    .await
    .expect("get_or_load waited for the paused Redis")
    .unwrap();
    assert_eq!(v.amount, 9, "the loader's value, not a hang");
    assert!(cache.stats().of("invoice").fail_open >= 1);
}

async fn two_instances(
    server: &PrivateRedis,
    proxy: &TcpProxy,
    max_staleness: Duration,
) -> (Cache, Cache) {
    let l1 = L1Options::capacity(100).max_staleness(max_staleness);
    let a = Cache::with_options(store_at(&server.url()).await, options().l1(l1.clone())).unwrap();
    let b = Cache::with_options(
        store_at(&format!("redis://127.0.0.1:{}", proxy.port())).await,
        options().l1(l1),
    )
    .unwrap();
    for c in [&a, &b] {
        let c = c.clone();
        until(move || c.l1_active()).await;
    }
    (a, b)
}

fn upstream(server: &PrivateRedis) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port()))
}

/// A half-open connection (the proxy holds it silent: no FIN, no RST): the instance behind it
/// stops using its L1 within its staleness bound, never serves a value invalidated more than
/// that bound ago, and resynchronises when the network heals. Prints the staleness observed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_puts_the_l1_out_of_use_within_its_bound() {
    let bound = Duration::from_millis(500);
    let server = PrivateRedis::start();
    let proxy = TcpProxy::start(upstream(&server));
    let (a, b) = two_instances(&server, &proxy, bound).await;
    let ea = a.entry::<Invoice>("invoice", minute()).unwrap();
    let eb = b.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    ea.set(&acme, "1", &inv(1, 1), &["t"]).await.unwrap();
    let (e, o, bb) = (eb.clone(), acme.clone(), b.clone());
    eventually(WAIT, move || {
        let (e, o, bb) = (e.clone(), o.clone(), bb.clone());
        async move {
            let before = bb.stats().of("invoice").hits_l1;
            amount(&e.get(&o, "1").await.unwrap()) == Some(1)
                && bb.stats().of("invoice").hits_l1 > before
        }
    })
    .await;

    proxy.blackhole();
    a.invalidate_tag(&acme, "t").await.unwrap();
    let invalidated = Instant::now();
    // For a while B keeps answering; it must stop serving the old value within the bound.
    let mut last_old = None;
    while invalidated.elapsed() < bound * 4 {
        let t = Instant::now();
        if amount(&eb.get(&acme, "1").await.unwrap()) == Some(1) {
            assert!(
                t.duration_since(invalidated) <= bound,
                "served a value invalidated {:?} ago (bound {bound:?})",
                t.duration_since(invalidated)
            );
            last_old = Some(t.duration_since(invalidated));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !b.l1_active(),
        "the L1 says it is in use on a deaf connection"
    );
    println!(
        "half-open: old value served up to {last_old:?} after the invalidation (bound {bound:?})"
    );
    assert!(b.stats().l1_deaf >= 1);

    proxy.pass();
    let bb = b.clone();
    until(move || bb.l1_active()).await;
    assert_eq!(eb.get(&acme, "1").await.unwrap(), None);
    ea.set(&acme, "1", &inv(1, 2), &["t"]).await.unwrap();
    let (e, o) = (eb.clone(), acme.clone());
    eventually(WAIT, move || {
        let (e, o) = (e.clone(), o.clone());
        async move { amount(&e.get(&o, "1").await.unwrap()) == Some(2) }
    })
    .await;
    a.invalidate_tag(&acme, "t").await.unwrap();
    let (e, o) = (eb.clone(), acme.clone());
    eventually(WAIT, move || {
        let (e, o) = (e.clone(), o.clone());
        async move { e.get(&o, "1").await.unwrap().is_none() }
    })
    .await;
}

/// A connection cut (RST) while invalidations go by, and refused until they are done: the
/// notices are lost for the instance behind it, which must therefore drop its whole L1 when
/// it is back rather than serve what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_lost_while_disconnected_never_leave_an_old_value_in_the_l1() {
    let server = PrivateRedis::start();
    let proxy = TcpProxy::start(upstream(&server));
    let (a, b) = two_instances(&server, &proxy, Duration::from_secs(1)).await;
    let ea = a.entry::<Invoice>("invoice", minute()).unwrap();
    let eb = b.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    for k in 0..10 {
        ea.set(&acme, &k.to_string(), &inv(k, 1), &["t"])
            .await
            .unwrap();
        assert!(eb.get(&acme, &k.to_string()).await.unwrap().is_some());
    }
    let resets = b.stats().l1_resets;
    proxy.refuse();
    proxy.cut();
    let bb = b.clone();
    until(move || !bb.l1_active()).await;
    a.invalidate_tag(&acme, "t").await.unwrap();
    proxy.pass();
    let bb = b.clone();
    until(move || bb.l1_active() && bb.stats().l1_resets > resets).await;
    for k in 0..10 {
        assert_eq!(
            eb.get(&acme, &k.to_string()).await.unwrap(),
            None,
            "entry {k}: an L1 value outlived notices lost while disconnected"
        );
    }
}
