//! [`SqlStore`]: the relay, maintenance and operator logic over a [`Backend`], once for every
//! SQL database.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use windlass_core::TenantScope;

use super::{Arg, Backend, ClaimArgs, Queries, Row, Sql, millis};
use crate::admin::{
    BlockedKey, Cursor, DeadEvent, DeadFilter, DeliveryRef, LeaderInfo, MAX_PAGE, OutboxStats,
    Page, TopicStats,
};
use crate::config::{DeadPolicy, Destination, OutboxConfig};
use crate::error::{Error, Result};
use crate::store::{Claim, ClaimRequest, ClaimedRow, Settled, Settlement};

/// Most tenants one claim serves (the rest get their turn in the next claims: the relay passes
/// the last tenant served back as [`ClaimRequest::after_tenant`]).
pub(crate) const MAX_TENANTS_PER_CLAIM: i64 = 64;

/// The store logic on one backend.
#[derive(Debug)]
pub(crate) struct SqlStore<B> {
    pub(crate) backend: B,
    pub(crate) queries: Queries,
    pub(crate) config: OutboxConfig,
    pub(crate) label: String,
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| Error::db(op, e)
}

fn tenant_arg(scope: &TenantScope) -> Arg {
    Arg::OptText(scope.org_id().map(|o| o.as_str().to_owned()))
}

fn time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(DateTime::from_timestamp_millis)
}

fn page_limit(limit: usize) -> i64 {
    limit.clamp(1, MAX_PAGE) as i64
}

fn cursor_args(after: Option<&Cursor>) -> [Arg; 2] {
    match after {
        Some(c) => [Arg::I64(c.seq), Arg::Text(c.destination.clone())],
        None => [Arg::I64(i64::MIN), Arg::Text(String::new())],
    }
}

fn filter_args(scope: &TenantScope, filter: &DeadFilter) -> [Arg; 3] {
    [
        tenant_arg(scope),
        Arg::OptText(filter.destination.as_ref().map(|d| d.as_str().to_owned())),
        Arg::OptText(filter.topic.clone()),
    ]
}

fn destination_of(name: String) -> Result<Destination> {
    Destination::new(name).map_err(Error::from)
}

impl<B: Backend> SqlStore<B> {
    pub(crate) fn new(backend: B, queries: Queries, config: OutboxConfig) -> Arc<Self> {
        Arc::new(Self {
            backend,
            queries,
            label: config.qualified_table(),
            config,
        })
    }

    pub(crate) async fn claim(&self, req: &ClaimRequest) -> Result<Claim> {
        let started = Instant::now();
        let batch = req.batch_size.max(1) as i64;
        let dest = req.destination.as_str().to_owned();
        let mut claim = Claim {
            destination: req.destination.clone(),
            token: 0,
            rows: Vec::new(),
            started,
            lease: req.lease,
            last_tenant: None,
        };
        let tenants = self.tenants(&dest, req.after_tenant.as_deref()).await?;
        if tenants.is_empty() {
            return Ok(claim);
        }
        // Rotate only when the list was cut: then the next claim starts after the last one.
        if tenants.len() as i64 >= MAX_TENANTS_PER_CLAIM {
            claim.last_tenant = tenants.last().cloned();
        }
        let t = tenants.len() as i64;
        let keys = req.max_keys.clamp(1, req.batch_size.max(1)) as i64;
        let per_tenant = ((keys * 4 + t - 1) / t).clamp(1, keys);
        claim.token = new_token();
        let rows = self
            .backend
            .claim_rows(ClaimArgs {
                destination: dest,
                token: claim.token,
                lease_ms: millis(req.lease),
                tenants,
                batch,
                keys: (req.max_keys.clamp(1, req.batch_size.max(1))) as i64,
                block: self.config.dead_policy.blocks(),
                per_tenant,
            })
            .await
            .map_err(db("claim"))?;
        claim.rows = rows
            .iter()
            .map(|r| -> Result<ClaimedRow, sqlx::Error> {
                Ok(ClaimedRow {
                    seq: r.i64(0)?,
                    topic: r.text(1)?,
                    partition_key: r.opt_text(2)?,
                    attempts: r.i64(3)?.clamp(0, u32::MAX as i64) as u32,
                    event: r.text(4)?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(db("claim"))?;
        Ok(claim)
    }

    /// Tenants with pending rows, at most [`MAX_TENANTS_PER_CLAIM`], starting after `after`
    /// and wrapping around to the first ones.
    async fn tenants(&self, dest: &str, after: Option<&str>) -> Result<Vec<String>> {
        let m = MAX_TENANTS_PER_CLAIM;
        let args = |bound: &str| {
            vec![
                Arg::Text(dest.to_owned()),
                Arg::Text(bound.to_owned()),
                Arg::I64(m),
            ]
        };
        let (first, after_q) = (&self.queries.tenants_first, &self.queries.tenants_after);
        let text = |rows: Vec<super::Row>| -> Result<Vec<String>> {
            rows.iter()
                .map(|r| r.text(0))
                .collect::<Result<_, _>>()
                .map_err(db("claim"))
        };
        let Some(after) = after else {
            return text(
                self.backend
                    .fetch(first, args(""))
                    .await
                    .map_err(db("claim"))?,
            );
        };
        let mut tenants = text(
            self.backend
                .fetch(after_q, args(after))
                .await
                .map_err(db("claim"))?,
        )?;
        if (tenants.len() as i64) < m {
            let from_start = self
                .backend
                .fetch(first, args(""))
                .await
                .map_err(db("claim"))?;
            for t in text(from_start)? {
                if (tenants.len() as i64) >= m || tenants.contains(&t) {
                    break;
                }
                let last = t == after;
                tenants.push(t);
                if last {
                    break;
                }
            }
        }
        Ok(tenants)
    }

    pub(crate) async fn settle(&self, claim: &Claim, s: &Settlement) -> Result<Settled> {
        if claim.rows.is_empty() {
            return Ok(Settled::default());
        }
        self.backend
            .settle(claim.destination.as_str(), claim.token, s)
            .await
            .map_err(db("mark"))
    }

    pub(crate) async fn has_pending(&self, destination: &Destination) -> Result<bool> {
        let rows = self
            .backend
            .fetch(
                &self.queries.has_pending,
                vec![Arg::Text(destination.as_str().to_owned())],
            )
            .await
            .map_err(db("has pending"))?;
        Ok(!rows.is_empty())
    }

    // ---------------------------------------------------------------- maintenance

    pub(crate) async fn lead(&self, holder: &str, lease: Duration) -> Result<bool> {
        let rows = self
            .backend
            .fetch(
                &self.queries.lead,
                vec![Arg::Text(holder.to_owned()), Arg::I64(millis(lease))],
            )
            .await
            .map_err(db("leader lease"))?;
        Ok(!rows.is_empty())
    }

    pub(crate) async fn resign(&self, holder: &str) -> Result<()> {
        self.backend
            .execute(&self.queries.resign, vec![Arg::Text(holder.to_owned())])
            .await
            .map_err(db("leader resign"))?;
        Ok(())
    }

    async fn delete_batch(
        &self,
        sql: &super::Sql,
        op: &'static str,
        age: Duration,
        limit: usize,
    ) -> Result<u64> {
        self.backend
            .execute(
                sql,
                vec![Arg::I64(millis(age)), Arg::I64(limit.max(1) as i64)],
            )
            .await
            .map_err(db(op))
    }

    pub(crate) async fn delete_delivered_before(&self, age: Duration, limit: usize) -> Result<u64> {
        self.delete_batch(&self.queries.retention, "retention", age, limit)
            .await
    }

    pub(crate) async fn purge_dead_before(&self, age: Duration, limit: usize) -> Result<u64> {
        self.delete_batch(&self.queries.purge_dead, "dead purge", age, limit)
            .await
    }

    pub(crate) async fn purge_inbox_before(&self, age: Duration, limit: usize) -> Result<u64> {
        self.delete_batch(&self.queries.purge_inbox, "inbox retention", age, limit)
            .await
    }

    pub(crate) async fn refresh_stats(&self) -> Result<()> {
        let statements = self
            .queries
            .refresh_stats
            .iter()
            .map(|(sql, takes_block)| {
                let args = if *takes_block {
                    vec![Arg::Bool(self.config.dead_policy.blocks())]
                } else {
                    Vec::new()
                };
                (sql.clone(), args)
            })
            .collect();
        self.backend
            .execute_all(statements)
            .await
            .map_err(db("refresh stats"))
    }

    // ---------------------------------------------------------------- operator API

    pub(crate) async fn stats(&self, scope: &TenantScope) -> Result<OutboxStats> {
        let rows = self
            .backend
            .fetch(&self.queries.read_stats, vec![tenant_arg(scope)])
            .await
            .map_err(db("stats"))?;
        let topics = rows
            .iter()
            .map(|r| -> Result<TopicStats, sqlx::Error> {
                Ok(TopicStats {
                    destination: r.text(0)?,
                    topic: r.text(1)?,
                    pending: r.i64(2)?.max(0) as u64,
                    dead: r.i64(3)?.max(0) as u64,
                    blocked_keys: r.i64(4)?.max(0) as u64,
                    oldest_pending_age: r
                        .opt_i64(5)?
                        .map(|ms| Duration::from_millis(ms.max(0) as u64)),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("stats"))?;
        let refreshed = self
            .backend
            .fetch(&self.queries.refreshed_at, Vec::new())
            .await
            .map_err(db("stats"))?;
        let refreshed_at = match refreshed.first() {
            Some(r) => time(r.opt_i64(0).map_err(db("stats"))?),
            None => None,
        };
        Ok(OutboxStats {
            topics,
            refreshed_at,
        })
    }

    /// One keyset page of an operator list: the scope and filter, the cursor, the page size.
    async fn fetch_page(
        &self,
        sql: &Sql,
        scope: &TenantScope,
        filter: &DeadFilter,
        after: Option<&Cursor>,
        limit: i64,
    ) -> Result<Vec<Row>, sqlx::Error> {
        let mut args: Vec<Arg> = filter_args(scope, filter).into();
        args.extend(cursor_args(after));
        args.push(Arg::I64(limit));
        self.backend.fetch(sql, args).await
    }

    pub(crate) async fn list_dead(
        &self,
        scope: &TenantScope,
        filter: &DeadFilter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<DeadEvent>> {
        let limit = page_limit(limit);
        let rows = self
            .fetch_page(&self.queries.list_dead, scope, filter, after, limit)
            .await
            .map_err(db("list dead"))?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let decoded = (|| -> Result<_, sqlx::Error> {
                Ok((
                    r.i64(0)?,
                    r.text(1)?,
                    r.text(2)?,
                    r.opt_text(3)?,
                    r.opt_text(4)?,
                    r.text(5)?,
                    r.i64(6)?,
                    r.opt_text(7)?,
                    r.opt_i64(8)?,
                    r.i64(9)?,
                ))
            })()
            .map_err(db("list dead"))?;
            let (seq, dest, topic, key, org, event, attempts, err, failed, created) = decoded;
            items.push(DeadEvent {
                delivery: DeliveryRef::new(seq, destination_of(dest)?),
                topic,
                partition_key: key,
                org_id: org,
                event,
                attempts: attempts.clamp(0, u32::MAX as i64) as u32,
                last_error: err,
                failed_at: time(failed),
                created_at: time(Some(created)).unwrap_or_default(),
            });
        }
        let next = next_cursor(&items, limit, |d: &DeadEvent| &d.delivery);
        Ok(Page { items, next })
    }

    pub(crate) async fn blocked_keys(
        &self,
        scope: &TenantScope,
        filter: &DeadFilter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<BlockedKey>> {
        if self.config.dead_policy == DeadPolicy::Skip {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let limit = page_limit(limit);
        let rows = self
            .fetch_page(&self.queries.blocked, scope, filter, after, limit)
            .await
            .map_err(db("blocked keys"))?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let decoded = (|| -> Result<_, sqlx::Error> {
                Ok((
                    r.i64(0)?,
                    r.text(1)?,
                    r.text(2)?,
                    r.text(3)?,
                    r.opt_text(4)?,
                    r.opt_text(5)?,
                    r.opt_i64(6)?,
                    r.i64(7)?,
                ))
            })()
            .map_err(db("blocked keys"))?;
            let (seq, dest, topic, key, org, err, failed, waiting) = decoded;
            items.push(BlockedKey {
                head: DeliveryRef::new(seq, destination_of(dest)?),
                topic,
                partition_key: key,
                org_id: org,
                last_error: err,
                failed_at: time(failed),
                waiting: waiting.max(0) as u64,
            });
        }
        let next = next_cursor(&items, limit, |b: &BlockedKey| &b.head);
        Ok(Page { items, next })
    }

    async fn act_on(
        &self,
        sql: &super::Sql,
        op: &'static str,
        scope: &TenantScope,
        deliveries: &[DeliveryRef],
    ) -> Result<u64> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let seqs = deliveries.iter().map(|d| d.seq).collect();
        let dests = deliveries
            .iter()
            .map(|d| d.destination.as_str().to_owned())
            .collect();
        self.backend
            .execute(
                sql,
                vec![tenant_arg(scope), Arg::I64s(seqs), Arg::Texts(dests)],
            )
            .await
            .map_err(db(op))
    }

    async fn act_on_all(
        &self,
        sql: &super::Sql,
        op: &'static str,
        scope: &TenantScope,
        filter: &DeadFilter,
    ) -> Result<u64> {
        self.backend
            .execute(sql, filter_args(scope, filter).into())
            .await
            .map_err(db(op))
    }

    pub(crate) async fn requeue(&self, scope: &TenantScope, d: &[DeliveryRef]) -> Result<u64> {
        let n = self
            .act_on(&self.queries.requeue, "requeue", scope, d)
            .await?;
        crate::metrics::requeued(n);
        Ok(n)
    }

    pub(crate) async fn requeue_all(&self, scope: &TenantScope, f: &DeadFilter) -> Result<u64> {
        let n = self
            .act_on_all(&self.queries.requeue_all, "requeue", scope, f)
            .await?;
        crate::metrics::requeued(n);
        Ok(n)
    }

    pub(crate) async fn skip(&self, scope: &TenantScope, d: &[DeliveryRef]) -> Result<u64> {
        let n = self.act_on(&self.queries.skip, "skip", scope, d).await?;
        crate::metrics::skipped(n);
        Ok(n)
    }

    pub(crate) async fn skip_all(&self, scope: &TenantScope, f: &DeadFilter) -> Result<u64> {
        let n = self
            .act_on_all(&self.queries.skip_all, "skip", scope, f)
            .await?;
        crate::metrics::skipped(n);
        Ok(n)
    }

    pub(crate) async fn leader(&self) -> Result<Option<LeaderInfo>> {
        let rows = self
            .backend
            .fetch(&self.queries.leader, Vec::new())
            .await
            .map_err(db("leader"))?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let holder = r.text(0).map_err(db("leader"))?;
        let expires = r.i64(1).map_err(db("leader"))?;
        Ok(Some(LeaderInfo {
            holder,
            expires_at: time(Some(expires)).unwrap_or_default(),
        }))
    }
}

fn next_cursor<T>(items: &[T], limit: i64, key: impl Fn(&T) -> &DeliveryRef) -> Option<Cursor> {
    if (items.len() as i64) < limit {
        return None;
    }
    items.last().map(|t| {
        let d = key(t);
        Cursor {
            seq: d.seq,
            destination: d.destination.as_str().to_owned(),
        }
    })
}

/// A fresh fencing token: random, positive. Fencing compares tokens for equality, so they need
/// only be unique, which 63 random bits are for any practical number of claims.
fn new_token() -> i64 {
    (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64
}

/// Implements the relay, maintenance and operator traits for a newtype around
/// `Arc<SqlStore<B>>` (field `inner`), delegating to the shared logic.
macro_rules! delegate_sql_store {
    ($store:ty, $waiter:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::OutboxStore for $store {
            type Waiter = $waiter;

            async fn claim(
                &self,
                request: &$crate::store::ClaimRequest,
            ) -> $crate::Result<$crate::store::Claim> {
                self.inner.claim(request).await
            }

            async fn settle(
                &self,
                claim: &$crate::store::Claim,
                settlement: &$crate::store::Settlement,
            ) -> $crate::Result<$crate::store::Settled> {
                self.inner.settle(claim, settlement).await
            }

            async fn waiter(&self, listen: bool) -> $crate::Result<$waiter> {
                self.make_waiter(listen).await
            }

            async fn has_pending(&self, destination: &$crate::Destination) -> $crate::Result<bool> {
                self.inner.has_pending(destination).await
            }

            fn dead_policy(&self) -> $crate::DeadPolicy {
                self.inner.config.dead_policy
            }

            fn label(&self) -> &str {
                &self.inner.label
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::OutboxMaintenance for $store {
            async fn lead(&self, holder: &str, lease: std::time::Duration) -> $crate::Result<bool> {
                self.inner.lead(holder, lease).await
            }
            async fn resign(&self, holder: &str) -> $crate::Result<()> {
                self.inner.resign(holder).await
            }
            async fn delete_delivered_before(
                &self,
                age: std::time::Duration,
                limit: usize,
            ) -> $crate::Result<u64> {
                self.inner.delete_delivered_before(age, limit).await
            }
            async fn purge_dead_before(
                &self,
                age: std::time::Duration,
                limit: usize,
            ) -> $crate::Result<u64> {
                self.inner.purge_dead_before(age, limit).await
            }
            async fn purge_inbox_before(
                &self,
                age: std::time::Duration,
                limit: usize,
            ) -> $crate::Result<u64> {
                self.inner.purge_inbox_before(age, limit).await
            }
            async fn refresh_stats(&self) -> $crate::Result<()> {
                self.inner.refresh_stats().await
            }
        }

        #[async_trait::async_trait]
        impl $crate::admin::OutboxAdmin for $store {
            async fn stats(
                &self,
                scope: &windlass_core::TenantScope,
            ) -> $crate::Result<$crate::admin::OutboxStats> {
                self.inner.stats(scope).await
            }
            async fn list_dead(
                &self,
                scope: &windlass_core::TenantScope,
                filter: &$crate::admin::DeadFilter,
                after: Option<&$crate::admin::Cursor>,
                limit: usize,
            ) -> $crate::Result<$crate::admin::Page<$crate::admin::DeadEvent>> {
                self.inner.list_dead(scope, filter, after, limit).await
            }
            async fn blocked_keys(
                &self,
                scope: &windlass_core::TenantScope,
                filter: &$crate::admin::DeadFilter,
                after: Option<&$crate::admin::Cursor>,
                limit: usize,
            ) -> $crate::Result<$crate::admin::Page<$crate::admin::BlockedKey>> {
                self.inner.blocked_keys(scope, filter, after, limit).await
            }
            async fn requeue(
                &self,
                scope: &windlass_core::TenantScope,
                deliveries: &[$crate::admin::DeliveryRef],
            ) -> $crate::Result<u64> {
                self.inner.requeue(scope, deliveries).await
            }
            async fn requeue_all(
                &self,
                scope: &windlass_core::TenantScope,
                filter: &$crate::admin::DeadFilter,
            ) -> $crate::Result<u64> {
                self.inner.requeue_all(scope, filter).await
            }
            async fn skip(
                &self,
                scope: &windlass_core::TenantScope,
                deliveries: &[$crate::admin::DeliveryRef],
            ) -> $crate::Result<u64> {
                self.inner.skip(scope, deliveries).await
            }
            async fn skip_all(
                &self,
                scope: &windlass_core::TenantScope,
                filter: &$crate::admin::DeadFilter,
            ) -> $crate::Result<u64> {
                self.inner.skip_all(scope, filter).await
            }
            async fn leader(&self) -> $crate::Result<Option<$crate::admin::LeaderInfo>> {
                self.inner.leader().await
            }
        }

        impl $store {
            /// Pending, dead and blocked counts per destination and topic (the operator
            /// counters; see [`OutboxAdmin::stats`](crate::OutboxAdmin::stats)).
            pub async fn stats(
                &self,
                scope: &windlass_core::TenantScope,
            ) -> $crate::Result<$crate::admin::OutboxStats> {
                self.inner.stats(scope).await
            }

            /// Recounts the operator counters now (what the maintenance leader does on its
            /// interval).
            pub async fn refresh_stats(&self) -> $crate::Result<()> {
                self.inner.refresh_stats().await
            }

            /// The configuration.
            pub fn config(&self) -> &$crate::OutboxConfig {
                &self.inner.config
            }
        }
    };
}

pub(crate) use delegate_sql_store;
