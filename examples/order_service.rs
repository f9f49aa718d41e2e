//! Order service: an order row and its `order.placed` event committed in one transaction; the
//! outbox relay publishes to Redis Streams; a consumer with the inbox keeps a projection table
//! (revenue per customer) exactly once. Exits with an error if the projection does not reach
//! exactly the committed orders (and nothing of the rolled-back one) in time.
//!
//! ```text
//! cargo run --example order_service --features outbox-postgres,redis
//! ```
//! Uses `WINDLASS_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and
//! `WINDLASS_REDIS_URL` (default `redis://127.0.0.1:6379`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use windlass::eventbus::redis::{RedisBus, RedisConfig};
use windlass::eventbus::{Event, Group, SubscribeOptions, Subscriber, Topic};
use windlass::outbox::postgres::{Inbox, Outbox, PgOutboxStore, migrate};
use windlass::outbox::{Relay, RelayOptions};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Places an order: the business row and the event commit together, or neither does.
async fn place_order(
    pool: &PgPool,
    outbox: &Outbox,
    topic: &Topic,
    order_id: &str,
    customer: &str,
    cents: i64,
) -> Result<(), AnyError> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO orders (id, customer, cents) VALUES ($1, $2, $3)")
        .bind(order_id)
        .bind(customer)
        .bind(cents)
        .execute(&mut *tx)
        .await?;
    let placed = Event::builder("/orders", "order.placed")
        .subject(order_id)
        .partition_key(customer) // events of one customer stay in order
        .org_id("acme")
        .data_json(&serde_json::json!({ "order": order_id, "customer": customer, "cents": cents }))
        .build()?;
    outbox.enqueue(&mut tx, topic, &placed).await?;
    tx.commit().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let pg_url = std::env::var("WINDLASS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let redis_url =
        std::env::var("WINDLASS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&pg_url)
        .await?;
    migrate(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY, customer text NOT NULL, cents bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS customer_revenue (customer text PRIMARY KEY, orders bigint NOT NULL, cents bigint NOT NULL);",
    )
    .execute(&pool)
    .await?;

    // A fresh stream prefix per run keeps runs apart.
    let prefix = format!("order-service-{}", uuid_suffix());
    let bus =
        RedisBus::connect(RedisConfig::new(redis_url.as_str()).prefix(prefix.as_str())).await?;
    let topic = Topic::new("orders")?;

    // Relay: outbox -> Redis Streams (adaptive polling; wakes at once on enqueues of this
    // process).
    let store = PgOutboxStore::new(pool.clone());
    let relay = Relay::new(store.clone(), bus.clone())
        .with_options(RelayOptions::default())
        .spawn();

    // Consumer: the inbox record and the projection update commit together.
    let projection = Inbox::new(pool.clone(), "customer-revenue")?.handler(
        |mut tx, event, _ctx| async move {
            #[derive(serde::Deserialize)]
            struct Placed {
                customer: String,
                cents: i64,
            }
            let Some(p) = event
                .data_as::<Placed>()
                .map_err(windlass::eventbus::HandlerError::reject)?
            else {
                return Err(windlass::eventbus::HandlerError::reject(
                    "order.placed without data",
                ));
            };
            sqlx::query(
                "INSERT INTO customer_revenue VALUES ($1, 1, $2) ON CONFLICT (customer) DO UPDATE \
                 SET orders = customer_revenue.orders + 1, cents = customer_revenue.cents + EXCLUDED.cents",
            )
            .bind(&p.customer)
            .bind(p.cents)
            .execute(&mut *tx)
            .await?;
            Ok(tx)
        },
    );
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("customer-revenue")?,
            Arc::new(projection),
            SubscribeOptions::default(),
        )
        .await?;

    // The projection may hold earlier runs: compare against where it starts.
    let before: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(cents), 0)::bigint FROM customer_revenue")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
    let outbox = Outbox::default();
    let run = uuid_suffix();
    let mut expected = 0i64;
    for i in 0..20i64 {
        let customer = format!("cust-{}", i % 3);
        place_order(
            &pool,
            &outbox,
            &topic,
            &format!("{run}-{i}"),
            &customer,
            100 + i,
        )
        .await?;
        expected += 100 + i;
    }
    // A failed business transaction: no order, and no event either.
    {
        let mut tx = pool.begin().await?;
        let ghost = Event::builder("/orders", "order.placed")
            .subject("ghost")
            .data_json(
                &serde_json::json!({ "order": "ghost", "customer": "ghost", "cents": 1_000_000 }),
            )
            .build()?;
        outbox.enqueue(&mut tx, &topic, &ghost).await?;
        tx.rollback().await?;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let projected = loop {
        let projected: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(r.cents), 0)::bigint FROM customer_revenue r")
                .fetch_one(&pool)
                .await?;
        if projected - before >= expected || tokio::time::Instant::now() > deadline {
            break projected - before;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Let a late (wrong) delivery show up before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(r.cents), 0)::bigint FROM customer_revenue r")
            .fetch_one(&pool)
            .await?;
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT customer, orders, cents FROM customer_revenue ORDER BY customer")
            .fetch_all(&pool)
            .await?;
    for (customer, orders, cents) in rows {
        println!("{customer}: {orders} orders, {cents} cents in all");
    }
    store.refresh_stats().await?;
    println!(
        "outbox: {:?}",
        store.stats(&windlass::core::TenantScope::All).await?
    );

    sub.shutdown().await?;
    relay.shutdown().await;
    if projected != expected || settled - before != expected {
        return Err(format!(
            "projection got {} cents, expected exactly {expected} (the committed orders only)",
            settled - before
        )
        .into());
    }
    println!("projection: exactly the {expected} cents of the committed orders");
    Ok(())
}

fn uuid_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    )
}
