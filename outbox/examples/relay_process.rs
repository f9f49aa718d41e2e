//! A relay as its own process: Postgres outbox -> Redis Streams.
//!
//! ```text
//! cargo run -p windlass-outbox --features postgres --example relay_process -- \
//!     postgres://postgres@127.0.0.1/app redis://127.0.0.1:6379 windlass [--stall-after-publish]
//! ```
//!
//! With `--stall-after-publish` the relay publishes its first batch, prints `PUBLISHED <n>` and
//! then hangs before marking the rows: the fault tests `kill -9` it there and check that
//! the next relay publishes the batch again and the inbox drops the duplicates.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{Event, Publisher, Topic};
use windlass_outbox::postgres::PgStore;
use windlass_outbox::{OutboxConfig, Relay, RelayOptions};

/// Publishes through the inner publisher, then (once) announces it and hangs.
struct StallAfterPublish<P> {
    inner: P,
    stalled: AtomicBool,
}

#[async_trait]
impl<P: Publisher> Publisher for StallAfterPublish<P> {
    async fn publish(&self, topic: &Topic, event: &Event) -> windlass_eventbus::Result<()> {
        self.publish_batch(topic, std::slice::from_ref(event)).await
    }

    async fn publish_batch(
        &self,
        topic: &Topic,
        events: &[Event],
    ) -> windlass_eventbus::Result<()> {
        self.inner.publish_batch(topic, events).await?;
        if !self.stalled.swap(true, Ordering::SeqCst) {
            println!("PUBLISHED {}", events.len());
            std::io::stdout().flush().ok();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, redis, prefix, rest @ ..] = args.as_slice() else {
        anyhow::bail!(
            "usage: relay_process <postgres-url> <redis-url> <stream-prefix> [--stall-after-publish]"
        );
    };
    let stall = rest.iter().any(|a| a == "--stall-after-publish");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(db)
        .await?;
    let store = PgStore::new(pool, OutboxConfig::default())?;
    let bus = RedisBus::connect(RedisConfig::new(redis.as_str()).prefix(prefix.as_str())).await?;
    let options = RelayOptions::default().poll_interval(std::time::Duration::from_millis(200));
    let token = tokio_util::sync::CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    println!("READY");
    std::io::stdout().flush().ok();
    if stall {
        let publisher = Arc::new(StallAfterPublish {
            inner: bus,
            stalled: AtomicBool::new(false),
        });
        Relay::from_arcs(Arc::new(store), publisher)
            .with_options(options)
            .run(token)
            .await;
    } else {
        Relay::new(store, bus)
            .with_options(options)
            .run(token)
            .await;
    }
    Ok(())
}
