//! [`CacheEntry<T>`]: the typed view of one data type: reads (`get`, `get_many`), writes
//! (`set`, `delete`, `clear`) and the lookup every path shares. Loads are in `load.rs`.

use std::any::TypeId;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use windlass_core::{Name, OrgId, validate_key_segment};

use crate::cache::{Cache, check_tags, notice};
use crate::error::{Error, Result};
use crate::flight::FlightKey;
use crate::format::{self, Stored};
use crate::l1::L1Lookup;
use crate::options::{CallOptions, TypePolicy};
use crate::pending::ALL_TAG;
use crate::stats::TypeCounters;
use crate::store::{EntryRef, RawRead, Write};

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The typed view of one data type of a [`Cache`]: `T` is stored as JSON in an envelope that
/// carries the format version, the write id, the freshness deadline and the versions of the
/// entry's tags. Values come back as `Arc<T>` (no clone per hit).
///
/// Keys are scoped by tenant ([`OrgId`]) and data type: two tenants never see each other's
/// entries or tags. Cheap to clone.
pub struct CacheEntry<T> {
    pub(crate) cache: Cache,
    pub(crate) data_type: Name,
    pub(crate) type_tag: Arc<str>,
    pub(crate) policy: Arc<TypePolicy>,
    pub(crate) counters: Arc<TypeCounters>,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T> Clone for CacheEntry<T> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            data_type: self.data_type.clone(),
            type_tag: self.type_tag.clone(),
            policy: self.policy.clone(),
            counters: self.counters.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for CacheEntry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheEntry")
            .field("data_type", &self.data_type)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// One validated request: tenant, key and tags (the user's, then the implicit ones).
#[derive(Clone)]
pub(crate) struct Req {
    pub(crate) org: OrgId,
    pub(crate) key: String,
    pub(crate) tags: Vec<String>,
}

impl Req {
    pub(crate) fn tag_refs(&self) -> Vec<&str> {
        self.tags.iter().map(String::as_str).collect()
    }
}

/// Freshness facts of a value read from the store.
#[derive(Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) refresh_at: Option<Instant>,
}

/// What a store lookup found.
pub(crate) enum Found<T> {
    Fresh(Arc<T>, Meta),
    /// Past its TTL but inside the stale grace, tags still valid (read after the call began),
    /// with the entry's write id.
    Stale(Arc<T>, String),
    /// Nothing usable; the entry's write id when the read was made ("" when absent).
    Miss(String),
    /// The store failed, timed out or the breaker is open.
    Unavailable,
}

impl<T> CacheEntry<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The data type.
    pub fn data_type(&self) -> &Name {
        &self.data_type
    }

    /// The policy.
    pub fn policy(&self) -> &TypePolicy {
        &self.policy
    }

    /// The cache this view belongs to.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// A view of the same data type with `options` applied over its policy, for one call or a
    /// few (`invoices.with_options(CallOptions::new().ttl(..))?.set(..)`). Errors on options
    /// that make the policy invalid.
    pub fn with_options(&self, options: CallOptions) -> Result<Self> {
        Ok(Self {
            policy: Arc::new(options.apply(&self.policy)?),
            ..self.clone()
        })
    }

    pub(crate) fn request<S: AsRef<str>>(&self, org: &OrgId, key: &str, tags: &[S]) -> Result<Req> {
        validate_key_segment("cache key", key)?;
        let user: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
        check_tags(&user)?;
        let mut all = Vec::with_capacity(user.len() + 2);
        all.extend(user.iter().map(|t| (*t).to_owned()));
        all.push(ALL_TAG.to_owned());
        all.push(self.type_tag.to_string());
        Ok(Req {
            org: org.clone(),
            key: key.to_owned(),
            tags: all,
        })
    }

    pub(crate) fn flight_key<E: 'static>(&self, req: &Req) -> FlightKey {
        (
            TypeId::of::<T>(),
            TypeId::of::<E>(),
            EntryRef::new(&req.org, &self.data_type, &req.key).logical(),
        )
    }

    pub(crate) fn uses_l1(&self) -> bool {
        self.policy.l1 && self.cache.inner.l1.is_some()
    }

    /// A fresh value from the L1, with its refresh-ahead instant.
    pub(crate) fn l1_get(&self, org: &OrgId, key: &str, now: Instant) -> Option<(Arc<T>, Meta)> {
        if !self.policy.l1 {
            return None;
        }
        let l1 = self.cache.inner.l1.as_ref()?;
        let L1Lookup::Hit(entry) = l1.get(org.as_str(), self.data_type.as_str(), key, now) else {
            return None;
        };
        let value = entry.value.clone().downcast::<T>().ok()?;
        self.counters.hits_l1.inc();
        Some((
            value,
            Meta {
                refresh_at: entry.refresh_at,
            },
        ))
    }

    pub(crate) fn stamp(&self) -> u64 {
        self.cache.inner.l1.as_ref().map_or(0, |l1| l1.stamp())
    }

    /// Keeps a value read (or written) after `stamp` was taken.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn l1_insert(
        &self,
        org: &OrgId,
        key: &str,
        tags: &[&str],
        value: &Arc<T>,
        fresh_until: Instant,
        refresh_at: Option<Instant>,
        stamp: u64,
    ) {
        if !self.uses_l1() {
            return;
        }
        let Some(l1) = &self.cache.inner.l1 else {
            return;
        };
        let (o, ty) = (org.as_str(), self.data_type.as_str());
        let mut guards = Vec::with_capacity(tags.len() + 1);
        guards.push(l1.key_slot(o, ty, key));
        guards.extend(tags.iter().map(|t| l1.tag_slot(o, t)));
        l1.insert(
            (o, ty, key),
            value.clone(),
            fresh_until,
            refresh_at,
            guards,
            stamp,
            Instant::now(),
        );
    }

    /// When a value created at `created_ms`, fresh until `fresh_until_ms` (unix ms), is due
    /// for refresh-ahead, as an instant.
    pub(crate) fn refresh_point(
        &self,
        created_ms: u64,
        fresh_until_ms: u64,
        now_unix: u64,
        now: Instant,
    ) -> Option<Instant> {
        let f = self.policy.refresh_ahead?;
        let life = fresh_until_ms.saturating_sub(created_ms) as f64;
        let point = created_ms.saturating_add((life * f) as u64);
        Some(now + Duration::from_millis(point.saturating_sub(now_unix)))
    }

    /// Classifies one raw read.
    pub(crate) fn classify(
        &self,
        org: &OrgId,
        key: &str,
        read: Option<RawRead>,
        stamp: u64,
    ) -> Found<T> {
        let Some(read) = read else {
            return Found::Miss(String::new());
        };
        let id = format::write_id(&read.value);
        let env = match format::decode(&read.value) {
            Some(Stored::Value(env)) => env,
            Some(Stored::Tombstone) => return Found::Miss(id),
            None => {
                self.counters.decode_failures.inc();
                return Found::Miss(id);
            }
        };
        // A tag bumped since the write (or lost) makes the value unusable, even as stale.
        let valid = env.tags.len() == read.tag_versions.len()
            && env
                .tags
                .iter()
                .zip(&read.tag_versions)
                .all(|((_, stored), current)| stored == current);
        if !valid {
            return Found::Miss(id);
        }
        let tags: Vec<&str> = env.tags.iter().map(|(t, _)| *t).collect();
        if self
            .cache
            .inner
            .pending
            .covers(org, self.data_type.as_str(), key, &tags)
        {
            return Found::Miss(id);
        }
        let value: T = match serde_json::from_slice(env.payload) {
            Ok(v) => v,
            Err(e) => {
                self.counters.decode_failures.inc();
                tracing::debug!(error = %e, data_type = %self.data_type, "cached value does not decode; treated as a miss");
                return Found::Miss(id);
            }
        };
        let value = Arc::new(value);
        let now_unix = now_ms();
        if now_unix < env.fresh_until_ms {
            let now = Instant::now();
            let fresh_until = now + Duration::from_millis(env.fresh_until_ms - now_unix);
            let refresh_at = self.refresh_point(env.created_ms, env.fresh_until_ms, now_unix, now);
            self.l1_insert(org, key, &tags, &value, fresh_until, refresh_at, stamp);
            Found::Fresh(value, Meta { refresh_at })
        } else if self.policy.keeps_stale()
            && now_unix
                < env
                    .fresh_until_ms
                    .saturating_add(self.policy.stale_for.as_millis() as u64)
        {
            Found::Stale(value, id)
        } else {
            Found::Miss(id)
        }
    }

    /// Reads the store once and classifies what it holds.
    pub(crate) async fn lookup(&self, org: &OrgId, key: &str) -> Found<T> {
        let stamp = self.stamp();
        let entry = EntryRef::new(org, &self.data_type, key);
        let store = &self.cache.inner.store;
        match self.cache.call("read", || store.read(entry)).await {
            Ok(read) => self.classify(org, key, read, stamp),
            Err(e) => {
                self.counters.fail_open.inc();
                tracing::debug!(error = %e, data_type = %self.data_type, "cache read failed; treated as a miss");
                Found::Unavailable
            }
        }
    }

    /// The fresh value of `key`, or `None`. Never fails because of the store: a store that is
    /// down or slow, or a value that no longer decodes, is a miss (counted).
    pub async fn get(&self, org: &OrgId, key: &str) -> Result<Option<Arc<T>>> {
        // The L1 only holds validated keys (compared in full), so an invalid one misses there
        // and is refused below.
        if let Some((v, _)) = self.l1_get(org, key, Instant::now()) {
            return Ok(Some(v));
        }
        validate_key_segment("cache key", key)?;
        match self.lookup(org, key).await {
            Found::Fresh(v, _) => {
                self.counters.hits_l2.inc();
                Ok(Some(v))
            }
            _ => {
                self.counters.misses.inc();
                Ok(None)
            }
        }
    }

    /// The fresh values of several keys of one tenant, in order: the L1 first, then one store
    /// round trip for the rest (on Redis Cluster too: a tenant's keys share a slot).
    pub async fn get_many<S: AsRef<str>>(
        &self,
        org: &OrgId,
        keys: &[S],
    ) -> Result<Vec<Option<Arc<T>>>> {
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        for key in &keys {
            validate_key_segment("cache key", key)?;
        }
        let now = Instant::now();
        let mut out: Vec<Option<Arc<T>>> = keys
            .iter()
            .map(|k| self.l1_get(org, k, now).map(|(v, _)| v))
            .collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|i| out[*i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let stamp = self.stamp();
        let wanted: Vec<&str> = missing.iter().map(|i| keys[*i]).collect();
        let store = &self.cache.inner.store;
        let data_type = &self.data_type;
        match self
            .cache
            .call("read", || store.read_many(org, data_type, &wanted))
            .await
        {
            Ok(reads) => {
                for (i, read) in missing.into_iter().zip(reads) {
                    if let Found::Fresh(v, _) = self.classify(org, keys[i], read, stamp) {
                        self.counters.hits_l2.inc();
                        out[i] = Some(v);
                    } else {
                        self.counters.misses.inc();
                    }
                }
            }
            Err(e) => {
                self.counters.fail_open.inc();
                tracing::debug!(error = %e, "cache read failed; treated as misses");
                for _ in &missing {
                    self.counters.misses.inc();
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn encode(
        &self,
        value: &T,
        tags: &[(String, String)],
        fresh: Duration,
    ) -> Result<(Vec<u8>, Instant)> {
        let payload = serde_json::to_vec(value).map_err(|source| Error::Encode {
            data_type: self.data_type.to_string(),
            source,
        })?;
        let now = now_ms();
        let fresh_until = now.saturating_add(fresh.as_millis() as u64);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let bytes = format::encode(&id, now, fresh_until, tags, &payload);
        if bytes.len() > self.policy.max_value_bytes {
            return Err(Error::TooLarge {
                data_type: self.data_type.to_string(),
                size: bytes.len(),
                limit: self.policy.max_value_bytes,
            });
        }
        Ok((bytes, Instant::now() + fresh))
    }

    pub(crate) fn key_notice(&self, org: &OrgId, key: &str) -> String {
        notice(
            &self.cache.inner.instance,
            'k',
            std::iter::once(EntryRef::new(org, &self.data_type, key).logical()),
        )
    }

    fn bump_local_key(&self, org: &OrgId, key: &str) {
        if let Some(l1) = &self.cache.inner.l1 {
            l1.bump([l1.key_slot(org.as_str(), self.data_type.as_str(), key)]);
        }
    }

    fn queue_key(&self, org: &OrgId, key: &str) {
        let inner = &self.cache.inner;
        inner.pending.add_key(org, self.data_type.as_str(), key);
        inner.stats.queued(1);
        inner.stats.pending(inner.pending.len());
        self.cache.ensure_replay();
    }

    /// Stores `value` under `key` with `tags`, and tells other instances' L1s to drop the key.
    ///
    /// Concurrent sets of one key resolve to the store's value everywhere: the L1 of the
    /// writer is not filled by `set` (its next read takes the store's value). If one of the
    /// tags is invalidated between this call's first store round trip and its write, the value
    /// is not stored (counted as `writes_discarded`). On a store failure the error is returned
    /// and a delete of the key is queued for replay, so the store never keeps serving the
    /// value this call replaced.
    pub async fn set<S: AsRef<str>>(
        &self,
        org: &OrgId,
        key: &str,
        value: &T,
        tags: &[S],
    ) -> Result<()> {
        let req = self.request(org, key, tags)?;
        let entry = EntryRef::new(org, &self.data_type, key);
        let store = &self.cache.inner.store;
        let tag_refs = req.tag_refs();
        let res = async {
            let prep = self
                .cache
                .call("prepare", || store.prepare(entry, &tag_refs))
                .await?;
            let (fresh, hard) = self.policy.ttls();
            let pairs: Vec<(String, String)> =
                req.tags.iter().cloned().zip(prep.tag_versions).collect();
            let (bytes, _) = self.encode(value, &pairs, fresh)?;
            let notice = self.key_notice(org, key);
            let write = Write::new(bytes, hard).tags(&pairs).notice(&notice);
            self.cache.call("write", || store.write(entry, write)).await
        }
        .await;
        self.bump_local_key(org, key);
        match res {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.counters.writes_discarded.inc();
                Ok(())
            }
            Err(e) => {
                if e.is_store_unavailable() {
                    self.queue_key(org, key);
                }
                Err(e)
            }
        }
    }

    /// Removes `key` (leaving a tombstone for [`CacheOptions::tombstone_ttl`], so that a load
    /// that read the entry before cannot write back), and tells other instances' L1s to drop
    /// it. On a store failure the delete is queued for replay and this process treats the key
    /// as a miss meanwhile.
    ///
    /// [`CacheOptions::tombstone_ttl`]: crate::CacheOptions::tombstone_ttl
    pub async fn delete(&self, org: &OrgId, key: &str) -> Result<()> {
        validate_key_segment("cache key", key)?;
        let entry = EntryRef::new(org, &self.data_type, key);
        let notice = self.key_notice(org, key);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let write = Write::new(
            format::tombstone(&id),
            self.cache.inner.options.tombstone_ttl,
        )
        .notice(&notice);
        let store = &self.cache.inner.store;
        let res = self
            .cache
            .call("delete", || store.write(entry, write))
            .await;
        if let Err(e) = &res
            && e.is_store_unavailable()
        {
            self.queue_key(org, key);
        }
        self.bump_local_key(org, key);
        res.map(|_| ())
    }

    /// Invalidates every entry of this data type of one tenant in O(1) (its implicit tag).
    pub async fn clear(&self, org: &OrgId) -> Result<()> {
        let tag = self.type_tag.clone();
        self.cache.invalidate_raw(org, &[&tag]).await
    }
}
