//! Invalidations (tag bumps and deletes) that failed on the store, kept in process until they
//! are replayed. While one is pending, this process treats the entries it covers as misses
//! (the store still holds them as valid), and its L1 has dropped them already.
//!
//! Bounded: past the limit, the tenant with the most pending work is folded into one
//! invalidation of that whole tenant (its implicit `#all` tag), which covers all of it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};

use windlass_core::OrgId;

/// The implicit tag every entry of a tenant carries.
pub(crate) const ALL_TAG: &str = "#all";

#[derive(Default)]
struct Tenant {
    /// tag -> generation of its latest failure.
    tags: HashMap<String, u64>,
    /// (data type, key) -> generation.
    keys: HashMap<(String, String), u64>,
}

impl Tenant {
    fn len(&self) -> usize {
        self.tags.len() + self.keys.len()
    }
}

/// A snapshot of pending work to replay for one tenant.
pub(crate) struct Batch {
    pub(crate) org: OrgId,
    pub(crate) tags: Vec<(String, u64)>,
    pub(crate) keys: Vec<((String, String), u64)>,
}

pub(crate) struct Pending {
    tenants: Mutex<HashMap<OrgId, Tenant>>,
    count: AtomicUsize,
    epoch: AtomicU64,
    max: usize,
    pub(crate) replayed: AtomicU64,
    pub(crate) folded: AtomicU64,
}

impl Pending {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            tenants: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            max: max.max(1),
            replayed: AtomicU64::new(0),
            folded: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrgId, Tenant>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Items pending (tags plus keys).
    pub(crate) fn len(&self) -> usize {
        self.count.load(SeqCst)
    }

    fn recount(&self, tenants: &HashMap<OrgId, Tenant>) {
        self.count
            .store(tenants.values().map(Tenant::len).sum(), SeqCst);
    }

    pub(crate) fn add_tags(&self, org: &OrgId, tags: &[&str]) {
        let epoch = self.epoch.fetch_add(1, SeqCst) + 1;
        let mut tenants = self.lock();
        let t = tenants.entry(org.clone()).or_default();
        for tag in tags {
            t.tags.insert((*tag).to_owned(), epoch);
        }
        self.bound(&mut tenants);
        self.recount(&tenants);
    }

    pub(crate) fn add_key(&self, org: &OrgId, data_type: &str, key: &str) {
        let epoch = self.epoch.fetch_add(1, SeqCst) + 1;
        let mut tenants = self.lock();
        tenants
            .entry(org.clone())
            .or_default()
            .keys
            .insert((data_type.to_owned(), key.to_owned()), epoch);
        self.bound(&mut tenants);
        self.recount(&tenants);
    }

    fn bound(&self, tenants: &mut HashMap<OrgId, Tenant>) {
        while tenants.values().map(Tenant::len).sum::<usize>() > self.max {
            let Some((org, _)) = tenants
                .iter()
                .filter(|(_, t)| {
                    !(t.keys.is_empty() && t.tags.len() == 1 && t.tags.contains_key(ALL_TAG))
                })
                .max_by_key(|(_, t)| t.len())
                .map(|(o, t)| (o.clone(), t.len()))
            else {
                return; // every tenant is folded already; nothing smaller exists
            };
            let epoch = self.epoch.fetch_add(1, SeqCst) + 1;
            let mut folded = Tenant::default();
            folded.tags.insert(ALL_TAG.to_owned(), epoch);
            tenants.insert(org.clone(), folded);
            self.folded.fetch_add(1, SeqCst);
            tracing::warn!(%org, "too many pending cache invalidations; folded into one invalidation of the whole tenant");
        }
    }

    /// True when this process must not trust an entry of `org` with these tags (user and
    /// implicit) at `(data_type, key)`: an invalidation of one of them is not yet on the store.
    pub(crate) fn covers(&self, org: &OrgId, data_type: &str, key: &str, tags: &[&str]) -> bool {
        if self.count.load(SeqCst) == 0 {
            return false;
        }
        let tenants = self.lock();
        let Some(t) = tenants.get(org) else {
            return false;
        };
        t.tags.contains_key(ALL_TAG)
            || tags.iter().any(|tag| t.tags.contains_key(*tag))
            || t.keys.contains_key(&(data_type.to_owned(), key.to_owned()))
    }

    /// Some pending work to replay (one tenant at a time).
    pub(crate) fn next_batch(&self) -> Option<Batch> {
        let tenants = self.lock();
        let (org, t) = tenants.iter().find(|(_, t)| t.len() > 0)?;
        Some(Batch {
            org: org.clone(),
            tags: t.tags.iter().map(|(k, g)| (k.clone(), *g)).collect(),
            keys: t.keys.iter().map(|(k, g)| (k.clone(), *g)).collect(),
        })
    }

    /// Forgets replayed tags whose generation did not move since the batch was taken (a later
    /// failure of the same tag must be replayed after it).
    pub(crate) fn done_tags(&self, org: &OrgId, tags: &[(String, u64)]) {
        let mut tenants = self.lock();
        if let Some(t) = tenants.get_mut(org) {
            for (tag, epoch) in tags {
                if t.tags.get(tag) == Some(epoch) {
                    t.tags.remove(tag);
                    self.replayed.fetch_add(1, SeqCst);
                }
            }
            if t.len() == 0 {
                tenants.remove(org);
            }
        }
        self.recount(&tenants);
    }

    /// Forgets replayed deletes, as [`Pending::done_tags`].
    pub(crate) fn done_key(&self, org: &OrgId, key: &(String, String), epoch: u64) {
        let mut tenants = self.lock();
        if let Some(t) = tenants.get_mut(org) {
            if t.keys.get(key) == Some(&epoch) {
                t.keys.remove(key);
                self.replayed.fetch_add(1, SeqCst);
            }
            if t.len() == 0 {
                tenants.remove(org);
            }
        }
        self.recount(&tenants);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(s: &str) -> OrgId {
        OrgId::new(s).unwrap()
    }

    #[test]
    fn covers_pending_tags_and_keys_and_forgets_them_once_replayed() {
        let p = Pending::new(100);
        let a = org("a");
        assert!(!p.covers(&a, "t", "k", &["x"]));
        p.add_tags(&a, &["x", "y"]);
        p.add_key(&a, "t", "k2");
        assert_eq!(p.len(), 3);
        assert!(p.covers(&a, "t", "k", &["z", "x"]));
        assert!(!p.covers(&a, "t", "k", &["z"]));
        assert!(p.covers(&a, "t", "k2", &[]));
        assert!(
            !p.covers(&org("b"), "t", "k", &["x"]),
            "another tenant is not covered"
        );
        let batch = p.next_batch().unwrap();
        // The same tag fails again after the batch was taken: it stays pending.
        p.add_tags(&a, &["x"]);
        p.done_tags(&a, &batch.tags);
        assert!(p.covers(&a, "t", "k", &["x"]));
        assert!(!p.covers(&a, "t", "k", &["y"]));
        for (key, epoch) in &batch.keys {
            p.done_key(&a, key, *epoch);
        }
        assert!(!p.covers(&a, "t", "k2", &[]));
        let batch = p.next_batch().unwrap();
        p.done_tags(&a, &batch.tags);
        assert_eq!(p.len(), 0);
        assert!(p.next_batch().is_none());
    }

    #[test]
    fn overflow_folds_a_tenant_into_one_whole_tenant_invalidation() {
        let p = Pending::new(3);
        let a = org("a");
        p.add_tags(&a, &["1", "2", "3"]);
        p.add_tags(&a, &["4"]);
        assert_eq!(p.len(), 1);
        assert!(
            p.covers(&a, "any", "key", &["unrelated"]),
            "a folded tenant covers everything"
        );
        assert_eq!(p.folded.load(SeqCst), 1);
    }
}
