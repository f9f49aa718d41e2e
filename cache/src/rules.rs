//! Invalidation driven by domain events: rules such as
//! `on event type "invoice.paid" invalidate tag "invoice:{subject}"`, run by an
//! [`InvalidationHandler`] subscribed to the event bus like any other handler.
//!
//! Placeholders: `{subject}`, `{orgid}`, `{partitionkey}`, `{id}`, `{source}`, `{type}`,
//! `{data.<field>[.<field>...]}` (a string, number or boolean of the JSON payload) and any other
//! extension by its name (`{region}`). The tenant is the event's `orgid` (or the rules' default
//! tenant). An event whose rule cannot be rendered (a missing attribute, a result that is not a
//! valid tag) is rejected to the dead-letter queue with the reason; a store failure is retried
//! by the bus.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use windlass_core::{OrgId, validate_key_segment};
use windlass_eventbus::{DeliveryContext, Event, Handler, HandlerError, HandlerResult};

use crate::cache::{Cache, MAX_TAGS};
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Subject,
    OrgId,
    PartitionKey,
    Id,
    Source,
    Type,
    Data(Vec<String>),
    Extension(String),
}

/// A tag template such as `invoice:{subject}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagTemplate {
    source: String,
    parts: Vec<Part>,
}

impl TagTemplate {
    /// Parses a template. Errors on unbalanced braces and empty placeholders.
    pub fn parse(template: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("tag template {template:?}: {why}"));
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(i) if rest.as_bytes()[i] == b'}' => return Err(bad("'}' without '{'")),
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Literal(rest[..i].to_owned()));
                    }
                    let after = &rest[i + 1..];
                    let end = after.find('}').ok_or_else(|| bad("'{' without '}'"))?;
                    let name = after[..end].trim();
                    if name.is_empty() || name.contains('{') {
                        return Err(bad("empty or nested placeholder"));
                    }
                    parts.push(match name {
                        "subject" => Part::Subject,
                        "orgid" => Part::OrgId,
                        "partitionkey" => Part::PartitionKey,
                        "id" => Part::Id,
                        "source" => Part::Source,
                        "type" => Part::Type,
                        _ => match name.strip_prefix("data.") {
                            Some(path) if path.split('.').all(|p| !p.is_empty()) => {
                                Part::Data(path.split('.').map(str::to_owned).collect())
                            }
                            Some(_) => return Err(bad("empty field in a data path")),
                            None if name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) => {
                                Part::Extension(name.to_owned())
                            }
                            None => return Err(bad("unknown placeholder (extension names are lowercase letters and digits)")),
                        },
                    });
                    rest = &after[end + 1..];
                }
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        if parts.is_empty() {
            return Err(bad("empty template"));
        }
        Ok(Self {
            source: template.to_owned(),
            parts,
        })
    }

    /// Renders the template for an event. Errors name the missing attribute.
    pub fn render(&self, event: &Event) -> std::result::Result<String, String> {
        let mut out = String::new();
        let mut data: Option<serde_json::Value> = None;
        for part in &self.parts {
            let missing = |what: &str| {
                format!(
                    "tag template {:?} needs `{what}`, which event {} lacks",
                    self.source,
                    event.id()
                )
            };
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Subject => out.push_str(event.subject().ok_or_else(|| missing("subject"))?),
                Part::OrgId => out.push_str(event.org_id().ok_or_else(|| missing("orgid"))?),
                Part::PartitionKey => out.push_str(
                    event
                        .partition_key()
                        .ok_or_else(|| missing("partitionkey"))?,
                ),
                Part::Id => out.push_str(event.id()),
                Part::Source => out.push_str(event.source()),
                Part::Type => out.push_str(event.ty()),
                Part::Extension(name) => out.push_str(
                    &event
                        .extension(name)
                        .ok_or_else(|| missing(name))?
                        .to_string(),
                ),
                Part::Data(path) => {
                    if data.is_none() {
                        data = Some(
                            event
                                .data_as::<serde_json::Value>()
                                .map_err(|e| format!("event {} data is not JSON: {e}", event.id()))?
                                .ok_or_else(|| missing("data"))?,
                        );
                    }
                    let mut v = data.as_ref().unwrap_or(&serde_json::Value::Null);
                    for field in path {
                        v = v
                            .get(field)
                            .ok_or_else(|| missing(&format!("data.{}", path.join("."))))?;
                    }
                    match v {
                        serde_json::Value::String(s) => out.push_str(s),
                        serde_json::Value::Number(n) => out.push_str(&n.to_string()),
                        serde_json::Value::Bool(b) => out.push_str(&b.to_string()),
                        _ => {
                            return Err(missing(&format!(
                                "data.{} as a string, number or boolean",
                                path.join(".")
                            )));
                        }
                    }
                }
            }
        }
        validate_key_segment("cache tag", &out).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

#[derive(Debug, Clone)]
struct Rule {
    event_type: String,
    prefix: bool,
    tags: TagTemplate,
}

impl Rule {
    fn matches(&self, ty: &str) -> bool {
        if self.prefix {
            ty.starts_with(&self.event_type)
        } else {
            ty == self.event_type
        }
    }
}

/// Rules mapping event types to tags to invalidate.
///
/// ```
/// use windlass_cache::InvalidationRules;
///
/// let rules = InvalidationRules::new()
///     .on("invoice.paid", "invoice:{subject}")?
///     .on("customer.*", "customer:{data.customer_id}")?;
/// let same = InvalidationRules::parse(
///     r#"on event type "invoice.paid" invalidate tag "invoice:{subject}"
///        on event type "customer.*" invalidate tag "customer:{data.customer_id}""#,
/// )?;
/// assert_eq!(rules.len(), same.len());
/// # Ok::<(), windlass_cache::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct InvalidationRules {
    rules: Vec<Rule>,
    default_org: Option<OrgId>,
}

impl InvalidationRules {
    /// No rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule: events of `event_type` (exact, or a prefix when it ends with `*`)
    /// invalidate the tag `template` renders to.
    pub fn on(mut self, event_type: &str, template: &str) -> Result<Self> {
        let (event_type, prefix) = match event_type.strip_suffix('*') {
            Some(p) => (p, true),
            None => (event_type, false),
        };
        if event_type.is_empty() && !prefix {
            return Err(Error::Config("a rule needs an event type".to_owned()));
        }
        self.rules.push(Rule {
            event_type: event_type.to_owned(),
            prefix,
            tags: TagTemplate::parse(template)?,
        });
        Ok(self)
    }

    /// The tenant for events without `orgid` (otherwise they are rejected).
    pub fn default_org(mut self, org: OrgId) -> Self {
        self.default_org = Some(org);
        self
    }

    /// Parses rules, one per line: `on event type "<type>" invalidate tag "<template>"`
    /// (`#` starts a comment line; blank lines are skipped).
    pub fn parse(text: &str) -> Result<Self> {
        let mut rules = Self::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || {
                Error::Config(format!(
                    "rule line {}: expected `on event type \"<type>\" invalidate tag \"<template>\"`, got {line:?}",
                    n + 1
                ))
            };
            let rest = line
                .strip_prefix("on event type")
                .ok_or_else(bad)?
                .trim_start();
            let (ty, rest) = quoted(rest).ok_or_else(bad)?;
            let rest = rest
                .trim_start()
                .strip_prefix("invalidate tag")
                .ok_or_else(bad)?
                .trim_start();
            let (template, rest) = quoted(rest).ok_or_else(bad)?;
            if !rest.trim().is_empty() {
                return Err(bad());
            }
            rules = rules.on(ty, template)?;
        }
        Ok(rules)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The tenant and the tags an event invalidates (no tags when no rule matches). Errors
    /// say why a matching rule cannot be applied.
    pub fn tags_for(
        &self,
        event: &Event,
    ) -> std::result::Result<(Option<OrgId>, Vec<String>), String> {
        let mut tags = BTreeSet::new();
        for rule in self.rules.iter().filter(|r| r.matches(event.ty())) {
            tags.insert(rule.tags.render(event)?);
        }
        if tags.is_empty() {
            return Ok((None, Vec::new()));
        }
        let org = event
            .org_id()
            .or(self.default_org.as_ref())
            .cloned()
            .ok_or_else(|| {
                format!(
                    "event {} has no orgid and the rules have no default tenant",
                    event.id()
                )
            })?;
        Ok((Some(org), tags.into_iter().collect()))
    }
}

fn quoted(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_prefix('"')?;
    let end = s.find('"')?;
    Some((&s[..end], &s[end + 1..]))
}

/// A bus [`Handler`] that applies [`InvalidationRules`] to a [`Cache`]. Subscribe it with a
/// group of its own (every instance group shares the work; the L1s learn through notices).
#[derive(Debug, Clone)]
pub struct InvalidationHandler {
    cache: Cache,
    rules: Arc<InvalidationRules>,
}

impl InvalidationHandler {
    /// A handler applying `rules` to `cache`.
    pub fn new(cache: Cache, rules: InvalidationRules) -> Self {
        Self {
            cache,
            rules: Arc::new(rules),
        }
    }
}

#[async_trait]
impl Handler for InvalidationHandler {
    async fn handle(&self, event: &Event, _ctx: &DeliveryContext) -> HandlerResult {
        let (org, tags) = self.rules.tags_for(event).map_err(HandlerError::reject)?;
        let Some(org) = org else { return Ok(()) };
        for chunk in tags.chunks(MAX_TAGS) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            self.cache
                .invalidate_tags(&org, &chunk)
                .await
                .map_err(HandlerError::retry)?;
        }
        tracing::debug!(
            event = event.id(),
            ty = event.ty(),
            tags = tags.len(),
            "cache tags invalidated by event"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event::builder("/billing", "invoice.paid")
            .subject("inv_42")
            .org_id("acme")
            .data_json(&serde_json::json!({"customer": {"id": 7}, "flag": true, "obj": {}}))
            .build()
            .unwrap()
    }

    #[test]
    fn renders_attributes_and_data() {
        let t = TagTemplate::parse("invoice:{subject}/c{data.customer.id}:{orgid}:{data.flag}")
            .unwrap();
        assert_eq!(t.render(&event()).unwrap(), "invoice:inv_42/c7:acme:true");
        assert!(
            TagTemplate::parse("x:{partitionkey}")
                .unwrap()
                .render(&event())
                .unwrap_err()
                .contains("partitionkey")
        );
        assert!(
            TagTemplate::parse("x:{data.obj}")
                .unwrap()
                .render(&event())
                .is_err()
        );
        assert!(
            TagTemplate::parse("bad tag {subject}")
                .unwrap()
                .render(&event())
                .is_err()
        );
    }

    #[test]
    fn refuses_bad_templates_and_rules() {
        for bad in ["", "a{", "a}", "{}", "{data.}", "{Weird}", "{a{b}}"] {
            assert!(TagTemplate::parse(bad).is_err(), "{bad:?}");
        }
        assert!(InvalidationRules::parse("on event \"x\" invalidate tag \"y\"").is_err());
        assert!(
            InvalidationRules::parse("on event type \"x\" invalidate tag \"y\" extra").is_err()
        );
        assert!(InvalidationRules::new().on("", "x").is_err());
    }

    #[test]
    fn matches_exact_and_prefix_types() {
        let rules = InvalidationRules::parse(
            "# billing\non event type \"invoice.paid\" invalidate tag \"invoice:{subject}\"\n\n\
             on event type \"invoice.*\" invalidate tag \"invoices\"\n\
             on event type \"other\" invalidate tag \"nope\"",
        )
        .unwrap();
        let (org, tags) = rules.tags_for(&event()).unwrap();
        assert_eq!(org.unwrap().as_str(), "acme");
        assert_eq!(
            tags,
            vec!["invoice:inv_42".to_owned(), "invoices".to_owned()]
        );
        let unrelated = Event::builder("/x", "order.placed").build().unwrap();
        assert_eq!(rules.tags_for(&unrelated).unwrap(), (None, vec![]));
        let no_org = Event::builder("/x", "invoice.paid")
            .subject("s")
            .build()
            .unwrap();
        assert!(rules.tags_for(&no_org).is_err());
        let with_default = rules.default_org(OrgId::new("dflt").unwrap());
        assert_eq!(
            with_default.tags_for(&no_org).unwrap().0.unwrap().as_str(),
            "dflt"
        );
    }
}
