//! JSON Schema validation of event payloads (feature `schema`).
//!
//! - [`SchemaRegistry`]: a JSON Schema per event `type` and version. The version is the
//!   event's `dataschema` URI; an event without `dataschema` is checked against the latest
//!   version registered for its type. Schemas come from code ([`SchemaRegistry::register`]),
//!   files ([`SchemaRegistry::register_file`], [`SchemaRegistry::load_dir`]) or, with feature
//!   `schema-registry`, a Confluent-compatible schema registry (`ConfluentRegistry`).
//! - [`ValidatingPublisher`]: refuses to publish an invalid event
//!   ([`Error::Schema`](crate::Error::Schema), nothing sent).
//! - [`ValidatingHandler`]: a subscriber-side wrapper that rejects invalid events, so the runner
//!   moves them to the DLQ with the validation errors as the reason.
//!
//! # Evolution
//! Registering a new version checks it against the latest one (every earlier one for a
//! transitive mode) under the registry's [`CompatibilityRule`]: [`Compatibility::Backward`]
//! (the default: the new schema reads events written with the old one),
//! [`Compatibility::Forward`] (the old schema reads events written with the new one),
//! [`Compatibility::Full`] (both), their transitive forms, or none. The check asks exactly what
//! the validator will do: would every payload valid under the writing schema validate under the
//! reading one? So, for example:
//! - a **new required field** is backward-incompatible (old events lack it), unless the rule
//!   says [readers fill defaults](CompatibilityRule::reader_fills_defaults) and the field has a
//!   `default` that fits its schema; then the validator fills it in, and the handler (or the
//!   publisher) gets the event with the default in place;
//! - **adding a typed property** to an open object (no `additionalProperties: false`) is
//!   backward-incompatible: an old producer was allowed to send that name with any value.
//!   Declare it with a schema that accepts anything, or keep producers' objects closed;
//! - **removing or loosening** anything a reader relies on is forward-incompatible.
//!
//! Keywords the check does not analyse (`pattern`, `format`, `oneOf`, `$ref`...) must be left
//! unchanged where the reading schema has them: a change there is reported as incompatible
//! rather than guessed (see [`check_compatible`]).
//!
//! An event naming a version this registry does not know yet (a producer rolled out first) is
//! validated against the known versions, newest first, and passes when one accepts it
//! ([`UnknownVersion::TryKnown`], the default); [`UnknownVersion::Reject`] refuses it.
//!
//! ```
//! use serde_json::json;
//! use windlass_eventbus::schema::{
//!     Compatibility, CompatibilityRule, RegistryOptions, SchemaRegistry,
//! };
//! use windlass_eventbus::Event;
//!
//! let registry = SchemaRegistry::with_options(RegistryOptions::default().compatibility(
//!     CompatibilityRule::new(Compatibility::Backward).reader_fills_defaults(true),
//! ));
//! // Closed objects: an old producer cannot have sent a `currency` of another type.
//! registry.register("invoice.paid", "https://schemas.example.com/invoice.paid/1", json!({
//!     "type": "object",
//!     "additionalProperties": false,
//!     "required": ["amount"],
//!     "properties": { "amount": { "type": "integer" } }
//! }))?;
//! let bad = Event::builder("/billing", "invoice.paid").data_json(&json!({"amount": "100"})).build()?;
//! assert!(registry.validate(&bad).is_err());
//! // Version 2 requires a currency, with a default the reader fills in.
//! registry.register("invoice.paid", "https://schemas.example.com/invoice.paid/2", json!({
//!     "type": "object",
//!     "additionalProperties": false,
//!     "required": ["amount", "currency"],
//!     "properties": {
//!         "amount": { "type": "integer" },
//!         "currency": { "type": "string", "default": "EUR" }
//!     }
//! }))?;
//! let old = Event::builder("/billing", "invoice.paid")
//!     .data_schema("https://schemas.example.com/invoice.paid/1")
//!     .data_json(&json!({"amount": 100}))
//!     .build()?;
//! let checked = registry.validate(&old)?;
//! assert_eq!(checked.event.data_as::<serde_json::Value>()?, Some(json!({"amount": 100, "currency": "EUR"})));
//! // Version 3 turns the amount into a string: old events no longer validate, refused.
//! let v3 = json!({ "type": "object", "properties": { "amount": { "type": "string" } } });
//! assert!(registry.register("invoice.paid", "https://schemas.example.com/invoice.paid/3", v3).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod compat;
#[cfg(feature = "schema-registry")]
mod confluent;
mod defaults;
mod error;
mod files;
mod registry;
mod wrappers;

pub use compat::{Compatibility, CompatibilityRule, check_compatible};
#[cfg(feature = "schema-registry")]
pub use confluent::{ConfluentRegistry, RegisteredSchema};
pub use error::SchemaError;
pub use registry::{RegistryOptions, SchemaRegistry, UnknownVersion, Validation};
pub use wrappers::{ValidatingHandler, ValidatingPublisher};

#[cfg(test)]
mod tests;
