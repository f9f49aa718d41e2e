//! Encoding and decoding the Event (CloudEvents 1.0 structured JSON), the work done per publish
//! and per delivery. Baseline: `serde_json` on the same document as an untyped `Value`.
//!
//! ```text
//! cargo bench -p windlass-benches --bench event_codec
//! ```

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use windlass_eventbus::Event;

fn small() -> Event {
    Event::builder("/billing", "invoice.paid")
        .subject("inv_42")
        .org_id("acme")
        .partition_key("inv_42")
        .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .data_json(&serde_json::json!({"amount": 100, "currency": "EUR"}))
        .build()
        .expect("valid event")
}

fn large() -> Event {
    let lines: Vec<serde_json::Value> = (0..40)
        .map(|i| serde_json::json!({"sku": format!("SKU-{i:05}"), "qty": i, "price": 1999}))
        .collect();
    Event::builder("/shop", "order.placed")
        .org_id("acme")
        .data_json(&serde_json::json!({"lines": lines}))
        .build()
        .expect("valid event")
}

fn codec(c: &mut Criterion) {
    for (name, event) in [("small", small()), ("4k", large())] {
        let bytes = event.to_json_vec();
        c.bench_function(&format!("event_encode_{name}"), |b| {
            b.iter(|| black_box(&event).to_json_vec())
        });
        c.bench_function(&format!("event_decode_{name}"), |b| {
            b.iter(|| Event::from_json(black_box(&bytes)).expect("decodes"))
        });
        c.bench_function(&format!("baseline_serde_value_decode_{name}"), |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&bytes)).expect("json"))
        });
        c.bench_function(&format!("baseline_serde_value_encode_{name}"), |b| {
            let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            b.iter(|| serde_json::to_vec(black_box(&value)).expect("json"))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        // Charts come from `src/bin/plot.rs`; criterion's own would need a TrueType font library.
        .without_plots().warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = codec
}
criterion_main!(benches);
