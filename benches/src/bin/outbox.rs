//! Outbox harness. Prints ONE JSON line: windlass-outbox figures beside a hand-written baseline
//! with plain sqlx + redis measured in the same run, on the same Postgres and Redis.
//!
//! ```text
//! cargo run --release -p windlass-benches --bin outbox -- [--rows 20000] [--commits 2000]
//!     [--rate 500] [--txs 2000] [--keys 1000] [--poll-ms 100]
//! ```
//!
//! - `enqueue`: a business transaction (INSERT of an order row) with the event added by
//!   `Outbox::enqueue`, against the same transaction with a hand-written `INSERT` into an
//!   identical table plus `pg_notify`, and the transaction with no event at all. Interleaved.
//! - `throughput`: a pre-filled backlog of `--rows` events relayed to Redis Streams by 1 and 3
//!   relays, against a raw relay (`SKIP LOCKED` batch of 500 -> pipelined `XADD` -> `UPDATE`).
//! - `latency`: commit -> entry visible in the Redis stream, at `--rate` commits/s, LISTEN mode
//!   and poll mode (`--poll-ms`), library relay and raw relay.
//!
//! Each measurement gets a fresh database (windlass-testkit) and Redis key prefix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use redis::AsyncCommands;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use windlass_eventbus::Event;
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_outbox::postgres::{Outbox, PgStore, migrate};
use windlass_outbox::{OutboxConfig, OutboxStore, Relay, RelayOptions};
use windlass_testkit::postgres::{TestDatabase, fresh_database};
use windlass_testkit::redis::fresh_prefix;

struct Args {
    rows: usize,
    commits: usize,
    rate: u64,
    txs: usize,
    keys: usize,
    poll_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        rows: 20_000,
        commits: 2_000,
        rate: 500,
        txs: 2_000,
        keys: 1_000,
        poll_ms: 100,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--rows" => a.rows = v.parse().expect("--rows N"),
            "--commits" => a.commits = v.parse().expect("--commits N"),
            "--rate" => a.rate = v.parse().expect("--rate N"),
            "--txs" => a.txs = v.parse().expect("--txs N"),
            "--keys" => a.keys = v.parse().expect("--keys N"),
            "--poll-ms" => a.poll_ms = v.parse().expect("--poll-ms N"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

const RAW_TABLE: &str = "CREATE TABLE raw_outbox (
    id uuid PRIMARY KEY, seq bigserial NOT NULL, topic text NOT NULL, partition_key text,
    event jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL DEFAULT 'pending', published_at timestamptz);
    CREATE INDEX raw_outbox_pending_idx ON raw_outbox (seq) WHERE status = 'pending';
    CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL, cents bigint NOT NULL);";

fn event(i: usize, keys: usize) -> Event {
    Event::builder("/bench", "order.placed")
        .partition_key(format!("cust-{}", i % keys))
        .data_json(&json!({ "order": i, "cents": 1234, "sku": "SKU-000042", "qty": 3 }))
        .build()
        .expect("valid event")
}

async fn setup() -> TestDatabase {
    let db = fresh_database().await;
    migrate(&db.pool).await.expect("migrate");
    sqlx::raw_sql(RAW_TABLE)
        .execute(&db.pool)
        .await
        .expect("raw table");
    db
}

async fn bus(prefix: &str) -> RedisBus {
    RedisBus::connect(RedisConfig::new(windlass_testkit::redis::url()).prefix(prefix))
        .await
        .expect("redis")
}

// ---------------------------------------------------------------- enqueue overhead

async fn enqueue_overhead(a: &Args) -> serde_json::Value {
    let db = setup().await;
    let pool = db.new_pool(1).await;
    let outbox = Outbox::default();
    let (mut none, mut raw, mut lib) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..a.txs + 200 {
        let ev = event(i, a.keys);
        for variant in [0, 1, 2] {
            let t = Instant::now();
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("INSERT INTO orders (customer, cents) VALUES ($1, $2)")
                .bind("cust")
                .bind(1234i64)
                .execute(&mut *tx)
                .await
                .unwrap();
            match variant {
                1 => {
                    sqlx::query(
                        "WITH ins AS (INSERT INTO raw_outbox (id, topic, partition_key, event) \
                         VALUES ($1, $2, $3, $4::jsonb)) SELECT pg_notify('raw_outbox', '')",
                    )
                    .bind(uuid::Uuid::now_v7())
                    .bind("orders")
                    .bind(ev.partition_key())
                    .bind(ev.to_json())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                }
                2 => {
                    outbox.enqueue(&mut tx, "orders", &ev).await.unwrap();
                }
                _ => {}
            }
            tx.commit().await.unwrap();
            let us = t.elapsed().as_secs_f64() * 1e6;
            if i >= 200 {
                [&mut none, &mut raw, &mut lib][variant].push(us);
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v[v.len() / 2]
    };
    let (m0, m1, m2) = (mean(&none), mean(&raw), mean(&lib));
    let (p0, p1, p2) = (median(&mut none), median(&mut raw), median(&mut lib));
    json!({
        "txs": a.txs,
        "tx_no_event_mean_us": round(m0), "tx_no_event_p50_us": round(p0),
        "tx_raw_insert_notify_mean_us": round(m1), "tx_raw_insert_notify_p50_us": round(p1),
        "tx_enqueue_mean_us": round(m2), "tx_enqueue_p50_us": round(p2),
        "enqueue_vs_raw_added_pct_mean": round((m2 / m1 - 1.0) * 100.0),
        "enqueue_vs_raw_added_pct_p50": round((p2 / p1 - 1.0) * 100.0),
    })
}

// ---------------------------------------------------------------- throughput

async fn prefill(db: &TestDatabase, rows: usize, keys: usize) {
    let outbox = Outbox::default();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        let events: Vec<Event> = chunk.iter().map(|&i| event(i, keys)).collect();
        let mut tx = db.pool.begin().await.unwrap();
        outbox
            .enqueue_batch(&mut tx, "orders", &events)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    sqlx::query(
        "INSERT INTO raw_outbox (id, topic, partition_key, event) \
         SELECT id, topic, partition_key, event FROM windlass_outbox ORDER BY seq",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();
}

async fn lib_throughput(rows: usize, keys: usize, relays: usize) -> f64 {
    let db = setup().await;
    prefill(&db, rows, keys).await;
    let redis = fresh_prefix().await;
    let mut built = Vec::new();
    for _ in 0..relays {
        let s = PgStore::new(db.new_pool(1).await, OutboxConfig::default()).unwrap();
        built.push(
            Relay::new(s, bus(&redis.prefix).await)
                .with_options(RelayOptions::default().batch_size(500)),
        );
    }
    // Rounds back to back until the backlog is gone, as the raw relay does (`Relay::run` adds
    // only the idle waits around `run_once`).
    let start = Instant::now();
    let tasks: Vec<_> = built
        .into_iter()
        .map(|relay| {
            tokio::spawn(async move { while relay.run_once().await.unwrap().claimed > 0 {} })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let store = PgStore::new(db.pool.clone(), OutboxConfig::default()).unwrap();
    assert_eq!(
        store.stats().await.unwrap().pending,
        0,
        "every row published"
    );
    redis.cleanup().await;
    rows as f64 / secs
}

/// The hand-written relay: claim a batch with SKIP LOCKED, pipeline XADDs, mark, commit.
async fn raw_round(
    pool: &PgPool,
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> usize {
    let mut tx = pool.begin().await.unwrap();
    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, event::text FROM raw_outbox WHERE status = 'pending' ORDER BY seq LIMIT 500 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    if rows.is_empty() {
        tx.commit().await.unwrap();
        return 0;
    }
    let mut pipe = redis::pipe();
    for (_, ev) in &rows {
        pipe.cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("event")
            .arg(ev)
            .ignore();
    }
    pipe.exec_async(conn).await.unwrap();
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.0).collect();
    sqlx::query(
        "UPDATE raw_outbox SET status = 'published', published_at = now() WHERE id = ANY($1)",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    rows.len()
}

async fn raw_throughput(rows: usize, keys: usize, relays: usize) -> f64 {
    let db = setup().await;
    prefill(&db, rows, keys).await;
    let redis = fresh_prefix().await;
    let key = format!("{}:orders", redis.prefix);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..relays {
        let pool = db.new_pool(1).await;
        let mut conn = redis
            .client
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            while raw_round(&pool, &mut conn, &key).await > 0 {}
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let mut conn = redis.conn.clone();
    let len: usize = conn.xlen(&key).await.unwrap();
    assert_eq!(len, rows, "raw relay published every row");
    redis.cleanup().await;
    rows as f64 / secs
}

// ---------------------------------------------------------------- latency

type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Reads the stream with blocking XREAD and records commit -> visible latencies.
async fn reader(client: redis::Client, key: String, sent: Sent, n: usize) -> Histogram<u64> {
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut last = "0-0".to_owned();
    let mut seen = 0;
    while seen < n {
        let reply: redis::streams::StreamReadReply = conn
            .xread_options(
                &[&key],
                &[&last],
                &redis::streams::StreamReadOptions::default()
                    .block(2000)
                    .count(1000),
            )
            .await
            .unwrap();
        let now = Instant::now();
        for stream in reply.keys {
            for entry in stream.ids {
                last = entry.id.clone();
                let Some(redis::Value::BulkString(bytes)) = entry.map.get("event") else {
                    continue;
                };
                let ev = Event::from_json(bytes).unwrap();
                if let Some(t0) = sent.lock().unwrap().remove(ev.id()) {
                    hist.record((now - t0).as_micros().max(1) as u64).unwrap();
                    seen += 1;
                }
            }
        }
    }
    hist
}

/// Commits `n` events at `rate`/s with `write`, while the relay under test runs.
async fn latency_run(a: &Args, raw: bool, listen: bool) -> serde_json::Value {
    let db = setup().await;
    let redis = fresh_prefix().await;
    let key = format!("{}:orders", redis.prefix);
    let sent: Sent = Default::default();
    let poll = Duration::from_millis(a.poll_ms);
    let token = CancellationToken::new();
    let mut relay_tasks = Vec::new();
    let mut lib_handle = None;
    if raw {
        let pool = db.new_pool(1).await;
        let mut conn = redis
            .client
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut listener = if listen {
            let mut l = PgListener::connect_with(&db.pool).await.unwrap();
            l.listen("raw_outbox").await.unwrap();
            Some(l)
        } else {
            None
        };
        let key = key.clone();
        let token = token.clone();
        relay_tasks.push(tokio::spawn(async move {
            while !token.is_cancelled() {
                if raw_round(&pool, &mut conn, &key).await > 0 {
                    continue;
                }
                match listener.as_mut() {
                    Some(l) => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), l.recv()).await;
                    }
                    None => tokio::time::sleep(poll).await,
                }
            }
        }));
    } else {
        let store = PgStore::new(db.new_pool(2).await, OutboxConfig::default()).unwrap();
        let options = RelayOptions::default().listen(listen).retention(None);
        let options = if listen {
            options
        } else {
            options.poll_interval(poll)
        };
        lib_handle = Some(
            Relay::new(store, bus(&redis.prefix).await)
                .with_options(options)
                .spawn(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = tokio::spawn(reader(redis.client.clone(), key, sent.clone(), a.commits));
    let outbox = Outbox::default();
    let writers = 4;
    let per_writer = a.commits / writers;
    let interval = Duration::from_secs_f64(writers as f64 / a.rate as f64);
    let mut ws = Vec::new();
    for w in 0..writers {
        let pool = db.pool.clone();
        let sent = sent.clone();
        let outbox = outbox.clone();
        let keys = a.keys;
        ws.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            for i in 0..per_writer {
                tick.tick().await;
                let ev = event(w * per_writer + i, keys);
                let mut tx = pool.begin().await.unwrap();
                if raw {
                    sqlx::query(
                        "WITH ins AS (INSERT INTO raw_outbox (id, topic, partition_key, event) \
                         VALUES ($1, $2, $3, $4::jsonb)) SELECT pg_notify('raw_outbox', '')",
                    )
                    .bind(uuid::Uuid::now_v7())
                    .bind("orders")
                    .bind(ev.partition_key())
                    .bind(ev.to_json())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                } else {
                    outbox.enqueue(&mut tx, "orders", &ev).await.unwrap();
                }
                sent.lock()
                    .unwrap()
                    .insert(ev.id().to_owned(), Instant::now());
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in ws {
        w.await.unwrap();
    }
    let hist = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("all events seen")
        .unwrap();
    token.cancel();
    for t in relay_tasks {
        t.await.unwrap();
    }
    if let Some(h) = lib_handle {
        h.shutdown().await;
    }
    redis.cleanup().await;
    json!({
        "p50_ms": round(hist.value_at_quantile(0.5) as f64 / 1000.0),
        "p99_ms": round(hist.value_at_quantile(0.99) as f64 / 1000.0),
        "max_ms": round(hist.max() as f64 / 1000.0),
    })
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[tokio::main]
async fn main() {
    let a = args();
    let enqueue = enqueue_overhead(&a).await;
    let raw1 = raw_throughput(a.rows, a.keys, 1).await;
    let lib1 = lib_throughput(a.rows, a.keys, 1).await;
    let raw3 = raw_throughput(a.rows, a.keys, 3).await;
    let lib3 = lib_throughput(a.rows, a.keys, 3).await;
    let raw_listen = latency_run(&a, true, true).await;
    let lib_listen = latency_run(&a, false, true).await;
    let raw_poll = latency_run(&a, true, false).await;
    let lib_poll = latency_run(&a, false, false).await;
    let out = json!({
        "bench": "outbox",
        "args": { "rows": a.rows, "commits": a.commits, "rate": a.rate, "txs": a.txs, "keys": a.keys, "poll_ms": a.poll_ms },
        "enqueue": enqueue,
        "throughput_rows_per_s": {
            "raw_1_relay": raw1.round(), "windlass_1_relay": lib1.round(), "ratio_1": round(lib1 / raw1),
            "raw_3_relays": raw3.round(), "windlass_3_relays": lib3.round(), "ratio_3": round(lib3 / raw3),
        },
        "latency_commit_to_stream": {
            "listen": { "raw": raw_listen, "windlass": lib_listen },
            "poll": { "raw": raw_poll, "windlass": lib_poll },
        },
    });
    println!("{out}");
}
