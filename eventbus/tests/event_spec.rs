//! The Event envelope against the CloudEvents 1.0 spec: the spec's own JSON examples, round
//! trips, rejection of invalid events, and interoperability with the official Rust SDK.

use serde_json::{Value, json};
use windlass_eventbus::{Data, Event, EventError, ExtensionValue};

fn parse(v: Value) -> Result<Event, EventError> {
    Event::from_json(v.to_string().as_bytes())
}

fn canonical(e: &Event) -> Value {
    serde_json::from_str(&e.to_json()).unwrap()
}

// json-format.md, section 3.1 (text data of a non-JSON media type).
#[test]
fn spec_example_xml_string_data() {
    let src = json!({
        "specversion" : "1.0",
        "type" : "com.github.pull_request.opened",
        "source" : "https://github.com/cloudevents/spec/pull",
        "subject" : "123",
        "id" : "A234-1234-1234",
        "time" : "2018-04-05T17:31:00Z",
        "comexampleextension1" : "value",
        "comexampleothervalue" : 5,
        "datacontenttype" : "text/xml",
        "data" : "<much wow=\"xml\"/>"
    });
    let e = parse(src.clone()).unwrap();
    assert_eq!(e.id(), "A234-1234-1234");
    assert_eq!(e.ty(), "com.github.pull_request.opened");
    assert_eq!(e.subject(), Some("123"));
    assert_eq!(
        e.extension("comexampleextension1"),
        Some(&ExtensionValue::String("value".into()))
    );
    assert_eq!(
        e.extension("comexampleothervalue"),
        Some(&ExtensionValue::Integer(5))
    );
    assert_eq!(e.data_bytes().unwrap().as_ref(), b"<much wow=\"xml\"/>");
    assert_eq!(canonical(&e), src, "re-encoding gives the same JSON");
}

// json-format.md, section 3.1.1 (binary data).
#[test]
fn spec_example_data_base64() {
    let src = json!({
        "specversion" : "1.0",
        "type" : "com.example.someevent",
        "source" : "/mycontext",
        "id" : "A234-1234-1234",
        "time" : "2018-04-05T17:31:00Z",
        "comexampleextension1" : "value",
        "comexampleothervalue" : 5,
        "datacontenttype" : "application/vnd.apache.thrift.binary",
        "data_base64" : "AAECAwQ="
    });
    let e = parse(src.clone()).unwrap();
    assert_eq!(e.data(), Some(&Data::Binary(vec![0u8, 1, 2, 3, 4].into())));
    assert_eq!(canonical(&e), src);
}

// json-format.md, section 3.1.2 (JSON data, an explicit null attribute).
#[test]
fn spec_example_json_data_and_null_attribute() {
    let src = json!({
        "specversion" : "1.0",
        "type" : "com.example.someevent",
        "source" : "/mycontext",
        "subject": null,
        "id" : "C234-1234-1234",
        "time" : "2018-04-05T17:31:00Z",
        "comexampleextension1" : "value",
        "comexampleothervalue" : 5,
        "datacontenttype" : "application/json",
        "data" : {
            "appinfoA" : "abc",
            "appinfoB" : 123,
            "appinfoC" : true
        }
    });
    let e = parse(src.clone()).unwrap();
    assert_eq!(e.subject(), None);
    let data: Value = e.data_as().unwrap().unwrap();
    assert_eq!(data["appinfoB"], 123);
    let mut expected = src;
    expected.as_object_mut().unwrap().remove("subject");
    assert_eq!(canonical(&e), expected);
}

#[test]
fn minimal_event_has_only_required_attributes() {
    let e = parse(json!({"specversion":"1.0","id":"1","source":"/s","type":"t"})).unwrap();
    assert_eq!(e.time(), None);
    assert_eq!(e.data(), None);
    assert_eq!(
        canonical(&e),
        json!({"specversion":"1.0","id":"1","source":"/s","type":"t"})
    );
}

#[test]
fn windlass_extensions_round_trip() {
    let e = Event::builder("/billing", "invoice.paid")
        .subject("inv_42")
        .org_id("acme")
        .partition_key("inv_42")
        .correlation_id("corr-1")
        .causation_id("cause-1")
        .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .tracestate("congo=t61rcWkgMzE")
        .extension("region", "eu")
        .extension("priority", 3)
        .extension("urgent", true)
        .data_json(&json!({"amount": 100}))
        .build()
        .unwrap();
    let json = canonical(&e);
    assert_eq!(json["orgid"], "acme");
    assert_eq!(json["partitionkey"], "inv_42");
    assert_eq!(json["correlationid"], "corr-1");
    assert_eq!(json["causationid"], "cause-1");
    assert_eq!(json["priority"], 3);
    assert_eq!(json["urgent"], true);
    assert_eq!(json["data"], json!({"amount": 100}));
    assert_eq!(json["datacontenttype"], "application/json");
    let back = Event::from_json(e.to_json().as_bytes()).unwrap();
    assert_eq!(back, e);
    assert_eq!(back.org_id().unwrap().as_str(), "acme");
}

#[test]
fn ids_are_uuid_v7_and_time_defaults_to_now() {
    let a = Event::builder("/s", "t").build().unwrap();
    let b = Event::builder("/s", "t").build().unwrap();
    let ua = uuid::Uuid::parse_str(a.id()).unwrap();
    assert_eq!(ua.get_version_num(), 7);
    assert_ne!(a.id(), b.id());
    let age = chrono::Utc::now() - a.time().unwrap();
    assert!(age.num_seconds() < 60);
}

#[test]
fn caused_by_builds_a_correlation_chain() {
    let root = Event::builder("/shop", "order.placed")
        .org_id("acme")
        .build()
        .unwrap();
    let child = Event::builder("/billing", "invoice.created")
        .caused_by(&root)
        .build()
        .unwrap();
    let grandchild = Event::builder("/mail", "mail.sent")
        .caused_by(&child)
        .build()
        .unwrap();
    assert_eq!(child.causation_id(), Some(root.id()));
    assert_eq!(child.correlation_id(), Some(root.id()));
    assert_eq!(grandchild.causation_id(), Some(child.id()));
    assert_eq!(
        grandchild.correlation_id(),
        Some(root.id()),
        "the conversation id is inherited"
    );
    assert_eq!(
        grandchild.org_id().unwrap().as_str(),
        "acme",
        "the tenant is inherited"
    );
}

fn invalid_attr(r: Result<Event, EventError>) -> String {
    match r {
        Err(EventError::Invalid { attribute, .. }) => attribute,
        Err(EventError::Missing(a)) => a.to_owned(),
        other => panic!("expected an invalid-attribute error, got {other:?}"),
    }
}

#[test]
fn builder_rejects_invalid_events_naming_the_attribute() {
    assert_eq!(invalid_attr(Event::builder("", "t").build()), "source");
    assert_eq!(invalid_attr(Event::builder("/s", "").build()), "type");
    assert_eq!(invalid_attr(Event::builder("/s", "t").id("").build()), "id");
    assert_eq!(
        invalid_attr(Event::builder("/s", "t").org_id("ac:me").build()),
        "orgid"
    );
    assert_eq!(
        invalid_attr(Event::builder("/s", "t").traceparent("nope").build()),
        "traceparent"
    );
    assert_eq!(
        invalid_attr(Event::builder("/s", "t").extension("Bad-Name", "x").build()),
        "Bad-Name"
    );
    assert_eq!(
        invalid_attr(Event::builder("/s", "t").extension("", "x").build()),
        ""
    );
    assert_eq!(
        invalid_attr(Event::builder("/s", "t").extension("time", "x").build()),
        "time"
    );
    assert_eq!(
        invalid_attr(
            Event::builder("/s", "t")
                .extension("big", ExtensionValue::Integer(1 << 40))
                .build()
        ),
        "big"
    );
    assert_eq!(
        invalid_attr(Event::builder("/s", "t").subject("").build()),
        "subject"
    );
    assert_eq!(
        invalid_attr(Event::builder("/s", "t").partition_key("a\nb").build()),
        "partitionkey"
    );
    assert_eq!(
        invalid_attr(Event::builder("/s", "t").data_raw_json("{not json").build()),
        "data"
    );
    assert_eq!(
        invalid_attr(
            Event::builder("/s", "t")
                .data_bytes(Some("application/json"), &b"\xff"[..])
                .build()
        ),
        "data"
    );
}

#[test]
fn decoding_rejects_invalid_json_events() {
    let bad = [
        json!({"id":"1","source":"/s","type":"t"}),
        json!({"specversion":"0.3","id":"1","source":"/s","type":"t"}),
        json!({"specversion":"1.0","source":"/s","type":"t"}),
        json!({"specversion":"1.0","id":"1","type":"t"}),
        json!({"specversion":"1.0","id":"1","source":"/s"}),
        json!({"specversion":"1.0","id":"1","source":"/s","type":7}),
        json!({"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}),
        json!({"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}),
        json!({"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"***"}),
        json!({"specversion":"1.0","id":"1","source":"/s","type":"t","ext":{"nested":1}}),
        json!({"specversion":"1.0","id":"1","source":"/s","type":"t","BadExt":"x"}),
        json!({"specversion":"1.0","id":"1","source":"/s","type":"t","orgid":"a b"}),
        json!({"specversion":"1.0","id":"","source":"/s","type":"t"}),
        json!(["not", "an", "object"]),
    ];
    for v in bad {
        assert!(parse(v.clone()).is_err(), "accepted {v}");
    }
    assert!(Event::from_json(b"{").is_err());
    assert!(Event::from_json(b"").is_err());
    assert!(
        Event::from_json(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"} trailing"#)
            .is_err()
    );
}

#[test]
fn binary_binding_payloads() {
    let json = Event::builder("/s", "t")
        .data_json(&json!({"a": 1}))
        .build()
        .unwrap();
    assert_eq!(json.data_bytes().unwrap().as_ref(), br#"{"a":1}"#);
    let text = Event::builder("/s", "t")
        .data_bytes(Some("text/plain"), &b"hello"[..])
        .build()
        .unwrap();
    assert_eq!(canonical(&text)["data"], "hello");
    assert_eq!(text.data_bytes().unwrap().as_ref(), b"hello");
    let bin = Event::builder("/s", "t")
        .data_bytes(Some("image/png"), &b"\x89PNG"[..])
        .build()
        .unwrap();
    assert!(canonical(&bin).get("data_base64").is_some());
    assert_eq!(bin.data_bytes().unwrap().as_ref(), b"\x89PNG");
}

#[test]
fn events_are_immutable_values() {
    let e = Event::builder("/s", "t").subject("a").build().unwrap();
    let changed = e.to_builder().subject("b").build().unwrap();
    assert_eq!(e.subject(), Some("a"));
    assert_eq!(changed.subject(), Some("b"));
    assert_eq!(changed.id(), e.id(), "same identity (source, id)");
}

/// What we write, the official CloudEvents Rust SDK reads; what it writes, we read.
#[test]
fn interoperates_with_the_cloudevents_sdk() {
    use cloudevents::{AttributesReader, Event as SdkEvent};

    let ours = Event::builder("/billing", "invoice.paid")
        .subject("inv_42")
        .org_id("acme")
        .partition_key("inv_42")
        .data_json(&json!({"amount": 100}))
        .build()
        .unwrap();
    let sdk: SdkEvent = serde_json::from_str(&ours.to_json()).unwrap();
    assert_eq!(sdk.id(), ours.id());
    assert_eq!(sdk.ty(), "invoice.paid");
    assert_eq!(sdk.subject(), Some("inv_42"));
    assert_eq!(
        sdk.extension("orgid").map(|v| v.to_string()),
        Some("acme".to_owned())
    );
    assert_eq!(
        sdk.time().map(|t| t.timestamp_millis()),
        ours.time().map(|t| t.timestamp_millis())
    );

    let binary = Event::builder("/s", "t")
        .data_binary("application/octet-stream", vec![1u8, 2, 3])
        .build()
        .unwrap();
    let sdk_bin: SdkEvent = serde_json::from_str(&binary.to_json()).unwrap();
    assert_eq!(
        sdk_bin.data(),
        Some(&cloudevents::Data::Binary(vec![1, 2, 3]))
    );

    let back = Event::from_json(serde_json::to_string(&sdk).unwrap().as_bytes()).unwrap();
    assert_eq!(back.id(), ours.id());
    assert_eq!(back.org_id().unwrap().as_str(), "acme");
    assert_eq!(
        back.data_as::<Value>().unwrap(),
        Some(json!({"amount": 100}))
    );
}
