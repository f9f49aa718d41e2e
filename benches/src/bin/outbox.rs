//! Outbox harness. Prints ONE JSON line: windlass-outbox figures beside hand-written baselines
//! (plain sqlx + redis) measured in the same run, on the same Postgres and Redis.
//!
//! ```text
//! cargo run --release -p windlass-benches --bin outbox -- [--only enqueue,throughput,dual,latency,wakeups]
//!     [--rows 20000] [--hot-keys 1000] [--txs 2000] [--commits 2000] [--rate 500] [--secs 5]
//! ```
//!
//! - `enqueue`: a business transaction (INSERT of an order row) with its event added by
//!   `Outbox::enqueue` (per-key lock, no NOTIFY: the default), against the same transaction
//!   with a plain `INSERT` into a one-table outbox (the baseline) and with no event; 1 and 32
//!   concurrent writers, the variants interleaved in rounds.
//! - `throughput`: a backlog of `--rows` events relayed to Redis Streams by 1 and 3 relays, for
//!   `--rows` distinct keys (1 row each) and `--hot-keys` keys (rows/hot-keys rows each),
//!   against the raw relay (`SKIP LOCKED` batch of 500 -> pipelined `XADD` -> `UPDATE`, no
//!   ordering, no lease).
//! - `dual`: the same backlog routed to two destinations (two relays, two streams) against one
//!   destination, rows/s per destination.
//! - `latency`: commit -> entry visible in the stream, 4 writers at `--rate` commits/s: raw
//!   LISTEN relay, windlass default (adaptive poll + in-process wake-up), windlass with
//!   NOTIFY in the writer's transaction + LISTEN.
//! - `wakeups`: 32 writers committing as fast as they can for `--secs`: commits/s, commit
//!   latency and commit -> published latency, with NOTIFY in the writer's transaction + a
//!   LISTEN relay, and without (the default: adaptive poll + in-process wake-up).
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
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{Event, Topic};
use windlass_outbox::postgres::{Outbox, PgOutboxStore, migrate_with};
use windlass_outbox::{Destination, OutboxConfig, Relay, RelayOptions};
use windlass_testkit::postgres::{TestDatabase, fresh_database};
use windlass_testkit::redis::fresh_prefix;

struct Args {
    only: Vec<String>,
    rows: usize,
    hot_keys: usize,
    txs: usize,
    commits: usize,
    rate: u64,
    secs: u64,
}

fn args() -> Args {
    let mut a = Args {
        only: ["enqueue", "throughput", "dual", "latency", "wakeups"]
            .map(str::to_owned)
            .to_vec(),
        rows: 20_000,
        hot_keys: 1_000,
        txs: 2_000,
        commits: 2_000,
        rate: 500,
        secs: 5,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--only" => a.only = v.split(',').map(str::to_owned).collect(),
            "--rows" => a.rows = v.parse().expect("--rows N"),
            "--hot-keys" => a.hot_keys = v.parse().expect("--hot-keys N"),
            "--txs" => a.txs = v.parse().expect("--txs N"),
            "--commits" => a.commits = v.parse().expect("--commits N"),
            "--rate" => a.rate = v.parse().expect("--rate N"),
            "--secs" => a.secs = v.parse().expect("--secs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

const RAW_TABLE: &str = "CREATE TABLE raw_outbox (
    id uuid PRIMARY KEY, seq bigserial NOT NULL, topic text NOT NULL, partition_key text,
    event text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL DEFAULT 'pending', published_at timestamptz);
    CREATE INDEX raw_outbox_pending_idx ON raw_outbox (seq) WHERE status = 'pending';
    CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL, cents bigint NOT NULL);";

const RAW_INSERT: &str =
    "INSERT INTO raw_outbox (id, topic, partition_key, event) VALUES ($1, $2, $3, $4)";
const RAW_INSERT_NOTIFY: &str = "WITH ins AS (INSERT INTO raw_outbox (id, topic, partition_key, event) \
     VALUES ($1, $2, $3, $4)) SELECT pg_notify('raw_outbox', '')";

fn event(i: usize, keys: usize) -> Event {
    Event::builder("/bench", "order.placed")
        .partition_key(format!("cust-{}", i % keys.max(1)))
        .data_json(&json!({ "order": i, "cents": 1234, "sku": "SKU-000042", "qty": 3 }))
        .build()
        .expect("valid event")
}

fn orders() -> Topic {
    Topic::new("orders").unwrap()
}

async fn setup(config: &OutboxConfig) -> TestDatabase {
    let db = fresh_database().await;
    migrate_with(&db.pool, config).await.expect("migrate");
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

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap()
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    round(h.value_at_quantile(q) as f64 / 1000.0)
}

// ---------------------------------------------------------------- enqueue overhead

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    None,
    Raw,
    RawNotify,
    Lib,
    LibNotify,
}

async fn one_tx(pool: &PgPool, v: Variant, ev: &Event, lib: &Outbox, lib_notify: &Outbox) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (customer, cents) VALUES ($1, $2)")
        .bind("cust")
        .bind(1234i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    match v {
        Variant::None => {}
        Variant::Raw | Variant::RawNotify => {
            sqlx::query(if v == Variant::Raw {
                RAW_INSERT
            } else {
                RAW_INSERT_NOTIFY
            })
            .bind(uuid::Uuid::now_v7())
            .bind("orders")
            .bind(ev.partition_key())
            .bind(ev.to_json())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        Variant::Lib => {
            lib.enqueue(&mut tx, &orders(), ev).await.unwrap();
        }
        Variant::LibNotify => {
            lib_notify.enqueue(&mut tx, &orders(), ev).await.unwrap();
        }
    }
    tx.commit().await.unwrap();
}

/// `writers` concurrent writers; each round runs every variant for `per_round` transactions
/// per writer, variants interleaved; returns per-variant (tx/s, mean µs, p99 µs).
async fn enqueue_with(writers: usize, total: usize) -> serde_json::Value {
    let db = setup(&OutboxConfig::default()).await;
    let pool = db.new_pool(writers as u32 + 2).await;
    let lib = Outbox::new();
    let lib_notify = Outbox::with_config(OutboxConfig::default().notify(true)).unwrap();
    let variants = [
        ("no_event", Variant::None),
        ("raw_insert", Variant::Raw),
        ("raw_insert_notify", Variant::RawNotify),
        ("windlass", Variant::Lib),
        ("windlass_notify", Variant::LibNotify),
    ];
    let rounds = 5;
    let per_round = (total / writers / rounds).max(1);
    let mut acc: HashMap<&str, (Histogram<u64>, f64, usize)> = HashMap::new();
    for r in 0..rounds + 1 {
        for (name, v) in variants {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..writers {
                let (pool, lib, lib_notify) = (pool.clone(), lib.clone(), lib_notify.clone());
                tasks.push(tokio::spawn(async move {
                    let mut h = hist();
                    for i in 0..per_round {
                        let ev = event(w * 100_000 + r * 1000 + i, 1000);
                        let t = Instant::now();
                        one_tx(&pool, v, &ev, &lib, &lib_notify).await;
                        h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                    }
                    h
                }));
            }
            let mut h = hist();
            for t in tasks {
                h.add(t.await.unwrap()).unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            if r == 0 {
                continue; // warm-up
            }
            let e = acc.entry(name).or_insert_with(|| (hist(), 0.0, 0));
            e.0.add(h).unwrap();
            e.1 += secs;
            e.2 += writers * per_round;
        }
    }
    let mut out = serde_json::Map::new();
    for (name, _) in variants {
        let (h, secs, n) = &acc[name];
        out.insert(
            name.to_owned(),
            json!({ "tx_per_s": (*n as f64 / secs).round(), "mean_us": h.mean().round(), "p99_us": h.value_at_quantile(0.99) }),
        );
    }
    let mean = |n: &str| acc[n].0.mean();
    out.insert(
        "windlass_vs_raw_insert_added_pct_mean".into(),
        json!(round((mean("windlass") / mean("raw_insert") - 1.0) * 100.0)),
    );
    serde_json::Value::Object(out)
}

// ---------------------------------------------------------------- throughput

async fn prefill(db: &TestDatabase, config: &OutboxConfig, rows: usize, keys: usize) {
    let outbox = Outbox::with_config(config.clone()).unwrap();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        let events: Vec<Event> = chunk.iter().map(|&i| event(i, keys)).collect();
        let mut tx = db.pool.begin().await.unwrap();
        outbox
            .enqueue_batch(&mut tx, &orders(), &events)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    sqlx::query(
        "INSERT INTO raw_outbox (id, topic, partition_key, event) \
         SELECT gen_random_uuid(), topic, partition_key, event FROM windlass_outbox ORDER BY seq",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE")
        .execute(&db.pool)
        .await
        .unwrap();
}

/// Back-to-back rounds of `relays` relays per destination until the backlog is gone; rows/s
/// per destination.
async fn lib_throughput(rows: usize, keys: usize, relays: usize, dests: &[&str]) -> f64 {
    let config =
        OutboxConfig::default().destinations(dests.iter().map(|d| Destination::new(*d).unwrap()));
    let db = setup(&config).await;
    prefill(&db, &config, rows, keys).await;
    let redis = fresh_prefix().await;
    let mut built = Vec::new();
    for d in dests {
        for _ in 0..relays {
            let s = PgOutboxStore::with_config(db.new_pool(1).await, config.clone()).unwrap();
            built.push(
                Relay::new(s, bus(&format!("{}-{d}", redis.prefix)).await).with_options(
                    RelayOptions::default()
                        .destination(Destination::new(*d).unwrap())
                        .batch_size(500)
                        .maintenance(false),
                ),
            );
        }
    }
    // The relays' own run loop (back-to-back claims while there is work, adaptive poll when a
    // claim finds every key held by another relay), until every row is delivered.
    let start = Instant::now();
    let handles: Vec<_> = built.into_iter().map(Relay::spawn).collect();
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM windlass_outbox_delivery")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    for h in handles {
        h.shutdown().await;
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM windlass_outbox_delivery")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "every row delivered");
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
        "SELECT id, event FROM raw_outbox WHERE status = 'pending' ORDER BY seq LIMIT 500 FOR UPDATE SKIP LOCKED",
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
    let config = OutboxConfig::default();
    let db = setup(&config).await;
    prefill(&db, &config, rows, keys).await;
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

async fn throughput(a: &Args) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (shape, keys) in [("distinct_keys", a.rows), ("hot_keys", a.hot_keys)] {
        for relays in [1, 3] {
            let raw = raw_throughput(a.rows, keys, relays).await;
            let lib = lib_throughput(a.rows, keys, relays, &["default"]).await;
            out.insert(
                format!("{shape}_{relays}_relays"),
                json!({ "raw_rows_per_s": raw.round(), "windlass_rows_per_s": lib.round(), "ratio": round(lib / raw) }),
            );
        }
    }
    serde_json::Value::Object(out)
}

async fn dual(a: &Args) -> serde_json::Value {
    let one = lib_throughput(a.rows, a.rows, 1, &["redis"]).await;
    let two = lib_throughput(a.rows, a.rows, 1, &["redis", "kafka"]).await;
    json!({
        "one_destination_rows_per_s": one.round(),
        "two_destinations_rows_per_s_each": two.round(),
        "ratio": round(two / one),
    })
}

// ---------------------------------------------------------------- latency

type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Reads the stream with blocking XREAD and records commit -> visible latencies, until it has
/// seen `target` events (set once the writers are done).
async fn reader(
    client: redis::Client,
    key: String,
    sent: Sent,
    target: Arc<std::sync::atomic::AtomicUsize>,
) -> Histogram<u64> {
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut h = hist();
    let mut last = "0-0".to_owned();
    let mut seen = 0;
    while seen < target.load(std::sync::atomic::Ordering::SeqCst) {
        let reply: redis::streams::StreamReadReply = conn
            .xread_options(
                &[&key],
                &[&last],
                &redis::streams::StreamReadOptions::default()
                    .block(100)
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
                    h.record((now - t0).as_micros().max(1) as u64).unwrap();
                    seen += 1;
                }
            }
        }
    }
    h
}

#[derive(Clone, Copy, PartialEq)]
enum Wake {
    RawListen,
    LibDefault,
    LibNotify,
}

struct Run {
    e2e: Histogram<u64>,
    commit: Histogram<u64>,
    commits: usize,
    secs: f64,
}

/// `writers` writers commit (at `rate` in all, or as fast as they can for `secs`) while the
/// relay under test runs.
async fn e2e_run(writers: usize, rate: Option<u64>, count: usize, secs: u64, wake: Wake) -> Run {
    let config = OutboxConfig::default().notify(wake == Wake::LibNotify);
    let db = setup(&config).await;
    let redis = fresh_prefix().await;
    let key = format!("{}:orders", redis.prefix);
    let sent: Sent = Default::default();
    let token = CancellationToken::new();
    let mut raw_task = None;
    let mut lib_handle = None;
    if wake == Wake::RawListen {
        let pool = db.new_pool(1).await;
        let mut conn = redis
            .client
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
        listener.listen("raw_outbox").await.unwrap();
        let (key, token) = (key.clone(), token.clone());
        raw_task = Some(tokio::spawn(async move {
            while !token.is_cancelled() {
                if raw_round(&pool, &mut conn, &key).await > 0 {
                    continue;
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), listener.recv()).await;
            }
        }));
    } else {
        let store = PgOutboxStore::with_config(db.new_pool(2).await, config.clone()).unwrap();
        lib_handle = Some(
            Relay::new(store, bus(&redis.prefix).await)
                .with_options(
                    RelayOptions::default()
                        .listen(wake == Wake::LibNotify)
                        .maintenance(false),
                )
                .spawn(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let target = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let read = tokio::spawn(reader(
        redis.client.clone(),
        key.clone(),
        sent.clone(),
        target.clone(),
    ));
    let pool = db.new_pool(writers as u32 + 1).await;
    let outbox = Outbox::with_config(config).unwrap();
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let per_writer = count / writers;
    let mut ws = Vec::new();
    for w in 0..writers {
        let (pool, sent, outbox) = (pool.clone(), sent.clone(), outbox.clone());
        ws.push(tokio::spawn(async move {
            let mut commit = hist();
            let mut tick = rate
                .map(|r| tokio::time::interval(Duration::from_secs_f64(writers as f64 / r as f64)));
            let mut i = 0;
            loop {
                if rate.is_some() && i >= per_writer || rate.is_none() && Instant::now() >= stop_at
                {
                    break;
                }
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let ev = event(w * 1_000_000 + i, 1000);
                let t0 = Instant::now();
                let mut tx = pool.begin().await.unwrap();
                if wake == Wake::RawListen {
                    sqlx::query(RAW_INSERT_NOTIFY)
                        .bind(uuid::Uuid::now_v7())
                        .bind("orders")
                        .bind(ev.partition_key())
                        .bind(ev.to_json())
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                } else {
                    outbox.enqueue(&mut tx, &orders(), &ev).await.unwrap();
                }
                sent.lock()
                    .unwrap()
                    .insert(ev.id().to_owned(), Instant::now());
                tx.commit().await.unwrap();
                commit
                    .record(t0.elapsed().as_micros().max(1) as u64)
                    .unwrap();
                i += 1;
            }
            (commit, i)
        }));
    }
    let start = Instant::now();
    let mut commit = hist();
    let mut commits = 0;
    for w in ws {
        let (h, n) = w.await.unwrap();
        commit.add(h).unwrap();
        commits += n;
    }
    let secs = start.elapsed().as_secs_f64();
    target.store(commits, std::sync::atomic::Ordering::SeqCst);
    let e2e = tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("all events seen")
        .unwrap();
    token.cancel();
    if let Some(t) = raw_task {
        t.await.unwrap();
    }
    if let Some(h) = lib_handle {
        h.shutdown().await;
    }
    redis.cleanup().await;
    Run {
        e2e,
        commit,
        commits,
        secs,
    }
}

fn run_json(r: &Run) -> serde_json::Value {
    json!({
        "commits_per_s": (r.commits as f64 / r.secs).round(),
        "commit_p50_ms": ms(&r.commit, 0.5), "commit_p99_ms": ms(&r.commit, 0.99),
        "published_p50_ms": ms(&r.e2e, 0.5), "published_p99_ms": ms(&r.e2e, 0.99),
    })
}

async fn latency(a: &Args) -> serde_json::Value {
    let raw = e2e_run(4, Some(a.rate), a.commits, 0, Wake::RawListen).await;
    let lib = e2e_run(4, Some(a.rate), a.commits, 0, Wake::LibDefault).await;
    let notify = e2e_run(4, Some(a.rate), a.commits, 0, Wake::LibNotify).await;
    json!({
        "raw_listen": run_json(&raw),
        "windlass_default": run_json(&lib),
        "windlass_notify_listen": run_json(&notify),
        "p99_ratio_default_vs_raw": round(ms(&lib.e2e, 0.99) / ms(&raw.e2e, 0.99)),
    })
}

async fn wakeups(a: &Args) -> serde_json::Value {
    let notify = e2e_run(32, None, 0, a.secs, Wake::LibNotify).await;
    let default = e2e_run(32, None, 0, a.secs, Wake::LibDefault).await;
    let raw = e2e_run(32, None, 0, a.secs, Wake::RawListen).await;
    json!({
        "writers": 32,
        "notify_in_tx_listen": run_json(&notify),
        "no_notify_adaptive_poll": run_json(&default),
        "raw_insert_notify_listen": run_json(&raw),
    })
}

#[tokio::main]
async fn main() {
    let a = args();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = serde_json::Map::new();
    out.insert("bench".into(), json!("outbox"));
    out.insert("loadavg_start".into(), json!(load.trim()));
    let on = |s: &str| a.only.iter().any(|o| o == s);
    if on("enqueue") {
        out.insert(
            "enqueue".into(),
            json!({ "writers_1": enqueue_with(1, a.txs / 4).await, "writers_32": enqueue_with(32, a.txs).await }),
        );
    }
    if on("throughput") {
        out.insert("throughput".into(), throughput(&a).await);
    }
    if on("dual") {
        out.insert("dual_destination".into(), dual(&a).await);
    }
    if on("latency") {
        out.insert("latency".into(), latency(&a).await);
    }
    if on("wakeups") {
        out.insert("wakeups".into(), wakeups(&a).await);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    out.insert("loadavg_end".into(), json!(load.trim()));
    println!("{}", serde_json::Value::Object(out));
}
