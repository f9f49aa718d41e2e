//! The write side: events inserted in the caller's transaction.

use std::sync::Arc;

use sqlx::{PgConnection, Row};
use windlass_core::Topic;
use windlass_eventbus::Event;

use crate::config::{Destination, OutboxConfig};
use crate::error::{Error, Result};
use crate::write::{destination_names, prepare, table_lock_class};

/// Writes events into the outbox inside the caller's transaction.
///
/// Cheap to clone. Pass `&mut tx` (a `sqlx::Transaction<'_, Postgres>`) or any
/// `&mut PgConnection`: the event becomes visible to relays exactly when that transaction
/// commits, and never if it rolls back.
///
/// Everything the database could refuse is checked before any statement runs (size, and with
/// the optional jsonb column a `\u0000` escape), so a refused event leaves the transaction
/// usable. Writers of one ordering key are serialised until commit (a transaction-scoped
/// advisory lock, [`OutboxConfig::lock_keys`]): per key, publish order is enqueue order,
/// whatever the commit order. A transaction that enqueues several keys takes their locks in
/// the order it enqueues them; two transactions that enqueue the same keys in opposite orders
/// can deadlock (Postgres then aborts one), as with row locks: enqueue in a consistent order,
/// or use [`Outbox::enqueue_batch`], which locks its keys in a fixed order.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: OutboxConfig,
    lock_class: i32,
    one_locked: Arc<str>,
    one_unlocked: Arc<str>,
    many: Arc<str>,
    doorbell: Arc<tokio::sync::Notify>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbox {
    /// An outbox writing to the default tables, rows going to the `"default"` destination.
    pub fn new() -> Self {
        Self::with_config(OutboxConfig::default()).expect("the default config is valid")
    }

    /// An outbox writing to the tables `config` names. Fails when a name is invalid.
    pub fn with_config(config: OutboxConfig) -> Result<Self> {
        config.validate()?;
        let t = config.qualified_table();
        let d = config.qualified_delivery_table();
        let notify = if config.notify {
            format!(", n AS (SELECT pg_notify('{}', ''))", config.channel())
        } else {
            String::new()
        };
        let insert = |lock: &str, from: &str| {
            format!(
                "WITH {lock}e AS (INSERT INTO {t} (org_id, topic, partition_key, event_type, destinations, event) \
                   SELECT $1, $2, $3, $4, $5::text[], $6{from} RETURNING seq, org_id, topic, partition_key), \
                 d AS (INSERT INTO {d} (seq, destination, tenant, topic, partition_key) \
                   SELECT e.seq, x, coalesce(e.org_id, ''), e.topic, e.partition_key FROM e, unnest($5::text[]) AS x){notify} \
                 SELECT seq FROM e"
            )
        };
        let one_locked = insert(
            "l AS (SELECT pg_advisory_xact_lock($7::int4, $8::int4)), ",
            " FROM l",
        );
        let one_unlocked = insert("", "");
        // Locks first, in a fixed order (sorted ids), then the rows in input order.
        let many = format!(
            "WITH l AS (SELECT pg_advisory_xact_lock($7::int4, k) FROM unnest($8::int4[]) AS k), \
             e AS (INSERT INTO {t} (org_id, topic, partition_key, event_type, destinations, event) \
               SELECT u.org_id, $2, u.pk, u.ty, $5::text[], u.ev \
               FROM unnest($1::text[], $3::text[], $4::text[], $6::text[]) WITH ORDINALITY AS u(org_id, pk, ty, ev, ord) \
               WHERE (SELECT count(*) FROM l) >= 0 ORDER BY u.ord \
               RETURNING seq, org_id, topic, partition_key), \
             d AS (INSERT INTO {d} (seq, destination, tenant, topic, partition_key) \
               SELECT e.seq, x, coalesce(e.org_id, ''), e.topic, e.partition_key FROM e, unnest($5::text[]) AS x){notify} \
             SELECT seq FROM e ORDER BY seq"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                lock_class: table_lock_class(&t),
                doorbell: crate::wake::doorbell(&config.channel()),
                config,
                one_locked: one_locked.into(),
                one_unlocked: one_unlocked.into(),
                many: many.into(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    /// Adds `event` for `topic` in the caller's transaction, for the destinations of the topic's
    /// domain ([`OutboxConfig::destinations_for`]); returns the row's `seq`.
    ///
    /// Refused without touching the transaction: an event over
    /// [`OutboxConfig::max_event_size`] ([`Error::TooLarge`]) or one the table cannot store
    /// ([`Error::Unstorable`]).
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        topic: &Topic,
        event: &Event,
    ) -> Result<i64> {
        self.enqueue_to(
            conn,
            topic,
            event,
            self.inner.config.destinations_for(topic),
        )
        .await
    }

    /// [`Outbox::enqueue`] to the given destinations (each gets its own delivery state; none:
    /// the event table only).
    pub async fn enqueue_to(
        &self,
        conn: &mut PgConnection,
        topic: &Topic,
        event: &Event,
        destinations: &[Destination],
    ) -> Result<i64> {
        crate::otel::enqueue(topic, 1, self.insert_one(conn, topic, event, destinations)).await
    }

    async fn insert_one(
        &self,
        conn: &mut PgConnection,
        topic: &Topic,
        event: &Event,
        destinations: &[Destination],
    ) -> Result<i64> {
        let cfg = &self.inner.config;
        let p = prepare(topic, event, cfg)?;
        let sql = if p.lock.is_some() {
            &self.inner.one_locked
        } else {
            &self.inner.one_unlocked
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .persistent(cfg.prepared_statements)
            .bind(p.org_id)
            .bind(topic.as_str())
            .bind(p.partition_key)
            .bind(p.event_type)
            .bind(destination_names(destinations))
            .bind(p.json);
        if let Some(lock) = p.lock {
            q = q.bind(self.inner.lock_class).bind(lock);
        }
        let row = q
            .fetch_one(conn)
            .await
            .map_err(|e| Error::db("enqueue", e))?;
        crate::wake::ring(&self.inner.doorbell);
        row.try_get::<i64, _>(0)
            .map_err(|e| Error::db("enqueue", e))
    }

    /// Adds several events for one topic in one statement, in order, for the topic's
    /// destinations; returns their `seq`s. Every event is checked before anything is written;
    /// the keys' locks are taken in a fixed order.
    pub async fn enqueue_batch(
        &self,
        conn: &mut PgConnection,
        topic: &Topic,
        events: &[Event],
    ) -> Result<Vec<i64>> {
        self.enqueue_batch_to(
            conn,
            topic,
            events,
            self.inner.config.destinations_for(topic),
        )
        .await
    }

    /// [`Outbox::enqueue_batch`] to the given destinations.
    pub async fn enqueue_batch_to(
        &self,
        conn: &mut PgConnection,
        topic: &Topic,
        events: &[Event],
        destinations: &[Destination],
    ) -> Result<Vec<i64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        crate::otel::enqueue(
            topic,
            events.len(),
            self.insert_many(conn, topic, events, destinations),
        )
        .await
    }

    async fn insert_many(
        &self,
        conn: &mut PgConnection,
        topic: &Topic,
        events: &[Event],
        destinations: &[Destination],
    ) -> Result<Vec<i64>> {
        let cfg = &self.inner.config;
        let n = events.len();
        let (mut orgs, mut keys, mut types, mut jsons) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut locks = Vec::new();
        for event in events {
            let p = prepare(topic, event, cfg)?;
            orgs.push(p.org_id);
            keys.push(p.partition_key);
            types.push(p.event_type);
            jsons.push(p.json);
            locks.extend(p.lock);
        }
        locks.sort_unstable();
        locks.dedup();
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.inner.many.clone()))
            .persistent(cfg.prepared_statements)
            .bind(orgs)
            .bind(topic.as_str())
            .bind(keys)
            .bind(types)
            .bind(destination_names(destinations))
            .bind(jsons)
            .bind(self.inner.lock_class)
            .bind(locks)
            .fetch_all(conn)
            .await
            .map_err(|e| Error::db("enqueue", e))?;
        crate::wake::ring(&self.inner.doorbell);
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::db("enqueue", e))
    }
}
