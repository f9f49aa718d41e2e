//! Properties of loads: single flight, the generation guard, the sharing rule (callers only
//! take results valid after they arrived), stale values, timeouts, hand-over, refresh-ahead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokio::sync::Notify;
use windlass_cache::{CacheOptions, CallOptions, Error, LoadError, TypePolicy};

use super::{CacheFixture, Invoice, WAIT, amount, cache_on, eventually, inv, minute, org};

/// A loader that stalls until released, reporting that it started.
#[derive(Clone, Default)]
struct Gate {
    started: Arc<Notify>,
    release: Arc<Notify>,
}

impl Gate {
    async fn pass(&self) {
        self.started.notify_one();
        self.release.notified().await;
    }
}

/// 1000 concurrent `get_or_load` of one cold key run one loader.
pub async fn one_load_for_concurrent_callers<F: CacheFixture>(f: &F) {
    let cache = cache_on(
        f.store().await,
        CacheOptions::default().timeout(Duration::from_secs(5)),
    );
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (invoices, acme, calls) = (invoices.clone(), acme.clone(), calls.clone());
        tasks.spawn(async move {
            invoices
                .get_or_load(&acme, "cold", &["invoice:cold"], || async {
                    calls.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Error>(inv(7, 7))
                })
                .await
                .unwrap()
        });
    }
    while let Some(v) = tasks.join_next().await {
        assert_eq!(v.unwrap().amount, 7);
    }
    assert_eq!(calls.load(SeqCst), 1, "the loader ran more than once");
    assert_eq!(cache.stats().of("invoice").loads, 1);
    assert_eq!(cache.loads_in_flight(), 0);
}

#[derive(Debug, PartialEq, Eq)]
struct DbDown(u32);

impl std::fmt::Display for DbDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database down (code {})", self.0)
    }
}

/// A loader's error comes back with its own type, to every caller that shared the load.
pub async fn loader_errors_keep_their_type<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    let err = invoices
        .get_or_load(&acme, "1", &[] as &[&str], || async {
            Err::<Invoice, _>(DbDown(7))
        })
        .await
        .unwrap_err();
    assert_eq!(err.loader_error(), Some(&DbDown(7)));
    assert!(err.to_string().contains("code 7"), "{err}");
    // Into the cache error with `?`.
    let as_cache: Error = invoices
        .get_or_load(&acme, "1", &[] as &[&str], || async {
            Err::<Invoice, _>(std::io::Error::other("boom"))
        })
        .await
        .unwrap_err()
        .into();
    assert!(matches!(as_cache, Error::Load(_)), "{as_cache}");
    assert_eq!(cache.stats().of("invoice").load_errors, 2);
}

/// A load that started before an invalidation never writes its older value: the loader reads
/// version 1, stalls, the row changes and the tag is invalidated, the loader resumes.
pub async fn a_load_racing_an_invalidation_is_never_stored<F: CacheFixture>(f: &F) {
    let cache = cache_on(
        f.store().await,
        CacheOptions::default().timeout(Duration::from_secs(5)),
    );
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    let db = Arc::new(AtomicUsize::new(1));
    let gate = Gate::default();
    let load = {
        let (invoices, acme, db, gate) = (invoices.clone(), acme.clone(), db.clone(), gate.clone());
        tokio::spawn(async move {
            invoices
                .get_or_load(&acme, "race", &["invoice:race"], || async {
                    let seen = db.load(SeqCst) as u64;
                    gate.pass().await;
                    Ok::<_, Error>(inv(1, seen))
                })
                .await
        })
    };
    gate.started.notified().await;
    db.store(2, SeqCst);
    cache.invalidate_tag(&acme, "invoice:race").await.unwrap();
    gate.release.notify_one();
    // The caller arrived before the invalidation: its own load is a valid answer for it.
    assert_eq!(load.await.unwrap().unwrap().amount, 1);
    assert_eq!(
        invoices.get(&acme, "race").await.unwrap(),
        None,
        "the pre-invalidation value was written back"
    );
    assert!(cache.stats().of("invoice").writes_discarded >= 1);
    let v = invoices
        .get_or_load(&acme, "race", &["invoice:race"], || async {
            Ok::<_, Error>(inv(1, db.load(SeqCst) as u64))
        })
        .await
        .unwrap();
    assert_eq!(v.amount, 2);
    assert_eq!(amount(&invoices.get(&acme, "race").await.unwrap()), Some(2));
}

/// A delete during a load leaves a tombstone the load cannot overwrite.
pub async fn a_load_racing_a_delete_is_never_stored<F: CacheFixture>(f: &F) {
    let cache = cache_on(
        f.store().await,
        CacheOptions::default().timeout(Duration::from_secs(5)),
    );
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    for existing in [false, true] {
        let key = format!("d-{existing}");
        if existing {
            invoices
                .set(&acme, &key, &inv(1, 0), &[] as &[&str])
                .await
                .unwrap();
            cache.invalidate_tag(&acme, "unrelated").await.unwrap();
        }
        let gate = Gate::default();
        let load = {
            let (invoices, acme, gate, key) =
                (invoices.clone(), acme.clone(), gate.clone(), key.clone());
            tokio::spawn(async move {
                invoices
                    .with_options(CallOptions::new().skip_l1())
                    .unwrap()
                    .reload(&acme, &key, &[] as &[&str], || async {
                        gate.pass().await;
                        Ok::<_, Error>(inv(1, 1))
                    })
                    .await
            })
        };
        gate.started.notified().await;
        invoices.delete(&acme, &key).await.unwrap();
        gate.release.notify_one();
        assert_eq!(load.await.unwrap().unwrap().amount, 1);
        assert_eq!(
            invoices.get(&acme, &key).await.unwrap(),
            None,
            "a load wrote over a delete"
        );
    }
}

/// A load slower than the tombstone's lifetime still never writes over the delete: its write
/// is refused past a deadline on the store's clock.
pub async fn a_slow_load_never_overwrites_a_later_delete<F: CacheFixture>(f: &F) {
    let tombstone = Duration::from_secs(2);
    let cache = cache_on(
        f.store().await,
        CacheOptions::default()
            .timeout(Duration::from_secs(5))
            .tombstone_ttl(tombstone),
    );
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    let gate = Gate::default();
    let load = {
        let (invoices, acme, gate) = (invoices.clone(), acme.clone(), gate.clone());
        tokio::spawn(async move {
            invoices
                .get_or_load(&acme, "slow", &[] as &[&str], || async {
                    gate.pass().await;
                    Ok::<_, Error>(inv(1, 1))
                })
                .await
        })
    };
    gate.started.notified().await;
    invoices.delete(&acme, "slow").await.unwrap();
    // Outlive the tombstone: the entry is absent again, as when the load began.
    tokio::time::sleep(tombstone + Duration::from_millis(700)).await;
    gate.release.notify_one();
    assert_eq!(load.await.unwrap().unwrap().amount, 1);
    assert_eq!(
        invoices.get(&acme, "slow").await.unwrap(),
        None,
        "a load slower than the tombstone wrote over the delete"
    );
}

/// The joiner path: a caller that arrives after an invalidation returned, while a load that
/// began before it is in flight, never gets that load's value.
pub async fn callers_arriving_after_an_invalidation_never_take_an_older_load<F: CacheFixture>(
    f: &F,
) {
    let cache = cache_on(
        f.store().await,
        CacheOptions::default().timeout(Duration::from_secs(5)),
    );
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    let db = Arc::new(AtomicUsize::new(1));
    let gate = Gate::default();
    let leader = {
        let (invoices, acme, db, gate) = (invoices.clone(), acme.clone(), db.clone(), gate.clone());
        tokio::spawn(async move {
            invoices
                .get_or_load(&acme, "j", &["t"], || async {
                    let seen = db.load(SeqCst) as u64;
                    gate.pass().await;
                    Ok::<_, Error>(inv(1, seen))
                })
                .await
        })
    };
    gate.started.notified().await;
    db.store(2, SeqCst);
    cache.invalidate_tag(&acme, "t").await.unwrap();
    let misses = cache.stats().of("invoice").misses;
    let joiner = {
        let (invoices, acme, db) = (invoices.clone(), acme.clone(), db.clone());
        tokio::spawn(async move {
            invoices
                .get_or_load(&acme, "j", &["t"], || async {
                    Ok::<_, Error>(inv(1, db.load(SeqCst) as u64))
                })
                .await
        })
    };
    // The joiner counts its miss and joins the flight in the same poll: once the miss is
    // counted, it waits on the leader's load.
    let c = cache.clone();
    eventually(WAIT, move || {
        let c = c.clone();
        async move { c.stats().of("invoice").misses > misses }
    })
    .await;
    gate.release.notify_one();
    assert_eq!(leader.await.unwrap().unwrap().amount, 1);
    assert_eq!(
        joiner.await.unwrap().unwrap().amount,
        2,
        "a caller that arrived after the invalidation got the value loaded before it"
    );
    assert_eq!(cache.loads_in_flight(), 0);
}

fn stale_policy() -> TypePolicy {
    TypePolicy::ttl(Duration::from_millis(100)).jitter(0.0)
}

async fn let_expire() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

/// Fail-safe serves the stale value when the loader fails, never an invalidated one.
pub async fn fail_safe_serves_stale_when_the_loader_fails<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let acme = org("acme");
    let safe = cache
        .entry::<Invoice>("safe", stale_policy().fail_safe(Duration::from_secs(30)))
        .unwrap();
    let plain = cache.entry::<Invoice>("plain", stale_policy()).unwrap();
    safe.set(&acme, "1", &inv(1, 1), &["t"]).await.unwrap();
    plain
        .set(&acme, "1", &inv(1, 1), &[] as &[&str])
        .await
        .unwrap();
    let_expire().await;
    assert_eq!(
        safe.get(&acme, "1").await.unwrap(),
        None,
        "a stale value is not fresh"
    );
    let failing = || async { Err::<Invoice, _>(std::io::Error::other("db down")) };
    assert_eq!(
        safe.get_or_load(&acme, "1", &["t"], failing)
            .await
            .unwrap()
            .amount,
        1
    );
    assert_eq!(cache.stats().of("safe").stale_served, 1);
    assert!(matches!(
        plain.get_or_load(&acme, "1", &[] as &[&str], failing).await,
        Err(LoadError::Loader(_))
    ));
    cache.invalidate_tag(&acme, "t").await.unwrap();
    assert!(
        matches!(
            safe.get_or_load(&acme, "1", &["t"], failing).await,
            Err(LoadError::Loader(_))
        ),
        "fail-safe served an invalidated value"
    );
}

/// Stale-while-revalidate: callers that find a load running get the stale value at once; with
/// an owned loader every caller does and the load refreshes it in the background.
pub async fn stale_while_revalidate_serves_stale_and_refreshes<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let acme = org("acme");
    let swr = cache
        .entry::<Invoice>(
            "swr",
            stale_policy().stale_while_revalidate(Duration::from_secs(30)),
        )
        .unwrap();
    swr.set(&acme, "1", &inv(1, 1), &[] as &[&str])
        .await
        .unwrap();
    let_expire().await;
    // Owned: served at once although the loader is blocked.
    let gate = Gate::default();
    let g = gate.clone();
    let v = tokio::time::timeout(
        WAIT,
        swr.get_or_load_owned(&acme, "1", &[] as &[&str], move || async move {
            g.release.notified().await;
            Ok::<_, Error>(inv(1, 2))
        }),
    )
    .await
    .expect("stale-while-revalidate waited for the loader")
    .unwrap();
    assert_eq!(v.amount, 1);
    // A borrowing caller meanwhile also gets the stale value (someone is refreshing).
    let v = swr
        .get_or_load(&acme, "1", &[] as &[&str], || async {
            Ok::<_, Error>(inv(1, 9))
        })
        .await
        .unwrap();
    assert_eq!(v.amount, 1);
    gate.release.notify_one();
    let (s, a) = (swr.clone(), acme.clone());
    eventually(WAIT, move || {
        let (s, a) = (s.clone(), a.clone());
        async move { amount(&s.get(&a, "1").await.unwrap()) == Some(2) }
    })
    .await;
    let stats = cache.stats().of("swr");
    assert_eq!(stats.stale_served, 2);
    assert!(stats.refreshes >= 1);
}

/// A stale value whose tag was invalidated after a refresh began is never served to a caller
/// arriving after the invalidation (the stale-while-revalidate joiner path).
pub async fn a_stale_value_invalidated_meanwhile_is_never_served<F: CacheFixture>(f: &F) {
    let cache = cache_on(
        f.store().await,
        CacheOptions::default().timeout(Duration::from_secs(5)),
    );
    let acme = org("acme");
    let swr = cache
        .entry::<Invoice>(
            "swr",
            stale_policy()
                .stale_while_revalidate(Duration::from_secs(30))
                .fail_safe(Duration::from_secs(30)),
        )
        .unwrap();
    for loader_fails in [false, true] {
        let (key, tag) = (format!("k-{loader_fails}"), format!("t-{loader_fails}"));
        swr.set(&acme, &key, &inv(1, 1), &[&tag]).await.unwrap();
        let_expire().await;
        let db = Arc::new(AtomicUsize::new(2));
        let gate = Gate::default();
        let refresher = {
            let (swr, acme, db, gate) = (swr.clone(), acme.clone(), db.clone(), gate.clone());
            let (key, tag) = (key.clone(), tag.clone());
            tokio::spawn(async move {
                // The same loader error type as the caller below: it shares this flight.
                swr.get_or_load(&acme, &key, &[&tag], || async {
                    let seen = db.load(SeqCst) as u64;
                    gate.pass().await;
                    Ok::<_, std::io::Error>(inv(1, seen))
                })
                .await
            })
        };
        gate.started.notified().await;
        db.store(3, SeqCst);
        cache.invalidate_tag(&acme, &tag).await.unwrap();
        let misses = cache.stats().of("swr").misses;
        let late = {
            let (swr, acme, db) = (swr.clone(), acme.clone(), db.clone());
            let (key, tag) = (key.clone(), tag.clone());
            tokio::spawn(async move {
                swr.get_or_load(&acme, &key, &[&tag], || async {
                    if loader_fails {
                        Err(std::io::Error::other("db down"))
                    } else {
                        Ok(inv(1, db.load(SeqCst) as u64))
                    }
                })
                .await
            })
        };
        // The late caller has counted its miss and joined the refresh (same poll).
        let c = cache.clone();
        eventually(WAIT, move || {
            let c = c.clone();
            async move { c.stats().of("swr").misses > misses }
        })
        .await;
        gate.release.notify_one();
        // The refresh began before the invalidation: a valid answer for its own caller only.
        assert_eq!(refresher.await.unwrap().unwrap().amount, 2);
        match late.await.unwrap() {
            Ok(v) => assert_eq!(
                v.amount, 3,
                "a value invalidated before the call was served"
            ),
            Err(_) => assert!(loader_fails, "the late caller failed"),
        }
    }
}

/// Past the soft timeout a caller with a stale value (fail-safe) gets it; the owned load goes
/// on and stores its result.
pub async fn soft_timeout_serves_stale_and_the_load_completes_in_the_background<F: CacheFixture>(
    f: &F,
) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let acme = org("acme");
    let soft = cache
        .entry::<Invoice>(
            "soft",
            stale_policy()
                .fail_safe(Duration::from_secs(30))
                .soft_timeout(Duration::from_millis(100))
                .hard_timeout(Duration::from_secs(60)),
        )
        .unwrap();
    soft.set(&acme, "1", &inv(1, 1), &[] as &[&str])
        .await
        .unwrap();
    let_expire().await;
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let v = tokio::time::timeout(
        WAIT,
        soft.get_or_load_owned(&acme, "1", &[] as &[&str], move || async move {
            r.notified().await;
            Ok::<_, Error>(inv(1, 2))
        }),
    )
    .await
    .expect("the soft timeout did not release the caller")
    .unwrap();
    assert_eq!(v.amount, 1, "the stale value, not the blocked load's");
    assert_eq!(
        cache.loads_in_flight(),
        1,
        "the load goes on in the background"
    );
    release.notify_one();
    let (s, a) = (soft.clone(), acme.clone());
    eventually(WAIT, move || {
        let (s, a) = (s.clone(), a.clone());
        async move { amount(&s.get(&a, "1").await.unwrap()) == Some(2) }
    })
    .await;
    let c = cache.clone();
    eventually(WAIT, move || {
        let c = c.clone();
        async move { c.loads_in_flight() == 0 }
    })
    .await;
    assert!(cache.stats().of("soft").load_timeouts >= 1);
}

/// A loader that never returns holds nobody past the hard timeout: not its caller, not the
/// callers waiting for it; the key is free afterwards.
pub async fn hung_loaders_release_every_caller_at_the_hard_timeout<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let acme = org("acme");
    let hung = cache
        .entry::<Invoice>("hung", minute().hard_timeout(Duration::from_millis(300)))
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (hung, acme) = (hung.clone(), acme.clone());
        tasks.spawn(async move {
            if i % 2 == 0 {
                hung.get_or_load(&acme, "k", &[] as &[&str], || {
                    std::future::pending::<Result<Invoice, Error>>()
                })
                .await
            } else {
                hung.get_or_load_owned(&acme, "k", &[] as &[&str], || {
                    std::future::pending::<Result<Invoice, Error>>()
                })
                .await
            }
        });
    }
    let all = tokio::time::timeout(WAIT, async {
        let mut n = 0;
        while let Some(r) = tasks.join_next().await {
            assert!(matches!(r.unwrap(), Err(LoadError::TimedOut { .. })));
            n += 1;
        }
        n
    })
    .await
    .expect("a caller waited past the hard timeout");
    assert_eq!(all, 8);
    let c = cache.clone();
    eventually(WAIT, move || {
        let c = c.clone();
        async move { c.loads_in_flight() == 0 }
    })
    .await;
    // Every caller is bounded by its own deadline, even while a load with a longer one (a
    // per-call option) holds the key.
    let patient = hung
        .with_options(CallOptions::new().hard_timeout(Duration::from_secs(3600)))
        .unwrap();
    let leader = {
        let (patient, acme) = (patient.clone(), acme.clone());
        tokio::spawn(async move {
            patient
                .get_or_load(&acme, "k", &[] as &[&str], || {
                    std::future::pending::<Result<Invoice, Error>>()
                })
                .await
        })
    };
    let c = cache.clone();
    eventually(WAIT, move || {
        let c = c.clone();
        async move { c.loads_in_flight() == 1 }
    })
    .await;
    let waited = tokio::time::timeout(
        WAIT,
        hung.get_or_load(&acme, "k", &[] as &[&str], || {
            std::future::pending::<Result<Invoice, Error>>()
        }),
    )
    .await
    .expect("a waiter outlived its own hard timeout");
    assert!(matches!(waited, Err(LoadError::TimedOut { .. })));
    leader.abort();
    let _ = leader.await;
    let c = cache.clone();
    eventually(WAIT, move || {
        let c = c.clone();
        async move { c.loads_in_flight() == 0 }
    })
    .await;
    // The key is not wedged.
    let v = hung
        .get_or_load(&acme, "k", &[] as &[&str], || async {
            Ok::<_, Error>(inv(1, 5))
        })
        .await
        .unwrap();
    assert_eq!(v.amount, 5);
}

/// A leader whose loader panics, or whose caller goes away, hands the load over to a waiting
/// caller (which runs its own loader); no flight is left behind.
pub async fn a_panicking_or_cancelled_loader_hands_over<F: CacheFixture>(f: &F) {
    let cache = cache_on(
        f.store().await,
        CacheOptions::default().timeout(Duration::from_secs(5)),
    );
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    for cancel in [false, true] {
        let key = format!("h-{cancel}");
        let gate = Gate::default();
        let leader = {
            let (invoices, acme, gate, key) =
                (invoices.clone(), acme.clone(), gate.clone(), key.clone());
            tokio::spawn(async move {
                invoices
                    .get_or_load(&acme, &key, &[] as &[&str], || async {
                        gate.pass().await;
                        if !cancel {
                            panic!("loader bug");
                        }
                        Ok::<_, Error>(inv(1, 1))
                    })
                    .await
            })
        };
        gate.started.notified().await;
        let misses = cache.stats().of("invoice").misses;
        let ran = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (invoices, acme, ran, key) =
                (invoices.clone(), acme.clone(), ran.clone(), key.clone());
            tokio::spawn(async move {
                invoices
                    .get_or_load(&acme, &key, &[] as &[&str], || async {
                        ran.store(true, SeqCst);
                        Ok::<_, Error>(inv(1, 2))
                    })
                    .await
            })
        };
        let c = cache.clone();
        eventually(WAIT, move || {
            let c = c.clone();
            async move { c.stats().of("invoice").misses > misses }
        })
        .await;
        if cancel {
            leader.abort();
            assert!(leader.await.unwrap_err().is_cancelled());
        } else {
            gate.release.notify_one();
            assert!(matches!(leader.await.unwrap(), Err(LoadError::Panicked)));
        }
        let v = tokio::time::timeout(WAIT, waiter)
            .await
            .expect("the waiter was not handed the load")
            .unwrap()
            .unwrap();
        assert_eq!(v.amount, 2);
        assert!(ran.load(SeqCst), "the waiter did not run its own loader");
        assert_eq!(cache.loads_in_flight(), 0, "a flight was left behind");
    }
}

/// Refresh-ahead: a hit on a value past the refresh point starts one background load; the
/// hit is served without waiting for it.
pub async fn refresh_ahead_reloads_hot_entries<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let acme = org("acme");
    let hot = cache
        .entry::<Invoice>(
            "hot",
            TypePolicy::ttl(Duration::from_secs(3))
                .jitter(0.0)
                .refresh_ahead(0.1),
        )
        .unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let load = |loads: Arc<AtomicUsize>| {
        move || async move {
            let n = loads.fetch_add(1, SeqCst) as u64 + 1;
            Ok::<_, Error>(inv(1, n))
        }
    };
    let v = hot
        .get_or_load_owned(&acme, "1", &[] as &[&str], load(loads.clone()))
        .await
        .unwrap();
    assert_eq!(v.amount, 1);
    let (h, a, l) = (hot.clone(), acme.clone(), loads.clone());
    eventually(WAIT, move || {
        let (h, a, l) = (h.clone(), a.clone(), l.clone());
        async move {
            let v = h
                .get_or_load_owned(&a, "1", &[] as &[&str], load(l.clone()))
                .await
                .unwrap();
            assert!(v.amount <= 2);
            l.load(SeqCst) >= 2
        }
    })
    .await;
    let (h, a) = (hot.clone(), acme.clone());
    eventually(WAIT, move || {
        let (h, a) = (h.clone(), a.clone());
        async move { amount(&h.get(&a, "1").await.unwrap()) == Some(2) }
    })
    .await;
    assert!(cache.stats().of("hot").refreshes >= 1);
}

/// `with_options` applies per-call options to one view and validates them.
pub async fn per_call_options_apply_to_one_view<F: CacheFixture>(f: &F) {
    let cache = cache_on(f.store().await, CacheOptions::default());
    let acme = org("acme");
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let short = invoices
        .with_options(CallOptions::new().ttl(Duration::from_millis(100)))
        .unwrap();
    short
        .set(&acme, "short", &inv(1, 1), &[] as &[&str])
        .await
        .unwrap();
    invoices
        .set(&acme, "long", &inv(1, 2), &[] as &[&str])
        .await
        .unwrap();
    let_expire().await;
    assert_eq!(invoices.get(&acme, "short").await.unwrap(), None);
    assert!(invoices.get(&acme, "long").await.unwrap().is_some());
    assert_eq!(
        invoices.policy().ttl,
        Duration::from_secs(60),
        "the base view changed"
    );
    assert!(
        invoices
            .with_options(CallOptions::new().ttl(Duration::ZERO))
            .is_err()
    );
    let no_stale = cache
        .entry::<Invoice>("safe", stale_policy().fail_safe(Duration::from_secs(30)))
        .unwrap();
    no_stale
        .set(&acme, "1", &inv(1, 1), &[] as &[&str])
        .await
        .unwrap();
    let_expire().await;
    let strict = no_stale
        .with_options(CallOptions::new().no_stale())
        .unwrap();
    let failing = || async { Err::<Invoice, _>(std::io::Error::other("down")) };
    assert!(
        strict
            .get_or_load(&acme, "1", &[] as &[&str], failing)
            .await
            .is_err()
    );
    assert!(
        no_stale
            .get_or_load(&acme, "1", &[] as &[&str], failing)
            .await
            .is_ok()
    );
}
