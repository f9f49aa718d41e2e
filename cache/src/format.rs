//! The stored format of an entry, shared by every store (the Redis Lua scripts read the same
//! header to find an entry's tags and write id).
//!
//! ```text
//! WLC1 <write-id> <created-unix-ms> <fresh-until-unix-ms>\n
//! T <tag-version> <tag>\n            (one line per tag)
//! \n
//! <payload: JSON>
//! ```
//! A tombstone (left by `delete` so a loader that started earlier cannot write back) is
//! `WLC1 <write-id> -\n\n`. Tags never hold whitespace (they are validated key segments), so the
//! first empty line always ends the header whatever the payload holds. A value that does not
//! parse is a miss for the reader (and a `decode_failures` count), never an error.

/// First bytes of every value written by this format version.
pub(crate) const MAGIC: &[u8] = b"WLC1 ";

/// What a reader makes of the stored bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stored<'a> {
    /// A value.
    Value(Envelope<'a>),
    /// A deletion marker.
    Tombstone,
}

/// A decoded value header and its payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub(crate) created_ms: u64,
    pub(crate) fresh_until_ms: u64,
    /// (tag, version the tag had when the value was written).
    pub(crate) tags: Vec<(&'a str, &'a str)>,
    pub(crate) payload: &'a [u8],
}

/// Encodes a value.
pub(crate) fn encode(
    write_id: &str,
    created_ms: u64,
    fresh_until_ms: u64,
    tags: &[(String, String)],
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        payload.len()
            + 48
            + tags
                .iter()
                .map(|(t, v)| t.len() + v.len() + 4)
                .sum::<usize>(),
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(format!("{write_id} {created_ms} {fresh_until_ms}\n").as_bytes());
    for (tag, version) in tags {
        out.extend_from_slice(b"T ");
        out.extend_from_slice(version.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(payload);
    out
}

/// Encodes a deletion marker.
pub(crate) fn tombstone(write_id: &str) -> Vec<u8> {
    format!("WLC1 {write_id} -\n\n").into_bytes()
}

fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(2).position(|w| w == b"\n\n")
}

/// The write id of a stored value, as the write script's compare sees it: the first word after
/// the magic, or `?` when there is none (garbage). Never empty (empty means "no value").
pub(crate) fn write_id(raw: &[u8]) -> String {
    let Some(rest) = raw.strip_prefix(MAGIC) else {
        return "?".to_owned();
    };
    let end = rest
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    match std::str::from_utf8(&rest[..end]) {
        Ok(id) if !id.is_empty() => id.to_owned(),
        _ => "?".to_owned(),
    }
}

/// The tag names of a stored value, as the read script finds them (for the memory store).
#[cfg(any(test, feature = "memory"))]
pub(crate) fn tag_names(raw: &[u8]) -> Vec<&str> {
    if !raw.starts_with(MAGIC) {
        return Vec::new();
    }
    let Some(end) = header_end(raw) else {
        return Vec::new();
    };
    let Ok(header) = std::str::from_utf8(&raw[..end]) else {
        return Vec::new();
    };
    header
        .split('\n')
        .skip(1)
        .filter_map(|line| {
            let rest = line.strip_prefix("T ")?;
            let (_, tag) = rest.split_once(' ')?;
            (!tag.is_empty()).then_some(tag)
        })
        .collect()
}

/// Parses a stored value. `None` when it is not in this format (garbage, another format
/// version): the caller counts a decode failure.
pub(crate) fn decode(raw: &[u8]) -> Option<Stored<'_>> {
    if !raw.starts_with(MAGIC) {
        return None;
    }
    let end = header_end(raw)?;
    let header = std::str::from_utf8(&raw[MAGIC.len()..end]).ok()?;
    let mut lines = header.split('\n');
    let first = lines.next()?;
    let mut words = first.split(' ');
    let _id = words.next().filter(|w| !w.is_empty())?;
    let created = words.next()?;
    if created == "-" {
        return Some(Stored::Tombstone);
    }
    let created_ms = created.parse().ok()?;
    let fresh_until_ms = words.next()?.parse().ok()?;
    if words.next().is_some() {
        return None;
    }
    let mut tags = Vec::new();
    for line in lines {
        let rest = line.strip_prefix("T ")?;
        let (version, tag) = rest.split_once(' ')?;
        if tag.is_empty() || version.is_empty() {
            return None;
        }
        tags.push((tag, version));
    }
    Some(Stored::Value(Envelope {
        created_ms,
        fresh_until_ms,
        tags,
        payload: &raw[end + 2..],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_values_and_tombstones() {
        let tags = vec![
            ("invoice:42".to_owned(), "7".to_owned()),
            ("customer/9".to_owned(), "123".to_owned()),
        ];
        let raw = encode("ab12", 1000, 2000, &tags, b"{\"a\":\"x\\n\\ny\"}\n\nmore");
        assert_eq!(write_id(&raw), "ab12");
        assert_eq!(tag_names(&raw), vec!["invoice:42", "customer/9"]);
        let Some(Stored::Value(env)) = decode(&raw) else {
            panic!("no value")
        };
        assert_eq!(env.created_ms, 1000);
        assert_eq!(env.fresh_until_ms, 2000);
        assert_eq!(env.tags, vec![("invoice:42", "7"), ("customer/9", "123")]);
        assert_eq!(env.payload, b"{\"a\":\"x\\n\\ny\"}\n\nmore");

        let t = tombstone("zz");
        assert_eq!(decode(&t), Some(Stored::Tombstone));
        assert_eq!(write_id(&t), "zz");
        assert!(tag_names(&t).is_empty());

        let untagged = encode("i", 1, 2, &[], b"");
        assert!(
            matches!(decode(&untagged), Some(Stored::Value(e)) if e.tags.is_empty() && e.payload.is_empty())
        );
    }

    #[test]
    fn garbage_does_not_decode() {
        for raw in [
            &b""[..],
            b"garbage",
            b"WLC1 ",
            b"WLC1 id 1 2\nX\n\n{}",
            b"WLC2 id 1 2\n\n{}",
            b"WLC1 id x 2\n\n{}",
            b"WLC1 id 1 2",
        ] {
            assert!(decode(raw).is_none(), "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(write_id(b"garbage"), "?");
        assert_eq!(write_id(b"WLC1  x"), "?");
    }
}
