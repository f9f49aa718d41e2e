//! The cost of the `otel` feature's tracing on the hot paths, with and without an
//! OpenTelemetry layer, in the same run, printed as one JSON line per workload.
//!
//! ```text
//! cargo run --release -p windlass-benches --bin otel [-- ROUNDS]
//! ```
//! `ROUNDS` (default 15) rounds of each workload, the configurations interleaved round by
//! round (A B C A B C ...) so drift hits them alike; medians are printed with the ratio to
//! the baseline.
//!
//! Workloads (one current-thread runtime, so the thread-local subscriber of a round covers
//! every task of the bus and the worker):
//! - `bus`: 1 000 events published one by one on the memory bus from inside a span (so the
//!   publisher injects a `traceparent` into each), and consumed by a subscription whose
//!   `windlass.deliver` span continues it;
//! - `bus_redis`: the same on Redis Streams (`WINDLASS_REDIS_URL`, default local), a path
//!   whose own cost is round trips;
//! - `jobs_postgres`: the jobs workload on Postgres (a fresh database from windlass-testkit);
//! - `jobs`: 1 000 jobs enqueued with `Jobs::enqueue_many` from inside a span (each row gets
//!   the span's context), drained by a worker on the memory store whose `windlass.job` span
//!   continues it.
//!
//! Configurations:
//! - `none`: no subscriber (spans are disabled; the baseline);
//! - `otel_off`: a registry with the `tracing-opentelemetry` layer, sampler `AlwaysOff` (the
//!   spans get OpenTelemetry contexts, which are injected and extracted, but nothing is
//!   recorded): the issue's target is at most 10% over `none`;
//! - `otel_on`: the same with `AlwaysOn` and an exporter that drops the spans (the cost of
//!   recording every span, for reference).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing::{Dispatch, Instrument};
use tracing_subscriber::layer::SubscriberExt;
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{Event, Group, MemoryBus, Publisher, SubscriberExt as _, Topic};
use windlass_jobs::memory::MemoryJobStore;
use windlass_jobs::{
    EnqueueOptions, Job, JobContext, JobError, JobStore, Jobs, Worker, WorkerConfig,
};

const N: usize = 1_000;

#[derive(Debug, Serialize, Deserialize)]
struct Tick(u32);

impl Job for Tick {
    const KIND: &'static str = "tick";

    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        ctx.state::<AtomicUsize>()?.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A subscriber with the OpenTelemetry layer, `sampler` deciding, spans dropped after export.
/// `lean`: the layer without the per-span extras it adds by default (code location, thread,
/// target attributes, busy / idle time, context activation on every enter).
fn otel(sampler: Sampler, lean: bool) -> (Dispatch, SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_simple_exporter(exporter.clone())
        .build();
    let mut layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"));
    if lean {
        layer = layer
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false);
    }
    let subscriber = tracing_subscriber::registry().with(layer);
    (Dispatch::new(subscriber), provider, exporter)
}

async fn bus_round(bus: &dyn Publisher, topic: &Topic, handled: &AtomicUsize, events: &[Event]) {
    let start = handled.load(Ordering::Relaxed);
    async {
        for e in events {
            bus.publish(topic, e).await.expect("publish");
        }
    }
    .instrument(tracing::info_span!("bench.request"))
    .await;
    while handled.load(Ordering::Relaxed) < start + events.len() {
        tokio::task::yield_now().await;
    }
}

async fn jobs_round(jobs: &Jobs, ran: &AtomicUsize) {
    let start = ran.load(Ordering::Relaxed);
    let ticks: Vec<Tick> = (0..N as u32).map(Tick).collect();
    jobs.enqueue_many(&ticks, &EnqueueOptions::new())
        .instrument(tracing::info_span!("bench.request"))
        .await
        .expect("enqueue");
    while ran.load(Ordering::Relaxed) < start + N {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Nanoseconds per call of `f`, the best of 5 runs of 20 000 calls.
fn ns_per_call(mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..20_000 {
                f();
            }
            t.elapsed().as_nanos() as f64 / 20_000.0
        })
        .fold(f64::INFINITY, f64::min)
}

/// The pieces of one delivery under `dispatch`, in ns: windlass's own propagation work (inject
/// into an event, parent a new span from it) and the span it runs in (a span with the
/// runner's ten fields, entered and closed), so the layer's share and ours can be told apart.
fn pieces(dispatch: &Dispatch, event: &Event) -> serde_json::Value {
    let _guard = tracing::dispatcher::set_default(dispatch);
    let request = tracing::info_span!("bench.request");
    let _entered = request.enter();
    let inject = ns_per_call(|| {
        std::hint::black_box(windlass_eventbus::otel::inject(event));
    });
    let traced = windlass_eventbus::otel::inject(event).into_owned();
    let span = |parent: bool| {
        let span = tracing::info_span!(parent: None, "windlass.deliver",
            event.id = %traced.id(), event.type = %traced.ty(), event.source = %traced.source(),
            orgid = "", correlationid = "", topic = "bench", group = "g", partition = 3_i64,
            attempt = 1_u32);
        if parent {
            windlass_eventbus::otel::set_parent(&span, &traced);
        }
        let _e = span.enter();
    };
    let bare = ns_per_call(|| span(false));
    let parented = ns_per_call(|| span(true));
    serde_json::json!({
        "inject_ns": inject.round(),
        "deliver_span_ns": bare.round(),
        "deliver_span_with_parent_ns": parented.round(),
    })
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (off, _p1, off_exporter) = otel(Sampler::AlwaysOff, false);
    let (lean_off, _p2, lean_off_exporter) = otel(Sampler::AlwaysOff, true);
    let (on, _p3, on_exporter) = otel(Sampler::AlwaysOn, false);
    let configs: [(&str, Dispatch); 5] = [
        ("none", Dispatch::none()),
        ("registry", Dispatch::new(tracing_subscriber::registry())),
        ("otel_off", off),
        ("otel_off_lean", lean_off),
        ("otel_on", on),
    ];

    // The bus and the worker live across rounds; each round runs under its configuration.
    let bus = MemoryBus::new();
    let topic = Topic::new("bench")?;
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let sub = rt.block_on(
        bus.subscribe_fn(&topic, &Group::new("g")?, move |_e, _ctx| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }),
    )?;
    let events: Vec<Event> = (0..N)
        .map(|i| {
            Event::builder("/bench", "order.placed")
                .partition_key(format!("k{}", i % 64))
                .data_json(&serde_json::json!({ "order": i }))
                .build()
        })
        .collect::<Result<_, _>>()?;
    let ran = Arc::new(AtomicUsize::new(0));
    let store = MemoryJobStore::new();
    let jobs = Jobs::new(store.clone());
    let worker = {
        let _rt = rt.enter();
        Worker::new(jobs.store().clone())
            .register::<Tick>()
            .shared_state(ran.clone())
            .config(
                WorkerConfig::default()
                    .queue("default", 16)
                    .poll_interval(Duration::from_millis(5)),
            )
            .start()?
    };

    let mut micro = serde_json::json!({ "bench": "otel", "workload": "pieces" });
    for (name, dispatch) in &configs {
        micro[*name] = pieces(dispatch, &events[0]);
    }
    println!("{micro}");

    // The same bus workload on Redis Streams (WINDLASS_REDIS_URL, default local): a path whose
    // own cost is network round trips, to put the layer's microseconds in proportion.
    let redis_url =
        std::env::var("WINDLASS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let redis = rt.block_on(RedisBus::connect(
        RedisConfig::new(redis_url.as_str()).prefix(format!("bench-otel-{}", std::process::id())),
    ))?;
    let redis_handled = Arc::new(AtomicUsize::new(0));
    let h = redis_handled.clone();
    let redis_sub =
        rt.block_on(
            redis.subscribe_fn(&topic, &Group::new("g")?, move |_e, _ctx| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            }),
        )?;

    // The jobs workload on Postgres (a fresh database from windlass-testkit), where a fetch and
    // a finish are statements.
    let db = rt.block_on(windlass_testkit::postgres::fresh_database());
    rt.block_on(windlass_jobs::postgres::migrate(&db.pool))?;
    let pg_jobs = Jobs::new(windlass_jobs::postgres::PgJobStore::new(db.pool.clone()));
    let pg_ran = Arc::new(AtomicUsize::new(0));
    let pg_worker = {
        let _rt = rt.enter();
        Worker::new(pg_jobs.store().clone())
            .register::<Tick>()
            .shared_state(pg_ran.clone())
            .config(
                WorkerConfig::default()
                    .queue("default", 16)
                    .poll_interval(Duration::from_millis(5)),
            )
            .start()?
    };

    for workload in ["bus", "jobs", "bus_redis", "jobs_postgres"] {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        // One warm-up round per configuration, then the measured ones.
        for round in 0..=rounds {
            for (i, (_, dispatch)) in configs.iter().enumerate() {
                let _guard = tracing::dispatcher::set_default(dispatch);
                let t = Instant::now();
                match workload {
                    "bus" => rt.block_on(bus_round(&bus, &topic, &handled, &events)),
                    "jobs" => rt.block_on(jobs_round(&jobs, &ran)),
                    "bus_redis" => rt.block_on(bus_round(&redis, &topic, &redis_handled, &events)),
                    _ => rt.block_on(jobs_round(&pg_jobs, &pg_ran)),
                }
                let secs = t.elapsed().as_secs_f64();
                if round > 0 {
                    times[i].push(secs);
                }
                off_exporter.reset();
                lean_off_exporter.reset();
                on_exporter.reset();
            }
            if workload == "jobs" {
                // Completed rows would make the memory store's fetch scan more each round.
                rt.block_on(store.prune(Duration::ZERO))?;
            }
        }
        let med: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
        let ratio = |a: usize, b: usize| (med[a] / med[b] * 1000.0).round() / 1000.0;
        let mut line = serde_json::json!({
            "bench": "otel",
            "workload": workload,
            "n": N,
            "rounds": rounds,
        });
        for (i, (name, _)) in configs.iter().enumerate() {
            line[format!("{name}_per_sec")] = (N as f64 / med[i]).round().into();
            line[format!("{name}_time_ratio")] = ratio(i, 0).into();
        }
        // The layer's own cost: the same spans with a subscriber but without the layer.
        line["otel_off_over_registry"] = ratio(2, 1).into();
        line["otel_off_lean_over_registry"] = ratio(3, 1).into();
        println!("{line}");
    }
    rt.block_on(async {
        worker.shutdown().await?;
        sub.shutdown().await?;
        pg_worker.shutdown().await?;
        redis_sub.shutdown().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
