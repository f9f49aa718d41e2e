//! Checks the write side runs before it touches the caller's transaction, and what it derives
//! from an event (routing columns, the key's lock id).

use windlass_core::Topic;
use windlass_eventbus::Event;

use crate::config::{Destination, OutboxConfig};
use crate::error::{Error, Result};

/// An event checked and encoded, ready to insert.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) struct Prepared {
    pub(crate) org_id: Option<String>,
    pub(crate) partition_key: Option<String>,
    pub(crate) event_type: String,
    /// The structured CloudEvents JSON, exactly the bytes the bus will carry.
    pub(crate) json: String,
    /// Lock id of (`topic`, key): the second half of `pg_advisory_xact_lock(int4, int4)`.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) lock: Option<i32>,
}

/// Validates size and storability. No I/O: an error here leaves the transaction untouched.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) fn prepare(topic: &Topic, event: &Event, config: &OutboxConfig) -> Result<Prepared> {
    #[cfg(feature = "otel")]
    let event = &windlass_eventbus::otel::inject(event);
    let json = event.to_json();
    if json.len() > config.max_event_size {
        return Err(Error::TooLarge {
            id: event.id().to_owned(),
            size: json.len(),
            limit: config.max_event_size,
        });
    }
    // A raw NUL cannot appear in JSON text (control characters are escaped) and the event
    // builder refuses control characters in attributes, so text columns always take it. jsonb
    // refuses the `\u0000` escape: refuse it here when that column exists.
    if config.jsonb_column && has_nul_escape(&json) {
        return Err(Error::Unstorable {
            id: event.id().to_owned(),
            reason:
                "its JSON holds a \\u0000 escape, which the jsonb column `event_json` refuses; \
                     drop the NUL from the data or turn the jsonb column off"
                    .into(),
        });
    }
    let partition_key = event.ordering_key().map(str::to_owned);
    let lock = match (&partition_key, config.lock_keys) {
        (Some(k), true) => Some(key_lock(topic.as_str(), k)),
        _ => None,
    };
    Ok(Prepared {
        org_id: event.org_id().map(|o| o.as_str().to_owned()),
        partition_key,
        event_type: event.ty().to_owned(),
        json,
        lock,
    })
}

/// The destinations as SQL values; refuses an empty list only when the caller named none on
/// purpose is fine (change-data-capture), so nothing to check but duplicates.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) fn destination_names(destinations: &[Destination]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(destinations.len());
    for d in destinations {
        if !out.iter().any(|x| x == d.as_str()) {
            out.push(d.as_str().to_owned());
        }
    }
    out
}

/// True when `json` holds the escape `\u0000` (a backslash preceded by an even number of
/// backslashes, then `u0000`).
pub(crate) fn has_nul_escape(json: &str) -> bool {
    let b = json.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'u') && b.get(i + 2..i + 6) == Some(b"0000".as_slice()) {
                return true;
            }
            i += 2; // skip the escaped character (covers `\\`)
        } else {
            i += 1;
        }
    }
    false
}

/// The classid half of the advisory lock: one per outbox table, so two outboxes never contend.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn table_lock_class(qualified_table: &str) -> i32 {
    fold(fnv1a(0x5749_4e44_4c41_5353, qualified_table.as_bytes()))
}

/// The objid half: a 32-bit hash of (`topic`, key). Two keys sharing a hash only serialise
/// their writers, which costs a little waiting and never order.
pub(crate) fn key_lock(topic: &str, key: &str) -> i32 {
    let h = fnv1a(0xcbf2_9ce4_8422_2325, topic.as_bytes());
    fold(fnv1a(h ^ 0xff, key.as_bytes()))
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn fold(h: u64) -> i32 {
    ((h >> 32) ^ h) as u32 as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nul_escapes_only() {
        assert!(has_nul_escape(r#"{"a":"x\u0000y"}"#));
        assert!(!has_nul_escape(r#"{"a":"x\\u0000y"}"#)); // an escaped backslash, then text
        assert!(has_nul_escape(r#"{"a":"x\\\u0000y"}"#));
        assert!(!has_nul_escape(r#"{"a":"\u0001"}"#));
        assert!(!has_nul_escape(r#"{"a":"\"u0000"}"#));
    }

    #[test]
    fn lock_ids_are_stable_and_spread() {
        assert_eq!(key_lock("t", "k"), key_lock("t", "k"));
        assert_ne!(key_lock("t", "k1"), key_lock("t", "k2"));
        assert_ne!(key_lock("ta", "k"), key_lock("t", "ak"));
        assert_ne!(
            table_lock_class("windlass_outbox"),
            table_lock_class("s.windlass_outbox")
        );
    }
}
