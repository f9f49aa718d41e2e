//! The outbox with no server at all: SQLite in memory, the in-process bus, an inbox consumer.
//!
//! ```text
//! cargo run -p windlass-outbox --features sqlite --example sqlite_quickstart
//! ```
//! `outbox_demo` is what the workspace quickstart runs.

use std::sync::Arc;
use std::time::Duration;

use windlass_eventbus::{Event, Group, MemoryBus, SubscribeOptions, Subscriber, Topic};
use windlass_outbox::sqlite::{Inbox, Outbox, SqliteStore, migrate};
use windlass_outbox::{OutboxConfig, Relay, RelayOptions};

/// An order and its event committed together in SQLite; the relay publishes it to the memory
/// bus; a consumer with the inbox keeps a projection, once per event.
pub async fn outbox_demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // One connection: an in-memory SQLite database lives as long as its connection.
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await?;
    migrate(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE orders (id TEXT PRIMARY KEY, cents INTEGER NOT NULL);
         CREATE TABLE revenue (total INTEGER NOT NULL); INSERT INTO revenue VALUES (0);",
    )
    .execute(&pool)
    .await?;

    let bus = MemoryBus::new();
    let orders = Topic::new("orders")?;
    // Consumer: the inbox record and the projection update commit together.
    let projection = Inbox::new(pool.clone(), "revenue")?.handler(|tx, event| {
        Box::pin(async move {
            let cents: i64 = event.data_as()?.unwrap_or_default();
            sqlx::query("UPDATE revenue SET total = total + ?1")
                .bind(cents)
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
    });
    let sub = bus
        .subscribe(
            &orders,
            &Group::new("revenue")?,
            Arc::new(projection),
            SubscribeOptions::default(),
        )
        .await?;
    let relay = Relay::new(
        SqliteStore::new(pool.clone(), OutboxConfig::default())?,
        bus.clone(),
    )
    .with_options(RelayOptions::default().poll_interval(Duration::from_millis(20)))
    .spawn();

    // Producer: the order row and its event in one transaction.
    let outbox = Outbox::new(OutboxConfig::default())?;
    for (id, cents) in [("o-1", 1200i64), ("o-2", 800)] {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO orders VALUES (?1, ?2)")
            .bind(id)
            .bind(cents)
            .execute(&mut *tx)
            .await?;
        let placed = Event::builder("/shop", "order.placed")
            .subject(id)
            .data_json(&cents)
            .build()?;
        outbox.enqueue(&mut tx, &orders, &placed).await?;
        tx.commit().await?;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let total = loop {
        let total: i64 = sqlx::query_scalar("SELECT total FROM revenue")
            .fetch_one(&pool)
            .await?;
        if total == 2000 || tokio::time::Instant::now() > deadline {
            break total;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("outbox: 2 orders committed with their events, projected revenue {total} cents");
    relay.shutdown().await;
    sub.shutdown().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    outbox_demo().await
}
