//! Serde for [`Event`]: the CloudEvents structured JSON format.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::EventError;

use super::*;

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
