//! A relay as its own process: Postgres outbox -> Redis Streams. The fault tests run it to
//! `kill -9` it between publish and mark and to freeze it (SIGSTOP) past its lease.
//!
//! ```text
//! cargo run -p windlass-outbox --features postgres --example windlass-outbox-relay-proc -- \
//!     postgres://postgres@127.0.0.1/app redis://127.0.0.1:6379 windlass \
//!     [--lease-ms 2000] [--stall-after-publish forever|<ms>]
//! ```
//!
//! - `--stall-after-publish forever`: the first batch is published, `PUBLISHED <n>` printed,
//!   then the publish never returns (the relay is "between publish and mark").
//! - `--stall-after-publish <ms>`: same, but the publish returns after `<ms>` (a test freezes
//!   the process meanwhile, past its lease, then resumes it: its mark must be refused).
//!
//! Every round that claimed something prints `ROUND claimed=<n> published=<n> lease_lost=<n>`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{Event, Publisher, Topic};
use windlass_outbox::postgres::PgOutboxStore;
use windlass_outbox::{Relay, RelayOptions};

/// Publishes through the inner publisher, then (once) announces it and stalls.
struct StallAfterPublish<P> {
    inner: P,
    stalled: AtomicBool,
    stall: Option<Duration>,
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
            match self.stall {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
        }
        Ok(())
    }
}

fn flag(rest: &[String], name: &str) -> Option<String> {
    rest.iter()
        .position(|a| a == name)
        .and_then(|i| rest.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, redis, prefix, rest @ ..] = args.as_slice() else {
        anyhow::bail!(
            "usage: windlass-outbox-relay-proc <postgres-url> <redis-url> <stream-prefix> \
             [--lease-ms N] [--stall-after-publish forever|<ms>]"
        );
    };
    let lease = Duration::from_millis(flag(rest, "--lease-ms").map_or(Ok(30_000), |v| v.parse())?);
    let stall = flag(rest, "--stall-after-publish").map(|v| {
        if v == "forever" {
            None
        } else {
            Some(Duration::from_millis(
                v.parse().expect("--stall-after-publish <ms>"),
            ))
        }
    });
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(db)
        .await?;
    let store = PgOutboxStore::new(pool);
    let bus = RedisBus::connect(RedisConfig::new(redis.as_str()).prefix(prefix.as_str())).await?;
    let publisher: Arc<dyn Publisher> = match stall {
        Some(stall) => Arc::new(StallAfterPublish {
            inner: bus,
            stalled: AtomicBool::new(false),
            stall,
        }),
        None => Arc::new(bus),
    };
    let options = RelayOptions::default()
        .lease(lease)
        .publish_timeout((lease / 4).max(Duration::from_millis(100)))
        .poll_interval(Duration::from_millis(100))
        .batch_size(10)
        .maintenance(false);
    let relay = Relay::from_arcs(Arc::new(store), Arc::new(publisher)).with_options(options);
    println!("READY");
    std::io::stdout().flush().ok();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    while !stop.is_cancelled() {
        match relay.run_once().await {
            Ok(r) if r.claimed > 0 => {
                println!(
                    "ROUND claimed={} published={} lease_lost={}",
                    r.claimed, r.published, r.lease_lost
                );
                std::io::stdout().flush().ok();
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => {
                eprintln!("round failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}
