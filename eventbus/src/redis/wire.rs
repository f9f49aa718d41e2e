//! Reading Redis Streams replies (RESP2 arrays or RESP3 maps) into entries.

use redis::Value;

/// One stream entry: its id and its field/value pairs (`None` when the entry was deleted or
/// trimmed while still pending).
pub(crate) type Entry = (String, Option<Vec<(Vec<u8>, Vec<u8>)>>);

pub(crate) fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(crate) fn string(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => string(other).and_then(|s| s.parse().ok()),
    }
}

fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a.iter().collect(),
        Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// `[id, [field, value, ...]]` (or `[id, nil]`).
fn entry(v: &Value) -> Option<Entry> {
    let parts = items(v);
    let id = string(parts.first()?)?;
    let fields = match parts.get(1) {
        None | Some(Value::Nil) => None,
        Some(f) => {
            let flat = items(f);
            Some(
                flat.chunks(2)
                    .filter_map(|kv| Some((bytes(kv.first()?)?, bytes(kv.get(1)?)?)))
                    .collect(),
            )
        }
    };
    Some((id, fields))
}

/// The bytes of a value, moved out of it.
fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn into_items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// Entries moved out of a reply (no copy of their bytes): the hot read path.
pub(crate) fn into_entries(v: Value) -> Vec<Entry> {
    into_items(v)
        .into_iter()
        .filter_map(|e| {
            let mut parts = into_items(e).into_iter();
            let id = String::from_utf8(into_bytes(parts.next()?)?).ok()?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(f) => {
                    let mut flat = into_items(f).into_iter();
                    let mut out = Vec::with_capacity(1);
                    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                        if let (Some(k), Some(v)) = (into_bytes(k), into_bytes(v)) {
                            out.push((k, v));
                        }
                    }
                    Some(out)
                }
            };
            Some((id, fields))
        })
        .collect()
}

/// The items of an array reply, moved out.
pub(crate) fn into_array(v: Value) -> Vec<Value> {
    into_items(v)
}

/// A list of entries (`XRANGE`, `XCLAIM`, the middle of `XAUTOCLAIM`).
pub(crate) fn entries(v: &Value) -> Vec<Entry> {
    items(v).into_iter().filter_map(entry).collect()
}

/// The entries of the (only) stream of an `XREADGROUP` reply; nil (timeout) gives none.
pub(crate) fn read_reply(v: &Value) -> Vec<Entry> {
    match v {
        Value::Nil => Vec::new(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        Value::Array(streams) => streams
            .iter()
            .flat_map(|s| {
                let parts = items(s);
                parts.get(1).map(|e| entries(e)).unwrap_or_default()
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Looks a field up in an entry's fields.
pub(crate) fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

/// The items of an array reply (public to the backend's modules).
pub(crate) fn array(v: &Value) -> Vec<&Value> {
    items(v)
}

/// Time (ms) and sequence of a stream id `ms-seq`; `(0, 0)` when it does not parse.
pub(crate) fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The fields of an `XINFO GROUPS` row (a map in RESP3, a flat array in RESP2).
pub(crate) fn info_row(v: &Value) -> Vec<(String, &Value)> {
    match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((string(k)?, v)))
            .collect(),
        other => items(other)
            .chunks(2)
            .filter_map(|kv| Some((string(kv.first()?)?, *kv.get(1)?)))
            .collect(),
    }
}
