//! Schema compatibility, checked the way the validator reads events.
//!
//! Everything reduces to one question, asked in the direction the mode names: *does every
//! payload valid under the writing schema also validate under the reading schema* (after the
//! reading schema's defaults are filled in, when the rule says the reader fills them)?
//! Backward: the new schema reads events written with the old one. Forward: the old schema
//! reads events written with the new one. Full: both.
//!
//! The check is sound by construction: it answers "compatible" only when it can show the
//! inclusion keyword by keyword (`type`, `required`, `properties`, `additionalProperties`,
//! `items`, `enum`, `const`, numeric, length, item and property-count bounds; annotations such
//! as `title` or `description` are ignored). Any other keyword (`pattern`, `format`, `oneOf`,
//! `$ref`, `patternProperties`...) must be the same in both schemas where the reading schema
//! has it; a change there is reported as incompatible rather than guessed.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// Which direction(s) a new version must stay compatible in, named as Confluent Schema
/// Registry names its levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compatibility {
    /// No check.
    None,
    /// The new version reads events written with the previous version.
    #[default]
    Backward,
    /// The new version reads events written with every earlier version.
    BackwardTransitive,
    /// The previous version reads events written with the new version.
    Forward,
    /// Every earlier version reads events written with the new version.
    ForwardTransitive,
    /// Backward and forward with the previous version.
    Full,
    /// Backward and forward with every earlier version.
    FullTransitive,
}

impl Compatibility {
    /// Parses a Confluent level (`BACKWARD`, `FULL_TRANSITIVE`, `NONE`...).
    pub fn from_confluent(level: &str) -> Option<Self> {
        Some(match level.trim().to_ascii_uppercase().as_str() {
            "NONE" => Self::None,
            "BACKWARD" => Self::Backward,
            "BACKWARD_TRANSITIVE" => Self::BackwardTransitive,
            "FORWARD" => Self::Forward,
            "FORWARD_TRANSITIVE" => Self::ForwardTransitive,
            "FULL" => Self::Full,
            "FULL_TRANSITIVE" => Self::FullTransitive,
            _ => return None,
        })
    }

    /// The Confluent name of the level.
    pub fn confluent_name(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// True when every earlier version is checked, not only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

/// A compatibility rule: the [`Compatibility`] mode and whether readers fill defaults.
///
/// With `reader_fills_defaults`, a field that a new version makes required is compatible
/// (backward) when the new version gives it a `default` that its own schema accepts, and the
/// registry's validator really fills it in: an event lacking the field is handed on with the
/// default in place. Without it, a newly required field is incompatible, whatever its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CompatibilityRule {
    /// The mode.
    pub mode: Compatibility,
    /// Readers fill missing required fields from their `default` (see the type docs).
    pub reader_fills_defaults: bool,
}

impl CompatibilityRule {
    /// A rule with `mode` and no default filling.
    pub fn new(mode: Compatibility) -> Self {
        Self {
            mode,
            reader_fills_defaults: false,
        }
    }

    /// Sets whether readers fill defaults.
    pub fn reader_fills_defaults(mut self, on: bool) -> Self {
        self.reader_fills_defaults = on;
        self
    }
}

/// Checks `new` against one earlier version `old` under `rule`; the error lists every reason
/// (prefixed by the direction that breaks). The registry runs it against the latest version, or
/// every earlier one for transitive modes.
pub fn check_compatible(
    rule: CompatibilityRule,
    old: &Value,
    new: &Value,
) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    if rule.mode.backward() {
        let mut r = Vec::new();
        covers(new, old, rule.reader_fills_defaults, "", &mut r);
        reasons.extend(
            r.into_iter()
                .map(|x| format!("backward (new schema reading old events): {x}")),
        );
    }
    if rule.mode.forward() {
        let mut r = Vec::new();
        covers(old, new, rule.reader_fills_defaults, "", &mut r);
        reasons.extend(
            r.into_iter()
                .map(|x| format!("forward (old schema reading new events): {x}")),
        );
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// Keywords that do not constrain instances.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "$id",
    "$schema",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$anchor",
    "$dynamicAnchor",
    "$vocabulary",
    "contentMediaType",
    "contentEncoding",
    "contentSchema",
];

/// Keywords `covers` analyses itself.
const ANALYSED: &[&str] = &[
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
];

/// Keywords that only mean something together: the whole group must be unchanged where the
/// reading schema has any of them.
const GROUPS: &[&[&str]] = &[
    &["if", "then", "else"],
    &["contains", "minContains", "maxContains"],
    &["prefixItems", "items", "additionalItems"],
];

fn here(at: &str) -> &str {
    if at.is_empty() { "/" } else { at }
}

/// The `additionalProperties` of a schema.
enum Extra<'a> {
    Any,
    Never,
    Schema(&'a Value),
}

fn extra(schema: &Map<String, Value>) -> Extra<'_> {
    match schema.get("additionalProperties") {
        None | Some(Value::Bool(true)) => Extra::Any,
        Some(Value::Bool(false)) => Extra::Never,
        Some(s) => Extra::Schema(s),
    }
}

fn types_of(schema: &Map<String, Value>) -> Option<BTreeSet<String>> {
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

pub(crate) fn required_of(schema: &Map<String, Value>) -> BTreeSet<String> {
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

/// True when the schema accepts everything (`true`, or only annotations).
fn accepts_all(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(m) => m.keys().all(|k| ANNOTATIONS.contains(&k.as_str())),
        _ => false,
    }
}

/// True when `default` validates against `schema` (compiled alone: a `$ref` out of it fails
/// to compile and counts as "cannot show").
fn default_fits(schema: &Value, default: &Value) -> bool {
    jsonschema::validator_for(schema).is_ok_and(|v| v.is_valid(default))
}

/// Pushes to `out` every reason why an instance valid under `narrow` (the writing schema) may
/// be invalid under `wide` (the reading schema), after `wide`'s defaults are filled in when
/// `fill`. `fill` holds only where the validator's fill walk reaches (the root, declared
/// `properties`, schema-form `items`).
pub(crate) fn covers(wide: &Value, narrow: &Value, fill: bool, at: &str, out: &mut Vec<String>) {
    if accepts_all(wide) || narrow == &Value::Bool(false) || wide == narrow {
        return;
    }
    let empty = Map::new();
    let (w, n) = match (wide, narrow) {
        (Value::Bool(false), _) => {
            out.push(format!(
                "{}: the reading schema accepts nothing here",
                here(at)
            ));
            return;
        }
        (Value::Object(w), Value::Bool(true)) => (w, &empty),
        (Value::Object(w), Value::Object(n)) => (w, n),
        _ => {
            out.push(format!("{}: not a JSON Schema", here(at)));
            return;
        }
    };
    check_type(w, n, at, out);
    check_object(w, n, fill, at, out);
    check_items(w, n, fill, at, out);
    check_values(w, n, at, out);
    check_bounds(w, n, at, out);
    check_others(w, n, at, out);
}

fn check_type(w: &Map<String, Value>, n: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    let Some(wt) = types_of(w) else { return };
    let Some(nt) = types_of(n) else {
        out.push(format!(
            "{}: the reading schema restricts the type to {wt:?}, the writing schema allows any",
            here(at)
        ));
        return;
    };
    let missing: Vec<&String> = nt
        .iter()
        .filter(|t| !(wt.contains(*t) || (t.as_str() == "integer" && wt.contains("number"))))
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "{}: type changed from {nt:?} to {wt:?} (the writer may send {missing:?})",
            here(at)
        ));
    }
}

fn check_object(
    w: &Map<String, Value>,
    n: &Map<String, Value>,
    fill: bool,
    at: &str,
    out: &mut Vec<String>,
) {
    let empty = Map::new();
    let wp = w
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let np = n
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let (wr, nr) = (required_of(w), required_of(n));
    for r in wr.difference(&nr) {
        let filled = fill
            && wp
                .get(r)
                .and_then(|p| p.get("default").map(|d| (p, d)))
                .is_some_and(|(p, d)| default_fits(p, d));
        if !filled {
            let why = if fill {
                "without a default that fits its schema"
            } else {
                "and readers do not fill defaults"
            };
            out.push(format!(
                "{at}/{r}: required by the reading schema, not guaranteed by the writing schema ({why})"
            ));
        }
    }
    if w.contains_key("patternProperties") || n.contains_key("patternProperties") {
        // Pattern-matched names cross `properties` and `additionalProperties`: only an
        // unchanged object shape is shown compatible.
        for k in ["properties", "patternProperties", "additionalProperties"] {
            if w.get(k) != n.get(k) {
                out.push(format!(
                    "{}: `{k}` changed beside `patternProperties` (not analysed)",
                    here(at)
                ));
            }
        }
        return;
    }
    let (we, ne) = (extra(w), extra(n));
    for (name, ws) in wp {
        let path = format!("{at}/{name}");
        match np.get(name) {
            Some(ns) => covers(ws, ns, fill, &path, out),
            None => match ne {
                Extra::Never => {}
                // The writer may send this name with any value.
                Extra::Any => covers(ws, &Value::Bool(true), fill, &path, out),
                Extra::Schema(s) => covers(ws, s, fill, &path, out),
            },
        }
    }
    for (name, ns) in np {
        if wp.contains_key(name) {
            continue;
        }
        let path = format!("{at}/{name}");
        match we {
            Extra::Any => {}
            Extra::Never => out.push(format!(
                "{path}: the writer may send it; the reading schema has additionalProperties false"
            )),
            // The fill walk does not enter additional properties.
            Extra::Schema(s) => covers(s, ns, false, &path, out),
        }
    }
    match (we, ne) {
        (Extra::Any, _) | (_, Extra::Never) => {}
        (Extra::Never, _) => out.push(format!(
            "{}: additionalProperties became false (the writer may send undeclared properties)",
            here(at)
        )),
        (Extra::Schema(ws), Extra::Any) => covers(ws, &Value::Bool(true), false, at, out),
        (Extra::Schema(ws), Extra::Schema(ns)) => covers(ws, ns, false, at, out),
    }
}

fn check_items(
    w: &Map<String, Value>,
    n: &Map<String, Value>,
    fill: bool,
    at: &str,
    out: &mut Vec<String>,
) {
    let array_form = |m: &Map<String, Value>| {
        m.contains_key("prefixItems")
            || m.contains_key("additionalItems")
            || matches!(m.get("items"), Some(Value::Array(_)))
    };
    if array_form(w) || array_form(n) {
        return; // Compared as a group by `check_others`.
    }
    if let Some(wi) = w.get("items") {
        let ni = n.get("items").unwrap_or(&Value::Bool(true));
        covers(wi, ni, fill, &format!("{at}/items"), out);
    }
}

fn check_values(w: &Map<String, Value>, n: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    // What the writer can send, when it is a finite list.
    let written: Option<Vec<&Value>> = match (n.get("const"), n.get("enum")) {
        (Some(c), _) => Some(vec![c]),
        (None, Some(Value::Array(e))) => Some(e.iter().collect()),
        _ => None,
    };
    if let Some(Value::Array(allowed)) = w.get("enum") {
        match &written {
            Some(vals) => {
                let lost: Vec<&&Value> = vals.iter().filter(|v| !allowed.contains(v)).collect();
                if !lost.is_empty() {
                    out.push(format!("{}: enum no longer allows {lost:?}", here(at)));
                }
            }
            None => out.push(format!(
                "{}: the reading schema adds an enum the writing schema does not have",
                here(at)
            )),
        }
    }
    if let Some(c) = w.get("const") {
        let same = written
            .as_ref()
            .is_some_and(|vals| vals.iter().all(|v| *v == c));
        if !same {
            out.push(format!(
                "{}: the reading schema requires const {c}",
                here(at)
            ));
        }
    }
}

/// A bound: (value, exclusive).
fn bound(m: &Map<String, Value>, inclusive: &str, exclusive: &str) -> Option<(f64, bool)> {
    let inc = m.get(inclusive).and_then(Value::as_f64).map(|v| (v, false));
    let exc = m.get(exclusive).and_then(Value::as_f64).map(|v| (v, true));
    match (inc, exc) {
        (Some(a), Some(b)) => Some(if b.0 >= a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn check_bounds(w: &Map<String, Value>, n: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    // Lower bounds: the writer's must be at least as strict as the reader's.
    if let Some((wv, wx)) = bound(w, "minimum", "exclusiveMinimum") {
        let ok = bound(n, "minimum", "exclusiveMinimum")
            .is_some_and(|(nv, nx)| nv > wv || (nv == wv && (nx || !wx)));
        if !ok {
            out.push(format!("{}: the lower bound became stricter", here(at)));
        }
    }
    if let Some((wv, wx)) = bound(w, "maximum", "exclusiveMaximum") {
        let ok = bound(n, "maximum", "exclusiveMaximum")
            .is_some_and(|(nv, nx)| nv < wv || (nv == wv && (nx || !wx)));
        if !ok {
            out.push(format!("{}: the upper bound became stricter", here(at)));
        }
    }
    for (min, max) in [
        ("minLength", "maxLength"),
        ("minItems", "maxItems"),
        ("minProperties", "maxProperties"),
    ] {
        if let Some(wv) = w.get(min).and_then(Value::as_u64)
            && n.get(min).and_then(Value::as_u64).is_none_or(|nv| nv < wv)
        {
            out.push(format!("{}: {min} became stricter", here(at)));
        }
        if let Some(wv) = w.get(max).and_then(Value::as_u64)
            && n.get(max).and_then(Value::as_u64).is_none_or(|nv| nv > wv)
        {
            out.push(format!("{}: {max} became stricter", here(at)));
        }
    }
}

fn check_others(w: &Map<String, Value>, n: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    let grouped = |k: &str| GROUPS.iter().any(|g| g.contains(&k));
    for group in GROUPS {
        if group.iter().any(|k| w.contains_key(*k)) && group.iter().any(|k| w.get(*k) != n.get(*k))
        {
            let analysed_items = group.contains(&"items")
                && !w.contains_key("prefixItems")
                && !n.contains_key("prefixItems")
                && !w.contains_key("additionalItems")
                && !n.contains_key("additionalItems")
                && !matches!(w.get("items"), Some(Value::Array(_)))
                && !matches!(n.get("items"), Some(Value::Array(_)));
            if !analysed_items {
                out.push(format!(
                    "{}: `{}` changed (not analysed: treated as incompatible)",
                    here(at),
                    group.join("`/`")
                ));
            }
        }
    }
    for (k, wv) in w {
        let k = k.as_str();
        if ANNOTATIONS.contains(&k) || ANALYSED.contains(&k) || grouped(k) {
            continue;
        }
        if n.get(k) != Some(wv) {
            out.push(format!(
                "{}: `{k}` changed or added (not analysed: treated as incompatible)",
                here(at)
            ));
        }
    }
    for k in ["unevaluatedProperties", "unevaluatedItems"] {
        if (w.contains_key(k) || n.contains_key(k)) && w != n {
            out.push(format!(
                "{}: `{k}` depends on the whole schema, which changed",
                here(at)
            ));
        }
    }
}
