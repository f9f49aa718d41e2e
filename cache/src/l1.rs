//! The optional in-process tier: decoded values in a size-bounded moka cache, kept in sync
//! with other instances by notices, and out of use whenever it cannot prove it is in sync.
//!
//! Validity is checked with epochs rather than by scanning: every notice (a tag invalidated, a
//! key written or deleted) stamps its guards' slots in a fixed table of atomics with a new
//! sequence number. A reader takes the sequence number *before* it reads the store and inserts
//! its value with it; the value is served only while none of its guards' slots carries a later
//! stamp. So a notice that lands while a reader is still on its way back from the store makes
//! that reader's value unusable at once, and a notice costs O(tags) whatever the number of
//! entries. Two guards sharing a slot can only make a value look invalidated (a spurious
//! miss), never keep an invalidated one.
//!
//! Staleness bound: the store's notice stream carries heartbeats ([`Notice::Synced`]): "every
//! notice published before instant `t` has been delivered". The L1 serves a value only while
//! the latest such `t` is less than `max_staleness` old, so an invalidation that returned
//! anywhere more than `max_staleness` ago has always been applied before an L1 hit. A deaf
//! subscription (half-open connection, stalled task) therefore turns the L1 off by itself.
//!
//! This module must not decide freshness policy or talk to the store.
//!
//! [`Notice::Synced`]: crate::Notice::Synced

use std::any::Any;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// A hasher for keys that are already hashes.
#[derive(Default)]
pub(crate) struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A fast keyed hash (FxHash-style mixing, then a murmur3 finalizer so low bits are good for
/// slots and shards). Collisions are harmless: entries are compared in full on a hit, and two
/// guards sharing a slot only cause spurious misses. The seed is random per L1.
fn mix(h: u64, x: u64) -> u64 {
    (h.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95)
}

fn hash_parts(seed: u64, kind: u8, parts: &[&str]) -> u64 {
    let mut h = mix(seed, u64::from(kind));
    for p in parts {
        let bytes = p.as_bytes();
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            h = mix(
                h,
                u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
            );
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        h = mix(h, u64::from_le_bytes(tail));
        h = mix(h, bytes.len() as u64 | 0xff00_0000_0000_0000);
    }
    // murmur3 fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// One decoded value.
pub(crate) struct L1Entry {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    /// `{org}{type}{key}` concatenated, with the two first lengths, to tell hash collisions.
    name: Box<str>,
    org_len: u32,
    type_len: u32,
    /// Served until then: its fresh time, capped by the L1's time-to-live.
    pub(crate) fresh_until: Instant,
    pub(crate) refresh_at: Option<Instant>,
    guards: Box<[u32]>,
    inserted_seq: u64,
}

impl L1Entry {
    fn is(&self, org: &str, ty: &str, key: &str) -> bool {
        let (o, t) = (self.org_len as usize, self.type_len as usize);
        self.name.len() == o + t + key.len()
            && self.name.get(..o) == Some(org)
            && self.name.get(o..o + t) == Some(ty)
            && self.name.get(o + t..) == Some(key)
    }
}

/// What an L1 lookup found.
pub(crate) enum L1Lookup {
    Hit(Arc<L1Entry>),
    Miss,
    /// Not in use (down, or the heartbeat is too old): nothing was looked up.
    Off,
}

pub(crate) struct L1 {
    entries: moka::sync::Cache<u64, Arc<L1Entry>, BuildHasherDefault<PreHashed>>,
    seed: u64,
    ttl: Duration,
    epochs: Box<[AtomicU64]>,
    mask: u64,
    seq: AtomicU64,
    floor: AtomicU64,
    enabled: AtomicBool,
    /// `None`: the store has no notices; values live for the L1 TTL only.
    sync: Option<SyncState>,
}

struct SyncState {
    anchor: Instant,
    /// Nanoseconds from `anchor` to the latest heartbeat instant.
    synced_at: AtomicU64,
    max_staleness: u64,
    deaf: AtomicBool,
}

impl SyncState {
    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.anchor)
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64
    }

    fn lag(&self, now: Instant) -> u64 {
        self.nanos(now).saturating_sub(self.synced_at.load(SeqCst))
    }
}

impl L1 {
    /// `synced`: the store delivers notices with heartbeats; the L1 stays off until the first
    /// reset and whenever the latest heartbeat is older than `max_staleness`.
    pub(crate) fn new(capacity: u64, ttl: Duration, max_staleness: Duration, synced: bool) -> Self {
        let slots = (capacity.saturating_mul(2))
            .clamp(1024, 1 << 21)
            .next_power_of_two();
        let anchor = Instant::now();
        Self {
            // No moka time-to-live: it would read the clock on every get; entries carry their
            // own deadline (checked with the one clock read a get makes) and capacity evicts.
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .build_with_hasher(BuildHasherDefault::<PreHashed>::default()),
            seed: RandomState::new().hash_one(0xc0ffee_u64),
            ttl,
            epochs: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            mask: slots - 1,
            seq: AtomicU64::new(1),
            floor: AtomicU64::new(0),
            enabled: AtomicBool::new(!synced),
            sync: synced.then(|| SyncState {
                anchor,
                synced_at: AtomicU64::new(0),
                max_staleness: max_staleness.as_nanos().min(u128::from(u64::MAX)) as u64,
                deaf: AtomicBool::new(false),
            }),
        }
    }

    fn hash(&self, kind: u8, parts: &[&str]) -> u64 {
        hash_parts(self.seed, kind, parts)
    }

    fn slot(&self, hash: u64) -> u32 {
        (hash & self.mask) as u32
    }

    /// The guard slot of one entry.
    pub(crate) fn key_slot(&self, org: &str, ty: &str, key: &str) -> u32 {
        self.slot(self.hash(b'k', &[org, ty, key]))
    }

    /// The guard slot of one tag of a tenant.
    pub(crate) fn tag_slot(&self, org: &str, tag: &str) -> u32 {
        self.slot(self.hash(b't', &[org, tag]))
    }

    /// The stamp a reader takes before it reads the store.
    pub(crate) fn stamp(&self) -> u64 {
        self.seq.load(SeqCst)
    }

    /// True when the L1 may be used at `now`.
    pub(crate) fn usable(&self, now: Instant) -> bool {
        if !self.enabled.load(SeqCst) {
            return false;
        }
        match &self.sync {
            None => true,
            Some(s) => {
                if s.lag(now) <= s.max_staleness {
                    true
                } else {
                    s.deaf.store(true, SeqCst);
                    false
                }
            }
        }
    }

    pub(crate) fn get(&self, org: &str, ty: &str, key: &str, now: Instant) -> L1Lookup {
        if !self.usable(now) {
            return L1Lookup::Off;
        }
        let h = self.hash(b'e', &[org, ty, key]);
        let Some(entry) = self.entries.get(&h) else {
            return L1Lookup::Miss;
        };
        if !entry.is(org, ty, key) {
            return L1Lookup::Miss;
        }
        if entry.fresh_until <= now {
            self.entries.invalidate(&h);
            return L1Lookup::Miss;
        }
        if self.is_valid(&entry) {
            L1Lookup::Hit(entry)
        } else {
            self.entries.invalidate(&h);
            L1Lookup::Miss
        }
    }

    fn is_valid(&self, entry: &L1Entry) -> bool {
        entry.inserted_seq >= self.floor.load(SeqCst)
            && entry
                .guards
                .iter()
                .all(|&g| self.epochs[g as usize].load(SeqCst) <= entry.inserted_seq)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &self,
        (org, ty, key): (&str, &str, &str),
        value: Arc<dyn Any + Send + Sync>,
        fresh_until: Instant,
        refresh_at: Option<Instant>,
        guards: Vec<u32>,
        stamp: u64,
        now: Instant,
    ) {
        if !self.usable(now) || fresh_until <= now {
            return;
        }
        let entry = L1Entry {
            value,
            name: format!("{org}{ty}{key}").into_boxed_str(),
            org_len: org.len() as u32,
            type_len: ty.len() as u32,
            fresh_until: fresh_until.min(now + self.ttl),
            refresh_at,
            guards: guards.into_boxed_slice(),
            inserted_seq: stamp,
        };
        // A notice between this check and the insert leaves a later stamp in a slot, which
        // every `get` compares: the value is never served.
        if self.is_valid(&entry) {
            self.entries
                .insert(self.hash(b'e', &[org, ty, key]), Arc::new(entry));
        }
    }

    /// Stamps guard slots: values inserted before now that carry one of them are not served.
    pub(crate) fn bump<I: IntoIterator<Item = u32>>(&self, slots: I) {
        let n = self.seq.fetch_add(1, SeqCst) + 1;
        for s in slots {
            self.epochs[s as usize].fetch_max(n, SeqCst);
        }
    }

    /// A heartbeat: every notice published before `t` has been applied.
    pub(crate) fn synced(&self, t: Instant) {
        if let Some(s) = &self.sync {
            s.synced_at.fetch_max(s.nanos(t), SeqCst);
        }
    }

    /// True once since the last call if the L1 refused service for a stale heartbeat.
    pub(crate) fn take_deaf(&self) -> bool {
        self.sync
            .as_ref()
            .is_some_and(|s| s.deaf.swap(false, SeqCst))
    }

    /// How old the latest heartbeat is (`None` without notices).
    pub(crate) fn lag(&self, now: Instant) -> Option<Duration> {
        self.sync.as_ref().map(|s| Duration::from_nanos(s.lag(now)))
    }

    /// Notices flow again: drop everything and use the L1.
    pub(crate) fn reset(&self) {
        self.drop_all();
        self.enabled.store(true, SeqCst);
    }

    /// Notices stopped: stop serving and filling the L1.
    pub(crate) fn down(&self) {
        self.enabled.store(false, SeqCst);
        self.drop_all();
    }

    fn drop_all(&self) {
        let n = self.seq.fetch_add(1, SeqCst) + 1;
        self.floor.store(n, SeqCst);
        self.entries.invalidate_all();
    }

    #[cfg(test)]
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

    const K: (&str, &str, &str) = ("acme", "invoice", "k");
    const FAR: Duration = Duration::from_secs(3600);

    fn hit(l1: &L1) -> bool {
        matches!(l1.get(K.0, K.1, K.2, Instant::now()), L1Lookup::Hit(_))
    }

    fn put(l1: &L1, guards: Vec<u32>, stamp: u64) {
        let now = Instant::now();
        l1.insert(K, one(1), now + FAR, None, guards, stamp, now);
    }

    #[test]
    fn a_value_read_before_a_notice_is_not_served_after_it() {
        let l1 = L1::new(100, FAR, FAR, false);
        let t = l1.tag_slot("acme", "invoice:1");
        // Read after no notice: served.
        put(&l1, vec![t], l1.stamp());
        assert!(hit(&l1));
        // A reader stamps, reads the store; the notice lands before it inserts.
        let stamp = l1.stamp();
        l1.bump([t]);
        put(&l1, vec![t], stamp);
        assert!(!hit(&l1), "a value read before the notice was served");
        // Read after the notice: served until the next one.
        let stamp = l1.stamp();
        put(&l1, vec![t, l1.key_slot(K.0, K.1, K.2)], stamp);
        assert!(hit(&l1));
        let other = l1.tag_slot("other", "invoice:1");
        if other != t {
            l1.bump([other]);
            assert!(hit(&l1), "another tenant's tag must not invalidate");
        }
        l1.bump([l1.tag_slot("acme", "invoice:1")]);
        assert!(!hit(&l1));
    }

    #[test]
    fn down_stops_serving_and_reset_drops_everything() {
        let l1 = L1::new(100, FAR, FAR, true);
        assert!(!l1.is_enabled(), "off until notices flow");
        put(&l1, vec![], l1.stamp());
        assert!(!hit(&l1));
        l1.reset();
        l1.synced(Instant::now());
        let before_reset = l1.stamp();
        put(&l1, vec![], before_reset);
        assert!(hit(&l1));
        l1.down();
        assert!(!hit(&l1));
        l1.reset();
        assert!(!hit(&l1), "a value from before the reset survived it");
        // A value stamped before the reset is never served again.
        put(&l1, vec![], before_reset);
        assert!(!hit(&l1));
    }

    #[test]
    fn a_stale_heartbeat_turns_the_l1_off_until_the_next_one() {
        let l1 = L1::new(100, FAR, Duration::from_millis(50), true);
        l1.reset();
        l1.synced(Instant::now());
        put(&l1, vec![], l1.stamp());
        assert!(hit(&l1));
        let later = Instant::now() + Duration::from_millis(80);
        assert!(matches!(l1.get(K.0, K.1, K.2, later), L1Lookup::Off));
        assert!(l1.take_deaf());
        assert!(!l1.take_deaf());
        // A heartbeat proves the notices up to it were applied: the value is served again.
        l1.synced(later);
        assert!(matches!(l1.get(K.0, K.1, K.2, later), L1Lookup::Hit(_)));
        // Heartbeats never move the bound backwards.
        l1.synced(Instant::now() - Duration::from_secs(1));
        assert!(matches!(l1.get(K.0, K.1, K.2, later), L1Lookup::Hit(_)));
    }

    #[test]
    fn colliding_keys_are_told_apart() {
        let l1 = L1::new(100, FAR, FAR, false);
        let now = Instant::now();
        l1.insert(("ac", "me", "k"), one(1), now + FAR, None, vec![], 1, now);
        assert!(matches!(l1.get("a", "cme", "k", now), L1Lookup::Miss));
        assert!(matches!(l1.get("ac", "me", "k", now), L1Lookup::Hit(_)));
        // An expired value is a miss.
        l1.insert(K, one(1), now, None, vec![], 1, now);
        assert!(matches!(l1.get(K.0, K.1, K.2, now), L1Lookup::Miss));
    }
}
