//! Filling defaults the way the compatibility check assumes readers do: a property that the
//! schema requires, declares in `properties` with a `default`, and the payload lacks, gets the
//! default. The walk enters declared `properties` and schema-form `items`, nothing else (the
//! check gives no credit for defaults anywhere else).

use serde_json::Value;

use crate::schema::compat::required_of;

/// Fills the missing required properties of `instance` that have a default in `schema`.
/// Returns true when it changed anything.
pub(crate) fn fill_defaults(schema: &Value, instance: &mut Value) -> bool {
    let Some(s) = schema.as_object() else {
        return false;
    };
    let mut changed = false;
    match instance {
        Value::Object(obj) => {
            let props = s.get("properties").and_then(Value::as_object);
            for r in required_of(s) {
                if obj.contains_key(&r) {
                    continue;
                }
                if let Some(d) = props.and_then(|p| p.get(&r)).and_then(|p| p.get("default")) {
                    obj.insert(r, d.clone());
                    changed = true;
                }
            }
            if let Some(props) = props {
                for (name, sub) in props {
                    if let Some(v) = obj.get_mut(name) {
                        changed |= fill_defaults(sub, v);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub @ Value::Object(_)) = s.get("items") {
                for v in items {
                    changed |= fill_defaults(sub, v);
                }
            }
        }
        _ => {}
    }
    changed
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::fill_defaults;

    #[test]
    fn fills_required_defaults_at_the_root_in_properties_and_in_items() {
        let schema = json!({
            "type": "object",
            "required": ["region", "lines"],
            "properties": {
                "region": { "type": "string", "default": "eu" },
                "note": { "type": "string", "default": "optional: not filled" },
                "lines": { "type": "array", "default": [], "items": {
                    "type": "object", "required": ["qty"],
                    "properties": { "qty": { "type": "integer", "default": 1 } }
                } }
            }
        });
        let mut v = json!({ "lines": [{ "sku": "a" }, { "sku": "b", "qty": 3 }] });
        assert!(fill_defaults(&schema, &mut v));
        assert_eq!(
            v,
            json!({ "region": "eu", "lines": [{ "sku": "a", "qty": 1 }, { "sku": "b", "qty": 3 }] })
        );
        assert!(!fill_defaults(&schema, &mut v), "nothing left to fill");
        let mut empty = json!({});
        fill_defaults(&schema, &mut empty);
        assert_eq!(empty, json!({ "region": "eu", "lines": [] }));
    }
}
