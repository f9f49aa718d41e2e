//! The optional in-process tier: decoded values in a size-bounded moka cache, kept in sync
//! with other instances by notices.
//!
//! Validity is checked with epochs rather than by scanning: every notice (a tag invalidated, a
//! key written or deleted) stamps its guards (the tenant's tag, or `{orgid}:{type}:{key}`) with
//! a new sequence number. A reader takes the sequence number *before* it reads the store and
//! inserts its value with it; the value is served only while none of its guards carries a
//! later stamp. So a notice that lands while a reader is still on its way back from the store
//! makes that reader's value unusable at once, and a notice costs O(tags), whatever the number
//! of entries. While notices do not flow (not yet subscribed, connection lost) the L1 is not
//! used at all; when they flow again everything in it is dropped (a reset), since messages may
//! have been lost in between.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// One decoded value.
pub(crate) struct L1Entry {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    pub(crate) fresh_until_ms: u64,
    guards: Vec<u64>,
    inserted_seq: u64,
}

pub(crate) struct L1 {
    entries: moka::sync::Cache<String, Arc<L1Entry>>,
    // Keyed by a hash of the guard: a collision can only make a value look invalidated (a
    // spurious miss), never keep an invalidated one.
    epochs: RwLock<HashMap<u64, u64>>,
    seq: AtomicU64,
    floor: AtomicU64,
    enabled: AtomicBool,
    max_epochs: usize,
}

fn guard(kind: u8, parts: &[&str]) -> u64 {
    use std::hash::Hasher;
    // Fixed keys: the same guard hashes the same way in every L1 of the process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write_u8(kind);
    for p in parts {
        h.write(p.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

/// The guard of one entry: `{orgid}:{type}:{key}`.
pub(crate) fn key_guard(logical: &str) -> u64 {
    guard(b'k', &[logical])
}

/// The guard of one tag of a tenant.
pub(crate) fn tag_guard(org: &str, tag: &str) -> u64 {
    guard(b't', &[org, tag])
}

/// The guard of `{orgid}:{tag}` as notices carry it.
pub(crate) fn scoped_tag_guard(scoped: &str) -> u64 {
    match scoped.split_once(':') {
        Some((org, tag)) => tag_guard(org, tag),
        None => guard(b't', &[scoped]),
    }
}

impl L1 {
    /// `synced`: true when notices will arrive (the L1 stays off until the first reset).
    pub(crate) fn new(capacity: u64, ttl: Duration, synced: bool) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            epochs: RwLock::new(HashMap::new()),
            seq: AtomicU64::new(1),
            floor: AtomicU64::new(0),
            enabled: AtomicBool::new(!synced),
            max_epochs: (capacity as usize).saturating_mul(4).max(1024),
        }
    }

    /// The stamp a reader takes before it reads the store.
    pub(crate) fn stamp(&self) -> u64 {
        self.seq.load(SeqCst)
    }

    pub(crate) fn get(&self, logical: &str) -> Option<Arc<L1Entry>> {
        if !self.enabled.load(SeqCst) {
            return None;
        }
        let entry = self.entries.get(logical)?;
        if self.is_valid(&entry) {
            Some(entry)
        } else {
            self.entries.invalidate(logical);
            None
        }
    }

    fn is_valid(&self, entry: &L1Entry) -> bool {
        if entry.inserted_seq < self.floor.load(SeqCst) {
            return false;
        }
        let epochs = self.epochs.read().unwrap_or_else(|p| p.into_inner());
        entry
            .guards
            .iter()
            .all(|g| epochs.get(g).is_none_or(|&e| e <= entry.inserted_seq))
    }

    pub(crate) fn insert(
        &self,
        logical: String,
        value: Arc<dyn Any + Send + Sync>,
        fresh_until_ms: u64,
        guards: Vec<u64>,
        stamp: u64,
    ) {
        if !self.enabled.load(SeqCst) {
            return;
        }
        let entry = Arc::new(L1Entry {
            value,
            fresh_until_ms,
            guards,
            inserted_seq: stamp,
        });
        if self.is_valid(&entry) {
            self.entries.insert(logical, entry);
        }
    }

    /// True when none of `guards` was stamped after `stamp`.
    pub(crate) fn unchanged_since(&self, guards: &[u64], stamp: u64) -> bool {
        if stamp < self.floor.load(SeqCst) {
            return false;
        }
        let epochs = self.epochs.read().unwrap_or_else(|p| p.into_inner());
        guards
            .iter()
            .all(|g| epochs.get(g).is_none_or(|&e| e <= stamp))
    }

    /// Stamps guards: values inserted before now that carry one of them are no longer served.
    pub(crate) fn bump<I: IntoIterator<Item = u64>>(&self, guards: I) {
        let mut epochs = self.epochs.write().unwrap_or_else(|p| p.into_inner());
        let n = self.seq.fetch_add(1, SeqCst) + 1;
        for g in guards {
            epochs.insert(g, n);
        }
        if epochs.len() > self.max_epochs {
            // Forget the stamps, and with them every value inserted before this point.
            epochs.clear();
            self.floor.store(n, SeqCst);
            self.entries.invalidate_all();
        }
    }

    /// Notices flow again: drop everything and use the L1.
    pub(crate) fn reset(&self) {
        let mut epochs = self.epochs.write().unwrap_or_else(|p| p.into_inner());
        let n = self.seq.fetch_add(1, SeqCst) + 1;
        epochs.clear();
        self.floor.store(n, SeqCst);
        self.entries.invalidate_all();
        self.enabled.store(true, SeqCst);
    }

    /// Notices stopped: stop serving and filling the L1.
    pub(crate) fn down(&self) {
        self.enabled.store(false, SeqCst);
        self.reset_floor();
    }

    fn reset_floor(&self) {
        let _epochs = self.epochs.write().unwrap_or_else(|p| p.into_inner());
        let n = self.seq.fetch_add(1, SeqCst) + 1;
        self.floor.store(n, SeqCst);
        self.entries.invalidate_all();
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: u32) -> Arc<dyn Any + Send + Sync> {
        Arc::new(v)
    }

    #[test]
    fn a_value_read_before_a_notice_is_not_served_after_it() {
        let l1 = L1::new(100, Duration::from_secs(60), false);
        let t = tag_guard("acme", "invoice:1");
        // A reader stamps, reads the store; the notice lands before it inserts.
        let stamp = l1.stamp();
        l1.bump([t]);
        l1.insert("k".into(), one(1), u64::MAX, vec![t], stamp);
        assert!(l1.get("k").is_none());
        // Read after the notice: served until the next one.
        let stamp = l1.stamp();
        l1.insert(
            "k".into(),
            one(2),
            u64::MAX,
            vec![t, key_guard("acme:invoice:k")],
            stamp,
        );
        assert!(l1.get("k").is_some());
        l1.bump([tag_guard("other", "invoice:1")]);
        assert!(
            l1.get("k").is_some(),
            "another tenant's tag must not invalidate"
        );
        l1.bump([scoped_tag_guard("acme:invoice:1")]);
        assert!(l1.get("k").is_none());
        assert!(!l1.unchanged_since(&[t], stamp));
    }

    #[test]
    fn down_stops_serving_and_reset_drops_everything() {
        let l1 = L1::new(100, Duration::from_secs(60), true);
        assert!(!l1.is_enabled(), "off until notices flow");
        l1.insert("k".into(), one(1), u64::MAX, vec![], l1.stamp());
        assert!(l1.get("k").is_none());
        l1.reset();
        let before_reset = l1.stamp();
        l1.insert("k".into(), one(1), u64::MAX, vec![], before_reset);
        assert!(l1.get("k").is_some());
        l1.down();
        assert!(l1.get("k").is_none());
        l1.reset();
        // A value stamped before the reset is never served again.
        l1.insert("k".into(), one(1), u64::MAX, vec![], before_reset);
        assert!(l1.get("k").is_none());
    }

    #[test]
    fn a_full_epoch_table_resets_instead_of_forgetting() {
        let l1 = L1::new(1, Duration::from_secs(60), false);
        let stamp = l1.stamp();
        l1.insert(
            "k".into(),
            one(1),
            u64::MAX,
            vec![tag_guard("a", "t")],
            stamp,
        );
        for i in 0..2000 {
            l1.bump([tag_guard("a", &format!("other{i}"))]);
        }
        l1.bump([tag_guard("a", "t")]);
        l1.insert(
            "k".into(),
            one(1),
            u64::MAX,
            vec![tag_guard("a", "t")],
            stamp,
        );
        assert!(l1.get("k").is_none());
    }
}
