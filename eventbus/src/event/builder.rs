//! [`EventBuilder`]: the setters and the validation of [`Event`]'s attributes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use windlass_core::OrgId;

use crate::error::EventError;

use super::*;

/// Builds a validated [`Event`]. Setters never fail; [`EventBuilder::build`] reports the first
/// problem with an [`EventError`] naming the attribute.
#[derive(Clone)]
pub struct EventBuilder {
    pub(super) inner: Inner,
    pub(super) error: Option<String>,
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
    pub(super) fn new(source: impl Into<String>, ty: impl Into<String>) -> Self {
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
    pub(super) fn empty() -> Self {
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

pub(super) fn check_traceparent(tp: &str) -> Result<(), EventError> {
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
