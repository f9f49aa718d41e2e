//! Conformance of the trace context columns (`traceparent`, `tracestate`): what an insert is
//! given comes back from fetch and from the listings, untouched, and a row without one has none.

use std::sync::Arc;

use windlass_core::TenantScope;
use windlass_jobs::{JobStore, NewJob};

use super::{q, raw};

/// A job's W3C trace context is stored with it and handed to the worker that fetches it.
pub async fn trace_context_is_carried_to_the_worker(store: Arc<dyn JobStore>) {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut traced: NewJob = raw("traced", serde_json::json!({}), &q().priority(0));
    traced.traceparent = Some(tp.to_owned());
    traced.tracestate = Some("congo=t61rcWkgMzE".to_owned());
    let mut plain = raw("plain", serde_json::json!({}), &q().priority(1));
    plain.traceparent = None;
    plain.tracestate = None;
    let ids: Vec<_> = store
        .insert(vec![traced, plain])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id().unwrap())
        .collect();
    let got = store.fetch("q", &[], 10, "w1").await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, ids[0]);
    assert_eq!(got[0].traceparent.as_deref(), Some(tp));
    assert_eq!(got[0].tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    assert_eq!(
        (got[1].traceparent.as_deref(), got[1].tracestate.as_deref()),
        (None, None)
    );
    let rec = store.get(&TenantScope::All, ids[0]).await.unwrap().unwrap();
    assert_eq!(rec.traceparent.as_deref(), Some(tp));
    assert_eq!(rec.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
}
