//! Relay throughput of the Redis -> Kafka migration's dual delivery, beside the single-destination
//! relay, in the same run. Prints ONE JSON line.
//!
//! ```text
//! cargo run --release -p windlass-eventbus --features kafka,redis \
//!     --example migration_relay_throughput -- [--rows 20000] [--rounds 2]
//! ```
//! A backlog of `--rows` outbox rows (distinct keys) is relayed by each variant's relays (their
//! own `Relay::run` loops, batch 500, one relay per destination) until every delivery row is gone:
//! - `redis`: one destination, `RedisBus` (the baseline: the single-destination relay);
//! - `kafka`: one destination, `KafkaBus` (how fast Kafka alone is on this broker);
//! - `redis+kafka`: the migration's dual delivery, two destinations, one relay each.
//!
//! Rows/s per destination: rows / time until every destination of the variant had every row.
//! Postgres, Redis and the Kafka broker come from windlass-testkit (fresh database, key prefix
//! and topic per variant; tansu when `WINDLASS_KAFKA_BROKERS` is unset). Variants run in turn,
//! `--rounds` times, interleaved.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use windlass_eventbus::Event;
use windlass_eventbus::kafka::{KafkaBus, KafkaConfig};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_outbox::postgres::{Outbox, PgOutboxStore, migrate_with};
use windlass_outbox::{Destination, OutboxConfig, Relay, RelayOptions};

fn arg(name: &str, default: usize) -> usize {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

async fn variant(rows: usize, brokers: &str, dests: &[&str]) -> (f64, BTreeMap<String, f64>) {
    let config =
        OutboxConfig::default().destinations(dests.iter().map(|d| Destination::new(*d).unwrap()));
    let db = windlass_testkit::postgres::fresh_database().await;
    migrate_with(&db.pool, &config).await.unwrap();
    let topic = windlass_testkit::kafka::unique_topic();
    windlass_testkit::kafka::create_topic(brokers, &topic, 3).await;
    let outbox = Outbox::with_config(config.clone()).unwrap();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        let events: Vec<Event> = chunk
            .iter()
            .map(|i| {
                Event::builder("/bench", "order.placed")
                    .partition_key(format!("cust-{i}"))
                    .data_json(&json!({ "order": i, "cents": 1234, "sku": "SKU-000042", "qty": 3 }))
                    .build()
                    .unwrap()
            })
            .collect();
        let mut tx = db.pool.begin().await.unwrap();
        outbox
            .enqueue_batch(&mut tx, &topic, &events)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    sqlx::query("VACUUM ANALYZE")
        .execute(&db.pool)
        .await
        .unwrap();
    let redis = windlass_testkit::redis::fresh_prefix().await;
    let redis_bus = RedisBus::connect(RedisConfig::new(&redis.url).prefix(&redis.prefix))
        .await
        .unwrap();
    let kafka_bus = KafkaBus::new(KafkaConfig::new(brokers)).unwrap();
    let options = |d: &str| {
        RelayOptions::default()
            .destination(Destination::new(d).unwrap())
            .batch_size(500)
            .maintenance(false)
    };
    let mut stores = Vec::new();
    for _ in dests {
        stores.push(PgOutboxStore::with_config(db.new_pool(1).await, config.clone()).unwrap());
    }
    let start = Instant::now();
    let mut handles = Vec::new();
    for (d, s) in dests.iter().zip(stores) {
        handles.push(match *d {
            "redis" => Relay::new(s, redis_bus.clone())
                .with_options(options(d))
                .spawn(),
            _ => Relay::new(s, kafka_bus.clone())
                .with_options(options(d))
                .spawn(),
        });
    }
    let mut done: BTreeMap<String, f64> = BTreeMap::new();
    while done.len() < dests.len() {
        for d in dests {
            if done.contains_key(*d) {
                continue;
            }
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM windlass_outbox_delivery WHERE destination = $1",
            )
            .bind(*d)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            if left == 0 {
                done.insert((*d).to_owned(), start.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    for h in handles {
        h.shutdown().await;
    }
    redis.cleanup().await;
    (rows as f64 / secs, done)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[tokio::main]
async fn main() {
    let rows = arg("--rows", 20_000);
    let rounds = arg("--rounds", 2);
    let brokers = tokio::task::spawn_blocking(windlass_testkit::kafka::brokers)
        .await
        .unwrap();
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = Vec::new();
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let r = variant(rows, &brokers, &["redis"]).await;
        let k = variant(rows, &brokers, &["kafka"]).await;
        let d = variant(rows, &brokers, &["redis", "kafka"]).await;
        one.push(r.0);
        two.push(d.0);
        out.push(json!({
            "round": round,
            "redis_rows_per_s": r.0.round(),
            "kafka_rows_per_s": k.0.round(),
            "redis_kafka_rows_per_s_each": d.0.round(),
            "redis_kafka_done_after_s": d.1.iter().map(|(k, v)| (k.clone(), round2(*v))).collect::<BTreeMap<_, _>>(),
            "ratio_dual_vs_redis": round2(d.0 / r.0),
        }));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{}",
        json!({
            "bench": "migration_relay_throughput",
            "rows": rows,
            "rounds": out,
            "ratio_mean": round2(mean(&two) / mean(&one)),
            "loadavg_start": load_start.trim(),
            "loadavg_end": load_end.trim(),
        })
    );
}
