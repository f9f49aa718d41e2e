//! Schema validation end to end on the in-memory bus: the publisher refuses invalid events, the
//! subscriber-side wrapper dead-letters invalid ones written by a non-validating publisher, a
//! producer-first rollout of a new version is not dead-lettered, readers get defaults filled
//! in, the migration helpers route a domain between two buses, and schemas load from a
//! Confluent-compatible registry (a small HTTP server the test starts).
#![cfg(all(feature = "schema-registry", feature = "memory"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use windlass_eventbus::migrate::{Backend, Migration, Routes};
use windlass_eventbus::schema::{
    Compatibility, CompatibilityRule, ConfluentRegistry, RegistryOptions, SchemaError,
    SchemaRegistry, UnknownVersion, ValidatingHandler, ValidatingPublisher,
};
use windlass_eventbus::{
    DeadLetters, Error, Event, Group, MemoryBus, Publisher, SubscribeOptions, Subscriber,
    SubscriberExt, Topic, handler_fn,
};

fn registry() -> Arc<SchemaRegistry> {
    let r = SchemaRegistry::new();
    r.register(
        "invoice.paid",
        "urn:invoice.paid:1",
        json!({ "type": "object", "required": ["amount"], "properties": { "amount": { "type": "integer" } } }),
    )
    .unwrap();
    Arc::new(r)
}

fn paid(amount: serde_json::Value) -> Event {
    Event::builder("/billing", "invoice.paid")
        .data_json(&json!({ "amount": amount }))
        .build()
        .unwrap()
}

#[tokio::test]
async fn invalid_events_are_refused_at_publish_and_dead_lettered_at_consume() {
    let bus = MemoryBus::new();
    let topic = Topic::new("invoices").unwrap();
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    let inner = handler_fn(move |_, _| {
        h.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("ledger").unwrap(),
            Arc::new(ValidatingHandler::new(inner, registry())),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();

    let validating = ValidatingPublisher::new(bus.clone(), registry());
    validating.publish(&topic, &paid(json!(100))).await.unwrap();
    match validating.publish(&topic, &paid(json!("100"))).await {
        Err(Error::Schema(SchemaError::Invalid { errors, .. })) => {
            assert!(errors[0].contains("/amount"), "{errors:?}")
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
    // A batch with one invalid event sends nothing.
    assert!(
        validating
            .publish_batch(&topic, &[paid(json!(1)), paid(json!(null))])
            .await
            .is_err()
    );

    // A producer that does not validate: the consumer side dead-letters the invalid event.
    bus.publish(&topic, &paid(json!("lots"))).await.unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let dlq = loop {
        let dlq = bus.dead_letters(&topic, 10).await.unwrap();
        if !dlq.is_empty() {
            break dlq;
        }
        assert!(Instant::now() < end, "nothing dead-lettered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        dlq[0]
            .error
            .contains("does not match schema urn:invoice.paid:1"),
        "{}",
        dlq[0].error
    );
    sub.shutdown().await.unwrap();
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "only the valid event reached the handler"
    );
}

#[tokio::test]
async fn a_validating_dual_publisher_and_routed_subscriptions_on_memory_buses() {
    let migration = Migration::new(
        MemoryBus::new(),
        MemoryBus::new(),
        Routes::new(Backend::Redis).route("billing", Backend::Redis),
    );
    let publisher = ValidatingPublisher::new(migration.clone(), registry());
    let invoices = Topic::new("billing.invoices").unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let s = seen.clone();
    let sub = migration
        .subscribe_fn(&invoices, &Group::new("ledger").unwrap(), move |_, _| {
            s.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .await
        .unwrap();
    publisher.publish(&invoices, &paid(json!(1))).await.unwrap();
    assert!(
        publisher
            .publish(&invoices, &paid(json!("x")))
            .await
            .is_err()
    );
    migration.switch("billing", Backend::Kafka).await.unwrap();
    assert_eq!(migration.backend_for(&invoices), Backend::Kafka);
    assert_eq!(
        migration.backend_for(&Topic::new("billingx.invoices").unwrap()),
        Backend::Redis
    );
    migration.switch("billing", Backend::Redis).await.unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    // The event is on both buses: the subscription sees it once per bus it read (no inbox here).
    while seen.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await.unwrap();
}

/// Subscribes a validating handler on a fresh memory bus; returns the bus, the topic, what the
/// handler saw and the subscription.
async fn validating_consumer(
    registry: Arc<SchemaRegistry>,
) -> (
    MemoryBus,
    Topic,
    Arc<std::sync::Mutex<Vec<Event>>>,
    windlass_eventbus::Subscription,
) {
    let bus = MemoryBus::new();
    let topic = Topic::new("invoices").unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let inner = handler_fn(move |e, _| {
        s.lock().unwrap().push(e.clone());
        async { Ok(()) }
    });
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("ledger").unwrap(),
            Arc::new(ValidatingHandler::new(inner, registry)),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    (bus, topic, seen, sub)
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_producer_first_rollout_of_a_new_version_is_not_dead_lettered() {
    // The consumer knows v1 only; producers already write v2 (one more optional field).
    let v2_event = |amount: serde_json::Value| {
        Event::builder("/billing", "invoice.paid")
            .data_schema("urn:invoice.paid:2")
            .data_json(&json!({ "amount": amount, "memo": "new field" }))
            .build()
            .unwrap()
    };
    let (bus, topic, seen, sub) = validating_consumer(registry()).await;
    bus.publish(&topic, &v2_event(json!(5))).await.unwrap();
    bus.publish(&topic, &v2_event(json!("not a number")))
        .await
        .unwrap();
    wait_until("one handled, one dead-lettered", || {
        seen.lock().unwrap().len() == 1
    })
    .await;
    let end = Instant::now() + Duration::from_secs(10);
    let dlq = loop {
        let dlq = bus.dead_letters(&topic, 10).await.unwrap();
        if !dlq.is_empty() {
            break dlq;
        }
        assert!(
            Instant::now() < end,
            "the invalid v2 event was not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(dlq.len(), 1);
    assert!(
        dlq[0].error.contains("urn:invoice.paid:2"),
        "{}",
        dlq[0].error
    );
    assert!(
        dlq[0].error.contains("no known version accepts it"),
        "{}",
        dlq[0].error
    );
    sub.shutdown().await.unwrap();

    // With the Reject policy, the valid v2 event is dead-lettered too.
    let strict = SchemaRegistry::with_options(
        RegistryOptions::default().unknown_version(UnknownVersion::Reject),
    );
    strict
        .register(
            "invoice.paid",
            "urn:invoice.paid:1",
            json!({ "type": "object", "required": ["amount"], "properties": { "amount": { "type": "integer" } } }),
        )
        .unwrap();
    let (bus, topic, seen, sub) = validating_consumer(Arc::new(strict)).await;
    bus.publish(&topic, &v2_event(json!(5))).await.unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while bus.dead_letters(&topic, 10).await.unwrap().is_empty() {
        assert!(Instant::now() < end, "not dead-lettered under Reject");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await.unwrap();
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn readers_get_the_defaults_the_rule_says_they_fill() {
    let registry = SchemaRegistry::with_options(RegistryOptions::default().compatibility(
        CompatibilityRule::new(Compatibility::BackwardTransitive).reader_fills_defaults(true),
    ));
    let v1 = json!({
        "type": "object", "additionalProperties": false, "required": ["amount"],
        "properties": { "amount": { "type": "integer" } }
    });
    let v2 = json!({
        "type": "object", "additionalProperties": false, "required": ["amount", "currency"],
        "properties": { "amount": { "type": "integer" }, "currency": { "type": "string", "default": "EUR" } }
    });
    registry.register("invoice.paid", "urn:1", v1).unwrap();
    registry.register("invoice.paid", "urn:2", v2).unwrap();
    let (bus, topic, seen, sub) = validating_consumer(Arc::new(registry)).await;
    let old = Event::builder("/billing", "invoice.paid")
        .data_schema("urn:1")
        .data_json(&json!({ "amount": 7 }))
        .build()
        .unwrap();
    bus.publish(&topic, &old).await.unwrap();
    wait_until("the old event handled", || seen.lock().unwrap().len() == 1).await;
    sub.shutdown().await.unwrap();
    let got = seen.lock().unwrap()[0].clone();
    assert_eq!(got.id(), old.id());
    assert_eq!(
        got.data_as::<serde_json::Value>().unwrap(),
        Some(json!({ "amount": 7, "currency": "EUR" })),
        "the handler sees the event with the default filled in"
    );
}

// --- A Confluent-compatible registry, served by the test --------------------------------

const USER: &str = "api-key";
const PASSWORD: &str = "hunter2-registry-secret";

/// Serves the subset of the Confluent Schema Registry API the client uses, with HTTP basic
/// auth, until the runtime stops. Returns its base URL.
async fn confluent_server() -> String {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let v1 = json!({ "type": "object", "required": ["amount"], "properties": { "amount": { "type": "integer" } } });
    let v2 = json!({ "$id": "https://schemas.example.com/invoice.paid/2", "type": "object", "required": ["amount"], "properties": { "amount": { "type": "integer" }, "memo": {} } });
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (auth, v1, v2) = (auth.clone(), v1.clone(), v2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("").to_owned();
                let authorized = req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:") && l[14..].trim() == auth
                });
                let version = |id: u64, v: u32, schema: &serde_json::Value| json!({ "subject": "invoice.paid", "id": id, "version": v, "schemaType": "JSON", "schema": schema.to_string() });
                let (status, body) = if !authorized {
                    (
                        "401 Unauthorized",
                        json!({ "error_code": 401, "message": "Unauthorized" }),
                    )
                } else {
                    match path.as_str() {
                        "/subjects" => ("200 OK", json!(["invoice.paid", "legacy-value"])),
                        "/subjects/invoice.paid/versions" => ("200 OK", json!([2, 1])),
                        "/subjects/invoice.paid/versions/1" => ("200 OK", version(11, 1, &v1)),
                        "/subjects/invoice.paid/versions/2" => ("200 OK", version(12, 2, &v2)),
                        "/subjects/legacy-value/versions" => ("200 OK", json!([1])),
                        // No schemaType: an Avro schema.
                        "/subjects/legacy-value/versions/1" => (
                            "200 OK",
                            json!({ "subject": "legacy-value", "id": 3, "version": 1, "schema": "{\"type\":\"record\"}" }),
                        ),
                        "/schemas/ids/11" => (
                            "200 OK",
                            json!({ "schemaType": "JSON", "schema": v1.to_string() }),
                        ),
                        "/config/invoice.paid?defaultToGlobal=true" => {
                            ("200 OK", json!({ "compatibilityLevel": "FULL_TRANSITIVE" }))
                        }
                        "/config" => ("200 OK", json!({ "compatibilityLevel": "BACKWARD" })),
                        _ => (
                            "404 Not Found",
                            json!({ "error_code": 40401, "message": format!("Subject not found: {path}") }),
                        ),
                    }
                };
                let body = body.to_string();
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn schemas_load_from_a_confluent_compatible_registry() {
    let base = confluent_server().await;
    let url_with_secret = base.replacen("http://", &format!("http://{USER}:{PASSWORD}@"), 1);
    let remote = ConfluentRegistry::new(&url_with_secret).unwrap();
    assert!(!format!("{remote:?}").contains(PASSWORD), "{remote:?}");
    assert_eq!(remote.url(), base);
    assert_eq!(
        remote.subjects().await.unwrap(),
        vec!["invoice.paid", "legacy-value"]
    );
    assert_eq!(remote.versions("invoice.paid").await.unwrap(), vec![1, 2]);
    assert_eq!(
        remote.compatibility(Some("invoice.paid")).await.unwrap(),
        Compatibility::FullTransitive
    );
    assert_eq!(
        remote.compatibility(None).await.unwrap(),
        Compatibility::Backward
    );
    assert_eq!(
        remote.schema_by_id(11).await.unwrap()["required"],
        json!(["amount"])
    );

    let registry = SchemaRegistry::new();
    let n = remote
        .load_subject(&registry, "invoice.paid", "invoice.paid")
        .await
        .unwrap();
    assert_eq!(n, 2);
    let v1_uri = format!("{base}/schemas/ids/11");
    assert_eq!(
        registry.versions("invoice.paid"),
        vec![
            v1_uri.clone(),
            "https://schemas.example.com/invoice.paid/2".to_owned()
        ],
        "versions named by $id, else by the registry's schema-id URL"
    );
    let old = Event::builder("/billing", "invoice.paid")
        .data_schema(&v1_uri)
        .data_json(&json!({ "amount": "x" }))
        .build()
        .unwrap();
    assert!(matches!(
        registry.validate(&old),
        Err(SchemaError::Invalid { .. })
    ));

    // Non-JSON schemas, unknown subjects and bad credentials: typed errors, no secret.
    let avro = remote
        .load_subjects(&registry, |s| s.strip_suffix("-value").map(str::to_owned))
        .await
        .unwrap_err()
        .to_string();
    assert!(avro.contains("AVRO schema"), "{avro}");
    let missing = remote.versions("nope").await.unwrap_err().to_string();
    assert!(
        missing.contains("404") && missing.contains("Subject not found"),
        "{missing}"
    );
    let wrong = ConfluentRegistry::new(&base)
        .unwrap()
        .basic_auth(USER, "wrong-password-value");
    let denied = wrong.subjects().await.unwrap_err();
    let text = format!("{denied} {denied:?}");
    assert!(text.contains("401"), "{text}");
    assert!(
        !text.contains("wrong-password-value") && !text.contains(PASSWORD),
        "{text}"
    );
    // An unreachable registry: the error names the URL without credentials.
    let gone = ConfluentRegistry::new(&format!("http://{USER}:{PASSWORD}@127.0.0.1:9"))
        .unwrap()
        .subjects()
        .await
        .unwrap_err();
    let text = format!("{gone} {gone:?}");
    assert!(
        text.contains("127.0.0.1:9") && !text.contains(PASSWORD),
        "{text}"
    );
}
