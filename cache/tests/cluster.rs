//! The cache conformance suite on a Redis Cluster (a local 3-master cluster the harness starts
//! from the `redis-server` binary on ports 17101-17103), and the key layout that keeps every
//! script in one slot.
#![cfg(feature = "redis")]

use std::collections::BTreeSet;

use windlass_cache::{Cache, CacheOptions, EntryRef};
use windlass_testkit::conformance::cache::{
    CacheFixture, ClusterFixture, Invoice, inv, minute, org,
};

windlass_testkit::cache_conformance!(windlass_testkit::conformance::cache::ClusterFixture);

fn slot(key: &str) -> u16 {
    // The Cluster hash slot: CRC16 (XMODEM) of the hash tag, mod 16384.
    let tagged = match (key.find('{'), key.find('}')) {
        (Some(a), Some(b)) if b > a + 1 => &key[a + 1..b],
        _ => key,
    };
    let mut crc: u16 = 0;
    for byte in tagged.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// Every key a script of one tenant touches is in the tenant's slot; tenants spread over slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_keys_share_one_slot_and_tenants_spread() {
    let f = ClusterFixture::setup().await;
    let store = f.new_store().await;
    let ty = windlass_core::Name::parse("t", "invoice").unwrap();
    let mut slots = BTreeSet::new();
    for t in 0..50 {
        let o = org(&format!("tenant-{t}"));
        let entry = store.entry_key(EntryRef::new(&o, &ty, "some/key:1"));
        let s = slot(&entry);
        for tag in ["customer:7", "#all", "#type:invoice"] {
            assert_eq!(
                slot(&store.tag_key(&o, tag)),
                s,
                "{entry} and tag {tag} in two slots"
            );
        }
        slots.insert(s);
    }
    assert!(
        slots.len() > 40,
        "tenants do not spread: {} slots",
        slots.len()
    );
    // And it works end to end across the three masters.
    let cache = Cache::with_options(store, CacheOptions::default()).unwrap();
    let invoices = cache.entry::<Invoice>("invoice", minute()).unwrap();
    for t in 0..20u64 {
        let o = org(&format!("tenant-{t}"));
        invoices.set(&o, "1", &inv(t, t), &["x"]).await.unwrap();
        assert_eq!(
            invoices.get(&o, "1").await.unwrap().map(|v| v.amount),
            Some(t)
        );
        cache.invalidate_tag(&o, "x").await.unwrap();
        assert_eq!(invoices.get(&o, "1").await.unwrap(), None);
    }
    f.teardown().await;
}
