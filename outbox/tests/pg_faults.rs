//! Fault injection against real Postgres (and Redis): relays killed between publish and mark,
//! connections terminated mid-batch, several relays with a crash among them.
#![cfg(feature = "postgres")]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{Counting, Recorder, event, eventually};
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, mpsc};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{Event, Group, HandlerResult, MemoryBus, Publisher, SubscribeOptions, Subscriber, Topic};
use windlass_outbox::postgres::{Inbox, Outbox, PgStore, migrate};
use windlass_outbox::{OutboxConfig, OutboxStore, Relay, RelayOptions};
use windlass_testkit::postgres::fresh_database;

/// Publishes its first batch through `inner`, reports it, then hangs (never returns): the
/// relay is "between publish and mark".
struct StallAfterPublish<P> {
    inner: P,
    stalled: AtomicBool,
    published: mpsc::UnboundedSender<usize>,
}

#[async_trait]
impl<P: Publisher> Publisher for StallAfterPublish<P> {
    async fn publish(&self, topic: &Topic, event: &Event) -> windlass_eventbus::Result<()> {
        self.publish_batch(topic, std::slice::from_ref(event)).await
    }
    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> windlass_eventbus::Result<()> {
        self.inner.publish_batch(topic, events).await?;
        if !self.stalled.swap(true, Ordering::SeqCst) {
            let _ = self.published.send(events.len());
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

async fn projection(pool: &PgPool) {
    sqlx::query("CREATE TABLE projection (id text PRIMARY KEY, applied int NOT NULL)").execute(pool).await.unwrap();
}

/// The consumer's work: one projection row per event; `applied` counts applications.
fn apply(tx: &mut PgConnection, event: &Event) -> BoxFuture<'static, HandlerResult> {
    let id = event.id().to_owned();
    // Run the query on the borrowed connection before the returned future: keep it simple by
    // boxing an owned future around a raw pointer-free path (we await inside).
    let fut = sqlx::query(
        "INSERT INTO projection VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET applied = projection.applied + 1",
    )
    .bind(id)
    .execute(tx);
    let _ = fut;
    unreachable!()
}

async fn applied(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), coalesce(max(applied), 0)::bigint FROM projection")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn enqueue_all(pool: &PgPool, n: u64) -> Vec<String> {
    let outbox = Outbox::default();
    let mut ids = Vec::new();
    for i in 0..n {
        let mut tx = pool.begin().await.unwrap();
        let ev = event(&format!("k{}", i % 5), i);
        outbox.enqueue(&mut tx, "orders", &ev).await.unwrap();
        tx.commit().await.unwrap();
        ids.push(ev.id().to_owned());
    }
    ids
}
