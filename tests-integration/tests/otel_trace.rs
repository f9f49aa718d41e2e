//! Feature `otel`: one OpenTelemetry trace from an HTTP request to the job it causes, across
//! the Postgres outbox, its relay, the memory bus and a Postgres job worker. Spans are
//! collected with the SDK's in-memory exporter and the parent chain is asserted span by span:
//!
//! ```text
//! http.request
//!   windlass.outbox.enqueue      (in the request's transaction)
//!     windlass.outbox.publish    (the relay; parent carried in the outbox row)
//!       windlass.deliver         (the bus subscriber; parent carried in the event)
//!         windlass.job.enqueue   (the handler enqueues a job)
//!           windlass.job         (the worker; parent carried in the job row)
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use windlass::eventbus::{
    Event, Group, HandlerError, MemoryBus, Publisher, SubscriberExt as _, Topic,
};
use windlass::jobs::postgres::PgJobStore;
use windlass::jobs::{EnqueueOptions, Job, JobContext, JobError, Jobs, Worker, WorkerConfig};
use windlass::outbox::Relay;
use windlass::outbox::postgres::{Outbox, PgOutboxStore};
use windlass_testkit::postgres::fresh_database;

/// One exporter for the process (the subscriber is global: the runtime's worker threads and
/// the tasks the bus, relay and worker spawn must all see it). Tests tell their spans apart by
/// trace id.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("windlass-test")));
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        exporter
    })
}

/// The finished spans of `trace`, waiting up to 5 s until every name in `names` is there.
async fn spans_of(trace: TraceId, names: &[&str]) -> Vec<SpanData> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let spans: Vec<SpanData> = exporter()
            .get_finished_spans()
            .expect("exporter")
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        if names.iter().all(|n| spans.iter().any(|s| s.name == *n))
            || tokio::time::Instant::now() > deadline
        {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one finished span named `name` (panics with every span's name and trace otherwise).
fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {name:?} span in the trace, got {}; the trace holds {:?}; every span: {:?}",
        found.len(),
        spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
        exporter()
            .get_finished_spans()
            .unwrap_or_default()
            .iter()
            .map(|s| (
                s.name.to_string(),
                s.span_context.trace_id(),
                s.parent_span_id
            ))
            .collect::<Vec<_>>()
    );
    found[0]
}

fn assert_parent(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{:?}'s parent should be {:?}",
        child.name,
        parent.name
    );
}

/// The root span of a test, found by its unique name among every finished span.
fn root(name: &str) -> SpanData {
    let spans = exporter().get_finished_spans().expect("exporter");
    let root = spans
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name:?} span was exported"));
    assert_eq!(root.parent_span_id, SpanId::INVALID, "{name} is a root");
    root
}

#[derive(Debug, Serialize, Deserialize)]
struct Charge {
    order: String,
}

impl Job for Charge {
    const KIND: &'static str = "charge";

    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        let ran = ctx.state::<mpsc::UnboundedSender<String>>()?;
        let _ = ran.send(self.order.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_http_request_through_outbox_bus_and_job() {
    exporter();
    let db = fresh_database().await;
    windlass::migrate(&db.pool).await.unwrap();
    let bus = MemoryBus::new();
    let topic = Topic::new("orders").unwrap();
    let jobs = Jobs::new(PgJobStore::new(db.pool.clone()));

    // Consumer: the handler enqueues a job for every order.
    let handler_jobs = jobs.clone();
    let sub = bus
        .subscribe_fn(
            &topic,
            &Group::new("billing").unwrap(),
            move |event, _ctx| {
                let jobs = handler_jobs.clone();
                async move {
                    let order: String = event
                        .data_as()
                        .map_err(HandlerError::reject)?
                        .ok_or_else(|| HandlerError::reject("no order"))?;
                    jobs.enqueue(&Charge { order }, &EnqueueOptions::new())
                        .await
                        .map_err(HandlerError::retry)?;
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
    let (ran_tx, mut ran_rx) = mpsc::unbounded_channel::<String>();
    let worker = Worker::new(jobs.store().clone())
        .register::<Charge>()
        .state(ran_tx)
        .config(
            WorkerConfig::default()
                .queue("default", 2)
                .poll_interval(Duration::from_millis(50)),
        )
        .start()
        .unwrap();

    // The "HTTP request": the order and its event commit in one transaction, in the request's
    // span. The relay runs outside of it: only the carried context can link what follows.
    let outbox = Outbox::new();
    let request = tracing::info_span!("http.request", http.method = "POST", http.route = "/orders");
    async {
        let mut tx = db.pool.begin().await.unwrap();
        let placed = Event::builder("/orders", "order.placed")
            .subject("ord-1")
            .data_json(&"ord-1")
            .build()
            .unwrap();
        outbox.enqueue(&mut tx, &topic, &placed).await.unwrap();
        tx.commit().await.unwrap();
    }
    .instrument(request)
    .await;
    let relay = Relay::new(PgOutboxStore::new(db.pool.clone()), bus.clone());
    assert_eq!(
        relay
            .drain(Duration::from_secs(10))
            .await
            .unwrap()
            .published,
        1
    );

    let ran = tokio::time::timeout(Duration::from_secs(10), ran_rx.recv())
        .await
        .expect("the job ran within 10 s");
    assert_eq!(ran.as_deref(), Some("ord-1"));
    worker.shutdown().await.unwrap();
    sub.shutdown().await.unwrap();

    let http = root("http.request");
    let trace = http.span_context.trace_id();
    let chain = [
        "windlass.outbox.enqueue",
        "windlass.outbox.publish",
        "windlass.deliver",
        "windlass.job.enqueue",
        "windlass.job",
    ];
    let spans = spans_of(trace, &chain).await;
    let mut parent = &http;
    for name in chain {
        let span = one(&spans, name);
        assert_eq!(
            span.span_context.trace_id(),
            trace,
            "{name} is in the request's trace"
        );
        assert_parent(span, parent);
        parent = span;
    }
    // The hops that crossed a store or the bus continue a remote parent.
    for name in [
        "windlass.outbox.publish",
        "windlass.deliver",
        "windlass.job",
    ] {
        assert!(
            one(&spans, name).parent_span_is_remote,
            "{name}: remote parent"
        );
    }
    for name in ["windlass.outbox.enqueue", "windlass.job.enqueue"] {
        assert!(
            !one(&spans, name).parent_span_is_remote,
            "{name}: local parent"
        );
    }
}

/// A direct publish (no outbox) carries the publishing span's context; an event that already
/// has a `traceparent` keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_publish_injects_and_the_handler_continues() {
    exporter();
    let bus = MemoryBus::new();
    let topic = Topic::new("direct").unwrap();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Event>();
    let seen_tx = Arc::new(seen_tx);
    let sub = bus
        .subscribe_fn(&topic, &Group::new("g").unwrap(), move |event, _ctx| {
            let seen = seen_tx.clone();
            async move {
                tracing::info_span!("handler.work").in_scope(|| ());
                let _ = seen.send(event);
                Ok(())
            }
        })
        .await
        .unwrap();
    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    async {
        let plain = Event::builder("/t", "plain").build().unwrap();
        bus.publish(&topic, &plain).await.unwrap();
        let preset = Event::builder("/t", "preset")
            .traceparent(given)
            .build()
            .unwrap();
        bus.publish(&topic, &preset).await.unwrap();
    }
    .instrument(tracing::info_span!("direct.request"))
    .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
                .await
                .expect("delivered")
                .expect("open"),
        );
    }
    sub.shutdown().await.unwrap();

    let request = root("direct.request");
    let trace = request.span_context.trace_id();
    let plain = got.iter().find(|e| e.ty() == "plain").unwrap();
    assert_eq!(
        plain.traceparent(),
        Some(format!("00-{trace}-{}-01", request.span_context.span_id()).as_str()),
        "the plain event carries the publishing span's context"
    );
    let preset = got.iter().find(|e| e.ty() == "preset").unwrap();
    assert_eq!(
        preset.traceparent(),
        Some(given),
        "a set traceparent is kept"
    );

    let spans = spans_of(trace, &["windlass.deliver", "handler.work"]).await;
    let deliver = one(&spans, "windlass.deliver");
    assert_parent(deliver, &request);
    assert_parent(one(&spans, "handler.work"), deliver);
    // The preset event's delivery continues the given trace instead.
    let other: TraceId = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let spans = spans_of(other, &["windlass.deliver"]).await;
    assert_eq!(
        one(&spans, "windlass.deliver").parent_span_id,
        SpanId::from_hex("b7ad6b7169203331").unwrap()
    );
}
