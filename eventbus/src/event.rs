//! The [`Event`] envelope: CloudEvents 1.0 attributes plus windlass's extensions, with serde to
//! and from the structured JSON format.
//!
//! `data` is kept as raw JSON text (or bytes for `data_base64`), never parsed into a tree, so a
//! relay or a bus that only moves events pays nothing for payloads it does not read.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
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

/// Builds a validated [`Event`]. Setters never fail; [`EventBuilder::build`] reports the first
/// problem with an [`EventError`] naming the attribute.
#[derive(Clone)]
pub struct EventBuilder {
    inner: Inner,
    error: Option<String>,
}

impl fmt::Debug for EventBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBuilder")
            .field("id", &self.inner.id)
            .field("type", &self.inner.ty)
            .finish_non_exhaustive()
    }
}

impl EventBuilder {
    fn new(source: impl Into<String>, ty: impl Into<String>) -> Self {
        Self {
            inner: Inner {
                id: uuid::Uuid::now_v7().to_string(),
                source: source.into(),
                ty: ty.into(),
                subject: None,
                time: Some(Utc::now()),
                datacontenttype: None,
                dataschema: None,
                data: None,
                orgid: None,
                correlationid: None,
                causationid: None,
                traceparent: None,
                tracestate: None,
                partitionkey: None,
                extensions: BTreeMap::new(),
            },
            error: None,
        }
    }

    /// A decoded event's builder: `source`, `type` and `id` as read, no time (the decoder sets
    /// it or leaves it out). Nothing is generated only to be replaced.
    pub(crate) fn decoded(source: &str, ty: &str, id: &str) -> Self {
        let mut b = Self::empty();
        b.inner.source = source.to_owned();
        b.inner.ty = ty.to_owned();
        b.inner.id = id.to_owned();
        b
    }

    /// A builder with nothing set: no generated id, no time (decoding fills it).
    fn empty() -> Self {
        Self {
            inner: Inner {
                id: String::new(),
                source: String::new(),
                ty: String::new(),
                subject: None,
                time: None,
                datacontenttype: None,
                dataschema: None,
                data: None,
                orgid: None,
                correlationid: None,
                causationid: None,
                traceparent: None,
                tracestate: None,
                partitionkey: None,
                extensions: BTreeMap::new(),
            },
            error: None,
        }
    }

    /// Overrides the generated UUIDv7 id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.inner.id = id.into();
        self
    }
    /// Sets `subject`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.inner.subject = Some(subject.into());
        self
    }
    /// Sets `time` (defaults to the moment the builder was made).
    pub fn time(mut self, time: DateTime<Utc>) -> Self {
        self.inner.time = Some(time);
        self
    }
    /// Leaves `time` out.
    pub fn without_time(mut self) -> Self {
        self.inner.time = None;
        self
    }
    /// Sets `dataschema` (a URI; windlass's schema registry keys versions by it).
    pub fn data_schema(mut self, uri: impl Into<String>) -> Self {
        self.inner.dataschema = Some(uri.into());
        self
    }
    /// Serializes `value` as the JSON payload and sets `datacontenttype` to
    /// `application/json`.
    pub fn data_json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => {
                self.inner.data = Some(Data::Json(Arc::from(raw)));
                self.inner.datacontenttype = Some("application/json".into());
            }
            Err(e) => self.error = Some(format!("data: {e}")),
        }
        self
    }
    /// Sets already-encoded JSON text as the payload (validated at build), with
    /// `datacontenttype` `application/json`.
    pub fn data_raw_json(mut self, json: impl Into<String>) -> Self {
        match RawValue::from_string(json.into()) {
            Ok(raw) => {
                self.inner.data = Some(Data::Json(Arc::from(raw)));
                self.inner.datacontenttype = Some("application/json".into());
            }
            Err(e) => self.error = Some(format!("data: not JSON: {e}")),
        }
        self
    }
    /// Sets a payload from bytes and their media type, as a binary-mode transport (Kafka)
    /// delivers them: JSON media types become JSON `data` (refused at build when not valid
    /// JSON), UTF-8 `text/*` becomes a JSON string, anything else `data_base64`.
    pub fn data_bytes(self, content_type: Option<&str>, bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        self.set_data(content_type, &bytes, || bytes.clone())
    }
    /// [`EventBuilder::data_bytes`] from borrowed bytes, copied only as the payload needs.
    pub(crate) fn data_slice(self, content_type: Option<&str>, bytes: &[u8]) -> Self {
        self.set_data(content_type, bytes, || Bytes::copy_from_slice(bytes))
    }
    fn set_data(
        mut self,
        content_type: Option<&str>,
        bytes: &[u8],
        owned: impl FnOnce() -> Bytes,
    ) -> Self {
        self.inner.datacontenttype = content_type.map(str::to_owned);
        if is_json_media_type(content_type) {
            match std::str::from_utf8(bytes)
                .ok()
                .map(|s| RawValue::from_string(s.to_owned()))
            {
                Some(Ok(raw)) => self.inner.data = Some(Data::Json(Arc::from(raw))),
                _ => {
                    self.error =
                        Some("data: the media type says JSON but the bytes are not JSON".into())
                }
            }
        } else if content_type.is_some_and(|c| c.trim_start().starts_with("text/"))
            && let Ok(s) = std::str::from_utf8(bytes)
        {
            let raw = serde_json::value::to_raw_value(s).expect("a string serializes");
            self.inner.data = Some(Data::Json(Arc::from(raw)));
        } else {
            self.inner.data = Some(Data::Binary(owned()));
        }
        self
    }
    /// Sets binary data (carried as `data_base64`) with its media type.
    pub fn data_binary(mut self, content_type: impl Into<String>, bytes: impl Into<Bytes>) -> Self {
        self.inner.datacontenttype = Some(content_type.into());
        self.inner.data = Some(Data::Binary(bytes.into()));
        self
    }
    /// Sets `datacontenttype`.
    pub fn data_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.inner.datacontenttype = Some(content_type.into());
        self
    }
    /// Sets the tenant (extension `orgid`); validated as a name at build.
    pub fn org_id(mut self, org_id: impl AsRef<str>) -> Self {
        match OrgId::new(org_id.as_ref()) {
            Ok(o) => self.inner.orgid = Some(o),
            Err(e) => self.error = Some(format!("orgid: {}", e.reason)),
        }
        self
    }
    /// Sets `correlationid`.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.inner.correlationid = Some(id.into());
        self
    }
    /// Sets `causationid`.
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.inner.causationid = Some(id.into());
        self
    }
    /// Sets `traceparent` (validated as W3C trace context at build).
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.inner.traceparent = Some(traceparent.into());
        self
    }
    /// Sets `tracestate`.
    pub fn tracestate(mut self, tracestate: impl Into<String>) -> Self {
        self.inner.tracestate = Some(tracestate.into());
        self
    }
    /// Sets `partitionkey`: events with the same key are delivered in order.
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.inner.partitionkey = Some(key.into());
        self
    }
    /// Marks this event as caused by `parent`: `causationid` = parent's id, `correlationid` =
    /// parent's correlation id (or its id when it starts the conversation). The tenant, the
    /// trace context and the partition key are inherited when not set already.
    pub fn caused_by(mut self, parent: &Event) -> Self {
        self.inner.causationid = Some(parent.id().to_owned());
        self.inner.correlationid = Some(
            parent
                .correlation_id()
                .unwrap_or_else(|| parent.id())
                .to_owned(),
        );
        if self.inner.orgid.is_none() {
            self.inner.orgid = parent.org_id().cloned();
        }
        if self.inner.traceparent.is_none() {
            self.inner.traceparent = parent.traceparent().map(str::to_owned);
            self.inner.tracestate = parent.tracestate().map(str::to_owned);
        }
        self
    }
    /// Sets any extension. The names windlass types (`orgid`, `correlationid`, ...) go to their
    /// typed attribute. Names must be lower-case ASCII letters and digits (checked at build).
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<ExtensionValue>) -> Self {
        let name = name.into();
        let value = value.into();
        let as_string = |v: ExtensionValue| match v {
            ExtensionValue::String(s) => s,
            other => other.to_string(),
        };
        match name.as_str() {
            "orgid" => return self.org_id(as_string(value)),
            "correlationid" => self.inner.correlationid = Some(as_string(value)),
            "causationid" => self.inner.causationid = Some(as_string(value)),
            "traceparent" => self.inner.traceparent = Some(as_string(value)),
            "tracestate" => self.inner.tracestate = Some(as_string(value)),
            "partitionkey" => self.inner.partitionkey = Some(as_string(value)),
            _ => {
                self.inner.extensions.insert(name, value);
            }
        }
        self
    }

    /// Validates and returns the event.
    pub fn build(self) -> Result<Event, EventError> {
        if let Some(err) = self.error {
            let (attr, reason) = err.split_once(": ").unwrap_or(("data", err.as_str()));
            return Err(EventError::invalid(attr, reason));
        }
        let i = &self.inner;
        for (name, value) in [("id", &i.id), ("source", &i.source), ("type", &i.ty)] {
            if value.is_empty() {
                return Err(EventError::Missing(name));
            }
            check_text(name, value, ATTRIBUTE_MAX_LEN)?;
        }
        for (name, value) in [
            ("subject", &i.subject),
            ("correlationid", &i.correlationid),
            ("causationid", &i.causationid),
            ("partitionkey", &i.partitionkey),
            ("datacontenttype", &i.datacontenttype),
            ("dataschema", &i.dataschema),
            ("tracestate", &i.tracestate),
        ] {
            if let Some(v) = value {
                if v.is_empty() {
                    return Err(EventError::invalid(name, "must not be empty when present"));
                }
                check_text(name, v, ATTRIBUTE_MAX_LEN)?;
            }
        }
        if let Some(tp) = &i.traceparent {
            check_traceparent(tp)?;
        }
        for (name, value) in &i.extensions {
            check_extension_name(name)?;
            if let ExtensionValue::Integer(n) = value
                && i32::try_from(*n).is_err()
            {
                return Err(EventError::invalid(
                    name.clone(),
                    "integer extension values must fit in 32 bits",
                ));
            }
        }
        Ok(Event(Arc::new(self.inner)))
    }
}

fn check_text(name: &str, value: &str, max: usize) -> Result<(), EventError> {
    if value.len() > max {
        return Err(EventError::invalid(
            name,
            format!("is longer than {max} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(EventError::invalid(
            name,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn check_extension_name(name: &str) -> Result<(), EventError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(EventError::invalid(
            name,
            "extension names may only hold lower-case ASCII letters and digits",
        ));
    }
    if RESERVED.contains(&name) {
        return Err(EventError::invalid(
            name,
            "is a reserved CloudEvents attribute name",
        ));
    }
    Ok(())
}

fn check_traceparent(tp: &str) -> Result<(), EventError> {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2);
    if ok {
        Ok(())
    } else {
        Err(EventError::invalid(
            "traceparent",
            "must be W3C trace context: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>",
        ))
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let i = &*self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("specversion", SPEC_VERSION)?;
        m.serialize_entry("id", &i.id)?;
        m.serialize_entry("source", &i.source)?;
        m.serialize_entry("type", &i.ty)?;
        if let Some(v) = &i.subject {
            m.serialize_entry("subject", v)?;
        }
        if let Some(t) = &i.time {
            m.serialize_entry("time", &t.to_rfc3339_opts(SecondsFormat::AutoSi, true))?;
        }
        if let Some(v) = &i.datacontenttype {
            m.serialize_entry("datacontenttype", v)?;
        }
        if let Some(v) = &i.dataschema {
            m.serialize_entry("dataschema", v)?;
        }
        if let Some(v) = &i.orgid {
            m.serialize_entry("orgid", v.as_str())?;
        }
        for (k, v) in [
            ("correlationid", &i.correlationid),
            ("causationid", &i.causationid),
            ("traceparent", &i.traceparent),
            ("tracestate", &i.tracestate),
            ("partitionkey", &i.partitionkey),
        ] {
            if let Some(v) = v {
                m.serialize_entry(k, v)?;
            }
        }
        for (k, v) in &i.extensions {
            m.serialize_entry(k, v)?;
        }
        match &i.data {
            None => {}
            Some(Data::Json(raw)) => m.serialize_entry("data", &**raw)?,
            Some(Data::Binary(b)) => m.serialize_entry("data_base64", &BASE64.encode(b))?,
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for EventBuilder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EventVisitor)
    }
}

/// Deserializes and validates (the same rules as the builder). Use [`Event::from_json`] for
/// bytes; `data` needs a `serde_json` deserializer.
impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EventBuilder::deserialize(d)?
            .build()
            .map_err(de::Error::custom)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = EventBuilder;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudEvents 1.0 event in structured JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventBuilder, A::Error> {
        let mut b = EventBuilder::empty();
        let mut spec = None::<String>;
        let mut data_json = None::<Box<RawValue>>;
        let mut data_b64 = None::<String>;
        // Attributes are read straight into strings (no intermediate JSON tree): this is the
        // hot path of every consumer.
        fn text<'de, A: MapAccess<'de>>(
            map: &mut A,
            name: &str,
        ) -> Result<Option<String>, A::Error> {
            map.next_value::<Option<String>>().map_err(|e| {
                de::Error::custom(format!("event attribute `{name}` must be a string: {e}"))
            })
        }
        fn required<E: de::Error>(name: &str, v: Option<String>) -> Result<String, E> {
            v.ok_or_else(|| E::custom(format!("event attribute `{name}` is required")))
        }
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "data" => {
                    if data_json.is_some() {
                        return Err(de::Error::duplicate_field("data"));
                    }
                    data_json = Some(map.next_value()?);
                }
                "data_base64" => data_b64 = text(&mut map, "data_base64")?,
                "specversion" => {
                    spec = Some(required("specversion", text(&mut map, "specversion")?)?)
                }
                "id" => b.inner.id = required("id", text(&mut map, "id")?)?,
                "source" => b.inner.source = required("source", text(&mut map, "source")?)?,
                "type" => b.inner.ty = required("type", text(&mut map, "type")?)?,
                "subject" => b.inner.subject = text(&mut map, "subject")?,
                "datacontenttype" => b.inner.datacontenttype = text(&mut map, "datacontenttype")?,
                "dataschema" => b.inner.dataschema = text(&mut map, "dataschema")?,
                "correlationid" => b.inner.correlationid = text(&mut map, "correlationid")?,
                "causationid" => b.inner.causationid = text(&mut map, "causationid")?,
                "traceparent" => b.inner.traceparent = text(&mut map, "traceparent")?,
                "tracestate" => b.inner.tracestate = text(&mut map, "tracestate")?,
                "partitionkey" => b.inner.partitionkey = text(&mut map, "partitionkey")?,
                "orgid" => {
                    if let Some(org) = text(&mut map, "orgid")? {
                        b = b.org_id(org);
                    }
                }
                "time" => {
                    if let Some(s) = text(&mut map, "time")? {
                        let t = DateTime::parse_from_rfc3339(&s).map_err(|e| {
                            de::Error::custom(format!(
                                "event attribute `time` is not RFC 3339: {e}"
                            ))
                        })?;
                        b.inner.time = Some(t.with_timezone(&Utc));
                    }
                }
                ext => {
                    let value = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::Null => continue,
                        serde_json::Value::String(s) => ExtensionValue::String(s),
                        serde_json::Value::Bool(x) => ExtensionValue::Bool(x),
                        serde_json::Value::Number(n) if n.is_i64() => {
                            ExtensionValue::Integer(n.as_i64().unwrap_or_default())
                        }
                        other => {
                            return Err(de::Error::custom(format!(
                                "extension `{ext}` must be a string, boolean or integer, got {other}"
                            )));
                        }
                    };
                    b = b.extension(ext, value);
                }
            }
        }
        match spec.as_deref() {
            Some(SPEC_VERSION) => {}
            Some(other) => {
                return Err(de::Error::custom(EventError::SpecVersion(other.to_owned())));
            }
            None => {
                return Err(de::Error::custom(
                    "event attribute `specversion` is required",
                ));
            }
        }
        match (data_json, data_b64) {
            (Some(_), Some(_)) => {
                return Err(de::Error::custom(
                    "an event carries `data` or `data_base64`, not both",
                ));
            }
            (Some(raw), None) => {
                if raw.get() != "null" {
                    b.inner.data = Some(Data::Json(Arc::from(raw)));
                }
            }
            (None, Some(s)) => {
                let bytes = BASE64
                    .decode(s.as_bytes())
                    .map_err(|e| de::Error::custom(format!("`data_base64` is not base64: {e}")))?;
                b.inner.data = Some(Data::Binary(bytes.into()));
            }
            (None, None) => {}
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
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
