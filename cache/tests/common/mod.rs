//! The store conformance suite (run against every store) and a private Redis server for fault
//! tests that must stop or pause a server without disturbing other tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use windlass_cache::{Cache, CacheOptions, Error, L1Options, Store, TypePolicy};
use windlass_core::OrgId;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    pub id: u64,
    pub amount: u64,
}

pub fn inv(id: u64, amount: u64) -> Invoice {
    Invoice { id, amount }
}

pub fn org(name: &str) -> OrgId {
    OrgId::new(name).unwrap()
}

pub fn minute() -> TypePolicy {
    TypePolicy::ttl(Duration::from_secs(60))
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

pub async fn set_get_delete(store: Arc<dyn Store>) {
    let cache = Cache::with_shared_store(store, CacheOptions::default());
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    assert_eq!(invoices.get(&acme, "1").await.unwrap(), None);
    invoices
        .set(&acme, "1", &inv(1, 10), &["invoice:1"])
        .await
        .unwrap();
    assert_eq!(invoices.get(&acme, "1").await.unwrap(), Some(inv(1, 10)));
    invoices.set(&acme, "1", &inv(1, 11), &[]).await.unwrap();
    assert_eq!(invoices.get(&acme, "1").await.unwrap(), Some(inv(1, 11)));
    invoices.delete(&acme, "1").await.unwrap();
    assert_eq!(invoices.get(&acme, "1").await.unwrap(), None);
    let stats = cache.stats().of("invoice");
    assert_eq!((stats.hits(), stats.misses), (2, 2));
    assert!((stats.hit_ratio() - 0.5).abs() < 1e-9);
}

pub async fn tag_invalidation(store: Arc<dyn Store>) {
    let cache = Cache::with_shared_store(store, CacheOptions::default());
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    for i in 0..20 {
        let tags = ["customer:7".to_owned(), format!("invoice:{i}")];
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        invoices
            .set(&acme, &i.to_string(), &inv(i, i), &tags)
            .await
            .unwrap();
    }
    invoices
        .set(&acme, "other", &inv(99, 0), &["customer:8"])
        .await
        .unwrap();
    // One tag of one entry.
    cache.invalidate_tag(&acme, "invoice:3").await.unwrap();
    assert_eq!(invoices.get(&acme, "3").await.unwrap(), None);
    assert_eq!(invoices.get(&acme, "4").await.unwrap(), Some(inv(4, 4)));
    // One tag shared by 19 entries: one bump.
    cache.invalidate_tag(&acme, "customer:7").await.unwrap();
    for i in 0..20 {
        assert_eq!(
            invoices.get(&acme, &i.to_string()).await.unwrap(),
            None,
            "entry {i}"
        );
    }
    assert_eq!(
        invoices.get(&acme, "other").await.unwrap(),
        Some(inv(99, 0))
    );
    // Several tags at once; a fresh write after an invalidation is served again.
    invoices
        .set(&acme, "5", &inv(5, 50), &["customer:7"])
        .await
        .unwrap();
    assert_eq!(invoices.get(&acme, "5").await.unwrap(), Some(inv(5, 50)));
    cache
        .invalidate_tags(&acme, &["customer:8", "customer:7"])
        .await
        .unwrap();
    assert_eq!(invoices.get(&acme, "5").await.unwrap(), None);
    assert_eq!(invoices.get(&acme, "other").await.unwrap(), None);
    assert_eq!(cache.stats().invalidations, 4);
}

pub async fn tenants_are_isolated(store: Arc<dyn Store>) {
    let cache = Cache::with_shared_store(store, CacheOptions::default());
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let (a, b) = (org("tenant-a"), org("tenant-b"));
    invoices
        .set(&a, "1", &inv(1, 100), &["invoice:1"])
        .await
        .unwrap();
    assert_eq!(
        invoices.get(&b, "1").await.unwrap(),
        None,
        "tenant b sees tenant a's entry"
    );
    invoices
        .set(&b, "1", &inv(1, 200), &["invoice:1"])
        .await
        .unwrap();
    assert_eq!(invoices.get(&a, "1").await.unwrap(), Some(inv(1, 100)));
    // Same tag name, other tenant: untouched.
    cache.invalidate_tag(&a, "invoice:1").await.unwrap();
    assert_eq!(invoices.get(&a, "1").await.unwrap(), None);
    assert_eq!(invoices.get(&b, "1").await.unwrap(), Some(inv(1, 200)));
    invoices.delete(&b, "1").await.unwrap();
    let loaded = invoices
        .get_or_load(&a, "1", &[], || async { Ok::<_, Error>(inv(1, 101)) })
        .await
        .unwrap();
    assert_eq!(loaded, inv(1, 101));
    assert_eq!(invoices.get(&b, "1").await.unwrap(), None);
}

pub async fn one_loader_for_concurrent_callers(store: Arc<dyn Store>) {
    let cache = Cache::with_shared_store(
        store,
        CacheOptions::default().timeout(Duration::from_secs(5)),
    );
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let invoices = invoices.clone();
        let acme = acme.clone();
        let calls = calls.clone();
        tasks.spawn(async move {
            invoices
                .get_or_load(&acme, "cold", &["invoice:cold"], move || {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, Error>(inv(7, 7))
                    }
                })
                .await
                .unwrap()
        });
    }
    while let Some(v) = tasks.join_next().await {
        assert_eq!(v.unwrap(), inv(7, 7));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the loader ran more than once"
    );
    assert_eq!(cache.stats().of("invoice").loads, 1);
}

/// A loader that started before an invalidation must not write its (older) value back.
pub async fn loader_racing_an_invalidation_never_writes_back(store: Arc<dyn Store>) {
    let cache = Cache::with_shared_store(
        store,
        CacheOptions::default().timeout(Duration::from_secs(5)),
    );
    let acme = org("acme");
    for reloads in [0u32, 2] {
        let invoices = cache
            .entry::<Invoice>("invoice", minute().max_reloads(reloads))
            .unwrap();
        let key = format!("race-{reloads}");
        // The "database": version 1 until the update below.
        let db = Arc::new(AtomicUsize::new(1));
        let started = Arc::new(Notify::new());
        let proceed = Arc::new(Notify::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let load = {
            let invoices = invoices.clone();
            let (acme, key) = (acme.clone(), key.clone());
            let (db, started, proceed, calls) =
                (db.clone(), started.clone(), proceed.clone(), calls.clone());
            tokio::spawn(async move {
                invoices
                    .get_or_load(&acme, &key, &["invoice:race"], move || {
                        let (db, started, proceed, calls) =
                            (db.clone(), started.clone(), proceed.clone(), calls.clone());
                        async move {
                            let seen = db.load(Ordering::SeqCst) as u64;
                            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                                // First load: read the old row, then stall across the update.
                                started.notify_one();
                                proceed.notified().await;
                            }
                            Ok::<_, Error>(inv(1, seen))
                        }
                    })
                    .await
            })
        };
        started.notified().await;
        // The business write and its invalidation happen while the loader holds version 1.
        db.store(2, Ordering::SeqCst);
        cache.invalidate_tag(&acme, "invoice:race").await.unwrap();
        proceed.notify_one();
        let returned = load.await.unwrap().unwrap();
        let stored = invoices.get(&acme, &key).await.unwrap();
        assert_ne!(
            stored,
            Some(inv(1, 1)),
            "the pre-invalidation value was written back"
        );
        if reloads == 0 {
            assert_eq!(stored, None);
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        } else {
            assert_eq!(
                returned,
                inv(1, 2),
                "the load was not run again after the race"
            );
            assert_eq!(stored, Some(inv(1, 2)));
            assert_eq!(calls.load(Ordering::SeqCst), 2);
        }
        assert!(cache.stats().of("invoice").writes_discarded >= 1);
    }
}

/// A delete during a load leaves a tombstone the load cannot overwrite.
pub async fn loader_racing_a_delete_never_writes_back(store: Arc<dyn Store>) {
    let cache = Cache::with_shared_store(
        store,
        CacheOptions::default().timeout(Duration::from_secs(5)),
    );
    let invoices = cache
        .entry::<Invoice>("invoice", minute().max_reloads(0))
        .unwrap();
    let acme = org("acme");
    let started = Arc::new(Notify::new());
    let proceed = Arc::new(Notify::new());
    let load = {
        let invoices = invoices.clone();
        let acme = acme.clone();
        let (started, proceed) = (started.clone(), proceed.clone());
        tokio::spawn(async move {
            invoices
                .get_or_load(&acme, "d", &[], move || {
                    let (started, proceed) = (started.clone(), proceed.clone());
                    async move {
                        started.notify_one();
                        proceed.notified().await;
                        Ok::<_, Error>(inv(1, 1))
                    }
                })
                .await
        })
    };
    started.notified().await;
    invoices.delete(&acme, "d").await.unwrap();
    proceed.notify_one();
    assert_eq!(load.await.unwrap().unwrap(), inv(1, 1));
    assert_eq!(invoices.get(&acme, "d").await.unwrap(), None);
}

pub async fn bad_input_is_refused(store: Arc<dyn Store>) {
    let cache = Cache::with_shared_store(store, CacheOptions::default());
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
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let small = cache
        .entry::<String>("blob", minute().max_value_bytes(1024))
        .unwrap();
    let acme = org("acme");
    assert!(matches!(
        invoices.set(&acme, "1", &inv(1, 1), &["bad tag"]).await,
        Err(Error::Name(_))
    ));
    assert!(matches!(
        invoices.set(&acme, "bad key", &inv(1, 1), &[]).await,
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
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(matches!(
        invoices.set(&acme, "1", &inv(1, 1), &many).await,
        Err(Error::TooManyTags { .. })
    ));
    let err = small
        .set(&acme, "big", &"x".repeat(2000), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 1024, .. }), "{err}");
    assert_eq!(small.get(&acme, "big").await.unwrap(), None);
    // get_or_load returns an oversized value but does not store it.
    let v = small
        .get_or_load(&acme, "big", &[], || async {
            Ok::<_, Error>("y".repeat(2000))
        })
        .await
        .unwrap();
    assert_eq!(v.len(), 2000);
    assert_eq!(small.get(&acme, "big").await.unwrap(), None);
}

/// After a deploy that changed the type, stored values no longer decode: misses, counted,
/// and the loader overwrites them.
pub async fn undecodable_values_are_misses(store: Arc<dyn Store>) {
    let cache = Cache::with_shared_store(store, CacheOptions::default());
    let old = cache.entry::<String>("invoice", minute()).unwrap();
    let new = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    old.set(&acme, "1", &"v1 shape".to_owned(), &[])
        .await
        .unwrap();
    assert_eq!(new.get(&acme, "1").await.unwrap(), None);
    assert_eq!(cache.stats().of("invoice").decode_failures, 1);
    let v = new
        .get_or_load(&acme, "1", &[], || async { Ok::<_, Error>(inv(1, 2)) })
        .await
        .unwrap();
    assert_eq!(v, inv(1, 2));
    assert_eq!(new.get(&acme, "1").await.unwrap(), Some(inv(1, 2)));
}

pub async fn fail_safe_serves_stale_when_the_loader_fails(store: Arc<dyn Store>) {
    let cache = Cache::with_shared_store(store, CacheOptions::default());
    let acme = org("acme");
    let short = Duration::from_millis(100);
    let safe = cache
        .entry::<Invoice>(
            "safe",
            TypePolicy::ttl(short)
                .jitter(0.0)
                .fail_safe(Duration::from_secs(30)),
        )
        .unwrap();
    let plain = cache
        .entry::<Invoice>("plain", TypePolicy::ttl(short).jitter(0.0))
        .unwrap();
    safe.set(&acme, "1", &inv(1, 1), &["t"]).await.unwrap();
    plain.set(&acme, "1", &inv(1, 1), &[]).await.unwrap();
    tokio::time::sleep(short + Duration::from_millis(50)).await;
    assert_eq!(
        safe.get(&acme, "1").await.unwrap(),
        None,
        "a stale value is not fresh"
    );
    let failing = || async { Err::<Invoice, _>(std::io::Error::other("db down")) };
    assert_eq!(
        safe.get_or_load(&acme, "1", &["t"], failing).await.unwrap(),
        inv(1, 1)
    );
    assert_eq!(cache.stats().of("safe").stale_served, 1);
    assert!(matches!(
        plain.get_or_load(&acme, "1", &[], failing).await,
        Err(Error::Load(_))
    ));
    // Invalidated values are gone, not stale.
    cache.invalidate_tag(&acme, "t").await.unwrap();
    assert!(matches!(
        safe.get_or_load(&acme, "1", &["t"], failing).await,
        Err(Error::Load(_))
    ));
}

pub async fn stale_while_revalidate_refreshes_in_the_background(store: Arc<dyn Store>) {
    let cache = Cache::with_shared_store(store, CacheOptions::default());
    let acme = org("acme");
    let short = Duration::from_millis(100);
    let swr = cache
        .entry::<Invoice>(
            "swr",
            TypePolicy::ttl(short)
                .jitter(0.0)
                .stale_while_revalidate(Duration::from_secs(30)),
        )
        .unwrap();
    swr.set(&acme, "1", &inv(1, 1), &[]).await.unwrap();
    tokio::time::sleep(short + Duration::from_millis(50)).await;
    let gate = Arc::new(Notify::new());
    let slow = {
        let gate = gate.clone();
        move || {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Ok::<_, Error>(inv(1, 2))
            }
        }
    };
    // Served at once although the loader is blocked.
    let v = tokio::time::timeout(
        Duration::from_secs(2),
        swr.get_or_load(&acme, "1", &[], slow.clone()),
    )
    .await
    .unwrap();
    assert_eq!(v.unwrap(), inv(1, 1));
    gate.notify_one();
    let swr2 = swr.clone();
    let acme2 = acme.clone();
    eventually(Duration::from_secs(5), move || {
        let (swr, acme) = (swr2.clone(), acme2.clone());
        async move { swr.get(&acme, "1").await.unwrap() == Some(inv(1, 2)) }
    })
    .await;
    assert_eq!(cache.stats().of("swr").stale_served, 1);
}

/// Two instances with an L1 on one store: an invalidation or a write on one is seen by the
/// other after a bounded delay. Returns the measured delays.
pub async fn l1_instances_stay_in_sync(
    store_a: Arc<dyn Store>,
    store_b: Arc<dyn Store>,
) -> Vec<Duration> {
    let options = CacheOptions::default().l1(L1Options::capacity(1000));
    let a = Cache::with_shared_store(store_a, options.clone());
    let b = Cache::with_shared_store(store_b, options);
    for cache in [&a, &b] {
        let c = cache.clone();
        eventually(Duration::from_secs(5), move || {
            let c = c.clone();
            async move { c.l1_active() }
        })
        .await;
    }
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
        eventually(Duration::from_secs(2), move || {
            let (eb, b, acme, key) = (eb2.clone(), b2.clone(), acme2.clone(), key2.clone());
            async move {
                assert_eq!(eb.get(&acme, &key).await.unwrap(), Some(inv(round, 1)));
                b.stats().of("invoice").hits_l1 > before
            }
        })
        .await;
        // Invalidate on A: B stops serving the L1 value.
        a.invalidate_tag(&acme, "shared").await.unwrap();
        let (eb2, acme2, key2) = (eb.clone(), acme.clone(), key.clone());
        delays.push(
            eventually(Duration::from_secs(2), move || {
                let (eb, acme, key) = (eb2.clone(), acme2.clone(), key2.clone());
                async move { eb.get(&acme, &key).await.unwrap().is_none() }
            })
            .await,
        );
        // A new value written on A replaces B's L1 copy.
        ea.set(&acme, &key, &inv(round, 2), &["shared"])
            .await
            .unwrap();
        assert_eq!(eb.get(&acme, &key).await.unwrap(), Some(inv(round, 2)));
        ea.set(&acme, &key, &inv(round, 3), &["shared"])
            .await
            .unwrap();
        let (eb2, acme2, key2) = (eb.clone(), acme.clone(), key.clone());
        delays.push(
            eventually(Duration::from_secs(2), move || {
                let (eb, acme, key) = (eb2.clone(), acme2.clone(), key2.clone());
                async move { eb.get(&acme, &key).await.unwrap() == Some(inv(round, 3)) }
            })
            .await,
        );
    }
    assert!(b.stats().notices >= 10);
    delays
}

/// Runs every store-agnostic case.
pub async fn conformance(make: impl Fn() -> Arc<dyn Store>) {
    set_get_delete(make()).await;
    tag_invalidation(make()).await;
    tenants_are_isolated(make()).await;
    one_loader_for_concurrent_callers(make()).await;
    loader_racing_an_invalidation_never_writes_back(make()).await;
    loader_racing_a_delete_never_writes_back(make()).await;
    bad_input_is_refused(make()).await;
    undecodable_values_are_misses(make()).await;
    fail_safe_serves_stale_when_the_loader_fails(make()).await;
    stale_while_revalidate_refreshes_in_the_background(make()).await;
}

/// A redis-server of the test's own, on a free port, so a test can stop, restart or pause it
/// without touching the shared server. Killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    pub url: String,
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "windlass-cache-redis-{port}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut this = Self {
            port,
            url: format!("redis://127.0.0.1:{port}"),
            child: None,
            dir,
        };
        this.restart().await;
        this
    }

    /// Starts (again) on the same port.
    pub async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (apt-get install redis-server): {e}")
            });
        self.child = Some(child);
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
