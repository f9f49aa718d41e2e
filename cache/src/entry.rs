//! [`CacheEntry<T>`]: the typed view of one data type (get, set, delete, get_or_load) and its
//! [`TypePolicy`] (TTL with jitter, stale grace, L1 use, size limit).

use std::any::{Any, TypeId};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use windlass_core::{BoxError, Name, OrgId, validate_key_segment};

use crate::cache::{Cache, FlightValue, check_tags, notice};
use crate::error::{Error, LoadError, Result};
use crate::format::{self, Stored};
use crate::l1::{key_guard, tag_guard};
use crate::stats::TypeCounters;
use crate::store::{EntryRef, Expect, Write};

/// How a data type is cached.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TypePolicy {
    /// How long a value is fresh.
    pub ttl: Duration,
    /// Fraction of the TTL taken away at random (`0.0..=1.0`), so values written together do
    /// not all expire together.
    pub jitter: f64,
    /// How long a value stays usable as *stale* after its TTL (by stale-while-revalidate or
    /// fail-safe). Zero: a value is gone at its TTL. Invalidated values are never stale, they are
    /// gone.
    pub stale_for: Duration,
    /// Serve a stale value at once and refresh it in the background.
    pub stale_while_revalidate: bool,
    /// Serve a stale value when the loader fails.
    pub fail_safe: bool,
    /// Keep decoded values of this type in the L1 (when the cache has one).
    pub l1: bool,
    /// Largest encoded value stored, in bytes.
    pub max_value_bytes: usize,
    /// How many times `get_or_load` loads again when an invalidation raced its load (the
    /// generation guard refused its write) before it returns the value without caching it.
    pub max_reloads: u32,
}

impl Default for TypePolicy {
    /// 5 minutes, 10% jitter, no stale values, L1 on, 1 MiB, 2 reloads.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            jitter: 0.1,
            stale_for: Duration::ZERO,
            stale_while_revalidate: false,
            fail_safe: false,
            l1: true,
            max_value_bytes: 1 << 20,
            max_reloads: 2,
        }
    }
}

impl TypePolicy {
    /// The default policy with this TTL.
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            ..Self::default()
        }
    }
    /// Sets the jitter fraction (clamped to `0.0..=1.0`).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }
    /// Turns fail-safe on: when the loader fails, a value up to `grace` past its TTL is served.
    pub fn fail_safe(mut self, grace: Duration) -> Self {
        self.fail_safe = true;
        self.stale_for = self.stale_for.max(grace);
        self
    }
    /// Turns stale-while-revalidate on: a value up to `window` past its TTL is served at once
    /// while one background load refreshes it.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = true;
        self.stale_for = self.stale_for.max(window);
        self
    }
    /// Keeps this type out of the L1.
    pub fn without_l1(mut self) -> Self {
        self.l1 = false;
        self
    }
    /// Sets the largest encoded value stored.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }
    /// Sets how many times a load raced by an invalidation is retried.
    pub fn max_reloads(mut self, n: u32) -> Self {
        self.max_reloads = n;
        self
    }

    fn keeps_stale(&self) -> bool {
        (self.stale_while_revalidate || self.fail_safe) && !self.stale_for.is_zero()
    }

    /// (fresh TTL with jitter, TTL the store keeps the value).
    fn ttls(&self) -> (Duration, Duration) {
        let cut = if self.jitter > 0.0 {
            rand::rng().random_range(0.0..=self.jitter)
        } else {
            0.0
        };
        let fresh = self.ttl.mul_f64(1.0 - cut).max(Duration::from_millis(1));
        let hard = if self.keeps_stale() {
            fresh + self.stale_for
        } else {
            fresh
        };
        (fresh, hard)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The outcome of a flight for its callers; `None` keeps what they got already (a stale value
/// served by stale-while-revalidate is not replaced by a failed refresh's error).
fn finish<T: Send + Sync + 'static>(
    served_stale: bool,
    outcome: std::result::Result<Arc<T>, LoadError>,
) -> Option<FlightValue> {
    if outcome.is_err() && served_stale {
        return None;
    }
    Some(outcome.map(|v| v as Arc<dyn Any + Send + Sync>))
}

/// Removes a flight from the table when its task ends, however it ends.
struct Landing {
    cache: Cache,
    key: crate::cache::FlightKey,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut flights = self
            .cache
            .inner
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        flights.remove(&self.key);
    }
}

/// What a store lookup found.
enum Found<T> {
    Fresh(Arc<T>),
    Stale(Arc<T>, String),
    /// Nothing usable; the write id a guarded write must expect.
    Miss(String),
    /// The store failed or timed out.
    Unavailable,
}

/// The typed view of one data type of a [`Cache`]: `T` is stored as JSON in an envelope that
/// carries the format version, the creation time and the versions of the entry's tags.
///
/// Keys are scoped by tenant ([`OrgId`]) and data type: two tenants never see each other's
/// entries or tags. Cheap to clone.
pub struct CacheEntry<T> {
    pub(crate) cache: Cache,
    pub(crate) data_type: Name,
    pub(crate) policy: TypePolicy,
    pub(crate) counters: Arc<TypeCounters>,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T> Clone for CacheEntry<T> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            data_type: self.data_type.clone(),
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

impl<T> CacheEntry<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
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

    fn uses_l1(&self) -> bool {
        self.policy.l1 && self.cache.inner.l1.is_some()
    }

    fn l1_get(&self, logical: &str) -> Option<T> {
        if !self.uses_l1() {
            return None;
        }
        let l1 = self.cache.inner.l1.as_ref()?;
        let entry = l1.get(logical)?;
        if now_ms() >= entry.fresh_until_ms {
            return None;
        }
        let value = entry.value.clone().downcast::<T>().ok()?;
        self.counters.hits_l1.inc();
        Some((*value).clone())
    }

    fn stamp(&self) -> u64 {
        self.cache
            .inner
            .l1
            .as_ref()
            .map(|l1| l1.stamp())
            .unwrap_or(0)
    }

    fn l1_insert(
        &self,
        org: &OrgId,
        key: &str,
        value: Arc<T>,
        fresh_until_ms: u64,
        tags: &[&str],
        stamp: u64,
    ) {
        if !self.uses_l1() {
            return;
        }
        let Some(l1) = &self.cache.inner.l1 else {
            return;
        };
        let logical = EntryRef::new(org, &self.data_type, key).logical();
        let mut guards = Vec::with_capacity(tags.len() + 1);
        guards.push(key_guard(&logical));
        guards.extend(tags.iter().map(|t| tag_guard(org, t)));
        l1.insert(logical, value, fresh_until_ms, guards, stamp);
    }

    /// Reads the store once and classifies what it holds.
    /// `quiet`: a first look that will be repeated; failures are counted by the second one.
    async fn lookup(&self, org: &OrgId, key: &str, stamp: u64, quiet: bool) -> Found<T> {
        let entry = EntryRef::new(org, &self.data_type, key);
        let read = match self
            .cache
            .timed("read", self.cache.inner.store.read(entry))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if !quiet {
                    self.counters.fail_open.inc();
                }
                tracing::debug!(error = %e, data_type = %self.data_type, "cache read failed; treated as a miss");
                return Found::Unavailable;
            }
        };
        let Some(read) = read else {
            return Found::Miss(String::new());
        };
        let write_id = format::write_id(&read.value);
        let env = match format::decode(&read.value) {
            Some(Stored::Value(env)) => env,
            Some(Stored::Tombstone) => return Found::Miss(write_id),
            None => {
                if !quiet {
                    self.counters.decode_failures.inc();
                }
                return Found::Miss(write_id);
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
            return Found::Miss(write_id);
        }
        let value: T = match serde_json::from_slice(env.payload) {
            Ok(v) => v,
            Err(e) => {
                if !quiet {
                    self.counters.decode_failures.inc();
                }
                tracing::debug!(error = %e, data_type = %self.data_type, "cached value does not decode; treated as a miss");
                return Found::Miss(write_id);
            }
        };
        let value = Arc::new(value);
        if now_ms() < env.fresh_until_ms {
            let tags: Vec<&str> = env.tags.iter().map(|(t, _)| *t).collect();
            self.l1_insert(org, key, value.clone(), env.fresh_until_ms, &tags, stamp);
            Found::Fresh(value)
        } else if self.policy.keeps_stale()
            && now_ms() < env.fresh_until_ms + self.policy.stale_for.as_millis() as u64
        {
            Found::Stale(value, write_id)
        } else {
            Found::Miss(write_id)
        }
    }

    /// The fresh value of `key`, or `None`. Never fails because of the store: a store that is
    /// down or slow, or a value that no longer decodes, is a miss (counted).
    pub async fn get(&self, org: &OrgId, key: &str) -> Result<Option<T>> {
        validate_key_segment("cache key", key)?;
        if self.uses_l1()
            && let Some(v) = self.l1_get(&EntryRef::new(org, &self.data_type, key).logical())
        {
            return Ok(Some(v));
        }
        let stamp = self.stamp();
        match self.lookup(org, key, stamp, false).await {
            Found::Fresh(v) => {
                self.counters.hits_l2.inc();
                Ok(Some((*v).clone()))
            }
            _ => {
                self.counters.misses.inc();
                Ok(None)
            }
        }
    }

    fn encode(
        &self,
        value: &T,
        tags: &[(String, String)],
        fresh: Duration,
    ) -> Result<(Vec<u8>, u64)> {
        let payload = serde_json::to_vec(value).map_err(|source| Error::Encode {
            data_type: self.data_type.to_string(),
            source,
        })?;
        let now = now_ms();
        let fresh_until = now + fresh.as_millis() as u64;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let bytes = format::encode(&id, now, fresh_until, tags, &payload);
        if bytes.len() > self.policy.max_value_bytes {
            return Err(Error::TooLarge {
                data_type: self.data_type.to_string(),
                size: bytes.len(),
                limit: self.policy.max_value_bytes,
            });
        }
        Ok((bytes, fresh_until))
    }

    /// Stores `value` under `key` with `tags`, and tells other instances' L1s to drop the key.
    ///
    /// Errors: [`Error::TooLarge`], invalid names, and store failures (which the caller may
    /// ignore: the next read is then a miss or the old value until its TTL). If one of the tags
    /// is invalidated while this call runs, the value is not stored (a later read loads it).
    pub async fn set(&self, org: &OrgId, key: &str, value: &T, tags: &[&str]) -> Result<()> {
        validate_key_segment("cache key", key)?;
        check_tags(tags)?;
        let (fresh, hard) = self.policy.ttls();
        let stamp = self.stamp();
        let versions = self
            .cache
            .timed(
                "tag_versions",
                self.cache.inner.store.tag_versions(org, tags),
            )
            .await?;
        let pairs: Vec<(String, String)> =
            tags.iter().map(|t| (*t).to_owned()).zip(versions).collect();
        let (bytes, fresh_until) = self.encode(value, &pairs, fresh)?;
        let entry = EntryRef::new(org, &self.data_type, key);
        let logical = entry.logical();
        let notice = notice(
            &self.cache.inner.instance,
            'k',
            std::iter::once(logical.clone()),
        );
        let write = Write {
            value: bytes,
            ttl: hard,
            expect: Expect::Any,
            tags: &pairs,
            notice: Some(&notice),
        };
        let res = self
            .cache
            .timed("write", self.cache.inner.store.write(entry, write))
            .await;
        if let Some(l1) = &self.cache.inner.l1 {
            l1.bump([key_guard(&logical)]);
        }
        if res? {
            // Stamped after our own key bump, so it is not shadowed by it; but only if none of
            // its tags was invalidated since before the write (that value is already stale).
            if let Some(l1) = &self.cache.inner.l1 {
                let after = l1.stamp();
                let tag_guards: Vec<u64> = tags.iter().map(|t| tag_guard(org, t)).collect();
                if l1.unchanged_since(&tag_guards, stamp) {
                    self.l1_insert(org, key, Arc::new(value.clone()), fresh_until, tags, after);
                }
            }
        } else {
            self.counters.writes_discarded.inc();
        }
        Ok(())
    }

    /// Removes `key` (leaving a short-lived tombstone so that a load that started earlier
    /// cannot write back), and tells other instances' L1s to drop it.
    pub async fn delete(&self, org: &OrgId, key: &str) -> Result<()> {
        validate_key_segment("cache key", key)?;
        let entry = EntryRef::new(org, &self.data_type, key);
        let logical = entry.logical();
        let notice = notice(
            &self.cache.inner.instance,
            'k',
            std::iter::once(logical.clone()),
        );
        let id = uuid::Uuid::new_v4().simple().to_string();
        let write = Write {
            value: format::tombstone(&id),
            ttl: self.cache.inner.options.tombstone_ttl,
            expect: Expect::Any,
            tags: &[],
            notice: Some(&notice),
        };
        let res = self
            .cache
            .timed("delete", self.cache.inner.store.write(entry, write))
            .await;
        if let Some(l1) = &self.cache.inner.l1 {
            l1.bump([key_guard(&logical)]);
        }
        res.map(|_| ())
    }

    /// The value of `key`, loading it with `loader` on a miss and storing it with `tags`.
    ///
    /// - One loader runs per key in this process; concurrent callers share its result (the load
    ///   runs in its own task, so a caller that gives up does not cancel it for the others).
    /// - Generation guard: the tag versions are taken *before* the loader runs and the write
    ///   happens only if they (and the entry) are unchanged, so a value loaded before an
    ///   invalidation or a delete is never stored; the load is then run again (up to
    ///   [`TypePolicy::max_reloads`] times).
    /// - A stale value (see [`TypePolicy`]) is served at once with stale-while-revalidate, or
    ///   when the loader fails with fail-safe.
    /// - The store being down or slow makes this a plain call of the loader (counted as
    ///   fail-open); nothing is written then.
    /// - A loaded value over [`TypePolicy::max_value_bytes`] (or that does not serialize) is
    ///   returned but not stored, with a warning.
    ///
    /// Errors: [`Error::Load`] when the loader fails and no stale value may be served; invalid
    /// names.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        org: &OrgId,
        key: &str,
        tags: &[&str],
        loader: F,
    ) -> Result<T>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        validate_key_segment("cache key", key)?;
        check_tags(tags)?;
        let logical = EntryRef::new(org, &self.data_type, key).logical();
        if let Some(v) = self.l1_get(&logical) {
            return Ok(v);
        }
        // Hits are served without the flight table; anything else is looked at again inside
        // the flight (another flight may have just written it).
        if let Found::Fresh(v) = self.lookup(org, key, self.stamp(), true).await {
            self.counters.hits_l2.inc();
            return Ok((*v).clone());
        }
        let flight_key = (TypeId::of::<T>(), logical);
        let mut rx = {
            let mut flights = self
                .cache
                .inner
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match flights.get(&flight_key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(flight_key.clone(), rx.clone());
                    let this = self.clone();
                    let org = org.clone();
                    let key = key.to_owned();
                    let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
                    let loader = move || {
                        let fut = loader();
                        async move { fut.await.map_err(LoadError::new) }
                    };
                    tokio::spawn(async move {
                        // Removes the flight even if the loader panics.
                        let landing = Landing {
                            cache: this.cache.clone(),
                            key: flight_key,
                        };
                        let outcome = this.fly(&org, &key, &tags, loader, &tx).await;
                        // Leave the table before publishing the outcome, so a caller that
                        // arrives later starts a flight of its own instead of taking it.
                        drop(landing);
                        if let Some(outcome) = outcome {
                            let _ = tx.send(Some(outcome));
                        }
                    });
                    rx
                }
            }
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            // The flight task died (panicked loader): report it as a load error.
            Err(_) => Some(Err(LoadError::new(
                "the cache loader panicked or was aborted",
            ))),
        };
        match outcome {
            Some(Ok(v)) => v.downcast::<T>().map(|v| (*v).clone()).map_err(|_| {
                Error::Config(format!(
                    "data type {} is used with two Rust types",
                    self.data_type
                ))
            }),
            Some(Err(e)) => Err(Error::Load(e)),
            None => Err(Error::Load(LoadError::new(
                "the cache loader finished without a result",
            ))),
        }
    }

    /// The body of one flight: read, then load and write as needed, sending the caller-visible
    /// outcome as soon as it is known (a stale-while-revalidate refresh goes on after it).
    async fn fly<L, Fut>(
        &self,
        org: &OrgId,
        key: &str,
        tags: &[String],
        loader: L,
        tx: &watch::Sender<Option<FlightValue>>,
    ) -> Option<FlightValue>
    where
        L: Fn() -> Fut + Send + Sync,
        Fut: Future<Output = std::result::Result<T, LoadError>> + Send,
    {
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        // Once a stale value went out (stale-while-revalidate), a failed refresh must not
        // replace it with an error for callers that join later.
        let mut served_stale = false;
        let mut stamp = self.stamp();
        let mut found = self.lookup(org, key, stamp, false).await;
        let mut stale = None;
        let mut expect = match found {
            Found::Fresh(v) => {
                self.counters.hits_l2.inc();
                return finish(served_stale, Ok(v));
            }
            Found::Stale(v, id) => {
                if self.policy.stale_while_revalidate {
                    self.counters.stale_served.inc();
                    served_stale = true;
                    let _ = tx.send(Some(Ok(v.clone() as Arc<dyn Any + Send + Sync>)));
                }
                stale = Some(v);
                Some(id)
            }
            Found::Miss(id) => Some(id),
            Found::Unavailable => None,
        };
        if stale.is_none() || !self.policy.stale_while_revalidate {
            self.counters.misses.inc();
        }
        let mut attempt = 0;
        loop {
            // Tag versions before the load: the write below only lands if none moved.
            let mut versions = None;
            if expect.is_some() {
                match self
                    .cache
                    .timed(
                        "tag_versions",
                        self.cache.inner.store.tag_versions(org, &tags),
                    )
                    .await
                {
                    Ok(v) => versions = Some(v),
                    Err(e) => {
                        self.counters.fail_open.inc();
                        tracing::debug!(error = %e, "cache tag versions unavailable; loading without caching");
                    }
                }
            }
            self.counters.loads.inc();
            let started = Instant::now();
            let loaded = loader().await;
            self.counters.record_load(started.elapsed());
            let value = match loaded {
                Ok(v) => Arc::new(v),
                Err(e) => {
                    self.counters.load_errors.inc();
                    match stale {
                        Some(stale) if self.policy.fail_safe => {
                            if !self.policy.stale_while_revalidate {
                                self.counters.stale_served.inc();
                            }
                            tracing::warn!(error = %e, data_type = %self.data_type, "cache loader failed; serving the stale value (fail-safe)");
                            return finish(served_stale, Ok(stale));
                        }
                        _ => return finish::<T>(served_stale, Err(e)),
                    }
                }
            };
            let (Some(expected), Some(versions)) = (expect.clone(), versions) else {
                return finish(served_stale, Ok(value));
            };
            let pairs: Vec<(String, String)> =
                tags.iter().map(|t| (*t).to_owned()).zip(versions).collect();
            let (fresh, hard) = self.policy.ttls();
            let (bytes, fresh_until) = match self.encode(&value, &pairs, fresh) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "loaded value not cached");
                    return finish(served_stale, Ok(value));
                }
            };
            let entry = EntryRef::new(org, &self.data_type, key);
            let write = Write {
                value: bytes,
                ttl: hard,
                expect: Expect::WriteId(expected),
                tags: &pairs,
                notice: None,
            };
            match self
                .cache
                .timed("write", self.cache.inner.store.write(entry, write))
                .await
            {
                Ok(true) => {
                    self.l1_insert(org, key, value.clone(), fresh_until, &tags, stamp);
                    return finish(served_stale, Ok(value));
                }
                Ok(false) => {
                    self.counters.writes_discarded.inc();
                    if attempt >= self.policy.max_reloads {
                        return finish(served_stale, Ok(value));
                    }
                    attempt += 1;
                    stamp = self.stamp();
                    found = self.lookup(org, key, stamp, false).await;
                    expect = match found {
                        // Another writer stored a fresh value meanwhile: that one wins.
                        Found::Fresh(v) => return finish(served_stale, Ok(v)),
                        Found::Stale(_, id) | Found::Miss(id) => Some(id),
                        Found::Unavailable => return finish(served_stale, Ok(value)),
                    };
                }
                Err(e) => {
                    self.counters.fail_open.inc();
                    tracing::debug!(error = %e, "cache write failed; value returned uncached");
                    return finish(served_stale, Ok(value));
                }
            }
        }
    }
}
