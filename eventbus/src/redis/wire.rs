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

/// `XAUTOCLAIM` reply: next cursor, claimed entries, ids of deleted entries.
pub(crate) fn autoclaim_reply(v: &Value) -> (String, Vec<Entry>, Vec<String>) {
    let parts = items(v);
    let cursor = parts
        .first()
        .and_then(|c| string(c))
        .unwrap_or_else(|| "0-0".to_owned());
    let claimed = parts.get(1).map(|e| entries(e)).unwrap_or_default();
    let deleted = parts
        .get(2)
        .map(|d| items(d).into_iter().filter_map(string).collect())
        .unwrap_or_default();
    (cursor, claimed, deleted)
}

/// Extended `XPENDING` reply: (id, consumer, idle ms, delivery count).
pub(crate) fn pending_reply(v: &Value) -> Vec<(String, String, i64, i64)> {
    items(v)
        .into_iter()
        .filter_map(|row| {
            let r = items(row);
            Some((
                string(r.first()?)?,
                string(r.get(1)?)?,
                int(r.get(2)?)?,
                int(r.get(3)?)?,
            ))
        })
        .collect()
}

/// Looks a field up in an entry's fields.
pub(crate) fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}
