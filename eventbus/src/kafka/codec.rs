//! The CloudEvents Kafka protocol binding: events to records and back.
//!
//! Binary mode (the default): one `ce_<attribute>` header per attribute and extension (values
//! as UTF-8 strings), `content-type` for `datacontenttype`, the value is the payload bytes
//! ([`Event::data_bytes`]), the key the ordering key (`partitionkey`, else `subject`).
//! Structured mode: `content-type: application/cloudevents+json`, the value is the whole
//! event in structured JSON. Decoding accepts both, whatever the publisher's mode.

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::event::{Event, EventBuilder, ExtensionValue};
use crate::runner::Undecodable;

/// The media type of a structured-mode record.
pub(crate) const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// How events are laid out in Kafka records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WireMode {
    /// CloudEvents binary mode: attributes in `ce_*` headers, the payload as the value.
    #[default]
    Binary,
    /// CloudEvents structured mode: the whole event as JSON in the value.
    Structured,
}

/// An event laid out as a record (borrowed by the producer while it is sent).
pub(crate) struct Encoded<'a> {
    pub(crate) key: Option<&'a str>,
    pub(crate) value: Option<std::borrow::Cow<'a, [u8]>>,
    pub(crate) headers: OwnedHeaders,
    /// Bytes the record carries (key + value + headers), for the size check.
    pub(crate) size: usize,
}

fn push(headers: OwnedHeaders, size: &mut usize, key: &str, value: &str) -> OwnedHeaders {
    *size += key.len() + value.len();
    headers.insert(Header {
        key,
        value: Some(value.as_bytes()),
    })
}

/// Lays `event` out as a record.
pub(crate) fn encode(event: &Event, mode: WireMode) -> Encoded<'_> {
    let key = event.ordering_key();
    let mut size = key.map_or(0, str::len);
    match mode {
        WireMode::Structured => {
            let value = event.to_json_vec();
            size += value.len();
            let headers = push(
                OwnedHeaders::new_with_capacity(1),
                &mut size,
                "content-type",
                STRUCTURED_CONTENT_TYPE,
            );
            Encoded {
                key,
                value: Some(value.into()),
                headers,
                size,
            }
        }
        WireMode::Binary => {
            let mut h = OwnedHeaders::new_with_capacity(12);
            h = push(h, &mut size, "ce_specversion", event.spec_version());
            h = push(h, &mut size, "ce_id", event.id());
            h = push(h, &mut size, "ce_source", event.source());
            h = push(h, &mut size, "ce_type", event.ty());
            if let Some(t) = event.time() {
                h = push(
                    h,
                    &mut size,
                    "ce_time",
                    &t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                );
            }
            if let Some(s) = event.subject() {
                h = push(h, &mut size, "ce_subject", s);
            }
            if let Some(s) = event.data_schema() {
                h = push(h, &mut size, "ce_dataschema", s);
            }
            if let Some(o) = event.org_id() {
                h = push(h, &mut size, "ce_orgid", o.as_str());
            }
            if let Some(s) = event.correlation_id() {
                h = push(h, &mut size, "ce_correlationid", s);
            }
            if let Some(s) = event.causation_id() {
                h = push(h, &mut size, "ce_causationid", s);
            }
            if let Some(s) = event.traceparent() {
                h = push(h, &mut size, "ce_traceparent", s);
            }
            if let Some(s) = event.tracestate() {
                h = push(h, &mut size, "ce_tracestate", s);
            }
            if let Some(s) = event.partition_key() {
                h = push(h, &mut size, "ce_partitionkey", s);
            }
            for (name, value) in event.extensions() {
                h = push(h, &mut size, &format!("ce_{name}"), &value.to_string());
            }
            if let Some(ct) = event.data_content_type() {
                h = push(h, &mut size, "content-type", ct);
            }
            let value = event.data_bytes();
            size += value.as_ref().map_or(0, |v| v.len());
            Encoded {
                key,
                value,
                headers: h,
                size,
            }
        }
    }
}

/// The headers [`decode`] looks up by name (the first of each, names compared ignoring ASCII
/// case), found in one pass over the record's headers.
const LOOKED_UP: [&str; 6] = [
    "content-type",
    "ce_specversion",
    "ce_source",
    "ce_type",
    "ce_id",
    "ce_time",
];

/// Decodes a record in either mode (an owned record or one borrowed from the client). An
/// error names what is wrong, for the DLQ.
pub(crate) fn decode<M: Message>(msg: &M) -> Result<Event, Undecodable> {
    let raw = || msg.payload().unwrap_or_default().to_vec();
    let headers = msg.headers();
    // One pass finds every looked-up header (`None`: absent, `Some(None)`: no value).
    let mut found: [Option<Option<&[u8]>>; LOOKED_UP.len()] = [None; LOOKED_UP.len()];
    if let Some(hs) = headers {
        for h in hs.iter() {
            for (slot, name) in found.iter_mut().zip(LOOKED_UP) {
                if slot.is_none() && h.key.eq_ignore_ascii_case(name) {
                    *slot = Some(h.value);
                    break;
                }
            }
        }
    }
    let header = |name: &str| -> Result<Option<&str>, Undecodable> {
        let i = LOOKED_UP
            .iter()
            .position(|n| *n == name)
            .expect("a looked-up header");
        match found[i] {
            None | Some(None) => Ok(None),
            Some(Some(v)) => std::str::from_utf8(v)
                .map(Some)
                .map_err(|_| Undecodable::new(raw(), format!("header {name} is not UTF-8"))),
        }
    };
    let content_type = header("content-type")?;
    let spec = header("ce_specversion")?;
    if spec.is_none() {
        if content_type.is_some_and(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE)
        }) {
            return Event::from_json(msg.payload().unwrap_or_default()).map_err(|e| {
                Undecodable::new(raw(), format!("structured CloudEvent does not decode: {e}"))
            });
        }
        return Err(Undecodable::new(
            raw(),
            "no CloudEvents headers (ce_specversion missing) and content-type is not application/cloudevents+json",
        ));
    }
    let spec = spec.unwrap_or_default();
    if spec != crate::event::SPEC_VERSION {
        return Err(Undecodable::new(
            raw(),
            format!("unsupported ce_specversion {spec:?}"),
        ));
    }
    let required = |name: &'static str| -> Result<&str, Undecodable> {
        header(name)?.ok_or_else(|| Undecodable::new(raw(), format!("header {name} is missing")))
    };
    // No generated id or time to throw away: both come from the headers.
    let mut b: EventBuilder = EventBuilder::decoded(
        required("ce_source")?,
        required("ce_type")?,
        required("ce_id")?,
    );
    b = match header("ce_time")? {
        Some(t) => match DateTime::parse_from_rfc3339(t) {
            Ok(t) => b.time(t.with_timezone(&Utc)),
            Err(e) => {
                return Err(Undecodable::new(
                    raw(),
                    format!("header ce_time {t:?} is not RFC 3339: {e}"),
                ));
            }
        },
        None => b.without_time(),
    };
    if let Some(hs) = headers {
        for h in hs.iter() {
            let Some(name) = h.key.strip_prefix("ce_") else {
                continue;
            };
            if matches!(name, "specversion" | "id" | "source" | "type" | "time") {
                continue;
            }
            let value = match h.value.map(std::str::from_utf8) {
                None => continue,
                Some(Ok(v)) => v,
                Some(Err(_)) => {
                    return Err(Undecodable::new(
                        raw(),
                        format!("header {} is not UTF-8", h.key),
                    ));
                }
            };
            b = match name {
                "subject" => b.subject(value),
                "dataschema" => b.data_schema(value),
                "datacontenttype" => b.data_content_type(value),
                _ => b.extension(name, ExtensionValue::from(value)),
            };
        }
    }
    if let Some(payload) = msg.payload() {
        b = b.data_slice(content_type, payload);
    } else if let Some(ct) = content_type {
        b = b.data_content_type(ct);
    }
    b.build().map_err(|e| {
        Undecodable::new(
            raw(),
            format!("CloudEvents headers do not make a valid event: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;

    fn record(e: &Encoded<'_>) -> OwnedMessage {
        OwnedMessage::new(
            e.value.as_ref().map(|v| v.to_vec()),
            e.key.map(|k| k.as_bytes().to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(e.headers.clone()),
        )
    }

    fn sample() -> Event {
        Event::builder("/billing", "invoice.paid")
            .subject("inv_42")
            .org_id("acme")
            .correlation_id("c1")
            .causation_id("c0")
            .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .partition_key("inv_42")
            .data_schema("https://example.com/invoice.paid/1")
            .extension("region", "eu")
            .data_json(&serde_json::json!({"amount": 100}))
            .build()
            .unwrap()
    }

    #[test]
    fn binary_round_trip_keeps_every_attribute() {
        let e = sample();
        let enc = encode(&e, WireMode::Binary);
        assert_eq!(enc.key, Some("inv_42"));
        assert_eq!(enc.value.as_deref(), Some(&br#"{"amount":100}"#[..]));
        let msg = record(&enc);
        let h = msg.headers().unwrap();
        let names: Vec<&str> = h.iter().map(|h| h.key).collect();
        for n in [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_subject",
            "ce_orgid",
            "ce_correlationid",
            "ce_causationid",
            "ce_traceparent",
            "ce_region",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert_eq!(decode(&msg).unwrap(), e);
    }

    #[test]
    fn structured_round_trip() {
        let e = sample();
        let enc = encode(&e, WireMode::Structured);
        assert_eq!(decode(&record(&enc)).unwrap(), e);
    }

    #[test]
    fn binary_payloads_and_text_round_trip() {
        let bin = Event::builder("/s", "t")
            .data_binary("application/octet-stream", vec![0u8, 159, 146, 150])
            .build()
            .unwrap();
        assert_eq!(
            decode(&record(&encode(&bin, WireMode::Binary))).unwrap(),
            bin
        );
        let text = Event::builder("/s", "t")
            .data_bytes(Some("text/plain"), &b"hello"[..])
            .build()
            .unwrap();
        let enc = encode(&text, WireMode::Binary);
        assert_eq!(enc.value.as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode(&record(&enc)).unwrap(), text);
        let none = Event::builder("/s", "t").without_time().build().unwrap();
        assert_eq!(
            decode(&record(&encode(&none, WireMode::Binary))).unwrap(),
            none
        );
    }

    #[test]
    fn header_lookups_ignore_case_and_take_the_first_of_a_name() {
        let h = [
            ("CE_SpecVersion", "1.0"),
            ("ce_id", "first"),
            ("Ce_Source", "/s"),
            ("ce_type", "t"),
            ("ce_id", "second"),
            ("Content-Type", "text/plain"),
            ("ce_subject", "sub"),
            ("ce_region", "eu"),
        ]
        .iter()
        .fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        });
        let m = OwnedMessage::new(
            Some(b"hi".to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(h),
        );
        let e = decode(&m).unwrap();
        assert_eq!(e.id(), "first");
        assert_eq!(e.source(), "/s");
        assert_eq!(e.subject(), Some("sub"));
        assert_eq!(e.time(), None, "no ce_time header: no time made up");
        assert_eq!(e.data_content_type(), Some("text/plain"));
        assert_eq!(e.data_bytes().as_deref(), Some(&b"hi"[..]));
        assert_eq!(
            e.extension("region").map(|v| v.to_string()).as_deref(),
            Some("eu")
        );
    }

    #[test]
    fn garbage_is_undecodable_with_a_reason() {
        let plain = OwnedMessage::new(
            Some(b"hi".to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        );
        assert!(
            decode(&plain)
                .unwrap_err()
                .reason
                .contains("no CloudEvents headers")
        );
        let h = OwnedHeaders::new()
            .insert(Header {
                key: "ce_specversion",
                value: Some(&b"1.0"[..]),
            })
            .insert(Header {
                key: "ce_id",
                value: Some(&b"1"[..]),
            })
            .insert(Header {
                key: "ce_type",
                value: Some(&b"x"[..]),
            });
        let m = OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(h.clone()),
        );
        assert!(decode(&m).unwrap_err().reason.contains("ce_source"));
        let h = h
            .insert(Header {
                key: "ce_source",
                value: Some(&b"/s"[..]),
            })
            .insert(Header {
                key: "ce_time",
                value: Some(&b"yesterday"[..]),
            });
        let m = OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(h),
        );
        assert!(decode(&m).unwrap_err().reason.contains("ce_time"));
        let h = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(STRUCTURED_CONTENT_TYPE.as_bytes()),
        });
        let m = OwnedMessage::new(
            Some(b"{not json".to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(h),
        );
        assert!(decode(&m).unwrap_err().reason.contains("structured"));
    }
}
