//! Rules driven by domain events: `on event type "invoice.paid" invalidate tag
//! "invoice:{subject}"` and, for warming, `on event type "invoice.paid" reload "invoice" key
//! "{subject}" tags "invoice:{subject}"`. [`InvalidationRules::plan`] turns an event into the
//! work to do, rule by rule: one rule that cannot be rendered never stops the others; it is
//! reported in [`Plan::failures`]. The [`InvalidationHandler`](crate::InvalidationHandler)
//! runs a plan on a cache.
//!
//! The tenant is the event's `orgid` (or the rules' default tenant).

use std::collections::BTreeSet;

use windlass_core::{Name, OrgId};
use windlass_eventbus::Event;

use crate::error::{Error, Result};
use crate::template::TagTemplate;

#[derive(Debug, Clone)]
enum Action {
    Invalidate(TagTemplate),
    Reload {
        data_type: Name,
        key: TagTemplate,
        tags: Vec<TagTemplate>,
    },
}

#[derive(Debug, Clone)]
struct Rule {
    event_type: String,
    prefix: bool,
    action: Action,
}

impl Rule {
    fn matches(&self, ty: &str) -> bool {
        if self.prefix {
            ty.starts_with(&self.event_type)
        } else {
            ty == self.event_type
        }
    }

    fn describe(&self) -> String {
        let star = if self.prefix { "*" } else { "" };
        match &self.action {
            Action::Invalidate(t) => {
                format!("on {}{star} invalidate {}", self.event_type, t.source())
            }
            Action::Reload { data_type, key, .. } => format!(
                "on {}{star} reload {data_type} {}",
                self.event_type,
                key.source()
            ),
        }
    }
}

/// Rules mapping event types to tags to invalidate and entries to reload.
///
/// ```
/// use windlass_cache::InvalidationRules;
///
/// let rules = InvalidationRules::new()
///     .on("invoice.paid", "invoice:{subject}")?
///     .on("customer.*", "customer:{data.customer_id}")?
///     .reload_on("invoice.paid", "invoice", "{subject}", &["invoice:{subject}"])?;
/// let same = InvalidationRules::parse(
///     r#"on event type "invoice.paid" invalidate tag "invoice:{subject}"
///        on event type "customer.*" invalidate tag "customer:{data.customer_id}"
///        on event type "invoice.paid" reload "invoice" key "{subject}" tags "invoice:{subject}""#,
/// )?;
/// assert_eq!(rules.len(), same.len());
/// # Ok::<(), windlass_cache::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct InvalidationRules {
    rules: Vec<Rule>,
    default_org: Option<OrgId>,
}

/// One entry to reload, from a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlannedReload {
    /// Data type.
    pub data_type: Name,
    /// Key.
    pub key: String,
    /// Tags to store it with.
    pub tags: Vec<String>,
}

/// A rule that could not be applied to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleFailure {
    /// The rule, as text.
    pub rule: String,
    /// Why.
    pub reason: String,
}

/// What an event asks for: [`InvalidationRules::plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// The tenant (`None` when no rule could be applied).
    pub org: Option<OrgId>,
    /// Tags to invalidate (deduplicated).
    pub invalidate: Vec<String>,
    /// Entries to reload, after the invalidations.
    pub reload: Vec<PlannedReload>,
    /// Matching rules that could not be rendered.
    pub failures: Vec<RuleFailure>,
}

impl Plan {
    /// True when no rule matched the event.
    pub fn is_empty(&self) -> bool {
        self.invalidate.is_empty() && self.reload.is_empty() && self.failures.is_empty()
    }
}

fn event_type(event_type: &str) -> Result<(String, bool)> {
    let (ty, prefix) = match event_type.strip_suffix('*') {
        Some(p) => (p, true),
        None => (event_type, false),
    };
    if ty.is_empty() && !prefix {
        return Err(Error::Config("a rule needs an event type".to_owned()));
    }
    Ok((ty.to_owned(), prefix))
}

impl InvalidationRules {
    /// No rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule: events of `event_type` (exact, or a prefix when it ends with `*`)
    /// invalidate the tag `template` renders to.
    pub fn on(mut self, event_type: &str, template: &str) -> Result<Self> {
        let (event_type, prefix) = self::event_type(event_type)?;
        self.rules.push(Rule {
            event_type,
            prefix,
            action: Action::Invalidate(TagTemplate::parse(template)?),
        });
        Ok(self)
    }

    /// Adds a warming rule: events of `event_type` reload the entry of `data_type` at the key
    /// `key` renders to (with the tags `tags` render to), through the reloader registered for
    /// that data type on the [`InvalidationHandler`](crate::InvalidationHandler).
    pub fn reload_on(
        mut self,
        event_type: &str,
        data_type: &str,
        key: &str,
        tags: &[&str],
    ) -> Result<Self> {
        let (event_type, prefix) = self::event_type(event_type)?;
        self.rules.push(Rule {
            event_type,
            prefix,
            action: Action::Reload {
                data_type: Name::parse("cache data type", data_type)?,
                key: TagTemplate::parse(key)?,
                tags: tags
                    .iter()
                    .map(|t| TagTemplate::parse(t))
                    .collect::<Result<_>>()?,
            },
        });
        Ok(self)
    }

    /// The tenant for events without `orgid` (otherwise their rules fail).
    pub fn default_org(mut self, org: OrgId) -> Self {
        self.default_org = Some(org);
        self
    }

    /// Parses rules, one per line (`#` starts a comment line; blank lines are skipped):
    /// - `on event type "<type>" invalidate tag "<template>"`
    /// - `on event type "<type>" reload "<data type>" key "<template>" [tags "<t>" "<t>"...]`
    pub fn parse(text: &str) -> Result<Self> {
        let mut rules = Self::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || {
                Error::Config(format!(
                    "rule line {}: expected `on event type \"<type>\" invalidate tag \"<template>\"` \
                     or `on event type \"<type>\" reload \"<data type>\" key \"<template>\" [tags \"<template>\"...]`, got {line:?}",
                    n + 1
                ))
            };
            let rest = line
                .strip_prefix("on event type")
                .ok_or_else(bad)?
                .trim_start();
            let (ty, rest) = quoted(rest).ok_or_else(bad)?;
            let rest = rest.trim_start();
            if let Some(rest) = rest.strip_prefix("invalidate tag") {
                let (template, rest) = quoted(rest.trim_start()).ok_or_else(bad)?;
                if !rest.trim().is_empty() {
                    return Err(bad());
                }
                rules = rules.on(ty, template)?;
            } else if let Some(rest) = rest.strip_prefix("reload") {
                let (data_type, rest) = quoted(rest.trim_start()).ok_or_else(bad)?;
                let rest = rest
                    .trim_start()
                    .strip_prefix("key")
                    .ok_or_else(bad)?
                    .trim_start();
                let (key, rest) = quoted(rest).ok_or_else(bad)?;
                let mut rest = rest.trim_start();
                let mut tags = Vec::new();
                if let Some(r) = rest.strip_prefix("tags") {
                    rest = r.trim_start();
                    while !rest.is_empty() {
                        let (tag, r) = quoted(rest).ok_or_else(bad)?;
                        tags.push(tag);
                        rest = r.trim_start();
                    }
                    if tags.is_empty() {
                        return Err(bad());
                    }
                }
                if !rest.is_empty() {
                    return Err(bad());
                }
                rules = rules.reload_on(ty, data_type, key, &tags)?;
            } else {
                return Err(bad());
            }
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

    /// What `event` asks for. Every matching rule is rendered on its own: a rule that cannot
    /// be rendered (a missing attribute, an invalid result, no tenant) is listed in
    /// [`Plan::failures`] and the others still apply.
    pub fn plan(&self, event: &Event) -> Plan {
        let mut plan = Plan::default();
        let matching: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.matches(event.ty()))
            .collect();
        if matching.is_empty() {
            return plan;
        }
        let Some(org) = event.org_id().or(self.default_org.as_ref()).cloned() else {
            plan.failures = matching
                .iter()
                .map(|r| RuleFailure {
                    rule: r.describe(),
                    reason: format!(
                        "event {} has no orgid and the rules have no default tenant",
                        event.id()
                    ),
                })
                .collect();
            return plan;
        };
        let mut tags = BTreeSet::new();
        for rule in matching {
            let rendered = match &rule.action {
                Action::Invalidate(t) => t.render(event).map(|tag| {
                    tags.insert(tag);
                }),
                Action::Reload {
                    data_type,
                    key,
                    tags: templates,
                } => key.render(event).and_then(|key| {
                    let tags = templates
                        .iter()
                        .map(|t| t.render(event))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    plan.reload.push(PlannedReload {
                        data_type: data_type.clone(),
                        key,
                        tags,
                    });
                    Ok(())
                }),
            };
            if let Err(reason) = rendered {
                plan.failures.push(RuleFailure {
                    rule: rule.describe(),
                    reason,
                });
            }
        }
        plan.invalidate = tags.into_iter().collect();
        plan.org = Some(org);
        plan
    }
}

fn quoted(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_prefix('"')?;
    let end = s.find('"')?;
    Some((&s[..end], &s[end + 1..]))
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
    fn refuses_bad_rules() {
        assert!(InvalidationRules::parse("on event \"x\" invalidate tag \"y\"").is_err());
        assert!(
            InvalidationRules::parse("on event type \"x\" invalidate tag \"y\" extra").is_err()
        );
        assert!(
            InvalidationRules::parse("on event type \"x\" reload \"bad:type\" key \"k\"").is_err()
        );
        assert!(
            InvalidationRules::parse("on event type \"x\" reload \"t\" key \"k\" tags").is_err()
        );
        assert!(InvalidationRules::new().on("", "x").is_err());
    }

    #[test]
    fn matches_exact_and_prefix_types() {
        let rules = InvalidationRules::parse(
            "# billing\non event type \"invoice.paid\" invalidate tag \"invoice:{subject}\"\n\n\
             on event type \"invoice.*\" invalidate tag \"invoices\"\n\
             on event type \"other\" invalidate tag \"nope\"\n\
             on event type \"invoice.paid\" reload \"invoice\" key \"{subject}\" tags \"invoice:{subject}\" \"c:{data.customer.id}\"",
        )
        .unwrap();
        let plan = rules.plan(&event());
        assert_eq!(plan.org.unwrap().as_str(), "acme");
        assert_eq!(
            plan.invalidate,
            vec!["invoice:inv_42".to_owned(), "invoices".to_owned()]
        );
        assert_eq!(plan.reload.len(), 1);
        assert_eq!(plan.reload[0].key, "inv_42");
        assert_eq!(plan.reload[0].tags, vec!["invoice:inv_42", "c:7"]);
        let unrelated = Event::builder("/x", "order.placed").build().unwrap();
        assert!(rules.plan(&unrelated).is_empty());
        let no_org = Event::builder("/x", "invoice.paid")
            .subject("s")
            .build()
            .unwrap();
        let plan = rules.plan(&no_org);
        assert!(plan.org.is_none());
        assert_eq!(plan.failures.len(), 3);
        let with_default = rules.default_org(OrgId::new("dflt").unwrap());
        assert_eq!(with_default.plan(&no_org).org.unwrap().as_str(), "dflt");
    }

    #[test]
    fn a_failing_rule_does_not_stop_the_others() {
        let rules = InvalidationRules::new()
            .on("invoice.paid", "by-key:{partitionkey}") // the event has none
            .unwrap()
            .on("invoice.paid", "invoice:{subject}")
            .unwrap()
            .reload_on("invoice.paid", "invoice", "{data.missing}", &[])
            .unwrap()
            .on("invoice.*", "all-invoices")
            .unwrap();
        let plan = rules.plan(&event());
        assert_eq!(plan.invalidate, vec!["all-invoices", "invoice:inv_42"]);
        assert_eq!(plan.failures.len(), 2, "{:?}", plan.failures);
        assert!(plan.failures[0].reason.contains("partitionkey"));
        assert!(plan.failures[1].reason.contains("data.missing"));
    }
}
