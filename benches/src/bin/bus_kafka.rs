//! Kafka publish and consume throughput and end-to-end latency of `KafkaBus` beside raw
//! rdkafka baselines measured in the same run, printed as one JSON line.
//!
//! ```text
//! cargo run --release -p windlass-benches --bin bus_kafka [-- SCALE]
//! ```
//! `SCALE` (default 1.0) multiplies the event counts. `WINDLASS_KAFKA_BROKERS` picks the
//! cluster; unset, the testkit harness starts (or reuses) a local tansu broker.
//! `BENCH_ONLY=consume` runs the consume comparison alone; `BENCH_ROUNDS` (default 2) sets its
//! number of rounds (each printed, with the median of the per-round ratios).
//! `BENCH_CLIENT_PROPS=k=v,k=v` sets librdkafka properties of our consumer, `BENCH_MAX_PENDING`
//! its pause mark.
//!
//! - publish: `KafkaBus::publish_batch` in windows of 1000 vs a raw `FutureProducer` with the
//!   same settings (idempotence, `acks=all`, `linger.ms=1`) sending the same key, value and
//!   CloudEvents headers, 1000 sends in flight; alternating rounds, best of each;
//! - consume: a topic of 3 partitions pre-filled with the same events; a `KafkaBus` group
//!   subscription (default options: 16 handlers, read-ahead 256, offsets committed after the
//!   handler) with a no-op handler vs a raw `StreamConsumer` in its own group (subscribe,
//!   librdkafka's auto commit) counting records; each timed from the assignment of its
//!   partitions (ours: `subscribe` returned; raw: the rebalance callback) to the last record,
//!   so the group join is not timed but the fetching is; alternating rounds, best of each and
//!   every round's ratio;
//! - end-to-end latency at a fixed rate (1k events/s): publish -> handler of a group
//!   subscription (offsets committed per batch) vs raw produce -> raw `StreamConsumer` with
//!   manual assignment (no group, no commit).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use windlass_eventbus::kafka::{GroupTimeouts, KafkaBus, KafkaConfig};
use windlass_eventbus::{Event, Group, Publisher, SubscribeOptions, Subscriber, Topic, handler_fn};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const WINDOW: usize = 1000;

fn event(i: usize, sent_nanos: u64) -> Event {
    Event::builder("/bench", "bench.order.placed")
        .subject(format!("order-{i}"))
        .org_id("acme")
        .partition_key(format!("order-{}", i % 64))
        .data_json(&serde_json::json!({"seq": i, "amount": 1234, "currency": "EUR", "sku": "ABC-123", "sent": sent_nanos}))
        .build()
        .expect("valid event")
}

/// What the raw producer sends: the same key, value and headers our publisher would.
struct RawRecord {
    key: String,
    value: Vec<u8>,
    headers: Vec<(String, String)>,
}

fn raw_record(e: &Event) -> RawRecord {
    let mut headers = vec![
        ("ce_specversion".to_owned(), "1.0".to_owned()),
        ("ce_id".to_owned(), e.id().to_owned()),
        ("ce_source".to_owned(), e.source().to_owned()),
        ("ce_type".to_owned(), e.ty().to_owned()),
        (
            "ce_time".to_owned(),
            e.time().map(|t| t.to_rfc3339()).unwrap_or_default(),
        ),
        (
            "ce_subject".to_owned(),
            e.subject().unwrap_or_default().to_owned(),
        ),
        ("ce_orgid".to_owned(), "acme".to_owned()),
        (
            "ce_partitionkey".to_owned(),
            e.partition_key().unwrap_or_default().to_owned(),
        ),
    ];
    headers.push(("content-type".to_owned(), "application/json".to_owned()));
    RawRecord {
        key: e.ordering_key().unwrap_or_default().to_owned(),
        value: e.data_bytes().map(|b| b.to_vec()).unwrap_or_default(),
        headers,
    }
}

fn producer(brokers: &str) -> BoxResult<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()?)
}

async fn raw_publish(p: &FutureProducer, topic: &str, records: &[RawRecord]) -> BoxResult<f64> {
    let started = Instant::now();
    for chunk in records.chunks(WINDOW) {
        let sends = chunk.iter().map(|r| {
            let mut h = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            p.send(
                FutureRecord::to(topic)
                    .key(&r.key)
                    .payload(&r.value)
                    .headers(h),
                Timeout::Never,
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
    }
    Ok(records.len() as f64 / started.elapsed().as_secs_f64())
}

async fn ours_publish(bus: &KafkaBus, topic: &Topic, events: &[Event]) -> BoxResult<f64> {
    let started = Instant::now();
    for chunk in events.chunks(WINDOW) {
        bus.publish_batch(topic, chunk).await?;
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// Our subscriber: events/s from the moment `subscribe` returned (the group assigned this
/// member its partitions) to the `n`th handled event.
async fn ours_consume(bus: &KafkaBus, topic: &Topic, n: usize) -> BoxResult<f64> {
    let state = Arc::new(Mutex::new((0usize, None::<Instant>)));
    let st = state.clone();
    let group = Group::new(format!("bench-consume-{}", uuid::Uuid::new_v4().simple()))?;
    let sub = bus
        .subscribe(
            topic,
            &group,
            Arc::new(handler_fn(move |_, _| {
                let mut s = st.lock().unwrap();
                s.0 += 1;
                if s.0 == n {
                    s.1 = Some(Instant::now());
                }
                async { Ok(()) }
            })),
            SubscribeOptions::default(),
        )
        .await?;
    let assigned = Instant::now();
    let end = Instant::now() + Duration::from_secs(300);
    while state.lock().unwrap().1.is_none() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sub.shutdown().await?;
    let (count, last) = *state.lock().unwrap();
    match last {
        Some(l) => Ok(n as f64 / (l - assigned).as_secs_f64()),
        None => Err(format!("our subscriber consumed {count} of {n} events within 300 s").into()),
    }
}

/// Records when the group assigned partitions to the raw consumer.
struct AssignedAt(Mutex<Option<Instant>>);

impl rdkafka::ClientContext for AssignedAt {}

impl rdkafka::consumer::ConsumerContext for AssignedAt {
    fn post_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if matches!(rebalance, rdkafka::consumer::Rebalance::Assign(_)) {
            self.0.lock().unwrap().get_or_insert_with(Instant::now);
        }
    }
}

/// Raw rdkafka: a `StreamConsumer` in its own group counting records, events/s from the
/// assignment to the `n`th record.
async fn raw_consume(brokers: &str, topic: &str, n: usize) -> BoxResult<f64> {
    let (s, m, h) = windlass_testkit::kafka::group_timeouts();
    let consumer: StreamConsumer<AssignedAt> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("bench-raw-consume-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", s.to_string())
        .set("max.poll.interval.ms", m.to_string())
        .set("heartbeat.interval.ms", h.to_string())
        .create_with_context(AssignedAt(Mutex::new(None)))?;
    consumer.subscribe(&[topic])?;
    let mut stream = consumer.stream();
    let mut count = 0usize;
    let end = Instant::now() + Duration::from_secs(300);
    while count < n && Instant::now() < end {
        match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
            Ok(Some(Ok(_m))) => count += 1,
            Ok(Some(Err(e))) => return Err(e.into()),
            _ => {}
        }
    }
    let last = Instant::now();
    drop(stream);
    let assigned = *consumer.context().0.lock().unwrap();
    match assigned.filter(|_| count == n) {
        Some(a) => Ok(n as f64 / (last - a).as_secs_f64()),
        None => Err(format!("raw rdkafka consumed {count} of {n} records within 300 s").into()),
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50_ms": h.value_at_quantile(0.50) as f64 / 1e6,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1e6,
        "max_ms": h.max() as f64 / 1e6,
        "n": h.len(),
    })
}

async fn ours_latency(
    bus: &KafkaBus,
    topic: &Topic,
    n: usize,
    epoch: Instant,
) -> BoxResult<Histogram<u64>> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let h2 = hist.clone();
    let group = Group::new(format!("bench-{}", uuid::Uuid::new_v4().simple()))?;
    let sub = bus
        .subscribe(
            topic,
            &group,
            Arc::new(handler_fn(move |e, _| {
                let h = h2.clone();
                async move {
                    let v: serde_json::Value = e.data_as().ok().flatten().unwrap_or_default();
                    let sent = v["sent"].as_u64().unwrap_or(0);
                    let _ = h
                        .lock()
                        .unwrap()
                        .record(nanos_since(epoch).saturating_sub(sent));
                    Ok(())
                }
            })),
            SubscribeOptions::default(),
        )
        .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..n {
        tick.tick().await;
        bus.publish(topic, &event(i, nanos_since(epoch))).await?;
    }
    let end = Instant::now() + Duration::from_secs(30);
    while (hist.lock().unwrap().len() as usize) < n && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await?;
    let h = hist.lock().unwrap().clone();
    Ok(h)
}

async fn raw_latency(
    brokers: &str,
    topic: &str,
    n: usize,
    epoch: Instant,
    fetch_wait: &str,
) -> BoxResult<Histogram<u64>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("fetch.wait.max.ms", fetch_wait)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::End)?;
    consumer.assign(&tpl)?;
    let p = producer(brokers)?;
    let topic_owned = topic.to_owned();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        // Let the consumer reach the end before sending.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..n {
            tick.tick().await;
            let r = raw_record(&event(i, 0));
            let sent = nanos_since(epoch).to_string();
            let mut h = OwnedHeaders::new();
            for (k, v) in &r.headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            h = h.insert(Header {
                key: "sent",
                value: Some(sent.as_bytes()),
            });
            let _ = p
                .send(
                    FutureRecord::to(&topic_owned)
                        .key(&r.key)
                        .payload(&r.value)
                        .headers(h),
                    Timeout::Never,
                )
                .await;
        }
    });
    let mut hist = Histogram::<u64>::new(3)?;
    let mut stream = consumer.stream();
    let end = Instant::now() + Duration::from_secs(40);
    while (hist.len() as usize) < n && Instant::now() < end {
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await
        else {
            continue;
        };
        let sent = m
            .headers()
            .and_then(|hs| hs.iter().find(|h| h.key == "sent").and_then(|h| h.value))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        hist.record(nanos_since(epoch).saturating_sub(sent))?;
    }
    sender.await?;
    Ok(hist)
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let scale: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let n = ((50_000.0 * scale) as usize).max(WINDOW);
    let latency_n = ((3_000.0 * scale) as usize).max(100);
    let brokers = tokio::task::spawn_blocking(windlass_testkit::kafka::brokers).await?;
    let mut config = KafkaConfig::new(&brokers).group_timeouts(GroupTimeouts::tansu());
    // Records of one partition read and not yet committed before the subscriber pauses it.
    if let Some(n) = std::env::var("BENCH_MAX_PENDING")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config = config.max_pending_per_partition(n);
    }
    // librdkafka properties of our consumer, `k=v,k=v` (e.g. `queued.min.messages=100000`).
    if let Ok(props) = std::env::var("BENCH_CLIENT_PROPS") {
        for kv in props.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or("BENCH_CLIENT_PROPS: k=v,k=v")?;
            config = config.client_property(k, v);
        }
    }
    let bus = KafkaBus::new(config)?;
    let raw = producer(&brokers)?;
    // Latency runs: both consumers with the same `fetch.wait.max.ms` (librdkafka: 500).
    let fetch_wait = std::env::var("BENCH_FETCH_WAIT_MS").unwrap_or_else(|_| "500".to_owned());
    let lat_bus = KafkaBus::new(
        KafkaConfig::new(&brokers)
            .group_timeouts(GroupTimeouts::tansu())
            .client_property("fetch.wait.max.ms", &fetch_wait),
    )?;

    // `BENCH_ONLY=consume` runs the consume comparison only (profiling, repeated runs).
    let consume_only = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "consume");
    // Consume rounds (alternating who goes first); every round is reported.
    let consume_rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(1);
    let mut raw_best: f64 = 0.0;
    let mut ours_best: f64 = 0.0;
    for round in 0..if consume_only { 0 } else { 2 } {
        let t_raw = windlass_testkit::kafka::unique_topic();
        let t_ours = windlass_testkit::kafka::unique_topic();
        windlass_testkit::kafka::create_topic(&brokers, &t_raw, 3).await;
        windlass_testkit::kafka::create_topic(&brokers, &t_ours, 3).await;
        let events: Vec<Event> = (0..n).map(|i| event(i, 0)).collect();
        let records: Vec<RawRecord> = events.iter().map(raw_record).collect();
        // Alternate who goes first.
        if round % 2 == 0 {
            raw_best = raw_best.max(raw_publish(&raw, t_raw.as_str(), &records).await?);
            ours_best = ours_best.max(ours_publish(&bus, &t_ours, &events).await?);
        } else {
            ours_best = ours_best.max(ours_publish(&bus, &t_ours, &events).await?);
            raw_best = raw_best.max(raw_publish(&raw, t_raw.as_str(), &records).await?);
        }
    }

    // Consume: one pre-filled topic, read by a fresh group of each kind per round.
    let consume_n = ((50_000.0 * scale) as usize).max(WINDOW);
    let t_consume = windlass_testkit::kafka::unique_topic();
    windlass_testkit::kafka::create_topic(&brokers, &t_consume, 3).await;
    let fill: Vec<RawRecord> = (0..consume_n).map(|i| raw_record(&event(i, 0))).collect();
    raw_publish(&raw, t_consume.as_str(), &fill).await?;
    let mut raw_consume_best: f64 = 0.0;
    let mut ours_consume_best: f64 = 0.0;
    let mut consume_runs = Vec::new();
    for round in 0..consume_rounds {
        let (raw_r, ours_r) = if round % 2 == 0 {
            let r = raw_consume(&brokers, t_consume.as_str(), consume_n).await?;
            (r, ours_consume(&bus, &t_consume, consume_n).await?)
        } else {
            let o = ours_consume(&bus, &t_consume, consume_n).await?;
            (
                raw_consume(&brokers, t_consume.as_str(), consume_n).await?,
                o,
            )
        };
        raw_consume_best = raw_consume_best.max(raw_r);
        ours_consume_best = ours_consume_best.max(ours_r);
        eprintln!(
            "consume round {round}: ours {ours_r:.0}/s, raw {raw_r:.0}/s, ratio {:.3}",
            ours_r / raw_r
        );
        consume_runs.push(serde_json::json!({
            "ours_per_s": ours_r.round(),
            "raw_stream_consumer_per_s": raw_r.round(),
            "ratio": (ours_r / raw_r * 1000.0).round() / 1000.0,
        }));
    }
    let mut ratios: Vec<f64> = consume_runs
        .iter()
        .filter_map(|r| r["ratio"].as_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median_ratio = ratios[ratios.len() / 2];
    if consume_only {
        let report = serde_json::json!({
            "bench": "bus_kafka",
            "brokers": brokers,
            "consume": {
                "events": consume_n,
                "ours_per_s": ours_consume_best.round(),
                "raw_stream_consumer_per_s": raw_consume_best.round(),
                "ratio": (ours_consume_best / raw_consume_best * 1000.0).round() / 1000.0,
                "median_round_ratio": median_ratio,
                "rounds": consume_runs,
            },
        });
        println!("{report}");
        return Ok(());
    }

    let epoch = Instant::now();
    let t_lat = windlass_testkit::kafka::unique_topic();
    windlass_testkit::kafka::create_topic(&brokers, &t_lat, 1).await;
    let ours_lat = ours_latency(&lat_bus, &t_lat, latency_n, epoch).await?;
    let t_raw_lat = windlass_testkit::kafka::unique_topic();
    windlass_testkit::kafka::create_topic(&brokers, &t_raw_lat, 1).await;
    let raw_lat = raw_latency(&brokers, t_raw_lat.as_str(), latency_n, epoch, &fetch_wait).await?;

    let report = serde_json::json!({
        "bench": "bus_kafka",
        "brokers": brokers,
        "events": n,
        "publish": {
            "ours_per_s": ours_best.round(),
            "raw_rdkafka_per_s": raw_best.round(),
            "ratio": (ours_best / raw_best * 1000.0).round() / 1000.0,
        },
        "consume": {
            "events": consume_n,
            "ours_per_s": ours_consume_best.round(),
            "raw_stream_consumer_per_s": raw_consume_best.round(),
            "ratio": (ours_consume_best / raw_consume_best * 1000.0).round() / 1000.0,
            "median_round_ratio": median_ratio,
            "rounds": consume_runs,
        },
        "fetch_wait_max_ms": fetch_wait,
        "e2e_latency_1k_per_s": {
            "ours": percentiles(&ours_lat),
            "raw_rdkafka": percentiles(&raw_lat),
        },
    });
    println!("{report}");
    Ok(())
}
