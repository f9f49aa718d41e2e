//! [`TagTemplate`]: a tag (or key) template such as `invoice:{subject}`, rendered from an event.
//!
//! Placeholders: `{subject}`, `{orgid}`, `{partitionkey}`, `{id}`, `{source}`, `{type}`,
//! `{data.<field>[.<field>...]}` (a string, number or boolean of the JSON payload) and any other
//! extension by its name (`{region}`). A rendered template must be a valid key segment.

use windlass_core::validate_key_segment;
use windlass_eventbus::Event;

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

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
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
    fn refuses_bad_templates() {
        for bad in ["", "a{", "a}", "{}", "{data.}", "{Weird}", "{a{b}}"] {
            assert!(TagTemplate::parse(bad).is_err(), "{bad:?}");
        }
    }
}
