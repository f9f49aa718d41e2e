//! JSON Schema validation of event payloads (feature `schema`).
//!
//! - [`SchemaRegistry`]: a JSON Schema per event `type` and version. The version is the
//!   event's `dataschema` URI; an event without `dataschema` is checked against the latest
//!   version registered for its type. Schemas come from code ([`SchemaRegistry::register`]) or
//!   files ([`SchemaRegistry::register_file`], [`SchemaRegistry::load_dir`]).
//! - [`ValidatingPublisher`]: refuses to publish an invalid event
//!   ([`Error::Schema`](crate::Error::Schema), nothing sent).
//! - [`ValidatingHandler`]: a subscriber-side wrapper that rejects invalid events, so the runner
//!   moves them to the DLQ with the validation errors as the reason.
//! - [`check_compatible`]: registering a new version of a type runs it against the latest
//!   one and refuses it when it would break existing consumers.
//!
//! # Compatibility rules
//! A new version is refused when, for any object (the root, nested `properties`, array
//! `items`):
//! 1. a property the old version **required** is removed or no longer required (consumers
//!    rely on it being there);
//! 2. a property present in both versions changes its declared **`type`** (any change,
//!    widening included: a consumer parsing an integer breaks on `null` as much as on a string);
//! 3. a property becomes **newly required without a `default`** (events already published,
//!    e.g. replayed ones, no longer validate);
//! 4. **`additionalProperties`** goes from allowed to `false` (old events with extra fields no
//!    longer validate).
//!
//! Not checked (documented limits): `enum`/`const`/format/range narrowing, `$ref`s (compared
//! as written, not resolved), `oneOf`/`anyOf`/`allOf` branches.
//!
//! ```
//! use serde_json::json;
//! use windlass_eventbus::schema::SchemaRegistry;
//! use windlass_eventbus::Event;
//!
//! let registry = SchemaRegistry::new();
//! registry.register("invoice.paid", "https://schemas.example.com/invoice.paid/1", json!({
//!     "type": "object",
//!     "required": ["amount"],
//!     "properties": { "amount": { "type": "integer" } }
//! }))?;
//! let good = Event::builder("/billing", "invoice.paid").data_json(&json!({"amount": 100})).build()?;
//! let bad = Event::builder("/billing", "invoice.paid").data_json(&json!({"amount": "100"})).build()?;
//! assert!(registry.validate(&good).is_ok());
//! assert!(registry.validate(&bad).is_err());
//! // Version 2 drops a required field: refused.
//! let v2 = json!({ "type": "object", "properties": { "total": { "type": "integer" } } });
//! assert!(registry.register("invoice.paid", "https://schemas.example.com/invoice.paid/2", v2).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde_json::Value;
use windlass_core::Topic;

use crate::error::Result;
use crate::event::{Data, Event};
use crate::handler::{DeliveryContext, Handler, HandlerError, HandlerResult};
use crate::traits::Publisher;

/// Why a schema or an event was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The event's payload does not match its schema.
    #[error("event {id} ({ty}) does not match schema {version}: {}", errors.join("; "))]
    Invalid {
        /// Event id.
        id: String,
        /// Event type.
        ty: String,
        /// The schema version (its `dataschema` URI) used.
        version: String,
        /// Each violation, with its JSON pointer.
        errors: Vec<String>,
    },
    /// The event names a `dataschema` that is not registered for its type.
    #[error("event {id} ({ty}) names dataschema {version}, which is not registered")]
    UnknownVersion {
        /// Event id.
        id: String,
        /// Event type.
        ty: String,
        /// The `dataschema` it names.
        version: String,
    },
    /// The registry is strict and has no schema for this event type.
    #[error("no schema is registered for event type {0} (the registry is strict)")]
    Unregistered(String),
    /// The schema itself is not a valid JSON Schema.
    #[error("schema {version} of {ty} is not a valid JSON Schema: {reason}")]
    BadSchema {
        /// Event type.
        ty: String,
        /// Version.
        version: String,
        /// The compiler's message.
        reason: String,
    },
    /// A new version would break consumers of the latest one (see the module's rules).
    #[error("schema {version} of {ty} is incompatible with {previous}: {}", reasons.join("; "))]
    Incompatible {
        /// Event type.
        ty: String,
        /// The refused version.
        version: String,
        /// The latest registered version.
        previous: String,
        /// Each rule broken.
        reasons: Vec<String>,
    },
    /// A schema file could not be read.
    #[error("cannot read schema file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

struct Version {
    uri: String,
    schema: Value,
    validator: jsonschema::Validator,
}

/// JSON Schemas per event type and version. Cheap to share (`Arc`); registration and lookup are
/// thread-safe.
#[derive(Default)]
pub struct SchemaRegistry {
    /// Versions per type, oldest first.
    types: RwLock<HashMap<String, Vec<Arc<Version>>>>,
    strict: bool,
}

impl fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let types = self.types.read().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("SchemaRegistry")
            .field("types", &types)
            .field("strict", &self.strict)
            .finish()
    }
}

impl SchemaRegistry {
    /// An empty registry; events of unregistered types pass.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry that refuses events of unregistered types.
    pub fn strict() -> Self {
        Self {
            strict: true,
            ..Self::default()
        }
    }

    /// Registers `schema` as version `version` (the `dataschema` URI events carry) of
    /// `event_type`, after checking it against the latest version of the type with
    /// [`check_compatible`]. Registering the same version again replaces it (checked too).
    pub fn register(
        &self,
        event_type: &str,
        version: &str,
        schema: Value,
    ) -> Result<(), SchemaError> {
        self.insert(event_type, version, schema, true)
    }

    /// Like [`SchemaRegistry::register`], without the compatibility check (for a deliberate
    /// breaking change, after every consumer moved on).
    pub fn register_unchecked(
        &self,
        event_type: &str,
        version: &str,
        schema: Value,
    ) -> Result<(), SchemaError> {
        self.insert(event_type, version, schema, false)
    }

    /// Registers a schema read from a JSON file.
    pub fn register_file(
        &self,
        event_type: &str,
        version: &str,
        path: impl AsRef<Path>,
    ) -> Result<(), SchemaError> {
        let path = path.as_ref();
        let file = |reason: String| SchemaError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        let schema: Value = serde_json::from_str(&text).map_err(|e| file(e.to_string()))?;
        self.register(event_type, version, schema)
    }

    /// Loads a directory laid out as `{event type}/{version}.json`, versions of a type in
    /// natural order (`2` before `10`). The version registered is the schema's `$id` when it
    /// has one, else the file stem.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<usize, SchemaError> {
        let dir = dir.as_ref();
        let io = |p: &Path, e: std::io::Error| SchemaError::File {
            path: p.display().to_string(),
            reason: e.to_string(),
        };
        let mut n = 0;
        let mut types: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(|e| e.ok())
            .collect();
        types.sort_by_key(|e| e.file_name());
        for ty in types {
            if !ty.path().is_dir() {
                continue;
            }
            let ty_name = ty.file_name().to_string_lossy().into_owned();
            let mut files: Vec<_> = std::fs::read_dir(ty.path())
                .map_err(|e| io(&ty.path(), e))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort_by_key(|p| natural_key(p));
            for f in files {
                let text = std::fs::read_to_string(&f).map_err(|e| io(&f, e))?;
                let schema: Value = serde_json::from_str(&text).map_err(|e| SchemaError::File {
                    path: f.display().to_string(),
                    reason: e.to_string(),
                })?;
                let stem = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let version = schema
                    .get("$id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or(stem);
                self.register(&ty_name, &version, schema)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn insert(
        &self,
        ty: &str,
        version: &str,
        schema: Value,
        check: bool,
    ) -> Result<(), SchemaError> {
        let validator = jsonschema::validator_for(&schema).map_err(|e| SchemaError::BadSchema {
            ty: ty.to_owned(),
            version: version.to_owned(),
            reason: e.to_string(),
        })?;
        let mut types = self.types.write().unwrap_or_else(|p| p.into_inner());
        let versions = types.entry(ty.to_owned()).or_default();
        if let Some(prev) = versions
            .iter()
            .rev()
            .find(|v| v.uri != version)
            .filter(|_| check)
        {
            check_compatible(&prev.schema, &schema).map_err(|reasons| {
                SchemaError::Incompatible {
                    ty: ty.to_owned(),
                    version: version.to_owned(),
                    previous: prev.uri.clone(),
                    reasons,
                }
            })?;
        }
        let v = Arc::new(Version {
            uri: version.to_owned(),
            schema,
            validator,
        });
        match versions.iter_mut().find(|x| x.uri == version) {
            Some(slot) => *slot = v,
            None => versions.push(v),
        }
        Ok(())
    }

    /// The versions registered for `event_type`, oldest first.
    pub fn versions(&self, event_type: &str) -> Vec<String> {
        let types = self.types.read().unwrap_or_else(|p| p.into_inner());
        types
            .get(event_type)
            .map(|v| v.iter().map(|x| x.uri.clone()).collect())
            .unwrap_or_default()
    }

    /// Checks `event` against the schema of its type and `dataschema` (else the latest version).
    /// Events of unregistered types pass unless the registry is [strict](SchemaRegistry::strict).
    pub fn validate(&self, event: &Event) -> Result<(), SchemaError> {
        let version = {
            let types = self.types.read().unwrap_or_else(|p| p.into_inner());
            let Some(versions) = types.get(event.ty()) else {
                return if self.strict {
                    Err(SchemaError::Unregistered(event.ty().to_owned()))
                } else {
                    Ok(())
                };
            };
            match event.data_schema() {
                Some(uri) => match versions.iter().find(|v| v.uri == uri) {
                    Some(v) => v.clone(),
                    None => {
                        return Err(SchemaError::UnknownVersion {
                            id: event.id().to_owned(),
                            ty: event.ty().to_owned(),
                            version: uri.to_owned(),
                        });
                    }
                },
                None => match versions.last() {
                    Some(v) => v.clone(),
                    None => return Ok(()),
                },
            }
        };
        let invalid = |errors: Vec<String>| SchemaError::Invalid {
            id: event.id().to_owned(),
            ty: event.ty().to_owned(),
            version: version.uri.clone(),
            errors,
        };
        let instance: Value = match event.data() {
            None => Value::Null,
            Some(Data::Json(raw)) => {
                serde_json::from_str(raw.get()).map_err(|e| invalid(vec![e.to_string()]))?
            }
            Some(Data::Binary(_)) => {
                return Err(invalid(vec!["data is binary, not JSON".to_owned()]));
            }
        };
        let errors: Vec<String> = version
            .validator
            .iter_errors(&instance)
            .take(10)
            .map(|e| {
                let path = e.instance_path().to_string();
                format!("{}: {e}", if path.is_empty() { "/" } else { path.as_str() })
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(invalid(errors))
        }
    }
}

fn natural_key(p: &Path) -> (u64, String) {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let digits: String = stem.chars().filter(char::is_ascii_digit).collect();
    (digits.parse().unwrap_or(u64::MAX), stem)
}

fn types_of(schema: &Value) -> Option<BTreeSet<String>> {
    match schema.get("type")? {
        Value::String(s) => Some([s.clone()].into()),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    }
}

fn required_of(schema: &Value) -> BTreeSet<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn compare(old: &Value, new: &Value, at: &str, reasons: &mut Vec<String>) {
    let here = if at.is_empty() { "/" } else { at };
    if let (Some(o), Some(n)) = (types_of(old), types_of(new))
        && o != n
    {
        reasons.push(format!("{here}: type changed from {o:?} to {n:?}"));
        return;
    }
    let old_req = required_of(old);
    let new_req = required_of(new);
    let empty = serde_json::Map::new();
    let old_props = old
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_props = new
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for r in &old_req {
        if !new_req.contains(r) {
            if new_props.contains_key(r) {
                reasons.push(format!(
                    "{at}/{r}: no longer required (consumers rely on it)"
                ));
            } else {
                reasons.push(format!("{at}/{r}: required field removed"));
            }
        }
    }
    for r in new_req.difference(&old_req) {
        let has_default = new_props.get(r).is_some_and(|p| p.get("default").is_some());
        if !has_default {
            reasons.push(format!(
                "{at}/{r}: newly required without a default (existing events no longer validate)"
            ));
        }
    }
    let allowed = |s: &Value| !matches!(s.get("additionalProperties"), Some(Value::Bool(false)));
    if allowed(old) && !allowed(new) {
        reasons.push(format!("{here}: additionalProperties became false"));
    }
    for (name, o) in old_props {
        if let Some(n) = new_props.get(name) {
            compare(o, n, &format!("{at}/{name}"), reasons);
        }
    }
    if let (Some(o), Some(n)) = (old.get("items"), new.get("items")) {
        compare(o, n, &format!("{at}/items"), reasons);
    }
}

/// Checks that `new` can replace `old` without breaking consumers of `old`; the error lists
/// every rule broken (see the module docs for the rules).
pub fn check_compatible(old: &Value, new: &Value) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    compare(old, new, "", &mut reasons);
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// A [`Publisher`] that validates every event before publishing it; an invalid event (or batch
/// holding one) fails with [`Error::Schema`](crate::Error::Schema) and nothing is sent.
#[derive(Debug, Clone)]
pub struct ValidatingPublisher<P> {
    inner: P,
    registry: Arc<SchemaRegistry>,
}

impl<P: Publisher> ValidatingPublisher<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, registry: Arc<SchemaRegistry>) -> Self {
        Self { inner, registry }
    }

    /// The wrapped publisher.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

#[async_trait]
impl<P: Publisher> Publisher for ValidatingPublisher<P> {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        self.registry.validate(event)?;
        self.inner.publish(topic, event).await
    }

    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        for e in events {
            self.registry.validate(e)?;
        }
        self.inner.publish_batch(topic, events).await
    }
}

/// A [`Handler`] wrapper that rejects events failing validation (the runner dead-letters them
/// with the validation errors as the reason) and hands the others to the inner handler.
#[derive(Debug, Clone)]
pub struct ValidatingHandler<H> {
    inner: H,
    registry: Arc<SchemaRegistry>,
}

impl<H: Handler> ValidatingHandler<H> {
    /// Wraps `inner`.
    pub fn new(inner: H, registry: Arc<SchemaRegistry>) -> Self {
        Self { inner, registry }
    }
}

#[async_trait]
impl<H: Handler> Handler for ValidatingHandler<H> {
    async fn handle(&self, event: &Event, ctx: &DeliveryContext) -> HandlerResult {
        self.registry
            .validate(event)
            .map_err(HandlerError::reject)?;
        self.inner.handle(event, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn v1() -> Value {
        json!({
            "type": "object",
            "required": ["amount", "currency"],
            "properties": {
                "amount": { "type": "integer" },
                "currency": { "type": "string" },
                "lines": { "type": "array", "items": { "type": "object", "required": ["sku"], "properties": { "sku": { "type": "string" } } } }
            }
        })
    }

    #[test]
    fn compatible_changes_pass() {
        let mut v2 = v1();
        v2["properties"]["note"] = json!({ "type": "string" });
        v2["required"] = json!(["amount", "currency", "region"]);
        v2["properties"]["region"] = json!({ "type": "string", "default": "eu" });
        assert_eq!(check_compatible(&v1(), &v2), Ok(()));
    }

    #[test]
    fn each_breaking_rule_is_reported() {
        let v2 = json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["amount", "due"],
            "properties": {
                "amount": { "type": "string" },
                "currency": { "type": "string" },
                "due": { "type": "string" },
                "lines": { "type": "array", "items": { "type": "object", "properties": { "sku": { "type": "string" } } } }
            }
        });
        let reasons = check_compatible(&v1(), &v2).unwrap_err();
        let all = reasons.join("\n");
        assert!(all.contains("/amount: type changed"), "{all}");
        assert!(all.contains("/currency: no longer required"), "{all}");
        assert!(
            all.contains("/due: newly required without a default"),
            "{all}"
        );
        assert!(all.contains("additionalProperties became false"), "{all}");
        assert!(
            all.contains("/lines/items/sku: no longer required"),
            "{all}"
        );
        let removed = json!({ "type": "object", "required": ["amount"], "properties": { "amount": { "type": "integer" } } });
        assert!(
            check_compatible(&v1(), &removed)
                .unwrap_err()
                .join(" ")
                .contains("/currency: required field removed")
        );
    }

    #[test]
    fn events_pick_their_version_by_dataschema_else_the_latest() {
        let r = SchemaRegistry::new();
        r.register("paid", "s/1", v1()).unwrap();
        let mut v2 = v1();
        v2["properties"]["note"] = json!({ "type": "string" });
        v2["additionalProperties"] = json!(true);
        r.register("paid", "s/2", v2).unwrap();
        assert_eq!(r.versions("paid"), vec!["s/1", "s/2"]);
        let ok = Event::builder("/b", "paid")
            .data_json(&json!({"amount": 1, "currency": "EUR"}))
            .build()
            .unwrap();
        r.validate(&ok).unwrap();
        let bad = Event::builder("/b", "paid")
            .data_schema("s/1")
            .data_json(&json!({"amount": 1}))
            .build()
            .unwrap();
        let err = r.validate(&bad).unwrap_err().to_string();
        assert!(err.contains("s/1") && err.contains("currency"), "{err}");
        let unknown = Event::builder("/b", "paid")
            .data_schema("s/9")
            .build()
            .unwrap();
        assert!(matches!(
            r.validate(&unknown),
            Err(SchemaError::UnknownVersion { .. })
        ));
        let other = Event::builder("/b", "other").build().unwrap();
        r.validate(&other).unwrap();
        assert!(matches!(
            SchemaRegistry::strict().validate(&other),
            Err(SchemaError::Unregistered(_))
        ));
        let binary = Event::builder("/b", "paid")
            .data_binary("application/octet-stream", vec![1u8])
            .build()
            .unwrap();
        assert!(r.validate(&binary).is_err());
        assert!(matches!(
            r.register("paid", "bad", json!({"type": 12})),
            Err(SchemaError::BadSchema { .. })
        ));
    }

    #[test]
    fn load_dir_registers_versions_in_natural_order() {
        let dir = std::env::temp_dir().join(format!(
            "windlass-schemas-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("order.placed")).unwrap();
        let base = json!({ "type": "object", "required": ["id"], "properties": { "id": { "type": "string" } } });
        let mut v10 = base.clone();
        v10["properties"]["note"] = json!({ "type": "string" });
        std::fs::write(dir.join("order.placed/2.json"), base.to_string()).unwrap();
        std::fs::write(dir.join("order.placed/10.json"), v10.to_string()).unwrap();
        let r = SchemaRegistry::new();
        assert_eq!(r.load_dir(&dir).unwrap(), 2);
        assert_eq!(r.versions("order.placed"), vec!["2", "10"]);
        // A breaking file is refused.
        std::fs::write(
            dir.join("order.placed/11.json"),
            json!({ "type": "object" }).to_string(),
        )
        .unwrap();
        assert!(matches!(
            SchemaRegistry::new().load_dir(&dir),
            Err(SchemaError::Incompatible { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
