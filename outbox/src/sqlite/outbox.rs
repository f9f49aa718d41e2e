//! The write side on SQLite.

use std::sync::Arc;

use sqlx::{Row, SqliteConnection};
use windlass_core::Topic;
use windlass_eventbus::Event;

use super::{check, now_ms};
use crate::config::{Destination, OutboxConfig};
use crate::error::{Error, Result};
use crate::write::{destination_names, prepare};

/// Writes events into the SQLite outbox inside the caller's transaction. See
/// [`postgres::Outbox`](crate::postgres::Outbox) for the contract; SQLite needs no key lock
/// (one writer at a time).
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: OutboxConfig,
    insert_event: Arc<str>,
    insert_delivery: Arc<str>,
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

    /// An outbox writing to the tables `config` names.
    pub fn with_config(config: OutboxConfig) -> Result<Self> {
        check(&config)?;
        let t = config.qualified_table();
        let d = config.qualified_delivery_table();
        let insert_event = format!(
            "INSERT INTO {t} (org_id, topic, partition_key, event_type, destinations, event, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING seq"
        );
        let insert_delivery = format!(
            "INSERT INTO {d} (seq, destination, tenant, topic, partition_key, next_attempt_at) \
             SELECT ?1, value, ?2, ?3, ?4, ?5 FROM json_each(?6)"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                doorbell: crate::wake::doorbell(&config.channel()),
                config,
                insert_event: insert_event.into(),
                insert_delivery: insert_delivery.into(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    /// Adds `event` for `topic` in the caller's transaction; returns the row's `seq`.
    pub async fn enqueue(
        &self,
        conn: &mut SqliteConnection,
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

    /// [`Outbox::enqueue`] to the given destinations.
    pub async fn enqueue_to(
        &self,
        conn: &mut SqliteConnection,
        topic: &Topic,
        event: &Event,
        destinations: &[Destination],
    ) -> Result<i64> {
        let seq =
            crate::otel::enqueue(topic, 1, self.insert(conn, topic, event, destinations)).await?;
        crate::wake::ring(&self.inner.doorbell);
        Ok(seq)
    }

    /// Adds several events for one topic, in order. Every event is checked first.
    pub async fn enqueue_batch(
        &self,
        conn: &mut SqliteConnection,
        topic: &Topic,
        events: &[Event],
    ) -> Result<Vec<i64>> {
        for e in events {
            prepare(topic, e, &self.inner.config)?;
        }
        let seqs = crate::otel::enqueue(topic, events.len(), async {
            let mut seqs = Vec::with_capacity(events.len());
            for e in events {
                seqs.push(
                    self.insert(
                        &mut *conn,
                        topic,
                        e,
                        self.inner.config.destinations_for(topic),
                    )
                    .await?,
                );
            }
            Ok::<_, crate::Error>(seqs)
        })
        .await?;
        crate::wake::ring(&self.inner.doorbell);
        Ok(seqs)
    }

    async fn insert(
        &self,
        conn: &mut SqliteConnection,
        topic: &Topic,
        event: &Event,
        destinations: &[Destination],
    ) -> Result<i64> {
        let p = prepare(topic, event, &self.inner.config)?;
        let names = destination_names(destinations);
        let now = now_ms();
        let row = sqlx::query(sqlx::AssertSqlSafe(self.inner.insert_event.clone()))
            .bind(&p.org_id)
            .bind(topic.as_str())
            .bind(&p.partition_key)
            .bind(&p.event_type)
            .bind(names.join(","))
            .bind(&p.json)
            .bind(now)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| Error::db("enqueue", e))?;
        let seq: i64 = row.try_get(0).map_err(|e| Error::db("enqueue", e))?;
        if !names.is_empty() {
            let json = serde_json::to_string(&names).map_err(|e| Error::db("enqueue", e))?;
            sqlx::query(sqlx::AssertSqlSafe(self.inner.insert_delivery.clone()))
                .bind(seq)
                .bind(p.org_id.unwrap_or_default())
                .bind(topic.as_str())
                .bind(p.partition_key)
                .bind(now)
                .bind(json)
                .execute(&mut *conn)
                .await
                .map_err(|e| Error::db("enqueue", e))?;
        }
        Ok(seq)
    }
}
