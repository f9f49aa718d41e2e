//! The central property, checked against a recorded history: **whatever a call returns was
//! valid at a moment after the call started, with respect to every invalidation that returned
//! before it started** (for an L1 with a staleness bound: every invalidation made by the same
//! instance, and every other one that returned more than the bound before the call started).
//!
//! Many tasks drive two cache instances (separate connections, as two processes) on one real
//! Redis with random `get` / `get_or_load` / `get_or_load_owned` / `set` / `delete` / updates
//! (the "database" row changes, then its tags are invalidated), over data types with and
//! without stale-while-revalidate, fail-safe, soft timeouts and refresh-ahead, with loaders that
//! stall and fail at random. Each read records when it started and which version it got; each
//! invalidation records, once it returned, which versions it made current. The checker then
//! finds every read that returned a version older than one an invalidation had made current
//! before the read started. It must find none; `the_checker_finds_a_stale_read` shows it can.
#![cfg(feature = "redis")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use windlass_cache::{
    Cache, CacheEntry, CacheOptions, L1Options, RedisCacheStore, RedisCacheStoreConfig, TypePolicy,
};
use windlass_core::OrgId;
use windlass_testkit::conformance::cache::org;

const GROUPS: usize = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    key: usize,
    version: u64,
}

/// An invalidation that returned: at `done`, on `instance`, it made these versions current.
#[derive(Debug, Clone)]
struct Inv {
    versions: Vec<(usize, u64)>,
    done: Instant,
    instance: usize,
}

/// A read that returned a value.
#[derive(Debug, Clone)]
struct Read {
    key: usize,
    version: u64,
    started: Instant,
    instance: usize,
    op: &'static str,
}

#[derive(Default)]
struct History {
    invalidations: Mutex<Vec<Inv>>,
    reads: Mutex<Vec<Read>>,
}

/// Every read that returned a version older than one an invalidation made current before the
/// read started (ignoring, for instances with an L1, other instances' invalidations younger
/// than `lag` at the read's start).
fn violations(invs: &[Inv], reads: &[Read], lag: &[Duration]) -> Vec<String> {
    let mut out = Vec::new();
    for r in reads {
        let required = invs
            .iter()
            .filter(|i| {
                i.done < r.started
                    && (i.instance == r.instance
                        || r.started.saturating_duration_since(i.done) > lag[r.instance])
            })
            .flat_map(|i| i.versions.iter())
            .filter(|(k, _)| *k == r.key)
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0);
        if r.version < required {
            out.push(format!(
                "{} on instance {} of key {} returned version {} although version {} was \
                 made current by an invalidation that returned before the call started",
                r.op, r.instance, r.key, r.version, required
            ));
        }
    }
    out
}

/// The "database": one versioned row per key; writers of a key take its lock.
struct Db {
    versions: Vec<AtomicU64>,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl Db {
    fn new(keys: usize) -> Self {
        Self {
            versions: (0..keys).map(|_| AtomicU64::new(1)).collect(),
            locks: (0..keys).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }
}

fn tags(key: usize) -> [String; 2] {
    [format!("k:{key}"), format!("g:{}", key % GROUPS)]
}

struct World {
    caches: Vec<Cache>,
    types: Vec<Vec<CacheEntry<Row>>>,
    db: Db,
    history: History,
    org: OrgId,
}

fn policies() -> Vec<(&'static str, TypePolicy)> {
    let short = || TypePolicy::ttl(Duration::from_millis(40)).jitter(0.5);
    vec![
        ("plain", TypePolicy::ttl(Duration::from_secs(60))),
        (
            "swr",
            short().stale_while_revalidate(Duration::from_secs(60)),
        ),
        (
            "safe",
            short()
                .fail_safe(Duration::from_secs(60))
                .soft_timeout(Duration::from_millis(2)),
        ),
        (
            "ahead",
            TypePolicy::ttl(Duration::from_millis(60)).refresh_ahead(0.3),
        ),
    ]
}

async fn loader(db: &Db, key: usize, fail: bool, stall_ms: u64) -> Result<Row, std::io::Error> {
    tokio::time::sleep(Duration::from_micros(stall_ms * 300)).await;
    let version = db.versions[key].load(SeqCst);
    tokio::time::sleep(Duration::from_micros(stall_ms * 700)).await;
    if fail {
        return Err(std::io::Error::other("database hiccup"));
    }
    Ok(Row { key, version })
}

async fn one_op(w: &Arc<World>, rng: &mut rand::rngs::StdRng) {
    let instance = rng.random_range(0..w.caches.len());
    let ty = rng.random_range(0..w.types[instance].len());
    let entry = &w.types[instance][ty];
    let keys = w.db.versions.len();
    let key = rng.random_range(0..keys);
    let k = key.to_string();
    let stall = rng.random_range(0..4u64);
    let fail = rng.random_bool(0.1);
    let record = |version: u64, started: Instant, op: &'static str| {
        w.history.reads.lock().unwrap().push(Read {
            key,
            version,
            started,
            instance,
            op,
        });
    };
    if rng.random_bool(0.3) {
        tokio::time::sleep(Duration::from_micros(rng.random_range(0..2000))).await;
    }
    match rng.random_range(0..100) {
        0..=29 => {
            let started = Instant::now();
            if let Some(row) = entry.get(&w.org, &k).await.unwrap() {
                assert_eq!(row.key, key);
                record(row.version, started, "get");
            }
        }
        30..=59 => {
            let started = Instant::now();
            let db = &w.db;
            let res = entry
                .get_or_load(&w.org, &k, &tags(key), || loader(db, key, fail, stall))
                .await;
            if let Ok(row) = res {
                record(row.version, started, "get_or_load");
            }
        }
        60..=81 => {
            let started = Instant::now();
            let world = w.clone();
            let res = entry
                .get_or_load_owned(&w.org, &k, &tags(key), move || async move {
                    loader(&world.db, key, fail, stall).await
                })
                .await;
            if let Ok(row) = res {
                record(row.version, started, "get_or_load_owned");
            }
        }
        82..=89 => {
            // The row changes, then its tag is invalidated.
            let version = {
                let _g = w.db.locks[key].lock().await;
                w.db.versions[key].fetch_add(1, SeqCst) + 1
            };
            tokio::time::sleep(Duration::from_micros(stall * 200)).await;
            w.caches[instance]
                .invalidate_tag(&w.org, &format!("k:{key}"))
                .await
                .unwrap();
            w.history.invalidations.lock().unwrap().push(Inv {
                versions: vec![(key, version)],
                done: Instant::now(),
                instance,
            });
        }
        90..=92 => {
            // A group of rows changes; one tag invalidates them all.
            let group = key % GROUPS;
            let members: Vec<usize> = (0..keys).filter(|k| k % GROUPS == group).collect();
            let mut versions = Vec::new();
            for m in &members {
                let _g = w.db.locks[*m].lock().await;
                versions.push((*m, w.db.versions[*m].fetch_add(1, SeqCst) + 1));
            }
            w.caches[instance]
                .invalidate_tag(&w.org, &format!("g:{group}"))
                .await
                .unwrap();
            w.history.invalidations.lock().unwrap().push(Inv {
                versions,
                done: Instant::now(),
                instance,
            });
        }
        93..=97 => {
            // Write-through of the current row (writers of a key are serialised).
            let _g = w.db.locks[key].lock().await;
            let version = w.db.versions[key].load(SeqCst);
            entry
                .set(&w.org, &k, &Row { key, version }, &tags(key))
                .await
                .unwrap();
        }
        _ => {
            let _g = w.db.locks[key].lock().await;
            entry.delete(&w.org, &k).await.unwrap();
        }
    }
}

async fn run(
    caches: Vec<Cache>,
    lag: Vec<Duration>,
    keys: usize,
    ops: usize,
    seed: u64,
) -> (usize, usize) {
    let tasks = 24;
    let types = caches
        .iter()
        .map(|c| {
            policies()
                .into_iter()
                .map(|(name, p)| c.entry::<Row>(name, p).unwrap())
                .collect()
        })
        .collect();
    let world = Arc::new(World {
        caches,
        types,
        db: Db::new(keys),
        history: History::default(),
        org: org(&format!("o{seed}")),
    });
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let w = world.clone();
        set.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(t as u64));
            for _ in 0..ops {
                one_op(&w, &mut rng).await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let invs = world.history.invalidations.lock().unwrap().clone();
    let reads = world.history.reads.lock().unwrap().clone();
    let bad = violations(&invs, &reads, &lag);
    let mut by_op: HashMap<&str, usize> = HashMap::new();
    for r in &reads {
        *by_op.entry(r.op).or_default() += 1;
    }
    let stats: Vec<_> = world.caches.iter().map(|c| c.stats()).collect();
    println!(
        "seed {seed}, {keys} keys: {} reads checked ({by_op:?}), {} invalidations, {} stale reads",
        reads.len(),
        invs.len(),
        bad.len()
    );
    for (i, s) in stats.iter().enumerate() {
        for (ty, t) in &s.types {
            println!(
                "  instance {i} {ty}: l1 {} l2 {} miss {} stale {} loads {} discarded {} refreshes {}",
                t.hits_l1,
                t.hits_l2,
                t.misses,
                t.stale_served,
                t.loads,
                t.writes_discarded,
                t.refreshes
            );
        }
    }
    assert!(
        bad.is_empty(),
        "{} stale reads (seed {seed}), first ones:\n{}",
        bad.len(),
        bad.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    for c in &world.caches {
        assert_eq!(c.loads_in_flight(), 0, "a flight was left behind");
    }
    (reads.len(), invs.len())
}

fn seed() -> u64 {
    std::env::var("WINDLASS_INTERLEAVING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

async fn redis_caches(options: CacheOptions) -> (windlass_testkit::redis::TestRedis, Vec<Cache>) {
    let t = windlass_testkit::redis::fresh_prefix().await;
    let mut caches = Vec::new();
    for _ in 0..2 {
        let store = RedisCacheStore::with_config(
            t.client.clone(),
            RedisCacheStoreConfig::default().prefix(&t.prefix),
        )
        .await
        .unwrap();
        caches.push(Cache::with_options(store, options.clone()).unwrap());
    }
    (t, caches)
}

/// Two instances without an L1 on real Redis: the property holds strictly on every path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_stale_under_random_interleavings() {
    let options = CacheOptions::default().timeout(Duration::from_secs(5));
    let (t, caches) = redis_caches(options).await;
    let seed = seed();
    // Few keys: many callers share loads and race invalidations. More keys: values live long
    // enough to go stale, so stale-while-revalidate, fail-safe and soft timeouts serve them.
    for (keys, round) in [(6, 0), (30, 1)] {
        let (reads, invs) = run(
            caches.clone(),
            vec![Duration::ZERO; 2],
            keys,
            300,
            seed + round,
        )
        .await;
        assert!(
            reads > 3000 && invs > 300,
            "too little was exercised: {reads} reads, {invs} invalidations"
        );
    }
    t.cleanup().await;
}

/// The same with an L1 on both instances: reads are checked against the other instance's
/// invalidations older than the L1's staleness bound, and the instance's own, strictly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_stale_beyond_the_l1_bound_under_random_interleavings() {
    let bound = Duration::from_secs(1);
    let options = CacheOptions::default()
        .timeout(Duration::from_secs(5))
        .l1(L1Options::capacity(1000).max_staleness(bound));
    let (t, caches) = redis_caches(options).await;
    for c in &caches {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.l1_active() {
            assert!(Instant::now() < deadline, "L1 never active");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (reads, _) = run(caches, vec![bound; 2], 12, 300, seed()).await;
    assert!(reads > 3000);
    t.cleanup().await;
}

/// The checker is not vacuous: a synthetic history with a stale read is caught, a fresh one is
/// not, and the L1 allowance applies only to other instances' recent invalidations.
#[test]
fn the_checker_finds_a_stale_read() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let invs = vec![Inv {
        versions: vec![(1, 5)],
        done: at(10),
        instance: 0,
    }];
    let read = |version, started, instance| Read {
        key: 1,
        version,
        started: at(started),
        instance,
        op: "get",
    };
    let none = [Duration::ZERO; 2];
    assert_eq!(violations(&invs, &[read(4, 11, 0)], &none).len(), 1);
    assert_eq!(
        violations(&invs, &[read(4, 10, 0)], &none).len(),
        0,
        "started at the same time"
    );
    assert_eq!(violations(&invs, &[read(5, 11, 1)], &none).len(), 0);
    assert_eq!(violations(&invs, &[read(4, 9, 1)], &none).len(), 0);
    let lag = [Duration::from_millis(100); 2];
    assert_eq!(
        violations(&invs, &[read(4, 50, 1)], &lag).len(),
        0,
        "within the L1 bound"
    );
    assert_eq!(
        violations(&invs, &[read(4, 200, 1)], &lag).len(),
        1,
        "past the L1 bound"
    );
    assert_eq!(
        violations(&invs, &[read(4, 50, 0)], &lag).len(),
        1,
        "own invalidations are strict"
    );
}
