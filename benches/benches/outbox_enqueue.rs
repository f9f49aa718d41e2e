//! The outbox's hot path: a business transaction that inserts an order and enqueues its event
//! with `Outbox::enqueue`, against the same transaction with a hand-written `INSERT` into an
//! identical table (the same-run baseline), on the local Postgres (fresh database).
//!
//! ```text
//! cargo bench -p windlass-benches --bench outbox_enqueue
//! ```

use criterion::{Criterion, criterion_group, criterion_main};
use windlass_eventbus::Event;
use windlass_outbox::postgres::{Outbox, migrate};

const RAW: &str = "CREATE TABLE raw_outbox (
    id uuid PRIMARY KEY, seq bigserial NOT NULL, topic text NOT NULL, partition_key text,
    event jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL DEFAULT 'pending', published_at timestamptz);
    CREATE INDEX raw_outbox_pending_idx ON raw_outbox (seq) WHERE status = 'pending';
    CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL, cents bigint NOT NULL);";

fn event(i: u64) -> Event {
    Event::builder("/bench", "order.placed")
        .partition_key(format!("cust-{}", i % 1000))
        .data_json(&serde_json::json!({ "order": i, "cents": 1234 }))
        .build()
        .expect("valid event")
}

fn enqueue(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(windlass_testkit::postgres::fresh_database());
    let pool = rt.block_on(async {
        migrate(&db.pool).await.expect("migrate");
        sqlx::raw_sql(RAW)
            .execute(&db.pool)
            .await
            .expect("raw table");
        db.new_pool(1).await
    });
    let outbox = Outbox::default();
    let topic = windlass_core::Topic::new("orders").expect("topic");
    let mut i = 0u64;
    let mut g = c.benchmark_group("outbox");
    g.bench_function("tx_with_enqueue", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let ev = event(i);
            let (pool, outbox, topic) = (&pool, &outbox, &topic);
            async move {
                let mut tx = pool.begin().await.expect("begin");
                sqlx::query("INSERT INTO orders (customer, cents) VALUES ('c', 1234)")
                    .execute(&mut *tx)
                    .await
                    .expect("order");
                outbox.enqueue(&mut tx, topic, &ev).await.expect("enqueue");
                tx.commit().await.expect("commit");
            }
        })
    });
    g.bench_function("baseline_tx_with_raw_insert", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let ev = event(i);
            let pool = &pool;
            async move {
                let mut tx = pool.begin().await.expect("begin");
                sqlx::query("INSERT INTO orders (customer, cents) VALUES ('c', 1234)")
                    .execute(&mut *tx)
                    .await
                    .expect("order");
                sqlx::query(
                    "INSERT INTO raw_outbox (id, topic, partition_key, event) VALUES ($1, $2, $3, $4::jsonb)",
                )
                .bind(uuid::Uuid::now_v7())
                .bind("orders")
                .bind(ev.partition_key())
                .bind(ev.to_json())
                .execute(&mut *tx)
                .await
                .expect("raw insert");
                tx.commit().await.expect("commit");
            }
        })
    });
    g.finish();
    drop(pool);
    drop(db);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        // Charts come from `src/bin/plot.rs`; criterion's own would need a TrueType font library.
        .without_plots()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(20);
    targets = enqueue
}
criterion_main!(benches);
