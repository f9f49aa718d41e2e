use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::defaults::fill_defaults;
use super::*;
use crate::event::Event;

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

fn backward() -> CompatibilityRule {
    CompatibilityRule::new(Compatibility::Backward)
}

#[test]
fn a_new_required_field_is_compatible_only_when_the_reader_fills_its_default() {
    let mut v2 = v1();
    v2["required"] = json!(["amount", "currency", "region"]);
    v2["properties"]["region"] = json!({ "type": "string", "default": "eu" });
    let without = check_compatible(backward(), &v1(), &v2)
        .unwrap_err()
        .join("\n");
    assert!(
        without.contains("/region: required by the reading schema"),
        "{without}"
    );
    // `region` was undeclared in v1, whose objects are open: an old event may hold any value
    // under that name. Close v1 to make the default alone decide.
    let mut closed = v1();
    closed["additionalProperties"] = json!(false);
    let mut v2c = v2.clone();
    v2c["additionalProperties"] = json!(false);
    assert!(check_compatible(backward(), &closed, &v2c).is_err());
    let filling = backward().reader_fills_defaults(true);
    assert_eq!(check_compatible(filling, &closed, &v2c), Ok(()));
    // A default that does not fit its own schema is no default.
    let mut bad_default = v2c.clone();
    bad_default["properties"]["region"]["default"] = json!(7);
    assert!(check_compatible(filling, &closed, &bad_default).is_err());
}

#[test]
fn each_breaking_change_is_reported_in_its_direction() {
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
    let full = CompatibilityRule::new(Compatibility::Full);
    let all = check_compatible(full, &v1(), &v2).unwrap_err().join("\n");
    assert!(
        all.contains("backward") && all.contains("/amount: type changed"),
        "{all}"
    );
    assert!(
        all.contains("/due: required by the reading schema"),
        "{all}"
    );
    assert!(all.contains("additionalProperties became false"), "{all}");
    // Forward: the old schema requires currency and lines[].sku; new events may lack them.
    assert!(
        all.contains("forward (old schema reading new events): /currency: required"),
        "{all}"
    );
    assert!(all.contains("/lines/items/sku: required"), "{all}");
    // Widening a type is backward-compatible, forward-incompatible.
    let mut wide = v1();
    wide["properties"]["amount"] = json!({ "type": "number" });
    assert_eq!(check_compatible(backward(), &v1(), &wide), Ok(()));
    assert!(
        check_compatible(CompatibilityRule::new(Compatibility::Forward), &v1(), &wide).is_err()
    );
    // Unanalysed keywords must not change.
    let mut pattern = v1();
    pattern["properties"]["currency"]["pattern"] = json!("^[A-Z]{3}$");
    let why = check_compatible(backward(), &v1(), &pattern)
        .unwrap_err()
        .join(" ");
    assert!(why.contains("`pattern` changed"), "{why}");
    assert_eq!(
        check_compatible(
            CompatibilityRule::new(Compatibility::None),
            &v1(),
            &json!(false)
        ),
        Ok(())
    );
}

#[test]
fn adding_an_optional_property_depends_on_the_content_model() {
    let mut open_v2 = v1();
    open_v2["properties"]["note"] = json!({ "type": "string" });
    // Open v1: an old event may carry `note` of any type.
    assert!(check_compatible(backward(), &v1(), &open_v2).is_err());
    let mut any_note = v1();
    any_note["properties"]["note"] = json!({ "description": "free text" });
    assert_eq!(check_compatible(backward(), &v1(), &any_note), Ok(()));
    let mut closed = v1();
    closed["additionalProperties"] = json!(false);
    let mut closed_v2 = open_v2.clone();
    closed_v2["additionalProperties"] = json!(false);
    assert_eq!(check_compatible(backward(), &closed, &closed_v2), Ok(()));
    // ... but old readers of a closed schema refuse the new field: forward-incompatible.
    assert!(
        check_compatible(
            CompatibilityRule::new(Compatibility::Forward),
            &closed,
            &closed_v2
        )
        .is_err()
    );
}

#[test]
fn events_pick_their_version_by_dataschema_else_the_latest() {
    let r = SchemaRegistry::with_options(
        RegistryOptions::default().unknown_version(UnknownVersion::Reject),
    );
    r.register("paid", "s/1", v1()).unwrap();
    let mut v2 = v1();
    v2["properties"]["note"] = json!({});
    r.register("paid", "s/2", v2).unwrap();
    assert_eq!(r.versions("paid"), vec!["s/1", "s/2"]);
    let ok = Event::builder("/b", "paid")
        .data_json(&json!({"amount": 1, "currency": "EUR"}))
        .build()
        .unwrap();
    assert_eq!(r.validate(&ok).unwrap().version.as_deref(), Some("s/2"));
    let bad = Event::builder("/b", "paid")
        .data_schema("s/1")
        .data_json(&json!({"amount": 1}))
        .build()
        .unwrap();
    let err = r.validate(&bad).unwrap_err().to_string();
    assert!(err.contains("s/1") && err.contains("currency"), "{err}");
    let unknown = Event::builder("/b", "paid")
        .data_schema("s/9")
        .data_json(&json!({"amount": 1, "currency": "EUR"}))
        .build()
        .unwrap();
    assert!(matches!(
        r.validate(&unknown),
        Err(SchemaError::UnknownVersion { .. })
    ));
    let other = Event::builder("/b", "other").build().unwrap();
    assert!(r.validate(&other).unwrap().version.is_none());
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
fn unknown_versions_pass_when_a_known_version_accepts_them() {
    let r = SchemaRegistry::new();
    r.register("paid", "s/1", v1()).unwrap();
    let newer = |data: Value| {
        Event::builder("/b", "paid")
            .data_schema("s/2-not-deployed-here")
            .data_json(&data)
            .build()
            .unwrap()
    };
    let fits = newer(json!({"amount": 1, "currency": "EUR", "extra": true}));
    assert_eq!(r.validate(&fits).unwrap().version.as_deref(), Some("s/1"));
    let err = r.validate(&newer(json!({"amount": 1}))).unwrap_err();
    match err {
        SchemaError::UnknownVersion { tried, .. } => {
            assert!(
                tried[0].starts_with("s/1: ") && tried[0].contains("currency"),
                "{tried:?}"
            )
        }
        other => panic!("{other}"),
    }
}

#[test]
fn the_validator_fills_what_the_rule_says_readers_fill() {
    let r = SchemaRegistry::with_options(
        RegistryOptions::default().compatibility(backward().reader_fills_defaults(true)),
    );
    let mut closed = v1();
    closed["additionalProperties"] = json!(false);
    r.register("paid", "s/1", closed.clone()).unwrap();
    let mut v2 = closed.clone();
    v2["required"] = json!(["amount", "currency", "region"]);
    v2["properties"]["region"] = json!({ "type": "string", "default": "eu" });
    r.register("paid", "s/2", v2).unwrap();
    for schema in [Some("s/1"), None] {
        let mut b =
            Event::builder("/b", "paid").data_json(&json!({"amount": 1, "currency": "EUR"}));
        if let Some(s) = schema {
            b = b.data_schema(s);
        }
        let old = b.build().unwrap();
        let checked = r.validate(&old).unwrap();
        assert_eq!(checked.version.as_deref(), Some("s/2"));
        let data: Value = checked.event.data_as().unwrap().unwrap();
        assert_eq!(
            data,
            json!({"amount": 1, "currency": "EUR", "region": "eu"})
        );
        assert_eq!(checked.event.id(), old.id());
    }
    // Without filling, the same registration is refused.
    let strict = SchemaRegistry::new();
    strict.register("paid", "s/1", closed).unwrap();
    let mut v2 = v1();
    v2["additionalProperties"] = json!(false);
    v2["required"] = json!(["amount", "currency", "region"]);
    v2["properties"]["region"] = json!({ "type": "string", "default": "eu" });
    assert!(matches!(
        strict.register("paid", "s/2", v2),
        Err(SchemaError::Incompatible { .. })
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
    v10["properties"]["note"] = json!({});
    std::fs::write(dir.join("order.placed/2.json"), base.to_string()).unwrap();
    std::fs::write(dir.join("order.placed/10.json"), v10.to_string()).unwrap();
    let r = SchemaRegistry::new();
    assert_eq!(r.load_dir(&dir).unwrap(), 2);
    assert_eq!(r.versions("order.placed"), vec!["2", "10"]);
    // A breaking file (a new required field, old events lack it) is refused.
    std::fs::write(
        dir.join("order.placed/11.json"),
        json!({ "type": "object", "required": ["id", "due"], "properties": { "id": { "type": "string" }, "due": { "type": "string" } } }).to_string(),
    )
    .unwrap();
    assert!(matches!(
        SchemaRegistry::new().load_dir(&dir),
        Err(SchemaError::Incompatible { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- Soundness against the validator: random schema pairs and payloads -------------------

const NAMES: &[&str] = &["a", "b", "c", "d"];

fn pool(rng: &mut StdRng) -> Value {
    match rng.random_range(0..10) {
        0 => json!(0),
        1 => json!(2),
        2 => json!(-1),
        3 => json!(2.5),
        4 => json!("x"),
        5 => json!("long string"),
        6 => json!(true),
        7 => Value::Null,
        8 => json!({}),
        _ => json!([1, "x"]),
    }
}

fn gen_leaf(rng: &mut StdRng) -> Value {
    let mut s = match rng.random_range(0..7) {
        0 => json!({ "type": "string" }),
        1 => json!({ "type": "integer" }),
        2 => json!({ "type": "number" }),
        3 => json!({ "type": ["string", "null"] }),
        4 => json!({ "type": "boolean" }),
        5 => json!({ "enum": ["x", 2, null] }),
        _ => json!({}),
    };
    match rng.random_range(0..6) {
        0 => s["minimum"] = json!(rng.random_range(-1..2)),
        1 => s["maxLength"] = json!(rng.random_range(0..5)),
        2 => s["default"] = pool(rng),
        _ => {}
    }
    s
}

fn gen_schema(rng: &mut StdRng, depth: u32) -> Value {
    if depth == 0 || rng.random_bool(0.4) {
        return gen_leaf(rng);
    }
    if rng.random_bool(0.2) {
        return json!({ "type": "array", "items": gen_schema(rng, depth - 1) });
    }
    let mut props = serde_json::Map::new();
    for n in &NAMES[..3] {
        if rng.random_bool(0.6) {
            props.insert((*n).to_owned(), gen_schema(rng, depth - 1));
        }
    }
    let required: Vec<&str> = NAMES
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.3))
        .collect();
    let mut s = json!({ "type": "object", "properties": props, "required": required });
    match rng.random_range(0..4) {
        0 => s["additionalProperties"] = json!(false),
        1 => s["additionalProperties"] = json!({ "type": "string" }),
        _ => {}
    }
    s
}

/// One or two small changes, so that compatible pairs are common.
fn mutate(rng: &mut StdRng, s: &Value, depth: u32) -> Value {
    let mut s = s.clone();
    for _ in 0..rng.random_range(1..3) {
        let Some(obj) = s.as_object_mut() else {
            return gen_schema(rng, depth);
        };
        match rng.random_range(0..8) {
            0 => {
                obj.remove("additionalProperties");
            }
            1 => {
                obj.insert("additionalProperties".into(), json!(false));
            }
            2 => {
                let n = NAMES[rng.random_range(0..4)];
                let mut p = gen_leaf(rng);
                if rng.random_bool(0.5) {
                    p["default"] = pool(rng);
                }
                if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
                    props.insert(n.into(), p);
                }
            }
            3 => {
                let n = NAMES[rng.random_range(0..4)];
                if let Some(req) = obj.get_mut("required").and_then(Value::as_array_mut) {
                    if req.contains(&json!(n)) {
                        req.retain(|x| x != &json!(n));
                    } else {
                        req.push(json!(n));
                    }
                }
            }
            4 => {
                if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
                    let n = NAMES[rng.random_range(0..4)];
                    if let Some(p) = props.get(n).cloned() {
                        props.insert(n.into(), mutate(rng, &p, depth.saturating_sub(1)));
                    }
                }
            }
            5 => {
                obj.remove("type");
            }
            6 => {
                obj.insert("minimum".into(), json!(rng.random_range(-1..2)));
            }
            _ => {
                obj.remove("minimum");
                obj.remove("maxLength");
            }
        }
    }
    s
}

/// A payload shaped after `schema` (mostly valid), with random extras and random leaves.
fn gen_value(rng: &mut StdRng, schema: &Value, depth: u32) -> Value {
    if depth == 0 || rng.random_bool(0.15) {
        return pool(rng);
    }
    let ty = schema.get("type").and_then(Value::as_str);
    if ty == Some("array") {
        let items = schema.get("items").cloned().unwrap_or(json!({}));
        return Value::Array(
            (0..rng.random_range(0..3))
                .map(|_| gen_value(rng, &items, depth - 1))
                .collect(),
        );
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let mut out = serde_json::Map::new();
        for n in NAMES {
            let p = props.get(*n).cloned().unwrap_or(json!({}));
            if rng.random_bool(if props.contains_key(*n) { 0.8 } else { 0.25 }) {
                out.insert((*n).into(), gen_value(rng, &p, depth - 1));
            }
        }
        return Value::Object(out);
    }
    match ty {
        Some("string") => json!(["x", "", "long string"][rng.random_range(0..3)]),
        Some("integer") => json!(rng.random_range(-2..4)),
        Some("number") => json!([0.5, 3.0, -1.5][rng.random_range(0..3)]),
        Some("boolean") => json!(rng.random_bool(0.5)),
        _ => pool(rng),
    }
}

#[test]
fn compatible_means_the_validator_agrees_on_random_schemas_and_payloads() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let modes = [
        Compatibility::Backward,
        Compatibility::Forward,
        Compatibility::Full,
    ];
    let mut compatible_pairs = 0;
    let mut payloads_checked = 0;
    for round in 0..4000 {
        let old = gen_schema(&mut rng, 2);
        let new = if rng.random_bool(0.8) {
            mutate(&mut rng, &old, 2)
        } else {
            gen_schema(&mut rng, 2)
        };
        let mode = modes[round % modes.len()];
        let fill = rng.random_bool(0.5);
        let rule = CompatibilityRule::new(mode).reader_fills_defaults(fill);
        if check_compatible(rule, &old, &new).is_err() {
            continue;
        }
        compatible_pairs += 1;
        let (Ok(vo), Ok(vn)) = (
            jsonschema::validator_for(&old),
            jsonschema::validator_for(&new),
        ) else {
            continue;
        };
        let mut directions = Vec::new();
        if mode != Compatibility::Forward {
            directions.push((&old, &vo, &new, &vn)); // new reads old events
        }
        if mode != Compatibility::Backward {
            directions.push((&new, &vn, &old, &vo)); // old reads new events
        }
        for _ in 0..40 {
            for (writer, vw, reader, vr) in &directions {
                let mut payload = gen_value(&mut rng, writer, 3);
                if !vw.is_valid(&payload) {
                    continue;
                }
                payloads_checked += 1;
                let written = payload.clone();
                if fill {
                    fill_defaults(reader, &mut payload);
                }
                assert!(
                    vr.is_valid(&payload),
                    "{mode:?} (fill {fill}) said compatible, but the validator refuses\n\
                     payload {written}\n(read as {payload})\nwritten with {writer}\nread with {reader}"
                );
            }
        }
    }
    assert!(
        compatible_pairs > 300,
        "only {compatible_pairs} compatible pairs"
    );
    assert!(payloads_checked > 5000, "only {payloads_checked} payloads");
}
