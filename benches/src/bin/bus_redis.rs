//! Throughput and latency of the Redis Streams bus beside raw `redis` baselines measured in the
//! same run, printed as one JSON line.
//!
//! ```text
//! cargo run --release -p windlass-benches --bin bus_redis [-- SCALE]
//! ```
//! `SCALE` (default 1.0) multiplies the event counts. `WINDLASS_REDIS_URL` picks the server.
//! `BUS_BENCH_ONLY=ours-consume` runs only our consumer, several times (for profiling).
//!
//! - publish, one by one: `RedisBus::publish` vs raw `XADD` awaited one at a time;
//! - publish, pipelined by 100: `RedisBus::publish_batch(100)` vs a raw pipeline of 100 `XADD`;
//! - consume: a subscription with a no-op handler vs raw `XREADGROUP COUNT 100` + `XACK`;
//! - end-to-end latency at a fixed 1k events/s: publish -> handler vs raw `XADD` -> blocking
//!   `XREADGROUP` on another connection.
//!
//! Both sides publish the same payload bytes (the event's structured JSON); ours also encodes
//! the event each time, as an application would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{Event, Group, Publisher, SubscribeOptions, Subscriber, Topic, handler_fn};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::builder("/bench", "bench.order.placed")
                .subject(format!("order-{i}"))
                .org_id("acme")
                .partition_key(format!("order-{}", i % 64))
                .data_json(&serde_json::json!({"seq": i, "amount": 1234, "currency": "EUR", "sku": "ABC-123"}))
                .build()
                .expect("valid event")
        })
        .collect()
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    (n as f64 / elapsed.as_secs_f64()).round()
}

async fn raw_publish_one_by_one(
    conn: &mut MultiplexedConnection,
    key: &str,
    payloads: &[Vec<u8>],
) -> BoxResult<f64> {
    let started = Instant::now();
    for p in payloads {
        let _: String = redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("event")
            .arg(p)
            .query_async(conn)
            .await?;
    }
    Ok(rate(payloads.len(), started.elapsed()))
}

async fn raw_publish_pipelined(
    conn: &mut MultiplexedConnection,
    key: &str,
    payloads: &[Vec<u8>],
) -> BoxResult<f64> {
    let started = Instant::now();
    for chunk in payloads.chunks(100) {
        let mut pipe = redis::pipe();
        for p in chunk {
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("event")
                .arg(p)
                .ignore();
        }
        let () = pipe.query_async(conn).await?;
    }
    Ok(rate(payloads.len(), started.elapsed()))
}

async fn ours_publish_one_by_one(
    bus: &RedisBus,
    topic: &Topic,
    events: &[Event],
) -> BoxResult<f64> {
    let started = Instant::now();
    for e in events {
        bus.publish(topic, e).await?;
    }
    Ok(rate(events.len(), started.elapsed()))
}

async fn ours_publish_pipelined(bus: &RedisBus, topic: &Topic, events: &[Event]) -> BoxResult<f64> {
    let started = Instant::now();
    for chunk in events.chunks(100) {
        bus.publish_batch(topic, chunk).await?;
    }
    Ok(rate(events.len(), started.elapsed()))
}

async fn fill(conn: &mut MultiplexedConnection, key: &str, payloads: &[Vec<u8>]) -> BoxResult<()> {
    raw_publish_pipelined(conn, key, payloads).await.map(drop)
}

async fn raw_consume(client: &redis::Client, key: &str, n: usize) -> BoxResult<f64> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("raw")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await?;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("raw")
            .arg("c")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(key)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|e| e.id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        done += ids.len();
        let _: i64 = redis::cmd("XACK")
            .arg(key)
            .arg("raw")
            .arg(&ids)
            .query_async(&mut conn)
            .await?;
    }
    Ok(rate(n, started.elapsed()))
}

async fn ours_consume(bus: &RedisBus, topic: &Topic, n: usize) -> BoxResult<f64> {
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let handled = handled.clone();
        handler_fn(move |_event, _ctx| {
            let handled = handled.clone();
            async move {
                handled.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
    };
    let started = Instant::now();
    let sub = bus
        .subscribe(
            topic,
            &Group::new("ours")?,
            Arc::new(handler),
            SubscribeOptions::default().consumer("c"),
        )
        .await?;
    while handled.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    sub.shutdown().await?;
    Ok(rate(n, elapsed))
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
        "n": h.len(),
    })
}

/// Publishes `n` events at 1k/s; `send(seq)` publishes event `seq`.
async fn paced<F, Fut>(
    n: usize,
    sent: &Mutex<HashMap<usize, Instant>>,
    mut send: F,
) -> BoxResult<()>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = BoxResult<()>>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0..n {
        tick.tick().await;
        sent.lock().unwrap().insert(seq, Instant::now());
        send(seq).await?;
    }
    Ok(())
}

async fn raw_latency(
    client: &redis::Client,
    key: &str,
    payloads: &[Vec<u8>],
) -> BoxResult<Histogram<u64>> {
    let n = payloads.len();
    let sent: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let mut reader = client.get_multiplexed_async_connection().await?;
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("lat")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut reader)
        .await?;
    // The payload's position tells the reader which event it is.
    let index: HashMap<Vec<u8>, usize> = payloads
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, p)| (p, i))
        .collect();
    let consumer = {
        let (sent, hist, key) = (sent.clone(), hist.clone(), key.to_owned());
        tokio::spawn(async move {
            let mut seen = 0;
            while seen < n {
                let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("lat")
                    .arg("c")
                    .arg("COUNT")
                    .arg(100)
                    .arg("BLOCK")
                    .arg(1000)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut reader)
                    .await
                    .expect("XREADGROUP");
                let mut ids = Vec::new();
                for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                    let payload: Vec<u8> = entry.get("event").expect("event field");
                    let seq = index[&payload];
                    if let Some(at) = sent.lock().unwrap().get(&seq) {
                        hist.lock()
                            .unwrap()
                            .record(at.elapsed().as_micros() as u64)
                            .expect("record");
                    }
                    ids.push(entry.id);
                    seen += 1;
                }
                if !ids.is_empty() {
                    let _: i64 = redis::cmd("XACK")
                        .arg(&key)
                        .arg("lat")
                        .arg(&ids)
                        .query_async(&mut reader)
                        .await
                        .expect("XACK");
                }
            }
        })
    };
    let mut conn = client.get_multiplexed_async_connection().await?;
    paced(n, &sent, |seq| {
        let mut conn = conn.clone();
        let cmd = redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("event")
            .arg(&payloads[seq])
            .to_owned();
        async move {
            let _: String = cmd.query_async(&mut conn).await?;
            Ok(())
        }
    })
    .await?;
    let _ = &mut conn;
    consumer.await?;
    let h = hist.lock().unwrap().clone();
    Ok(h)
}

async fn ours_latency(
    bus: &RedisBus,
    topic: &Topic,
    events: &[Event],
) -> BoxResult<Histogram<u64>> {
    let n = events.len();
    let sent: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (sent, hist, handled) = (sent.clone(), hist.clone(), handled.clone());
        handler_fn(move |event, _ctx| {
            let (sent, hist, handled) = (sent.clone(), hist.clone(), handled.clone());
            async move {
                let seq = event
                    .data_as::<serde_json::Value>()?
                    .and_then(|v| v["seq"].as_u64())
                    .unwrap_or(0) as usize;
                if let Some(at) = sent.lock().unwrap().get(&seq) {
                    hist.lock()
                        .unwrap()
                        .record(at.elapsed().as_micros() as u64)?;
                }
                handled.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
    };
    let options = SubscribeOptions::default()
        .consumer("lat")
        .start_from(windlass_eventbus::StartFrom::Latest);
    let sub = bus
        .subscribe(topic, &Group::new("lat")?, Arc::new(handler), options)
        .await?;
    paced(n, &sent, |seq| async move {
        bus.publish(topic, &events[seq]).await?;
        Ok(())
    })
    .await?;
    while handled.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    sub.shutdown().await?;
    let h = hist.lock().unwrap().clone();
    Ok(h)
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let scale: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1.0);
    let scaled = |n: f64| ((n * scale) as usize).max(100);
    let (n_single, n_batch, n_consume, n_latency) = (
        scaled(5_000.0),
        scaled(50_000.0),
        scaled(50_000.0),
        scaled(2_000.0),
    );
    let url =
        std::env::var("WINDLASS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("windlass-bench-{}", std::process::id());
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let bus = RedisBus::connect(RedisConfig::new(url.clone()).prefix(prefix.clone())).await?;

    let all = events(n_batch.max(n_consume).max(n_single).max(n_latency));
    let payloads: Vec<Vec<u8>> = all.iter().map(Event::to_json_vec).collect();
    let topic = |name: &str| Topic::new(name).expect("topic");
    let key = |t: &Topic| format!("{prefix}:{t}");

    // Publish: raw and ours take turns going first over two rounds; the best of each is kept
    // (the machine is shared).
    let (mut raw_single, mut ours_single, mut raw_batch, mut ours_batch) = (0f64, 0f64, 0f64, 0f64);
    for round in 0..2 {
        let (rs, os) = (
            topic(&format!("raw-single-{round}")),
            topic(&format!("ours-single-{round}")),
        );
        let (rb, ob) = (
            topic(&format!("raw-batch-{round}")),
            topic(&format!("ours-batch-{round}")),
        );
        if round % 2 == 0 {
            raw_single = raw_single
                .max(raw_publish_one_by_one(&mut conn, &key(&rs), &payloads[..n_single]).await?);
            ours_single =
                ours_single.max(ours_publish_one_by_one(&bus, &os, &all[..n_single]).await?);
            raw_batch = raw_batch
                .max(raw_publish_pipelined(&mut conn, &key(&rb), &payloads[..n_batch]).await?);
            ours_batch = ours_batch.max(ours_publish_pipelined(&bus, &ob, &all[..n_batch]).await?);
        } else {
            ours_single =
                ours_single.max(ours_publish_one_by_one(&bus, &os, &all[..n_single]).await?);
            raw_single = raw_single
                .max(raw_publish_one_by_one(&mut conn, &key(&rs), &payloads[..n_single]).await?);
            ours_batch = ours_batch.max(ours_publish_pipelined(&bus, &ob, &all[..n_batch]).await?);
            raw_batch = raw_batch
                .max(raw_publish_pipelined(&mut conn, &key(&rb), &payloads[..n_batch]).await?);
        }
    }

    // Consume: each side drains its own pre-filled stream of the same entries.
    let (mut raw_consume_rate, mut ours_consume_rate) = (0f64, 0f64);
    if std::env::var("BUS_BENCH_ONLY").as_deref() == Ok("ours-consume") {
        // For profiling the subscriber alone.
        for round in 0..5 {
            let t = topic(&format!("profile-consume-{round}"));
            fill(&mut conn, &key(&t), &payloads[..n_consume]).await?;
            let r = ours_consume(&bus, &t, n_consume).await?;
            println!("{r}");
        }
        return Ok(());
    }
    for round in 0..2 {
        let t = topic(&format!("raw-consume-{round}"));
        fill(&mut conn, &key(&t), &payloads[..n_consume]).await?;
        raw_consume_rate = raw_consume_rate.max(raw_consume(&client, &key(&t), n_consume).await?);
        let t = topic(&format!("ours-consume-{round}"));
        fill(&mut conn, &key(&t), &payloads[..n_consume]).await?;
        ours_consume_rate = ours_consume_rate.max(ours_consume(&bus, &t, n_consume).await?);
    }

    // End-to-end latency at 1k events/s.
    let raw_lat = raw_latency(&client, &key(&topic("raw-latency")), &payloads[..n_latency]).await?;
    let ours_lat = ours_latency(&bus, &topic("ours-latency"), &all[..n_latency]).await?;

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        let _: i64 = redis::cmd("UNLINK")
            .arg(keys)
            .query_async(&mut conn)
            .await?;
    }

    let ratio = |ours: f64, raw: f64| ((ours / raw) * 1000.0).round() / 1000.0;
    let report = serde_json::json!({
        "bench": "bus_redis",
        "payload_bytes": payloads[0].len(),
        "publish_one_by_one": {"events": n_single, "ours_per_s": ours_single, "raw_xadd_per_s": raw_single, "ratio": ratio(ours_single, raw_single)},
        "publish_pipelined_100": {"events": n_batch, "ours_per_s": ours_batch, "raw_xadd_per_s": raw_batch, "ratio": ratio(ours_batch, raw_batch)},
        "consume": {"events": n_consume, "ours_per_s": ours_consume_rate, "raw_xreadgroup_100_xack_per_s": raw_consume_rate, "ratio": ratio(ours_consume_rate, raw_consume_rate)},
        "latency_1k_per_s": {"ours": percentiles(&ours_lat), "raw_xadd_xreadgroup": percentiles(&raw_lat)},
    });
    println!("{report}");
    Ok(())
}
