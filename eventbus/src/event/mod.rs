//! The [`Event`] envelope: CloudEvents 1.0 attributes plus windlass's extensions, with serde to
//! and from the structured JSON format.
//!
//! `data` is kept as raw JSON text (or bytes for `data_base64`), never parsed into a tree, so a
//! relay or a bus that only moves events pays nothing for payloads it does not read.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use windlass_core::OrgId;

use crate::error::EventError;

/// The only CloudEvents version windlass reads and writes.
pub const SPEC_VERSION: &str = "1.0";

/// Longest accepted value of `partitionkey`, `correlationid`, `causationid`, `subject`, in bytes.
pub const ATTRIBUTE_MAX_LEN: usize = 1024;

const RESERVED: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// The payload of an event.
#[derive(Clone)]
#[non_exhaustive]
pub enum Data {
    /// JSON text, carried as-is in the structured format's `data` member. Non-JSON text media
    /// types (e.g. `text/plain`) are held here as a JSON string, as the format requires.
    Json(Arc<RawValue>),
    /// Bytes, carried base64-encoded in `data_base64`.
    Binary(Bytes),
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::Json(raw) => write!(f, "Json({})", raw.get()),
            Data::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Data::Json(a), Data::Json(b)) => a.get() == b.get(),
            (Data::Binary(a), Data::Binary(b)) => a == b,
            _ => false,
        }
    }
}
impl Eq for Data {}

/// A CloudEvents extension value (the spec's JSON-representable types).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ExtensionValue {
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
    /// An integer (the spec's Integer is signed 32-bit; the builder refuses wider values).
    Integer(i64),
}

impl From<&str> for ExtensionValue {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}
impl From<String> for ExtensionValue {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}
impl From<bool> for ExtensionValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}
impl From<i32> for ExtensionValue {
    fn from(v: i32) -> Self {
        Self::Integer(v.into())
    }
}

impl fmt::Display for ExtensionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtensionValue::String(s) => f.write_str(s),
            ExtensionValue::Bool(b) => write!(f, "{b}"),
            ExtensionValue::Integer(i) => write!(f, "{i}"),
        }
    }
}

#[derive(Clone, PartialEq)]
struct Inner {
    id: String,
    source: String,
    ty: String,
    subject: Option<String>,
    time: Option<DateTime<Utc>>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    data: Option<Data>,
    orgid: Option<OrgId>,
    correlationid: Option<String>,
    causationid: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    partitionkey: Option<String>,
    extensions: BTreeMap<String, ExtensionValue>,
}

/// An immutable CloudEvents 1.0 event with windlass's extensions (`orgid`, `correlationid`,
/// `causationid`, `traceparent`, `tracestate`, `partitionkey`).
///
/// Build one with [`Event::builder`]; the builder refuses invalid events with an
/// [`EventError`] naming the attribute. Cloning is cheap (the event is reference counted).
/// (`source`, `id`) identifies an event for deduplication.
///
/// ```
/// use windlass_eventbus::Event;
///
/// let placed = Event::builder("/shop", "order.placed")
///     .subject("ord_1")
///     .org_id("acme")
///     .partition_key("ord_1")
///     .data_json(&serde_json::json!({"total": 42}))
///     .build()?;
/// let paid = Event::builder("/billing", "invoice.paid").caused_by(&placed).build()?;
/// assert_eq!(paid.correlation_id(), Some(placed.id()));
/// assert_eq!(paid.causation_id(), Some(placed.id()));
/// assert_eq!(paid.org_id().map(|o| o.as_str()), Some("acme"));
///
/// let json = placed.to_json();
/// assert_eq!(windlass_eventbus::Event::from_json(json.as_bytes())?, placed);
/// # Ok::<(), windlass_eventbus::EventError>(())
/// ```
#[derive(Clone, PartialEq)]
pub struct Event(Arc<Inner>);

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.0.id)
            .field("source", &self.0.source)
            .field("type", &self.0.ty)
            .field("subject", &self.0.subject)
            .field("orgid", &self.0.orgid)
            .field("partitionkey", &self.0.partitionkey)
            .finish_non_exhaustive()
    }
}

impl Event {
    /// Starts an event with its two required attributes; the id defaults to a new UUIDv7 and
    /// `time` to now.
    pub fn builder(source: impl Into<String>, ty: impl Into<String>) -> EventBuilder {
        EventBuilder::new(source, ty)
    }

    /// A builder holding a copy of this event's attributes, to derive a modified event (a new
    /// immutable value; this one is untouched).
    pub fn to_builder(&self) -> EventBuilder {
        EventBuilder {
            inner: (*self.0).clone(),
            error: None,
        }
    }

    /// `id`.
    pub fn id(&self) -> &str {
        &self.0.id
    }
    /// `source`.
    pub fn source(&self) -> &str {
        &self.0.source
    }
    /// `type`.
    pub fn ty(&self) -> &str {
        &self.0.ty
    }
    /// `specversion`, always `1.0`.
    pub fn spec_version(&self) -> &'static str {
        SPEC_VERSION
    }
    /// `subject`.
    pub fn subject(&self) -> Option<&str> {
        self.0.subject.as_deref()
    }
    /// `time`.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        self.0.time
    }
    /// `datacontenttype`.
    pub fn data_content_type(&self) -> Option<&str> {
        self.0.datacontenttype.as_deref()
    }
    /// `dataschema`.
    pub fn data_schema(&self) -> Option<&str> {
        self.0.dataschema.as_deref()
    }
    /// The payload.
    pub fn data(&self) -> Option<&Data> {
        self.0.data.as_ref()
    }
    /// Extension `orgid`: the tenant.
    pub fn org_id(&self) -> Option<&OrgId> {
        self.0.orgid.as_ref()
    }
    /// Extension `correlationid`: the whole conversation this event belongs to.
    pub fn correlation_id(&self) -> Option<&str> {
        self.0.correlationid.as_deref()
    }
    /// Extension `causationid`: the id of the event or command that caused this one.
    pub fn causation_id(&self) -> Option<&str> {
        self.0.causationid.as_deref()
    }
    /// Extension `traceparent` (W3C trace context).
    pub fn traceparent(&self) -> Option<&str> {
        self.0.traceparent.as_deref()
    }
    /// Extension `tracestate` (W3C trace context).
    pub fn tracestate(&self) -> Option<&str> {
        self.0.tracestate.as_deref()
    }
    /// A copy with `traceparent` / `tracestate` replaced (already encoded by
    /// `windlass_core::otel`, so not checked again).
    #[cfg(feature = "otel")]
    pub(crate) fn with_trace_context(
        &self,
        traceparent: String,
        tracestate: Option<String>,
    ) -> Self {
        let mut inner = (*self.0).clone();
        inner.traceparent = Some(traceparent);
        inner.tracestate = tracestate;
        Self(Arc::new(inner))
    }
    /// Extension `partitionkey`: events with the same key are delivered in order.
    pub fn partition_key(&self) -> Option<&str> {
        self.0.partitionkey.as_deref()
    }
    /// The key that orders delivery: `partitionkey`, else `subject`, else none (no ordering).
    /// Kafka uses it as the message key.
    pub fn ordering_key(&self) -> Option<&str> {
        self.partition_key().or_else(|| self.subject())
    }
    /// Any other extension.
    pub fn extension(&self, name: &str) -> Option<&ExtensionValue> {
        self.0.extensions.get(name)
    }
    /// All other extensions (the typed ones above are not included).
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &ExtensionValue)> {
        self.0.extensions.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Deserializes the JSON payload into `T`. `Ok(None)` when the event has no data.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, EventError> {
        match &self.0.data {
            None => Ok(None),
            Some(Data::Json(raw)) => Ok(Some(serde_json::from_str(raw.get())?)),
            Some(Data::Binary(_)) => Err(EventError::invalid(
                "data",
                "is binary (data_base64), not JSON",
            )),
        }
    }

    /// The payload as bytes, as the Kafka binary binding carries it: the JSON text for JSON
    /// media types (or none given), the unquoted string for other text carried as a JSON
    /// string, the raw bytes for binary data.
    pub fn data_bytes(&self) -> Option<Cow<'_, [u8]>> {
        match &self.0.data {
            None => None,
            Some(Data::Binary(b)) => Some(Cow::Borrowed(b.as_ref())),
            Some(Data::Json(raw)) => {
                if !is_json_media_type(self.data_content_type())
                    && let Ok(s) = serde_json::from_str::<String>(raw.get())
                {
                    return Some(Cow::Owned(s.into_bytes()));
                }
                Some(Cow::Borrowed(raw.get().as_bytes()))
            }
        }
    }

    /// Encodes the event in CloudEvents structured JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Event always serializes")
    }

    /// Encodes the event in CloudEvents structured JSON, as bytes.
    pub fn to_json_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Event always serializes")
    }

    /// Decodes and validates a CloudEvents structured JSON event.
    pub fn from_json(bytes: &[u8]) -> Result<Event, EventError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let builder = EventBuilder::deserialize(&mut de).map_err(EventError::Json)?;
        de.end()?;
        builder.build()
    }

    /// Decodes and validates a CloudEvents structured JSON event from a string.
    pub fn from_json_str(s: &str) -> Result<Event, EventError> {
        Self::from_json(s.as_bytes())
    }
}

/// True for media types whose payload is JSON: none given, `application/json`, `text/json`,
/// or any `+json` suffix.
pub fn is_json_media_type(ct: Option<&str>) -> bool {
    let Some(ct) = ct else { return true };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let suffix = essence.len().checked_sub(5).and_then(|i| essence.get(i..));
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/json")
        || suffix.is_some_and(|s| s.eq_ignore_ascii_case("+json"))
}

mod builder;
mod json;

pub use builder::EventBuilder;

#[cfg(test)]
mod tests {
    use super::builder::check_traceparent;
    use super::*;

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type(None));
        assert!(is_json_media_type(Some("application/json; charset=utf-8")));
        assert!(is_json_media_type(Some("application/cloudevents+json")));
        assert!(!is_json_media_type(Some("text/plain")));
        assert!(!is_json_media_type(Some("application/octet-stream")));
        assert!(is_json_media_type(Some(" Application/JSON ")));
        assert!(is_json_media_type(Some("application/vnd.acme+JSON;v=2")));
        assert!(is_json_media_type(Some("TEXT/json")));
        assert!(!is_json_media_type(Some("json")));
        assert!(!is_json_media_type(Some("")));
        assert!(!is_json_media_type(Some("application/jsonx")));
    }

    #[test]
    fn data_from_a_slice_is_data_from_bytes() {
        let cases: [(Option<&str>, &[u8]); 6] = [
            (None, br#"{"a":1}"#),
            (Some("application/json"), b"not json"),
            (Some("text/plain"), b"hello"),
            (Some("text/plain"), &[0xff, 0xfe]),
            (Some("application/octet-stream"), &[0, 1, 2]),
            (Some("application/cloudevents+json"), b"[1,2]"),
        ];
        for (ct, bytes) in cases {
            let a = Event::builder("/s", "t").id("1").without_time();
            let b = a.clone().data_slice(ct, bytes).build();
            let a = a.data_bytes(ct, bytes.to_vec()).build();
            match (a, b) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{ct:?}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{ct:?}"),
                (a, b) => panic!("{ct:?}: {a:?} vs {b:?}"),
            }
        }
    }

    #[test]
    fn traceparent_rules() {
        assert!(
            check_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_ok()
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(check_traceparent(bad).is_err(), "{bad}");
        }
    }
}
