//! Loads: [`CacheEntry::get_or_load`] (the loader may borrow and runs in the caller's task),
//! [`CacheEntry::get_or_load_owned`] (an owned loader that may finish in the background:
//! stale-while-revalidate, soft timeouts, refresh-ahead) and [`CacheEntry::reload`] (warming).
//! The sharing rule that keeps every path fresh is in `flight.rs`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use windlass_core::OrgId;

use crate::entry::{CacheEntry, Found, Req};
use crate::error::LoadError;
use crate::flight::{Failure, Leader, Outcome, Role, State};
use crate::store::{EntryRef, Expect, Prepared, Write};

/// What a waiter got.
enum Waited<T, E> {
    Value(Arc<T>),
    Failed(Failure<E>),
    /// The soft timeout passed (the caller has a stale value to serve).
    Soft,
    /// The hard timeout passed.
    Hard,
    /// Nothing usable for this caller (abandoned, or valid only for earlier arrivals): look
    /// again.
    Retry,
}

impl<E> From<Failure<E>> for LoadError<E> {
    fn from(f: Failure<E>) -> Self {
        match f {
            Failure::Loader(e) => LoadError::Loader(e),
            Failure::TimedOut(after) => LoadError::TimedOut { after },
            Failure::Panicked => LoadError::Panicked,
        }
    }
}

impl<T> CacheEntry<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The value of `key`, loading it with `loader` on a miss and storing it with `tags`.
    ///
    /// The loader may borrow from the caller (`|| db.invoice(&id)`); it runs in the caller's
    /// task, at most once per call.
    /// - **One load per key** in this process: concurrent callers wait for it (a caller whose
    ///   loader is still unused takes over if the load is abandoned: cancelled, panicked, timed
    ///   out).
    /// - **Never stale:** whatever this returns was valid after the call started, with respect
    ///   to every invalidation that returned before it started (see `flight.rs` for how loads
    ///   are shared; tag versions are taken *before* the loader runs and the write happens only
    ///   if none moved, atomically, so a load that raced an invalidation or a delete is
    ///   returned to the callers that arrived before it started and never stored).
    /// - Stale values (see [`TypePolicy`](crate::TypePolicy)): served at once to callers that
    ///   find another caller loading (stale-while-revalidate), or when the load fails or
    ///   times out (fail-safe), or past the soft timeout while waiting for another caller's
    ///   load. The caller that loads waits for its own loader (it cannot go on without it);
    ///   use [`CacheEntry::get_or_load_owned`] to let loads finish in the background.
    /// - Bounded: no caller waits longer than the hard timeout; the loader is dropped then.
    /// - The store being down or slow makes this a plain call of the loader (counted as
    ///   fail-open); nothing is written then.
    ///
    /// Errors: [`LoadError::Loader`] with the loader's own error, [`LoadError::TimedOut`],
    /// [`LoadError::Panicked`], [`LoadError::Cache`] for invalid input.
    pub async fn get_or_load<F, Fut, E, S>(
        &self,
        org: &OrgId,
        key: &str,
        tags: &[S],
        loader: F,
    ) -> Result<Arc<T>, LoadError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Send + Sync + 'static,
        S: AsRef<str>,
    {
        let req = self.request(org, key, tags)?;
        let started = Instant::now();
        let deadline = started + self.policy.hard_timeout;
        let ticket = self.cache.inner.flights.ticket();
        if let Some((v, _)) = self.l1_get(org, key, started) {
            return Ok(v);
        }
        let mut found = self.lookup(org, key).await;
        self.count_first(&found);
        let mut loader = Some(loader);
        let flight_key = self.flight_key::<E>(&req);
        loop {
            let (stale, seen) = match found {
                Found::Fresh(v, _) => return Ok(v),
                Found::Stale(v, id) => (Some(v), Some(id)),
                Found::Miss(id) => (None, Some(id)),
                Found::Unavailable => (None, None),
            };
            if Instant::now() >= deadline {
                return self.fail(Failure::TimedOut(self.policy.hard_timeout), stale);
            }
            let rx = match self.cache.inner.flights.join_or_lead::<T, E>(&flight_key) {
                Role::Leader(leader) => {
                    let Some(loader) = loader.take() else {
                        // Unreachable: a caller returns after leading once.
                        drop(leader);
                        return Err(LoadError::Panicked);
                    };
                    let (result, valid_below) = self
                        .run_load(&req, loader, deadline, false, seen.as_deref())
                        .await;
                    leader.finish(Outcome {
                        result: clone_result(&result),
                        valid_below,
                    });
                    return match result {
                        Ok(v) => Ok(v),
                        Err(f) => self.fail(f, stale),
                    };
                }
                Role::Waiter(rx) => rx,
            };
            if let Some(r) = self.follow(rx, ticket, deadline, stale).await {
                return r;
            }
            found = self.lookup(org, key).await;
        }
    }

    /// Like [`CacheEntry::get_or_load`], with an owned loader that runs in a task of its own,
    /// so a load can outlive its callers (up to the hard timeout):
    /// - stale-while-revalidate serves the stale value to every caller, the first included,
    ///   while one background load refreshes it;
    /// - past the soft timeout a caller with a stale value gets it, and the load goes on and
    ///   stores its result (FusionCache's "background factory completion");
    /// - refresh-ahead ([`TypePolicy::refresh_ahead`](crate::TypePolicy::refresh_ahead)): a
    ///   hit on a value near the end of its TTL starts one background load.
    pub async fn get_or_load_owned<F, Fut, E, S>(
        &self,
        org: &OrgId,
        key: &str,
        tags: &[S],
        loader: F,
    ) -> Result<Arc<T>, LoadError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Send + Sync + 'static,
        S: AsRef<str>,
    {
        let req = self.request(org, key, tags)?;
        let started = Instant::now();
        let deadline = started + self.policy.hard_timeout;
        let ticket = self.cache.inner.flights.ticket();
        let flight_key = self.flight_key::<E>(&req);
        let mut loader = Some(loader);
        let refresh_due = |at: Option<Instant>| at.is_some_and(|at| at <= Instant::now());
        if let Some((v, meta)) = self.l1_get(org, key, started) {
            if refresh_due(meta.refresh_at) {
                self.refresh_in_background(&req, &flight_key, &mut loader);
            }
            return Ok(v);
        }
        let mut found = self.lookup(org, key).await;
        self.count_first(&found);
        loop {
            let (stale, seen) = match found {
                Found::Fresh(v, meta) => {
                    if refresh_due(meta.refresh_at) {
                        self.refresh_in_background(&req, &flight_key, &mut loader);
                    }
                    return Ok(v);
                }
                Found::Stale(v, id) => (Some(v), Some(id)),
                Found::Miss(id) => (None, Some(id)),
                Found::Unavailable => (None, None),
            };
            if Instant::now() >= deadline {
                return self.fail(Failure::TimedOut(self.policy.hard_timeout), stale);
            }
            let rx = match self.cache.inner.flights.join_or_lead::<T, E>(&flight_key) {
                Role::Leader(leader) => match loader.take() {
                    Some(loader) => {
                        let rx = leader.subscribe();
                        self.spawn_load(req.clone(), leader, loader, deadline, seen);
                        if stale.is_some() {
                            self.counters.refreshes.inc();
                        }
                        rx
                    }
                    None => {
                        // Our own background load was lost (runtime shutting down).
                        drop(leader);
                        return self.fail(Failure::Panicked, stale);
                    }
                },
                Role::Waiter(rx) => rx,
            };
            if let Some(r) = self.follow(rx, ticket, deadline, stale).await {
                return r;
            }
            found = self.lookup(org, key).await;
        }
    }

    /// Loads `key` again whatever the cache holds, stores the result (if no write, delete or
    /// invalidation of its tags came in between) and tells other instances' L1s to drop their
    /// copy. For warming on update events (see [`InvalidationRules`](crate::InvalidationRules)).
    pub async fn reload<F, Fut, E, S>(
        &self,
        org: &OrgId,
        key: &str,
        tags: &[S],
        loader: F,
    ) -> Result<Arc<T>, LoadError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Send + Sync + 'static,
        S: AsRef<str>,
    {
        let req = self.request(org, key, tags)?;
        let deadline = Instant::now() + self.policy.hard_timeout;
        let ticket = self.cache.inner.flights.ticket();
        let flight_key = self.flight_key::<E>(&req);
        let mut loader = Some(loader);
        loop {
            match self.cache.inner.flights.join_or_lead::<T, E>(&flight_key) {
                Role::Leader(leader) => {
                    let Some(loader) = loader.take() else {
                        drop(leader);
                        return Err(LoadError::Panicked);
                    };
                    let (result, valid_below) =
                        self.run_load(&req, loader, deadline, true, None).await;
                    leader.finish(Outcome {
                        result: clone_result(&result),
                        valid_below,
                    });
                    return result.map_err(Into::into);
                }
                Role::Waiter(rx) => match self.wait(rx, ticket, deadline, false).await {
                    Waited::Value(v) => return Ok(v),
                    Waited::Failed(f) => return Err(f.into()),
                    Waited::Soft | Waited::Hard => {
                        return Err(LoadError::TimedOut {
                            after: self.policy.hard_timeout,
                        });
                    }
                    Waited::Retry => {}
                },
            }
        }
    }

    /// What a caller that does not lead does with a flight: serve its own stale value at once
    /// (stale-while-revalidate: someone is refreshing it), or wait for the outcome within its
    /// deadlines. `None`: nothing usable for this caller, look again.
    async fn follow<E: Send + Sync + 'static>(
        &self,
        rx: watch::Receiver<State<T, E>>,
        ticket: u64,
        deadline: Instant,
        stale: Option<Arc<T>>,
    ) -> Option<Result<Arc<T>, LoadError<E>>> {
        if let Some(s) = &stale
            && self.policy.stale_while_revalidate
        {
            // Read by this caller, after its call began.
            self.counters.stale_served.inc();
            return Some(Ok(s.clone()));
        }
        match self.wait(rx, ticket, deadline, stale.is_some()).await {
            Waited::Value(v) => Some(Ok(v)),
            Waited::Failed(f) => Some(self.fail(f, stale)),
            Waited::Soft => Some(self.soft(stale)),
            Waited::Hard => {
                self.counters.hard_timeouts.inc();
                Some(self.fail(Failure::TimedOut(self.policy.hard_timeout), stale))
            }
            Waited::Retry => None,
        }
    }

    fn count_first(&self, found: &Found<T>) {
        match found {
            Found::Fresh(..) => self.counters.hits_l2.inc(),
            _ => self.counters.misses.inc(),
        }
    }

    fn fail<E>(&self, f: Failure<E>, stale: Option<Arc<T>>) -> Result<Arc<T>, LoadError<E>> {
        match stale {
            Some(s) if self.policy.fail_safe => {
                self.counters.stale_served.inc();
                tracing::warn!(data_type = %self.data_type, "cache load failed; serving the stale value (fail-safe)");
                Ok(s)
            }
            _ => Err(f.into()),
        }
    }

    fn soft<E>(&self, stale: Option<Arc<T>>) -> Result<Arc<T>, LoadError<E>> {
        self.counters.soft_timeouts.inc();
        match stale {
            Some(s) => {
                self.counters.stale_served.inc();
                Ok(s)
            }
            // `wait` only reports a soft timeout to callers with a stale value.
            None => Err(LoadError::TimedOut {
                after: self.policy.soft_timeout.unwrap_or(self.policy.hard_timeout),
            }),
        }
    }

    /// Waits for a flight's outcome, within the caller's deadlines.
    async fn wait<E: Send + Sync + 'static>(
        &self,
        mut rx: watch::Receiver<State<T, E>>,
        ticket: u64,
        deadline: Instant,
        has_stale: bool,
    ) -> Waited<T, E> {
        let soft = match (has_stale && self.policy.fail_safe, self.policy.soft_timeout) {
            (true, Some(after)) => Some(Instant::now() + after),
            _ => None,
        };
        loop {
            match rx.borrow_and_update().clone() {
                State::Done(o) => {
                    return match o.result {
                        Ok(v) if ticket < o.valid_below => Waited::Value(v),
                        Ok(_) => Waited::Retry,
                        Err(f) => Waited::Failed(f),
                    };
                }
                State::Abandoned => return Waited::Retry,
                State::Loading => {}
            }
            let until = soft.map_or(deadline, |s| s.min(deadline));
            match tokio::time::timeout_at(until.into(), rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Waited::Retry,
                Err(_) if soft.is_some_and(|s| s < deadline) => return Waited::Soft,
                Err(_) => return Waited::Hard,
            }
        }
    }

    /// Starts a background load for refresh-ahead unless one runs already.
    fn refresh_in_background<F, Fut, E>(
        &self,
        req: &Req,
        flight_key: &crate::flight::FlightKey,
        loader: &mut Option<F>,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        if self.cache.inner.flights.in_progress(flight_key) {
            return;
        }
        if let Role::Leader(leader) = self.cache.inner.flights.join_or_lead::<T, E>(flight_key)
            && let Some(loader) = loader.take()
        {
            self.counters.refreshes.inc();
            let deadline = Instant::now() + self.policy.hard_timeout;
            self.spawn_load(req.clone(), leader, loader, deadline, None);
        }
    }

    fn spawn_load<F, Fut, E>(
        &self,
        req: Req,
        leader: Leader<T, E>,
        loader: F,
        deadline: Instant,
        seen: Option<String>,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            let (result, valid_below) = this
                .run_load(&req, loader, deadline, false, seen.as_deref())
                .await;
            leader.finish(Outcome {
                result,
                valid_below,
            });
        });
    }

    /// One load: prepare (tag versions and write id, before the loader runs), the loader under
    /// the hard deadline, then the guarded write. Returns the result and its `valid_below`.
    ///
    /// `seen`: the write id the caller's lookup saw. When the entry changed since (another
    /// load or a set landed between that lookup and this flight), it is read again and, if
    /// fresh, taken instead of loading.
    async fn run_load<F, Fut, E>(
        &self,
        req: &Req,
        loader: F,
        deadline: Instant,
        notify: bool,
        seen: Option<&str>,
    ) -> (Result<Arc<T>, Failure<E>>, u64)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let flights = &self.cache.inner.flights;
        let stamp = self.stamp();
        let entry = EntryRef::new(&req.org, &self.data_type, &req.key);
        let store = &self.cache.inner.store;
        let tag_refs = req.tag_refs();
        let prep = match self
            .cache
            .call("prepare", || store.prepare(entry, &tag_refs))
            .await
        {
            Ok(p) => {
                if seen.is_some_and(|s| s != p.write_id) {
                    let at = flights.ticket();
                    if let Found::Fresh(v, _) = self.lookup(&req.org, &req.key).await {
                        return (Ok(v), at);
                    }
                }
                Some(p)
            }
            Err(e) => {
                self.counters.fail_open.inc();
                tracing::debug!(error = %e, "cache store unavailable; loading without caching");
                None
            }
        };
        self.counters.loads.inc();
        // The loader reads its data after this ticket: valid for every earlier arrival.
        let loaded_at = flights.ticket();
        let started = Instant::now();
        let run = AssertUnwindSafe(async move { loader().await }).catch_unwind();
        let res = tokio::time::timeout_at(deadline.into(), run).await;
        self.counters.record_load(started.elapsed());
        let value = match res {
            Ok(Ok(Ok(v))) => Arc::new(v),
            Ok(Ok(Err(e))) => {
                self.counters.load_errors.inc();
                return (Err(Failure::Loader(Arc::new(e))), loaded_at);
            }
            Ok(Err(_)) => {
                self.counters.load_errors.inc();
                tracing::error!(data_type = %self.data_type, "cache loader panicked");
                return (Err(Failure::Panicked), loaded_at);
            }
            Err(_) => {
                self.counters.load_errors.inc();
                self.counters.hard_timeouts.inc();
                tracing::warn!(data_type = %self.data_type, after = ?self.policy.hard_timeout, "cache loader timed out; abandoned");
                return (Err(Failure::TimedOut(self.policy.hard_timeout)), loaded_at);
            }
        };
        let valid_below = match prep {
            Some(prep) => self
                .store_loaded(req, &value, prep, stamp, notify)
                .await
                .unwrap_or(loaded_at),
            None => loaded_at,
        };
        (Ok(value), valid_below)
    }

    /// The guarded write of a loaded value; `Some(ticket)` taken before a write the store
    /// accepted.
    async fn store_loaded(
        &self,
        req: &Req,
        value: &Arc<T>,
        prep: Prepared,
        stamp: u64,
        notify: bool,
    ) -> Option<u64> {
        let tag_refs = req.tag_refs();
        if self
            .cache
            .inner
            .pending
            .covers(&req.org, self.data_type.as_str(), &req.key, &tag_refs)
        {
            return None;
        }
        let (fresh, hard) = self.policy.ttls();
        let pairs: Vec<(String, String)> =
            req.tags.iter().cloned().zip(prep.tag_versions).collect();
        let (bytes, fresh_until) = match self.encode(value, &pairs, fresh) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "loaded value returned but not cached");
                return None;
            }
        };
        let notice = notify.then(|| self.key_notice(&req.org, &req.key));
        let mut write = Write::new(bytes, hard)
            .expect(Expect::WriteId(prep.write_id))
            .tags(&pairs)
            .not_after_ms(prep.now_ms.saturating_add(self.cache.write_window_ms()));
        if let Some(n) = &notice {
            write = write.notice(n);
        }
        let entry = EntryRef::new(&req.org, &self.data_type, &req.key);
        let store = &self.cache.inner.store;
        // Accepted means no invalidation of these tags landed between prepare and here.
        let written_at = self.cache.inner.flights.ticket();
        match self.cache.call("write", || store.write(entry, write)).await {
            Ok(true) => {
                if notify && let Some(l1) = &self.cache.inner.l1 {
                    l1.bump([l1.key_slot(req.org.as_str(), self.data_type.as_str(), &req.key)]);
                }
                let refresh_at = self
                    .policy
                    .refresh_ahead
                    .map(|f| Instant::now() + fresh.mul_f64(f));
                self.l1_insert(
                    &req.org,
                    &req.key,
                    &tag_refs,
                    value,
                    fresh_until,
                    refresh_at,
                    stamp,
                );
                Some(written_at)
            }
            Ok(false) => {
                self.counters.writes_discarded.inc();
                None
            }
            Err(e) => {
                self.counters.fail_open.inc();
                tracing::debug!(error = %e, "cache write failed; value returned uncached");
                None
            }
        }
    }
}

fn clone_result<T, E>(r: &Result<Arc<T>, Failure<E>>) -> Result<Arc<T>, Failure<E>> {
    match r {
        Ok(v) => Ok(v.clone()),
        Err(f) => Err(f.clone()),
    }
}
