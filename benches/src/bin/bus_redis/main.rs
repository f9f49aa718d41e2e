//! Throughput, latency and handover of the Redis Streams bus beside raw `redis` baselines
//! measured in the same run, printed as one JSON line.
//!
//! ```text
//! cargo run --release -p windlass-benches --bin bus_redis [-- SCALE]
//! ```
//! `SCALE` (default 1.0) multiplies the event counts. `WINDLASS_REDIS_URL` picks the server.
//! `BUS_BENCH_ONLY=ours-consume` runs only our consumer, several times (for profiling);
//! `BUS_BENCH_ONLY=handover` only the handover rounds.
//!
//! - publish, one by one: `RedisBus::publish` vs raw `XADD` awaited one at a time, with 1 and
//!   16 partitions;
//! - publish, pipelined by 100: `RedisBus::publish_batch(100)` vs a raw pipeline of 100 `XADD`
//!   (the batch spreads over the partitions: one pipeline per partition, sent together);
//! - consume: subscriptions with a no-op handler (order per key on, 64 keys) vs raw
//!   `XREADGROUP COUNT 100` + `XACK` on one stream: 1 partition / 1 member, 16 partitions / 1
//!   member, 16 partitions / 3 members (three `RedisBus` handles in this process);
//! - end-to-end latency at a fixed 1k events/s: publish -> handler vs raw `XADD` -> blocking
//!   `XREADGROUP` on another connection, with 1 and 16 partitions;
//! - handover (16 partitions, 3 members, events flowing to every partition): time from a
//!   member's crash (its subscription aborted) or graceful leave (`shutdown`) until each of its
//!   partitions is consumed by another member, p50/p99 over partitions and rounds.
//!
//! Both sides publish the same payload bytes (the event's structured JSON); ours also encodes
//! the event each time, as an application would.

mod handover;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use windlass_eventbus::partition::PartitionCount;
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{
    BusAdmin, Event, Group, Publisher, SubscribeOptions, Subscriber, TenantScope, Topic, handler_fn,
};

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

/// Drains `n` pre-published events with `members` subscriptions (each on its own `RedisBus`).
async fn ours_consume(
    config: &RedisConfig,
    topic: &Topic,
    n: usize,
    members: usize,
) -> BoxResult<f64> {
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
    let handler = Arc::new(handler);
    let started = Instant::now();
    let mut subs = Vec::new();
    for m in 0..members {
        let bus = RedisBus::connect(config.clone()).await?;
        subs.push(
            bus.subscribe(
                topic,
                &Group::new("ours")?,
                handler.clone(),
                SubscribeOptions::default().consumer(format!("c{m}")),
            )
            .await?,
        );
    }
    while handled.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    for sub in subs {
        sub.shutdown().await?;
    }
    Ok(rate(n, elapsed))
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

fn ratio(ours: f64, raw: f64) -> f64 {
    ((ours / raw) * 1000.0).round() / 1000.0
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
    let config = |p: u32| -> BoxResult<RedisConfig> {
        Ok(RedisConfig::new(url.clone())
            .prefix(prefix.clone())
            .partitions(PartitionCount::new(p)?))
    };
    let one = RedisBus::connect(config(1)?).await?;
    let sixteen = RedisBus::connect(config(16)?).await?;
    let topic = |name: &str| Topic::new(name).expect("topic");
    let key = |t: &Topic| format!("{prefix}:{t}");
    let mut topics_used: Vec<(Topic, bool)> = Vec::new();
    let only = std::env::var("BUS_BENCH_ONLY").unwrap_or_default();

    if only == "handover" {
        let report = handover::measure(&config(16)?, 3, scaled(5.0).min(20)).await?;
        println!(
            "{}",
            serde_json::json!({"bench": "bus_redis", "handover": report})
        );
        return Ok(());
    }
    let all = events(n_batch.max(n_consume).max(n_single).max(n_latency));
    let payloads: Vec<Vec<u8>> = all.iter().map(Event::to_json_vec).collect();

    if only == "ours-consume" {
        for round in 0..5 {
            let t = topic(&format!("profile-consume-{round}"));
            for chunk in all[..n_consume].chunks(500) {
                one.publish_batch(&t, chunk).await?;
            }
            let r = ours_consume(&config(1)?, &t, n_consume, 1).await?;
            println!("{r}");
            one.delete_topic(&t, &TenantScope::All).await?;
        }
        return Ok(());
    }

    // Publish: raw and ours take turns going first over two rounds; the best of each is kept
    // (the machine is shared).
    let mut best: HashMap<&str, f64> = HashMap::new();
    let mut keep = |name: &'static str, v: f64| {
        let e = best.entry(name).or_insert(0.0);
        *e = e.max(v);
    };
    for round in 0..2 {
        let t = |name: &str| topic(&format!("{name}-{round}"));
        let (rs, rb) = (t("raw-single"), t("raw-batch"));
        let (o1, o16, b1, b16) = (
            t("ours-single-p1"),
            t("ours-single-p16"),
            t("ours-batch-p1"),
            t("ours-batch-p16"),
        );
        let ours_first = round % 2 == 1;
        {
            if ours_first {
                keep(
                    "ours_single_p1",
                    ours_publish_one_by_one(&one, &o1, &all[..n_single]).await?,
                );
                keep(
                    "ours_single_p16",
                    ours_publish_one_by_one(&sixteen, &o16, &all[..n_single]).await?,
                );
            }
            keep(
                "raw_single",
                raw_publish_one_by_one(&mut conn, &key(&rs), &payloads[..n_single]).await?,
            );
            if !ours_first {
                keep(
                    "ours_single_p1",
                    ours_publish_one_by_one(&one, &o1, &all[..n_single]).await?,
                );
                keep(
                    "ours_single_p16",
                    ours_publish_one_by_one(&sixteen, &o16, &all[..n_single]).await?,
                );
            }
            if ours_first {
                keep(
                    "ours_batch_p1",
                    ours_publish_pipelined(&one, &b1, &all[..n_batch]).await?,
                );
                keep(
                    "ours_batch_p16",
                    ours_publish_pipelined(&sixteen, &b16, &all[..n_batch]).await?,
                );
            }
            keep(
                "raw_batch",
                raw_publish_pipelined(&mut conn, &key(&rb), &payloads[..n_batch]).await?,
            );
            if !ours_first {
                keep(
                    "ours_batch_p1",
                    ours_publish_pipelined(&one, &b1, &all[..n_batch]).await?,
                );
                keep(
                    "ours_batch_p16",
                    ours_publish_pipelined(&sixteen, &b16, &all[..n_batch]).await?,
                );
            }
        }
        for t in [o1, b1] {
            topics_used.push((t, false));
        }
        for t in [o16, b16] {
            topics_used.push((t, true));
        }
        for t in [rs, rb] {
            let _: i64 = redis::cmd("UNLINK")
                .arg(key(&t))
                .query_async(&mut conn)
                .await?;
        }
    }

    // Consume: each side drains its own pre-filled topic of the same events.
    let mut consume: HashMap<&str, f64> = HashMap::new();
    for round in 0..2 {
        let t = topic(&format!("raw-consume-{round}"));
        fill(&mut conn, &key(&t), &payloads[..n_consume]).await?;
        let r = raw_consume(&client, &key(&t), n_consume).await?;
        let e = consume.entry("raw").or_insert(0.0);
        *e = e.max(r);
        let _: i64 = redis::cmd("UNLINK")
            .arg(key(&t))
            .query_async(&mut conn)
            .await?;
        for (name, partitions, members) in [("p1_m1", 1, 1), ("p16_m1", 16, 1), ("p16_m3", 16, 3)] {
            let t = topic(&format!("ours-consume-{name}-{round}"));
            let bus = if partitions == 1 { &one } else { &sixteen };
            for chunk in all[..n_consume].chunks(500) {
                bus.publish_batch(&t, chunk).await?;
            }
            let r = ours_consume(&config(partitions)?, &t, n_consume, members).await?;
            let e = consume.entry(name).or_insert(0.0);
            *e = e.max(r);
            bus.delete_topic(&t, &TenantScope::All).await?;
        }
    }

    // End-to-end latency at 1k events/s.
    let raw_key = key(&topic("raw-latency"));
    let raw_lat = raw_latency(&client, &raw_key, &payloads[..n_latency]).await?;
    let _: i64 = redis::cmd("UNLINK")
        .arg(&raw_key)
        .query_async(&mut conn)
        .await?;
    let (l1, l16) = (topic("ours-latency-p1"), topic("ours-latency-p16"));
    let lat_p1 = ours_latency(&one, &l1, &all[..n_latency]).await?;
    let lat_p16 = ours_latency(&sixteen, &l16, &all[..n_latency]).await?;
    topics_used.push((l1, false));
    topics_used.push((l16, true));

    // Handover after a crash and after a graceful leave.
    let handover = handover::measure(&config(16)?, 3, scaled(3.0).min(20)).await?;

    for (t, p16) in topics_used {
        let bus = if p16 { &sixteen } else { &one };
        bus.delete_topic(&t, &TenantScope::All).await?;
    }

    let report = serde_json::json!({
        "bench": "bus_redis",
        "payload_bytes": payloads[0].len(),
        "publish_one_by_one": {"events": n_single, "raw_xadd_per_s": best["raw_single"],
            "ours_p1_per_s": best["ours_single_p1"], "ratio_p1": ratio(best["ours_single_p1"], best["raw_single"]),
            "ours_p16_per_s": best["ours_single_p16"], "ratio_p16": ratio(best["ours_single_p16"], best["raw_single"])},
        "publish_pipelined_100": {"events": n_batch, "raw_pipeline_per_s": best["raw_batch"],
            "ours_p1_per_s": best["ours_batch_p1"], "ratio_p1": ratio(best["ours_batch_p1"], best["raw_batch"]),
            "ours_p16_per_s": best["ours_batch_p16"], "ratio_p16": ratio(best["ours_batch_p16"], best["raw_batch"])},
        "consume": {"events": n_consume, "raw_xreadgroup_100_xack_per_s": consume["raw"],
            "ours_p1_1_member_per_s": consume["p1_m1"], "ratio_p1_1_member": ratio(consume["p1_m1"], consume["raw"]),
            "ours_p16_1_member_per_s": consume["p16_m1"], "ratio_p16_1_member": ratio(consume["p16_m1"], consume["raw"]),
            "ours_p16_3_members_per_s": consume["p16_m3"], "ratio_p16_3_members": ratio(consume["p16_m3"], consume["raw"])},
        "latency_1k_per_s": {"ours_p1": percentiles(&lat_p1), "ours_p16": percentiles(&lat_p16), "raw_xadd_xreadgroup": percentiles(&raw_lat)},
        "handover": handover,
    });
    println!("{report}");
    Ok(())
}
