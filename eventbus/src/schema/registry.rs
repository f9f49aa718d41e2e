//! The in-process registry: versions per event type, the compatibility rule checked at
//! registration, and validation (with default filling and the unknown-version policy).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::event::{Data, Event};
use crate::schema::SchemaError;
use crate::schema::compat::{CompatibilityRule, check_compatible};
use crate::schema::defaults::fill_defaults;

/// What the validator does with an event whose `dataschema` names a version it does not know
/// (a producer rolled out a new version before this consumer learnt it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnknownVersion {
    /// Validate it against the known versions of its type, newest first: the first that
    /// accepts it is used (under a forward-compatible rule, the newest one does). Refused only
    /// when none does.
    #[default]
    TryKnown,
    /// Refuse it ([`SchemaError::UnknownVersion`]).
    Reject,
}

/// How a [`SchemaRegistry`] checks and validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RegistryOptions {
    /// Checked when a new version is registered; with
    /// [`reader_fills_defaults`](CompatibilityRule::reader_fills_defaults), the validator
    /// fills defaults too. Default: backward, no filling.
    pub compatibility: CompatibilityRule,
    /// Events naming an unregistered version. Default: [`UnknownVersion::TryKnown`].
    pub unknown_version: UnknownVersion,
    /// Refuse events of types with no schema ([`SchemaError::Unregistered`]). Default: false.
    pub strict: bool,
}

impl RegistryOptions {
    /// Sets the compatibility rule.
    pub fn compatibility(mut self, rule: CompatibilityRule) -> Self {
        self.compatibility = rule;
        self
    }
    /// Sets the unknown-version policy.
    pub fn unknown_version(mut self, policy: UnknownVersion) -> Self {
        self.unknown_version = policy;
        self
    }
    /// Refuses events of unregistered types.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }
}

struct Version {
    uri: String,
    schema: Value,
    validator: jsonschema::Validator,
}

impl Version {
    fn errors(&self, instance: &Value) -> Vec<String> {
        self.validator
            .iter_errors(instance)
            .take(10)
            .map(|e| {
                let path = e.instance_path().to_string();
                format!("{}: {e}", if path.is_empty() { "/" } else { path.as_str() })
            })
            .collect()
    }
}

/// The outcome of [`SchemaRegistry::validate`]: the version that accepted the event and the
/// event to hand on (the original, or a copy with defaults filled in).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Validation<'e> {
    /// The version that accepted it; `None` when its type has no schema (non-strict registry).
    pub version: Option<String>,
    /// The event to publish or handle: a copy with the defaults filled in when the rule says
    /// readers fill them and some were missing, else the original.
    pub event: Cow<'e, Event>,
}

/// JSON Schemas per event type and version. Share it with an `Arc`; registration and lookup
/// are thread-safe.
#[derive(Default)]
pub struct SchemaRegistry {
    /// Versions per type, in registration order (oldest first).
    types: RwLock<HashMap<String, Vec<Arc<Version>>>>,
    options: RegistryOptions,
}

impl fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let types = self.types.read().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("SchemaRegistry")
            .field("types", &types)
            .field("options", &self.options)
            .finish()
    }
}

impl SchemaRegistry {
    /// An empty registry with the default options (backward compatibility without default
    /// filling, unknown versions tried against the known ones, unregistered types pass).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry that refuses events of unregistered types.
    pub fn strict() -> Self {
        Self::with_options(RegistryOptions::default().strict(true))
    }

    /// An empty registry with `options`.
    pub fn with_options(options: RegistryOptions) -> Self {
        Self {
            types: RwLock::default(),
            options,
        }
    }

    /// The options.
    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// Registers `schema` as version `version` (the `dataschema` URI events carry) of
    /// `event_type`, after checking it against the latest version (every earlier version for a
    /// transitive mode) under the registry's compatibility rule. Registering the same version
    /// again replaces it (checked too).
    pub fn register(
        &self,
        event_type: &str,
        version: &str,
        schema: Value,
    ) -> Result<(), SchemaError> {
        self.insert(event_type, version, schema, true)
    }

    /// Like [`SchemaRegistry::register`], without the compatibility check (for a deliberate
    /// breaking change after every consumer moved on, or a history another registry already
    /// checked).
    pub fn register_unchecked(
        &self,
        event_type: &str,
        version: &str,
        schema: Value,
    ) -> Result<(), SchemaError> {
        self.insert(event_type, version, schema, false)
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
        if check {
            let rule = self.options.compatibility;
            let earlier: Vec<&Arc<Version>> =
                versions.iter().filter(|v| v.uri != version).collect();
            let against: Vec<&Arc<Version>> = if rule.mode.is_transitive() {
                earlier
            } else {
                earlier.last().copied().into_iter().collect()
            };
            for prev in against {
                check_compatible(rule, &prev.schema, &schema).map_err(|reasons| {
                    SchemaError::Incompatible {
                        ty: ty.to_owned(),
                        version: version.to_owned(),
                        previous: prev.uri.clone(),
                        reasons,
                    }
                })?;
            }
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

    /// The schema of `version` of `event_type`, if registered.
    pub fn schema(&self, event_type: &str, version: &str) -> Option<Value> {
        let types = self.types.read().unwrap_or_else(|p| p.into_inner());
        types
            .get(event_type)?
            .iter()
            .find(|v| v.uri == version)
            .map(|v| v.schema.clone())
    }

    /// Checks `event` and returns the event to hand on.
    ///
    /// - The writer's version is the event's `dataschema` (its payload must validate against
    ///   it), else the latest version of its type. A `dataschema` the registry does not know
    ///   follows [`RegistryOptions::unknown_version`].
    /// - When the rule says readers fill defaults, the payload is then read with the latest
    ///   version (the reader's schema): its missing required fields with a default are filled
    ///   in, the result must validate against it, and [`Validation::event`] carries it.
    /// - Events of unregistered types pass unless the registry is strict.
    pub fn validate<'e>(&self, event: &'e Event) -> Result<Validation<'e>, SchemaError> {
        let versions = {
            let types = self.types.read().unwrap_or_else(|p| p.into_inner());
            types.get(event.ty()).cloned().unwrap_or_default()
        };
        let Some(latest) = versions.last().cloned() else {
            return if self.options.strict {
                Err(SchemaError::Unregistered(event.ty().to_owned()))
            } else {
                Ok(Validation {
                    version: None,
                    event: Cow::Borrowed(event),
                })
            };
        };
        let invalid = |version: &str, errors: Vec<String>| SchemaError::Invalid {
            id: event.id().to_owned(),
            ty: event.ty().to_owned(),
            version: version.to_owned(),
            errors,
        };
        let payload: Value = match event.data() {
            None => Value::Null,
            Some(Data::Json(raw)) => serde_json::from_str(raw.get())
                .map_err(|e| invalid(&latest.uri, vec![e.to_string()]))?,
            Some(Data::Binary(_)) => {
                return Err(invalid(
                    &latest.uri,
                    vec!["data is binary, not JSON".to_owned()],
                ));
            }
        };
        let fill = self.options.compatibility.reader_fills_defaults;
        // The writer's version.
        let writer = match event.data_schema() {
            Some(uri) => match versions.iter().find(|v| v.uri == uri) {
                Some(v) => {
                    let errors = v.errors(&payload);
                    if !errors.is_empty() {
                        return Err(invalid(&v.uri, errors));
                    }
                    v.clone()
                }
                None => self.known_for_unknown(event, uri, &versions, &payload)?,
            },
            None if fill => latest.clone(),
            None => {
                let errors = latest.errors(&payload);
                if !errors.is_empty() {
                    return Err(invalid(&latest.uri, errors));
                }
                latest.clone()
            }
        };
        if !fill {
            return Ok(Validation {
                version: Some(writer.uri.clone()),
                event: Cow::Borrowed(event),
            });
        }
        // The reader's view: the latest version, its defaults filled in.
        let mut read = payload;
        let changed = fill_defaults(&latest.schema, &mut read);
        let errors = latest.errors(&read);
        if !errors.is_empty() {
            return Err(invalid(&latest.uri, errors));
        }
        let event = if changed {
            let filled = event
                .to_builder()
                .data_json(&read)
                .build()
                .map_err(|e| invalid(&latest.uri, vec![e.to_string()]))?;
            Cow::Owned(filled)
        } else {
            Cow::Borrowed(event)
        };
        Ok(Validation {
            version: Some(latest.uri.clone()),
            event,
        })
    }

    /// The known version, newest first, that accepts an event naming unknown version `uri`.
    fn known_for_unknown(
        &self,
        event: &Event,
        uri: &str,
        versions: &[Arc<Version>],
        payload: &Value,
    ) -> Result<Arc<Version>, SchemaError> {
        let mut tried = Vec::new();
        if self.options.unknown_version == UnknownVersion::TryKnown {
            for v in versions.iter().rev() {
                let errors = v.errors(payload);
                if errors.is_empty() {
                    tracing::debug!(
                        id = event.id(), ty = event.ty(), dataschema = uri, used = %v.uri,
                        "unknown schema version; a known version accepts the event"
                    );
                    return Ok(v.clone());
                }
                tried.push(format!("{}: {}", v.uri, errors.join(", ")));
            }
        }
        Err(SchemaError::UnknownVersion {
            id: event.id().to_owned(),
            ty: event.ty().to_owned(),
            version: uri.to_owned(),
            tried,
        })
    }
}
