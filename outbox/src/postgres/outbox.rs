//! The write side: events inserted in the caller's transaction.

use std::sync::Arc;

use sqlx::PgConnection;
use uuid::Uuid;
use windlass_eventbus::Event;

use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::write::prepare;

/// Writes events into the outbox table inside the caller's transaction.
///
/// Cheap to clone. Pass `&mut tx` (a `sqlx::Transaction<'_, Postgres>`) or any
/// `&mut PgConnection`: the event becomes visible to the relay exactly when that transaction
/// commits, and never if it rolls back.
///
/// Topic and size are checked before any statement runs, so a refused event leaves the
/// transaction usable.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: OutboxConfig,
    insert_one: Arc<str>,
    insert_many: Arc<str>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new(OutboxConfig::default()).expect("the default config is valid")
    }
}

impl Outbox {
    /// An outbox writing to the table `config` names. Fails when a name is invalid.
    pub fn new(config: OutboxConfig) -> Result<Self> {
        config.validate()?;
        let t = config.qualified_table();
        let (prefix, suffix) = if config.notify {
            ("WITH ins AS (", ") SELECT pg_notify($6, '')")
        } else {
            ("", "")
        };
        let insert_one = format!(
            "{prefix}INSERT INTO {t} (id, org_id, topic, partition_key, event) \
             VALUES ($1, $2, $3, $4, $5::jsonb){suffix}"
        );
        let insert_many = format!(
            "{prefix}INSERT INTO {t} (id, org_id, topic, partition_key, event) \
             SELECT u.id, u.org_id, $3, u.pk, u.ev::jsonb \
             FROM unnest($1::uuid[], $2::text[], $4::text[], $5::text[]) WITH ORDINALITY \
                  AS u(id, org_id, pk, ev, ord) ORDER BY u.ord{suffix}"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                insert_one: insert_one.into(),
                insert_many: insert_many.into(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    /// Adds `event` for `topic` in the caller's transaction; returns the outbox row id.
    ///
    /// Refused without touching the transaction: an invalid topic ([`Error::Name`]) or an
    /// event over [`OutboxConfig::max_event_size`] ([`Error::TooLarge`]).
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        topic: impl AsRef<str>,
        event: &Event,
    ) -> Result<Uuid> {
        let p = prepare(topic.as_ref(), event, self.inner.config.max_event_size)?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(self.inner.insert_one.clone()))
            .bind(p.id)
            .bind(p.org_id)
            .bind(p.topic.as_str())
            .bind(p.partition_key)
            .bind(p.json);
        if self.inner.config.notify {
            q = q.bind(self.inner.config.channel());
        }
        q.execute(conn).await.map_err(|e| Error::db("enqueue", e))?;
        Ok(p.id)
    }

    /// Adds several events for one topic in one statement, in order; returns their row ids.
    /// Every event is checked before anything is written.
    pub async fn enqueue_batch(
        &self,
        conn: &mut PgConnection,
        topic: impl AsRef<str>,
        events: &[Event],
    ) -> Result<Vec<Uuid>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(events.len());
        let mut orgs = Vec::with_capacity(events.len());
        let mut keys = Vec::with_capacity(events.len());
        let mut jsons = Vec::with_capacity(events.len());
        let mut topic_name = None;
        for event in events {
            let p = prepare(topic.as_ref(), event, self.inner.config.max_event_size)?;
            ids.push(p.id);
            orgs.push(p.org_id);
            keys.push(p.partition_key);
            jsons.push(p.json);
            topic_name.get_or_insert(p.topic);
        }
        let topic_name = topic_name.expect("events is not empty");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(self.inner.insert_many.clone()))
            .bind(&ids)
            .bind(orgs)
            .bind(topic_name.as_str())
            .bind(keys)
            .bind(jsons);
        if self.inner.config.notify {
            q = q.bind(self.inner.config.channel());
        }
        q.execute(conn).await.map_err(|e| Error::db("enqueue", e))?;
        Ok(ids)
    }
}
