//! The cache conformance suite on Redis, and what is particular to the Redis store: key layout,
//! tag key TTLs, one command per hit, client-side tracking of tag versions.
#![cfg(feature = "redis")]

use std::time::Duration;

use redis::AsyncCommands;
use windlass_cache::{Cache, RedisCacheStore, RedisCacheStoreConfig, Store};
use windlass_testkit::conformance::cache::{Invoice, amount, inv, minute, org};
use windlass_testkit::redis::fresh_prefix;
use windlass_testkit::servers::PrivateRedis;

windlass_testkit::cache_conformance!(windlass_testkit::conformance::cache::RedisFixture);

async fn store(t: &windlass_testkit::redis::TestRedis) -> RedisCacheStore {
    RedisCacheStore::with_config(
        t.client.clone(),
        RedisCacheStoreConfig::default().prefix(&t.prefix),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_the_documented_layout_and_tags_outlive_entries() {
    let t = fresh_prefix().await;
    let cache = Cache::new(store(&t).await);
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    invoices
        .set(&acme, "inv/42", &inv(42, 1), &["customer:7"])
        .await
        .unwrap();
    let mut conn = t.conn.clone();
    let entry_key = format!("{}:c:{{acme}}:invoice:inv/42", t.prefix);
    let raw: Vec<u8> = conn.get(&entry_key).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("WLC1 "), "{text}");
    assert!(text.contains("\n\n{\"id\":42,\"amount\":1}"), "{text}");
    let tag_key = format!("{}:c:{{acme}}:#tag:customer:7", t.prefix);
    let version: String = conn.get(&tag_key).await.unwrap();
    assert!(
        text.contains(&format!("T {version} customer:7\n")),
        "{text}"
    );
    // The implicit tags of the tenant and the data type.
    assert!(
        text.contains(" #all\n") && text.contains(" #type:invoice\n"),
        "{text}"
    );
    let entry_ttl: i64 = conn.pttl(&entry_key).await.unwrap();
    assert!(entry_ttl > 50_000 && entry_ttl <= 60_000, "{entry_ttl}");
    for tag in ["customer:7", "#all", "#type:invoice"] {
        let key = format!("{}:c:{{acme}}:#tag:{tag}", t.prefix);
        let ttl: i64 = conn.pttl(&key).await.unwrap();
        assert!(
            ttl > entry_ttl,
            "tag {tag} expires ({ttl} ms) before its entry ({entry_ttl} ms)"
        );
    }
    // Versions are never reused: an invalidation gives a new, unrelated one.
    cache.invalidate_tag(&acme, "customer:7").await.unwrap();
    let after: String = conn.get(&tag_key).await.unwrap();
    assert_ne!(after, version);
    assert_eq!(after.len(), 32, "a UUIDv7, not a counter: {after}");
    let ttl: i64 = conn.pttl(&tag_key).await.unwrap();
    assert!(ttl > entry_ttl, "the invalidation dropped the tag's TTL");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_keys_have_no_tenant_overlap() {
    let t = fresh_prefix().await;
    let s = store(&t).await;
    let (a, b) = (org("a"), org("b"));
    assert_ne!(s.tag_key(&a, "x"), s.tag_key(&b, "x"));
    let ty = windlass_core::Name::parse("t", "invoice").unwrap();
    let pa = s
        .prepare(windlass_cache::EntryRef::new(&a, &ty, "k"), &["x"])
        .await
        .unwrap();
    s.invalidate(&b, &["x"], None).await.unwrap();
    let pa2 = s
        .prepare(windlass_cache::EntryRef::new(&a, &ty, "k"), &["x"])
        .await
        .unwrap();
    assert_eq!(pa.tag_versions, pa2.tag_versions);
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

async fn command_calls(server: &PrivateRedis) -> String {
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap()
}

/// With tracking (the default), 100 hits are 100 plain `GET`s and nothing else; without it,
/// 100 `EVALSHA`s of the read script (one `GET` and one `MGET` inside each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_one_command() {
    let server = PrivateRedis::start();
    for tracking in [true, false] {
        let store = RedisCacheStore::with_config(
            redis::Client::open(server.url()).unwrap(),
            RedisCacheStoreConfig::default().client_tracking(tracking),
        )
        .await
        .unwrap();
        assert_eq!(store.tracks_tag_versions(), tracking);
        let cache = Cache::new(store);
        let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
        let acme = org("acme");
        invoices
            .set(&acme, "1", &inv(1, 1), &["a", "b", "c"])
            .await
            .unwrap();
        // The first hit loads the script or fetches the tag versions.
        assert!(invoices.get(&acme, "1").await.unwrap().is_some());
        let before = command_calls(&server).await;
        for _ in 0..100 {
            assert!(invoices.get(&acme, "1").await.unwrap().is_some());
        }
        let after = command_calls(&server).await;
        let calls = |info: &str, cmd: &str| info_field(info, &format!("cmdstat_{cmd}:"), "calls");
        let delta = |cmd| calls(&after, cmd) - calls(&before, cmd);
        if tracking {
            assert_eq!(delta("get"), 100, "one GET per hit");
            assert_eq!((delta("evalsha"), delta("mget")), (0, 0));
        } else {
            assert_eq!(delta("evalsha"), 100, "one EVALSHA per hit");
            assert_eq!((delta("get"), delta("mget")), (100, 100));
        }
    }
}

/// Tracked tag versions follow changes made by anyone: another store's invalidation, or a raw
/// write of the tag key, make the next hit a miss at once (the invalidation reaches the
/// tracking connection before the reply of any later `GET`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_tag_versions_follow_changes_made_elsewhere() {
    let t = fresh_prefix().await;
    let reader = store(&t).await;
    let writer = Cache::new(store(&t).await);
    let cache = Cache::new(reader.clone());
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    let w = writer.entry::<Invoice>("invoice", minute()).unwrap();
    let acme = org("acme");
    let mut raw = t.conn.clone();
    for round in 0..50u64 {
        w.set(&acme, "1", &inv(1, round), &["t"]).await.unwrap();
        assert_eq!(
            amount(&invoices.get(&acme, "1").await.unwrap()),
            Some(round)
        );
        assert!(
            reader.tracked_tag_versions() >= 3,
            "tag versions are not tracked"
        );
        assert_eq!(
            amount(&invoices.get(&acme, "1").await.unwrap()),
            Some(round)
        );
        if round % 2 == 0 {
            writer.invalidate_tag(&acme, "t").await.unwrap();
        } else {
            let key = reader.tag_key(&acme, "t");
            let _: () = raw.set(key, "changed-behind-our-back").await.unwrap();
        }
        assert_eq!(
            invoices.get(&acme, "1").await.unwrap(),
            None,
            "round {round}: a hit on a tag version changed elsewhere"
        );
    }
    t.cleanup().await;
}

/// Invalid store settings are typed errors, never panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_store_settings_are_refused() {
    let t = fresh_prefix().await;
    let bad = RedisCacheStore::with_config(
        t.client.clone(),
        RedisCacheStoreConfig::default().heartbeat(Duration::ZERO),
    )
    .await;
    assert!(matches!(bad, Err(windlass_cache::Error::Config(_))));
    let bad_prefix = RedisCacheStore::with_config(
        t.client.clone(),
        RedisCacheStoreConfig::default().prefix("bad prefix"),
    )
    .await;
    assert!(bad_prefix.is_err());
}
